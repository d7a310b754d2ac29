//! [`Behaviour`], the tracker protocol's server side as a [`NetworkBehaviour`].
//!
//! It wraps an inbound-only `request_response::Behaviour<TrackerCodec>` (as rust-libp2p's
//! rendezvous server does) and owns the [`FileIndex`]. Every request is answered here, under the
//! authenticated `PeerId` of the connection it arrived on, so a peer can only announce itself.
//! What happened is reported as one [`Event`] per request, failure or eviction; the event loop
//! in [`crate::server`] logs them.
//!
//! Liveness: a peer's registrations are evicted when its last connection closes
//! ([`EvictReason::Disconnected`]) or when its TTL passes without a re-announce
//! ([`EvictReason::Expired`], driven by [`Behaviour::expire`] on a timer).
//!
//! It remembers the IPs each peer's connections come from and arrive on (the [`Origin`] its
//! announces are checked against), rate-limits requests per peer and per host
//! ([`RateLimiter`]), disconnects peers that keep asking past those limits and keeps them (and
//! hosts with several of them) out a while ([`Bans`]: a refused request still costs its
//! stream, so refusing alone does not protect the loop), and keeps the set of registered peers
//! in a [`Registered`] handle that the relay consults, so only the tracker's own peers may
//! reserve or open circuits.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    iter,
    net::IpAddr,
    sync::{Arc, RwLock},
    task::{Context, Poll, Waker},
    time::Instant,
};

use bitswarm_protocols::{
    tracker::{FileRecord, LookupKey, Reply, Request, Response, Stats},
    tracker_codec, ErrorCode, FileId, TrackerCodec, TRACKER_PROTOCOL,
};
use libp2p::{
    core::{transport::PortUse, Endpoint},
    multiaddr::Protocol,
    request_response::{self, InboundRequestId, ProtocolSupport},
    swarm::{
        behaviour::ConnectionClosed, CloseConnection, ConnectionDenied, ConnectionId, FromSwarm,
        ListenFailure, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

use crate::{
    index::{Host, IndexError, Origin},
    rate::{Bans, Limited, RateLimiter, Strike},
    replies::Replies,
    Config, FileIndex,
};

type Inner = request_response::Behaviour<TrackerCodec>;

/// Most tracker requests one connection may have open at once (read, answered or unread).
pub const MAX_STREAMS_PER_CONNECTION: usize = 16;
type InnerEvent = request_response::Event<Request, Response>;

/// Why a peer's registrations were removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// Its last connection to the tracker closed.
    Disconnected,
    /// Its TTL passed without a re-announce.
    Expired,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The index refused it.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The peer, or its host, asked too often.
    #[error("{}", match .0 {
        Limited::Peer => "too many requests from this peer",
        Limited::Host => "too many requests from this host",
        Limited::Searches => "too many searches on the tracker at once",
    })]
    RateLimited(Limited),
    /// Its host has too many answers sent and not yet read.
    #[error("too many unread answers to this host")]
    Unread,
}

impl Refusal {
    /// The wire code sent back.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Index(e) => e.code(),
            Refusal::RateLimited(_) | Refusal::Unread => ErrorCode::LimitReached,
        }
    }
}

/// Why a connection was refused before it was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Banned {
    /// Its host had too many peers disconnected for asking past their limits.
    #[error("this host is refused for a while: its peers kept asking past their limits")]
    Host,
    /// This peer id was disconnected for asking past its limits.
    #[error("this peer is refused for a while: it kept asking past its limits")]
    Peer,
}

/// The peers registered at a tracker, shared with the relay (which lets only them reserve
/// and open circuits). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registered(Arc<RwLock<HashSet<PeerId>>>);

impl Registered {
    /// Whether `peer` is registered.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.read().is_ok_and(|set| set.contains(peer))
    }

    fn set(&self, peer: PeerId, registered: bool) {
        if let Ok(mut set) = self.0.write() {
            if registered {
                set.insert(peer);
            } else {
                set.remove(&peer);
            }
        }
    }
}

