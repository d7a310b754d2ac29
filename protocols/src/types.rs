//! Validated content types: [`FileId`], [`FileName`], and the piece arithmetic of [`Lengths`].

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::TypeError;

/// Default piece size: 1 MiB (measured best on the target machines; see DESIGN §4).
pub const DEFAULT_PIECE_SIZE: u32 = 1 << 20;
/// Smallest accepted piece size: 16 KiB.
pub const MIN_PIECE_SIZE: u32 = 1 << 14;
/// Largest accepted piece size: 16 MiB.
pub const MAX_PIECE_SIZE: u32 = 1 << 24;
/// Most pieces one file may have. Bounds the manifest to 2 MiB of chaining values.
pub const MAX_PIECES: u32 = 1 << 16;

/// The id of a file: the BLAKE3 hash of its bytes, exactly what `b3sum` prints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId([u8; 32]);

impl FileId {
    /// Wraps a 32-byte BLAKE3 hash.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        FileId(bytes)
    }

    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        FileId(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short form for logs and progress lines (the first 12 hex digits).
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl From<blake3::Hash> for FileId {
    fn from(h: blake3::Hash) -> Self {
        FileId(*h.as_bytes())
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.short())
    }
}

impl FromStr for FileId {
    type Err = TypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hash = blake3::Hash::from_hex(s).map_err(|_| TypeError::InvalidFileId)?;
        Ok(hash.into())
    }
}

impl Serialize for FileId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteArray::<32>::deserialize(d)?;
        Ok(FileId(bytes.into_array()))
    }
}

/// Longest accepted file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A file's name: one path component, 1-255 bytes, no separator, no NUL, not `.` or `..`.
///
/// Safe to join onto a directory: it can never leave it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileName(String);

