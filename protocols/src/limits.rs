//! Connection limits that every bitswarm node and tracker runs: a [`Behaviour`] composing
//! libp2p's `connection_limits` (total, per peer id, pending inbound), `memory_connection_limits`
//! (no new connection while the process uses more than a set amount of memory) and [`PerIp`]
//! (established inbound connections per IP address, per /64 for IPv6), so that neither many
//! free identities nor many connections from one host can use up file descriptors or memory.
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
        dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour,
        THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
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
    /// No new connection while the process's resident memory exceeds this many bytes.
    pub max_memory_bytes: usize,
    /// Connections from this machine (`127.0.0.1`, `::1`) are not counted per IP, so local
    /// swarms and tests with many peers work; other loopback addresses count as any other.
    pub exempt_localhost: bool,
}

impl ConnectionLimits {
    /// A peer node's defaults: 512 connections, 4 per peer, 16 per IP, 64 pending inbound,
    /// 512 MiB of memory.
    pub const fn node() -> Self {
        ConnectionLimits {
            max_connections: 512,
            max_per_peer: 4,
            max_per_ip: 16,
            max_pending_incoming: 64,
            max_memory_bytes: 512 << 20,
            exempt_localhost: true,
        }
    }

    /// A tracker's defaults: 8192 connections, 4 per peer, 64 per IP (many users share an
    /// address behind carrier-grade NAT), 256 pending inbound, 2 GiB of memory.
    pub const fn tracker() -> Self {
        ConnectionLimits {
            max_connections: 8192,
            max_per_peer: 4,
            max_per_ip: 64,
            max_pending_incoming: 256,
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
            per_ip: PerIp::new(limits.max_per_ip, limits.exempt_localhost),
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
#[error("too many connections from {key} (at most {max})")]
pub struct TooManyFromIp {
    /// The address (or /64).
    pub key: IpKey,
    /// The limit.
    pub max: u32,
}

/// Established inbound connections per [`IpKey`], at most `max` each.
#[derive(Debug)]
pub struct PerIp {
    max: u32,
    exempt_localhost: bool,
    counts: HashMap<IpKey, u32>,
    connections: HashMap<ConnectionId, IpKey>,
}

impl PerIp {
    /// At most `max` established inbound connections per address.
    pub fn new(max: u32, exempt_localhost: bool) -> Self {
        PerIp {
            max,
            exempt_localhost,
            counts: HashMap::new(),
            connections: HashMap::new(),
        }
    }

    fn key(&self, remote: &Multiaddr) -> Option<IpKey> {
        IpKey::of(remote).filter(|k| !(self.exempt_localhost && k.is_localhost()))
    }

    fn check(&mut self, key: IpKey) -> Result<(), ConnectionDenied> {
        if self.counts.get(&key).copied().unwrap_or(0) < self.max {
            return Ok(());
        }
        Err(ConnectionDenied::new(TooManyFromIp { key, max: self.max }))
    }

    /// Established inbound connections from `key`.
    pub fn count(&self, key: &IpKey) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match self.key(remote) {
            Some(key) => self.check(key),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(key) = self.key(remote) {
            // Checked again: several may have passed the pending check at once.
            self.check(key)?;
            *self.counts.entry(key).or_default() += 1;
            self.connections.insert(connection, key);
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
        // A connection another behaviour refused after this one counted it is closed like any
        // other, so counting here at establishment stays balanced.
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            let Some(key) = self.connections.remove(&connection_id) else {
                return;
            };
            if let Some(n) = self.counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&key);
                }
            }
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
    fn a_refused_address_is_reported_once() {
        let mut log = RefusalLog::default();
        let a = addr("/ip4/198.51.100.7/tcp/4000");
        assert!(log.first(&a));
        assert!(!log.first(&addr("/ip4/198.51.100.7/tcp/4001")));
        assert!(log.first(&addr("/ip4/198.51.100.8/tcp/4000")));
    }
}
