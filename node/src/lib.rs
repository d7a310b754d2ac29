//! A bitswarm peer node: share files and get them, verified piece by piece, from many peers at
//! once, over libp2p.
//!
//! # Layout
//! - [`new`] / [`new_with_extension`] build a node from a [`Config`] and return a [`Client`]
//!   (the cloneable handle), a receiver of [`Event`]s, and the [`EventLoop`] to spawn.
//! - `event_loop`: the single task that owns the swarm, the only code that touches it or spawns
//!   tasks; it translates swarm events, commands and finished tasks into calls on the pure core
//!   and executes the actions that come back.
//! - The pure core (no swarm, no clock, no I/O): `downloader` (downloads, providers, the piece
//!   picker), `holdings` (what this node serves and the answer to a request), `tracker_link`,
//!   `nat`, `paths` (each peer's connections) and `backoff`. `store` (hashing, pieces) and `place`
//!   (where a download lands: temporary files, locks, the final rename) hold every disk operation
//!   and run on blocking tasks.
//! - [`Behaviour`]: ping, identify, tracker client, transfer, and an `extension` slot for a
//!   behaviour of your own.
//! - [`identity`]: key files that two nodes on one machine never share.
//!
//! # Usage
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bitswarm_node::{Config, new};
//! use bitswarm_protocols::{parse_addr, tracker::LookupKey, FileName};
//!
//! let config = Config {
//!     listen_addrs: vec![parse_addr("127.0.0.1:0")?],
//!     tracker: Some(parse_addr("127.0.0.1:7000")?),
//!     ..Config::default()
//! };
//! let (client, _events, event_loop) = new(config)?;
//! tokio::spawn(event_loop.run());
//! let download = client.get(LookupKey::Name(FileName::new("movie.mkv")?), ".").await?;
//! let done = download.wait().await?;
//! println!("{} bytes at {}", done.size, done.path.display());
//! # Ok(()) }
//! ```

mod backoff;
mod behaviour;
mod client;
mod command;
mod config;
mod downloader;
mod error;
mod event_loop;
mod holdings;
pub mod identity;
mod nat;
mod paths;
mod place;
mod serving;
mod store;
mod swarm;
mod tracker_link;

use std::{convert::Infallible, sync::Arc};

use bitswarm_protocols::buffers::BufferPool;

use bitswarm_protocols::FileId;
use libp2p::{swarm::NetworkBehaviour, Multiaddr, PeerId};
use tokio::sync::mpsc;

pub use crate::{
    behaviour::{Behaviour, IDENTIFY_PROTOCOL},
    client::{
        Client, Download, Downloaded, GetRequest, LocalStats, Progress, SharedFile, Source,
        COLLECTION_PARALLELISM, DEFAULT_MAX_SIZE,
    },
    config::*,
    error::{Error, GetError, Result, ShareError},
    event_loop::EventLoop,
    paths::{DataPath, Transport, MIN_RELAY_DATA_BYTES},
    place::{part_name, shown, PlaceError},
};

/// Capacity of the command channel from [`Client`]s to the event loop.
pub const COMMAND_CHANNEL_SIZE: usize = 64;
/// Capacity of the event channel; when the receiver lags, further events are dropped (logged at
/// debug), never awaited: the event loop does not block on its observers.
pub const EVENT_CHANNEL_SIZE: usize = 256;

/// Something that happened in a node.
#[derive(Debug)]
pub enum Event<X = Infallible> {
    /// The node listens on a new address.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// The tracker answered the node's dial.
    TrackerConnected {
        /// The tracker's peer id.
        peer: PeerId,
    },
    /// A local file is being served.
    Shared {
        /// The file.
        file: SharedFile,
    },
    /// A provider was dropped for a file (bad data or failed requests).
    ProviderDropped {
        /// The file.
        file: FileId,
        /// The provider.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A download completed and was renamed into place.
    Downloaded {
        /// The file.
        file: FileId,
        /// Its path.
        path: std::path::PathBuf,
    },
    /// An event of the user's extension behaviour.
    Extension(X),
}

/// Builds a node with no extension behaviour. Listening starts at once; spawn
/// [`EventLoop::run`] to drive it.
///
/// # Errors
/// [`Error::Transport`] or [`Error::Listen`].
pub fn new(config: Config) -> Result<(Client, mpsc::Receiver<Event>, EventLoop)> {
    new_with_extension(config, libp2p::swarm::dummy::Behaviour)
}

/// Builds a node whose swarm also runs `extension`; its events arrive as
/// [`Event::Extension`].
///
/// # Errors
/// [`Error::Transport`] or [`Error::Listen`].
#[allow(clippy::type_complexity)]
pub fn new_with_extension<E: NetworkBehaviour>(
    config: Config,
    extension: E,
) -> Result<(Client, mpsc::Receiver<Event<E::ToSwarm>>, EventLoop<E>)> {
    let pool = Arc::new(BufferPool::default());
    let mut swarm = swarm::build(&config, Arc::clone(&pool), extension)?;
    let mut tcp_listeners = Vec::new();
    for addr in &config.listen_addrs {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|source| Error::Listen {
                addr: addr.clone(),
                source,
            })?;
        if addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        {
            tcp_listeners.push((id, addr.clone()));
        }
    }
    let (command_tx, command_rx) = mpsc::channel(COMMAND_CHANNEL_SIZE);
    let (event_tx, event_rx) = mpsc::channel(EVENT_CHANNEL_SIZE);
    let client = Client::new(command_tx, *swarm.local_peer_id());
    Ok((
        client,
        event_rx,
        EventLoop::new(swarm, command_rx, event_tx, config, pool, tcp_listeners),
    ))
}
