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

use bitswarm_protocols::{buffers, FileName, Lengths, Manifest, PieceHasher, PieceIndex};

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

/// Reads one piece at its offset.
pub(crate) fn read_piece(file: &File, lengths: &Lengths, piece: PieceIndex) -> io::Result<Vec<u8>> {
    let len = lengths.piece_len(piece) as usize;
    let mut buf = buffers::take(len);
    buf.resize(len, 0);
    file.read_exact_at(&mut buf, lengths.offset(piece))?;
    Ok(buf)
}

/// Where a download of `name` goes: the final path and its `.part` sibling.
pub(crate) fn download_paths(dir: &Path, name: &FileName) -> (PathBuf, PathBuf) {
    let path = dir.join(name.as_str());
    let part = dir.join(format!("{}.part", name.as_str()));
    (path, part)
}

/// Opens (creating if needed) the `.part` file and sizes it.
pub(crate) fn open_part(part: &Path, size: u64) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)?;
    file.set_len(size)?;
    Ok(file)
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
