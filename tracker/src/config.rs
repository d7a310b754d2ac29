//! The tracker's configuration: what to listen on, its identity, timing and limits.
//!
//! Pub fields with [`Default`], to be filled in with `..Default::default()`; the defaults are
//! the `DEFAULT_*` consts of this module and of [`crate::index`].

use std::{net::Ipv4Addr, path::Path, time::Duration};

use bitswarm_protocols::keyfile;
pub use bitswarm_protocols::limits::ConnectionLimits;
use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr};

use crate::{Limits, RateLimits, Result};

/// Default TCP port: the prototype's.
pub const DEFAULT_PORT: u16 = 7000;
/// Default [`Config::announce_interval`].
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// Default [`Config::ttl`]: three announce intervals.
pub const DEFAULT_TTL: Duration = Duration::from_secs(90);
/// Default [`Config::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);
/// Default [`Config::ping_timeout`].
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Default [`Config::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The default listen address, `/ip4/0.0.0.0/tcp/7000`: every interface, [`DEFAULT_PORT`].
/// Relay limits: the libp2p defaults, enough to coordinate a hole punch, not to carry a file.
pub const DEFAULT_RELAY_CIRCUIT_BYTES: u64 = 128 * 1024;
/// Default longest life of a relayed circuit.
pub const DEFAULT_RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(120);
/// Longest life of a circuit when the tracker relays file data.
pub const DATA_RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Bytes one circuit may carry when the tracker relays file data.
pub const DATA_RELAY_CIRCUIT_BYTES: u64 = 1 << 30;
/// Default most circuits one peer may open per hour (0 is no rate limit).
pub const DEFAULT_RELAY_CIRCUITS_PER_HOUR: u32 = 120;
/// Most circuits one peer may open per hour when the tracker relays file data.
pub const DATA_RELAY_CIRCUITS_PER_HOUR: u32 = 16;
/// Default most circuits per peer.
pub const DEFAULT_RELAY_CIRCUITS_PER_PEER: usize = 4;
/// Default most circuits in all.
pub const DEFAULT_RELAY_MAX_CIRCUITS: usize = 64;
/// Default most reservations in all.
pub const DEFAULT_RELAY_MAX_RESERVATIONS: usize = 256;

/// What the tracker's relay (circuit relay v2) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Bytes one circuit may carry, both directions together; 0 is unlimited.
    pub max_circuit_bytes: u64,
    /// Longest life of one circuit (at most `u32::MAX` seconds).
    pub max_circuit_duration: Duration,
    /// Most circuits one peer may have open.
    pub max_circuits_per_peer: usize,
    /// Most circuits in all.
    pub max_circuits: usize,
    /// Most reservations in all.
    pub max_reservations: usize,
    /// Most circuits one peer may open per hour; 0 is no limit. With the byte limit per
    /// circuit this is each peer's relayed-byte budget per hour, and `max_circuits` times the
    /// byte limit bounds what the relay carries at once.
    pub circuits_per_peer_per_hour: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_circuit_bytes: DEFAULT_RELAY_CIRCUIT_BYTES,
            max_circuit_duration: DEFAULT_RELAY_CIRCUIT_DURATION,
            max_circuits_per_peer: DEFAULT_RELAY_CIRCUITS_PER_PEER,
            max_circuits: DEFAULT_RELAY_MAX_CIRCUITS,
            max_reservations: DEFAULT_RELAY_MAX_RESERVATIONS,
            circuits_per_peer_per_hour: DEFAULT_RELAY_CIRCUITS_PER_HOUR,
        }
    }
}

impl RelayLimits {
    /// Limits under which file data may go through the relay: 1 GiB per circuit, circuits
    /// living a day, 16 circuits per peer per hour (a budget of 16 GiB per peer per hour, and
    /// at most `max_circuits` GiB in flight).
    pub fn carrying_data(self) -> Self {
        RelayLimits {
            max_circuit_bytes: DATA_RELAY_CIRCUIT_BYTES,
            max_circuit_duration: DATA_RELAY_CIRCUIT_DURATION,
            circuits_per_peer_per_hour: DATA_RELAY_CIRCUITS_PER_HOUR,
            ..self
        }
    }
}

/// The default listen address: every IPv4 interface, port [`DEFAULT_PORT`].
pub fn default_listen_addr() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::UNSPECIFIED))
        .with(Protocol::Tcp(DEFAULT_PORT))
}

/// How to run a tracker.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on; port 0 picks a free port (see [`crate::Tracker::listen_addrs`]).
    pub listen_addrs: Vec<Multiaddr>,
    /// The tracker's identity. The default is a fresh throw-away key.
    pub keypair: Keypair,
    /// How often peers are told to re-announce.
    pub announce_interval: Duration,
    /// How long a registration lives without a re-announce. Keep it above
    /// `announce_interval`, or live peers lapse between announces.
    pub ttl: Duration,
    /// How long an idle connection stays open. The default is the TTL, so the connection of a
    /// peer that re-announces every interval stays open and its closing means the peer left.
    pub idle_connection_timeout: Duration,
    /// How often connected peers are pinged.
    pub ping_interval: Duration,
    /// How long a ping may take before the connection is closed as dead.
    pub ping_timeout: Duration,
    /// How long the tracker waits to read a request and answer it.
    pub request_timeout: Duration,
    /// Bounds on the index.
    pub limits: Limits,
    /// How fast one peer, and one host, may make requests.
    pub rate_limits: RateLimits,
    /// Most bytes of answers one host may leave unread before its requests are refused.
    pub max_unread_per_host: usize,
    /// Most bytes of unread answers in all.
    pub max_unread_total: usize,
    /// Connection limits (defaults: [`ConnectionLimits::tracker`]).
    pub connection_limits: ConnectionLimits,
    /// Also listen on QUIC, on the port of each TCP listen address.
    pub quic: bool,
    /// The tracker's public addresses. When empty, its listen addresses on a specific IP
    /// (not `0.0.0.0` or `::`) are taken as public. A relay offers relaying only with one.
    pub external_addrs: Vec<Multiaddr>,
    /// What the relay allows.
    pub relay: RelayLimits,
    /// Answer AutoNAT probes of peers seen at non-global addresses (a LAN, a test lab). Off by
    /// default: a public AutoNAT server must not be made to dial private networks.
    pub autonat_private_ips: bool,
    /// The span the tracker's event loop runs in.
    pub root_span: tracing::Span,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_addrs: vec![default_listen_addr()],
            keypair: Keypair::generate_ed25519(),
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            ttl: DEFAULT_TTL,
            idle_connection_timeout: DEFAULT_TTL,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            max_unread_per_host: crate::replies::DEFAULT_MAX_HOST_BYTES,
            max_unread_total: crate::replies::DEFAULT_MAX_TOTAL_BYTES,
            connection_limits: ConnectionLimits::tracker(),
            quic: true,
            external_addrs: Vec::new(),
            relay: RelayLimits::default(),
            autonat_private_ips: false,
            root_span: tracing::info_span!("tracker"),
        }
    }
}

impl Config {
    /// Uses the key in `path`, creating it (mode 0600) when the file does not exist.
    ///
    /// # Errors
    /// [`crate::Error::Key`] when the file cannot be read, created or decoded.
    pub fn with_key_file(mut self, path: &Path) -> Result<Self> {
        self.keypair = keyfile::load_or_create(path)?;
        Ok(self)
    }

    /// Sets the TTL and the idle connection timeout together, as the defaults pair them.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.idle_connection_timeout = ttl;
        self
    }
}