impl FileName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`TypeError::InvalidFileName`] when it is not a single safe path component.
    pub fn new(name: impl Into<String>) -> Result<Self, TypeError> {
        let name = name.into();
        let bad = name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name == "."
            || name == ".."
            || name.contains(['/', '\\', '\0']);
        if bad {
            return Err(TypeError::InvalidFileName(name));
        }
        Ok(FileName(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FileName {
    type Error = TypeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        FileName::new(s)
    }
}

impl From<FileName> for String {
    fn from(n: FileName) -> String {
        n.0
    }
}

/// Shown with [`escape`]: a name from the network never reaches a terminal raw.
impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

/// Whether `c` can change what a terminal shows beyond its own glyph: a control character
/// (C0, DEL, C1: escape sequences, carriage returns) or an invisible formatting character that
/// reorders or hides text (bidirectional overrides and isolates, zero-width characters).
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `s` made safe to print: every [`is_unprintable`] character is written as a Rust escape
/// (`\u{1b}`), and so is a backslash, so two different names never print the same.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || is_unprintable(c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' || is_unprintable(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A piece index checked against a [`Lengths`]: it can only be made by [`Lengths::piece`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl PieceIndex {
    /// The index as a number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The index as a `usize`, for bitfields and vectors.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// All piece arithmetic of one file: piece count, piece lengths and offsets.
///
/// Invariants: `piece_size` is a power of two in `MIN_PIECE_SIZE..=MAX_PIECE_SIZE`, and the file
/// has at most [`MAX_PIECES`] pieces, so every piece index fits a `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    size: u64,
    piece_size: u32,
    count: u32,
}

impl Lengths {
    /// Lengths of a file of `size` bytes cut in pieces of `piece_size`.
    ///
    /// # Errors
    /// [`TypeError::InvalidPieceSize`] or [`TypeError::FileTooLarge`].
    pub fn new(size: u64, piece_size: u32) -> Result<Self, TypeError> {
        if !piece_size.is_power_of_two() || !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size)
        {
            return Err(TypeError::InvalidPieceSize(u64::from(piece_size)));
        }
        let count = size.div_ceil(u64::from(piece_size));
        let count = u32::try_from(count)
            .ok()
            .filter(|c| *c <= MAX_PIECES)
            .ok_or(TypeError::FileTooLarge(size))?;
        Ok(Lengths {
            size,
            piece_size,
            count,
        })
    }

    /// Lengths with the default piece size, doubled as often as needed to stay within
    /// [`MAX_PIECES`].
    ///
    /// # Errors
    /// [`TypeError::FileTooLarge`] past `MAX_PIECES * MAX_PIECE_SIZE` bytes (1 TiB).
    pub fn for_size(size: u64) -> Result<Self, TypeError> {
        let mut piece_size = DEFAULT_PIECE_SIZE;
        while size.div_ceil(u64::from(piece_size)) > u64::from(MAX_PIECES) {
            piece_size = piece_size
                .checked_mul(2)
                .filter(|p| *p <= MAX_PIECE_SIZE)
                .ok_or(TypeError::FileTooLarge(size))?;
        }
        Lengths::new(size, piece_size)
    }

    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The piece size in bytes.
    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    /// The number of pieces (0 for an empty file).
    pub fn piece_count(&self) -> u32 {
        self.count
    }

    /// Validates a piece index from the network or a resume record.
    ///
    /// # Errors
    /// [`TypeError::PieceOutOfRange`] when `index >= piece_count`.
    pub fn piece(&self, index: u32) -> Result<PieceIndex, TypeError> {
        if index < self.count {
            Ok(PieceIndex(index))
        } else {
            Err(TypeError::PieceOutOfRange {
                index,
                count: self.count,
            })
        }
    }

    /// Every piece index, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> {
        (0..self.count).map(PieceIndex)
    }

    /// Byte offset of a piece in the file.
    pub fn offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.0) * u64::from(self.piece_size)
    }

    /// Length of a piece: the piece size, or what is left for the last one.
    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        let rest = self.size - self.offset(piece);
        // `rest` is at least 1 for a valid index; it fits u32 when below the piece size.
        u32::try_from(rest.min(u64::from(self.piece_size))).unwrap_or(self.piece_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_arithmetic_covers_tail() {
        let l = Lengths::new(3 * 16384 + 5, 16384).unwrap();
        assert_eq!(l.piece_count(), 4);
        let last = l.piece(3).unwrap();
        assert_eq!(l.offset(last), 3 * 16384);
        assert_eq!(l.piece_len(last), 5);
        assert_eq!(l.piece_len(l.piece(0).unwrap()), 16384);
        assert!(matches!(
            l.piece(4),
            Err(TypeError::PieceOutOfRange { index: 4, count: 4 })
        ));
    }

    #[test]
    fn empty_file_has_no_pieces() {
        let l = Lengths::new(0, DEFAULT_PIECE_SIZE).unwrap();
        assert_eq!(l.piece_count(), 0);
        assert!(l.piece(0).is_err());
    }

    #[test]
    fn piece_size_must_be_power_of_two_in_range() {
        assert!(Lengths::new(10, 3000).is_err());
        assert!(Lengths::new(10, 1024).is_err());
        assert!(Lengths::new(10, 1 << 25).is_err());
    }

    #[test]
    fn for_size_grows_piece_size_for_huge_files() {
        let l = Lengths::for_size(200 << 30).unwrap();
        assert!(l.piece_count() <= MAX_PIECES);
        assert_eq!(l.piece_size(), 4 << 20);
        assert!(Lengths::for_size(2 << 40).is_err());
    }

    #[test]
    fn file_id_hex_roundtrip() {
        let id = FileId::of(b"hello");
        assert_eq!(id.to_string(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
        assert!("xyz".parse::<FileId>().is_err());
    }

    #[test]
    fn file_names_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "a/b", "..\\x", "a\0b", &"x".repeat(256)] {
            assert!(FileName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(FileName::new("report 2026.pdf").is_ok());
    }

    #[test]
    fn names_print_escaped() {
        let name = FileName::new("evil\u{1b}[2J\u{202e}txt.exe\rok").unwrap();
        let shown = name.to_string();
        assert!(!shown.chars().any(is_unprintable), "{shown}");
        assert_eq!(shown, "evil\\u{1b}[2J\\u{202e}txt.exe\\rok");
        assert_eq!(escape("plain name.txt"), "plain name.txt");
        assert_ne!(
            escape("a\\u{1b}"),
            escape("a\u{1b}"),
            "a backslash is escaped too"
        );
    }
}
