//! Errors of the content model and the wire error code.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value from the network or the user that does not fit a validated type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// A file id that is not 32 bytes or 64 hex digits.
    #[error("invalid file id: expected 64 hex digits (a BLAKE3 hash)")]
    InvalidFileId,
    /// A file name that is empty, too long, or has a path separator or NUL.
    #[error("invalid file name {0:?}: must be 1-255 bytes without '/', '\\' or NUL, and not '.' or '..'")]
    InvalidFileName(String),
    /// A piece size that is not a power of two within the allowed range.
    #[error("invalid piece size {0}: must be a power of two from 16 KiB to 16 MiB")]
    InvalidPieceSize(u64),
    /// A file too large to describe with at most `MAX_PIECES` pieces of the largest size.
    #[error("file of {0} bytes is too large")]
    FileTooLarge(u64),
    /// A piece index at or past the piece count.
    #[error("piece index {index} out of range (file has {count} pieces)")]
    PieceOutOfRange {
        /// The index asked for.
        index: u32,
        /// The number of pieces of the file.
        count: u32,
    },
}

/// Why a manifest or a piece was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest's lengths are invalid.
    #[error("invalid manifest")]
    Invalid(#[from] TypeError),
    /// The number of chaining values does not match the piece count.
    #[error("manifest has {got} chaining values, expected {expected}")]
    WrongPieceCount {
        /// Values present.
        got: usize,
        /// Values the size and piece size imply.
        expected: usize,
    },
    /// The chaining values do not merge to the requested file id.
    #[error("manifest does not match file id {0}")]
    RootMismatch(crate::FileId),
    /// A piece's bytes do not match its chaining value.
    #[error("piece {0} does not match the manifest")]
    PieceMismatch(u32),
    /// A piece's length is not the length the manifest implies.
    #[error("piece {index} has {got} bytes, expected {expected}")]
    PieceLength {
        /// The piece.
        index: u32,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: u64,
    },
}

/// A remote failure, as it travels on the wire: a small code, never free text from the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorCode {
    /// The file or piece is not held by the remote.
    #[error("not found")]
    NotFound,
    /// The request was malformed or invalid.
    #[error("bad request")]
    BadRequest,
    /// A configured limit was reached (registrations, files, peers).
    #[error("limit reached")]
    LimitReached,
    /// The remote is overloaded; try again later or elsewhere.
    #[error("busy")]
    Busy,
    /// The remote failed internally (for example a disk read error).
    #[error("internal error")]
    Internal,
    /// A code this version does not know.
    #[error("unknown error")]
    Unknown,
}

impl ErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            ErrorCode::NotFound => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::LimitReached => 3,
            ErrorCode::Busy => 4,
            ErrorCode::Internal => 5,
            ErrorCode::Unknown => 255,
        }
    }

    fn from_u8(code: u8) -> Self {
        match code {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::LimitReached,
            4 => ErrorCode::Busy,
            5 => ErrorCode::Internal,
            _ => ErrorCode::Unknown,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.to_u8())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(ErrorCode::from_u8)
    }
}
