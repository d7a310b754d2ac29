//! Driving the user's extension behaviour: [`NodeContext`], the node's facts and commands an
//! extension closure sees ([`crate::Client::with_extension`]), and the type-erased closure the
//! command carries to the event loop.
//!
//! The closure runs inside the event loop, on the extension behaviour the swarm owns, between
//! two events: nothing else of the node runs meanwhile. The context borrows the loop's own
//! state (no copy per call); what it cannot do while the swarm is borrowed (dialing) it queues,
//! and the loop does it right after the closure returns.

use std::{any::Any, fmt};

use bitswarm_protocols::FileId;
use libp2p::{
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId,
    },
    Multiaddr, PeerId,
};

use crate::{
    client::SharedFile,
    downloader::Downloads,
    error::{Error, Result},
    holdings::Holdings,
    paths::{Connections, DataPath},
};

/// Most dials one extension closure may queue ([`NodeContext::dial`]).
pub const MAX_EXTENSION_DIALS: usize = 64;

/// What [`ExtensionFn`] boxes: called with the extension behaviour (as `Any`) and the context.
type RunExtension = dyn FnOnce(&mut dyn Any, &mut NodeContext<'_>) + Send;

/// A closure for the extension, with the downcast and its reply inside.
pub(crate) struct ExtensionFn(pub(crate) Box<RunExtension>);

impl fmt::Debug for ExtensionFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExtensionFn")
    }
}

/// What an extension closure ([`crate::Client::with_extension`]) knows of the node and may ask
/// of it, besides its own behaviour.
///
/// It lives for one call: it borrows the event loop's state, so reading it copies nothing.
/// Everything here is as of this moment of the event loop.
pub struct NodeContext<'a> {
    pub(crate) local_peer_id: PeerId,
    pub(crate) tracker: Option<PeerId>,
    pub(crate) listen_addrs: &'a [Multiaddr],
    pub(crate) connections: &'a Connections,
    pub(crate) holdings: &'a Holdings,
    pub(crate) downloads: &'a Downloads,
    /// The type name of the node's extension, for [`Error::WrongExtension`].
    pub(crate) extension: &'static str,
    /// Dials queued by the closure; the event loop runs them after it returns.
    pub(crate) dials: Vec<DialOpts>,
}

impl fmt::Debug for NodeContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeContext")
            .field("local_peer_id", &self.local_peer_id)
            .field("tracker", &self.tracker)
            .field("dials", &self.dials.len())
            .finish_non_exhaustive()
    }
}

impl NodeContext<'_> {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The tracker's peer id, while the node is connected to it.
    pub fn tracker(&self) -> Option<PeerId> {
        self.tracker
    }

    /// The addresses this node listens on.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        self.listen_addrs
    }

    /// Every peer this node has at least one connection to (the tracker among them while
    /// connected), each once, in no particular order.
    pub fn connected_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.connections.peers()
    }

    /// Whether this node has a connection to `peer`.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connections.is_connected(peer)
    }

    /// The connection to `peer` that can carry data, and how it goes (direct, hole-punched,
    /// relayed); `None` when not connected, or only through a relay meant for hole punching.
    pub fn data_path(&self, peer: &PeerId) -> Option<DataPath> {
        self.connections.data_path(peer)
    }

    /// What this node shares: every shared directory, and every complete file held on its own
    /// account (shared, or downloaded and renamed into place); files of a shared directory are
    /// not listed on their own. In no particular order.
    pub fn shares(&self) -> impl Iterator<Item = SharedFile> + '_ {
        self.holdings.shares()
    }

    /// Whether this node serves `id`: a file (complete, including a file of a shared
    /// directory, or partly while downloading it) or a shared directory.
    pub fn holds(&self, id: &FileId) -> bool {
        self.holdings.holds(id)
    }

    /// The files this node is downloading now (once the tracker has named each).
    pub fn downloading(&self) -> impl Iterator<Item = FileId> + '_ {
        self.downloads.files()
    }

    /// The providers of `file` known to this node: only those of a download of `file` running
    /// now on this node (not dropped for bad data or failures), each once. Empty when no such
    /// download runs; ask the tracker ([`crate::Client::lookup`]) for everyone who holds it.
    pub fn providers(&self, file: &FileId) -> impl Iterator<Item = PeerId> + '_ {
        self.downloads.providers_of(file)
    }

    /// Dials `peer` at `addrs` (and at any address the node's behaviours know for it; `addrs`
    /// may be empty for a peer the node has seen) unless it is connected or being dialed
    /// already. The dial starts right after the closure returns; its outcome reaches the
    /// behaviours as usual (`FromSwarm::ConnectionEstablished` or `FromSwarm::DialFailure`,
    /// with the returned connection id).
    ///
    /// # Errors
    /// [`Error::TooManyDials`] past [`MAX_EXTENSION_DIALS`] in one call.
    pub fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<ConnectionId> {
        if self.dials.len() >= MAX_EXTENSION_DIALS {
            return Err(Error::TooManyDials {
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
