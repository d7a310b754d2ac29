//! Downloads, as a sans-IO core: [`Downloads`] owns every running download and decides; the
//! event loop feeds it inputs (a tracker answer, a transfer response or failure, a finished disk
//! job, a peer that became reachable, a tick with `now`) and executes the [`Action`]s it returns
//! (send this request, dial, close, run this [`DiskJob`], announce, emit). It has no swarm, no
//! clock and no randomness of its own: time comes in [`Cx::now`], and its RNG is seeded by
//! whoever builds it.
//!
//! Phases of one download ([`Phase`], each owning its data):
//! `Locating` (first tracker lookup) -> `Checking` (the file may be there already) ->
//! `Manifest` (providers asked, a few at a time, until one sends a manifest that merges to the
//! file id) -> `Opening` (the `.part` file opened on a blocking task; pieces from an earlier run
//! are verified and kept) -> `Transfer` -> `Finishing` (fsync + rename) -> done. A failure
//! answers the waiting [`crate::Download`] and leaves the `.part` file for a later run. Where
//! the file lands is [`crate::place`]'s.
//!
//! Providers: complete ones hold every piece; partial ones are asked for their bitfield
//! (`Have`) on joining and every tick. Their rules (windows, Busy backoff, timeouts, probation,
//! bans, the in-flight cap, endgame) are [`providers::Providers`]'. Providers come from periodic
//! re-lookups and from peers that ask us for pieces of the same file.
//!
//! A download with no provider sending data for `provider_wait` fails with "no provider".
//!
//! Files: this one holds the types, starting a download, lookups and routing the answers to
//! its requests; `peers` providers joining, becoming reachable and being dropped; `pieces` the
//! data path (manifest or collection, bitfields, pieces, scheduling); `lifecycle` the tick,
//! finishing and failing; `disk` the blocking jobs the event loop runs; `picker`, `bitfield`
//! and `providers` the pure state they share; `tests` drives the whole core with scripted
//! inputs and a fixed clock.

mod bitfield;
mod disk;
mod lifecycle;
mod peers;
pub(crate) mod picker;
mod pieces;
mod providers;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    fs::File,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub(crate) use bitfield::Bitfield;
use bitswarm_protocols::{
    buffers::BufferPool,
    tracker::{self, FileRecord, LookupKey},
    transfer, ErrorCode, FileId, FileName, Manifest, PieceIndex,
};
pub(crate) use disk::{DiskJob, TaskDone};
use libp2p::{request_response::OutboundFailure, swarm::ConnectionId, Multiaddr, PeerId};
use rand::rngs::StdRng;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use self::{
    picker::PiecePicker,
    providers::{Admitted, Failure, Limits, Providers},
};
use crate::{
    client::{DownloadStatus, LocalStats, Outcome, Progress},
    command::Get,
    error::GetError,
    holdings::Holdings,
    paths::Connections,
    place::Dir,
    Config, Event,
};

/// How long a manifest request holds one of the [`MANIFEST_PARALLEL`] slots before another
/// provider is asked in its place (far shorter than the request timeout and `--wait`).
const MANIFEST_PATIENCE: Duration = Duration::from_secs(1);
/// Manifest requests waited for at once: one is asked at first, a second on the next tick if
/// the first has not answered (both may then be fetched; the first verified wins).
const MANIFEST_PARALLEL: usize = 2;
/// Most providers one lookup asks the tracker for.
pub(crate) const LOOKUP_LIMIT: u32 = 200;

/// Names one download of a node ([`crate::Download::id`]): unique among the downloads of that
/// node for its lifetime, never reused. Pass it to [`crate::Client::cancel`]; it also appears in
/// [`crate::DownloadStatus`] and [`crate::Event::Cancelled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DownloadId(u64);

impl DownloadId {
    /// The id numbered `n` (the [`crate::Client`] hands them out in order).
    pub(crate) fn new(n: u64) -> Self {
        DownloadId(n)
    }

    #[cfg(test)]
    pub(crate) fn for_test(n: u64) -> Self {
        DownloadId(n)
    }
}

impl std::fmt::Display for DownloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "download #{}", self.0)
    }
}

/// Collections whose cancellation is remembered, so that files of theirs asked for after the
/// cancel (the client fetches a collection's files a few at a time) fail at once.
const CANCELLED_MEMORY: usize = 64;

/// What an outbound transfer request is for; the event loop keeps it with the request id and
/// hands it back with the answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransferRequest {
    download: DownloadId,
    want: Want,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Manifest,
    Have,
    Piece(PieceIndex),
}

