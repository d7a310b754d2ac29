//! The node's composed [`Behaviour`]: one field per role, plus a slot for a user's own behaviour.

use std::time::Duration;

use std::sync::Arc;

use bitswarm_protocols::buffers::BufferPool;
use bitswarm_protocols::{
    limits, tracker_codec, TrackerCodec, TransferCodec, TRACKER_PROTOCOL, TRANSFER_PROTOCOL,
};
use libp2p::{
    autonat, dcutr, identify, identity::Keypair, ping, relay, request_response,
    request_response::ProtocolSupport, swarm::NetworkBehaviour,
};

use crate::Config;

pub use bitswarm_protocols::IDENTIFY_PROTOCOL;

/// How often a node pings the peers it is connected to.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Delay before the first reachability probe.
const AUTONAT_BOOT_DELAY: Duration = Duration::from_secs(2);
/// Delay between probes while reachability is unsettled.
const AUTONAT_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// How long one probe may take.
const AUTONAT_TIMEOUT: Duration = Duration::from_secs(60);

/// Every behaviour a node runs. `extension` is the user's own (a
/// [`libp2p::swarm::dummy::Behaviour`] by default); its events come out as
/// [`crate::Event::Extension`].
#[derive(NetworkBehaviour)]
pub struct Behaviour<E: NetworkBehaviour> {
    /// Connection limits: total, per peer, per IP, pending inbound, memory. First, so a
    /// refused connection costs the other behaviours nothing.
    pub limits: limits::Behaviour,
    /// Liveness of every connection.
    pub ping: ping::Behaviour,
    /// Exchanges listen and observed addresses.
    pub identify: identify::Behaviour,
    /// Reserves a slot at the tracker's relay while the node is not known to be reachable, and
    /// dials NAT'd peers through their relay.
    pub relay_client: relay::client::Behaviour,
    /// Upgrades a relayed connection to a direct one (hole punching).
    pub dcutr: dcutr::Behaviour,
    /// Asks the tracker whether this node is publicly reachable.
    pub autonat: autonat::Behaviour,
    /// Client side of the tracker protocol.
    pub tracker: request_response::Behaviour<TrackerCodec>,
    /// Both sides of the transfer protocol.
    pub transfer: request_response::Behaviour<TransferCodec>,
    /// The user's behaviour.
    pub extension: E,
}

impl<E: NetworkBehaviour> Behaviour<E> {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        pool: Arc<BufferPool>,
        extension: E,
    ) -> Self {
        let tracker = request_response::Behaviour::with_codec(
            tracker_codec(),
            [(TRACKER_PROTOCOL, ProtocolSupport::Outbound)],
            request_response::Config::default().with_request_timeout(config.tracker_timeout),
        );
        let transfer = request_response::Behaviour::with_codec(
            TransferCodec::new(pool),
            [(TRANSFER_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(config.max_streams),
        );
        Behaviour {
            limits: limits::Behaviour::new(config.connection_limits),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_owned(),
                key.public(),
            )),
            relay_client,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            autonat: autonat::Behaviour::new(
                key.public().to_peer_id(),
                autonat::Config {
                    // Only the tracker is asked (added as a server once connected); other
                    // peers are not trusted to judge our reachability.
                    use_connected: false,
                    boot_delay: AUTONAT_BOOT_DELAY,
                    retry_interval: AUTONAT_RETRY_INTERVAL,
                    throttle_server_period: AUTONAT_RETRY_INTERVAL,
                    // A probe of a NAT'd node waits for the tracker's dial-backs to time out
                    // (10 s each, one address after another).
                    timeout: AUTONAT_TIMEOUT,
                    ..autonat::Config::default()
                },
            ),
            tracker,
            transfer,
            extension,
        }
    }
}
