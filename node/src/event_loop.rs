//! [`EventLoop`]: owns the swarm and all node state; driven by one `tokio::select!`.
//!
//! The loop never awaits disk or hashing: those run on blocking tasks in `tasks` and come back
//! as [`TaskOutput`] messages. Its state is single-owner, so there are no locks.
//!
//! Tracker link states: `Idle` (no dial) -> `Dialing` (commands queue up; a dial failure or the
//! tracker timeout fails them and returns to `Idle`) -> `Connected` (its peer id is known;
//! request-response redials it when needed).

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bitswarm_protocols::buffers::BufferPool;
use bitswarm_protocols::{
    tracker::{self, Announce, AnnouncedFile, FileRecord, FileSummary, Reply, Stats},
    Manifest,
};
use futures::StreamExt;
use libp2p::{
    core::transport::ListenerId,
    multiaddr::Protocol,
    request_response::{self, OutboundRequestId},
    swarm::{dial_opts::DialOpts, ConnectionId, DialError, NetworkBehaviour, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tracing::{debug, info, trace, warn};

use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    client::{LocalStats, SharedFile},
    command::Command,
    downloader::{DownloadId, DownloadState, TransferRequest},
    error::{Error, Result, ShareError},
    holdings::Holdings,
    nat::NatState,
    paths::Connections,
    serve::ReadDone,
    store,
    tracker_link::{Route, TrackerLink},
    Config, Event,
};

/// How often the loop checks its deadlines (tracker dial, re-announce, stalled downloads).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Announce interval used until the tracker names its own.
const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// Bounds on the interval a tracker may ask for.
const ANNOUNCE_INTERVAL_RANGE: (u64, u64) = (1, 3600);

/// Results of blocking tasks.
pub(crate) enum TaskOutput {
    Hashed {
        path: PathBuf,
        result: Result<Hashed, ShareError>,
        reply: oneshot::Sender<Result<SharedFile, ShareError>>,
    },
    PieceRead(ReadDone),
    Download(crate::downloader::TaskDone),
}

/// What hashing a shared path produced.
pub(crate) enum Hashed {
    File(Manifest, File),
    Dir(store::HashedDir),
}

/// A share's answer, held until its announce is acknowledged.
pub(crate) type ShareReply = (SharedFile, oneshot::Sender<Result<SharedFile, ShareError>>);

/// Who waits for a tracker reply.
pub(crate) enum TrackerWaiter {
    /// An announce; a share waiting for it is answered when it is acknowledged (or fails: the
    /// file is served either way and the next announce retries).
    Announce(Option<ShareReply>),
    Lookup(oneshot::Sender<Result<Vec<FileRecord>>>),
    Search(oneshot::Sender<Result<Vec<FileSummary>>>),
    Stats(oneshot::Sender<Result<Stats>>),
    Download(DownloadId),
    Unannounce,
}

/// The node's engine. Create with [`crate::new`], then spawn [`EventLoop::run`].
pub struct EventLoop<E: NetworkBehaviour = libp2p::swarm::dummy::Behaviour> {
    pub(crate) swarm: Swarm<Behaviour<E>>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event<E::ToSwarm>>,
    pub(crate) config: Config,
    pub(crate) tasks: JoinSet<TaskOutput>,
    pub(crate) tracker_addr: Option<Multiaddr>,
    pub(crate) tracker: TrackerLink<TrackerWaiter>,
    pub(crate) nat: NatState,
    pub(crate) connections: Connections,
    tracker_pending: HashMap<OutboundRequestId, TrackerWaiter>,
    listen_addrs: Vec<Multiaddr>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    pub(crate) holdings: Holdings,
    pub(crate) downloads: HashMap<DownloadId, DownloadState>,
    pub(crate) next_download: u64,
    pub(crate) transfer_pending: HashMap<OutboundRequestId, TransferRequest>,
    pub(crate) serving_reads: usize,
    pub(crate) stats: LocalStats,
    /// The randomness of piece picking (seeded from the OS; the pure parts take it as input).
    pub(crate) rng: rand::rngs::StdRng,
    /// Piece buffers, shared with the transfer codec.
    pub(crate) pool: Arc<BufferPool>,
}

impl<E: NetworkBehaviour> EventLoop<E> {
    pub(crate) fn new(
        swarm: Swarm<Behaviour<E>>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event<E::ToSwarm>>,
        config: Config,
        pool: Arc<BufferPool>,
        tcp_listeners: Vec<(ListenerId, Multiaddr)>,
    ) -> Self {
        let tracker = TrackerLink::new(config.tracker_timeout, DEFAULT_ANNOUNCE_INTERVAL);
        EventLoop {
            swarm,
            commands,
            events,
            tracker_addr: config.tracker.clone(),
            config,
            tasks: JoinSet::new(),
            tracker,
            nat: NatState::new(tcp_listeners),
            connections: Connections::default(),
            tracker_pending: HashMap::new(),
            listen_addrs: Vec::new(),
            listen_waiters: Vec::new(),
            holdings: Holdings::default(),
            downloads: HashMap::new(),
            next_download: 0,
            transfer_pending: HashMap::new(),
            serving_reads: 0,
            stats: LocalStats::default(),
            rng: rand::SeedableRng::from_entropy(),
            pool,
        }
    }

    /// Runs the node until it is shut down: by [`crate::Client::shutdown`], by cancelling the
    /// config's token, or by dropping every [`crate::Client`].
    ///
    /// # Cancel safety
    /// Dropping the future stops the node without cleanup; prefer one of the ways above.
    pub async fn run(mut self) {
        let span = self.config.root_span.clone();
        let _guard = span.enter();
        let cancel = self.config.cancel.clone();
        self.await_listeners().await;
        if self.config.announce_presence && self.tracker_addr.is_some() {
            self.dial_tracker();
        }
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let shutdown_reply = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.handle_command(command),
                    None => break None,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(output) => self.handle_task_output(output),
                    Err(e) => warn!(error = %e, "blocking task failed"),
                },
                _ = housekeeping.tick() => self.handle_housekeeping(),
                () = cancel.cancelled() => break None,
            }
        };
        self.shutdown().await;
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    /// Fails what waits on the node and drains the blocking tasks; never sleeps.
    async fn shutdown(&mut self) {
        info!("node stopping");
        let ids: Vec<DownloadId> = self.downloads.keys().copied().collect();
        for id in ids {
            self.fail_download(id, Error::NodeStopped.into());
        }
        while self.tasks.join_next().await.is_some() {}
        info!("node stopped");
    }

    pub(crate) fn emit(&self, event: Event<E::ToSwarm>) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.events.try_send(event) {
            debug!(event = ?std::mem::discriminant(&ev), "event receiver is slow; event dropped");
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Share { path, reply } => {
                let p = path.clone();
                self.tasks.spawn_blocking(move || {
                    let result = if p.is_dir() {
                        store::hash_dir(&p).map(Hashed::Dir)
                    } else {
                        store::hash_file(&p).map(|(m, f)| Hashed::File(m, f))
                    };
                    TaskOutput::Hashed {
                        path: p,
                        result,
                        reply,
                    }
                });
                debug!(path = %path.display(), "hashing");
            }
            Command::Get {
                get,
                progress,
                reply,
            } => self.start_download(get, progress, reply),
            Command::Lookup { key, reply } => {
                let limit = u32::MAX;
                self.tracker_request(
                    tracker::Request::Lookup { key, limit },
                    TrackerWaiter::Lookup(reply),
                );
            }
            Command::Search { query, reply } => {
                self.tracker_request(
                    tracker::Request::Search {
                        query,
                        limit: u32::MAX,
                    },
                    TrackerWaiter::Search(reply),
                );
            }
            Command::Stats { reply } => {
                self.tracker_request(tracker::Request::Stats, TrackerWaiter::Stats(reply))
            }
            Command::ListenAddrs { reply } => {
                if self.listen_addrs.is_empty() && !self.config.listen_addrs.is_empty() {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::LocalStats { reply } => {
                let _ = reply.send(self.stats);
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn handle_task_output(&mut self, output: TaskOutput) {
        match output {
            TaskOutput::Hashed {
                path,
                result,
                reply,
            } => {
                let answer = result.map(|hashed| match hashed {
                    Hashed::File(manifest, file) => self.hold_shared(manifest, file),
                    Hashed::Dir(store::HashedDir { collection, files, skipped }) => {
                        for (manifest, file) in files {
                            self.hold_shared(manifest, file);
                        }
                        let shared = SharedFile {
                            id: collection.id(),
                            name: collection.name().clone(),
                            size: collection.total_size(),
                            skipped,
                        };
                        info!(collection = %shared.id, name = %shared.name, files = collection.entries().len(), path = %path.display(), "sharing directory");
                        self.holdings.add_collection(shared.id, shared.name.clone(), shared.size, collection.encode());
                        self.emit(Event::Shared { file: shared.clone() });
                        shared
                    }
                });
                match answer {
                    // Answered once the tracker has the announce, so a get right after a
                    // share finds the file.
                    Ok(shared) if self.tracker_addr.is_some() => {
                        self.announce_then(Some((shared, reply)))
                    }
                    answer => drop(reply.send(answer)),
                }
            }
            TaskOutput::PieceRead(done) => self.on_piece_read(done),
            TaskOutput::Download(done) => self.on_download_task(done),
        }
    }

    fn hold_shared(&mut self, manifest: Manifest, file: File) -> SharedFile {
        let shared = SharedFile {
            id: manifest.id(),
            name: manifest.name().clone(),
            size: manifest.lengths().size(),
            skipped: 0,
        };
        info!(file = %shared.id, name = %shared.name, size = shared.size, "sharing");
        self.holdings
            .hold_complete(Arc::new(manifest), Arc::new(file));
        self.emit(Event::Shared {
            file: shared.clone(),
        });
        shared
    }

    fn handle_housekeeping(&mut self) {
        let tick = self.tracker.tick(Instant::now());
        if tick.dial_timed_out {
            self.tracker_dial_failed("no answer within the tracker timeout".to_owned());
        }
        if tick.announce_due {
            self.announce();
        }
        self.ensure_reservation();
        self.downloads_housekeeping();
    }

    pub(crate) fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent<E>>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Transfer(ev)) => self.handle_transfer_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Tracker(ev)) => self.handle_tracker_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Extension(ev)) => self.emit(Event::Extension(ev)),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => {
                trace!(peer = %ev.peer, result = ?ev.result, "ping")
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => trace!(?ev, "identify"),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(ev)) => {
                self.on_relay_client_event(ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(ev)) => self.on_dcutr_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(ev)) => self.on_autonat_event(ev),
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address.clone());
                }
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(self.listen_addrs.clone());
                }
                self.on_listener_up(listener_id, &address);
                self.emit(Event::Listening { addr: address });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.listen_addrs.retain(|a| !addresses.contains(a));
                let reason: &dyn std::fmt::Display = match &reason {
                    Ok(()) => &"closed",
                    Err(e) => e,
                };
                self.on_listener_closed(listener_id, reason);
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(?listener_id, %error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let remote = endpoint.get_remote_address();
                debug!(peer = %peer_id, addr = %remote, "connected");
                self.on_tracker_connected(peer_id, connection_id, remote);
                self.on_connection_established(peer_id, connection_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, num_established, "connection closed");
                self.connections.closed(peer_id, connection_id);
                if num_established == 0 && self.tracker.connected() == Some(peer_id) {
                    self.on_tracker_lost();
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                debug!(peer = ?peer_id, %error, "dial failed");
                if self.tracker.is_dial(connection_id) {
                    self.tracker_dial_failed(dial_error_summary(&error));
                } else if let Some(peer) = peer_id {
                    self.on_provider_dial_failed(peer, &dial_error_summary(&error));
                }
            }
            _ => {}
        }
    }

    // ---- tracker ----

    fn dial_tracker(&mut self) {
        let Some(addr) = self.tracker_addr.clone() else {
            return;
        };
        let opts = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .build(),
            _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        self.tracker.dialing(opts.connection_id(), Instant::now());
        debug!(%addr, "dialing tracker");
        if let Err(e) = self.swarm.dial(opts) {
            self.tracker_dial_failed(e.to_string());
        }
    }

    fn on_tracker_connected(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        addr: &Multiaddr,
    ) {
        let Some(queued) = self.tracker.on_connected(connection_id, peer) else {
            return;
        };
        info!(tracker = %peer, "connected to tracker");
        self.swarm.add_peer_address(peer, addr.clone());
        self.on_tracker_link(peer, addr);
        self.emit(Event::TrackerConnected { peer });
        for (request, waiter) in queued {
            self.tracker_request(request, waiter);
        }
        if self.config.announce_presence || self.holdings.any_complete() {
            self.announce();
        }
    }

    fn tracker_dial_failed(&mut self, reason: String) {
        warn!(%reason, "tracker unreachable");
        for waiter in self.tracker.dial_failed(Instant::now()) {
            self.fail_tracker_waiter(waiter, Error::TrackerUnreachable(reason.clone()));
        }
    }

    /// The last connection to the tracker closed (it may have restarted, losing its index):
    /// announce again soon, which redials it, and reserve again once connected.
    fn on_tracker_lost(&mut self) {
        warn!("lost the tracker; reconnecting");
        self.tracker.lost(Instant::now());
    }

    /// Sends a request to the tracker, dialing it first if needed.
    pub(crate) fn tracker_request(&mut self, request: tracker::Request, waiter: TrackerWaiter) {
        if self.tracker_addr.is_none() {
            return self.fail_tracker_waiter(waiter, Error::NoTracker);
        }
        match self.tracker.route(request, waiter) {
            Route::Send(peer, request, waiter) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .tracker
                    .send_request(&peer, request);
                self.tracker_pending.insert(id, waiter);
            }
            Route::Dial => self.dial_tracker(),
            Route::Queued => {}
            Route::Full(waiter) => self.fail_tracker_waiter(
                waiter,
                Error::TrackerUnreachable("too many requests wait for the tracker".to_owned()),
            ),
        }
    }

    fn fail_tracker_waiter(&mut self, waiter: TrackerWaiter, error: Error) {
        match waiter {
            TrackerWaiter::Announce(share) => {
                warn!(%error, "announce failed; retrying at the next interval");
                if let Some((shared, reply)) = share {
                    let _ = reply.send(Ok(shared));
                }
            }
            TrackerWaiter::Lookup(tx) => drop(tx.send(Err(error))),
            TrackerWaiter::Search(tx) => drop(tx.send(Err(error))),
            TrackerWaiter::Stats(tx) => drop(tx.send(Err(error))),
            TrackerWaiter::Download(id) => self.on_lookup_failed(id, error),
            TrackerWaiter::Unannounce => debug!(%error, "unannounce failed"),
        }
    }

    /// Tells the tracker which files this node serves (complete, or partly during a download) and where to reach it.
    pub(crate) fn announce(&mut self) {
        self.announce_then(None);
    }

    /// [`EventLoop::announce`], answering `share` once the tracker acknowledged the last part.
    fn announce_then(&mut self, mut share: Option<ShareReply>) {
        if self.tracker_addr.is_none() {
            return;
        }
        let files = self.holdings.announced();
        // Circuit and confirmed external addresses first: the announce keeps only so many, and
        // a host with many interfaces must not crowd out the way to reach it through its NAT.
        let mut addrs: Vec<Multiaddr> = Vec::new();
        let circuits = self
            .listen_addrs
            .iter()
            .filter(|a| crate::paths::circuit_relay(a).is_some());
        let rest = self
            .listen_addrs
            .iter()
            .filter(|a| crate::paths::circuit_relay(a).is_none());
        for addr in circuits.chain(self.swarm.external_addresses()).chain(rest) {
            if addrs.len() == tracker::MAX_ANNOUNCE_ADDRS {
                break;
            }
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        self.tracker.announce_sent(Instant::now());
        // Announces are additive at the tracker, so a large share goes in several.
        let mut chunks: Vec<Vec<AnnouncedFile>> = files
            .chunks(tracker::MAX_ANNOUNCE_FILES)
            .map(<[_]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, files) in chunks.into_iter().enumerate() {
            let announce = Announce {
                files,
                addrs: addrs.clone(),
            };
            let waiter = TrackerWaiter::Announce(if i == last { share.take() } else { None });
            self.tracker_request(tracker::Request::Announce(announce), waiter);
        }
    }

    fn handle_tracker_event(
        &mut self,
        event: request_response::Event<tracker::Request, tracker::Response>,
    ) {
        match event {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(waiter) = self.tracker_pending.remove(&request_id) {
                    self.on_tracker_response(waiter, response);
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(waiter) = self.tracker_pending.remove(&request_id) {
                    self.fail_tracker_waiter(waiter, Error::TrackerUnreachable(error.to_string()));
                }
            }
            other => trace!(?other, "tracker protocol event"),
        }
    }

    fn on_tracker_response(&mut self, waiter: TrackerWaiter, response: tracker::Response) {
        let reply = match response {
            Ok(reply) => reply,
            Err(code) => return self.fail_tracker_waiter(waiter, Error::Tracker(code)),
        };
        match (waiter, reply) {
            (TrackerWaiter::Announce(share), Reply::Announced { interval_secs, .. }) => {
                if let Some((shared, reply)) = share {
                    let _ = reply.send(Ok(shared));
                }
                let (lo, hi) = ANNOUNCE_INTERVAL_RANGE;
                let interval = Duration::from_secs(u64::from(interval_secs).clamp(lo, hi));
                self.tracker.announced(interval, Instant::now());
                debug!(?interval, "announced");
            }
            (TrackerWaiter::Lookup(tx), Reply::Providers(records)) => drop(tx.send(Ok(records))),
            (TrackerWaiter::Search(tx), Reply::Found(found)) => drop(tx.send(Ok(found))),
            (TrackerWaiter::Stats(tx), Reply::Stats(stats)) => drop(tx.send(Ok(stats))),
            (TrackerWaiter::Download(id), Reply::Providers(records)) => {
                self.on_providers(id, records)
            }
            (waiter, _) => self.fail_tracker_waiter(waiter, Error::UnexpectedReply),
        }
    }
}

/// A one-line account of a dial failure: the innermost cause per address, not libp2p's nested,
/// multi-line report.
fn dial_error_summary(error: &DialError) -> String {
    fn root(e: &dyn std::error::Error) -> String {
        let mut e = e;
        while let Some(source) = e.source() {
            e = source;
        }
        e.to_string()
    }
    let text = match error {
        DialError::Transport(errors) => errors
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", root(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => root(other),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
