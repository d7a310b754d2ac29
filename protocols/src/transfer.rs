//! Messages of the transfer protocol ([`crate::TRANSFER_PROTOCOL`]), peer -> peer.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, FileId, WireManifest};

/// A request to a peer that holds a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The file's manifest (or, for a shared directory, its collection).
    Manifest {
        /// The file.
        id: FileId,
    },
    /// A bitfield of the pieces the peer holds.
    Have {
        /// The file.
        id: FileId,
    },
    /// One piece's bytes. The index is checked against the file's lengths by the server.
    Piece {
        /// The file.
        id: FileId,
        /// The piece index.
        index: u32,
        /// The piece's length by the asker's verified manifest: the answer's body must be
        /// exactly this long, checked before anything is allocated. Local only: never sent
        /// (it arrives as 0, which the server ignores).
        #[serde(skip)]
        expect: u32,
    },
}

/// A peer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The file's manifest, still to be verified against the id asked for.
    Manifest(WireManifest),
    /// Pieces held: bit `i` (most significant bit first in each byte) is piece `i`.
    Have(Vec<u8>),
    /// A piece's bytes, still to be verified against the manifest. Sent raw on the wire.
    Piece(Vec<u8>),
    /// The id asked for with [`Request::Manifest`] names a shared directory: its canonical
    /// encoding, still to be checked with [`crate::Collection::decode`].
    Collection(Vec<u8>),
    /// The request failed.
    Error(ErrorCode),
    /// A manifest or collection response encoded once and shared (sending only; it arrives as
    /// [`Response::Manifest`] or [`Response::Collection`]).
    Prepared(crate::codec::Prepared),
}
