//! The node's composed [`Behaviour`]: one field per role, plus a slot for a user's own behaviour.

use std::time::Duration;

use bitswarm_protocols::{
    tracker_codec, TrackerCodec, TransferCodec, TRACKER_PROTOCOL, TRANSFER_PROTOCOL,
};
use libp2p::{
    identify, identity::Keypair, ping, request_response, request_response::ProtocolSupport,
    swarm::NetworkBehaviour,
};

use crate::Config;

/// The identify protocol version nodes and trackers speak.
pub const IDENTIFY_PROTOCOL: &str = "/bitswarm/id/1";

/// How often a node pings the peers it is connected to.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Every behaviour a node runs. `extension` is the user's own (a
/// [`libp2p::swarm::dummy::Behaviour`] by default); its events come out as
/// [`crate::Event::Extension`].
#[derive(NetworkBehaviour)]
pub struct Behaviour<E: NetworkBehaviour> {
    /// Liveness of every connection.
    pub ping: ping::Behaviour,
    /// Exchanges listen and observed addresses.
    pub identify: identify::Behaviour,
    /// Client side of the tracker protocol.
    pub tracker: request_response::Behaviour<TrackerCodec>,
    /// Both sides of the transfer protocol.
    pub transfer: request_response::Behaviour<TransferCodec>,
    /// The user's behaviour.
    pub extension: E,
}

impl<E: NetworkBehaviour> Behaviour<E> {
    pub(crate) fn new(key: &Keypair, config: &Config, extension: E) -> Self {
        let tracker = request_response::Behaviour::with_codec(
            tracker_codec(),
            [(TRACKER_PROTOCOL, ProtocolSupport::Outbound)],
            request_response::Config::default().with_request_timeout(config.tracker_timeout),
        );
        let transfer = request_response::Behaviour::with_codec(
            TransferCodec,
            [(TRANSFER_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(config.max_streams),
        );
        Behaviour {
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.to_owned(),
                key.public(),
            )),
            tracker,
            transfer,
            extension,
        }
    }
}
