//! [`Client`]: the cloneable handle to a running node.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bitswarm_protocols::{
    tracker::{FileRecord, FileSummary, LookupKey, Stats},
    Collection, CollectionEntry, FileId, FileName, RelPath,
};
use futures::{stream, StreamExt, TryStreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    command::Command,
    error::{Error, GetError, Result},
    paths::Path,
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
    /// Those providers, most pieces first, with the path their pieces came over.
    pub sources: Vec<Source>,
    /// Bytes found verified in the `.part` file of an earlier run.
    pub resumed: u64,
    /// Bytes fetched from providers in this run.
    pub fetched: u64,
}

/// A provider that sent pieces of a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The provider.
    pub peer: PeerId,
    /// The connection its last verified piece came over (`None` if it closed before the
    /// piece was checked).
    pub path: Option<Path>,
    /// Verified pieces it sent.
    pub pieces: u64,
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

/// What the event loop answers a get with: a file, or the collection an id turned out to name.
#[derive(Debug)]
pub(crate) enum Outcome {
    File(Downloaded),
    Collection(Arc<Collection>),
}

/// Files of a collection fetched at once.
pub const COLLECTION_PARALLELISM: usize = 4;

/// What to get and where.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The file or collection, by id or name.
    pub key: LookupKey,
    /// The directory to write into. A collection goes into `out_dir/<its name>/`.
    pub out_dir: PathBuf,
    /// For a collection: fetch only this file of it, into `out_dir`.
    pub file: Option<RelPath>,
}

/// A download in progress: watch it, then wait for it.
#[derive(Debug)]
pub struct Download {
    /// Keeps the node running while someone waits for the download, and fetches the entries
    /// of a collection.
    node: Client,
    request: GetRequest,
    started: Instant,
    progress_tx: Arc<watch::Sender<Progress>>,
    progress: watch::Receiver<Progress>,
    done: oneshot::Receiver<Result<Outcome, GetError>>,
}

impl Download {
    /// A receiver of progress updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Waits for the download to finish; for a collection, fetches its files
    /// ([`COLLECTION_PARALLELISM`] at a time) and reports them together.
    ///
    /// # Errors
    /// The [`GetError`] that ended it, or [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Dropping this future stops waiting; files of a collection not started yet are not
    /// fetched, and a `.part` file resumes on the next get.
    pub async fn wait(self) -> Result<Downloaded, GetError> {
        let outcome = self
            .done
            .await
            .map_err(|_| GetError::Node(Error::NodeStopped))??;
        match outcome {
            Outcome::File(done) => Ok(done),
            Outcome::Collection(c) => {
                fetch_collection(self.node, c, self.request, self.progress_tx, self.started).await
            }
        }
    }

    /// Waits for a single file; a collection here is an error (no nesting).
    async fn wait_file(self) -> Result<Downloaded, GetError> {
        match self
            .done
            .await
            .map_err(|_| GetError::Node(Error::NodeStopped))??
        {
            Outcome::File(done) => Ok(done),
            Outcome::Collection(c) => Err(GetError::NestedCollection(c.id())),
        }
    }
}

