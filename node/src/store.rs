//! The piece store over the file system. Every function here blocks: the event loop runs them
//! on `spawn_blocking` tasks and gets their results back as messages.
//!
//! Pieces are written into a download's `.part` file (opened by [`crate::place`]) with positioned
//! writes, each verified first. Seeding reads pieces with positioned reads, never the whole file.

use std::{
    fs::{self, File},
    io,
    os::unix::fs::FileExt,
    path::Path,
};

use bitswarm_protocols::{
    buffers::BufferPool, collection::MAX_COLLECTION_ENTRIES, Collection, CollectionEntry,
    CollectionError, FileName, Lengths, Manifest, PieceHasher, PieceIndex, RelPath,
};

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
    if name.as_str().chars().any(char::is_control) {
        return Err(ShareError::ControlCharacters(path.to_owned()));
    }
    let lengths = Lengths::for_size(meta.len()).map_err(invalid)?;
    let manifest = manifest_of(&file, name, lengths).map_err(io_err)?;
    Ok((manifest, file))
}

/// Hashes the open `file` of `lengths` piece by piece into a [`Manifest`] named `name`, with one
/// piece-sized buffer.
pub(crate) fn manifest_of(file: &File, name: FileName, lengths: Lengths) -> io::Result<Manifest> {
    let mut hasher = PieceHasher::new(lengths);
    let mut buf = vec![0u8; lengths.piece_size() as usize];
    while let Some(piece) = hasher.next_piece() {
        let chunk = &mut buf[..lengths.piece_len(piece) as usize];
        file.read_exact_at(chunk, lengths.offset(piece))?;
        hasher.update(piece, chunk);
    }
    let (_, values) = hasher.finish();
    Manifest::new(name, lengths, values).map_err(|_| io::Error::other("piece count"))
}

/// Hashes every regular file under `dir` and builds the [`Collection`] of the directory. Symbolic links and special files are skipped (a link
/// could point outside the directory), and so are hidden files and directories (a collection
/// may not hold them: see [`RelPath`]).
///
/// # Errors
/// [`ShareError`] when a file cannot be read, or the tree does not fit a collection (too many
/// files, a name that is not a safe relative path).
pub(crate) fn hash_dir(dir: &Path) -> Result<HashedDir, ShareError> {
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
    let mut skipped = 0;
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
            if child.file_name().as_encoded_bytes().starts_with(b".") {
                tracing::warn!(path = %path.display(), "skipping a hidden file or directory");
                skipped += 1;
            } else if kind.is_dir() {
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
                skipped += 1;
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
    Ok(HashedDir {
        collection,
        files: held,
        skipped,
    })
}

/// A hashed directory: its collection, each file's manifest with the file opened, and how many
/// entries were left out.
pub(crate) struct HashedDir {
    pub(crate) collection: Collection,
    pub(crate) files: Vec<(Manifest, File)>,
    pub(crate) skipped: usize,
}

/// Reads one piece at its offset.
pub(crate) fn read_piece(
    pool: &BufferPool,
    file: &File,
    lengths: &Lengths,
    piece: PieceIndex,
) -> io::Result<Vec<u8>> {
    let len = lengths.piece_len(piece) as usize;
    let mut buf = pool.take_filled(len);
    file.read_exact_at(&mut buf, lengths.offset(piece))?;
    Ok(buf)
}

/// Checks a received piece against the manifest and writes it at its offset; the buffer goes
/// back to the pool either way.
pub(crate) fn store_piece(
    pool: &BufferPool,
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
    pool.give(bytes);
    result
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
