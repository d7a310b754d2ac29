//! Where peers connect from, as the tracker observed it, and what they may announce about
//! their own addresses.
//!
//! Keys cost nothing, so the index never counts by peer id alone: registrations, and the
//! providers one lookup lists, are bounded per [`Prefix`] of the observed IP (an IPv4 address or
//! IPv6 /64) and per subnet (an IPv4 /24 or IPv6 /48). Announced addresses are kept only when
//! they are on an IP the tracker saw the peer connect from, or are circuits through this
//! tracker, so the tracker never hands out a victim's address.

use std::net::IpAddr;

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};

/// Longest announced address kept, in bytes (`/ip6/.../udp/.../quic-v1/p2p/<id>/p2p-circuit`
/// is about 90).
pub const MAX_ADDR_BYTES: usize = 128;

/// How the tracker sees one announcing peer: the IPs of its direct connections (remote side)
/// and the tracker's own IPs those connections arrived on (local side).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The peer's IPs, as observed; the first decides which host it counts under.
    pub remote: Vec<IpAddr>,
    /// The tracker's IPs the peer's connections arrived on (the prefix of a circuit address
    /// through this tracker).
    pub local: Vec<IpAddr>,
}

impl Origin {
    /// A peer seen at `remote`, connected to the tracker's `local`.
    pub fn new(remote: IpAddr, local: IpAddr) -> Self {
        Origin {
            remote: vec![remote],
            local: vec![local],
        }
    }
}

/// A masked IP: what registrations and lookup slots are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    /// An IPv4 address masked to `.1` bits.
    V4(u32, u8),
    /// An IPv6 address masked to `.1` bits.
    V6(u128, u8),
}

impl Prefix {
    fn of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> Prefix {
        match ip {
            IpAddr::V4(v4) => Prefix::V4(mask32(u32::from(v4), v4_bits), v4_bits),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Prefix::V4(mask32(u32::from(v4), v4_bits), v4_bits),
                None => Prefix::V6(mask128(u128::from(v6), v6_bits), v6_bits),
            },
        }
    }
}

fn mask32(x: u32, bits: u8) -> u32 {
    if bits == 0 {
        return 0;
    }
    let shift = 32 - u32::from(bits.min(32));
    (x >> shift) << shift
}

fn mask128(x: u128, bits: u8) -> u128 {
    if bits == 0 {
        return 0;
    }
    let shift = 128 - u32::from(bits.min(128));
    (x >> shift) << shift
}

/// The two prefixes a peer counts under: its host and its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Host {
    /// IPv4 /32 or IPv6 /64.
    pub ip: Prefix,
    /// IPv4 /24 or IPv6 /48.
    pub net: Prefix,
}

impl Host {
    /// The host of a peer seen at `ip`; `None` when it is not counted (this machine, with
    /// `exempt_localhost`). A peer seen nowhere counts as one shared unknown host.
    pub fn of(ip: Option<IpAddr>, exempt_localhost: bool) -> Option<Host> {
        let Some(ip) = ip else {
            // Distinct keys for the host and the subnet, so an unknown peer counts once in each.
            return Some(Host {
                ip: Prefix::V4(0, 0),
                net: Prefix::V6(0, 0),
            });
        };
        if exempt_localhost && is_localhost(ip) {
            return None;
        }
        Some(Host {
            ip: Prefix::of(ip, 32, 64),
            net: Prefix::of(ip, 24, 48),
        })
    }
}

/// `127.0.0.1` or `::1` (other loopback addresses count as any other host, so tests can play
/// several hosts on one machine).
fn is_localhost(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == std::net::Ipv6Addr::LOCALHOST
                || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
        }
    }
}

/// The announced addresses worth keeping for a peer seen as `origin` on a tracker whose id is
/// `tracker`: at most `max`, each at most [`MAX_ADDR_BYTES`], deduplicated, either
/// - direct: starting with an IP the peer connected from, over TCP or QUIC, or
/// - relayed: a circuit through this tracker (`<tracker ip>/.../p2p/<tracker>/p2p-circuit`).
///
/// Names (`/dns`), other IPs, and anything after the peer's own `/p2p` are dropped.
pub fn admit_addrs(
    addrs: Vec<Multiaddr>,
    origin: &Origin,
    tracker: &PeerId,
    peer: &PeerId,
    max: usize,
) -> Vec<Multiaddr> {
    let mut kept: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        if kept.len() >= max {
            break;
        }
        if addr.len() <= MAX_ADDR_BYTES
            && admissible(&addr, origin, tracker, peer)
            && !kept.contains(&addr)
        {
            kept.push(addr);
        }
    }
    kept
}

