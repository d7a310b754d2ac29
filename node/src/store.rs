//! The piece store over the file system. Every function here blocks: the event loop runs them
//! on `spawn_blocking` tasks and gets their results back as messages.
//!
//! Downloads are written to `NAME.part` with positioned writes; on completion the file is
//! fsynced and atomically renamed to `NAME`, so a file under its final name is always complete
//! and verified. Seeding reads pieces with positioned reads, never the whole file.

use std::{
    fs::{self, File},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bitswarm_protocols::{
    buffers, collection::MAX_COLLECTION_ENTRIES, Collection, CollectionEntry, CollectionError,
    FileId, FileName, Lengths, Manifest, PieceHasher, PieceIndex, RelPath,
};

use serde::{Deserialize, Serialize};

use crate::error::ShareError;

/// Hashes the file at `path` piece by piece into a [`Manifest`], with one piece-sized buffer.
///
/// # Errors
/// [`ShareError`] when the file cannot be read or does not fit the content model.
pub(crate) fn hash_file(path: &Path) -> Result<(Manifest, File), ShareError> {
    let io_err = |source| ShareError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(ShareError::NotAFile(path.to_owned()));
    }
    let invalid = |source| ShareError::Invalid {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ShareError::NotAFile(path.to_owned()))
        .and_then(|n| FileName::new(n).map_err(invalid))?;
    let lengths = Lengths::for_size(meta.len()).map_err(invalid)?;
    let mut hasher = PieceHasher::new(lengths);
    let mut buf = vec![0u8; lengths.piece_size() as usize];
    while let Some(piece) = hasher.next_piece() {
        let chunk = &mut buf[..lengths.piece_len(piece) as usize];
        file.read_exact_at(chunk, lengths.offset(piece))
            .map_err(io_err)?;
        hasher.update(piece, chunk);
    }
    let (_, values) = hasher.finish();
    let manifest = Manifest::new(name, lengths, values).map_err(|_| ShareError::Io {
        path: path.to_owned(),
        source: io::Error::other("piece count"),
    })?;
    Ok((manifest, file))
}

/// Hashes every regular file under `dir` and builds the [`Collection`] of the directory.
/// Symbolic links and special files are skipped (a link could point outside the directory).
///
/// # Errors
/// [`ShareError`] when a file cannot be read, or the tree does not fit a collection (too many
/// files, a name that is not a safe relative path).
pub(crate) fn hash_dir(dir: &Path) -> Result<(Collection, Vec<(Manifest, File)>), ShareError> {
    let io_err = |path: &Path, source| ShareError::Io {
        path: path.to_owned(),
        source,
    };
    let name = dir
        .canonicalize()
        .map_err(|e| io_err(dir, e))?
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ShareError::NotAFile(dir.to_owned()))
        .and_then(|n| {
            FileName::new(n).map_err(|source| ShareError::Invalid {
                path: dir.to_owned(),
                source,
            })
        })?;
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let mut children: Vec<_> = fs::read_dir(&current)
            .map_err(|e| io_err(&current, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| io_err(&current, e))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let path = child.path();
            let kind = child.file_type().map_err(|e| io_err(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
                if files.len() > MAX_COLLECTION_ENTRIES {
                    return Err(ShareError::Collection {
                        path: dir.to_owned(),
                        source: CollectionError::TooMany(files.len()),
                    });
                }
            } else {
                tracing::warn!(path = %path.display(), "skipping a link or special file");
            }
        }
    }
    let mut entries = Vec::with_capacity(files.len());
    let mut held = Vec::with_capacity(files.len());
    for path in files {
        let relative = path
            .strip_prefix(dir)
            .map_err(|_| ShareError::NotAFile(path.clone()))?;
        let rel = RelPath::try_from(relative).map_err(|source| ShareError::Collection {
            path: path.clone(),
            source,
        })?;
        let (manifest, file) = hash_file(&path)?;
        entries.push(CollectionEntry {
            path: rel,
            size: manifest.lengths().size(),
            id: manifest.id(),
        });
        held.push((manifest, file));
    }
    let collection = Collection::new(name, entries).map_err(|source| ShareError::Collection {
        path: dir.to_owned(),
        source,
    })?;
    Ok((collection, held))
}

/// Reads one piece at its offset.
pub(crate) fn read_piece(file: &File, lengths: &Lengths, piece: PieceIndex) -> io::Result<Vec<u8>> {
    let len = lengths.piece_len(piece) as usize;
    let mut buf = buffers::take_filled(len);
    file.read_exact_at(&mut buf, lengths.offset(piece))?;
    Ok(buf)
}

