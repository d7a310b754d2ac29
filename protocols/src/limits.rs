//! Connection limits that every bitswarm node and tracker runs: a [`Behaviour`] composing
//! libp2p's `connection_limits` (total, per peer id, pending inbound), `memory_connection_limits`
//! (no new connection while the process uses more than a set amount of memory) and [`PerIp`]
//! (inbound connections per IP address, per /64 for IPv6, both established and still in their
//! handshake), so that neither many free identities nor many connections from one host can use
//! up file descriptors, memory or the pending-handshake slots.
//!
//! It lives here, beside the protocols, because both the node and the tracker compose it and
//! neither depends on the other; it holds counters only, no I/O.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::{Ipv4Addr, Ipv6Addr},
    task::{Context, Poll},
};

use libp2p::{
    connection_limits,
    core::{transport::PortUse, Endpoint},
    memory_connection_limits,
    multiaddr::Protocol,
    swarm::{
        dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

/// Most refused addresses remembered for "logged once" ([`RefusalLog`]); past it the record
/// starts over (an address may then be logged again).
const MAX_REMEMBERED_REFUSALS: usize = 4096;

/// The limits, all configurable; [`ConnectionLimits::node`] and [`ConnectionLimits::tracker`]
/// give defaults a home machine survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established connections in all, inbound and outbound.
    pub max_connections: u32,
    /// Established connections to or from one peer id.
    pub max_per_peer: u32,
    /// Established inbound connections from one IPv4 address or IPv6 /64 (relayed ones are the
    /// relay's to limit).
    pub max_per_ip: u32,
    /// Inbound connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Inbound connections still in their handshake from one IPv4 address or IPv6 /64, so
    /// that one host opening sockets and never finishing the handshake cannot hold every
    /// pending slot (each for the 10 s handshake timeout) and lock everyone else out.
    pub max_pending_per_ip: u32,
    /// No new connection while the process's resident memory exceeds this many bytes.
    pub max_memory_bytes: usize,
    /// Connections from this machine (`127.0.0.1`, `::1`) are not counted per IP, so local
    /// swarms and tests with many peers work; other loopback addresses count as any other.
    pub exempt_localhost: bool,
}

impl ConnectionLimits {
    /// A peer node's defaults: 512 connections, 4 per peer, 16 per IP, 64 pending inbound
    /// (8 per IP), 512 MiB of memory.
    pub const fn node() -> Self {
        ConnectionLimits {
            max_connections: 512,
            max_per_peer: 4,
            max_per_ip: 16,
            max_pending_incoming: 64,
            max_pending_per_ip: 8,
            max_memory_bytes: 512 << 20,
            exempt_localhost: true,
        }
    }

    /// A tracker's defaults: 8192 connections, 4 per peer, 64 per IP (many users share an
    /// address behind carrier-grade NAT), 256 pending inbound (16 per IP), 2 GiB of memory.
    pub const fn tracker() -> Self {
        ConnectionLimits {
            max_connections: 8192,
            max_per_peer: 4,
            max_per_ip: 64,
            max_pending_incoming: 256,
            max_pending_per_ip: 16,
            max_memory_bytes: 2 << 30,
            exempt_localhost: true,
        }
    }
}

/// The composed limits. Its events never happen.
#[derive(NetworkBehaviour)]
#[behaviour(to_swarm = "Infallible")]
pub struct Behaviour {
    connections: connection_limits::Behaviour,
    memory: memory_connection_limits::Behaviour,
    per_ip: PerIp,
}

impl Behaviour {
    /// Limits as `limits` says.
    pub fn new(limits: ConnectionLimits) -> Self {
        let connections = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(limits.max_connections))
            .with_max_established_per_peer(Some(limits.max_per_peer))
            .with_max_pending_incoming(Some(limits.max_pending_incoming));
        Behaviour {
            connections: connection_limits::Behaviour::new(connections),
            memory: memory_connection_limits::Behaviour::with_max_bytes(limits.max_memory_bytes),
            per_ip: PerIp::new(limits.max_per_ip, limits.exempt_localhost)
                .with_max_pending(limits.max_pending_per_ip),
        }
    }

    /// Never limits connections to or from `peer` (say, the tracker a node depends on).
    pub fn bypass(&mut self, peer: &PeerId) {
        self.connections.bypass_peer_id(peer);
    }
}