/// What the tracker did.
#[derive(Debug)]
pub enum Event {
    /// A peer's announce was recorded.
    Announced {
        /// The announcer.
        peer: PeerId,
        /// Files in this announce.
        files: usize,
        /// The peer was not registered before.
        new_peer: bool,
        /// Announced addresses dropped as not the peer's own.
        dropped_addrs: usize,
        /// Announced files dropped for a name with control characters.
        dropped_files: usize,
    },
    /// A peer withdrew one file.
    Unannounced {
        /// The peer.
        peer: PeerId,
        /// The file.
        file: FileId,
    },
    /// A lookup was answered.
    LookedUp {
        /// The requester.
        peer: PeerId,
        /// What it looked up.
        key: LookupKey,
        /// Files found.
        found: usize,
    },
    /// A search was answered.
    Searched {
        /// The requester.
        peer: PeerId,
        /// The query.
        query: String,
        /// Files found.
        found: usize,
    },
    /// Counters were sent.
    StatsServed {
        /// The requester.
        peer: PeerId,
    },
    /// A peer's registrations were removed.
    Evicted {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: EvictReason,
    },
    /// A request was answered with an error code.
    RequestRefused {
        /// The requester.
        peer: PeerId,
        /// Its IP, as the tracker saw it.
        from: Option<IpAddr>,
        /// The code sent back.
        code: ErrorCode,
        /// The cause.
        error: Refusal,
    },
    /// A peer kept asking past its limits (out of strikes, see [`Bans`]): its connections
    /// are closed and its id refused for [`crate::rate::PEER_BAN`].
    Expelled {
        /// The peer.
        peer: PeerId,
        /// Its IP, as the tracker saw it.
        from: Option<IpAddr>,
        /// Its host is refused new connections for [`crate::rate::HOST_BAN`] too.
        host_banned: bool,
    },
    /// An inbound request could not be read or answered: malformed, oversized, timed out, or
    /// its connection closed first.
    InboundFailed {
        /// The requester.
        peer: PeerId,
        /// What went wrong.
        error: String,
    },
}

/// The tracker's [`NetworkBehaviour`]: answers the tracker protocol from its [`FileIndex`].
pub struct Behaviour {
    inner: Inner,
    index: FileIndex,
    /// Sent with every accepted announce.
    interval_secs: u32,
    /// Sent with every accepted announce.
    ttl_secs: u32,
    /// Events to return from `poll` before polling `inner`.
    events: VecDeque<Event>,
    /// Woken when an event is queued from outside `poll`.
    waker: Option<Waker>,
    /// Each peer's direct connections: (connection, its IP, our IP). Bounded by the
    /// connection limits.
    connections: HashMap<PeerId, Vec<(ConnectionId, IpAddr, IpAddr)>>,
    rate: RateLimiter,
    bans: Bans,
    /// Peers to disconnect, polled out as [`ToSwarm::CloseConnection`].
    to_close: VecDeque<PeerId>,
    /// Answers sent and not yet read.
    replies: Replies<InboundRequestId>,
    registered: Registered,
    exempt_localhost: bool,
}

impl Behaviour {
    /// A tracker with an empty index, using `config`'s timing and limits.
    pub fn new(config: &Config) -> Self {
        let rr_config = request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        Behaviour {
            inner: Inner::with_codec(
                tracker_codec(),
                iter::once((TRACKER_PROTOCOL, ProtocolSupport::Inbound)),
                rr_config,
            ),
            index: FileIndex::new(
                config.limits,
                config.ttl,
                config.keypair.public().to_peer_id(),
                rand::random(),
            ),
            interval_secs: secs(config.announce_interval),
            ttl_secs: secs(config.ttl),
            events: VecDeque::new(),
            waker: None,
            connections: HashMap::new(),
            rate: RateLimiter::new(config.rate_limits),
            bans: Bans::default(),
            to_close: VecDeque::new(),
            replies: Replies::new(config.max_unread_per_host, config.max_unread_total),
            registered: Registered::default(),
            exempt_localhost: config.limits.exempt_localhost,
        }
    }

    /// The registered peers, kept up to date while the tracker runs.
    pub fn registered(&self) -> Registered {
        self.registered.clone()
    }

    /// The host `peer` counts under (`None`: not counted, this machine).
    fn host_of(&self, peer: &PeerId) -> Option<Host> {
        let ip = self
            .connections
            .get(peer)
            .and_then(|c| c.first())
            .map(|(_, remote, _)| *remote);
        Host::of(ip, self.exempt_localhost)
    }

    /// How the tracker sees `peer`: the IPs of its direct connections.
    fn origin(&self, peer: &PeerId) -> Origin {
        let conns = self.connections.get(peer).map_or(&[][..], Vec::as_slice);
        Origin {
            remote: conns.iter().map(|(_, remote, _)| *remote).collect(),
            local: conns.iter().map(|(_, _, local)| *local).collect(),
        }
    }

    /// Evicts every peer whose TTL passed at `now`; each gets an [`Event::Evicted`].
    pub fn expire(&mut self, now: Instant) {
        for peer in self.index.expire(now) {
            self.registered.set(peer, false);
            self.push(Event::Evicted {
                peer,
                reason: EvictReason::Expired,
            });
        }
    }

    /// Registered peers and distinct files.
    pub fn stats(&self) -> Stats {
        self.index.stats()
    }

