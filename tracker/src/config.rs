//! The tracker's configuration: what to listen on, its identity, timing and limits.
//!
//! Pub fields with [`Default`], to be filled in with `..Default::default()`; the defaults are
//! the `DEFAULT_*` consts of this module and of [`crate::index`].

use std::{net::Ipv4Addr, path::Path, time::Duration};

use bitswarm_protocols::keyfile;
use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr};

use crate::{Limits, Result};

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
