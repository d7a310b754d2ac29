//! The blocking work of a download (disk, and decoding a collection of up to 8 MiB), as data:
//! the core names a [`DiskJob`]; the event loop runs it on a blocking task ([`DiskJob::run`],
//! the only I/O in this module) and hands the [`TaskDone`] back to
//! [`super::Downloads::on_task`].

use std::{fs::File, path::PathBuf, sync::Arc};

use bitswarm_protocols::{
    buffers::BufferPool, Collection, CollectionError, FileId, FileName, Manifest, PieceIndex,
};
use libp2p::PeerId;

use super::DownloadId;
use crate::{
    place::{self, Dir, Finished, Opened, PlaceError},
    store::{self, StoreError},
};

/// One blocking job of a download.
pub(crate) enum DiskJob {
    /// Is `name` in the output directory already this file?
    Check {
        dir: Option<Dir>,
        out_dir: PathBuf,
        name: FileName,
        file: FileId,
        size: u64,
    },
    /// Open (or resume) the locked `.part` file for `manifest`, landing under `name`.
    Open {
        dir: Option<Dir>,
        out_dir: PathBuf,
        name: FileName,
        manifest: Arc<Manifest>,
    },
    /// Verify `bytes` as `piece` and write it.
    Store {
        file: Arc<File>,
        manifest: Arc<Manifest>,
        peer: PeerId,
        piece: PieceIndex,
        bytes: Vec<u8>,
    },
    /// Check that `bytes` from `peer` hash to the collection id `id` and decode them (off the
    /// event loop: a collection may be 8 MiB).
    DecodeCollection {
        peer: PeerId,
        id: FileId,
        bytes: Vec<u8>,
    },
    /// Fsync the `.part` file and rename it to `name`, never over another file.
    Finish {
        dir: Dir,
        file: Arc<File>,
        id: FileId,
        name: FileName,
    },
}

impl std::fmt::Debug for DiskJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskJob::Check { name, .. } => write!(f, "Check({name})"),
            DiskJob::Open { name, .. } => write!(f, "Open({name})"),
            DiskJob::Store { piece, peer, .. } => write!(f, "Store({piece} from {peer})"),
            DiskJob::DecodeCollection { id, peer, .. } => {
                write!(f, "DecodeCollection({id} from {peer})")
            }
            DiskJob::Finish { name, .. } => write!(f, "Finish({name})"),
        }
    }
}

/// A finished [`DiskJob`].
pub(crate) enum TaskDone {
    Checked {
        download: DownloadId,
        result: Result<Option<(Dir, Manifest, File)>, PlaceError>,
    },
    Opened {
        download: DownloadId,
        result: Result<Opened, PlaceError>,
    },
    PieceStored {
        download: DownloadId,
        peer: PeerId,
        piece: PieceIndex,
        result: Result<(), StoreError>,
    },
    Finished {
        download: DownloadId,
        result: Result<Finished, PlaceError>,
    },
    CollectionDecoded {
        download: DownloadId,
        peer: PeerId,
        result: Result<Collection, CollectionError>,
    },
    /// The job panicked (a bug): the download fails rather than waiting forever.
    Panicked { download: DownloadId },
}

fn open_dir(dir: Option<Dir>, out_dir: &std::path::Path) -> Result<Dir, PlaceError> {
    match dir {
        Some(dir) => Ok(dir),
        None => Dir::open(out_dir),
    }
}

impl DiskJob {
    /// Runs the job (blocking); a panic inside becomes [`TaskDone::Panicked`].
    pub(crate) fn run(self, download: DownloadId, pool: &BufferPool) -> TaskDone {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_inner(download, pool)
        }))
        .unwrap_or(TaskDone::Panicked { download })
    }

    fn run_inner(self, download: DownloadId, pool: &BufferPool) -> TaskDone {
        match self {
            DiskJob::Check {
                dir,
                out_dir,
                name,
                file,
                size,
            } => {
                // Only a match counts here: anything else (nothing there, another file, an
                // unreadable one) is decided under the manifest's name, once it is known.
                let result = open_dir(dir, &out_dir).map(|dir| {
                    match place::present(&dir, name.as_str(), &file, size) {
                        Ok(Some((manifest, file))) => Some((dir, manifest, file)),
                        Ok(None) | Err(_) => None,
                    }
                });
                TaskDone::Checked { download, result }
            }
            DiskJob::Open {
                dir,
                out_dir,
                name,
                manifest,
            } => {
                let result = open_dir(dir, &out_dir)
                    .and_then(|dir| place::open_download(dir, &name, &manifest));
                TaskDone::Opened { download, result }
            }
            DiskJob::Store {
                file,
                manifest,
                peer,
                piece,
                bytes,
            } => {
                let result = store::store_piece(pool, &file, &manifest, piece, bytes);
                TaskDone::PieceStored {
                    download,
                    peer,
                    piece,
                    result,
                }
            }
            DiskJob::DecodeCollection { peer, id, bytes } => TaskDone::CollectionDecoded {
                download,
                peer,
                result: Collection::decode(&bytes, id),
            },
            DiskJob::Finish {
                dir,
                file,
                id,
                name,
            } => {
                let result = place::finish(&dir, &file, &id, &name);
                TaskDone::Finished { download, result }
            }
        }
    }
}
