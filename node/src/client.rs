//! [`Client`]: the cloneable handle to a running node.

use std::{
    any::Any,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bitswarm_protocols::{
    tracker::{FileRecord, FileSummary, LookupKey, Stats},
    Collection, CollectionEntry, FileId, FileName, RelPath,
};
use futures::{stream, StreamExt, TryStreamExt};
use libp2p::{swarm::NetworkBehaviour, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    command::{Command, Get},
    downloader::DownloadId,
    error::{Error, GetError, Result},
    extension::{ExtensionFn, NodeContext},
    paths::DataPath,
    place::{self, Dir, PlaceError},
};

/// A handle to a node's event loop. Cheap to clone; the loop stops when every clone is dropped.
///
/// Every method sends one command over the node's bounded command channel
/// ([`crate::COMMAND_CHANNEL_SIZE`]); the event loop handles commands one at a time, in the
/// order they were sent, so two calls awaited one after the other take effect in that order
/// (a [`Client::with_extension`] closure sees what an earlier [`Client::share`] did).
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    /// Numbers the downloads of this node (shared by every clone).
    next_download: Arc<AtomicU64>,
}

/// A file or directory this node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// Its content id (what `b3sum` prints; for a directory, its collection's id).
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

/// One running download, as [`Client::downloads`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadStatus {
    /// Its id ([`Client::cancel`] takes it).
    pub id: DownloadId,
    /// What was asked for.
    pub key: LookupKey,
    /// For a file of a collection: the collection's download (cancelling that cancels this).
    pub collection: Option<DownloadId>,
    /// The directory it is written into.
    pub out_dir: PathBuf,
    /// The name it will land under, once known (a get by id learns it from the manifest).
    pub name: Option<FileName>,
    /// Its progress (the file id in it once the tracker has named the file).
    pub progress: Progress,
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

/// A download in progress: watch it, then wait for it, or cancel it.
#[derive(Debug)]
pub struct Download {
    id: DownloadId,
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
    /// This download's id, to cancel it from elsewhere ([`Client::cancel`]) while a task
    /// waits for it.
    pub fn id(&self) -> DownloadId {
        self.id
    }

