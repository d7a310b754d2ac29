//! [`EventLoop`]: the one place that touches the swarm and spawns tasks. It owns the node's
//! pure state ([`Downloads`], [`Holdings`], [`TrackerLink`], [`NatState`], [`Connections`])
//! and only translates: swarm events, commands and finished tasks become calls into that
//! state, and the actions those return are executed here. One `tokio::select!` drives it.
//!
//! The loop never awaits disk or hashing: those run on blocking tasks in `tasks` and come back
//! as [`TaskOutput`] messages. Its state is single-owner, so there are no locks.
//!
//! Files: this one holds the loop, commands and swarm-event dispatch; `tracker` the tracker
//! link's I/O; `transfer` serving and the downloads' actions; `nat` listeners, the relay
//! reservation, DCUtR and AutoNAT.

mod nat;
mod tracker;
mod transfer;

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    fs::File,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use bitswarm_protocols::{buffers::BufferPool, limits::RefusalLog, Manifest};
use futures::StreamExt;
use libp2p::{
    core::transport::ListenerId,
    request_response::OutboundRequestId,
    swarm::{ListenError, NetworkBehaviour, SwarmEvent},
    Multiaddr, Swarm,
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tracing::{debug, info, trace, warn};

pub(crate) use self::tracker::TrackerWaiter;
use self::{
    tracker::{UnshareReply, DEFAULT_ANNOUNCE_INTERVAL},
    transfer::ReadDone,
};
use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    client::{LocalStats, SharedFile},
    command::Command,
    downloader::{Action, Cx, Downloads, Settings, TaskDone, TransferRequest},
    error::{Error, ShareError},
    extension::{ExtensionFn, NodeContext},
    holdings::Holdings,
    nat::NatState,
    paths::Connections,
    serving::{Serving, ServingLimits},
    store,
    tracker_link::TrackerLink,
    Config, Event,
};

/// How often the loop checks its deadlines (tracker dial, re-announce, stalled downloads).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Unannounces sent per housekeeping tick: half of what the tracker allows a peer a second,
/// leaving room for its announces and lookups.
const UNANNOUNCES_PER_TICK: usize = 10;

/// Results of blocking tasks.
pub(crate) enum TaskOutput {
    Hashed {
        path: PathBuf,
        result: Result<Hashed, ShareError>,
        reply: oneshot::Sender<Result<SharedFile, ShareError>>,
    },
    PieceRead(ReadDone),
    Download(TaskDone),
}

/// What hashing a shared path produced.
pub(crate) enum Hashed {
    File(Manifest, File),
    Dir(store::HashedDir),
}

/// The node's engine. Create with [`crate::new`] or [`crate::new_with_extension`], then spawn
/// [`EventLoop::run`]. `E` is the extension behaviour ([`libp2p::swarm::dummy::Behaviour`] when
/// there is none).
pub struct EventLoop<E: NetworkBehaviour = libp2p::swarm::dummy::Behaviour> {
    swarm: Swarm<Behaviour<E>>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event<E::ToSwarm>>,
    config: Config,
    tasks: JoinSet<TaskOutput>,
    tracker_addr: Option<Multiaddr>,
    tracker: TrackerLink<TrackerWaiter>,
    tracker_pending: HashMap<OutboundRequestId, TrackerWaiter>,
    /// Files unshared and not yet withdrawn from the tracker ([`UNANNOUNCES_PER_TICK`] a
    /// second); at most every file this node held.
    unannounces: VecDeque<(bitswarm_protocols::FileId, Arc<UnshareReply>)>,
    /// The tracker dial in progress takes a fresh port: the listening port's connection to the
    /// tracker (from an earlier process on this port) was still in TIME_WAIT.
    tracker_fresh_port: bool,
    nat: NatState,
    connections: Connections,
    listen_addrs: Vec<Multiaddr>,
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    holdings: Holdings,
    downloads: Downloads,
    /// Outbound transfer requests of the downloads, by request id.
    transfer_pending: HashMap<OutboundRequestId, TransferRequest>,
    /// Piece responses admitted and not yet sent.
    serving: Serving,
    stats: LocalStats,
    /// Piece buffers, shared with the transfer codec and the disk tasks.
    pool: Arc<BufferPool>,
    /// Addresses whose inbound connections were refused already (logged once).
    refusals: RefusalLog,
}