/// Fetches the files of `collection` (or the one `request.file` names).
async fn fetch_collection(
    node: Client,
    collection: Arc<Collection>,
    request: GetRequest,
    progress: Arc<watch::Sender<Progress>>,
    started: Instant,
) -> Result<Downloaded, GetError> {
    let (entries, root) = match &request.file {
        Some(path) => {
            let entry = collection
                .find(path)
                .cloned()
                .ok_or_else(|| GetError::NoSuchEntry {
                    id: collection.id(),
                    path: path.to_string(),
                })?;
            (vec![entry], request.out_dir.clone())
        }
        None => (
            collection.entries().to_vec(),
            request.out_dir.join(collection.name().as_str()),
        ),
    };
    let single = request.file.is_some();
    let total = entries.iter().fold(0u64, |t, e| t.saturating_add(e.size));
    progress.send_modify(|p| {
        p.id = Some(collection.id());
        p.total = total;
    });
    let target_of = |entry: &CollectionEntry| {
        if single {
            let last = entry
                .path
                .components()
                .last()
                .unwrap_or_default()
                .to_owned();
            root.join(last)
        } else {
            entry.path.join_onto(&root)
        }
    };
    let fetch = |entry: CollectionEntry| {
        let (node, progress, target) = (node.clone(), Arc::clone(&progress), target_of(&entry));
        async move {
            let done = fetch_entry(&node, &entry, target).await?;
            progress.send_modify(|p| p.done = p.done.saturating_add(entry.size));
            Ok::<_, GetError>(done)
        }
    };
    // One download per file id at a time: entries with the same content (copies, empty files)
    // go after the first of their kind.
    let mut seen = std::collections::HashSet::new();
    let (firsts, repeats): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| seen.insert(e.id));
    let mut fetched: Vec<Downloaded> = stream::iter(firsts)
        .map(fetch)
        .buffer_unordered(COLLECTION_PARALLELISM)
        .try_collect()
        .await?;
    for entry in repeats {
        fetched.push(fetch(entry).await?);
    }
    Ok(Downloaded {
        id: collection.id(),
        path: if single {
            fetched.first().map(|d| d.path.clone()).unwrap_or(root)
        } else {
            root
        },
        size: total,
        elapsed: started.elapsed(),
        providers_used: fetched.iter().map(|d| d.providers_used).max().unwrap_or(0),
        sources: fetched
            .iter()
            .flat_map(|d| d.sources.iter().cloned())
            .collect(),
        resumed: fetched.iter().map(|d| d.resumed).sum(),
        fetched: fetched.iter().map(|d| d.fetched).sum(),
    })
}

/// Fetches one entry of a collection to `target`. A file already there with the right hash (an
/// earlier run got it) counts as resumed; one with other content is not overwritten.
async fn fetch_entry(
    node: &Client,
    entry: &CollectionEntry,
    target: PathBuf,
) -> Result<Downloaded, GetError> {
    let io_err = |path: &std::path::Path, source| GetError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = target
        .parent()
        .map(std::path::Path::to_owned)
        .unwrap_or_default();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| io_err(&dir, e))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| FileName::new(n).ok())
        .ok_or_else(|| {
            io_err(
                &target,
                std::io::Error::other("entry name is not a valid file name"),
            )
        })?;
    if tokio::fs::try_exists(&target)
        .await
        .map_err(|e| io_err(&target, e))?
    {
        let path = target.clone();
        let id = tokio::task::spawn_blocking(move || -> std::io::Result<FileId> {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(std::fs::File::open(&path)?)?;
            Ok(hasher.finalize().into())
        })
        .await
        .map_err(|e| io_err(&target, std::io::Error::other(e)))?
        .map_err(|e| io_err(&target, e))?;
        if id != entry.id {
            return Err(io_err(
                &target,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a different file exists"),
            ));
        }
        return Ok(Downloaded {
            id,
            path: target,
            size: entry.size,
            elapsed: Duration::ZERO,
            providers_used: 0,
            sources: Vec::new(),
            resumed: entry.size,
            fetched: 0,
        });
    }
    let request = GetRequest {
        key: LookupKey::Id(entry.id),
        out_dir: dir,
        file: None,
    };
    node.get_named(request, Some(name)).await?.wait_file().await
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

    /// Starts downloading the file or collection named by `key` into `out_dir`.
    ///
    /// # Errors
    /// [`Error::NodeStopped`]; everything else comes from [`Download::wait`].
    pub async fn get(&self, key: LookupKey, out_dir: impl Into<PathBuf>) -> Result<Download> {
        self.get_with(GetRequest {
            key,
            out_dir: out_dir.into(),
            file: None,
        })
        .await
    }

    /// Starts a download described by `request`.
    ///
    /// # Errors
    /// [`Error::NodeStopped`]; everything else comes from [`Download::wait`].
    pub async fn get_with(&self, request: GetRequest) -> Result<Download> {
        self.get_named(request, None).await
    }

    async fn get_named(&self, request: GetRequest, name: Option<FileName>) -> Result<Download> {
        let (progress, progress_rx) = watch::channel(Progress::default());
        let progress = Arc::new(progress);
        let (reply, done) = oneshot::channel();
        let command = Command::Get {
            key: request.key.clone(),
            out_dir: request.out_dir.clone(),
            name,
            progress: Arc::clone(&progress),
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::NodeStopped)?;
        Ok(Download {
            node: self.clone(),
            request,
            started: Instant::now(),
            progress_tx: progress,
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
