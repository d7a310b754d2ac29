//! Downloads: locate providers through the tracker, fetch and verify the manifest, then pull
//! pieces rarest-first from every provider at once, complete seeders and partial leechers alike.
//!
//! Phases of one download: `Locating` (first tracker lookup) -> `Checking` (the file may be
//! there already) -> `Manifest` (providers asked one at a time until one sends a manifest that
//! merges to the file id) -> `Opening` (the `.part` file opened on a blocking task; pieces from
//! an earlier run are verified and kept) -> `Transfer` -> `Finishing` (fsync + rename) -> done. A failure answers the waiting
//! [`crate::Download`] and leaves the `.part` file for a later run. Where the file lands (the
//! locked `.part` file named by the id, the checks before the rename) is [`crate::place`]'s.
//!
//! Providers: complete ones hold every piece; partial ones are asked for their bitfield
//! (`Have`) on joining and every housekeeping tick. Each has an in-flight window that grows by
//! one per window of pieces delivered while it was full and halves on a timeout. A peer that
//! sends a piece failing verification, or whose request fails for good (connection lost, not
//! found, unsupported), is dropped for the file; timeouts drop it after a few. Providers come
//! from periodic re-lookups and from peers that ask us for pieces of the same file.
//!
//! A download with no provider sending data for `provider_wait` fails with "no provider".
//!
//! Files: this one holds the state and the provider bookkeeping; `pieces` the data path
//! (manifest or collection, bitfields, pieces, scheduling); `lifecycle` the housekeeping tick,
//! finishing and failing; `picker` and `bitfield` the pure state they share.

mod bitfield;
mod lifecycle;
pub(crate) mod picker;
mod pieces;
mod providers;

use std::{fs::File, path::PathBuf, sync::Arc, time::Instant};

pub(crate) use bitfield::Bitfield;
use bitswarm_protocols::{
    tracker::{self, FileRecord, LookupKey},
    transfer, Collection, CollectionError, ErrorCode, FileId, FileName, Manifest, PieceIndex,
    WireManifest,
};
use libp2p::{
    request_response::{OutboundFailure, OutboundRequestId},
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        DialError, NetworkBehaviour,
    },
    PeerId,
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use self::{
    picker::PiecePicker,
    providers::{Admitted, Failure, Limits, Providers},
};
use crate::{
    client::{Downloaded, Outcome, Progress, Source},
    error::GetError,
    event_loop::{TaskOutput, TrackerWaiter},
    place::{self, Dir, Finished, Opened, PlaceError},
    store::{self, StoreError},
    Event, EventLoop,
};

/// How long a manifest request holds one of the [`MANIFEST_PARALLEL`] slots before another
/// provider is asked in its place (far shorter than the request timeout and `--wait`).
const MANIFEST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
/// Manifest requests waited for at once: one is asked at first, a second on the next
/// housekeeping tick if the first has not answered (both may then be fetched; the first
/// verified wins).
const MANIFEST_PARALLEL: usize = 2;

/// Most providers one lookup asks the tracker for.
const LOOKUP_LIMIT: u32 = 200;

/// Local handle of one download in the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DownloadId(u64);

impl DownloadId {
    #[cfg(test)]
    pub(crate) fn for_test(n: u64) -> Self {
        DownloadId(n)
    }
}

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

/// Results of a download's blocking tasks.
pub(crate) enum TaskDone {
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
    Checked {
        download: DownloadId,
        result: Result<Option<(Dir, Manifest, File)>, PlaceError>,
    },
    /// The task panicked (a bug): the download fails rather than waiting forever.
    Panicked { download: DownloadId },
}

