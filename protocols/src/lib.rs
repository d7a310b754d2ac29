//! Wire protocols and content model of bitswarm.
//!
//! This crate is pure: no runtime, no swarm. It holds
//!
//! - the versioned protocol ids ([`TRACKER_PROTOCOL`], [`TRANSFER_PROTOCOL`]);
//! - content ids and piece arithmetic ([`FileId`], [`Lengths`], [`PieceIndex`]);
//! - the [`Manifest`] and its verification against a [`FileId`] through BLAKE3 chaining values;
//! - the tracker and transfer messages ([`tracker`], [`transfer`]) and their bounded codecs
//!   ([`codec`]), with wire errors as a small [`ErrorCode`].
//!
//! Everything that arrives from the network is validated into these types once, at the codec
//! boundary, so the engines only ever see checked values.
#![deny(missing_docs)]

mod addr;
pub mod buffers;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod collection;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod hash;
pub mod keyfile;
pub mod limits;
mod manifest;
pub mod relpath;
pub mod tracker;
pub mod transfer;
mod types;

pub use addr::{parse_addr, quic_twin, tcp_port, AddrError};
pub use codec::{tracker_codec, Prepared, TrackerCodec, TransferCodec};
pub use collection::{Collection, CollectionEntry, CollectionError};
pub use error::{ErrorCode, ManifestError, TypeError};
pub use hash::{hash_piece, PieceHasher};
pub use manifest::{Manifest, WireManifest};
pub use relpath::RelPath;
pub use types::{
    escape, is_unprintable, FileId, FileName, Lengths, PieceIndex, DEFAULT_PIECE_SIZE,
    MAX_NAME_LEN, MAX_PIECES, MAX_PIECE_SIZE, MIN_PIECE_SIZE,
};

use libp2p::StreamProtocol;

/// Protocol version every bitswarm node and tracker announces through identify.
pub const IDENTIFY_PROTOCOL: &str = "/bitswarm/id/1";

/// Protocol id of the peer -> tracker protocol (announce, lookup, search, stats).
pub const TRACKER_PROTOCOL: StreamProtocol = StreamProtocol::new("/bitswarm/tracker/1");

/// Protocol id of the peer -> peer transfer protocol (manifest, have, piece).
pub const TRANSFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/bitswarm/transfer/1");
