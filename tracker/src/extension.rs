//! The operator's own behaviour beside the index: [`TrackerHandle`] runs closures on it inside
//! the tracker's event loop, with a [`TrackerContext`] of the tracker's facts.
//!
//! The shape is the node's (`bitswarm_node::Client::with_extension`): the extension is any
//! `NetworkBehaviour` (one of libp2p's, or a `#[derive(NetworkBehaviour)]` struct of several),
//! given to [`crate::Tracker::bind_with_extension`]; its events come out of the receiver that
//! returns, in the order the swarm produced them; a closure sent through a [`TrackerHandle`]
//! runs between two events, so it must be quick (no blocking, no waiting: start a task for
//! anything slow and send its result back with another closure).

use std::{any::Any, fmt};

use bitswarm_protocols::tracker::{FileRecord, FileSummary, LookupKey, Stats};
use libp2p::{
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId,
    },
    Multiaddr, PeerId,
};
use tokio::sync::{mpsc, oneshot};

use crate::IndexError;

/// Capacity of the channel from [`TrackerHandle`]s to the event loop.
pub const EXTENSION_CHANNEL_SIZE: usize = 64;
/// Capacity of the channel of the extension's events; when the application lags, further
/// events are dropped (logged at debug): the tracker never waits on its observers.
pub const EXTENSION_EVENT_CHANNEL_SIZE: usize = 256;
/// Most dials one closure may queue ([`TrackerContext::dial`]).
pub const MAX_EXTENSION_DIALS: usize = 64;

/// Why a closure did not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtensionError {
    /// The tracker's extension is of another type than the closure takes.
    #[error("the tracker's extension is a {actual}, not a {asked}")]
    WrongExtension {
        /// The type the closure takes.
        asked: &'static str,
        /// The tracker's extension type.
        actual: &'static str,
    },
    /// The closure panicked (the tracker keeps running; the behaviour may be left half
    /// updated).
    #[error("the extension closure panicked")]
    Panicked,
    /// The tracker stopped (or stopped before answering).
    #[error("the tracker is not running")]
    Stopped,
    /// More than [`MAX_EXTENSION_DIALS`] dials in one closure.
    #[error("more than {max} dials queued in one call")]
    TooManyDials {
        /// The bound.
        max: usize,
    },
}

/// What runs in the event loop: the extension (as `Any`, downcast inside) and the context.
type RunExtension = dyn FnOnce(&mut dyn Any, &mut TrackerContext<'_>) + Send;

/// A closure for the extension, with the downcast and its reply inside.
pub(crate) struct ExtensionFn(pub(crate) Box<RunExtension>);

impl fmt::Debug for ExtensionFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExtensionFn")
    }
}

/// A cloneable handle to a running tracker's extension. Commands keep their order.
#[derive(Debug, Clone)]
pub struct TrackerHandle {
    pub(crate) commands: mpsc::Sender<ExtensionFn>,
}

impl TrackerHandle {
    /// Runs `f` on the tracker's extension (of type `E`) inside its event loop and returns
    /// what `f` returns. `f` must be quick: the tracker serves nobody while it runs.
    ///
    /// # Errors
    /// [`ExtensionError::WrongExtension`] when the extension is not an `E` (`f` does not run),
    /// [`ExtensionError::Panicked`], [`ExtensionError::Stopped`] when the tracker is not
    /// running.
    ///
    /// # Cancel safety
    /// Dropping the future after the command was sent does not stop `f` from running; only
    /// its result is lost.
    pub async fn with_extension<E, R, F>(&self, f: F) -> Result<R, ExtensionError>
    where
        E: 'static,
        R: Send + 'static,
        F: FnOnce(&mut E, &mut TrackerContext<'_>) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run = move |ext: &mut dyn Any, ctx: &mut TrackerContext<'_>| {
            let result = match ext.downcast_mut::<E>() {
                Some(ext) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ext, ctx)))
                    .map_err(|_| {
                        // Nothing the closure asked for before it panicked is done.
                        ctx.dials.clear();
                        ExtensionError::Panicked
                    }),
                None => Err(ExtensionError::WrongExtension {
                    asked: std::any::type_name::<E>(),
                    actual: ctx.extension,
                }),
            };
            // The asker may have gone; nothing to do then.
            let _ = reply.send(result);
        };
        self.commands
            .send(ExtensionFn(Box::new(run)))
            .await
            .map_err(|_| ExtensionError::Stopped)?;
        answer.await.map_err(|_| ExtensionError::Stopped)?
    }
}

/// What an extension closure knows of the tracker and may ask of it, besides its own
/// behaviour. It borrows the tracker's state for one call; reading it copies nothing.
pub struct TrackerContext<'a> {
    pub(crate) local_peer_id: PeerId,
    pub(crate) tracker: &'a mut crate::Behaviour,
    pub(crate) extension: &'static str,
    pub(crate) dials: Vec<DialOpts>,
}

impl fmt::Debug for TrackerContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackerContext")
            .field("local_peer_id", &self.local_peer_id)
            .field("dials", &self.dials.len())
            .finish_non_exhaustive()
    }
}

impl TrackerContext<'_> {
    /// The tracker's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Peers with a direct connection to the tracker, each once, in no particular order.
    pub fn connected_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.tracker.connected_peers()
    }

    /// Whether `peer` is registered (has announced and not been evicted).
    pub fn is_registered(&self, peer: &PeerId) -> bool {
        self.tracker.index().is_registered(peer)
    }

    /// Registered peers and distinct files.
    pub fn stats(&self) -> Stats {
        self.tracker.stats()
    }

    /// Who holds `key`: a sample of at most `limit` holders per file, seeders first, as a
    /// peer's lookup gets it (without the rate limits peers have).
    pub fn lookup(&mut self, key: &LookupKey, limit: usize) -> Vec<FileRecord> {
        self.tracker.lookup(key, limit)
    }

    /// Files whose name matches `query`, as a peer's search gets them.
    ///
    /// # Errors
    /// [`IndexError`] for a query the index refuses (empty, too long).
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<FileSummary>, IndexError> {
        self.tracker.index().search(query, limit)
    }

    /// Dials `peer` at `addrs` (and any address the behaviours know) unless connected or being
    /// dialed already; the dial starts right after the closure returns.
    ///
    /// # Errors
    /// [`ExtensionError::TooManyDials`] past [`MAX_EXTENSION_DIALS`] in one call.
    pub fn dial(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<ConnectionId, ExtensionError> {
        if self.dials.len() >= MAX_EXTENSION_DIALS {
            return Err(ExtensionError::TooManyDials {
                max: MAX_EXTENSION_DIALS,
            });
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        let id = opts.connection_id();
        self.dials.push(opts);
        Ok(id)
    }
}