/// What the event loop must do for the downloads.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send `request` to `peer`; its answer comes back with `tag`.
    Request {
        peer: PeerId,
        request: transfer::Request,
        tag: TransferRequest,
    },
    /// Ask the tracker for the providers of `key`; the answer goes to
    /// [`Downloads::on_lookup`].
    Lookup {
        download: DownloadId,
        key: LookupKey,
    },
    /// Tell the tracker this node no longer holds `file`.
    Unannounce(FileId),
    /// Tell the tracker what this node holds now.
    Announce,
    /// Remember an address of `peer` for dialing.
    AddAddress { peer: PeerId, addr: Multiaddr },
    /// Connect to `peer` unless connected or dialing; a failure goes to
    /// [`Downloads::on_dial_failed`].
    Dial(PeerId),
    /// Close a connection.
    Close(ConnectionId),
    /// Run `job` on a blocking task; its [`TaskDone`] goes to [`Downloads::on_task`].
    Disk { download: DownloadId, job: DiskJob },
    /// Tell the node's observers.
    Emit(Event<Infallible>),
}

/// What every call into [`Downloads`] gets: the time, the facts it reads, the state it shares
/// with the rest of the node, and where its actions go.
pub(crate) struct Cx<'a> {
    pub(crate) now: Instant,
    /// This node's connections (which peers can carry pieces).
    pub(crate) connections: &'a Connections,
    /// What this node serves: downloads add their verified pieces.
    pub(crate) holdings: &'a mut Holdings,
    pub(crate) stats: &'a mut LocalStats,
    pub(crate) out: &'a mut Vec<Action>,
}

impl Cx<'_> {
    fn push(&mut self, action: Action) {
        self.out.push(action);
    }
}

/// The numbers the downloads live by (from [`Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    limits: Limits,
    provider_wait: Duration,
    relookup_interval: Duration,
    holepunch_wait: Duration,
}

impl Settings {
    pub(crate) fn new(config: &Config) -> Self {
        Settings {
            limits: Limits {
                window: config.window,
                max_window: config.max_window,
                max_in_flight: config.max_in_flight,
                max_timeouts: config.max_provider_failures,
            },
            provider_wait: config.provider_wait,
            relookup_interval: config.relookup_interval,
            holepunch_wait: config.holepunch_wait,
        }
    }
}

/// The file a lookup found: its id and the size the tracker lists (a manifest must agree).
#[derive(Debug, Clone, Copy)]
struct Found {
    id: FileId,
    size: u64,
}

/// The `.part` file being filled.
struct Transfer {
    manifest: Arc<Manifest>,
    /// The locked `.part` file.
    file: Arc<File>,
    dir: Dir,
    picker: PiecePicker,
    /// The final name.
    name: FileName,
}

enum Phase {
    Locating,
    /// Looking at the output directory: a file already there with this id ends the download
    /// before any provider is asked.
    Checking(Found),
    Manifest {
        found: Found,
        /// Manifest requests out: to whom, since when. One that has not answered within
        /// [`MANIFEST_PATIENCE`] no longer holds a slot (it may still answer), so a provider
        /// that never answers cannot stall the download until the request timeout.
        asks: Vec<(PeerId, Instant)>,
    },
    Opening {
        manifest: Arc<Manifest>,
        name: FileName,
    },
    Transfer(Transfer),
    Finishing {
        id: FileId,
        size: u64,
        path: PathBuf,
    },
}

impl Phase {
    /// The file, once the first lookup named it.
    fn file(&self) -> Option<FileId> {
        match self {
            Phase::Locating => None,
            Phase::Checking(found) | Phase::Manifest { found, .. } => Some(found.id),
            Phase::Opening { manifest, .. } => Some(manifest.id()),
            Phase::Transfer(t) => Some(t.manifest.id()),
            Phase::Finishing { id, .. } => Some(*id),
        }
    }

    fn picker(&mut self) -> Option<&mut PiecePicker> {
        match self {
            Phase::Transfer(t) => Some(&mut t.picker),
            _ => None,
        }
    }
}

/// One download's state.
struct DownloadState {
    get: Get,
    progress: Arc<watch::Sender<Progress>>,
    reply: oneshot::Sender<Result<Outcome, GetError>>,
    started: Instant,
    providers: Providers,
    phase: Phase,
    /// Last time a provider joined or sent something useful; `provider_wait` runs from here.
    last_progress: Instant,
    next_lookup: Instant,
    lookup_pending: bool,
    resumed: u64,
    fetched: u64,
    /// Why the last provider was dropped, for the "no provider" error.
    last_problem: Option<String>,
}

