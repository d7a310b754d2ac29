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
};

/// One request to the event loop. The last field of each variant is where the answer goes.
#[derive(Debug)]
pub(crate) enum Command {
    /// Hash a file, serve it and announce it.
    Share {
        path: PathBuf,
        reply: oneshot::Sender<Result<SharedFile, ShareError>>,
    },
    /// Download a file (or learn that the id names a collection) into `out_dir`, under `name`
    /// when given (collection entries), else under the name asked for or the manifest's.
    Get {
        key: LookupKey,
        out_dir: PathBuf,
        name: Option<FileName>,
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