fn admissible(addr: &Multiaddr, origin: &Origin, tracker: &PeerId, peer: &PeerId) -> bool {
    let mut parts = addr.iter();
    let ip = match parts.next() {
        Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
        Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
        _ => return false,
    };
    let transport_ok = match parts.next() {
        Some(Protocol::Tcp(port)) => port != 0,
        Some(Protocol::Udp(port)) => port != 0 && matches!(parts.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    if !transport_ok {
        return false;
    }
    let rest: Vec<Protocol<'_>> = parts.collect();
    match rest.as_slice() {
        [] => origin.remote.contains(&ip),
        [Protocol::P2p(id)] => id == peer && origin.remote.contains(&ip),
        [Protocol::P2p(relay), Protocol::P2pCircuit] => relay == tracker && through_us(ip, origin),
        [Protocol::P2p(relay), Protocol::P2pCircuit, Protocol::P2p(id)] => {
            relay == tracker && id == peer && through_us(ip, origin)
        }
        _ => false,
    }
}

/// Whether `ip` is one the peer reached this tracker on (a listener on an unspecified address
/// reports the concrete local address of each connection).
fn through_us(ip: IpAddr, origin: &Origin) -> bool {
    origin.local.iter().any(|l| *l == ip || l.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_addresses_on_the_observed_ip_or_circuits_through_us_are_kept() {
        let tracker = PeerId::random();
        let peer = PeerId::random();
        let origin = Origin::new(
            "198.51.100.7".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
        );
        let announced = vec![
            addr("/ip4/198.51.100.7/tcp/4001"),
            addr("/ip4/198.51.100.7/udp/4001/quic-v1"),
            addr(&format!("/ip4/198.51.100.7/tcp/4002/p2p/{peer}")),
            addr(&format!(
                "/ip4/203.0.113.1/tcp/7000/p2p/{tracker}/p2p-circuit"
            )),
            // A victim's address, a name, another peer's id, another relay, port 0, a dup.
            addr("/ip4/192.0.2.99/tcp/80"),
            addr(&format!("/dns4/{}/tcp/1", "a".repeat(60))),
            addr(&format!(
                "/ip4/198.51.100.7/tcp/4003/p2p/{}",
                PeerId::random()
            )),
            addr(&format!(
                "/ip4/203.0.113.1/tcp/7000/p2p/{}/p2p-circuit",
                PeerId::random()
            )),
            addr(&format!(
                "/ip4/192.0.2.99/tcp/7000/p2p/{tracker}/p2p-circuit"
            )),
            addr("/ip4/198.51.100.7/tcp/0"),
            addr("/ip4/198.51.100.7/tcp/4001"),
        ];
        let kept = admit_addrs(announced.clone(), &origin, &tracker, &peer, 16);
        assert_eq!(kept, announced[..4].to_vec());
        assert_eq!(admit_addrs(announced, &origin, &tracker, &peer, 2).len(), 2);
    }

    #[test]
    fn hosts_are_ipv4_addresses_or_ipv6_64s_in_24s_or_48s_and_this_machine_is_exempt() {
        let a = Host::of(Some("198.51.100.7".parse().unwrap()), true).unwrap();
        let b = Host::of(Some("198.51.100.8".parse().unwrap()), true).unwrap();
        assert_ne!(a.ip, b.ip);
        assert_eq!(a.net, b.net);
        let c = Host::of(Some("2001:db8:1:2::5".parse().unwrap()), true).unwrap();
        let d = Host::of(Some("2001:db8:1:2:ffff::9".parse().unwrap()), true).unwrap();
        let e = Host::of(Some("2001:db8:1:3::5".parse().unwrap()), true).unwrap();
        assert_eq!(c.ip, d.ip);
        assert_ne!(c.ip, e.ip);
        assert_eq!(c.net, e.net);
        let mapped = Host::of(Some("::ffff:198.51.100.7".parse().unwrap()), true).unwrap();
        assert_eq!(mapped, a);
        assert_eq!(Host::of(Some("127.0.0.1".parse().unwrap()), true), None);
        assert!(Host::of(Some("127.0.0.1".parse().unwrap()), false).is_some());
        assert!(Host::of(Some("127.0.0.2".parse().unwrap()), true).is_some());
    }
}