impl DownloadState {
    fn what(&self) -> String {
        match &self.get.key {
            LookupKey::Id(f) => f.to_string(),
            LookupKey::Name(n) => n.to_string(),
        }
    }
}

/// The record a first lookup answers for `key`. The tracker is not trusted to answer a lookup
/// by id with that id: records for other ids are ignored. A name that several different files
/// share resolves to the one seeded by the most distinct hosts when it has at least twice as
/// many as any other (so one host's stray or hostile copy under a popular name does not make
/// the name unusable); otherwise it is ambiguous (the user picks one by id). No record is an
/// unknown file.
fn choose_record(key: &LookupKey, records: Vec<FileRecord>) -> Result<FileRecord, GetError> {
    let what = || match key {
        LookupKey::Id(f) => f.to_string(),
        LookupKey::Name(n) => n.to_string(),
    };
    let mut records: Vec<FileRecord> = match key {
        LookupKey::Id(wanted) => records.into_iter().filter(|r| r.id == *wanted).collect(),
        LookupKey::Name(_) => records,
    };
    let mut ids: Vec<FileId> = records.iter().map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    // Most seeding hosts first; one record per id.
    records.sort_by_key(|r| std::cmp::Reverse(r.seeders));
    let mut seen = std::collections::HashSet::new();
    records.retain(|r| seen.insert(r.id));
    let mut records = records.into_iter();
    match (records.next(), records.next()) {
        (None, _) => Err(GetError::UnknownFile(what())),
        (Some(record), None) => Ok(record),
        (Some(first), Some(second))
            if first.seeders > 0 && first.seeders >= second.seeders.saturating_mul(2) =>
        {
            Ok(first)
        }
        (Some(_), Some(_)) => Err(GetError::Ambiguous { name: what(), ids }),
    }
}

/// Every running download of one node.
pub(crate) struct Downloads {
    map: HashMap<DownloadId, DownloadState>,
    /// The last [`CANCELLED_MEMORY`] downloads cancelled.
    cancelled: VecDeque<DownloadId>,
    settings: Settings,
    /// This node (never its own provider).
    local: PeerId,
    /// The randomness of piece picking.
    rng: StdRng,
    /// Where the buffers of discarded endgame copies go back.
    pool: Arc<BufferPool>,
}

impl Downloads {
    pub(crate) fn new(
        settings: Settings,
        local: PeerId,
        rng: StdRng,
        pool: Arc<BufferPool>,
    ) -> Self {
        Downloads {
            map: HashMap::new(),
            cancelled: VecDeque::new(),
            settings,
            local,
            rng,
            pool,
        }
    }

    /// Whether no download runs.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every running download, oldest first.
    pub(crate) fn status(&self) -> Vec<DownloadStatus> {
        let mut all: Vec<DownloadStatus> = self
            .map
            .iter()
            .map(|(id, dl)| DownloadStatus {
                id: *id,
                key: dl.get.key.clone(),
                collection: dl.get.collection,
                out_dir: dl.get.out_dir.clone(),
                name: dl.landing_name(),
                progress: dl.progress.borrow().clone(),
            })
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// The files being downloaded (those the tracker has named already).
    pub(crate) fn files(&self) -> impl Iterator<Item = FileId> + '_ {
        self.map.values().filter_map(|dl| dl.phase.file())
    }

