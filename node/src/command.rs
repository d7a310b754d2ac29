//! [`Command`]s from a [`crate::Client`] to the [`crate::EventLoop`], each with a typed reply.

use std::{path::PathBuf, sync::Arc};

use bitswarm_protocols::{
    tracker::{FileRecord, FileSummary, LookupKey, Stats},
    FileName,
};
use libp2p::Multiaddr;
use tokio::sync::{oneshot, watch};

use crate::{
    client::{LocalStats, Outcome, Progress, SharedFile},
    error::{GetError, Result, ShareError},
    place::Dir,
};

/// What one download fetches and where it lands.
#[derive(Debug)]
pub(crate) struct Get {
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
    /// Download a file (or learn that the id names a collection).
    Get {
        get: Get,
        progress: Arc<watch::Sender<Progress>>,
        reply: oneshot::Sender<Result<Outcome, GetError>>,
    },
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