/// One download's state.
pub(crate) struct DownloadState {
    key: LookupKey,
    out_dir: PathBuf,
    /// The output directory, already opened by the caller (collection entries, whose
    /// directories are created without following links); else `out_dir` is opened.
    dir: Option<Dir>,
    /// The name to write the file under, when the caller fixes it (`--name`, collection
    /// entries); else the name asked for, or the manifest's made safe.
    name: Option<FileName>,
    /// Largest file accepted.
    max_size: u64,
    /// The size the tracker lists for the file; a manifest must agree.
    expected_size: Option<u64>,
    progress: Arc<watch::Sender<Progress>>,
    reply: Option<oneshot::Sender<Result<Outcome, GetError>>>,
    started: Instant,
    /// Known after the first lookup.
    file: Option<FileId>,
    /// The final name, known once the manifest is verified.
    final_name: Option<FileName>,
    providers: Providers,
    phase: Phase,
    /// Last time a provider joined or sent something useful; `provider_wait` runs from here.
    last_progress: Instant,
    next_lookup: Instant,
    lookup_pending: bool,
    /// Manifest requests out: to whom, since when. One that has not answered within
    /// [`MANIFEST_PATIENCE`] no longer holds a slot (it may still answer), so a provider that
    /// never answers cannot stall the download until the request timeout.
    manifest_asks: Vec<(PeerId, Instant)>,
    resumed: u64,
    fetched: u64,
    /// Why the last provider was dropped, for the "no provider" error.
    last_problem: Option<String>,
}

enum Phase {
    Locating,
    /// Looking at the output directory: a file already there with this id ends the download
    /// before any provider is asked.
    Checking,
    Manifest,
    Opening {
        manifest: Arc<Manifest>,
    },
    Transfer {
        manifest: Arc<Manifest>,
        /// The locked `.part` file.
        file: Arc<File>,
        dir: Dir,
        picker: PiecePicker,
    },
    Finishing {
        size: u64,
        path: PathBuf,
    },
}

impl DownloadState {
    fn what(&self) -> String {
        match &self.key {
            LookupKey::Id(f) => f.to_string(),
            LookupKey::Name(n) => n.to_string(),
        }
    }
}

/// The record a first lookup answers for `key`. The tracker is not trusted to answer a lookup
/// by id with that id: records for other ids are ignored. A name that several different files
/// share is ambiguous (the user picks one by id); no record is an unknown file.
fn choose_record(key: &LookupKey, records: Vec<FileRecord>) -> Result<FileRecord, GetError> {
    let what = || match key {
        LookupKey::Id(f) => f.to_string(),
        LookupKey::Name(n) => n.to_string(),
    };
    let records: Vec<FileRecord> = match key {
        LookupKey::Id(wanted) => records.into_iter().filter(|r| r.id == *wanted).collect(),
        LookupKey::Name(_) => records,
    };
    let mut ids: Vec<FileId> = records.iter().map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    match (records.into_iter().next(), ids.len()) {
        (None, _) => Err(GetError::UnknownFile(what())),
        (Some(record), 1) => Ok(record),
        (Some(_), _) => Err(GetError::Ambiguous { name: what(), ids }),
    }
}