    /// The providers (not dropped) of the running download of `file`, if there is one.
    pub(crate) fn providers_of<'a>(&'a self, file: &FileId) -> impl Iterator<Item = PeerId> + 'a {
        let file = *file;
        self.map
            .values()
            .filter(move |dl| dl.phase.file() == Some(file))
            .flat_map(|dl| {
                dl.providers
                    .iter()
                    .filter(|(_, p)| !p.dropped)
                    .map(|(peer, _)| *peer)
            })
    }

    /// Starts download `get.id`: its first lookup goes out at once. A file of a collection
    /// cancelled already fails at once.
    pub(crate) fn start(
        &mut self,
        cx: &mut Cx<'_>,
        get: Get,
        progress: Arc<watch::Sender<Progress>>,
        reply: oneshot::Sender<Result<Outcome, GetError>>,
    ) -> DownloadId {
        let id = get.id;
        if get.collection.is_some_and(|c| self.cancelled.contains(&c)) {
            let _ = reply.send(Err(GetError::Cancelled));
            return id;
        }
        if self.map.contains_key(&id) {
            // The client numbers downloads from one counter: a bug if it happens.
            warn!(%id, "a download with this id runs already; refused");
            let _ = reply.send(Err(GetError::TaskFailed));
            return id;
        }
        info!(key = ?get.key, out = %get.out_dir.display(), "download requested");
        let key = get.key.clone();
        let download = DownloadState {
            get,
            progress,
            reply,
            started: cx.now,
            providers: Providers::new(self.settings.limits),
            phase: Phase::Locating,
            last_progress: cx.now,
            next_lookup: cx.now + self.settings.relookup_interval,
            lookup_pending: true,
            resumed: 0,
            fetched: 0,
            last_problem: None,
        };
        self.map.insert(id, download);
        cx.push(Action::Lookup { download: id, key });
        id
    }

    /// A lookup failed (tracker unreachable or refused). The first one means the download
    /// cannot start; a failed re-lookup only means no new providers this time.
    pub(crate) fn on_lookup_failed(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        error: crate::Error,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        dl.lookup_pending = false;
        if matches!(dl.phase, Phase::Locating) {
            self.fail(cx, id, error.into());
        } else {
            debug!(%error, "re-lookup failed");
        }
    }

    /// The tracker answered a lookup.
    pub(crate) fn on_lookup(&mut self, cx: &mut Cx<'_>, id: DownloadId, records: Vec<FileRecord>) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        dl.lookup_pending = false;
        if let Some(file) = dl.phase.file() {
            let record = records.into_iter().find(|r| r.id == file);
            let providers = record.map(|r| r.providers).unwrap_or_default();
            return self.add_providers(cx, id, providers, true);
        }
        let record = match choose_record(&dl.get.key, records) {
            Ok(record) => record,
            Err(error) => return self.fail(cx, id, error),
        };
        // A file this node already holds complete may be fetched again elsewhere; two downloads
        // of one file at once may not.
        let busy = self
            .map
            .iter()
            .any(|(other, d)| *other != id && d.phase.file() == Some(record.id));
        if busy {
            return self.fail(cx, id, GetError::Busy(record.id));
        }
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        if record.size > dl.get.max_size {
            let error = GetError::TooLarge {
                id: record.id,
                size: record.size,
                max: dl.get.max_size,
            };
            return self.fail(cx, id, error);
        }
        let found = Found {
            id: record.id,
            size: record.size,
        };
        dl.phase = Phase::Checking(found);
        dl.progress.send_modify(|p| p.id = Some(record.id));
        // The name it would land under: the one given, or the tracker's made safe (the
        // manifest's may differ; `Opening` checks that one again).
        let name = dl.name_for(&record.name, &record.id);
        cx.push(Action::Disk {
            download: id,
            job: DiskJob::Check {
                dir: dl.get.dir.clone(),
                out_dir: dl.get.out_dir.clone(),
                name,
                file: found.id,
                size: found.size,
            },
        });
        self.add_providers(cx, id, record.providers, true);
    }

    /// Asks untried providers for the manifest, up to [`MANIFEST_PARALLEL`] waited for at once
    /// (a request older than [`MANIFEST_PATIENCE`] no longer counts); providers backed off after
    /// `Busy` wait their turn. With none left it waits for new ones (or a tick).
    fn request_manifest(&mut self, cx: &mut Cx<'_>, id: DownloadId) {
        let now = cx.now;
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Manifest { found, asks } = &mut dl.phase else {
            return;
        };
        let waiting = asks
            .iter()
            .filter(|(_, at)| now.duration_since(*at) < MANIFEST_PATIENCE)
            .count();
        if waiting >= MANIFEST_PARALLEL {
            return;
        }
        // Like pieces, a manifest (32 bytes per piece) goes only over a connection that
        // carries data: a big one would exhaust a hole-punching relay's circuit. Providers the
        // tracker listed come before peers that only asked us for the file (injected, free to
        // make up): one of those is asked only when no listed provider is left to try, so
        // they cannot hold the manifest up while a listed one is still being dialed.
        let connections = cx.connections;
        let mut unconnected = Vec::new();
        let mut ready: Vec<(bool, PeerId)> = Vec::new();
        let mut listed_pending = false;
        for (peer, p) in dl.providers.iter_mut() {
            if p.dropped || p.asked_manifest || p.backed_off() {
                continue;
            }
            if connections.data_path(peer).is_some() {
                ready.push((!p.is_listed(), *peer));
            } else {
                listed_pending |= p.is_listed();
                if !connections.is_connected(peer) {
                    unconnected.push(*peer);
                }
            }
        }
        ready.sort();
        unconnected.sort();
        cx.out.extend(unconnected.into_iter().map(Action::Dial));
        let chosen = ready
            .first()
            .filter(|(injected, _)| !*injected || !listed_pending)
            .map(|(_, peer)| *peer);
        let Some((peer, state)) = chosen.and_then(|peer| {
            let state = dl.providers.get_mut(&peer)?;
            Some((peer, state))
        }) else {
            return;
        };
        state.asked_manifest = true;
        asks.push((peer, now));
        cx.push(Action::Request {
            peer,
            request: transfer::Request::Manifest { id: found.id },
            tag: TransferRequest {
                download: id,
                want: Want::Manifest,
            },
        });
    }

    /// The answer to a transfer request this node sent.
    pub(crate) fn on_response(
        &mut self,
        cx: &mut Cx<'_>,
        peer: PeerId,
        tag: TransferRequest,
        response: transfer::Response,
    ) {
        let TransferRequest { download: id, want } = tag;
        match (want, response) {
            (Want::Manifest, transfer::Response::Manifest(wire)) => {
                self.on_manifest(cx, id, peer, wire)
            }
            (Want::Manifest, transfer::Response::Collection(bytes)) => {
                self.on_collection(cx, id, peer, bytes)
            }
            (Want::Have, transfer::Response::Have(bits)) => self.on_have(cx, id, peer, bits),
            (Want::Piece(piece), transfer::Response::Piece(bytes)) => {
                self.on_piece(cx, id, peer, piece, bytes)
            }
            (want, transfer::Response::Error(ErrorCode::Busy)) => {
                self.on_request_failed(cx, id, peer, want, Failure::Busy, &"busy")
            }
            (want, transfer::Response::Error(code)) => {
                self.on_request_failed(cx, id, peer, want, Failure::Fatal, &code)
            }
            (want, _) => {
                let why = "unexpected response";
                self.on_request_failed(cx, id, peer, want, Failure::Fatal, &why)
            }
        }
    }

    /// A transfer request this node sent ended without an answer.
    pub(crate) fn on_failure(
        &mut self,
        cx: &mut Cx<'_>,
        peer: PeerId,
        tag: TransferRequest,
        error: &OutboundFailure,
    ) {
        let failure = match error {
            OutboundFailure::Timeout => Failure::Timeout,
            OutboundFailure::ConnectionClosed if cx.connections.data_path(&peer).is_some() => {
                Failure::Retry
            }
            _ => Failure::Fatal,
        };
        self.on_request_failed(cx, tag.download, peer, tag.want, failure, error);
    }

    fn on_request_failed(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        want: Want,
        failure: Failure,
        why: &dyn std::fmt::Display,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let piece = match want {
            Want::Manifest => {
                if let Phase::Manifest { asks, .. } = &mut dl.phase {
                    asks.retain(|(p, _)| *p != peer);
                }
                None
            }
            Want::Have => {
                if let Some(p) = dl.providers.get_mut(&peer) {
                    p.have_pending = false;
                }
                None
            }
            Want::Piece(piece) => Some(piece),
        };
        let manifest = want == Want::Manifest;
        let picker = dl.phase.picker();
        if dl
            .providers
            .on_failure(&peer, piece, manifest, failure, picker, cx.now)
        {
            self.drop_provider(cx, id, peer, false, why);
        }
        self.request_manifest(cx, id);
        self.schedule(cx, id);
    }
}

impl DownloadState {
    /// The name the file will land under, once known.
    fn landing_name(&self) -> Option<FileName> {
        match &self.phase {
            Phase::Opening { name, .. } => Some(name.clone()),
            Phase::Transfer(t) => Some(t.name.clone()),
            Phase::Finishing { path, .. } => path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| FileName::new(n).ok()),
            Phase::Locating | Phase::Checking(_) | Phase::Manifest { .. } => {
                match (&self.get.name, &self.get.key) {
                    (Some(n), _) | (None, LookupKey::Name(n)) => Some(n.clone()),
                    (None, LookupKey::Id(_)) => None,
                }
            }
        }
    }

    /// The name the file lands under: the one given, or the one asked for, or `network`'s
    /// (the tracker's or the manifest's) made safe.
    fn name_for(&self, network: &FileName, id: &FileId) -> FileName {
        match (&self.get.name, &self.get.key) {
            (Some(n), _) | (None, LookupKey::Name(n)) => n.clone(),
            (None, LookupKey::Id(_)) => crate::place::safe_name(network, id),
        }
    }
}