impl<E: NetworkBehaviour + 'static> EventLoop<E> {
    pub(crate) fn new(
        swarm: Swarm<Behaviour<E>>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event<E::ToSwarm>>,
        config: Config,
        pool: Arc<BufferPool>,
        tcp_listeners: Vec<(ListenerId, Multiaddr)>,
    ) -> Self {
        let now = Instant::now();
        let tracker = TrackerLink::new(config.tracker_timeout, DEFAULT_ANNOUNCE_INTERVAL);
        let nat = NatState::new(tcp_listeners, config.quic, config.relay_reservation, now);
        let serving = Serving::new(ServingLimits {
            max_reads: config.max_serving_reads,
            max_bytes: config.max_serving_bytes,
            max_per_peer: config.max_serving_per_peer,
        });
        let downloads = Downloads::new(
            Settings::new(&config),
            *swarm.local_peer_id(),
            rand::SeedableRng::from_entropy(),
            Arc::clone(&pool),
        );
        EventLoop {
            swarm,
            commands,
            events,
            tracker_addr: config.tracker.clone(),
            tracker_fresh_port: false,
            config,
            tasks: JoinSet::new(),
            tracker,
            tracker_pending: HashMap::new(),
            unannounces: VecDeque::new(),
            nat,
            connections: Connections::default(),
            listen_addrs: Vec::new(),
            listen_waiters: Vec::new(),
            holdings: Holdings::default(),
            downloads,
            transfer_pending: HashMap::new(),
            serving,
            stats: LocalStats::default(),
            pool,
            refusals: RefusalLog::default(),
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
        self.drive(|d, cx| d.fail_all(cx, || Error::NodeStopped.into()));
        while self.tasks.join_next().await.is_some() {}
        info!("node stopped");
    }

    fn emit(&self, event: Event<E::ToSwarm>) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.events.try_send(event) {
            debug!(event = ?std::mem::discriminant(&ev), "event receiver is slow; event dropped");
        }
    }

    /// Calls into the downloads with the node's facts and `now`; returns what they decided.
    fn decide(&mut self, f: impl FnOnce(&mut Downloads, &mut Cx<'_>)) -> Vec<Action> {
        let mut out = Vec::new();
        let mut cx = Cx {
            now: Instant::now(),
            connections: &self.connections,
            holdings: &mut self.holdings,
            stats: &mut self.stats,
            out: &mut out,
        };
        f(&mut self.downloads, &mut cx);
        out
    }

    /// [`EventLoop::decide`], then executes the actions (and those they lead to).
    fn drive(&mut self, f: impl FnOnce(&mut Downloads, &mut Cx<'_>)) {
        let mut queue = VecDeque::from(self.decide(f));
        while let Some(action) = queue.pop_front() {
            if let Some(more) = self.execute(action) {
                queue.extend(more);
            }
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
            Command::Unshare { id, reply } => self.unshare(id, reply),
            Command::Shares { reply } => {
                let _ = reply.send(self.holdings.shares().collect());
            }
            Command::Get {
                get,
                progress,
                reply,
            } => self.drive(|d, cx| {
                d.start(cx, get, progress, reply);
            }),
            Command::Downloads { reply } => {
                let _ = reply.send(self.downloads.status());
            }
            Command::Cancel { id, reply } => {
                let mut cancelled = false;
                self.drive(|d, cx| cancelled = d.cancel(cx, id));
                let _ = reply.send(cancelled);
            }
            Command::Extension { run } => self.run_extension(run),
            Command::Lookup { key, reply } => {
                let request = bitswarm_protocols::tracker::Request::Lookup {
                    key,
                    limit: u32::MAX,
                };
                self.tracker_request(request, TrackerWaiter::Lookup(reply));
            }
            Command::Search { query, reply } => {
                let request = bitswarm_protocols::tracker::Request::Search {
                    query,
                    limit: u32::MAX,
                };
                self.tracker_request(request, TrackerWaiter::Search(reply));
            }
            Command::Stats { reply } => self.tracker_request(
                bitswarm_protocols::tracker::Request::Stats,
                TrackerWaiter::Stats(reply),
            ),
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
                    Hashed::Dir(store::HashedDir {
                        collection,
                        files,
                        skipped,
                    }) => {
                        let files: Vec<(Arc<Manifest>, Arc<File>)> = files
                            .into_iter()
                            .map(|(m, f)| (Arc::new(m), Arc::new(f)))
                            .collect();
                        for (manifest, _) in &files {
                            let shared = shared_file(manifest);
                            info!(file = %shared.id, name = %shared.name, size = shared.size, "sharing");
                            self.emit(Event::Shared { file: shared });
                        }
                        let shared = SharedFile {
                            id: collection.id(),
                            name: collection.name().clone(),
                            size: collection.total_size(),
                            skipped,
                        };
                        info!(collection = %shared.id, name = %shared.name, files = collection.entries().len(), path = %path.display(), "sharing directory");
                        self.holdings
                            .add_collection(&shared, collection.encode(), files);
                        self.emit(Event::Shared {
                            file: shared.clone(),
                        });
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
            TaskOutput::Download(done) => self.drive(|d, cx| d.on_task(cx, done)),
        }
    }

    fn hold_shared(&mut self, manifest: Manifest, file: File) -> SharedFile {
        let shared = shared_file(&manifest);
        info!(file = %shared.id, name = %shared.name, size = shared.size, "sharing");
        self.holdings
            .hold_complete(Arc::new(manifest), Arc::new(file));
        self.emit(Event::Shared {
            file: shared.clone(),
        });
        shared
    }

    /// Stops serving `id` (see [`Holdings::unshare`]) and unannounces what is no longer
    /// served; `reply` is answered once the tracker has answered every unannounce.
    fn unshare(
        &mut self,
        id: bitswarm_protocols::FileId,
        reply: oneshot::Sender<crate::Result<SharedFile>>,
    ) {
        let Some((shared, gone)) = self.holdings.unshare(&id) else {
            let _ = reply.send(Err(Error::NotShared(id)));
            return;
        };
        info!(file = %shared.id, name = %shared.name, files = gone.len(), "unshared");
        self.emit(Event::Unshared {
            file: shared.clone(),
        });
        let waiter = Arc::new(UnshareReply::new(shared, reply));
        self.unannounces
            .extend(gone.into_iter().map(|file| (file, Arc::clone(&waiter))));
        self.send_unannounces();
    }

    /// Sends up to [`UNANNOUNCES_PER_TICK`] of the queued unannounces: one per file, and the
    /// tracker allows a peer 20 requests a second (and disconnects one that keeps asking past
    /// that), so a directory of thousands of files is withdrawn over a few minutes rather than
    /// at once. The files are not served meanwhile.
    fn send_unannounces(&mut self) {
        for _ in 0..UNANNOUNCES_PER_TICK {
            let Some((file, waiter)) = self.unannounces.pop_front() else {
                break;
            };
            self.tracker_request(
                bitswarm_protocols::tracker::Request::Unannounce { id: file },
                TrackerWaiter::Unannounce(Some(waiter)),
            );
        }
    }

    /// Runs an extension closure on the extension behaviour, then the dials it queued.
    fn run_extension(&mut self, run: ExtensionFn) {
        let mut cx = NodeContext {
            local_peer_id: *self.swarm.local_peer_id(),
            tracker: self.tracker.connected(),
            listen_addrs: &self.listen_addrs,
            connections: &self.connections,
            holdings: &self.holdings,
            downloads: &self.downloads,
            extension: std::any::type_name::<E>(),
            dials: Vec::new(),
        };
        (run.0)(&mut self.swarm.behaviour_mut().extension, &mut cx);
        let dials = cx.dials;
        for opts in dials {
            let peer = opts.get_peer_id();
            if let Err(error) = self.swarm.dial(opts) {
                debug!(?peer, %error, "extension dial did not start");
            }
        }
    }

    fn handle_housekeeping(&mut self) {
        let tick = self.tracker.tick(Instant::now());
        if tick.dial_timed_out {
            self.tracker_dial_failed("no answer within the tracker timeout".to_owned());
        }
        if tick.announce_due {
            self.announce();
        }
        self.send_unannounces();
        self.ensure_reservation();
        self.cut_off_stalled_readers();
        self.drive(|d, cx| d.tick(cx));
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent<E>>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Transfer(ev)) => self.handle_transfer_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Tracker(ev)) => self.handle_tracker_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Extension(ev)) => self.emit(Event::Extension(ev)),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
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
                self.nat
                    .on_listener_closed(listener_id, reason, Instant::now());
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
                debug!(peer = ?peer_id, %error, ?error, "dial failed");
                if self.tracker.is_dial(connection_id) {
                    if !self.tracker_fresh_port && tracker::address_in_use(&error) {
                        // Port reuse met a TIME_WAIT: the same dial from a fresh port.
                        debug!("the listening port's way to the tracker is in use; dialing from a fresh port");
                        self.tracker_fresh_port = true;
                        self.dial_tracker();
                    } else {
                        let mut why = tracker::dial_error_summary(&error);
                        if std::mem::take(&mut self.tracker_fresh_port) {
                            why.push_str(" (from the listening port, then from a fresh one)");
                        }
                        self.tracker_dial_failed(why);
                    }
                } else if let Some(peer) = peer_id {
                    let why = tracker::dial_error_summary(&error);
                    self.drive(|d, cx| d.on_dial_failed(cx, peer, &why));
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let denied = matches!(error, ListenError::Denied { .. });
                if denied && self.refusals.first(&send_back_addr) {
                    warn!(addr = %send_back_addr, %error, "inbound connection refused (further ones from this address are logged at debug)");
                } else {
                    debug!(addr = %send_back_addr, %error, "inbound connection failed");
                }
            }
            _ => {}
        }
    }
}

