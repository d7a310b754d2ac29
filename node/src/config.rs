//! Node configuration.

use std::time::Duration;

pub use bitswarm_protocols::limits::ConnectionLimits;
use libp2p::{identity::Keypair, Multiaddr};
use tokio_util::sync::CancellationToken;

/// Requests in flight per provider at the start of a transfer.
pub const DEFAULT_WINDOW: usize = 8;
/// How long one piece or manifest request may take before it goes to another provider.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the tracker to answer a dial before commands fail.
pub const DEFAULT_TRACKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection stays open. Longer than the tracker's announce interval so the
/// tracker connection of a sharing node stays up between announces.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Disk reads serving pieces at once; more requests get [`bitswarm_protocols::ErrorCode::Busy`].
pub const DEFAULT_MAX_SERVING_READS: usize = 32;
/// Piece bytes this node may hold for responses admitted and not yet sent, over all peers.
pub const DEFAULT_MAX_SERVING_BYTES: u64 = 64 * 1024 * 1024;
/// Piece responses one peer may have admitted and not yet sent; more are answered `Busy`.
pub const DEFAULT_MAX_SERVING_PER_PEER: usize = 16;
/// Streams per connection (inbound + outbound) the transfer protocol accepts.
pub const DEFAULT_MAX_STREAMS: usize = 128;
/// Timed-out requests after which a provider is dropped for a file.
pub const DEFAULT_MAX_PROVIDER_FAILURES: u32 = 3;
/// Largest in-flight window a fast provider grows to.
pub const DEFAULT_MAX_WINDOW: usize = 32;
/// Most piece requests one download has in flight over all its providers; bounds the piece
/// bytes a download holds in memory (requests x piece size).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// How long a download waits without any provider sending data (all gone, none found yet)
/// before it fails; the `.part` file and resume record stay for a later run.
pub const DEFAULT_PROVIDER_WAIT: Duration = Duration::from_secs(30);
/// How often a running download asks the tracker for new providers.
pub const DEFAULT_RELOOKUP_INTERVAL: Duration = Duration::from_secs(3);
/// Default [`Config::holepunch_wait`].
pub const DEFAULT_HOLEPUNCH_WAIT: Duration = Duration::from_secs(20);

/// Everything a node needs to start. Build with `Config { .., ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's identity.
    pub keypair: Keypair,
    /// Addresses to listen on; `/ip4/127.0.0.1/tcp/0` picks a free port.
    pub listen_addrs: Vec<Multiaddr>,
    /// The tracker, with or without `/p2p/<id>`; without one the first connection learns it.
    pub tracker: Option<Multiaddr>,
    /// Whether to register with the tracker as a live peer on connecting (a one-shot `stats`
    /// or `search` leaves this off so it does not count itself).
    pub announce_presence: bool,
    /// Piece requests in flight per provider.
    pub window: usize,
    /// Timeout of one transfer request.
    pub request_timeout: Duration,
    /// Timeout of the dial to the tracker.
    pub tracker_timeout: Duration,
    /// Idle connection timeout.
    pub idle_timeout: Duration,
    /// Concurrent piece reads when serving.
    pub max_serving_reads: usize,
    /// Piece bytes held for responses admitted and not yet sent (a peer that does not read
    /// holds them until the request timeout, then is disconnected).
    pub max_serving_bytes: u64,
    /// Piece responses one peer may have admitted and not yet sent.
    pub max_serving_per_peer: usize,
    /// Connection limits (defaults: [`ConnectionLimits::node`]).
    pub connection_limits: ConnectionLimits,
    /// Concurrent streams per connection.
    pub max_streams: usize,
    /// Timeouts after which a provider is dropped for a file.
    pub max_provider_failures: u32,
    /// Largest per-provider window.
    pub max_window: usize,
    /// Most piece requests in flight per download, over all providers.
    pub max_in_flight: usize,
    /// How long a download waits for a provider to send data before it fails.
    pub provider_wait: Duration,
    /// How often a running download looks for new providers.
    pub relookup_interval: Duration,
    /// How long a provider reachable only through a relay that carries no file data may take
    /// to become directly connected (DCUtR) before it is dropped.
    pub holepunch_wait: Duration,
    /// Listen on QUIC too, on the same port as each TCP listen address.
    pub quic: bool,
    /// While this node is not known to be publicly reachable (AutoNAT), hold a relay
    /// reservation at the tracker and announce the circuit address, so peers behind other
    /// NATs can reach it and punch a hole.
    pub relay_reservation: bool,
    /// The span every log line of this node is recorded under.
    pub root_span: tracing::Span,
    /// Cancelling it stops the node.
    pub cancel: CancellationToken,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keypair: Keypair::generate_ed25519(),
            listen_addrs: Vec::new(),
            tracker: None,
            announce_presence: true,
            window: DEFAULT_WINDOW,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tracker_timeout: DEFAULT_TRACKER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_serving_reads: DEFAULT_MAX_SERVING_READS,
            max_serving_bytes: DEFAULT_MAX_SERVING_BYTES,
            max_serving_per_peer: DEFAULT_MAX_SERVING_PER_PEER,
            connection_limits: ConnectionLimits::node(),
            max_streams: DEFAULT_MAX_STREAMS,
            max_provider_failures: DEFAULT_MAX_PROVIDER_FAILURES,
            max_window: DEFAULT_MAX_WINDOW,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            provider_wait: DEFAULT_PROVIDER_WAIT,
            relookup_interval: DEFAULT_RELOOKUP_INTERVAL,
            holepunch_wait: DEFAULT_HOLEPUNCH_WAIT,
            quic: true,
            relay_reservation: true,
            root_span: tracing::Span::none(),
            cancel: CancellationToken::new(),
        }
    }
}
