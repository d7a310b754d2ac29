//! [`Command`]s from a [`crate::Client`] to the [`crate::EventLoop`], each with a typed reply.

use std::{path::PathBuf, sync::Arc};

use bitswarm_protocols::{
    tracker::{FileRecord, FileSummary, LookupKey, Stats},
    FileId, FileName,
};
use libp2p::Multiaddr;
use tokio::sync::{oneshot, watch};

use crate::{
    client::{DownloadStatus, LocalStats, Outcome, Progress, SharedFile},
    downloader::DownloadId,
    error::{GetError, Result, ShareError},
    extension::ExtensionFn,
    place::Dir,
};

/// What one download fetches and where it lands.
#[derive(Debug)]
pub(crate) struct Get {
    /// This download's id (numbered by the client).
    pub(crate) id: DownloadId,
    /// For a file of a collection: the collection's download.
    pub(crate) collection: Option<DownloadId>,
    pub(crate) key: LookupKey,
    /// The output directory.
    pub(crate) out_dir: PathBuf,
    /// `out_dir` already opened (collection entries); else the download opens it.
    pub(crate) dir: Option<Dir>,
    /// The name to write the file under, when the caller fixes it (`--name`, collection
    /// entries); else the name asked for, or the manifest's made safe.
    pub(crate) name: Option<FileName>,
    /// Largest file accepted.
    pub(crate) max_size: u64,
}

/// One request to the event loop. The last field of each variant is where the answer goes.
#[derive(Debug)]
pub(crate) enum Command {
    /// Hash a file, serve it and announce it.
    Share {
        path: PathBuf,
        reply: oneshot::Sender<Result<SharedFile, ShareError>>,
    },
    /// Stop serving a file or directory and unannounce it.
    Unshare {
        id: FileId,
        reply: oneshot::Sender<Result<SharedFile>>,
    },
    /// What this node shares.
    Shares {
        reply: oneshot::Sender<Vec<SharedFile>>,
    },
    /// Download a file (or learn that the id names a collection).
    Get {
        get: Get,
        progress: Arc<watch::Sender<Progress>>,
        reply: oneshot::Sender<Result<Outcome, GetError>>,
    },
    /// The running downloads.
    Downloads {
        reply: oneshot::Sender<Vec<DownloadStatus>>,
    },
    /// Cancel a download (and, for a collection, its files' downloads).
    Cancel {
        id: DownloadId,
        reply: oneshot::Sender<bool>,
    },
    /// Run a closure on the extension behaviour; it answers through its own channel.
    Extension { run: ExtensionFn },
    /// Ask the tracker who holds a file.
    Lookup {
        key: LookupKey,
        reply: oneshot::Sender<Result<Vec<FileRecord>>>,
    },
    /// Search the tracker's index by name.
    Search {
        query: String,
        reply: oneshot::Sender<Result<Vec<FileSummary>>>,
    },
    /// The tracker's counters.
    Stats {
        reply: oneshot::Sender<Result<Stats>>,
    },
    /// The addresses this node listens on, once it listens.
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    /// This node's own transfer counters.
    LocalStats { reply: oneshot::Sender<LocalStats> },
    /// Stop the node; answered once it has stopped.
    Shutdown { reply: oneshot::Sender<()> },
}
