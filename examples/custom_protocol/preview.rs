//! The example's own protocol, `/bitswarm-example/preview/1`: ask for a file's first bytes
//! before downloading it.
//!
//! One request, [`Request`], answered three ways: a provider of the file sends its first
//! bytes ([`Response::Bytes`]); the tracker, which holds no bytes, sends what its index knows
//! ([`Response::Card`]); anyone else says [`Response::NotFound`]. It is libp2p's
//! request-response behaviour with a CBOR codec over our own message types, so it plugs into
//! a node and into the tracker as their extension unchanged.
//!
//! Everything from the network is bounded: requests of at most [`MAX_REQUEST_BYTES`], answers of
//! at most [`MAX_RESPONSE_BYTES`], previews of at most [`MAX_PREVIEW`] bytes whatever `len`
//! asks, a few streams per connection.

use std::{iter, path::Path, time::Duration};

use bitswarm_protocols::{tracker::FileRecord, FileId};
use libp2p::{
    request_response::{self, cbor, ProtocolSupport},
    StreamProtocol,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// The protocol's name on the wire.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/bitswarm-example/preview/1");
/// Most bytes a preview carries, whatever is asked.
pub(crate) const MAX_PREVIEW: u32 = 4096;
/// Largest request read.
pub(crate) const MAX_REQUEST_BYTES: u64 = 1024;
/// Largest answer read.
pub(crate) const MAX_RESPONSE_BYTES: u64 = 2 * MAX_PREVIEW as u64 + 1024;
/// Requests one connection may have open at once.
pub(crate) const MAX_STREAMS: usize = 8;

/// Asks for the first `len` bytes of `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    /// The file.
    pub file: FileId,
    /// Bytes wanted (at most [`MAX_PREVIEW`] are sent).
    pub len: u32,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The file's first bytes, from a peer that holds it.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// What the tracker's index knows of the file.
    Card {
        /// A name it is shared under.
        name: String,
        /// Its size as announced.
        size: u64,
        /// Distinct hosts seeding it.
        seeders: u32,
    },
    /// Not held here, or not known.
    NotFound,
}

/// The behaviour that speaks the protocol.
pub(crate) type Behaviour = cbor::Behaviour<Request, Response>;
/// Its events.
pub(crate) type Event = request_response::Event<Request, Response>;

/// A preview behaviour: `support` is [`ProtocolSupport::Full`] on a peer (it asks and
/// answers), [`ProtocolSupport::Inbound`] on the tracker (it only answers).
pub(crate) fn behaviour(support: ProtocolSupport) -> Behaviour {
    let codec = cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_REQUEST_BYTES)
        .set_response_size_maximum(MAX_RESPONSE_BYTES);
    let config = request_response::Config::default()
        .with_request_timeout(Duration::from_secs(10))
        .with_max_concurrent_streams(MAX_STREAMS);
    request_response::Behaviour::with_codec(codec, iter::once((PROTOCOL, support)), config)
}

/// A holder's answer: the first bytes of the file at `path` (at most [`MAX_PREVIEW`]).
pub(crate) async fn answer_from_file(path: &Path, len: u32) -> Response {
    let want = len.min(MAX_PREVIEW) as usize;
    let read = async {
        let mut file = tokio::fs::File::open(path).await?;
        let mut bytes = vec![0; want];
        let mut filled = 0;
        while filled < want {
            let n = file.read(&mut bytes[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        bytes.truncate(filled);
        std::io::Result::Ok(bytes)
    };
    match read.await {
        Ok(bytes) => Response::Bytes(bytes),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read a preview");
            Response::NotFound
        }
    }
}

/// The tracker's answer, from what a lookup of the file found.
pub(crate) fn answer_from_index(records: &[FileRecord]) -> Response {
    match records.first() {
        Some(record) => Response::Card {
            name: record.name.to_string(),
            size: record.size,
            seeders: record.seeders,
        },
        None => Response::NotFound,
    }
}
