//! How this node is connected to each peer: directly, through a hole punched by DCUtR, or
//! through a relay circuit; and whether a connection may carry file data.
//!
//! A relay that limits its circuits to a few hundred KiB (the libp2p default) is there to
//! coordinate hole punching, not to carry pieces: a piece request on such a circuit would
//! exhaust it and kill the connection. Pieces therefore go only over connections that
//! [`Connections::data_path`] names.

use std::{collections::HashMap, fmt};

use libp2p::{core::ConnectedPoint, multiaddr::Protocol, swarm::ConnectionId, Multiaddr, PeerId};
use serde::Serialize;

/// A relay whose circuits carry fewer bytes than this is for hole punching only.
pub const MIN_RELAY_DATA_BYTES: u64 = 64 * 1024 * 1024;

/// The transport under a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP (Noise, Yamux).
    Tcp,
    /// QUIC.
    Quic,
    /// Anything else (an extension's transport).
    Other,
}

/// How pieces reach us from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "transport", rename_all = "kebab-case")]
pub enum DataPath {
    /// A connection one side dialed directly.
    Direct(Transport),
    /// A direct connection opened by hole punching (DCUtR) from a relayed one.
    HolePunched(Transport),
    /// Through a relay circuit.
    Relayed,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
            Transport::Other => "other",
        })
    }
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataPath::Direct(t) => write!(f, "direct ({t})"),
            DataPath::HolePunched(t) => write!(f, "hole-punched ({t})"),
            DataPath::Relayed => f.write_str("relayed"),
        }
    }
}

/// The relay peer of a circuit address (`.../p2p/RELAY/p2p-circuit/...`), if it is one.
pub(crate) fn circuit_relay(addr: &Multiaddr) -> Option<Option<PeerId>> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return Some(relay),
            _ => {}
        }
    }
    None
}

/// A peer's addresses without the QUIC ones of hosts it also has a TCP address for.
///
/// A dial races all addresses and keeps the first connection; on loopback and LANs QUIC tends
/// to win, yet costs about twice the CPU per byte of TCP with Noise and Yamux on these machines.
/// QUIC stays for hosts reachable only by QUIC and for relayed (circuit) addresses; hole
/// punching over QUIC does not need the peer's QUIC addresses.
pub(crate) fn prefer_tcp(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    fn host(a: &Multiaddr) -> Option<Protocol<'_>> {
        a.iter().next()
    }
    let tcp_hosts: Vec<Protocol<'static>> = addrs
        .iter()
        .filter(|a| circuit_relay(a).is_none() && transport_of(a) == Transport::Tcp)
        .filter_map(|a| host(a).map(Protocol::acquire))
        .collect();
    addrs
        .into_iter()
        .filter(|a| {
            circuit_relay(a).is_some()
                || transport_of(a) != Transport::Quic
                || !host(a).is_some_and(|h| tcp_hosts.contains(&h.acquire()))
        })
        .collect()
}

fn transport_of(addr: &Multiaddr) -> Transport {
    for p in addr.iter() {
        match p {
            Protocol::QuicV1 | Protocol::Quic => return Transport::Quic,
            Protocol::Tcp(_) => return Transport::Tcp,
            _ => {}
        }
    }
    Transport::Other
}

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    path: DataPath,
    /// The relay, for a relayed connection (when its address names it).
    relay: Option<PeerId>,
}

/// Every live connection's path, and what each relay allows through.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    peers: HashMap<PeerId, Vec<Conn>>,
    /// Bytes a circuit through this relay may carry (`None`: no limit).
    relay_limits: HashMap<PeerId, Option<u64>>,
}

impl Connections {
    /// A connection is up. A direct one to a peer we are connected to through a relay is the
    /// fruit of DCUtR even when DCUtR names another connection: with QUIC both sides dial, and
    /// the connection that wins may be the other side's (inbound here).
    pub(crate) fn established(&mut self, peer: PeerId, id: ConnectionId, point: &ConnectedPoint) {
        let relayed_now = self
            .peers
            .get(&peer)
            .is_some_and(|conns| conns.iter().any(|c| c.path == DataPath::Relayed));
        // An inbound circuit's remote address is only `/p2p/SRC`; the circuit shows in the
        // local address (`.../p2p/RELAY/p2p-circuit`).
        let (circuit, remote) = match point {
            ConnectedPoint::Dialer { address, .. } => (circuit_relay(address), address),
            ConnectedPoint::Listener {
                local_addr,
                send_back_addr,
            } => (circuit_relay(local_addr), send_back_addr),
        };
        let (path, relay) = match circuit {
            Some(relay) => (DataPath::Relayed, relay),
            None if relayed_now => (DataPath::HolePunched(transport_of(remote)), None),
            None => (DataPath::Direct(transport_of(remote)), None),
        };
        self.peers
            .entry(peer)
            .or_default()
            .push(Conn { id, path, relay });
    }

