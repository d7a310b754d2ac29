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
