//! Downloads: locate providers through the tracker, fetch and verify the manifest, then pull
//! pieces rarest-first from every provider at once, complete seeders and partial leechers alike.
//!
//! Phases of one download: `Locating` (first tracker lookup) -> `Manifest` (providers asked one
//! at a time until one sends a manifest that merges to the file id) -> `Opening` (the `.part`
//! file opened on a blocking task; pieces from an earlier run are verified and kept) ->
//! `Transfer` -> `Finishing` (fsync + rename) -> done. A failure answers the waiting
//! [`crate::Download`] and leaves the `.part` file and its resume record for a later run.
//!
//! Providers: complete ones hold every piece; partial ones are asked for their bitfield
//! (`Have`) on joining and every housekeeping tick. Each has an in-flight window that grows by
//! one per window of pieces delivered while it was full and halves on a timeout. A peer that
//! sends a piece failing verification, or whose request fails for good (connection lost, not
//! found, unsupported), is dropped for the file; timeouts drop it after a few. Providers come
//! from periodic re-lookups and from peers that ask us for pieces of the same file.
//!
//! A download with no provider sending data for `provider_wait` fails with "no provider".

mod bitfield;
pub(crate) mod picker;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

pub(crate) use bitfield::Bitfield;
use bitswarm_protocols::{
    tracker::{self, FileRecord, LookupKey},
    transfer, Collection, CollectionError, ErrorCode, FileId, FileName, Manifest, PieceIndex,
    WireManifest,
};
use libp2p::{
    request_response::{OutboundFailure, OutboundRequestId},
    swarm::NetworkBehaviour,
    PeerId,
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use self::picker::PiecePicker;
use crate::{
    client::{Downloaded, Outcome, Progress},
    error::GetError,
    event_loop::{Held, TaskOutput, TrackerWaiter},
    store::{self, Opened, StoreError},
    Event, EventLoop,
};

/// Most providers one lookup asks the tracker for.
const LOOKUP_LIMIT: u32 = 200;

/// Local handle of one download in the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DownloadId(u64);

/// What an outbound transfer request is for.
#[derive(Debug)]
pub(crate) struct TransferRequest {
    download: DownloadId,
    want: Want,
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Manifest,
    Have,
    Piece(PieceIndex),
}

/// How a request ended without its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The provider cannot serve this file: drop it.
    Fatal,
    /// No answer in time: shrink its window, drop it after a few.
    Timeout,
    /// It is overloaded: shrink its window, try again later.
    Busy,
}

/// Results of a download's blocking tasks.
pub(crate) enum TaskDone {
    Opened {
        download: DownloadId,
        result: io::Result<Opened>,
    },
    PieceStored {
        download: DownloadId,
        peer: PeerId,
        piece: PieceIndex,
        result: Result<(), StoreError>,
    },
    RecordWritten {
        download: DownloadId,
    },
    Finished {
        download: DownloadId,
        result: io::Result<()>,
    },
}

/// One download's state.
pub(crate) struct Download {
    key: LookupKey,
    out_dir: PathBuf,
    /// The name to write the file under, when the caller fixes it (collection entries).
    name: Option<FileName>,
    progress: Arc<watch::Sender<Progress>>,
    reply: Option<oneshot::Sender<Result<Outcome, GetError>>>,
    started: Instant,
    /// Known after the first lookup.
    file: Option<FileId>,
    /// `(final path, .part path)`, known once the manifest is verified.
    paths: Option<(PathBuf, PathBuf)>,
    providers: HashMap<PeerId, Provider>,
    phase: Phase,
    /// Last time a provider joined or sent something useful; `provider_wait` runs from here.
    last_progress: Instant,
    next_lookup: Instant,
    lookup_pending: bool,
    manifest_pending: bool,
    resumed: u64,
    fetched: u64,
    /// Pieces were stored since the resume record was last written.
    record_dirty: bool,
    record_writing: bool,
}

enum Phase {
    Locating,
    Manifest,
    Opening {
        manifest: Arc<Manifest>,
    },
    Transfer {
        manifest: Arc<Manifest>,
        file: Arc<File>,
        picker: PiecePicker,
    },
    Finishing {
        size: u64,
    },
}

