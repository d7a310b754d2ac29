//! The production swarm: TCP + Noise + Yamux and QUIC (+ DNS for `host:port` addresses), and
//! the relay client transport for circuits through the tracker.

use std::sync::Arc;

use bitswarm_protocols::buffers::BufferPool;
use libp2p::{noise, swarm::NetworkBehaviour, tcp, yamux, Swarm, SwarmBuilder};

use crate::{behaviour::Behaviour, Config, Error};

/// Builds the node's swarm from its config and the user's extension behaviour.
pub(crate) fn build<E: NetworkBehaviour>(
    config: &Config,
    pool: Arc<BufferPool>,
    extension: E,
) -> Result<Swarm<Behaviour<E>>, Error> {
    let transport_err = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport_err(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| transport_err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| transport_err(&e))?
        .with_behaviour(|key, relay| Behaviour::new(key, relay, config, pool, extension))
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}
