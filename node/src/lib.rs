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
//! - `extension`: [`NodeContext`], what an extension closure sees of the node.
//!
//! # Embedding
//! A [`Client`] is all an application needs:
//! - share: [`Client::share`] a file or directory, once per path for several; list what is
//!   shared with [`Client::shares`]; stop with [`Client::unshare`];
//! - get: [`Client::get`] / [`Client::get_with`] return a [`Download`] to watch
//!   ([`Download::progress`]), wait for ([`Download::wait`]) or cancel ([`Download::cancel`],
//!   [`Client::cancel`]); [`Client::downloads`] lists the running ones with their progress;
//! - ask the tracker: [`Client::lookup`], [`Client::search`], [`Client::stats`];
//! - subscribe to events: the `mpsc::Receiver<Event>` returned by [`new`] *is* the
//!   subscription, one per node, in the order things happened (see [`Event`]).
//!
//! # Extending
//! Any libp2p [`NetworkBehaviour`] can run inside a node, beside its own protocols, so a
//! protocol of your own (or gossipsub, request-response, kad, ...) plugs in unchanged:
//! 1. write (or pick) the behaviour; compose several with `#[derive(NetworkBehaviour)]`;
//! 2. build the node with [`new_with_extension`]: the behaviour's events arrive on the event
//!    receiver as [`Event::Extension`], in order with the node's own;
//! 3. reach it while the node runs with [`Client::with_extension`]: a closure that runs on the
//!    behaviour inside the event loop, with a [`NodeContext`] holding the node's facts
//!    (connected peers, the tracker, what it shares and downloads, a download's providers) and
//!    commands (dial a peer). The closure must be quick: the event loop waits for it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bitswarm_node::{new_with_extension, Config, Event};
//! use bitswarm_protocols::parse_addr;
//! use libp2p::{
//!     request_response::{self, ProtocolSupport},
//!     swarm::NetworkBehaviour,
//!     StreamProtocol,
//! };
//!
//! /// A protocol of our own: ask a peer for a greeting.
//! #[derive(NetworkBehaviour)]
//! struct Greeter {
//!     hello: request_response::cbor::Behaviour<String, String>,
//! }
//!
//! let greeter = Greeter {
//!     hello: request_response::cbor::Behaviour::new(
//!         [(StreamProtocol::new("/example/hello/1"), ProtocolSupport::Full)],
//!         request_response::Config::default(),
//!     ),
//! };
//! let config = Config {
//!     listen_addrs: vec![parse_addr("127.0.0.1:0")?],
//!     tracker: Some(parse_addr("127.0.0.1:7000")?),
//!     ..Config::default()
//! };
//! let (client, mut events, event_loop) = new_with_extension(config, greeter)?;
//! tokio::spawn(event_loop.run());
//!
//! // Greet every peer this node is connected to (the tracker does not speak the protocol:
//! // its request fails, and that failure arrives as an event too).
//! let asked = client
//!     .with_extension(|greeter: &mut Greeter, cx| {
//!         let peers: Vec<_> = cx.connected_peers().filter(|p| Some(*p) != cx.tracker()).collect();
//!         for peer in &peers {
//!             greeter.hello.send_request(peer, "hello".to_owned());
//!         }
//!         peers.len()
//!     })
//!     .await?;
//! println!("greeted {asked} peers");
//! while let Some(event) = events.recv().await {
//!     if let Event::Extension(GreeterEvent::Hello(request_response::Event::Message {
//!         peer,
//!         message: request_response::Message::Response { response, .. },
//!         ..
//!     })) = event
//!     {
//!         println!("{peer} says {response}");
//!     }
//! }
//! # Ok(()) }
//! ```
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

#![deny(missing_docs)]

mod backoff;
mod behaviour;
mod client;
mod command;
mod config;
mod downloader;
mod error;
mod event_loop;
mod extension;
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
        Client, Download, DownloadStatus, Downloaded, GetRequest, LocalStats, Progress, SharedFile,
        Source, COLLECTION_PARALLELISM, DEFAULT_MAX_SIZE,
    },
    config::*,
    downloader::DownloadId,
    error::{Error, GetError, Result, ShareError},
    event_loop::EventLoop,
    extension::{NodeContext, MAX_EXTENSION_DIALS},
    paths::{DataPath, Transport, MIN_RELAY_DATA_BYTES},
    place::{part_name, shown, PlaceError},
};

/// Capacity of the command channel from [`Client`]s to the event loop.
pub const COMMAND_CHANNEL_SIZE: usize = 64;
/// Capacity of the event channel; when the receiver lags, further events are dropped (logged at
/// debug), never awaited: the event loop does not block on its observers.
pub const EVENT_CHANNEL_SIZE: usize = 256;

/// Something that happened in a node, as its event receiver delivers it.
///
/// The receiver returned by [`new`] / [`new_with_extension`] is the node's one subscription:
/// events arrive in the order they happened, the extension's ([`Event::Extension`]) among the
/// node's own. It holds [`EVENT_CHANNEL_SIZE`] events; when the application does not keep up,
/// further events are dropped (the node never waits for its observers), so read it promptly,
/// or drop it if you do not care. `X` is the extension behaviour's event type
/// (`NetworkBehaviour::ToSwarm`).
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
    /// A file or directory is no longer served ([`Client::unshare`]).
    Unshared {
        /// What was shared.
        file: SharedFile,
    },
    /// A download was cancelled ([`Client::cancel`]); its `.part` file is kept.
    Cancelled {
        /// The download.
        download: DownloadId,
        /// Its file, if the tracker had named it.
        file: Option<FileId>,
    },
    /// An event of the user's extension behaviour.
    Extension(X),
}

/// Builds a node with no extension behaviour. Listening starts at once; spawn
/// [`EventLoop::run`] to drive it.
///
/// Returns the [`Client`] (clone it freely), the receiver of the node's [`Event`]s (the
/// subscription to them: see [`Event`]), and the [`EventLoop`].
///
/// # Errors
/// [`Error::Transport`] or [`Error::Listen`].
pub fn new(config: Config) -> Result<(Client, mpsc::Receiver<Event>, EventLoop)> {
    new_with_extension(config, libp2p::swarm::dummy::Behaviour)
}

/// Builds a node whose swarm also runs `extension` (see the crate docs, "Extending"); its
/// events arrive on the event receiver as [`Event::Extension`], and
/// [`Client::with_extension`] reaches it while the node runs.
///
/// # Errors
/// [`Error::Transport`] or [`Error::Listen`].
#[allow(clippy::type_complexity)]
pub fn new_with_extension<E: NetworkBehaviour + 'static>(
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
