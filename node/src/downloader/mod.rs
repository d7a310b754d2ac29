//! Downloads: locate providers through the tracker, fetch and verify the manifest, then pull
//! pieces from every provider at once with a window of requests in flight per provider.
//!
//! Phases of one download: `Locating` (tracker lookup) -> `Manifest` (asking providers one at
//! a time until one sends a manifest that merges to the file id) -> `Opening` (creating the
//! `.part` file on a blocking task) -> `Transfer` (pieces requested, verified and written on
//! blocking tasks) -> `Finishing` (fsync + rename) -> done. Any phase can fail, which answers
//! the waiting [`crate::Download`] and leaves the `.part` file in place.
//!
//! A provider that sends a piece that fails verification, or whose requests fail (connection
//! lost, unsupported protocol, too many timeouts), is dropped for this file; its pieces go back
//! to the picker and the other providers take them.

pub(crate) mod picker;

use std::{collections::HashMap, fs::File, io, path::PathBuf, sync::Arc, time::Instant};

use bitswarm_protocols::{
    tracker::{FileRecord, LookupKey},
    transfer, ErrorCode, FileId, Lengths, Manifest, PieceIndex,
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
    client::{Downloaded, Progress},
    error::GetError,
    event_loop::{Held, TaskOutput, TrackerWaiter},
    store::{self, StoreError},
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
    Piece(PieceIndex),
}