    /// The index, to inspect.
    pub fn index(&self) -> &FileIndex {
        &self.index
    }

    /// Looks `key` up as a peer's request would (a sample of its holders, seeders first),
    /// without any rate limit: for the operator's own code.
    pub fn lookup(&mut self, key: &LookupKey, limit: usize) -> Vec<FileRecord> {
        self.index.lookup(key, limit)
    }

    /// The peers with a direct connection to the tracker, each once.
    pub fn connected_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.connections.keys().copied()
    }

    fn push(&mut self, event: Event) {
        self.events.push_back(event);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn on_inner_event(&mut self, event: InnerEvent) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                let host = self.host_of(&peer).map(|h| h.ip);
                let (response, event) = if self.replies.has_room(host) {
                    self.serve(peer, request)
                } else {
                    // Its earlier answers are unread: a few bytes of refusal, no work.
                    let from = self.origin(&peer).remote.first().copied();
                    refusal(peer, from, Refusal::Unread)
                };
                let bytes = crate::replies::encoded_len(&response);
                if self.inner.send_response(channel, response).is_err() {
                    // The inner behaviour reports this as an `InboundFailure` too.
                    tracing::debug!(%peer, "requester gone before the response");
                } else {
                    self.replies.sent(request_id, host, bytes);
                }
                let strike = matches!(
                    event,
                    Event::RequestRefused {
                        error: Refusal::RateLimited(_) | Refusal::Unread,
                        ..
                    }
                );
                self.events.push_back(event);
                if strike {
                    self.strike(peer, Instant::now());
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.replies.done(request_id);
                self.events.push_back(Event::InboundFailed {
                    peer,
                    error: error.to_string(),
                });
            }
            request_response::Event::ResponseSent {
                peer, request_id, ..
            } => {
                self.replies.done(request_id);
                tracing::trace!(%peer, "response sent");
            }
            // Inbound only: no request of ours can get a response or fail.
            request_response::Event::Message { .. }
            | request_response::Event::OutboundFailure { .. } => {
                tracing::trace!("ignored outbound request-response event");
            }
        }
    }

    /// Counts a refusal of `peer` at `now`; out of strikes, it is disconnected.
    fn strike(&mut self, peer: PeerId, now: Instant) {
        let host = self.host_of(&peer).map(|h| h.ip);
        if let Strike::Disconnect { host_banned } = self.bans.strike(peer, host, now) {
            let from = self.origin(&peer).remote.first().copied();
            self.to_close.push_back(peer);
            self.push(Event::Expelled {
                peer,
                from,
                host_banned,
            });
        }
    }

    /// Answers one request from `peer`.
    fn serve(&mut self, peer: PeerId, request: Request) -> (Response, Event) {
        let now = Instant::now();
        let origin = self.origin(&peer);
        let from = origin.remote.first().copied();
        let refused = |error: Refusal| refusal(peer, from, error);
        let host = Host::of(origin.remote.first().copied(), self.exempt_localhost);
        let cost = crate::rate::cost(&request);
        if let Err(limited) = self.rate.check(peer, host.map(|h| h.ip), cost, now) {
            return refused(Refusal::RateLimited(limited));
        }
        let refused = |error: IndexError| refused(Refusal::Index(error));
        match request {
            Request::Announce(announce) => {
                let files = announce.files.len();
                match self.index.announce_from(peer, announce, &origin, now) {
                    Ok(done) => {
                        if done.new_peer {
                            self.registered.set(peer, true);
                        }
                        (
                            Ok(Reply::Announced {
                                interval_secs: self.interval_secs,
                                ttl_secs: self.ttl_secs,
                            }),
                            Event::Announced {
                                peer,
                                files,
                                new_peer: done.new_peer,
                                dropped_addrs: done.dropped_addrs,
                                dropped_files: done.dropped_files,
                            },
                        )
                    }
                    Err(error) => refused(error),
                }
            }
            Request::Unannounce { id } => match self.index.unannounce(peer, id) {
                Ok(()) => (
                    Ok(Reply::Unannounced),
                    Event::Unannounced { peer, file: id },
                ),
                Err(error) => refused(error),
            },
            Request::Lookup { key, limit } => {
                let records = self.index.lookup(&key, to_usize(limit));
                let found = records.len();
                let event = Event::LookedUp { peer, key, found };
                (Ok(Reply::Providers(records)), event)
            }
            Request::Search { query, limit } => match self.index.search(&query, to_usize(limit)) {
                Ok(hits) => {
                    let found = hits.len();
                    let event = Event::Searched { peer, query, found };
                    (Ok(Reply::Found(hits)), event)
                }
                Err(error) => refused(error),
            },
            Request::Stats => (
                Ok(Reply::Stats(self.index.stats())),
                Event::StatsServed { peer },
            ),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let host = Host::of(direct_ip(remote_addr), self.exempt_localhost);
        if host.is_some_and(|h| self.bans.host_banned(&h.ip, Instant::now())) {
            return Err(ConnectionDenied::new(Banned::Host));
        }
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.bans.peer_banned(&peer, Instant::now()) {
            return Err(ConnectionDenied::new(Banned::Peer));
        }
        let handler = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        if let (Some(remote), Some(local)) = (direct_ip(remote_addr), direct_ip(local_addr)) {
            self.connections
                .entry(peer)
                .or_default()
                .push((connection_id, remote, local));
        }
        Ok(handler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A connection closed, or refused by a behaviour after this one recorded it (the swarm
        // reports that as a listen failure, never as closed).
        let gone = match &event {
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => Some((*peer_id, *connection_id)),
            FromSwarm::ListenFailure(ListenFailure {
                peer_id: Some(peer_id),
                connection_id,
                ..
            }) => Some((*peer_id, *connection_id)),
            _ => None,
        };
        if let Some((peer_id, connection_id)) = gone {
            if let Some(conns) = self.connections.get_mut(&peer_id) {
                conns.retain(|(c, _, _)| *c != connection_id);
                if conns.is_empty() {
                    self.connections.remove(&peer_id);
                }
            }
        }
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            remaining_established: 0,
            ..
        }) = event
        {
            self.registered.set(peer_id, false);
            if self.index.remove_peer(peer_id) {
                self.push(Event::Evicted {
                    peer: peer_id,
                    reason: EvictReason::Disconnected,
                });
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    #[tracing::instrument(level = "trace", name = "tracker::Behaviour::poll", skip(self, cx))]
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            if let Some(peer_id) = self.to_close.pop_front() {
                return Poll::Ready(ToSwarm::CloseConnection {
                    peer_id,
                    connection: CloseConnection::All,
                });
            }
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(event));
            }
            let Poll::Ready(action) = self.inner.poll(cx) else {
                break;
            };
            match forward(action) {
                Forward::Swarm(action) => return Poll::Ready(action),
                Forward::Inner(event) => self.on_inner_event(event),
                Forward::Unknown => {
                    tracing::warn!("dropped an unknown action of the request-response behaviour");
                }
            }
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// An action of the inner behaviour, sorted.
enum Forward<H> {
    /// To pass on to the swarm unchanged.
    Swarm(ToSwarm<Event, H>),
    /// An event for us to handle.
    Inner(InnerEvent),
    /// A variant added to the (non-exhaustive) `ToSwarm` after swarm 0.48.
    Unknown,
}

/// Sorts an action of the inner behaviour. Written out rather than `ToSwarm::map_out`, whose
/// closure would need an `Event` to return for actions that carry none.
fn forward<H>(action: ToSwarm<InnerEvent, H>) -> Forward<H> {
    Forward::Swarm(match action {
        ToSwarm::GenerateEvent(event) => return Forward::Inner(event),
        ToSwarm::Dial { opts } => ToSwarm::Dial { opts },
        ToSwarm::ListenOn { opts } => ToSwarm::ListenOn { opts },
        ToSwarm::RemoveListener { id } => ToSwarm::RemoveListener { id },
        ToSwarm::NotifyHandler {
            peer_id,
            handler,
            event,
        } => ToSwarm::NotifyHandler {
            peer_id,
            handler,
            event,
        },
        ToSwarm::NewExternalAddrCandidate(addr) => ToSwarm::NewExternalAddrCandidate(addr),
        ToSwarm::ExternalAddrConfirmed(addr) => ToSwarm::ExternalAddrConfirmed(addr),
        ToSwarm::ExternalAddrExpired(addr) => ToSwarm::ExternalAddrExpired(addr),
        ToSwarm::CloseConnection {
            peer_id,
            connection,
        } => ToSwarm::CloseConnection {
            peer_id,
            connection,
        },
        ToSwarm::NewExternalAddrOfPeer { peer_id, address } => {
            ToSwarm::NewExternalAddrOfPeer { peer_id, address }
        }
        _ => return Forward::Unknown,
    })
}

/// The answer and the event for a request from `peer` (seen at `from`) refused for `error`.
fn refusal(peer: PeerId, from: Option<IpAddr>, error: Refusal) -> (Response, Event) {
    let code = error.code();
    (
        Err(code),
        Event::RequestRefused {
            peer,
            from,
            code,
            error,
        },
    )
}

/// The IP of a direct (not relayed) connection's address.
fn direct_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
