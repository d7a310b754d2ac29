//! A shared directory: the [`Collection`] of its files, each at a validated [`RelPath`].
//!
//! A collection lists `(relative path, size, FileId)` for every file in a directory and has an id
//! of its own: the BLAKE3 hash of its canonical CBOR encoding ([`Collection::id`]), in the same
//! id space as files, so a collection travels like any other file and is checked the same way.
//!
//! Everything that could let a remote write outside the download directory is refused here, once:
//!
//! - a [`RelPath`] is relative, has no `.`/`..`/empty components, no `\`, `:` or NUL, and no
//!   name that Windows treats as a device or silently rewrites (`nul.txt`, `a.`);
//! - [`Collection::decode`] bounds the input ([`MAX_COLLECTION_BYTES`]), checks the bytes against
//!   the id that was asked for *before* parsing them, and accepts only the one canonical encoding
//!   of a valid collection (sorted, no duplicates, no file that is also a directory).

use std::convert::Infallible;

use serde::{Deserialize, Serialize};

pub use crate::relpath::{RelPath, MAX_PATH_COMPONENTS, MAX_PATH_LEN};
use crate::{FileId, FileName};

/// Most entries one collection may have.
pub const MAX_COLLECTION_ENTRIES: usize = 65_536;
/// Largest encoded collection, in bytes (8 MiB); [`Collection::decode`] refuses anything larger
/// before hashing or parsing it.
pub const MAX_COLLECTION_BYTES: usize = 8 << 20;

/// The encoding version this code writes and the only one it reads.
const VERSION: u64 = 1;

/// Why a path or a collection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectionError {
    /// A path that breaks one of the [`RelPath`] rules.
    #[error("path {path:?} is not allowed: {reason}")]
    InvalidPath {
        /// The path as given (lossy if it was not UTF-8).
        path: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Two entries with the same path.
    #[error("path {0} appears twice in the collection")]
    Duplicate(RelPath),
    /// An entry whose path is also used as a directory by another entry (`a` and `a/b`).
    #[error("path {dir} is a file, but {file} needs it to be a directory")]
    PrefixConflict {
        /// The entry inside the would-be directory (`a/b`).
        file: RelPath,
        /// The entry that is a file but would also have to be a directory (`a`).
        dir: RelPath,
    },
    /// More than [`MAX_COLLECTION_ENTRIES`] entries.
    #[error("collection has {0} entries, more than the limit of {MAX_COLLECTION_ENTRIES}")]
    TooMany(usize),
    /// No entries at all.
    #[error("collection has no entries")]
    Empty,
    /// An encoding of more than [`MAX_COLLECTION_BYTES`].
    #[error("collection encoding of {0} bytes is over the limit of {MAX_COLLECTION_BYTES}")]
    TooLarge(usize),
    /// Bytes that do not hash to the id that was asked for.
    #[error("collection bytes do not match id {expected}")]
    IdMismatch {
        /// The id that was asked for.
        expected: FileId,
    },
    /// Bytes that hash correctly but are not the canonical encoding of a valid collection.
    #[error("malformed collection encoding")]
    Malformed,
    /// An encoding version this code does not know.
    #[error("unsupported collection version {0}")]
    UnsupportedVersion(u64),
}

/// One file of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionEntry {
    /// Where the file sits inside the shared directory.
    pub path: RelPath,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's id (the BLAKE3 hash of its bytes).
    pub id: FileId,
}

/// A shared directory: its name and its files, sorted by path.
///
/// Invariants: 1 to [`MAX_COLLECTION_ENTRIES`] entries, in [`RelPath`] order, no two with the
/// same path, none whose path is a directory of another; the canonical encoding fits
/// [`MAX_COLLECTION_BYTES`]. It is computed once, in [`Collection::new`], together with the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    name: FileName,
    entries: Vec<CollectionEntry>,
    /// The canonical encoding of `name` and `entries`.
    bytes: Vec<u8>,
    /// `FileId::of(&bytes)`.
    id: FileId,
}

/// A collection as it is encoded: a CBOR map whose first key is the version.
#[derive(Serialize)]
struct WireRef<'a> {
    v: u64,
    name: &'a FileName,
    entries: &'a [CollectionEntry],
}

/// A decoded collection whose paths are not checked yet (the same layout as [`WireRef`]).
#[derive(Deserialize)]
struct UncheckedWire {
    #[allow(dead_code)]
    v: u64,
    name: FileName,
    entries: Vec<UncheckedEntry>,
}

#[derive(Deserialize)]
struct UncheckedEntry {
    path: String,
    size: u64,
    id: FileId,
}

/// Just the version of an encoding, read before the rest so that a future layout is reported as
/// [`CollectionError::UnsupportedVersion`] rather than as malformed.
#[derive(Deserialize)]
struct WireVersion {
    v: u64,
}