/// Results of a download's blocking tasks.
pub(crate) enum TaskDone {
    PartOpened {
        download: DownloadId,
        result: io::Result<File>,
    },
    PieceStored {
        download: DownloadId,
        peer: PeerId,
        piece: PieceIndex,
        result: Result<(), StoreError>,
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
    progress: watch::Sender<Progress>,
    reply: Option<oneshot::Sender<Result<Downloaded, GetError>>>,
    started: Instant,
    /// Known after the lookup.
    file: Option<FileId>,
    /// `(final path, .part path)`, known once the manifest is verified.
    paths: Option<(PathBuf, PathBuf)>,
    providers: HashMap<PeerId, ProviderState>,
    phase: Phase,
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

#[derive(Debug, Default)]
struct ProviderState {
    /// Piece requests sent and not yet stored or failed.
    in_flight: usize,
    failures: u32,
    dropped: bool,
    asked_manifest: bool,
    pieces: u64,
}

impl Download {
    fn active_providers(&self) -> usize {
        self.providers.values().filter(|p| !p.dropped).count()
    }
}

impl<E: NetworkBehaviour> EventLoop<E> {
    pub(crate) fn start_download(
        &mut self,
        key: LookupKey,
        out_dir: PathBuf,
        progress: watch::Sender<Progress>,
        reply: oneshot::Sender<Result<Downloaded, GetError>>,
    ) {
        let id = DownloadId(self.next_download);
        self.next_download += 1;
        info!(?key, out = %out_dir.display(), "download requested");
        let download = Download {
            key: key.clone(),
            out_dir,
            progress,
            reply: Some(reply),
            started: Instant::now(),
            file: None,
            paths: None,
            providers: HashMap::new(),
            phase: Phase::Locating,
        };
        self.downloads.insert(id, download);
        self.tracker_request(
            bitswarm_protocols::tracker::Request::Lookup {
                key,
                limit: LOOKUP_LIMIT,
            },
            TrackerWaiter::Download(id),
        );
    }

    pub(crate) fn on_providers(&mut self, id: DownloadId, records: Vec<FileRecord>) {
        let Some(dl) = self.downloads.get(&id) else {
            return;
        };
        let mut ids: Vec<FileId> = records.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        let record = match (records.into_iter().next(), ids.len()) {
            (None, _) => {
                let what = match &dl.key {
                    LookupKey::Id(f) => f.to_string(),
                    LookupKey::Name(n) => n.to_string(),
                };
                return self.fail_download(id, GetError::UnknownFile(what));
            }
            (Some(record), 1) => record,
            (Some(_), _) => {
                let name = match &dl.key {
                    LookupKey::Name(n) => n.to_string(),
                    LookupKey::Id(f) => f.to_string(),
                };
                return self.fail_download(id, GetError::Ambiguous { name, ids });
            }
        };
        let busy = self.held.contains_key(&record.id)
            || self
                .downloads
                .iter()
                .any(|(other, d)| *other != id && d.file == Some(record.id));
        if busy {
            return self.fail_download(id, GetError::Busy(record.id));
        }
        let local = *self.swarm.local_peer_id();
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.file = Some(record.id);
        dl.progress.send_modify(|p| p.id = Some(record.id));
        for provider in record.providers.into_iter().filter(|p| p.peer != local) {
            for addr in provider.addrs {
                self.swarm.add_peer_address(provider.peer, addr);
            }
            dl.providers.entry(provider.peer).or_default();
        }
        debug!(file = %record.id, providers = dl.providers.len(), "providers found");
        dl.phase = Phase::Manifest;
        self.request_manifest(id);
    }

    /// Asks the next untried provider for the manifest, or fails when none is left.
    fn request_manifest(&mut self, id: DownloadId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        let next = dl
            .providers
            .iter_mut()
            .find(|(_, p)| !p.dropped && !p.asked_manifest);
        let Some((peer, state)) = next else {
            return self.fail_download(id, GetError::NoProviders(file));
        };
        state.asked_manifest = true;
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
            (Want::Piece(piece), transfer::Response::Piece(bytes)) => {
                self.on_piece(id, peer, piece, bytes)
            }
            (want, transfer::Response::Error(code)) => {
                self.on_request_failed(id, peer, want, code != ErrorCode::Busy, &code)
            }
            (want, _) => self.on_request_failed(id, peer, want, true, &"unexpected response"),
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
        let fatal = !matches!(error, OutboundFailure::Timeout);
        self.on_request_failed(id, peer, want, fatal, &error);
    }

    fn on_request_failed(
        &mut self,
        id: DownloadId,
        peer: PeerId,
        want: Want,
        fatal: bool,
        why: &dyn std::fmt::Display,
    ) {
        let max_failures = self.config.max_provider_failures;
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        if let Some(state) = dl.providers.get_mut(&peer) {
            state.failures += 1;
            if let Want::Piece(_) = want {
                state.in_flight = state.in_flight.saturating_sub(1);
            }
            if (fatal || state.failures >= max_failures) && !state.dropped {
                state.dropped = true;
                warn!(%peer, reason = %why, "provider dropped");
                let file = dl.file;
                if let Some(file) = file {
                    self.emit(Event::ProviderDropped {
                        file,
                        peer,
                        reason: why.to_string(),
                    });
                }
            }
        }
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        match (want, &mut dl.phase) {
            (Want::Manifest, Phase::Manifest) => self.request_manifest(id),
            (Want::Piece(piece), Phase::Transfer { picker, .. }) => {
                picker.failed(piece);
                self.schedule(id);
            }
            _ => {}
        }
    }

    fn on_manifest(
        &mut self,
        id: DownloadId,
        peer: PeerId,
        wire: bitswarm_protocols::WireManifest,
    ) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        let manifest = match wire.verify(file) {
            Ok(m) => Arc::new(m),
            Err(e) => return self.on_request_failed(id, peer, Want::Manifest, true, &e),
        };
        let name = match &dl.key {
            LookupKey::Name(n) => n.clone(),
            LookupKey::Id(_) => manifest.name().clone(),
        };
        let (path, part) = store::download_paths(&dl.out_dir, &name);
        dl.paths = Some((path.clone(), part.clone()));
        dl.progress
            .send_modify(|p| p.total = manifest.lengths().size());
        dl.phase = Phase::Opening {
            manifest: Arc::clone(&manifest),
        };
        let size = manifest.lengths().size();
        self.tasks.spawn_blocking(move || {
            let result = if path.exists() {
                Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"))
            } else {
                store::open_part(&part, size)
            };
            TaskOutput::Download(TaskDone::PartOpened {
                download: id,
                result,
            })
        });
    }

    fn on_piece(&mut self, id: DownloadId, peer: PeerId, piece: PieceIndex, bytes: Vec<u8>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Transfer { manifest, file, .. } = &dl.phase else {
            return;
        };
        let (manifest, file) = (Arc::clone(manifest), Arc::clone(file));
        // The provider's window slot stays taken until the piece is stored, which bounds the
        // piece bytes held in memory to window x piece size per provider.
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
            TaskDone::PartOpened { download, result } => self.on_part_opened(download, result),
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
                    self.on_request_failed(
                        download,
                        peer,
                        Want::Piece(piece),
                        true,
                        &"sent a piece that failed verification",
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
            TaskDone::Finished { download, result } => self.on_finished(download, result),
        }
    }

    fn on_part_opened(&mut self, id: DownloadId, result: io::Result<File>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Opening { manifest } = &dl.phase else {
            return;
        };
        let manifest = Arc::clone(manifest);
        let file = match result {
            Ok(f) => Arc::new(f),
            Err(source) => {
                let path = dl.paths.clone().map(|p| p.0).unwrap_or_default();
                return self.fail_download(id, GetError::Io { path, source });
            }
        };
        let picker = PiecePicker::new(*manifest.lengths());
        self.held.insert(
            manifest.id(),
            Held {
                manifest: Arc::clone(&manifest),
                file: Arc::clone(&file),
                download: Some(id),
            },
        );
        if picker.is_complete() {
            // An empty file: nothing to fetch.
            dl.phase = Phase::Transfer {
                manifest,
                file,
                picker,
            };
            return self.finish(id);
        }
        dl.phase = Phase::Transfer {
            manifest,
            file,
            picker,
        };
        self.schedule(id);
    }

    fn on_piece_stored(&mut self, id: DownloadId, peer: PeerId, piece: PieceIndex) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        if let Some(state) = dl.providers.get_mut(&peer) {
            state.in_flight = state.in_flight.saturating_sub(1);
            state.pieces += 1;
        }
        let Phase::Transfer {
            picker, manifest, ..
        } = &mut dl.phase
        else {
            return;
        };
        if picker.stored(piece) {
            let len = u64::from(manifest.lengths().piece_len(piece));
            self.stats.downloaded += len;
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

    /// Fills every provider's window with piece requests; fails the download when no provider
    /// is left and pieces are still missing.
    fn schedule(&mut self, id: DownloadId) {
        let window = self.config.window;
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (Some(file), Phase::Transfer { picker, .. }) = (dl.file, &mut dl.phase) else {
            return;
        };
        let mut outstanding = 0;
        for (peer, state) in dl.providers.iter_mut().filter(|(_, s)| !s.dropped) {
            while state.in_flight < window {
                let Some(piece) = picker.pick() else { break };
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
                state.in_flight += 1;
            }
            outstanding += state.in_flight;
        }
        if outstanding == 0 && dl.active_providers() == 0 {
            self.fail_download(id, GetError::NoProviders(file));
        }
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
            self.held.remove(&file);
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
        };
        info!(%file, path = %path.display(), size, elapsed = ?done.elapsed, providers_used, "download complete");
        self.emit(Event::Downloaded { file, path });
        if let Some(reply) = dl.reply.take() {
            let _ = reply.send(Ok(done));
        }
        self.announce();
    }

    /// Ends a download with `error`; its `.part` file stays for a later resume.
    pub(crate) fn fail_download(&mut self, id: DownloadId, error: GetError) {
        let Some(mut dl) = self.downloads.remove(&id) else {
            return;
        };
        if let Some(file) = dl.file {
            if self.held.get(&file).is_some_and(|h| h.download == Some(id)) {
                self.held.remove(&file);
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
            Some(Some(dl)) => self.picker_of(dl).is_some_and(|p| p.has(piece)),
            None => false,
        }
    }

    /// The wire bitfield of the pieces of `file` this node holds.
    pub(crate) fn bitfield_of(&self, file: FileId, lengths: &Lengths) -> Vec<u8> {
        match self
            .held
            .get(&file)
            .and_then(|h| h.download)
            .and_then(|dl| self.picker_of(dl))
        {
            Some(picker) => picker.bitfield(),
            None => PiecePicker::full(*lengths).bitfield(),
        }
    }

    fn picker_of(&self, id: DownloadId) -> Option<&PiecePicker> {
        match &self.downloads.get(&id)?.phase {
            Phase::Transfer { picker, .. } => Some(picker),
            _ => None,
        }
    }
}
