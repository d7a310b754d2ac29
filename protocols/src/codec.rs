//! Bounded codecs for both protocols.
//!
//! The tracker protocol is CBOR through libp2p's request-response `cbor` codec with explicit
//! limits ([`tracker_codec`]). The transfer protocol has its own [`TransferCodec`]: requests are
//! CBOR, and a piece response is written raw after a 5-byte header (tag + length), so the piece
//! bytes are neither encoded nor copied on the way, and the reader allocates exactly the announced
//! length after checking it against the limit.

use std::{io, sync::Arc};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::{
    buffers::BufferPool, collection::MAX_COLLECTION_BYTES, tracker, transfer, ErrorCode,
    WireManifest, MAX_PIECES, MAX_PIECE_SIZE,
};

/// Largest tracker request: an announce of [`tracker::MAX_ANNOUNCE_FILES`] files with long names
/// fits.
pub const MAX_TRACKER_REQUEST: u64 = 512 * 1024;
/// Largest tracker response.
pub const MAX_TRACKER_RESPONSE: u64 = 4 * 1024 * 1024;
/// Largest transfer request (they are a few dozen bytes).
pub const MAX_TRANSFER_REQUEST: u64 = 1024;
/// Largest control response (manifest, have, collection, error): a manifest of [`MAX_PIECES`]
/// values, or a collection of [`MAX_COLLECTION_BYTES`], plus a header fits.
pub const MAX_CONTROL_RESPONSE: u64 = {
    let manifest = MAX_PIECES as u64 * 32;
    let collection = MAX_COLLECTION_BYTES as u64;
    (if manifest > collection {
        manifest
    } else {
        collection
    }) + 4096
};
/// Largest piece response body.
pub const MAX_PIECE_RESPONSE: u64 = MAX_PIECE_SIZE as u64;

/// The tracker protocol's codec: CBOR with [`MAX_TRACKER_REQUEST`] and [`MAX_TRACKER_RESPONSE`].
pub type TrackerCodec = request_response::cbor::codec::Codec<tracker::Request, tracker::Response>;

/// A [`TrackerCodec`] with this crate's limits.
pub fn tracker_codec() -> TrackerCodec {
    TrackerCodec::default()
        .set_request_size_maximum(MAX_TRACKER_REQUEST)
        .set_response_size_maximum(MAX_TRACKER_RESPONSE)
}

const TAG_PIECE: u8 = 0;
const TAG_CONTROL: u8 = 1;