    pub(crate) fn closed(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(conns) = self.peers.get_mut(&peer) {
            conns.retain(|c| c.id != id);
            if conns.is_empty() {
                self.peers.remove(&peer);
            }
        }
    }

    /// DCUtR opened `id` to `peer`.
    pub(crate) fn hole_punched(&mut self, peer: PeerId, id: ConnectionId) {
        // The swarm reports the connection before DCUtR does; a connection DCUtR names that
        // is unknown here was closed already.
        if let Some(c) = self
            .peers
            .get_mut(&peer)
            .and_then(|conns| conns.iter_mut().find(|c| c.id == id))
        {
            if let DataPath::Direct(t) = c.path {
                c.path = DataPath::HolePunched(t);
            }
        }
    }

    /// The relayed connections to `peer` when it also has a direct one (the caller closes
    /// them, so requests use the direct one).
    pub(crate) fn relayed_if_direct(&self, peer: &PeerId) -> Vec<ConnectionId> {
        let direct = self
            .peers
            .get(peer)
            .is_some_and(|conns| conns.iter().any(|c| c.path != DataPath::Relayed));
        if direct {
            self.relayed(peer)
        } else {
            Vec::new()
        }
    }

    /// A circuit through `relay` was opened with this byte limit (`Some(0)` is unlimited).
    pub(crate) fn relay_limit(&mut self, relay: PeerId, data_in_bytes: Option<u64>) {
        self.relay_limits
            .insert(relay, data_in_bytes.filter(|&bytes| bytes > 0));
    }

    /// The byte limit of circuits through `relay`, when known and limited.
    pub(crate) fn relay_limit_of(&self, relay: &PeerId) -> Option<u64> {
        self.relay_limits.get(relay).copied().flatten()
    }

    fn carries_data(&self, c: &Conn) -> bool {
        match c.path {
            DataPath::Relayed => c
                .relay
                .and_then(|r| self.relay_limits.get(&r))
                .is_some_and(|limit| limit.is_none_or(|bytes| bytes >= MIN_RELAY_DATA_BYTES)),
            _ => true,
        }
    }

