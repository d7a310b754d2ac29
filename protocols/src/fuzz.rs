//! Entry points for the fuzzers in `fuzz/` and for the test that replays their corpus on the
//! stable toolchain (`protocols/tests/fuzz_corpus.rs`): one function per decoder the network
//! reaches. Each takes arbitrary bytes and must return without panicking, whatever they are;
//! the decoders' own errors are the expected outcome for most inputs.

use futures::{executor::block_on, io::Cursor};
use libp2p::request_response::Codec;

use crate::{
    tracker_codec, transfer, Collection, FileId, RelPath, TransferCodec, WireManifest,
    TRACKER_PROTOCOL, TRANSFER_PROTOCOL,
};

/// One fuzz target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzzer and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("transfer_request", transfer_request),
    ("transfer_response", transfer_response),
    ("tracker_request", tracker_request),
    ("tracker_response", tracker_response),
    ("manifest", manifest),
    ("collection", collection),
    ("addr", addr),
];

/// A transfer request as a peer would send it to us.
pub fn transfer_request(data: &[u8]) {
    let mut codec = TransferCodec::default();
    let _ = block_on(codec.read_request(&TRANSFER_PROTOCOL, &mut Cursor::new(data)));
}

/// A transfer response, read once as the answer to a piece request of the length the first
/// input byte names (so the length check is reached) and once as the answer to a manifest
/// request.
pub fn transfer_response(data: &[u8]) {
    let Some((&expect, frame)) = data.split_first() else {
        return;
    };
    let piece = transfer::Request::Piece {
        id: FileId::of(b"fuzz"),
        index: 0,
        expect: u32::from(expect),
    };
    let manifest = transfer::Request::Manifest {
        id: FileId::of(b"fuzz"),
    };
    for request in [piece, manifest] {
        let mut codec = TransferCodec::default();
        let _ = block_on(async {
            let mut sink = Cursor::new(Vec::new());
            codec
                .write_request(&TRANSFER_PROTOCOL, &mut sink, request)
                .await?;
            codec
                .read_response(&TRANSFER_PROTOCOL, &mut Cursor::new(frame))
                .await
        });
    }
}

/// A tracker request as a peer would send it to the tracker.
pub fn tracker_request(data: &[u8]) {
    let mut codec = tracker_codec();
    let _ = block_on(codec.read_request(&TRACKER_PROTOCOL, &mut Cursor::new(data)));
}

/// A tracker response as a tracker would send it to a peer.
pub fn tracker_response(data: &[u8]) {
    let mut codec = tracker_codec();
    let _ = block_on(codec.read_response(&TRACKER_PROTOCOL, &mut Cursor::new(data)));
}

/// A manifest in its CBOR form, verified against the id of its own values (so verification
/// gets past the first checks) and against an unrelated id.
pub fn manifest(data: &[u8]) {
    let Ok(wire) = cbor4ii::serde::from_slice::<WireManifest>(data) else {
        return;
    };
    let _ = wire.clone().verify(FileId::of(&wire.values));
    let _ = wire.verify(FileId::of(data));
}

/// Collection bytes, checked against their own hash (so decoding and path validation run), and
/// the input as a relative path.
pub fn collection(data: &[u8]) {
    let _ = Collection::decode(data, FileId::of(data));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RelPath::new(text);
    }
}

/// An address as typed on the command line or sent by a peer.
pub fn addr(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::parse_addr(text);
    }
    let _ = libp2p::Multiaddr::try_from(data.to_vec());
}