/// Where a download of `name` goes: the final path and its `.part` sibling.
pub(crate) fn download_paths(dir: &Path, name: &FileName) -> (PathBuf, PathBuf) {
    let path = dir.join(name.as_str());
    let part = dir.join(format!("{}.part", name.as_str()));
    (path, part)
}

/// Where the resume record of a download lives: beside its `.part` file.
pub(crate) fn record_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".resume");
    PathBuf::from(name)
}

/// The resume record: which file a `.part` belongs to and which pieces were verified.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeRecord {
    v: u8,
    id: FileId,
    size: u64,
    piece_size: u32,
    #[serde(with = "serde_bytes")]
    have: Vec<u8>,
}

/// Largest resume record read (a bitfield of `MAX_PIECES` bits plus a header).
const MAX_RECORD_LEN: u64 = 16 * 1024;

/// Writes the resume record atomically (temporary file + rename).
pub(crate) fn write_record(part: &Path, manifest: &Manifest, have: Vec<u8>) -> io::Result<()> {
    let record = ResumeRecord {
        v: 1,
        id: manifest.id(),
        size: manifest.lengths().size(),
        piece_size: manifest.lengths().piece_size(),
        have,
    };
    let bytes = cbor4ii::serde::to_vec(Vec::new(), &record).map_err(io::Error::other)?;
    let path = record_path(part);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, &path)
}

/// Reads the resume record of `part`, if there is a readable one.
fn read_record(part: &Path) -> Option<ResumeRecord> {
    let file = File::open(record_path(part)).ok()?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_RECORD_LEN), &mut bytes).ok()?;
    cbor4ii::serde::from_slice(&bytes).ok()
}

/// An opened download: its `.part` file and the pieces already in it, verified.
pub(crate) struct Opened {
    pub(crate) file: File,
    pub(crate) resumed: Vec<PieceIndex>,
}

/// Opens the `.part` file of a download, resuming what an earlier run left.
///
/// Every piece already in the `.part` file is checked against the manifest before it counts:
/// the record names the file the `.part` belongs to, but a piece written just before a crash,
/// or torn by one, is only trusted if its hash matches. A `.part` whose record names another
/// file is started afresh.
pub(crate) fn open_download(path: &Path, part: &Path, manifest: &Manifest) -> io::Result<Opened> {
    if path.exists() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
    }
    let existed = part.exists();
    let stale = read_record(part).is_some_and(|r| {
        r.v != 1
            || r.id != manifest.id()
            || r.size != manifest.lengths().size()
            || r.piece_size != manifest.lengths().piece_size()
    });
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(stale)
        .open(part)?;
    let lengths = manifest.lengths();
    file.set_len(lengths.size())?;
    let mut resumed = Vec::new();
    if existed && !stale {
        let mut buf = vec![0u8; lengths.piece_size() as usize];
        for piece in lengths.pieces() {
            let chunk = &mut buf[..lengths.piece_len(piece) as usize];
            file.read_exact_at(chunk, lengths.offset(piece))?;
            if manifest.verify_piece(piece, chunk).is_ok() {
                resumed.push(piece);
            }
        }
    }
    Ok(Opened { file, resumed })
}

/// Checks a received piece against the manifest and writes it at its offset; the buffer goes
/// back to the pool either way.
pub(crate) fn store_piece(
    file: &File,
    manifest: &Manifest,
    piece: PieceIndex,
    bytes: Vec<u8>,
) -> Result<(), StoreError> {
    let result = match manifest.verify_piece(piece, &bytes) {
        Ok(()) => file
            .write_all_at(&bytes, manifest.lengths().offset(piece))
            .map_err(StoreError::Io),
        Err(_) => Err(StoreError::BadPiece),
    };
    buffers::give(bytes);
    result
}

/// Makes a finished download durable and gives it its final name.
pub(crate) fn finish(file: &File, part: &Path, path: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(part, path)?;
    match fs::remove_file(record_path(part)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(dir) = path.parent() {
        // Persist the rename itself.
        File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(())
}

/// Why a received piece was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The bytes do not match the manifest: the sender lied or its file changed.
    #[error("piece does not match the manifest")]
    BadPiece,
    /// Writing failed.
    #[error("cannot write piece")]
    Io(#[source] io::Error),
}