    /// A receiver of progress updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Cancels this download: [`Client::cancel`] with [`Download::id`]. [`Download::wait`]
    /// then returns [`GetError::Cancelled`].
    ///
    /// # Errors
    /// [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Safe to drop: the command is either sent or not.
    pub async fn cancel(&self) -> Result<bool> {
        self.node.cancel(self.id).await
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
                let (id, started) = (self.id, self.started);
                fetch_collection(self.node, id, c, self.request, self.progress_tx, started).await
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
    download: DownloadId,
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
        let done = fetch_entry(&node, download, &entry, out, name, max_size).await?;
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
            let done = fetch_entry(&node, download, &entry, dir, name, max_size).await?;
            progress.send_modify(|p| p.done = p.done.saturating_add(entry.size));
            Ok::<_, GetError>(done)
        }
    };
    // One download per file id at a time: entries with the same content (copies, empty files)
    // go after the first of their kind.
    let mut seen = std::collections::HashSet::new();
    let (firsts, repeats): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| seen.insert(e.id));
    let all = async {
        let mut fetched: Vec<Downloaded> = stream::iter(firsts)
            .map(fetch)
            .buffer_unordered(COLLECTION_PARALLELISM)
            .try_collect()
            .await?;
        for entry in repeats {
            fetched.push(fetch(entry).await?);
        }
        Ok::<_, GetError>(fetched)
    };
    let fetched = match all.await {
        Ok(fetched) => fetched,
        Err(error) => {
            // One file failed (or was cancelled): the others still running would go on with
            // nobody waiting for them; end them too.
            let _ = node.cancel(download).await;
            return Err(error);
        }
    };
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
    collection: DownloadId,
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
        id: node.next_download_id(),
        collection: Some(collection),
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
        Client {
            commands,
            peer_id,
            next_download: Arc::new(AtomicU64::new(0)),
        }
    }

    fn next_download_id(&self) -> DownloadId {
        DownloadId::new(self.next_download.fetch_add(1, Ordering::Relaxed))
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

    /// Hashes the file or directory at `path` (on a blocking task), serves it and announces it
    /// to the tracker; answers once the tracker has acknowledged the announce (or it failed:
    /// the file is served either way and the next announce retries). A directory is shared as
    /// a collection, each of its files served too.
    ///
    /// To share several paths, call it once per path (concurrently if you like); each is
    /// served and announced on its own, and [`Client::shares`] lists them all.
    ///
    /// # Errors
    /// [`ShareError`](crate::ShareError) when the file cannot be read or shared; [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; the file may still be shared.
    pub async fn share(&self, path: impl Into<PathBuf>) -> Result<SharedFile> {
        let path = path.into();
        Ok(self.call(|reply| Command::Share { path, reply }).await??)
    }

    /// Stops serving the file or directory `id` and unannounces it from the tracker; answers
    /// once the tracker has acknowledged (or the unannounce failed: nothing is served any more
    /// either way, and peers asking get "not found"). A directory takes its files along, except
    /// those shared on their own or by another shared directory. Emits [`crate::Event::Unshared`].
    /// The tracker is told one file at a time, ten a second (it disconnects a peer that keeps
    /// asking past its rate), so a directory of thousands of files takes minutes to answer;
    /// serving stops at once.
    ///
    /// Works on what [`Client::shares`] lists (shared files and directories, downloaded files
    /// the node seeds); the file on disk is untouched. A file that a shared directory also
    /// holds stops being listed on its own but is still served, as the directory's; a file
    /// only a shared directory holds is not unshared on its own ([`Error::NotShared`]): unshare
    /// the directory. A file still downloading is not
    /// shared yet: cancel its download instead ([`Client::cancel`]).
    ///
    /// # Errors
    /// [`Error::NotShared`] when this node shares nothing complete under `id`;
    /// [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; the file may still be unshared.
    pub async fn unshare(&self, id: FileId) -> Result<SharedFile> {
        self.call(|reply| Command::Unshare { id, reply }).await?
    }

    /// What this node shares, by name: every shared directory, and every complete file held on
    /// its own account (shared by path, or downloaded and renamed into place). Files of a
    /// shared directory are served but not listed on their own.
    ///
    /// # Errors
    /// [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn shares(&self) -> Result<Vec<SharedFile>> {
        let mut shares = self.call(|reply| Command::Shares { reply }).await?;
        shares.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(shares)
    }

    /// Every download running on this node, oldest first, with its progress. A collection
    /// shows as the downloads of its files (each naming the collection's download), fetched a
    /// few at a time ([`COLLECTION_PARALLELISM`]); before its id is known to name a
    /// collection, as one download.
    ///
    /// # Errors
    /// [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Safe to drop.
    pub async fn downloads(&self) -> Result<Vec<DownloadStatus>> {
        self.call(|reply| Command::Downloads { reply }).await
    }

    /// Cancels download `id` ([`Download::id`], [`DownloadStatus::id`]) and, for a collection,
    /// the downloads of its files (those asked for later fail at once). Whoever waits for it
    /// gets [`GetError::Cancelled`], and [`crate::Event::Cancelled`] is emitted. Its `.part`
    /// file stays where it was: a later get of the same file into the same directory resumes
    /// from the pieces verified so far. Nothing is written under the final name.
    ///
    /// A download that is finishing (every piece verified, the rename into place under way)
    /// is not cancelled: it completes. Returns whether a running download was cancelled
    /// (`false`: it finished, failed or was finishing already).
    ///
    /// # Errors
    /// [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; the download may still be cancelled.
    pub async fn cancel(&self, id: DownloadId) -> Result<bool> {
        self.call(|reply| Command::Cancel { id, reply }).await
    }

    /// Runs `f` on the node's extension behaviour (the `extension` given to
    /// [`crate::new_with_extension`]) inside the event loop, with the node's facts and
    /// commands in a [`NodeContext`], and returns what it returns. The closure runs in order
    /// with the other commands of this node, and while it runs nothing else of the node does:
    /// **it must be quick** (no blocking, no waiting, no heavy computation). For lasting work,
    /// queue it in the behaviour (its `poll` runs it) or start a task from the closure and hand
    /// it bounded channels. Events the behaviour emits arrive as [`crate::Event::Extension`],
    /// in order with the node's own.
    ///
    /// `E` must be the node's extension type; a node made by [`crate::new`] has
    /// `libp2p::swarm::dummy::Behaviour`.
    ///
    /// # Errors
    /// [`Error::WrongExtension`] when the node's extension is not an `E` (`f` does not run);
    /// [`Error::ExtensionPanicked`] when `f` panicked (the node keeps running, the behaviour
    /// may be left half updated); [`Error::NodeStopped`].
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; `f` may still run.
    pub async fn with_extension<E, R>(
        &self,
        f: impl FnOnce(&mut E, &mut NodeContext<'_>) -> R + Send + 'static,
    ) -> Result<R>
    where
        E: NetworkBehaviour + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let run = ExtensionFn(Box::new(
            move |extension: &mut dyn Any, cx: &mut NodeContext<'_>| {
                let result = match extension.downcast_mut::<E>() {
                    Some(extension) => {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(extension, cx)))
                            .map_err(|_| {
                                // Nothing the closure asked for before it panicked is done.
                                cx.dials.clear();
                                Error::ExtensionPanicked
                            })
                    }
                    None => Err(Error::WrongExtension {
                        expected: std::any::type_name::<E>(),
                        actual: cx.extension,
                    }),
                };
                let _ = tx.send(result);
            },
        ));
        self.commands
            .send(Command::Extension { run })
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)?
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
            id: self.next_download_id(),
            collection: None,
            key: request.key.clone(),
            out_dir: request.out_dir.clone(),
            dir: None,
            name: request.name.clone().filter(|_| request.file.is_none()),
            max_size: request.max_size,
        };
        self.start(get, request).await
    }

    async fn start(&self, get: Get, request: GetRequest) -> Result<Download> {
        let id = get.id;
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
            id,
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