/// The CBOR body of a non-piece transfer response.
#[derive(Serialize, Deserialize)]
enum Control {
    Manifest(WireManifest),
    Have(#[serde(with = "serde_bytes")] Vec<u8>),
    Error(ErrorCode),
    Collection(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The same bodies, borrowed, for encoding once ([`Prepared`]); variant names match
/// [`Control`]'s, so the bytes are identical.
#[derive(Serialize)]
enum ControlRef<'a> {
    Manifest(&'a WireManifest),
    Collection(#[serde(with = "serde_bytes")] &'a [u8]),
}

/// A manifest or collection response encoded once and shared by every request for it (a
/// manifest is up to 2 MiB, a collection up to 8 MiB: encoding or cloning one per request would
/// let requests multiply it). On the wire it is exactly [`transfer::Response::Manifest`] or
/// [`transfer::Response::Collection`]; it is never decoded as itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared(Arc<[u8]>);

impl Prepared {
    /// The encoded manifest response.
    ///
    /// # Errors
    /// When CBOR encoding fails (it does not for a valid manifest).
    pub fn manifest(manifest: &WireManifest) -> io::Result<Self> {
        Ok(Prepared(encode(&ControlRef::Manifest(manifest))?.into()))
    }

    /// The encoded collection response for a collection's canonical bytes.
    ///
    /// # Errors
    /// When CBOR encoding fails.
    pub fn collection(bytes: &[u8]) -> io::Result<Self> {
        Ok(Prepared(encode(&ControlRef::Collection(bytes))?.into()))
    }

    /// Bytes of the encoded body.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the body is empty (never, for a real response).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The transfer protocol's codec (see the module docs for the frame layout). Piece bodies are
/// read into buffers from its [`BufferPool`], and sent pieces go back to it.
///
/// request-response clones the codec for each outbound stream and uses that clone to write the
/// request and read its answer, so the clone remembers what the request expects: a piece
/// answer must be exactly [`transfer::Request::Piece::expect`] bytes long.
#[derive(Debug, Clone, Default)]
pub struct TransferCodec {
    pool: Arc<BufferPool>,
    /// The body length the answer to the request written with this clone must have.
    expect: Option<u32>,
}

impl TransferCodec {
    /// A codec that takes and returns piece buffers through `pool` (shared with the node that
    /// writes and reads the pieces).
    pub fn new(pool: Arc<BufferPool>) -> Self {
        TransferCodec { pool, expect: None }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

async fn read_bounded<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // Read one byte past the limit so an oversized message is refused, not silently truncated.
    io.take(max + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > max {
        return Err(invalid("message over the size limit"));
    }
    Ok(buf)
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> io::Result<T> {
    cbor4ii::serde::from_slice(bytes).map_err(|_| invalid("malformed CBOR message"))
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    cbor4ii::serde::to_vec(Vec::new(), value).map_err(io::Error::other)
}

/// Writes a response frame: tag, big-endian u32 length, body.
async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    tag: u8,
    body: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| invalid("response too large"))?;
    let mut header = [0u8; 5];
    header[0] = tag;
    header[1..].copy_from_slice(&len.to_be_bytes());
    io.write_all(&header).await?;
    io.write_all(body).await?;
    io.close().await
}

impl request_response::Codec for TransferCodec {
    type Protocol = StreamProtocol;
    type Request = transfer::Request;
    type Response = transfer::Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_bounded(io, MAX_TRANSFER_REQUEST).await?)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut header = [0u8; 5];
        io.read_exact(&mut header).await?;
        let len = u64::from(u32::from_be_bytes([
            header[1], header[2], header[3], header[4],
        ]));
        let max = match header[0] {
            TAG_PIECE => MAX_PIECE_RESPONSE,
            TAG_CONTROL => MAX_CONTROL_RESPONSE,
            _ => return Err(invalid("unknown response tag")),
        };
        if len > max {
            return Err(invalid("response over the size limit"));
        }
        if header[0] == TAG_PIECE && self.expect.is_some_and(|want| u64::from(want) != len) {
            return Err(invalid("piece of the wrong length"));
        }
        // `len` is bounded by `max` above, so this allocation is too. `read_exact` fills the
        // sized buffer; `read_to_end` would grow a full buffer (a realloc and copy of the whole
        // piece) before it sees the end. A short body is `UnexpectedEof`.
        let mut body = if header[0] == TAG_PIECE {
            self.pool.take_filled(len as usize)
        } else {
            vec![0; len as usize]
        };
        io.read_exact(&mut body).await?;
        if header[0] == TAG_PIECE {
            return Ok(transfer::Response::Piece(body));
        }
        Ok(match decode::<Control>(&body)? {
            Control::Manifest(m) => transfer::Response::Manifest(m),
            Control::Have(bits) => transfer::Response::Have(bits),
            Control::Error(code) => transfer::Response::Error(code),
            Control::Collection(bytes) => transfer::Response::Collection(bytes),
        })
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.expect = match req {
            transfer::Request::Piece { expect, .. } if expect > 0 => Some(expect),
            _ => None,
        };
        io.write_all(&encode(&req)?).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let control = match res {
            transfer::Response::Piece(bytes) => {
                let written = write_frame(io, TAG_PIECE, &bytes).await;
                self.pool.give(bytes);
                return written;
            }
            transfer::Response::Manifest(m) => Control::Manifest(m),
            transfer::Response::Have(bits) => Control::Have(bits),
            transfer::Response::Error(code) => Control::Error(code),
            transfer::Response::Collection(bytes) => Control::Collection(bytes),
            transfer::Response::Prepared(prepared) => {
                return write_frame(io, TAG_CONTROL, &prepared.0).await
            }
        };
        write_frame(io, TAG_CONTROL, &encode(&control)?).await
    }
}

#[cfg(test)]
mod tests {
    use futures::{executor::block_on, io::Cursor};
    use request_response::Codec;

    use super::*;
    use crate::{FileId, FileName, TRANSFER_PROTOCOL};

    fn roundtrip(res: transfer::Response) -> io::Result<transfer::Response> {
        block_on(async {
            let mut buf = Cursor::new(Vec::new());
            TransferCodec::default()
                .write_response(&TRANSFER_PROTOCOL, &mut buf, res)
                .await?;
            let mut rd = Cursor::new(buf.into_inner());
            TransferCodec::default()
                .read_response(&TRANSFER_PROTOCOL, &mut rd)
                .await
        })
    }

    #[test]
    fn responses_roundtrip() {
        let manifest = WireManifest {
            name: FileName::new("a.bin").unwrap(),
            size: 5,
            piece_size: 1 << 20,
            values: vec![3; 32],
        };
        for res in [
            transfer::Response::Piece(vec![1, 2, 3]),
            transfer::Response::Piece(vec![]),
            transfer::Response::Manifest(manifest),
            transfer::Response::Have(vec![0b1010_0000]),
            transfer::Response::Error(ErrorCode::NotFound),
            transfer::Response::Collection(vec![1, 2, 3]),
        ] {
            assert_eq!(roundtrip(res.clone()).unwrap(), res);
        }
    }

    #[test]
    fn prepared_responses_arrive_as_the_plain_ones() {
        let manifest = WireManifest {
            name: FileName::new("a.bin").unwrap(),
            size: 5,
            piece_size: 1 << 20,
            values: vec![3; 32],
        };
        let prepared = Prepared::manifest(&manifest).unwrap();
        assert_eq!(
            roundtrip(transfer::Response::Prepared(prepared)).unwrap(),
            transfer::Response::Manifest(manifest)
        );
        let prepared = Prepared::collection(&[9, 8, 7]).unwrap();
        assert_eq!(
            roundtrip(transfer::Response::Prepared(prepared)).unwrap(),
            transfer::Response::Collection(vec![9, 8, 7])
        );
    }

    #[test]
    fn piece_is_sent_raw_not_as_an_integer_array() {
        let bytes = vec![0xffu8; 1000];
        let mut buf = Cursor::new(Vec::new());
        block_on(TransferCodec::default().write_response(
            &TRANSFER_PROTOCOL,
            &mut buf,
            transfer::Response::Piece(bytes),
        ))
        .unwrap();
        assert_eq!(buf.into_inner().len(), 1000 + 5);
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        let mut over = vec![TAG_PIECE];
        over.extend_from_slice(&(MAX_PIECE_SIZE + 1).to_be_bytes());
        let read = |bytes: Vec<u8>| {
            block_on(
                TransferCodec::default().read_response(&TRANSFER_PROTOCOL, &mut Cursor::new(bytes)),
            )
        };
        assert_eq!(read(over).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(read(vec![9, 0, 0, 0, 0]).is_err(), "unknown tag");
        assert!(
            read(vec![TAG_CONTROL, 0, 0, 0, 2, 0xff, 0xff]).is_err(),
            "bad CBOR"
        );
        assert!(read(vec![TAG_PIECE, 0, 0, 0, 9, 1]).is_err(), "truncated");

        let big = vec![0u8; MAX_TRANSFER_REQUEST as usize + 1];
        let req = block_on(
            TransferCodec::default().read_request(&TRANSFER_PROTOCOL, &mut Cursor::new(big)),
        );
        assert!(req.is_err());
        let garbage = block_on(
            TransferCodec::default()
                .read_request(&TRANSFER_PROTOCOL, &mut Cursor::new(vec![0xde, 0xad])),
        );
        assert!(garbage.is_err());
    }

    #[test]
    fn requests_roundtrip() {
        let req = transfer::Request::Piece {
            id: FileId::of(b"x"),
            index: 7,
            expect: 0,
        };
        let back = block_on(async {
            let mut buf = Cursor::new(Vec::new());
            TransferCodec::default()
                .write_request(&TRANSFER_PROTOCOL, &mut buf, req.clone())
                .await
                .unwrap();
            TransferCodec::default()
                .read_request(&TRANSFER_PROTOCOL, &mut Cursor::new(buf.into_inner()))
                .await
        })
        .unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn a_piece_of_another_length_than_asked_is_refused_before_it_is_read() {
        let piece = |expect| transfer::Request::Piece {
            id: FileId::of(b"x"),
            index: 0,
            expect,
        };
        let answer = |len: u32, body: usize| {
            let mut frame = vec![TAG_PIECE];
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend(std::iter::repeat_n(7u8, body));
            frame
        };
        let exchange = |req: transfer::Request, frame: Vec<u8>| {
            block_on(async {
                let mut codec = TransferCodec::default();
                codec
                    .write_request(&TRANSFER_PROTOCOL, &mut Cursor::new(Vec::new()), req)
                    .await?;
                codec
                    .read_response(&TRANSFER_PROTOCOL, &mut Cursor::new(frame))
                    .await
            })
        };
        assert_eq!(
            exchange(piece(4), answer(4, 4)).unwrap(),
            transfer::Response::Piece(vec![7; 4])
        );
        // A header announcing the 16 MiB maximum for a 4-byte piece is refused on the header
        // alone: the body is not there, and nothing of that size is allocated.
        let err = exchange(piece(4), answer(MAX_PIECE_SIZE, 0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(exchange(piece(4), answer(3, 3)).is_err(), "short");
        // Without an expectation (a request that is not a piece) the limit alone applies.
        let manifest = transfer::Request::Manifest {
            id: FileId::of(b"x"),
        };
        assert!(exchange(manifest, answer(4, 4)).is_ok());
    }
}
