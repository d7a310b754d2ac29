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
    command::{Command, Get},
    error::{Error, GetError, Result},
    paths::DataPath,
    place::{self, Dir, PlaceError},
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
    /// For a directory: entries left out (hidden names, links, special files).
    pub skipped: usize,
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
    /// The file (every file of a collection) was already there, checked by hash: nothing was
    /// fetched.
    pub present: bool,
}

/// A provider that sent pieces of a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The provider.
    pub peer: PeerId,
    /// The connection its last verified piece came over (`None` if it closed before the
    /// piece was checked).
    pub path: Option<DataPath>,
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
/// Largest file or collection a get accepts unless told otherwise: 1 TiB, the most one file can
/// be ([`bitswarm_protocols::MAX_PIECES`] pieces of [`bitswarm_protocols::MAX_PIECE_SIZE`]).
pub const DEFAULT_MAX_SIZE: u64 = 1 << 40;

/// What to get and where.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The file or collection, by id or name.
    pub key: LookupKey,
    /// The directory to write into. A collection goes into `out_dir/<its name>/`.
    pub out_dir: PathBuf,
    /// For a collection: fetch only this file of it, into `out_dir`.
    pub file: Option<RelPath>,
    /// The name to save under (a file, or a collection's directory) instead of the one asked
    /// for or, for a get by id, the one the network gives (made safe).
    pub name: Option<FileName>,
    /// For a collection: add its files into an existing directory of that name. Without it a
    /// collection is gathered in a temporary directory and renamed into place, never merged.
    pub merge: bool,
    /// Largest file (or collection, in total) accepted.
    pub max_size: u64,
}

impl GetRequest {
    /// A get of `key` into `out_dir` with the defaults: the name from the network made safe, no
    /// merging, [`DEFAULT_MAX_SIZE`].
    pub fn new(key: LookupKey, out_dir: impl Into<PathBuf>) -> Self {
        GetRequest {
            key,
            out_dir: out_dir.into(),
            file: None,
            name: None,
            merge: false,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
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

/// Runs `f` on a blocking task.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PlaceError> + Send + 'static,
) -> Result<T, GetError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(GetError::TaskFailed),
    }
}

/// The directory `path`'s file goes into under `root`, each level opened without following
/// links, and created when `create`; `None` when a level is missing and not created.
fn entry_dir(root: &Dir, path: &RelPath, create: bool) -> Result<Option<Dir>, PlaceError> {
    let mut dir = root.clone();
    let mut components: Vec<&str> = path.components().collect();
    components.pop();
    for name in components {
        match dir.subdir(name, create)? {
            Some(sub) => dir = sub,
            None => return Ok(None),
        }
    }
    Ok(Some(dir))
}

/// The last component of a collection path as a file name (a component may be longer than a
/// file name may be: such a collection cannot be written here).
fn entry_name(path: &RelPath, collection: FileId) -> Result<FileName, GetError> {
    let last = path.components().last().unwrap_or_default();
    FileName::new(last).map_err(|_| GetError::InvalidCollection {
        id: collection,
        source: bitswarm_protocols::CollectionError::InvalidPath {
            path: path.to_string(),
            reason: "a name longer than 255 bytes",
        },
    })
}

/// Whether `root` holds every file of `collection` (checked by hash).
fn holds_collection(root: &Dir, collection: &Collection) -> bool {
    collection.entries().iter().all(|entry| {
        let last = entry.path.components().last().unwrap_or_default();
        matches!(
            entry_dir(root, &entry.path, false).and_then(|dir| dir.map_or(Ok(None), |d| {
                place::present(&d, last, &entry.id, entry.size)
            })),
            Ok(Some(_))
        )
    })
}

