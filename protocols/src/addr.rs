//! Address arguments: a multiaddr, or the prototype's plain `ip:port` / `host:port`.

use std::net::SocketAddr;

use libp2p::{multiaddr::Protocol, Multiaddr};

/// An address argument that is neither a multiaddr nor `ip:port` / `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {input:?}: expected ip:port, host:port or a multiaddr like /ip4/1.2.3.4/tcp/7000 ({reason})")]
pub struct AddrError {
    /// What was given.
    pub input: String,
    /// Why it was refused.
    pub reason: &'static str,
}

/// Parses an address argument.
///
/// Accepts a multiaddr (`/ip4/1.2.3.4/tcp/7000/p2p/12D3...`), `ip:port` (`127.0.0.1:7000`,
/// `[::1]:7000`) and `host:port` (`localhost:7000`, resolved through DNS when dialed).
///
/// # Errors
/// [`AddrError`] naming the input and what is wrong with it.
pub fn parse_addr(input: &str) -> Result<Multiaddr, AddrError> {
    let err = |reason| AddrError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.starts_with('/') {
        return s.parse().map_err(|_| err("not a valid multiaddr"));
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Ok(Multiaddr::empty()
            .with(sock.ip().into())
            .with(Protocol::Tcp(sock.port())));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| err("port is not a number from 0 to 65535"))?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !valid_host {
        return Err(err("not a valid host name"));
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err("not a valid IPv4 address"));
    }
    Ok(Multiaddr::empty()
        .with(Protocol::Dns(host.to_owned().into()))
        .with(Protocol::Tcp(port)))
}

/// The TCP port of `addr`, if it has one.
pub fn tcp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    })
}

/// The QUIC address on the same IP and `port` as a TCP one: `/ip4/A/tcp/_` ->
/// `/ip4/A/udp/PORT/quic-v1`. `None` for anything but `/ip4|ip6/A/tcp/P`.
pub fn quic_twin(tcp: &Multiaddr, port: u16) -> Option<Multiaddr> {
    let mut it = tcp.iter();
    let ip = it
        .next()
        .filter(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_)))?;
    if !matches!(it.next(), Some(Protocol::Tcp(_))) || it.next().is_some() {
        return None;
    }
    Some(
        Multiaddr::empty()
            .with(ip)
            .with(Protocol::Udp(port))
            .with(Protocol::QuicV1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_listens_on_the_tcp_port() {
        let tcp: Multiaddr = "/ip4/0.0.0.0/tcp/0".parse().unwrap();
        assert_eq!(
            quic_twin(&tcp, 4001),
            Some("/ip4/0.0.0.0/udp/4001/quic-v1".parse().unwrap())
        );
        let ws: Multiaddr = "/ip4/0.0.0.0/tcp/0/ws".parse().unwrap();
        assert_eq!(quic_twin(&ws, 4001), None);
        let quic: Multiaddr = "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap();
        assert_eq!(quic_twin(&quic, 4001), None);
        assert_eq!(
            tcp_port(&"/ip4/1.2.3.4/tcp/7000".parse().unwrap()),
            Some(7000)
        );
    }

    #[test]
    fn prototype_forms_and_multiaddrs_parse() {
        assert_eq!(
            parse_addr("127.0.0.1:7000").unwrap().to_string(),
            "/ip4/127.0.0.1/tcp/7000"
        );
        assert_eq!(parse_addr("[::1]:7").unwrap().to_string(), "/ip6/::1/tcp/7");
        assert_eq!(
            parse_addr("localhost:80").unwrap().to_string(),
            "/dns/localhost/tcp/80"
        );
        assert_eq!(
            parse_addr("/ip4/1.2.3.4/tcp/1").unwrap().to_string(),
            "/ip4/1.2.3.4/tcp/1"
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_input_named() {
        for bad in [
            "",
            "127.0.0.1",
            "1.2.3.4:99999",
            "/ip4/nope",
            "bad host:1",
            ":80",
        ] {
            let e = parse_addr(bad).unwrap_err();
            assert_eq!(e.input, bad);
        }
    }
}