    /// The relayed connections to `peer`.
    pub(crate) fn relayed(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.peers
            .get(peer)
            .map(|conns| {
                conns
                    .iter()
                    .filter(|c| c.path == DataPath::Relayed)
                    .map(|c| c.id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every peer with at least one connection.
    pub(crate) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The best connection to `peer` for pieces: direct or hole-punched first, then a relay
    /// that carries data. `None` when not connected, or only through hole-punching relays.
    pub(crate) fn data_path(&self, peer: &PeerId) -> Option<DataPath> {
        let conns = self.peers.get(peer)?;
        conns
            .iter()
            .find(|c| c.path != DataPath::Relayed)
            .or_else(|| conns.iter().find(|c| self.carries_data(c)))
            .map(|c| c.path)
    }

    /// Connected to `peer` only through relays that do not carry data: the relay through which
    /// (for the error message), if so.
    pub(crate) fn only_signalling_relay(&self, peer: &PeerId) -> Option<Option<PeerId>> {
        let conns = self.peers.get(peer)?;
        if conns
            .iter()
            .any(|c| c.path != DataPath::Relayed || self.carries_data(c))
        {
            return None;
        }
        conns.first().map(|c| c.relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn dialer(address: Multiaddr) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address,
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        }
    }

    fn circuit(relay: PeerId, dst: PeerId) -> Multiaddr {
        addr("/ip4/198.18.0.10/tcp/7000")
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(dst))
    }

    #[test]
    fn direct_connections_carry_data() {
        let mut c = Connections::default();
        let peer = PeerId::random();
        let id = ConnectionId::new_unchecked(1);
        assert_eq!(c.data_path(&peer), None);
        c.established(peer, id, &dialer(addr("/ip4/127.0.0.1/udp/4001/quic-v1")));
        assert_eq!(c.data_path(&peer), Some(DataPath::Direct(Transport::Quic)));
        c.closed(peer, id);
        assert_eq!(c.data_path(&peer), None);
        assert!(!c.is_connected(&peer));
    }

    #[test]
    fn a_limited_relay_carries_no_data_until_the_hole_is_punched() {
        let mut c = Connections::default();
        let (peer, relay) = (PeerId::random(), PeerId::random());
        let relayed = ConnectionId::new_unchecked(1);
        c.established(peer, relayed, &dialer(circuit(relay, peer)));
        // Limit not known yet: not trusted with data.
        assert_eq!(c.data_path(&peer), None);
        assert_eq!(c.only_signalling_relay(&peer), Some(Some(relay)));
        c.relay_limit(relay, Some(128 * 1024));
        assert_eq!(c.data_path(&peer), None);
        assert_eq!(c.relay_limit_of(&relay), Some(128 * 1024));

        // DCUtR reports before the swarm does.
        let direct = ConnectionId::new_unchecked(2);
        c.hole_punched(peer, direct);
        assert!(c.relayed_if_direct(&peer).is_empty());
        c.established(peer, direct, &dialer(addr("/ip4/198.18.0.2/tcp/4001")));
        assert_eq!(c.relayed_if_direct(&peer), vec![relayed]);
        assert_eq!(
            c.data_path(&peer),
            Some(DataPath::HolePunched(Transport::Tcp))
        );
        assert_eq!(c.only_signalling_relay(&peer), None);
    }

    #[test]
    fn a_direct_connection_next_to_a_relayed_one_is_a_hole_punch() {
        let mut c = Connections::default();
        let (peer, relay) = (PeerId::random(), PeerId::random());
        c.established(
            peer,
            ConnectionId::new_unchecked(1),
            &dialer(circuit(relay, peer)),
        );
        // The other side's QUIC dial won: an inbound connection DCUtR did not name.
        c.established(
            peer,
            ConnectionId::new_unchecked(2),
            &ConnectedPoint::Listener {
                local_addr: addr("/ip4/198.19.2.10/udp/4001/quic-v1"),
                send_back_addr: addr("/ip4/198.18.0.2/udp/4001/quic-v1"),
            },
        );
        assert_eq!(
            c.data_path(&peer),
            Some(DataPath::HolePunched(Transport::Quic))
        );
    }

    #[test]
    fn hole_punch_reported_after_the_connection() {
        let mut c = Connections::default();
        let peer = PeerId::random();
        let direct = ConnectionId::new_unchecked(7);
        c.established(
            peer,
            direct,
            &dialer(addr("/ip4/198.18.0.2/udp/4001/quic-v1")),
        );
        c.hole_punched(peer, direct);
        assert_eq!(
            c.data_path(&peer),
            Some(DataPath::HolePunched(Transport::Quic))
        );
    }

    #[test]
    fn an_inbound_circuit_is_relayed() {
        let mut c = Connections::default();
        let (peer, relay, me) = (PeerId::random(), PeerId::random(), PeerId::random());
        let inbound = ConnectedPoint::Listener {
            local_addr: circuit(relay, me),
            send_back_addr: Multiaddr::empty().with(Protocol::P2p(peer)),
        };
        c.established(peer, ConnectionId::new_unchecked(1), &inbound);
        assert_eq!(c.data_path(&peer), None);
        assert_eq!(c.only_signalling_relay(&peer), Some(Some(relay)));
    }

    #[test]
    fn an_unlimited_relay_carries_data() {
        let mut c = Connections::default();
        let (peer, relay) = (PeerId::random(), PeerId::random());
        c.established(
            peer,
            ConnectionId::new_unchecked(1),
            &dialer(circuit(relay, peer)),
        );
        c.relay_limit(relay, Some(0));
        assert_eq!(c.data_path(&peer), Some(DataPath::Relayed));
        assert_eq!(c.relay_limit_of(&relay), None);
        c.relay_limit(relay, Some(MIN_RELAY_DATA_BYTES));
        assert_eq!(c.data_path(&peer), Some(DataPath::Relayed));
    }

    #[test]
    fn tcp_is_preferred_over_quic_on_the_same_host() {
        let relay = PeerId::random();
        let circuit = addr("/ip4/198.18.0.10/udp/7000/quic-v1")
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        let addrs = vec![
            addr("/ip4/127.0.0.1/udp/4001/quic-v1"),
            addr("/ip4/127.0.0.1/tcp/4001"),
            addr("/ip4/10.0.0.1/udp/4001/quic-v1"),
            circuit.clone(),
        ];
        assert_eq!(
            prefer_tcp(addrs),
            vec![
                addr("/ip4/127.0.0.1/tcp/4001"),
                addr("/ip4/10.0.0.1/udp/4001/quic-v1"),
                circuit
            ]
        );
    }

    #[test]
    fn circuit_addresses_are_recognised() {
        let relay = PeerId::random();
        assert_eq!(
            circuit_relay(&circuit(relay, PeerId::random())),
            Some(Some(relay))
        );
        assert_eq!(circuit_relay(&addr("/ip4/1.2.3.4/tcp/1")), None);
    }
}