impl<E: NetworkBehaviour> EventLoop<E> {
    /// Runs a download's disk work on a blocking task; a panic there fails the download.
    fn spawn_task(
        &mut self,
        download: DownloadId,
        task: impl FnOnce() -> TaskDone + Send + 'static,
    ) {
        self.tasks.spawn_blocking(move || {
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))
                .unwrap_or(TaskDone::Panicked { download });
            TaskOutput::Download(done)
        });
    }

    fn limits(&self) -> Limits {
        Limits {
            window: self.config.window,
            max_window: self.config.max_window,
            max_in_flight: self.config.max_in_flight,
            max_timeouts: self.config.max_provider_failures,
        }
    }

    pub(crate) fn start_download(
        &mut self,
        get: crate::command::Get,
        progress: Arc<watch::Sender<Progress>>,
        reply: oneshot::Sender<Result<Outcome, GetError>>,
    ) {
        let id = DownloadId(self.next_download);
        self.next_download += 1;
        let key = get.key;
        info!(?key, out = %get.out_dir.display(), "download requested");
        let now = Instant::now();
        let download = DownloadState {
            key: key.clone(),
            out_dir: get.out_dir,
            dir: get.dir,
            name: get.name,
            max_size: get.max_size,
            expected_size: None,
            progress,
            reply: Some(reply),
            started: now,
            file: None,
            final_name: None,
            providers: Providers::new(self.limits()),
            phase: Phase::Locating,
            last_progress: now,
            next_lookup: now + self.config.relookup_interval,
            lookup_pending: true,
            manifest_asks: Vec::new(),
            resumed: 0,
            fetched: 0,
            last_problem: None,
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
        let record = match choose_record(&dl.key, records) {
            Ok(record) => record,
            Err(error) => return self.fail_download(id, error),
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
        if record.size > dl.max_size {
            let error = GetError::TooLarge {
                id: record.id,
                size: record.size,
                max: dl.max_size,
            };
            return self.fail_download(id, error);
        }
        dl.expected_size = Some(record.size);
        dl.file = Some(record.id);
        dl.phase = Phase::Checking;
        dl.progress.send_modify(|p| p.id = Some(record.id));
        // The name it would land under: the one given, or the tracker's made safe (the
        // manifest's may differ; `Opening` checks that one again).
        let name = match (&dl.name, &dl.key) {
            (Some(n), _) | (None, LookupKey::Name(n)) => n.clone(),
            (None, LookupKey::Id(_)) => place::safe_name(&record.name, &record.id),
        };
        let (dir, out_dir, file, size) =
            (dl.dir.clone(), dl.out_dir.clone(), record.id, record.size);
        self.spawn_task(id, move || {
            let dir = match dir {
                Some(dir) => Ok(dir),
                None => Dir::open(&out_dir),
            };
            // Only a match counts here: anything else (nothing there, another file, an
            // unreadable one) is decided under the manifest's name, once it is known.
            let result = dir.map(
                |dir| match place::present(&dir, name.as_str(), &file, size) {
                    Ok(Some((manifest, file))) => Some((dir, manifest, file)),
                    Ok(None) | Err(_) => None,
                },
            );
            TaskDone::Checked {
                download: id,
                result,
            }
        });
        self.add_providers(id, record.providers, true);
    }

    /// The output directory was looked at: done if the file is there, else on to the manifest.
    pub(super) fn on_checked(
        &mut self,
        id: DownloadId,
        result: Result<Option<(Dir, Manifest, File)>, PlaceError>,
    ) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        if !matches!(dl.phase, Phase::Checking) {
            return;
        }
        match result {
            Err(error) => self.fail_download(id, error.into()),
            Ok(Some((dir, manifest, file))) => self.on_present(id, Arc::new(manifest), &dir, file),
            Ok(None) => {
                dl.phase = Phase::Manifest;
                dl.last_progress = Instant::now();
                self.request_manifest(id);
            }
        }
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
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let had_active = dl.providers.active() > 0;
        let mut added = Vec::new();
        let mut new = 0;
        for provider in providers.into_iter().filter(|p| p.peer != local) {
            for addr in crate::paths::prefer_tcp(provider.addrs) {
                self.swarm.add_peer_address(provider.peer, addr);
            }
            match dl
                .providers
                .admit(provider.peer, provider.complete, from_tracker)
            {
                Admitted::New => new += 1,
                Admitted::Readmitted => {}
                Admitted::Unchanged => continue,
            }
            added.push(provider.peer);
        }
        // Only a provider never seen before restarts the clock: one dropped and listed again
        // (say, unreachable through a failed hole punch) must not keep a download waiting
        // forever.
        if new > 0 && from_tracker && !had_active {
            dl.last_progress = Instant::now();
        }
        if !added.is_empty() {
            debug!(file = ?dl.file, added = added.len(), active = dl.providers.active(), "providers joined");
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
            .find(|(_, d)| d.file == Some(file) && !d.providers.contains(&peer))
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
        let Some(p) = dl.providers.get(&peer) else {
            return;
        };
        if p.dropped || p.have.is_some() {
            return;
        }
        if p.complete {
            dl.providers
                .set_have(&peer, Bitfield::full(manifest.lengths()), picker);
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

    /// Asks untried providers for the manifest, up to [`MANIFEST_PARALLEL`] waited for at once
    /// (a request older than [`MANIFEST_PATIENCE`] no longer counts); providers backed off after
    /// `Busy` wait their turn. With none left it waits for new ones (or a housekeeping tick).
    pub(super) fn request_manifest(&mut self, id: DownloadId) {
        let now = Instant::now();
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        let waiting = dl
            .manifest_asks
            .iter()
            .filter(|(_, at)| now.duration_since(*at) < MANIFEST_PATIENCE)
            .count();
        if waiting >= MANIFEST_PARALLEL {
            return;
        }
        // Like pieces, a manifest (32 bytes per piece) goes only over a connection that
        // carries data: a big one would exhaust a hole-punching relay's circuit.
        let connections = &self.connections;
        let mut unconnected = Vec::new();
        let mut chosen = None;
        for (peer, p) in dl.providers.iter_mut() {
            if p.dropped || p.asked_manifest || p.backed_off() {
                continue;
            }
            if connections.data_path(peer).is_some() {
                chosen = Some((peer, p));
                break;
            }
            if !connections.is_connected(peer) {
                unconnected.push(*peer);
            }
        }
        let Some((peer, state)) = chosen else {
            for peer in unconnected {
                self.dial_provider(peer);
            }
            return;
        };
        state.asked_manifest = true;
        let peer = *peer;
        dl.manifest_asks.push((peer, now));
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
        let failure = match error {
            OutboundFailure::Timeout => Failure::Timeout,
            OutboundFailure::ConnectionClosed if self.connections.data_path(&peer).is_some() => {
                Failure::Retry
            }
            _ => Failure::Fatal,
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
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let picker = match &mut dl.phase {
            Phase::Transfer { picker, .. } => Some(picker),
            _ => None,
        };
        let (piece, manifest) = match want {
            Want::Manifest => {
                dl.manifest_asks.retain(|(p, _)| *p != peer);
                (None, true)
            }
            Want::Have => {
                if let Some(p) = dl.providers.get_mut(&peer) {
                    p.have_pending = false;
                }
                (None, false)
            }
            Want::Piece(piece) => (Some(piece), false),
        };
        if dl
            .providers
            .on_failure(&peer, piece, manifest, failure, picker)
        {
            self.drop_provider(id, peer, false, why);
        }
        self.request_manifest(id);
        self.schedule(id);
    }

    /// Downloads that count `peer` as a (not dropped) provider.
    fn downloads_using(&self, peer: PeerId) -> Vec<DownloadId> {
        self.downloads
            .iter()
            .filter(|(_, d)| d.providers.uses(&peer))
            .map(|(id, _)| *id)
            .collect()
    }

    /// `peer` may now carry pieces (connected, or its hole was punched): ask it for the
    /// manifest if one is wanted, and fill its windows.
    pub(crate) fn on_peer_ready(&mut self, peer: PeerId) {
        let ids = self.downloads_using(peer);
        for id in ids {
            self.request_manifest(id);
            self.schedule(id);
        }
    }

    /// Dials a provider that is not connected (a no-op while a dial to it is under way).
    pub(crate) fn dial_provider(&mut self, peer: PeerId) {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(error) => self.on_provider_dial_failed(peer, &error.to_string()),
        }
    }

    /// A dial to `peer` failed and no connection to it is left: it is dropped from every
    /// download (a later lookup may list it again).
    pub(crate) fn on_provider_dial_failed(&mut self, peer: PeerId, why: &str) {
        if self.connections.is_connected(&peer) {
            return;
        }
        let ids = self.downloads_using(peer);
        let reason = format!("cannot dial: {why}");
        for id in ids {
            self.drop_provider(id, peer, false, &reason);
            self.request_manifest(id);
            self.schedule(id);
        }
    }

    /// A provider we reach only through a relay that carries no file data could not be
    /// reached directly (the hole punch failed or never came): it is dropped, with the reason
    /// spelled out. A later lookup may re-admit it and try again.
    pub(crate) fn on_hole_punch_failed(&mut self, peer: PeerId, why: &str) {
        let Some(relay) = self.connections.only_signalling_relay(&peer) else {
            return;
        };
        let limit = relay.and_then(|r| self.connections.relay_limit_of(&r));
        let reason = match limit {
            Some(bytes) => format!(
                "reachable only through the tracker's relay, and hole punching failed ({why}); \
                 the relay carries at most {bytes} bytes per circuit, too little for file data \
                 (a tracker started with --relay-data relays it)"
            ),
            None => format!(
                "reachable only through a relay that does not carry file data, and hole \
                 punching failed ({why})"
            ),
        };
        let ids = self.downloads_using(peer);
        for id in ids {
            self.drop_provider(id, peer, false, &reason);
            self.schedule(id);
        }
        // A fresh relayed connection (after a re-lookup) gives DCUtR a fresh try.
        for conn in self.connections.relayed(&peer) {
            self.swarm.close_connection(conn);
        }
    }

    /// Drops `peer` for this download (`banned`: for good): its requests' pieces go back to
    /// the picker.
    fn drop_provider(
        &mut self,
        id: DownloadId,
        peer: PeerId,
        banned: bool,
        why: &dyn std::fmt::Display,
    ) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let picker = match &mut dl.phase {
            Phase::Transfer { picker, .. } => Some(picker),
            _ => None,
        };
        if !dl.providers.drop_peer(&peer, banned, picker) {
            return;
        }
        warn!(%peer, file = ?dl.file, reason = %why, "provider dropped");
        dl.last_problem = Some(format!("{peer}: {why}"));
        if let Some(file) = dl.file {
            self.emit(Event::ProviderDropped {
                file,
                peer,
                reason: why.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use bitswarm_protocols::{tracker::Provider, FileName};

    use super::*;

    fn record(id: FileId, name: &str) -> FileRecord {
        FileRecord {
            id,
            name: FileName::new(name).unwrap(),
            size: 10,
            providers: vec![Provider {
                peer: PeerId::random(),
                addrs: Vec::new(),
                complete: true,
            }],
        }
    }

    #[test]
    fn a_lookup_by_id_ignores_records_for_other_ids() {
        let (wanted, other) = (FileId::of(b"wanted"), FileId::of(b"other"));
        let key = LookupKey::Id(wanted);
        let got = choose_record(&key, vec![record(other, "x"), record(wanted, "y")]).unwrap();
        assert_eq!(got.id, wanted);
        assert!(matches!(
            choose_record(&key, vec![record(other, "x")]),
            Err(GetError::UnknownFile(_))
        ));
    }

    #[test]
    fn a_name_shared_by_different_files_is_ambiguous() {
        let key = LookupKey::Name(FileName::new("a.iso").unwrap());
        let (one, two) = (FileId::of(b"1"), FileId::of(b"2"));
        match choose_record(&key, vec![record(one, "a.iso"), record(two, "a.iso")]) {
            Err(GetError::Ambiguous { ids, .. }) => assert_eq!(ids.len(), 2),
            other => panic!("{other:?}"),
        }
        let same = choose_record(&key, vec![record(one, "a.iso"), record(one, "a.iso")]);
        assert_eq!(
            same.unwrap().id,
            one,
            "two records of one file are not ambiguous"
        );
    }
}