/// Fetches the files of `collection` (or the one `request.file` names).
///
/// A whole collection is gathered in `.bitswarm-<id>.dir` (locked while this get runs) and
/// renamed to its name when every file is in, so a directory under the final name is complete.
/// An existing directory of that name is never merged into unless `request.merge`: if it holds
/// every file already the get is done, otherwise it is refused.
async fn fetch_collection(
    node: Client,
    collection: Arc<Collection>,
    request: GetRequest,
    progress: Arc<watch::Sender<Progress>>,
    started: Instant,
) -> Result<Downloaded, GetError> {
    let id = collection.id();
    let entries = match &request.file {
        Some(path) => {
            let entry = collection
                .find(path)
                .cloned()
                .ok_or_else(|| GetError::NoSuchEntry {
                    id,
                    path: path.to_string(),
                })?;
            vec![entry]
        }
        None => collection.entries().to_vec(),
    };
    let total = entries.iter().fold(0u64, |t, e| t.saturating_add(e.size));
    if total > request.max_size {
        return Err(GetError::TooLarge {
            id,
            size: total,
            max: request.max_size,
        });
    }
    progress.send_modify(|p| {
        p.id = Some(id);
        p.total = total;
    });
    let out_path = request.out_dir.clone();
    let out = blocking(move || Dir::open(&out_path)).await?;
    let max_size = request.max_size;
    if let Some(path) = &request.file {
        let name = match &request.name {
            Some(name) => name.clone(),
            None => entry_name(path, id)?,
        };
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| GetError::NoSuchEntry {
                id,
                path: path.to_string(),
            })?;
        let done = fetch_entry(&node, &entry, out, name, max_size).await?;
        progress.send_modify(|p| p.done = total);
        return Ok(Downloaded {
            id,
            elapsed: started.elapsed(),
            ..done
        });
    }
    let name = match &request.name {
        Some(name) => name.clone(),
        None => place::safe_name(collection.name(), &id),
    };
    place::check_final_name(&name)?;
    let (gather, merge, c) = (out.clone(), request.merge, Arc::clone(&collection));
    let name_ = name.clone();
    let root = blocking(move || {
        if merge {
            let root = gather.subdir(name_.as_str(), true)?;
            return Ok(root.map(|r| (r, false)));
        }
        if let Some(existing) = gather.subdir(name_.as_str(), false)? {
            if holds_collection(&existing, &c) {
                return Ok(None);
            }
            return Err(PlaceError::Exists {
                path: gather.join(name_.as_str()),
            });
        }
        let temp = gather.subdir(&place::collection_temp_name(&c.id()), true)?;
        temp.map(|t| t.try_lock().map(|()| (t, true))).transpose()
    })
    .await?;
    let path = out.join(name.as_str());
    let Some((root, temporary)) = root else {
        progress.send_modify(|p| p.done = total);
        return Ok(Downloaded {
            id,
            path,
            size: total,
            elapsed: started.elapsed(),
            providers_used: 0,
            sources: Vec::new(),
            resumed: total,
            fetched: 0,
            present: true,
        });
    };
    let fetch = |entry: CollectionEntry| {
        let (node, progress, root) = (node.clone(), Arc::clone(&progress), root.clone());
        async move {
            let rel = entry.path.clone();
            let dir = blocking(move || {
                entry_dir(&root, &rel, true)?.ok_or_else(|| PlaceError::NotOurs {
                    path: root.join(rel.as_str()),
                })
            })
            .await?;
            let name = entry_name(&entry.path, id)?;
            let done = fetch_entry(&node, &entry, dir, name, max_size).await?;
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
    if temporary {
        let (out, name) = (out.clone(), name.clone());
        blocking(move || place::finish_collection(&out, &root, &id, &name)).await?;
    }
    Ok(Downloaded {
        id,
        path,
        size: total,
        elapsed: started.elapsed(),
        providers_used: fetched.iter().map(|d| d.providers_used).max().unwrap_or(0),
        sources: fetched
            .iter()
            .flat_map(|d| d.sources.iter().cloned())
            .collect(),
        resumed: fetched.iter().map(|d| d.resumed).sum(),
        fetched: fetched.iter().map(|d| d.fetched).sum(),
        present: fetched.iter().all(|d| d.present),
    })
}

/// Fetches one entry of a collection into `dir` as `name`. A file already there with the right
/// hash (an earlier run got it) counts as present; one with other content is not overwritten.
async fn fetch_entry(
    node: &Client,
    entry: &CollectionEntry,
    dir: Dir,
    name: FileName,
    max_size: u64,
) -> Result<Downloaded, GetError> {
    let (d, n, id, size) = (dir.clone(), name.clone(), entry.id, entry.size);
    if blocking(move || place::present(&d, n.as_str(), &id, size))
        .await?
        .is_some()
    {
        return Ok(Downloaded {
            id,
            path: dir.join(name.as_str()),
            size,
            elapsed: Duration::ZERO,
            providers_used: 0,
            sources: Vec::new(),
            resumed: size,
            fetched: 0,
            present: true,
        });
    }
    let get = Get {
        key: LookupKey::Id(id),
        out_dir: dir.path().to_owned(),
        dir: Some(dir),
        name: Some(name),
        max_size,
    };
    let request = GetRequest {
        max_size,
        ..GetRequest::new(LookupKey::Id(id), get.out_dir.clone())
    };
    node.start(get, request).await?.wait_file().await
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
    /// [`ShareError`](crate::ShareError) when the file cannot be read or shared; [`Error::NodeStopped`].
    pub async fn share(&self, path: impl Into<PathBuf>) -> Result<SharedFile> {
        let path = path.into();
        Ok(self.call(|reply| Command::Share { path, reply }).await??)
    }

    /// Starts downloading the file or collection named by `key` into `out_dir`.
    ///
    /// # Errors
    /// [`Error::NodeStopped`]; everything else comes from [`Download::wait`].
    pub async fn get(&self, key: LookupKey, out_dir: impl Into<PathBuf>) -> Result<Download> {
        self.get_with(GetRequest::new(key, out_dir)).await
    }

    /// Starts a download described by `request`.
    ///
    /// # Errors
    /// [`Error::NodeStopped`]; everything else comes from [`Download::wait`].
    pub async fn get_with(&self, request: GetRequest) -> Result<Download> {
        // A name for a single file of a collection applies to that file, not to the collection.
        let get = Get {
            key: request.key.clone(),
            out_dir: request.out_dir.clone(),
            dir: None,
            name: request.name.clone().filter(|_| request.file.is_none()),
            max_size: request.max_size,
        };
        self.start(get, request).await
    }

    async fn start(&self, get: Get, request: GetRequest) -> Result<Download> {
        let (progress, progress_rx) = watch::channel(Progress::default());
        let progress = Arc::new(progress);
        let (reply, done) = oneshot::channel();
        let command = Command::Get {
            get,
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