impl Collection {
    /// A collection of `entries`, sorted by path.
    ///
    /// # Errors
    /// [`CollectionError::Empty`], [`CollectionError::TooMany`], [`CollectionError::Duplicate`],
    /// [`CollectionError::PrefixConflict`], or [`CollectionError::TooLarge`] when the encoding
    /// would not fit [`MAX_COLLECTION_BYTES`] (so no peer could fetch it).
    pub fn new(name: FileName, mut entries: Vec<CollectionEntry>) -> Result<Self, CollectionError> {
        if entries.is_empty() {
            return Err(CollectionError::Empty);
        }
        if entries.len() > MAX_COLLECTION_ENTRIES {
            return Err(CollectionError::TooMany(entries.len()));
        }
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        // In component order everything under a path directly follows it, so checking each
        // neighbour pair finds every duplicate and every file that is also a directory.
        for pair in entries.windows(2) {
            if let [a, b] = pair {
                if a.path == b.path {
                    return Err(CollectionError::Duplicate(a.path.clone()));
                }
                if is_dir_of(&a.path, &b.path) {
                    return Err(CollectionError::PrefixConflict {
                        file: b.path.clone(),
                        dir: a.path.clone(),
                    });
                }
            }
        }
        let bytes = encode_bounded(&WireRef {
            v: VERSION,
            name: &name,
            entries: &entries,
        })?;
        let id = FileId::of(&bytes);
        Ok(Collection {
            name,
            entries,
            bytes,
            id,
        })
    }

    /// Decodes a collection fetched as `expected`.
    ///
    /// In order: refuses more than [`MAX_COLLECTION_BYTES`], checks that the bytes hash to
    /// `expected` before parsing anything, reads the version, parses, re-validates through
    /// [`Collection::new`], and accepts only the canonical encoding (entries already sorted,
    /// nothing added or encoded differently).
    ///
    /// # Errors
    /// [`CollectionError::TooLarge`], [`CollectionError::IdMismatch`],
    /// [`CollectionError::UnsupportedVersion`], [`CollectionError::Malformed`], or any error of
    /// [`Collection::new`].
    pub fn decode(bytes: &[u8], expected: FileId) -> Result<Collection, CollectionError> {
        if bytes.len() > MAX_COLLECTION_BYTES {
            return Err(CollectionError::TooLarge(bytes.len()));
        }
        if FileId::of(bytes) != expected {
            return Err(CollectionError::IdMismatch { expected });
        }
        let version: WireVersion =
            cbor4ii::serde::from_slice(bytes).map_err(|_| CollectionError::Malformed)?;
        if version.v != VERSION {
            return Err(CollectionError::UnsupportedVersion(version.v));
        }
        let wire: UncheckedWire =
            cbor4ii::serde::from_slice(bytes).map_err(|_| CollectionError::Malformed)?;
        // Paths are read as plain strings and checked here, so a hostile path is reported as
        // what it is (`InvalidPath` naming it) rather than as a malformed encoding.
        let entries = wire
            .entries
            .into_iter()
            .map(|e| {
                Ok(CollectionEntry {
                    path: RelPath::new(e.path)?,
                    size: e.size,
                    id: e.id,
                })
            })
            .collect::<Result<Vec<_>, CollectionError>>()?;
        if !entries.is_sorted_by(|a, b| a.path <= b.path) {
            return Err(CollectionError::Malformed);
        }
        let collection = Collection::new(wire.name, entries)?;
        if collection.bytes != bytes {
            return Err(CollectionError::Malformed);
        }
        Ok(collection)
    }

    /// The canonical encoding: the same collection always encodes to the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The collection's id: the BLAKE3 hash of [`Collection::encode`].
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The shared directory's name.
    pub fn name(&self) -> &FileName {
        &self.name
    }

    /// The files, sorted by path.
    pub fn entries(&self) -> &[CollectionEntry] {
        &self.entries
    }

    /// The sum of the file sizes, saturating at `u64::MAX`.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size))
    }

    /// The entry at `path`, if any.
    pub fn find(&self, path: &RelPath) -> Option<&CollectionEntry> {
        let i = self.entries.binary_search_by(|e| e.path.cmp(path)).ok()?;
        self.entries.get(i)
    }
}