/// What a shared file is, from its manifest.
fn shared_file(manifest: &Manifest) -> SharedFile {
    SharedFile {
        id: manifest.id(),
        name: manifest.name().clone(),
        size: manifest.lengths().size(),
        skipped: 0,
    }
}

/// A node event of the core (which has no extension) as an event of this node.
fn widen<X>(event: Event<Infallible>) -> Event<X> {
    match event {
        Event::Listening { addr } => Event::Listening { addr },
        Event::TrackerConnected { peer } => Event::TrackerConnected { peer },
        Event::Shared { file } => Event::Shared { file },
        Event::ProviderDropped { file, peer, reason } => {
            Event::ProviderDropped { file, peer, reason }
        }
        Event::Downloaded { file, path } => Event::Downloaded { file, path },
        Event::Unshared { file } => Event::Unshared { file },
        Event::Cancelled { download, file } => Event::Cancelled { download, file },
        Event::Extension(never) => match never {},
    }
}

impl<E: NetworkBehaviour> EventLoop<E> {
    /// Executes one action of the downloads; returns the actions a synchronous failure leads
    /// to (a dial that cannot even start).
    fn execute(&mut self, action: Action) -> Option<Vec<Action>> {
        match action {
            Action::Request { peer, request, tag } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .transfer
                    .send_request(&peer, request);
                self.transfer_pending.insert(id, tag);
            }
            Action::Lookup { download, key } => {
                let request = bitswarm_protocols::tracker::Request::Lookup {
                    key,
                    limit: crate::downloader::LOOKUP_LIMIT,
                };
                self.tracker_request(request, TrackerWaiter::Download(download));
            }
            Action::Unannounce(id) => self.tracker_request(
                bitswarm_protocols::tracker::Request::Unannounce { id },
                TrackerWaiter::Unannounce(None),
            ),
            Action::Announce => self.announce(),
            Action::AddAddress { peer, addr } => self.swarm.add_peer_address(peer, addr),
            Action::Dial(peer) => return self.dial_provider(peer),
            Action::Close(connection) => {
                self.swarm.close_connection(connection);
            }
            Action::Disk { download, job } => {
                let pool = Arc::clone(&self.pool);
                self.tasks
                    .spawn_blocking(move || TaskOutput::Download(job.run(download, &pool)));
            }
            Action::Emit(event) => self.emit(widen(event)),
        }
        None
    }
}