/// What inbound connections are counted by: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl IpKey {
    /// The key of the host an inbound connection comes from; `None` for a relayed connection
    /// (its address names the relay) or an address without an IP.
    pub fn of(remote: &Multiaddr) -> Option<IpKey> {
        if remote.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return None;
        }
        remote.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpKey::V4(ip)),
            Protocol::Ip6(ip) => Some(match ip.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6((u128::from(ip) >> 64) as u64),
            }),
            _ => None,
        })
    }

    fn is_localhost(&self) -> bool {
        match self {
            IpKey::V4(ip) => *ip == Ipv4Addr::LOCALHOST,
            IpKey::V6(prefix) => *prefix == (u128::from(Ipv6Addr::LOCALHOST) >> 64) as u64,
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpKey::V4(ip) => write!(f, "{ip}"),
            IpKey::V6(prefix) => {
                let ip = Ipv6Addr::from(u128::from(*prefix) << 64);
                write!(f, "{ip}/64")
            }
        }
    }
}

/// An inbound connection was refused: too many from its address.
#[derive(Debug, thiserror::Error)]
#[error("too many {what} connections from {key} (at most {max})")]
pub struct TooManyFromIp {
    /// The address (or /64).
    pub key: IpKey,
    /// `"established"` or `"pending"`.
    pub what: &'static str,
    /// The limit.
    pub max: u32,
}

/// Inbound connections per [`IpKey`]: at most `max` established and `max_pending` still in
/// their handshake, each.
#[derive(Debug)]
pub struct PerIp {
    max: u32,
    max_pending: u32,
    exempt_localhost: bool,
    established: Counts,
    pending: Counts,
}

/// Connections by id, and how many each key has.
#[derive(Debug, Default)]
struct Counts {
    counts: HashMap<IpKey, u32>,
    connections: HashMap<ConnectionId, IpKey>,
}

impl Counts {
    fn count(&self, key: &IpKey) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn add(&mut self, connection: ConnectionId, key: IpKey) {
        if self.connections.insert(connection, key).is_none() {
            *self.counts.entry(key).or_default() += 1;
        }
    }

    fn remove(&mut self, connection: ConnectionId) {
        let Some(key) = self.connections.remove(&connection) else {
            return;
        };
        if let Some(n) = self.counts.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
    }
}

impl PerIp {
    /// At most `max` established inbound connections per address, and as many in their
    /// handshake (see [`PerIp::with_max_pending`]).
    pub fn new(max: u32, exempt_localhost: bool) -> Self {
        PerIp {
            max,
            max_pending: max,
            exempt_localhost,
            established: Counts::default(),
            pending: Counts::default(),
        }
    }

    /// At most `max` inbound connections per address still in their handshake.
    pub fn with_max_pending(mut self, max: u32) -> Self {
        self.max_pending = max;
        self
    }

    fn key(&self, remote: &Multiaddr) -> Option<IpKey> {
        IpKey::of(remote).filter(|k| !(self.exempt_localhost && k.is_localhost()))
    }

    fn check(&self, key: IpKey) -> Result<(), ConnectionDenied> {
        if self.established.count(&key) < self.max {
            return Ok(());
        }
        Err(ConnectionDenied::new(TooManyFromIp {
            key,
            what: "established",
            max: self.max,
        }))
    }

    /// Established inbound connections from `key`.
    pub fn count(&self, key: &IpKey) -> u32 {
        self.established.count(key)
    }