/// Valid inputs for each target, to start its corpus from (written by
/// `cargo test -p bitswarm-protocols --test fuzz_corpus -- --ignored write_seeds`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::{
        tracker::{self, Announce, AnnouncedFile, FileRecord, LookupKey, Provider, Reply, Stats},
        CollectionEntry, FileName, Manifest,
    };
    let cbor = |value: &dyn erased::Cbor| value.to_cbor();
    let id = FileId::of(b"seed");
    let name = FileName::new("movie.mkv").unwrap_or_else(|_| unreachable!());
    let peer = libp2p::PeerId::from_public_key(
        &libp2p::identity::Keypair::ed25519_from_bytes([7; 32])
            .unwrap_or_else(|_| unreachable!())
            .public(),
    );
    let addr: libp2p::Multiaddr = "/ip4/198.51.100.7/tcp/6881"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();

    for request in [
        transfer::Request::Manifest { id },
        transfer::Request::Have { id },
        transfer::Request::Piece {
            id,
            index: 3,
            expect: 0,
        },
    ] {
        out.push(("transfer_request", cbor(&request)));
    }

    let data = vec![5u8; 3 << 20];
    let manifest = Manifest::of_bytes(name.clone(), &data).unwrap_or_else(|_| unreachable!());
    out.push(("manifest", cbor(&manifest.to_wire())));

    let collection = Collection::new(
        FileName::new("album").unwrap_or_else(|_| unreachable!()),
        vec![CollectionEntry {
            path: RelPath::new("disc 1/track.flac").unwrap_or_else(|_| unreachable!()),
            size: 10,
            id,
        }],
    )
    .unwrap_or_else(|_| unreachable!());
    out.push(("collection", collection.encode()));
    out.push(("collection", b"disc 2/a.flac".to_vec()));

    for response in [
        transfer::Response::Piece(vec![1, 2, 3, 4]),
        transfer::Response::Manifest(manifest.to_wire()),
        transfer::Response::Have(vec![0b1010_0000]),
        transfer::Response::Error(crate::ErrorCode::Busy),
        transfer::Response::Collection(collection.encode()),
    ] {
        let mut frame = vec![4u8];
        let mut sink = Cursor::new(Vec::new());
        let written = block_on(TransferCodec::default().write_response(
            &TRANSFER_PROTOCOL,
            &mut sink,
            response,
        ));
        if written.is_ok() {
            frame.extend(sink.into_inner());
            out.push(("transfer_response", frame));
        }
    }

    let file = AnnouncedFile {
        id,
        name: name.clone(),
        size: 10,
        complete: true,
    };
    for request in [
        tracker::Request::Announce(Announce {
            files: vec![file],
            addrs: vec![addr.clone()],
        }),
        tracker::Request::Unannounce { id },
        tracker::Request::Lookup {
            key: LookupKey::Name(name.clone()),
            limit: 50,
        },
        tracker::Request::Search {
            query: "movie".to_owned(),
            limit: 50,
        },
        tracker::Request::Stats,
    ] {
        out.push(("tracker_request", cbor(&request)));
    }
    let record = FileRecord {
        id,
        name,
        size: 10,
        seeders: 1,
        providers: vec![Provider {
            peer,
            addrs: vec![addr],
            complete: false,
        }],
    };
    for response in [
        Ok(Reply::Announced {
            interval_secs: 30,
            ttl_secs: 90,
        }),
        Ok(Reply::Providers(vec![record])),
        Ok(Reply::Stats(Stats { peers: 3, files: 2 })),
        Err(crate::ErrorCode::LimitReached),
    ] {
        let response: tracker::Response = response;
        out.push(("tracker_response", cbor(&response)));
    }

    for text in [
        "127.0.0.1:7000",
        "tracker.example:7000",
        "[::1]:7000",
        "/ip4/198.51.100.7/udp/7000/quic-v1",
        "/ip4/198.51.100.7/tcp/7000/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
    ] {
        out.push(("addr", text.as_bytes().to_vec()));
    }
    out
}

/// CBOR encoding for the seeds, whatever the message type.
mod erased {
    pub(super) trait Cbor {
        fn to_cbor(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Cbor for T {
        fn to_cbor(&self) -> Vec<u8> {
            cbor4ii::serde::to_vec(Vec::new(), self).unwrap_or_default()
        }
    }
}