#[derive(Debug)]
struct Provider {
    /// Announced as holding every piece.
    complete: bool,
    /// Its pieces, once known (complete providers: as soon as the manifest is).
    have: Option<Bitfield>,
    /// Pieces requested from it and not yet stored or failed.
    in_flight: HashSet<PieceIndex>,
    /// Current window (fractional so it can grow by 1/window per piece).
    window: f64,
    /// Timeouts since its last delivered piece.
    timeouts: u32,
    /// Not used for this download (until a re-lookup re-admits it, unless `banned`).
    dropped: bool,
    /// Sent bad data: never used again for this file.
    banned: bool,
    /// Answered `Busy`: no new requests until the next housekeeping tick.
    backoff: bool,
    asked_manifest: bool,
    have_pending: bool,
    /// Pieces that timed out at this provider: asked elsewhere.
    timed_out: HashSet<PieceIndex>,
    /// Verified pieces it sent.
    pieces: u64,
}

impl Provider {
    fn new(complete: bool, window: usize) -> Self {
        Provider {
            complete,
            have: None,
            in_flight: HashSet::new(),
            window: window as f64,
            timeouts: 0,
            dropped: false,
            banned: false,
            backoff: false,
            asked_manifest: false,
            have_pending: false,
            timed_out: HashSet::new(),
            pieces: 0,
        }
    }
}

impl Download {
    fn what(&self) -> String {
        match &self.key {
            LookupKey::Id(f) => f.to_string(),
            LookupKey::Name(n) => n.to_string(),
        }
    }
}

impl<E: NetworkBehaviour> EventLoop<E> {
    pub(crate) fn start_download(
        &mut self,
        key: LookupKey,
        out_dir: PathBuf,
        name: Option<FileName>,
        progress: Arc<watch::Sender<Progress>>,
        reply: oneshot::Sender<Result<Outcome, GetError>>,
    ) {
        let id = DownloadId(self.next_download);
        self.next_download += 1;
        info!(?key, out = %out_dir.display(), "download requested");
        let now = Instant::now();
        let download = Download {
            key: key.clone(),
            out_dir,
            name,
            progress,
            reply: Some(reply),
            started: now,
            file: None,
            paths: None,
            providers: HashMap::new(),
            phase: Phase::Locating,
            last_progress: now,
            next_lookup: now + self.config.relookup_interval,
            lookup_pending: true,
            manifest_pending: false,
            resumed: 0,
            fetched: 0,
            record_dirty: false,
            record_writing: false,
        };
        self.downloads.insert(id, download);
        self.tracker_request(
            tracker::Request::Lookup {
                key,
                limit: LOOKUP_LIMIT,
            },
            TrackerWaiter::Download(id),
        );
    }