    /// Inbound connections from `key` still in their handshake.
    pub fn pending(&self, key: &IpKey) -> u32 {
        self.pending.count(key)
    }
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(key) = self.key(remote) else {
            return Ok(());
        };
        self.check(key)?;
        if self.pending.count(&key) >= self.max_pending {
            return Err(ConnectionDenied::new(TooManyFromIp {
                key,
                what: "pending",
                max: self.max_pending,
            }));
        }
        self.pending.add(connection, key);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(connection);
        if let Some(key) = self.key(remote) {
            // Checked again: several may have passed the pending check at once.
            self.check(key)?;
            self.established.add(connection, key);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.established.remove(connection_id);
            }
            // A handshake that failed or timed out, or a connection another behaviour
            // refused (pending or just established): the swarm reports each as a listen
            // failure and never as closed.
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.pending.remove(connection_id);
                self.established.remove(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Which addresses have had a connection refused already, so an event loop logs the first
/// refusal of each at warn and the rest at debug: a flood is one line, not one per attempt.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: HashSet<Option<IpKey>>,
}

impl RefusalLog {
    /// Whether this is the first refusal of a connection from `remote` (relayed and non-IP
    /// addresses count as one).
    pub fn first(&mut self, remote: &Multiaddr) -> bool {
        if self.seen.len() >= MAX_REMEMBERED_REFUSALS {
            self.seen.clear();
        }
        self.seen.insert(IpKey::of(remote))
    }
}

#[cfg(test)]
mod tests {
    use libp2p::swarm::ListenError;

    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_by_64_and_relayed_connections_not_at_all() {
        let a = IpKey::of(&addr("/ip6/2001:db8:1:2::5/tcp/1")).unwrap();
        let b = IpKey::of(&addr("/ip6/2001:db8:1:2:ffff::9/udp/1/quic-v1")).unwrap();
        let c = IpKey::of(&addr("/ip6/2001:db8:1:3::5/tcp/1")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = IpKey::of(&addr("/ip6/::ffff:198.51.100.7/tcp/1")).unwrap();
        assert_eq!(mapped, IpKey::V4("198.51.100.7".parse().unwrap()));
        let relayed = addr(
            "/ip4/198.51.100.1/tcp/7000/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        assert_eq!(IpKey::of(&relayed), None);
    }

    #[test]
    fn an_address_past_its_limit_is_refused_until_one_of_its_connections_closes() {
        let mut per_ip = PerIp::new(2, true);
        let local = addr("/ip4/0.0.0.0/tcp/1");
        let attacker = addr("/ip4/198.51.100.7/tcp/4000");
        let other = addr("/ip4/198.51.100.8/tcp/4000");
        let ids: Vec<ConnectionId> = (0..4).map(ConnectionId::new_unchecked).collect();
        for id in &ids[..2] {
            assert!(per_ip
                .handle_established_inbound_connection(*id, PeerId::random(), &local, &attacker)
                .is_ok());
        }
        assert!(per_ip
            .handle_pending_inbound_connection(ids[2], &local, &attacker)
            .is_err());
        assert!(per_ip
            .handle_pending_inbound_connection(ids[2], &local, &other)
            .is_ok());
        per_ip.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: PeerId::random(),
            connection_id: ids[0],
            endpoint: &libp2p::core::ConnectedPoint::Listener {
                local_addr: local.clone(),
                send_back_addr: attacker.clone(),
            },
            cause: None,
            remaining_established: 0,
        }));
        assert!(per_ip
            .handle_pending_inbound_connection(ids[3], &local, &attacker)
            .is_ok());
        assert_eq!(per_ip.count(&IpKey::of(&attacker).unwrap()), 1);
    }

    #[test]
    fn this_machine_is_exempt_but_other_loopback_addresses_are_not() {
        let mut per_ip = PerIp::new(1, true);
        let local = addr("/ip4/127.0.0.1/tcp/1");
        for i in 0..3 {
            let id = ConnectionId::new_unchecked(i);
            assert!(per_ip
                .handle_established_inbound_connection(id, PeerId::random(), &local, &local)
                .is_ok());
        }
        let other = addr("/ip4/127.0.0.2/tcp/9");
        let id = ConnectionId::new_unchecked(9);
        assert!(per_ip
            .handle_established_inbound_connection(id, PeerId::random(), &local, &other)
            .is_ok());
        assert!(per_ip
            .handle_pending_inbound_connection(ConnectionId::new_unchecked(10), &local, &other)
            .is_err());
    }

    #[test]
    fn handshakes_are_counted_per_address_until_they_finish_or_fail() {
        let mut per_ip = PerIp::new(16, true).with_max_pending(2);
        let local = addr("/ip4/0.0.0.0/tcp/1");
        let attacker = addr("/ip4/198.51.100.7/tcp/4000");
        let other = addr("/ip4/198.51.100.8/tcp/4000");
        let id = ConnectionId::new_unchecked;
        for i in 0..2 {
            assert!(per_ip
                .handle_pending_inbound_connection(id(i), &local, &attacker)
                .is_ok());
        }
        assert!(
            per_ip
                .handle_pending_inbound_connection(id(2), &local, &attacker)
                .is_err(),
            "a third handshake from one address is refused"
        );
        assert!(per_ip
            .handle_pending_inbound_connection(id(3), &local, &other)
            .is_ok());
        let key = IpKey::of(&attacker).unwrap();
        // One finishes, one times out: both slots free up.
        assert!(per_ip
            .handle_established_inbound_connection(id(0), PeerId::random(), &local, &attacker)
            .is_ok());
        let error = ListenError::Aborted;
        per_ip.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
            local_addr: &local,
            send_back_addr: &attacker,
            error: &error,
            connection_id: id(1),
            peer_id: None,
        }));
        assert_eq!((per_ip.pending(&key), per_ip.count(&key)), (0, 1));
        assert!(per_ip
            .handle_pending_inbound_connection(id(4), &local, &attacker)
            .is_ok());
    }

    #[test]
    fn a_refused_address_is_reported_once() {
        let mut log = RefusalLog::default();
        let a = addr("/ip4/198.51.100.7/tcp/4000");
        assert!(log.first(&a));
        assert!(!log.first(&addr("/ip4/198.51.100.7/tcp/4001")));
        assert!(log.first(&addr("/ip4/198.51.100.8/tcp/4000")));
    }
}
