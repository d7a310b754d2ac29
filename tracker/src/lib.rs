//! The bitswarm tracker: who holds which file, and whether they are still there.
//!
//! Peers announce the files they hold over the tracker protocol
//! ([`bitswarm_protocols::TRACKER_PROTOCOL`]); others look files up by id or name, search by
//! name, and ask for counters. The crate is layered:
//!
//! - [`index`]: [`FileIndex`], the registrations as a plain struct with no I/O, bounded by
//!   [`Limits`];
//! - [`behaviour`]: [`Behaviour`], a `NetworkBehaviour` answering the protocol from the index
//!   and reporting [`Event`]s, to compose into any swarm;
//! - [`server`]: [`Tracker`], the ready-made event loop (TCP + Noise + Yamux, ping, identify)
//!   that the `bitswarm-tracker` binary runs, configured by [`Config`].
//! - [`extension`]: the operator's own behaviour beside the index
//!   ([`Tracker::bind_with_extension`], driven through a [`TrackerHandle`]).
//!
//! ```no_run
//! # async fn example() -> bitswarm_tracker::Result<()> {
//! use bitswarm_tracker::{Config, Tracker};
//!
//! let config = Config {
//!     listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
//!     ..Config::default()
//! };
//! let tracker = Tracker::bind(config).await?;
//! println!("{:?}", tracker.listen_addrs());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tracker.run(shutdown).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Extending
//! Any libp2p `NetworkBehaviour` can run in the tracker beside the index, as in a node
//! (`bitswarm_node::new_with_extension`): its events arrive on the receiver
//! [`Tracker::bind_with_extension`] returns, and [`TrackerHandle::with_extension`] runs a quick
//! closure on it inside the event loop, with a [`TrackerContext`] of the tracker's facts (the
//! index, its connections) and commands (dial). Here the tracker answers a protocol of its own
//! with the number of files it indexes:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use bitswarm_tracker::{Config, Tracker, TrackerContext};
//! use libp2p::{
//!     request_response::{self, cbor, ProtocolSupport},
//!     StreamProtocol,
//! };
//!
//! type Count = cbor::Behaviour<(), u64>;
//! let count: Count = cbor::Behaviour::new(
//!     [(StreamProtocol::new("/example/count/1"), ProtocolSupport::Inbound)],
//!     request_response::Config::default(),
//! );
//! let (tracker, mut events) = Tracker::bind_with_extension(Config::default(), count).await?;
//! let handle = tracker.handle();
//! tokio::spawn(tracker.run(tokio_util::sync::CancellationToken::new()));
//! while let Some(event) = events.recv().await {
//!     if let request_response::Event::Message {
//!         message: request_response::Message::Request { channel, .. },
//!         ..
//!     } = event
//!     {
//!         handle
//!             .with_extension(move |count: &mut Count, cx: &mut TrackerContext<'_>| {
//!                 let files = cx.stats().files;
//!                 let _ = count.send_response(channel, files);
//!             })
//!             .await?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod behaviour;
pub mod config;
mod error;
pub mod extension;
pub mod index;
pub mod rate;
pub mod replies;
pub mod server;

pub use behaviour::{Banned, Behaviour, Event, EvictReason, Refusal, Registered};
pub use config::{Config, RelayLimits};
pub use error::{Error, Result};
pub use extension::{ExtensionError, TrackerContext, TrackerHandle};
pub use index::{FileIndex, IndexError, Limits};
pub use rate::RateLimits;
pub use server::Tracker;
