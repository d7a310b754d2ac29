//! The tracker's event loop: [`Tracker`] owns the swarm and runs until cancelled.
//!
//! The swarm composes [`crate::Behaviour`] with ping (liveness: a failed ping closes the
//! connection, which evicts the peer when it was its last) and identify. [`Tracker::bind`] builds
//! it and starts listening; [`Tracker::run`] is one `tokio::select!` over the swarm, the
//! shutdown token and the expiry timer, each arm calling a `handle_*` method. Every tracker event
//! is logged here, one line each with `peer` and `file` (or `name`, `query`) fields: announces,
//! lookups, searches, stats requests and evictions at info, as the prototype logged every
//! request and share; a peer's first refusal for a limit at warn, its later ones at debug.

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use bitswarm_protocols::{
    limits::{self, RefusalLog},
    quic_twin, tcp_port,
    tracker::{LookupKey, Stats},
};
use futures::{FutureExt, StreamExt};
use libp2p::{
    autonat, identify,
    multiaddr::Protocol,
    noise, ping, relay,
    swarm::{dummy, ListenError, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder, TransportError,
};
use tokio::{
    sync::{mpsc, watch},
    time::MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument};

use crate::{
    behaviour::{Event, EvictReason},
    extension::{
        ExtensionFn, TrackerContext, TrackerHandle, EXTENSION_CHANNEL_SIZE,
        EXTENSION_EVENT_CHANNEL_SIZE,
    },
    Config, Error, Result,
};

pub use bitswarm_protocols::IDENTIFY_PROTOCOL;
/// How long [`Tracker::bind`] waits for every listener to report an address.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on how often lapsed registrations are looked for (a quarter of the TTL in between).
const EXPIRY_PERIOD: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// The tracker's composed behaviour; fields are roles.
#[derive(NetworkBehaviour)]
struct Behaviour<E: NetworkBehaviour> {
    /// Connection limits: total, per peer, per IP, pending inbound, memory. First, so a
    /// refused connection costs the others nothing.
    limits: limits::Behaviour,
    tracker: crate::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    /// Circuit relay v2 server: NAT'd peers reserve here; circuits coordinate hole punching
    /// (and carry file data when the limits allow it).
    relay: relay::Behaviour,
    /// Tells peers whether they are publicly reachable by dialing them back.
    autonat: autonat::Behaviour,
    /// The operator's own behaviour ([`libp2p::swarm::dummy::Behaviour`] by default).
    extension: E,
}

/// A bound tracker: listening, not yet serving. Call [`Tracker::run`].
///
/// `E` is the operator's extension behaviour ([`Tracker::bind_with_extension`]); reach it
/// while the tracker runs through [`Tracker::handle`].
pub struct Tracker<E: NetworkBehaviour = dummy::Behaviour> {
    swarm: Swarm<Behaviour<E>>,
    /// Closures for the extension, from [`TrackerHandle`]s (this sender is cloned into them).
    commands: (mpsc::Sender<ExtensionFn>, mpsc::Receiver<ExtensionFn>),
    /// The extension's events, to the application.
    extension_events: mpsc::Sender<E::ToSwarm>,
    /// Addresses the listeners reported during `bind`.
    listen_addrs: Vec<Multiaddr>,
    /// Holds the latest counters; updated after every tracker event that changes them.
    stats: watch::Sender<Stats>,
    expiry_period: Duration,
    span: tracing::Span,
    /// Addresses whose inbound connections were refused already (logged once).
    refusals: RefusalLog,
    /// Peers refused for a limit already (logged once each).
    limited: PeerLog,
    /// Hosts (or local peers) with a peer disconnected for its limits already.
    expelled: PeerLog,
}

/// Hosts (or, on this machine, peers) already logged, bounded: past [`MAX_LOGGED`] it starts
/// over. Keyed by host, so a thousand identities from one address are one line.
#[derive(Debug, Default)]
struct PeerLog(std::collections::HashSet<Result<std::net::IpAddr, PeerId>>);

/// Most entries [`PeerLog`] remembers.
const MAX_LOGGED: usize = 4096;

impl PeerLog {
    fn first(&mut self, peer: PeerId, from: Option<std::net::IpAddr>) -> bool {
        if self.0.len() >= MAX_LOGGED {
            self.0.clear();
        }
        // This machine is one address for every local peer: keyed by peer there.
        let key = match from {
            Some(ip)
                if ip != std::net::Ipv4Addr::LOCALHOST && ip != std::net::Ipv6Addr::LOCALHOST =>
            {
                Ok(ip)
            }
            _ => Err(peer),
        };
        self.0.insert(key)
    }
}

impl Tracker {
    /// Builds the swarm and listens on every address of `config.listen_addrs`, waiting (at most
    /// [`BIND_TIMEOUT`]) until each has reported an address, so that port 0 is resolved.
    ///
    /// # Errors
    /// [`Error::Noise`] or [`Error::Dns`] when the transport cannot be built,
    /// [`Error::UnsupportedAddr`] or [`Error::Listen`] when an address cannot be listened on,
    /// [`Error::BindTimeout`].
    ///
    /// # Cancel safety
    /// Safe: dropping the future drops the half-built swarm and its listeners.
    pub async fn bind(config: Config) -> Result<Tracker> {
        let (tracker, _no_events) = Tracker::bind_with_extension(config, dummy::Behaviour).await?;
        Ok(tracker)
    }
}

impl<E: NetworkBehaviour> Tracker<E>
where
    E: Send + 'static,
    E::ToSwarm: std::fmt::Debug,
{
    /// [`Tracker::bind`] with the operator's own behaviour `extension` composed into the
    /// swarm beside the index. Its events arrive on the returned receiver, in order (dropped,
    /// logged at debug, when it holds [`EXTENSION_EVENT_CHANNEL_SIZE`] unread); drive it with
    /// [`Tracker::handle`]'s [`TrackerHandle::with_extension`].
    ///
    /// # Errors
    /// As [`Tracker::bind`].
    ///
    /// # Cancel safety
    /// As [`Tracker::bind`].
    pub async fn bind_with_extension(
        config: Config,
        extension: E,
    ) -> Result<(Tracker<E>, mpsc::Receiver<E::ToSwarm>)> {
        let span = config.root_span.clone();
        Self::bind_in_span(config, extension).instrument(span).await
    }

    async fn bind_in_span(
        config: Config,
        extension: E,
    ) -> Result<(Tracker<E>, mpsc::Receiver<E::ToSwarm>)> {
        let mut swarm = build_swarm(&config, extension)?;
        let (extension_events, events) = mpsc::channel(EXTENSION_EVENT_CHANNEL_SIZE);
        let mut pending = HashMap::new();
        for addr in &config.listen_addrs {
            let id = swarm.listen_on(addr.clone()).map_err(|e| match e {
                TransportError::MultiaddrNotSupported(a) => Error::UnsupportedAddr(a),
                TransportError::Other(source) => Error::Listen {
                    addr: addr.clone(),
                    source,
                },
            })?;
            pending.insert(id, addr.clone());
            let fixed_port = tcp_port(addr).filter(|&port| port != 0);
            if let Some(quic) = fixed_port
                .filter(|_| config.quic)
                .and_then(|port| quic_twin(addr, port))
            {
                // A fixed TCP port gets its QUIC twin at once; port 0 is left to TCP alone
                // (the two would get different ports).
                match swarm.listen_on(quic.clone()) {
                    Ok(id) => {
                        pending.insert(id, quic);
                    }
                    Err(error) => warn!(addr = %quic, %error, "cannot listen on QUIC"),
                }
            }
        }
        let mut listen_addrs = Vec::new();
        let wait = async {
            while !pending.is_empty() {
                let event = match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(BehaviourEvent::Extension(event)) => {
                        forward(&extension_events, event);
                        continue;
                    }
                    other => other,
                };
                if let Some(addr) = on_bind_event(event, &mut pending, &mut listen_addrs)? {
                    debug!(%addr, "listening");
                }
            }
            // A listener on an unspecified address reports one address per interface, all
            // at once: collect the ones already there.
            while let Some(event) = swarm.next().now_or_never().flatten() {
                on_bind_event(event, &mut pending, &mut listen_addrs)?;
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(BIND_TIMEOUT, wait)
            .await
            .map_err(|_| Error::BindTimeout(BIND_TIMEOUT))??;

        let external: Vec<Multiaddr> = if config.external_addrs.is_empty() {
            listen_addrs
                .iter()
                .filter(|a| is_specific(a))
                .cloned()
                .collect()
        } else {
            config.external_addrs.clone()
        };
        for addr in &external {
            info!(%addr, "external address");
            swarm.add_external_address(addr.clone());
        }
        if external.is_empty() {
            warn!("no external address (listening on an unspecified IP without --external-addr): the relay is off");
        }
        let limits = config.relay;
        info!(
            circuit_bytes = limits.max_circuit_bytes,
            circuit_secs = limits.max_circuit_duration.as_secs(),
            circuits_per_peer = limits.max_circuits_per_peer,
            "relay limits (circuit bytes 0 = unlimited)"
        );
        let (stats, _) = watch::channel(swarm.behaviour().tracker.stats());
        let local = *swarm.local_peer_id();
        info!(peer = %local, addrs = listen_addrs.len(), "tracker bound");
        let tracker = Tracker {
            swarm,
            commands: mpsc::channel(EXTENSION_CHANNEL_SIZE),
            extension_events,
            listen_addrs,
            stats,
            expiry_period: (config.ttl / 4).clamp(EXPIRY_PERIOD.0, EXPIRY_PERIOD.1),
            span: config.root_span,
            refusals: RefusalLog::default(),
            limited: PeerLog::default(),
            expelled: PeerLog::default(),
        };
        Ok((tracker, events))
    }

    /// A handle that runs closures on the extension while the tracker runs.
    pub fn handle(&self) -> TrackerHandle {
        TrackerHandle {
            commands: self.commands.0.clone(),
        }
    }

    /// The tracker's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The addresses the tracker listens on, each ending in `/p2p/<id>` (dialable as is).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let id = self.local_peer_id();
        self.listen_addrs
            .iter()
            .map(|addr| addr.clone().with_p2p(id).unwrap_or_else(|addr| addr))
            .collect()
    }

    /// The tracker's counters, updated while [`Tracker::run`] runs.
    pub fn stats_watch(&self) -> watch::Receiver<Stats> {
        self.stats.subscribe()
    }

    /// Serves until `shutdown` is cancelled, then drops the swarm (closing every connection).
    ///
    /// # Cancel safety
    /// Safe: dropping the future stops the tracker as cancelling the token does.
    pub async fn run(self, shutdown: CancellationToken) {
        let span = self.span.clone();
        self.run_in_span(shutdown).instrument(span).await;
    }

    async fn run_in_span(mut self, shutdown: CancellationToken) {
        info!(peer = %self.local_peer_id(), "tracker running");
        let mut expiry = tokio::time::interval(self.expiry_period);
        expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = expiry.tick() => self.handle_expiry_tick(),
                Some(f) = self.commands.1.recv() => self.handle_extension_fn(f),
            }
        }
        info!("tracker stopped");
    }

    /// Runs an extension closure on the extension, then the dials it queued.
    fn handle_extension_fn(&mut self, f: ExtensionFn) {
        let local_peer_id = *self.swarm.local_peer_id();
        let behaviour = self.swarm.behaviour_mut();
        let mut ctx = TrackerContext {
            local_peer_id,
            tracker: &mut behaviour.tracker,
            extension: std::any::type_name::<E>(),
            dials: Vec::new(),
        };
        (f.0)(&mut behaviour.extension, &mut ctx);
        for dial in ctx.dials {
            if let Err(error) = self.swarm.dial(dial) {
                debug!(%error, "dial of the extension failed");
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent<E>>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Extension(event)) => {
                forward(&self.extension_events, event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Tracker(event)) => {
                self.handle_tracker_event(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => self.handle_ping_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                handle_identify_event(event);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => handle_relay_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => {
                debug!(?event, "autonat")
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let address = address.with_p2p(self.local_peer_id());
                info!(address = %address.unwrap_or_else(|a| a), "listening");
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "no longer listening");
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => warn!(?addresses, ?reason, "listener closed"),
            SwarmEvent::ListenerError { error, .. } => warn!(%error, "listener error"),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address();
                debug!(peer = %peer_id, %addr, "connection established");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => debug!(peer = %peer_id, ?cause, remaining = num_established, "connection closed"),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                if matches!(error, ListenError::Denied { .. })
                    && self.refusals.first(&send_back_addr)
                {
                    warn!(addr = %send_back_addr, %error, "inbound connection refused (further ones from this address are logged at debug)");
                } else {
                    debug!(addr = %send_back_addr, %error, "incoming connection failed");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Limits(never)) => match never {},
            other => trace!(event = ?other, "swarm event"),
        }
    }

    fn handle_tracker_event(&mut self, event: Event) {
        match event {
            Event::Announced {
                peer,
                files,
                new_peer,
                dropped_addrs,
                dropped_files,
            } => {
                let what = if new_peer {
                    "peer registered"
                } else {
                    "announce"
                };
                if dropped_addrs > 0 || dropped_files > 0 {
                    info!(%peer, files, dropped_addrs, dropped_files, "{what} (addresses not on its own IP, names with control characters dropped)");
                } else {
                    info!(%peer, files, "{what}");
                }
            }
            Event::Unannounced { peer, file } => info!(%peer, %file, "unannounce"),
            Event::LookedUp { peer, key, found } => match key {
                LookupKey::Id(file) => info!(%peer, %file, found, "lookup"),
                LookupKey::Name(name) => info!(%peer, %name, found, "lookup by name"),
            },
            Event::Searched { peer, query, found } => info!(%peer, ?query, found, "search"),
            Event::StatsServed { peer } => info!(%peer, "stats"),
            Event::Evicted { peer, reason } => {
                let reason = match reason {
                    EvictReason::Disconnected => "disconnected",
                    EvictReason::Expired => "ttl expired",
                };
                info!(%peer, reason, "peer evicted");
            }
            Event::RequestRefused {
                peer,
                from,
                code,
                error,
            } => {
                let limited = code == bitswarm_protocols::ErrorCode::LimitReached;
                if limited && self.limited.first(peer, from) {
                    warn!(%peer, from = ?from, %error, "request refused (further refusals of this host are logged at debug)");
                } else if code == bitswarm_protocols::ErrorCode::LimitReached {
                    debug!(%peer, %error, "request refused");
                } else {
                    info!(%peer, %error, "request refused");
                }
            }
            Event::Expelled {
                peer,
                from,
                host_banned,
            } => {
                if host_banned {
                    warn!(%peer, from = ?from, "host refused new connections for a while: its peers kept asking past its limits");
                } else if self.expelled.first(peer, from) {
                    warn!(%peer, from = ?from, "peer disconnected for asking past its limits, its id refused for a while (further ones of this host are logged at debug)");
                } else {
                    debug!(%peer, from = ?from, "peer disconnected for asking past its limits");
                }
            }
            Event::InboundFailed { peer, error } => debug!(%peer, %error, "inbound request failed"),
        }
        let now = self.swarm.behaviour().tracker.stats();
        self.stats.send_if_modified(|stats| {
            let changed = *stats != now;
            *stats = now;
            changed
        });
    }

    fn handle_ping_event(&mut self, event: ping::Event) {
        let ping::Event {
            peer,
            connection,
            result,
        } = event;
        match result {
            Ok(rtt) => trace!(%peer, ?rtt, "ping"),
            // Such a peer can still use the tracker; its registrations then lapse by TTL.
            Err(ping::Failure::Unsupported) => debug!(%peer, "peer does not support ping"),
            Err(error) => {
                info!(%peer, %error, "ping failed, closing the connection");
                self.swarm.close_connection(connection);
            }
        }
    }

    fn handle_expiry_tick(&mut self) {
        self.swarm.behaviour_mut().tracker.expire(Instant::now());
    }
}

/// Logs what the relay does: reservations at info, circuits at debug, denials at warn.
fn handle_relay_event(event: relay::Event) {
    match event {
        relay::Event::ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => {
            if renewed {
                debug!(peer = %src_peer_id, "relay reservation renewed");
            } else {
                info!(peer = %src_peer_id, "relay reservation accepted");
            }
        }
        relay::Event::ReservationTimedOut { src_peer_id } => {
            info!(peer = %src_peer_id, "relay reservation timed out")
        }
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => info!(src = %src_peer_id, dst = %dst_peer_id, "relay circuit opened"),
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay circuit closed"),
        other => info!(event = ?other, "relay"),
    }
}

fn handle_identify_event(event: identify::Event) {
    match event {
        identify::Event::Received { peer_id, info, .. } => {
            debug!(peer = %peer_id, agent = %info.agent_version, "identified");
        }
        identify::Event::Error { peer_id, error, .. } => {
            debug!(peer = %peer_id, %error, "identify failed");
        }
        other => trace!(event = ?other, "identify"),
    }
}

/// A listen address on a specific IP (not `0.0.0.0` or `::`): dialable as it is.
fn is_specific(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified(),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

/// Passes an event of the extension to the application, or drops it when the application lags.
fn forward<X>(events: &mpsc::Sender<X>, event: X) {
    if events.try_send(event).is_err() {
        debug!("extension event dropped: the application is not reading them");
    }
}

/// Handles a swarm event during [`Tracker::bind`]; returns the address it reported, if any.
fn on_bind_event<E: NetworkBehaviour<ToSwarm: std::fmt::Debug>>(
    event: SwarmEvent<BehaviourEvent<E>>,
    pending: &mut HashMap<libp2p::core::transport::ListenerId, Multiaddr>,
    listen_addrs: &mut Vec<Multiaddr>,
) -> Result<Option<Multiaddr>> {
    let (listener_id, error) = match event {
        SwarmEvent::NewListenAddr {
            listener_id,
            address,
        } => {
            pending.remove(&listener_id);
            listen_addrs.push(address.clone());
            return Ok(Some(address));
        }
        SwarmEvent::ListenerClosed {
            listener_id,
            reason,
            ..
        } => (
            listener_id,
            reason.err().unwrap_or_else(|| io::Error::other("closed")),
        ),
        SwarmEvent::ListenerError { listener_id, error } => (listener_id, error),
        other => {
            trace!(event = ?other, "swarm event while binding");
            return Ok(None);
        }
    };
    match pending.remove(&listener_id) {
        Some(addr) => Err(Error::Listen {
            addr,
            source: error,
        }),
        None => {
            warn!(%error, "listener failed while binding");
            Ok(None)
        }
    }
}

fn build_swarm<E: NetworkBehaviour>(config: &Config, extension: E) -> Result<Swarm<Behaviour<E>>> {
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(config.ping_interval)
            .with_timeout(config.ping_timeout),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), config.keypair.public())
            .with_agent_version(format!("bitswarm-tracker/{}", env!("CARGO_PKG_VERSION"))),
    );
    let local = config.keypair.public().to_peer_id();
    let limits = &config.relay;
    let tracker = crate::Behaviour::new(config);
    let mut relay_config = relay::Config {
        max_reservations: limits.max_reservations,
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: limits
            .max_circuit_duration
            .min(Duration::from_secs(u64::from(u32::MAX))),
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    };
    // Only the tracker's own peers may reserve, or open circuits (to a peer that reserved,
    // so also one of ours); a stranger's request is denied as over a limit.
    let registered = tracker.registered();
    // First, so a stranger's refused request charges none of the per-IP budgets that users
    // behind one address share.
    relay_config.reservation_rate_limiters.insert(
        0,
        Box::new(move |peer, _: &Multiaddr, _| registered.contains(&peer)),
    );
    let registered = tracker.registered();
    relay_config.circuit_src_rate_limiters.insert(
        0,
        Box::new(move |peer, _: &Multiaddr, _| registered.contains(&peer)),
    );
    if let Some(per_hour) = std::num::NonZeroU32::new(limits.circuits_per_peer_per_hour) {
        relay_config = relay_config.circuit_src_per_peer(per_hour, Duration::from_secs(3600));
    }
    let relay = relay::Behaviour::new(local, relay_config);
    let autonat = autonat::Behaviour::new(
        local,
        autonat::Config {
            only_global_ips: !config.autonat_private_ips,
            // The tracker serves probes; it does not probe itself.
            boot_delay: Duration::from_secs(3600),
            use_connected: false,
            ..autonat::Config::default()
        },
    );
    let behaviour = Behaviour {
        limits: limits::Behaviour::new(config.connection_limits),
        tracker,
        ping,
        identify,
        relay,
        autonat,
        extension,
    };
    let Ok(builder) = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns()
        .map_err(Error::Dns)?
        .with_behaviour(|_| behaviour);
    let idle = config.idle_connection_timeout;
    Ok(builder
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}