    /// The first lookup failed (tracker unreachable or refused): the download cannot start.
    /// A failed re-lookup only means no new providers this time.
    pub(crate) fn on_lookup_failed(&mut self, id: DownloadId, error: crate::Error) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.lookup_pending = false;
        if matches!(dl.phase, Phase::Locating) {
            self.fail_download(id, error.into());
        } else {
            debug!(%error, "re-lookup failed");
        }
    }

    pub(crate) fn on_providers(&mut self, id: DownloadId, records: Vec<FileRecord>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.lookup_pending = false;
        if let Some(file) = dl.file {
            let record = records.into_iter().find(|r| r.id == file);
            return self.add_providers(id, record.map(|r| r.providers).unwrap_or_default(), true);
        }
        // The tracker is not trusted to answer a lookup by id with that id.
        let records: Vec<FileRecord> = match &dl.key {
            LookupKey::Id(wanted) => records.into_iter().filter(|r| r.id == *wanted).collect(),
            LookupKey::Name(_) => records,
        };
        let mut ids: Vec<FileId> = records.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        let record = match (records.into_iter().next(), ids.len()) {
            (None, _) => {
                let what = dl.what();
                return self.fail_download(id, GetError::UnknownFile(what));
            }
            (Some(record), 1) => record,
            (Some(_), _) => {
                let name = dl.what();
                return self.fail_download(id, GetError::Ambiguous { name, ids });
            }
        };
        // A file this node already holds complete may be fetched again elsewhere; two downloads
        // of one file at once may not.
        let busy = self
            .downloads
            .iter()
            .any(|(other, d)| *other != id && d.file == Some(record.id));
        if busy {
            return self.fail_download(id, GetError::Busy(record.id));
        }
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.file = Some(record.id);
        dl.phase = Phase::Manifest;
        dl.progress.send_modify(|p| p.id = Some(record.id));
        self.add_providers(id, record.providers, true);
    }

    /// Adds providers not known yet; ready ones start receiving requests at once.
    ///
    /// A provider dropped earlier for a lost connection or timeouts is re-admitted when the
    /// tracker lists it again (it may have come back); one that sent bad data never is. When the
    /// download had no usable provider, new ones from the tracker restart the `provider_wait`
    /// clock; peers that merely asked us for the file do not (they could keep a stalled
    /// download alive forever).
    fn add_providers(
        &mut self,
        id: DownloadId,
        providers: Vec<tracker::Provider>,
        from_tracker: bool,
    ) {
        let local = *self.swarm.local_peer_id();
        let window = self.config.window;
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let had_active = dl.providers.values().any(|p| !p.dropped);
        let mut added = Vec::new();
        for provider in providers.into_iter().filter(|p| p.peer != local) {
            for addr in provider.addrs {
                self.swarm.add_peer_address(provider.peer, addr);
            }
            let slot = dl.providers.entry(provider.peer);
            match slot {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Provider::new(provider.complete, window));
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let old = slot.get();
                    if !(from_tracker && old.dropped && !old.banned) {
                        continue;
                    }
                    slot.insert(Provider::new(provider.complete, window));
                }
            }
            added.push(provider.peer);
        }
        if !added.is_empty() && from_tracker && !had_active {
            dl.last_progress = Instant::now();
        }
        if !added.is_empty() {
            debug!(file = ?dl.file, added = added.len(), total = dl.providers.len(), "providers joined");
        }
        for peer in added {
            self.init_provider(id, peer);
        }
        self.request_manifest(id);
        self.schedule(id);
    }

    /// A peer asked us for a file we are downloading: it is downloading it too, so it may have
    /// pieces we lack. It joins as a partial provider.
    pub(crate) fn on_interested_peer(&mut self, peer: PeerId, file: FileId) {
        let id = self
            .downloads
            .iter()
            .find(|(_, d)| d.file == Some(file) && !d.providers.contains_key(&peer))
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.add_providers(
                id,
                vec![tracker::Provider {
                    peer,
                    addrs: Vec::new(),
                    complete: false,
                }],
                false,
            );
        }
    }

    /// Gives a provider its bitfield: full for a complete one, asked for otherwise.
    fn init_provider(&mut self, id: DownloadId, peer: PeerId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Transfer {
            manifest, picker, ..
        } = &mut dl.phase
        else {
            return;
        };
        let Some(p) = dl.providers.get_mut(&peer) else {
            return;
        };
        if p.dropped || p.have.is_some() {
            return;
        }
        if p.complete {
            let full = Bitfield::full(manifest.lengths());
            picker.add_provider(&full);
            p.have = Some(full);
        } else {
            self.request_have(id, peer);
        }
    }

    fn request_have(&mut self, id: DownloadId, peer: PeerId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some(file), Some(p)) = (dl.file, dl.providers.get_mut(&peer)) else {
            return;
        };
        if p.have_pending || p.dropped {
            return;
        }
        p.have_pending = true;
        let request_id = self
            .swarm
            .behaviour_mut()
            .transfer
            .send_request(&peer, transfer::Request::Have { id: file });
        self.transfer_pending.insert(
            request_id,
            TransferRequest {
                download: id,
                want: Want::Have,
            },
        );
    }

    /// Asks the next untried provider for the manifest; with none left it waits for new ones.
    fn request_manifest(&mut self, id: DownloadId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some(file), Phase::Manifest, false) = (dl.file, &dl.phase, dl.manifest_pending) else {
            return;
        };
        let Some((peer, state)) = dl
            .providers
            .iter_mut()
            .find(|(_, p)| !p.dropped && !p.asked_manifest)
        else {
            return;
        };
        state.asked_manifest = true;
        dl.manifest_pending = true;
        let peer = *peer;
        let request_id = self
            .swarm
            .behaviour_mut()
            .transfer
            .send_request(&peer, transfer::Request::Manifest { id: file });
        self.transfer_pending.insert(
            request_id,
            TransferRequest {
                download: id,
                want: Want::Manifest,
            },
        );
    }

    pub(crate) fn on_transfer_response(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: transfer::Response,
    ) {
        let Some(TransferRequest { download: id, want }) =
            self.transfer_pending.remove(&request_id)
        else {
            return;
        };
        match (want, response) {
            (Want::Manifest, transfer::Response::Manifest(wire)) => {
                self.on_manifest(id, peer, wire)
            }
            (Want::Manifest, transfer::Response::Collection(bytes)) => {
                self.on_collection(id, peer, &bytes)
            }
            (Want::Have, transfer::Response::Have(bits)) => self.on_have(id, peer, bits),
            (Want::Piece(piece), transfer::Response::Piece(bytes)) => {
                self.on_piece(id, peer, piece, bytes)
            }
            (want, transfer::Response::Error(ErrorCode::Busy)) => {
                self.on_request_failed(id, peer, want, Failure::Busy, &"busy")
            }
            (want, transfer::Response::Error(code)) => {
                self.on_request_failed(id, peer, want, Failure::Fatal, &code)
            }
            (want, _) => {
                self.on_request_failed(id, peer, want, Failure::Fatal, &"unexpected response")
            }
        }
    }

    pub(crate) fn on_transfer_failure(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        error: OutboundFailure,
    ) {
        let Some(TransferRequest { download: id, want }) =
            self.transfer_pending.remove(&request_id)
        else {
            return;
        };
        let failure = if matches!(error, OutboundFailure::Timeout) {
            Failure::Timeout
        } else {
            Failure::Fatal
        };
        self.on_request_failed(id, peer, want, failure, &error);
    }

    fn on_request_failed(
        &mut self,
        id: DownloadId,
        peer: PeerId,
        want: Want,
        failure: Failure,
        why: &dyn std::fmt::Display,
    ) {
        let max_timeouts = self.config.max_provider_failures;
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Some(p) = dl.providers.get_mut(&peer) else {
            return;
        };
        match want {
            Want::Manifest => dl.manifest_pending = false,
            Want::Have => p.have_pending = false,
            Want::Piece(piece) => {
                // A dropped provider's pieces went back to the picker already; returning one
                // twice would mark it missing while another provider is fetching it.
                if p.in_flight.remove(&piece) {
                    if let Phase::Transfer { picker, .. } = &mut dl.phase {
                        picker.failed(piece);
                    }
                }
            }
        }
        let drop_it = match failure {
            Failure::Fatal => true,
            Failure::Timeout => {
                if let Want::Manifest = want {
                    p.asked_manifest = false;
                }
                p.timeouts += 1;
                p.window = (p.window / 2.0).max(1.0);
                if let Want::Piece(piece) = want {
                    p.timed_out.insert(piece);
                }
                p.timeouts >= max_timeouts
            }
            Failure::Busy => {
                p.window = (p.window - 1.0).max(1.0);
                // No new requests to it until a piece arrives or the next housekeeping tick: no
                // request/Busy loop at round-trip speed.
                p.backoff = true;
                if let Want::Manifest = want {
                    p.asked_manifest = false;
                }
                false
            }
        };
        if drop_it {
            self.drop_provider(id, peer, why);
        }
        self.request_manifest(id);
        self.schedule(id);
    }

    /// Drops `peer` for this download: its requests' pieces go back to the picker.
    fn drop_provider(&mut self, id: DownloadId, peer: PeerId, why: &dyn std::fmt::Display) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Some(p) = dl.providers.get_mut(&peer) else {
            return;
        };
        if p.dropped {
            return;
        }
        p.dropped = true;
        if let Phase::Transfer { picker, .. } = &mut dl.phase {
            if let Some(have) = p.have.take() {
                picker.remove_provider(&have);
            }
            for piece in p.in_flight.drain() {
                picker.failed(piece);
            }
        }
        warn!(%peer, file = ?dl.file, reason = %why, "provider dropped");
        if let Some(file) = dl.file {
            self.emit(Event::ProviderDropped {
                file,
                peer,
                reason: why.to_string(),
            });
        }
    }

    fn on_manifest(&mut self, id: DownloadId, peer: PeerId, wire: WireManifest) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.manifest_pending = false;
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        let manifest = match wire.verify(file) {
            Ok(m) => Arc::new(m),
            Err(e) => return self.on_request_failed(id, peer, Want::Manifest, Failure::Fatal, &e),
        };
        let name = match (&dl.name, &dl.key) {
            (Some(n), _) | (None, LookupKey::Name(n)) => n.clone(),
            (None, LookupKey::Id(_)) => manifest.name().clone(),
        };
        let (path, part) = store::download_paths(&dl.out_dir, &name);
        dl.paths = Some((path.clone(), part.clone()));
        dl.last_progress = Instant::now();
        dl.progress
            .send_modify(|p| p.total = manifest.lengths().size());
        dl.phase = Phase::Opening {
            manifest: Arc::clone(&manifest),
        };
        self.tasks.spawn_blocking(move || {
            let result = store::open_download(&path, &part, &manifest);
            TaskOutput::Download(TaskDone::Opened {
                download: id,
                result,
            })
        });
    }

    /// The id names a shared directory. Bytes that do not hash to the id are the provider's
    /// lie; bytes that do but are no valid collection are the collection's own fault, and no
    /// other provider can give different bytes for that id, so the download fails at once.
    fn on_collection(&mut self, id: DownloadId, peer: PeerId, bytes: &[u8]) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.manifest_pending = false;
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        match Collection::decode(bytes, file) {
            Err(e @ CollectionError::IdMismatch { .. }) => {
                self.on_request_failed(id, peer, Want::Manifest, Failure::Fatal, &e)
            }
            Err(source) => self.fail_download(id, GetError::InvalidCollection { id: file, source }),
            Ok(collection) => {
                info!(collection = %file, files = collection.entries().len(), "collection verified");
                if let Some(mut dl) = self.downloads.remove(&id) {
                    if let Some(reply) = dl.reply.take() {
                        let _ = reply.send(Ok(Outcome::Collection(Arc::new(collection))));
                    }
                }
            }
        }
    }

    fn on_have(&mut self, id: DownloadId, peer: PeerId, bits: Vec<u8>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Some(p) = dl.providers.get_mut(&peer) else {
            return;
        };
        p.have_pending = false;
        let Phase::Transfer {
            manifest, picker, ..
        } = &mut dl.phase
        else {
            return;
        };
        let Some(have) = Bitfield::from_wire(manifest.lengths(), bits) else {
            return self.on_request_failed(
                id,
                peer,
                Want::Have,
                Failure::Fatal,
                &"malformed bitfield",
            );
        };
        if p.dropped || p.have.as_ref() == Some(&have) {
            return;
        }
        if let Some(old) = p.have.take() {
            picker.remove_provider(&old);
        }
        picker.add_provider(&have);
        p.have = Some(have);
        self.schedule(id);
    }

    fn on_piece(&mut self, id: DownloadId, peer: PeerId, piece: PieceIndex, bytes: Vec<u8>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Transfer {
            manifest,
            file,
            picker,
        } = &dl.phase
        else {
            return;
        };
        if picker.has(piece) {
            // An endgame copy that lost the race: drop it.
            if let Some(p) = dl.providers.get_mut(&peer) {
                p.in_flight.remove(&piece);
            }
            bitswarm_protocols::buffers::give(bytes);
            return self.schedule(id);
        }
        let (manifest, file) = (Arc::clone(manifest), Arc::clone(file));
        // The provider's window slot stays taken until the piece is stored, which bounds the
        // piece bytes held in memory to the windows' total.
        self.tasks.spawn_blocking(move || {
            let result = store::store_piece(&file, &manifest, piece, bytes);
            TaskOutput::Download(TaskDone::PieceStored {
                download: id,
                peer,
                piece,
                result,
            })
        });
    }

    pub(crate) fn on_download_task(&mut self, done: TaskDone) {
        match done {
            TaskDone::Opened { download, result } => self.on_opened(download, result),
            TaskDone::PieceStored {
                download,
                peer,
                piece,
                result,
            } => match result {
                Ok(()) => self.on_piece_stored(download, peer, piece),
                Err(StoreError::BadPiece) => {
                    self.stats.bad_pieces += 1;
                    warn!(%peer, %piece, "piece failed verification");
                    let why = "sent a piece that failed verification";
                    if let Some(p) = self
                        .downloads
                        .get_mut(&download)
                        .and_then(|d| d.providers.get_mut(&peer))
                    {
                        p.banned = true;
                    }
                    self.on_request_failed(
                        download,
                        peer,
                        Want::Piece(piece),
                        Failure::Fatal,
                        &why,
                    );
                }
                Err(StoreError::Io(source)) => {
                    let path = self
                        .downloads
                        .get(&download)
                        .and_then(|d| d.paths.clone())
                        .map(|p| p.1)
                        .unwrap_or_default();
                    self.fail_download(download, GetError::Io { path, source });
                }
            },
            TaskDone::RecordWritten { download } => {
                if let Some(dl) = self.downloads.get_mut(&download) {
                    dl.record_writing = false;
                }
            }
            TaskDone::Finished { download, result } => self.on_finished(download, result),
        }
    }

    fn on_opened(&mut self, id: DownloadId, result: io::Result<Opened>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Opening { manifest } = &dl.phase else {
            return;
        };
        let manifest = Arc::clone(manifest);
        let Opened { file, resumed } = match result {
            Ok(opened) => opened,
            Err(source) => {
                let path = dl.paths.clone().map(|p| p.0).unwrap_or_default();
                return self.fail_download(id, GetError::Io { path, source });
            }
        };
        let file = Arc::new(file);
        let mut picker = PiecePicker::new(*manifest.lengths());
        for piece in resumed {
            if picker.stored(piece) {
                dl.resumed += u64::from(manifest.lengths().piece_len(piece));
            }
        }
        if dl.resumed > 0 {
            info!(file = %manifest.id(), bytes = dl.resumed, "resuming: verified pieces kept from an earlier run");
        }
        let resumed = dl.resumed;
        dl.progress.send_modify(|p| p.done = resumed);
        dl.last_progress = Instant::now();
        let complete = picker.is_complete();
        // A complete copy this node already serves keeps serving; otherwise serve what arrives.
        self.held.entry(manifest.id()).or_insert_with(|| Held {
            manifest: Arc::clone(&manifest),
            file: Arc::clone(&file),
            download: Some(id),
        });
        dl.phase = Phase::Transfer {
            manifest,
            file,
            picker,
        };
        if complete {
            return self.finish(id);
        }
        let peers: Vec<PeerId> = dl.providers.keys().copied().collect();
        for peer in peers {
            self.init_provider(id, peer);
        }
        // Tell the tracker we hold (some of) this file, so other leechers find us.
        self.announce();
        self.schedule(id);
    }

    fn on_piece_stored(&mut self, id: DownloadId, peer: PeerId, piece: PieceIndex) {
        let max_window = self.config.max_window as f64;
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Transfer {
            picker, manifest, ..
        } = &mut dl.phase
        else {
            return;
        };
        if let Some(p) = dl.providers.get_mut(&peer) {
            let was_full = p.in_flight.len() as f64 >= p.window.floor();
            p.in_flight.remove(&piece);
            p.pieces += 1;
            p.timeouts = 0;
            if was_full {
                p.window = (p.window + 1.0 / p.window).min(max_window);
            }
        }
        // A stored piece paces the retries of providers that answered `Busy`.
        for p in dl.providers.values_mut() {
            p.backoff = false;
        }
        if picker.stored(piece) {
            let len = u64::from(manifest.lengths().piece_len(piece));
            self.stats.downloaded += len;
            dl.fetched += len;
            dl.record_dirty = true;
            dl.last_progress = Instant::now();
            let active = dl.providers.values().filter(|p| !p.dropped).count();
            dl.progress.send_modify(|p| {
                p.done += len;
                p.providers = active;
            });
        }
        if picker.is_complete() {
            return self.finish(id);
        }
        self.schedule(id);
    }

    /// Fills every provider's window: rarest missing pieces first, then endgame duplicates.
    fn schedule(&mut self, id: DownloadId) {
        let max_in_flight = self.config.max_in_flight;
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Download {
            file: Some(file),
            phase: Phase::Transfer { picker, .. },
            providers,
            ..
        } = dl
        else {
            return;
        };
        let file = *file;
        let mut total: usize = providers.values().map(|p| p.in_flight.len()).sum();
        // Fill the emptiest windows first so a cap on the total spreads over providers.
        let mut order: Vec<(&PeerId, &mut Provider)> = providers
            .iter_mut()
            .filter(|(_, p)| !p.dropped && !p.backoff && p.have.is_some())
            .collect();
        order.sort_by_key(|(_, p)| p.in_flight.len());
        for (peer, p) in order {
            let Some(have) = &p.have else { continue };
            let room = (p.window.floor() as usize)
                .saturating_sub(p.in_flight.len())
                .min(max_in_flight.saturating_sub(total));
            let timed_out = &p.timed_out;
            let mut picks = picker.pick(have, room, |x| timed_out.contains(&x));
            if picks.len() < room && !p.timed_out.is_empty() {
                // Nothing else to give it: a piece that timed out here may be asked again
                // (with a single provider there is nobody else to ask).
                p.timed_out.clear();
                picks.extend(picker.pick(have, room - picks.len(), |_| false));
            }
            while picks.len() < room {
                let in_flight = &p.in_flight;
                let Some(dup) =
                    picker.pick_endgame(have, |x| in_flight.contains(&x) || picks.contains(&x))
                else {
                    break;
                };
                picks.push(dup);
            }
            total += picks.len();
            for piece in picks {
                let request = transfer::Request::Piece {
                    id: file,
                    index: piece.get(),
                };
                let request_id = self
                    .swarm
                    .behaviour_mut()
                    .transfer
                    .send_request(peer, request);
                self.transfer_pending.insert(
                    request_id,
                    TransferRequest {
                        download: id,
                        want: Want::Piece(piece),
                    },
                );
                p.in_flight.insert(piece);
            }
        }
    }

    /// Per-tick upkeep of every download: provider-wait deadline, re-lookups, bitfield
    /// refreshes of partial providers, resume record writes.
    pub(crate) fn downloads_housekeeping(&mut self) {
        let now = Instant::now();
        let wait = self.config.provider_wait;
        let relookup = self.config.relookup_interval;
        let ids: Vec<DownloadId> = self.downloads.keys().copied().collect();
        for id in ids {
            let Some(dl) = self.downloads.get_mut(&id) else {
                continue;
            };
            if matches!(dl.phase, Phase::Opening { .. } | Phase::Finishing { .. }) {
                continue;
            }
            if now.duration_since(dl.last_progress) > wait {
                let file = dl.file;
                let error = match file {
                    Some(file) => GetError::NoProviders { file, waited: wait },
                    None => GetError::UnknownFile(dl.what()),
                };
                self.fail_download(id, error);
                continue;
            }
            if let (Some(file), false, true) = (dl.file, dl.lookup_pending, now >= dl.next_lookup) {
                dl.lookup_pending = true;
                dl.next_lookup = now + relookup;
                self.tracker_request(
                    tracker::Request::Lookup {
                        key: LookupKey::Id(file),
                        limit: LOOKUP_LIMIT,
                    },
                    TrackerWaiter::Download(id),
                );
            }
            let Some(dl) = self.downloads.get_mut(&id) else {
                continue;
            };
            let partial: Vec<PeerId> = dl
                .providers
                .iter()
                .filter(|(_, p)| !p.complete && !p.dropped && !p.have_pending)
                .map(|(peer, _)| *peer)
                .collect();
            let backed_off = dl.providers.values().any(|p| p.backoff);
            for p in dl.providers.values_mut() {
                p.backoff = false;
            }
            if matches!(dl.phase, Phase::Transfer { .. }) {
                for peer in partial {
                    self.request_have(id, peer);
                }
                if backed_off {
                    self.schedule(id);
                }
            }
            self.write_record(id);
        }
    }

    /// Writes the resume record on a blocking task when pieces were stored since the last one.
    fn write_record(&mut self, id: DownloadId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (
            Phase::Transfer {
                manifest, picker, ..
            },
            Some((_, part)),
            true,
            false,
        ) = (&dl.phase, &dl.paths, dl.record_dirty, dl.record_writing)
        else {
            return;
        };
        let (manifest, part, have) = (Arc::clone(manifest), part.clone(), picker.held().to_wire());
        dl.record_dirty = false;
        dl.record_writing = true;
        self.tasks.spawn_blocking(move || {
            if let Err(error) = store::write_record(&part, &manifest, have) {
                warn!(%error, part = %part.display(), "cannot write resume record");
            }
            TaskOutput::Download(TaskDone::RecordWritten { download: id })
        });
    }

    fn finish(&mut self, id: DownloadId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some((path, part)), Phase::Transfer { manifest, file, .. }) =
            (dl.paths.clone(), &dl.phase)
        else {
            return;
        };
        let file = Arc::clone(file);
        let size = manifest.lengths().size();
        dl.phase = Phase::Finishing { size };
        self.tasks.spawn_blocking(move || {
            let result = store::finish(&file, &part, &path);
            TaskOutput::Download(TaskDone::Finished {
                download: id,
                result,
            })
        });
    }

    fn on_finished(&mut self, id: DownloadId, result: io::Result<()>) {
        let Some(mut dl) = self.downloads.remove(&id) else {
            return;
        };
        let (Some(file), Some((path, part)), Phase::Finishing { size }) =
            (dl.file, dl.paths.clone(), &dl.phase)
        else {
            return;
        };
        let size = *size;
        if let Err(source) = result {
            self.downloads.insert(id, dl);
            return self.fail_download(id, GetError::Io { path: part, source });
        }
        if let Some(held) = self.held.get_mut(&file) {
            held.download = None;
        }
        let providers_used = dl.providers.values().filter(|p| p.pieces > 0).count();
        let done = Downloaded {
            id: file,
            path: path.clone(),
            size,
            elapsed: dl.started.elapsed(),
            providers_used,
            resumed: dl.resumed,
            fetched: dl.fetched,
        };
        info!(%file, path = %path.display(), size, elapsed = ?done.elapsed, providers_used, resumed = dl.resumed, "download complete");
        self.emit(Event::Downloaded { file, path });
        if let Some(reply) = dl.reply.take() {
            let _ = reply.send(Ok(Outcome::File(done)));
        }
        self.announce();
    }

    /// Ends a download with `error`; its `.part` file and resume record stay for a later run.
    pub(crate) fn fail_download(&mut self, id: DownloadId, error: GetError) {
        self.write_record(id);
        let Some(mut dl) = self.downloads.remove(&id) else {
            return;
        };
        if let Some(file) = dl.file {
            if self.held.get(&file).is_some_and(|h| h.download == Some(id)) {
                self.held.remove(&file);
                self.tracker_request(
                    tracker::Request::Unannounce { id: file },
                    TrackerWaiter::Unannounce,
                );
            }
        }
        warn!(file = ?dl.file, %error, "download failed");
        if let Some(reply) = dl.reply.take() {
            let _ = reply.send(Err(error));
        }
    }

    /// Whether this node holds `piece` of `file` (complete, or verified during a download).
    pub(crate) fn holds_piece(&self, file: FileId, piece: PieceIndex) -> bool {
        match self.held.get(&file).map(|h| h.download) {
            Some(None) => true,
            Some(Some(dl)) => match self.downloads.get(&dl).map(|d| &d.phase) {
                Some(Phase::Transfer { picker, .. }) => picker.has(piece),
                // Every piece is verified and written; only the rename is pending.
                Some(Phase::Finishing { .. }) => true,
                _ => false,
            },
            None => false,
        }
    }

    /// The wire bitfield of the pieces of `file` this node holds.
    pub(crate) fn bitfield_of(&self, file: FileId, manifest: &Manifest) -> Vec<u8> {
        match self
            .held
            .get(&file)
            .and_then(|h| h.download)
            .and_then(|dl| self.picker_of(dl))
        {
            Some(picker) => picker.held().to_wire(),
            None => Bitfield::full(manifest.lengths()).to_wire(),
        }
    }

    fn picker_of(&self, id: DownloadId) -> Option<&PiecePicker> {
        match &self.downloads.get(&id)?.phase {
            Phase::Transfer { picker, .. } => Some(picker),
            _ => None,
        }
    }
}
