//! [`Client`]: the cloneable handle to a running node.

use std::{path::PathBuf, time::Duration};

use bitswarm_protocols::{
    tracker::{FileRecord, FileSummary, LookupKey, Stats},
    FileId, FileName,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    command::Command,
    error::{Error, GetError, Result},
};

/// A handle to a node's event loop. Cheap to clone; the loop stops when every clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
}

/// A file this node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// Its content id (what `b3sum` prints).
    pub id: FileId,
    /// The name it is shared under.
    pub name: FileName,
    /// Size in bytes.
    pub size: u64,
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// The file's id.
    pub id: FileId,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Time from the request to the rename.
    pub elapsed: Duration,
    /// Providers that sent at least one verified piece.
    pub providers_used: usize,
    /// Bytes found verified in the `.part` file of an earlier run.
    pub resumed: u64,
    /// Bytes fetched from providers in this run.
    pub fetched: u64,
}

/// Progress of a download, updated as pieces are verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The file, once the tracker has named it.
    pub id: Option<FileId>,
    /// Total bytes, once the manifest is verified.
    pub total: u64,
    /// Verified bytes.
    pub done: u64,
    /// Providers currently in use.
    pub providers: usize,
}

/// A node's own transfer counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Piece bytes sent to other peers.
    pub uploaded: u64,
    /// Verified piece bytes received.
    pub downloaded: u64,
    /// Pieces received that failed verification.
    pub bad_pieces: u64,
}

/// A download in progress: watch it, then wait for it.
#[derive(Debug)]
pub struct Download {
    /// Keeps the node running while someone waits for the download.
    _node: Client,
    progress: watch::Receiver<Progress>,
    done: oneshot::Receiver<Result<Downloaded, GetError>>,
}

impl Download {
    /// A receiver of progress updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits for the download to finish.
    ///
    /// # Errors
    /// The [`GetError`] that ended it, or [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Dropping this future does not stop the download; it only stops waiting.
    pub async fn wait(self) -> Result<Downloaded, GetError> {
        self.done
            .await
            .map_err(|_| GetError::Node(Error::NodeStopped))?
    }
}

impl Client {
    pub(crate) fn new(commands: mpsc::Sender<Command>, peer_id: PeerId) -> Self {
        Client { commands, peer_id }
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// Hashes the file at `path` (on a blocking task), serves it and announces it to the tracker.
    ///
    /// # Errors
    /// [`ShareError`] when the file cannot be read or shared; [`Error::NodeStopped`].
    pub async fn share(&self, path: impl Into<PathBuf>) -> Result<SharedFile> {
        let path = path.into();
        Ok(self.call(|reply| Command::Share { path, reply }).await??)
    }

    /// Starts downloading the file named by `key` into `out_dir`.
    ///
    /// # Errors
    /// [`Error::NodeStopped`]; everything else comes from [`Download::wait`].
    pub async fn get(&self, key: LookupKey, out_dir: impl Into<PathBuf>) -> Result<Download> {
        let (progress, progress_rx) = watch::channel(Progress::default());
        let (reply, done) = oneshot::channel();
        let out_dir = out_dir.into();
        self.commands
            .send(Command::Get {
                key,
                out_dir,
                progress,
                reply,
            })
            .await
            .map_err(|_| Error::NodeStopped)?;
        Ok(Download {
            _node: self.clone(),
            progress: progress_rx,
            done,
        })
    }

    /// Asks the tracker who holds a file.
    ///
    /// # Errors
    /// Tracker errors, [`Error::NodeStopped`].
    pub async fn lookup(&self, key: LookupKey) -> Result<Vec<FileRecord>> {
        self.call(|reply| Command::Lookup { key, reply }).await?
    }

    /// Searches the tracker's index for names containing `query`.
    ///
    /// # Errors
    /// Tracker errors, [`Error::NodeStopped`].
    pub async fn search(&self, query: impl Into<String>) -> Result<Vec<FileSummary>> {
        let query = query.into();
        self.call(|reply| Command::Search { query, reply }).await?
    }

    /// The tracker's live peer count and file count.
    ///
    /// # Errors
    /// Tracker errors, [`Error::NodeStopped`].
    pub async fn stats(&self) -> Result<Stats> {
        self.call(|reply| Command::Stats { reply }).await?
    }

    /// The addresses this node listens on; waits until it listens on at least one.
    ///
    /// # Errors
    /// [`Error::NodeStopped`].
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// This node's upload and download counters.
    ///
    /// # Errors
    /// [`Error::NodeStopped`].
    pub async fn local_stats(&self) -> Result<LocalStats> {
        self.call(|reply| Command::LocalStats { reply }).await
    }

    /// Stops the node and waits until its event loop has finished its cleanup.
    ///
    /// # Errors
    /// [`Error::NodeStopped`] if it had stopped already.
    pub async fn shutdown(&self) -> Result<()> {
        self.call(|reply| Command::Shutdown { reply }).await
    }
}