/// Whether `dir`'s components are a proper prefix of `path`'s.
fn is_dir_of(dir: &RelPath, path: &RelPath) -> bool {
    path.as_str()
        .strip_prefix(dir.as_str())
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A CBOR sink that keeps at most [`MAX_COLLECTION_BYTES`] but counts every byte, so an oversized
/// collection is measured without being held in memory.
#[derive(Default)]
struct BoundedSink {
    buf: Vec<u8>,
    len: usize,
}

impl cbor4ii::core::enc::Write for BoundedSink {
    type Error = Infallible;

    fn push(&mut self, input: &[u8]) -> Result<(), Self::Error> {
        self.len = self.len.saturating_add(input.len());
        if self.len <= MAX_COLLECTION_BYTES {
            self.buf.extend_from_slice(input);
        }
        Ok(())
    }
}

/// Encodes `wire`, refusing an encoding over [`MAX_COLLECTION_BYTES`].
fn encode_bounded(wire: &WireRef<'_>) -> Result<Vec<u8>, CollectionError> {
    let mut ser = cbor4ii::serde::Serializer::new(BoundedSink::default());
    // The sink cannot fail and every field serializes infallibly (strings, integers, byte
    // strings, sequences of known length), so this error is unreachable; it is mapped rather
    // than unwrapped.
    wire.serialize(&mut ser)
        .map_err(|_| CollectionError::Malformed)?;
    let sink = ser.into_inner();
    if sink.len > MAX_COLLECTION_BYTES {
        return Err(CollectionError::TooLarge(sink.len));
    }
    Ok(sink.buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn entry(p: &str, size: u64) -> CollectionEntry {
        CollectionEntry {
            path: path(p),
            size,
            id: FileId::of(p.as_bytes()),
        }
    }

    fn name() -> FileName {
        FileName::new("photos").unwrap()
    }

    fn sample() -> Collection {
        Collection::new(
            name(),
            vec![
                entry("b.txt", 3),
                entry("a/z.jpg", 100),
                entry("a/b/c.png", 7),
                entry("a-b", 0),
            ],
        )
        .unwrap()
    }

    /// Entries as a hostile or future peer could encode them: any string as a path.
    #[derive(Serialize)]
    struct RawEntry {
        path: String,
        size: u64,
        id: FileId,
    }

    #[derive(Serialize)]
    struct RawCollection {
        v: u64,
        name: String,
        entries: Vec<RawEntry>,
    }

    fn raw(v: u64, paths: &[&str]) -> Vec<u8> {
        let wire = RawCollection {
            v,
            name: "photos".into(),
            entries: paths
                .iter()
                .map(|p| RawEntry {
                    path: (*p).into(),
                    size: 1,
                    id: FileId::of(p.as_bytes()),
                })
                .collect(),
        };
        cbor4ii::serde::to_vec(Vec::new(), &wire).unwrap()
    }

    /// Decodes `bytes` as the id they hash to, so only the checks after the id check can fail.
    fn decode_honest_id(bytes: &[u8]) -> Result<Collection, CollectionError> {
        Collection::decode(bytes, FileId::of(bytes))
    }

    #[test]
    fn given_collection_when_encoded_and_decoded_then_same_collection_and_id() {
        let c = sample();
        let bytes = c.encode();
        assert_eq!(c.id(), FileId::of(&bytes));
        let back = Collection::decode(&bytes, c.id()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.name(), &name());
        assert_eq!(back.total_size(), 110);
    }

    #[test]
    fn given_same_entries_in_any_order_then_same_bytes_and_id() {
        let mut entries = sample().entries().to_vec();
        entries.reverse();
        let reversed = Collection::new(name(), entries.clone()).unwrap();
        entries.swap(0, 2);
        let shuffled = Collection::new(name(), entries).unwrap();
        assert_eq!(reversed.encode(), sample().encode());
        assert_eq!(shuffled.encode(), sample().encode());
        assert_eq!(shuffled.id(), sample().id());
    }

    #[test]
    fn given_entries_then_sorted_component_by_component() {
        let c = sample();
        let paths: Vec<&str> = c.entries().iter().map(|e| e.path.as_str()).collect();
        // "a/..." before "a-b" although '-' < '/' as bytes: a directory's files stay together.
        assert_eq!(paths, ["a/b/c.png", "a/z.jpg", "a-b", "b.txt"]);
    }

    #[test]
    fn given_collection_then_find_returns_only_listed_paths() {
        let c = sample();
        assert_eq!(c.find(&path("a/z.jpg")).map(|e| e.size), Some(100));
        assert_eq!(c.find(&path("a-b")).map(|e| e.size), Some(0));
        assert!(c.find(&path("a")).is_none());
        assert!(c.find(&path("a/z")).is_none());
    }

    #[test]
    fn given_duplicate_paths_then_refused() {
        let err = Collection::new(
            name(),
            vec![entry("a/b", 1), entry("x", 2), entry("a/b", 3)],
        );
        assert_eq!(err, Err(CollectionError::Duplicate(path("a/b"))));
    }

    #[test]
    fn given_file_that_is_also_a_directory_then_refused() {
        let err = Collection::new(
            name(),
            vec![entry("a/b/c", 1), entry("a-x", 1), entry("a", 2)],
        );
        assert_eq!(
            err,
            Err(CollectionError::PrefixConflict {
                file: path("a/b/c"),
                dir: path("a"),
            })
        );
        // A shared name prefix that is not a directory is fine.
        assert!(Collection::new(name(), vec![entry("ab", 1), entry("a/b", 1)]).is_ok());
    }

    #[test]
    fn given_no_or_too_many_entries_then_refused() {
        assert_eq!(Collection::new(name(), vec![]), Err(CollectionError::Empty));
        let many: Vec<_> = (0..=MAX_COLLECTION_ENTRIES)
            .map(|i| entry(&format!("f{i}"), 1))
            .collect();
        assert_eq!(
            Collection::new(name(), many),
            Err(CollectionError::TooMany(MAX_COLLECTION_ENTRIES + 1))
        );
    }

    #[test]
    fn given_encoding_over_the_limit_then_new_refuses_it() {
        let long = "x".repeat(200);
        let entries: Vec<_> = (0..MAX_COLLECTION_ENTRIES)
            .map(|i| entry(&format!("{i:05}/{long}"), 1))
            .collect();
        assert!(matches!(
            Collection::new(name(), entries),
            Err(CollectionError::TooLarge(n)) if n > MAX_COLLECTION_BYTES
        ));
    }

    #[test]
    fn given_oversized_bytes_then_refused_before_hashing() {
        let bytes = vec![0u8; MAX_COLLECTION_BYTES + 1];
        assert_eq!(
            decode_honest_id(&bytes),
            Err(CollectionError::TooLarge(MAX_COLLECTION_BYTES + 1))
        );
    }

    #[test]
    fn given_tampered_byte_then_id_mismatch() {
        let c = sample();
        let mut bytes = c.encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            Collection::decode(&bytes, c.id()),
            Err(CollectionError::IdMismatch { expected: c.id() })
        );
        assert!(Collection::decode(&c.encode(), FileId::of(b"other")).is_err());
    }

    #[test]
    fn given_raw_encoding_of_sorted_entries_then_same_as_ours() {
        let bytes = raw(1, &["a/b/c.png", "a/z.jpg", "b.txt"]);
        let c = decode_honest_id(&bytes).unwrap();
        assert_eq!(c.encode(), bytes);
    }

    #[test]
    fn given_reordered_entries_in_encoding_then_refused_as_non_canonical() {
        let bytes = raw(1, &["b.txt", "a/z.jpg"]);
        assert_eq!(decode_honest_id(&bytes), Err(CollectionError::Malformed));
    }

    #[test]
    fn given_duplicate_or_conflicting_entries_in_encoding_then_refused() {
        assert_eq!(
            decode_honest_id(&raw(1, &["a", "a"])),
            Err(CollectionError::Duplicate(path("a")))
        );
        assert_eq!(
            decode_honest_id(&raw(1, &["a", "a/b"])),
            Err(CollectionError::PrefixConflict {
                file: path("a/b"),
                dir: path("a"),
            })
        );
        assert_eq!(decode_honest_id(&raw(1, &[])), Err(CollectionError::Empty));
    }

    #[test]
    fn given_hostile_path_in_encoding_then_refused() {
        for bad in ["../x", "/etc/passwd", "a\\b", "nul"] {
            assert!(
                matches!(
                    decode_honest_id(&raw(1, &[bad])),
                    Err(CollectionError::InvalidPath { ref path, .. }) if path == bad
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn given_future_version_then_unsupported() {
        assert_eq!(
            decode_honest_id(&raw(2, &["a"])),
            Err(CollectionError::UnsupportedVersion(2))
        );

        #[derive(Serialize)]
        struct Other {
            v: u64,
            chunks: Vec<u32>,
        }
        let other = cbor4ii::serde::to_vec(
            Vec::new(),
            &Other {
                v: 7,
                chunks: vec![1, 2],
            },
        )
        .unwrap();
        assert_eq!(
            decode_honest_id(&other),
            Err(CollectionError::UnsupportedVersion(7))
        );
    }

    #[test]
    fn given_non_canonical_cbor_then_refused() {
        let mut trailing = sample().encode();
        trailing.push(0);
        assert_eq!(decode_honest_id(&trailing), Err(CollectionError::Malformed));

        #[derive(Serialize)]
        struct Extra {
            v: u64,
            name: String,
            entries: Vec<CollectionEntry>,
            extra: u8,
        }
        let extra = cbor4ii::serde::to_vec(
            Vec::new(),
            &Extra {
                v: 1,
                name: "photos".into(),
                entries: sample().entries().to_vec(),
                extra: 0,
            },
        )
        .unwrap();
        assert_eq!(decode_honest_id(&extra), Err(CollectionError::Malformed));

        assert_eq!(decode_honest_id(b"\xff"), Err(CollectionError::Malformed));
        assert_eq!(decode_honest_id(b""), Err(CollectionError::Malformed));
    }
}
