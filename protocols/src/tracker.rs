//! Messages of the tracker protocol ([`crate::TRACKER_PROTOCOL`]), peer -> tracker.
//!
//! The tracker records every announce under the authenticated `PeerId` of the connection it
//! arrived on, so a peer can only ever announce itself: no message carries a peer id to trust.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, FileId, FileName};

/// Most files one announce may carry.
pub const MAX_ANNOUNCE_FILES: usize = 1024;
/// Most addresses a peer may announce for itself.
pub const MAX_ANNOUNCE_ADDRS: usize = 16;
/// Longest search query, in bytes.
pub const MAX_QUERY_LEN: usize = 255;

/// A request to the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Registers (or refreshes) the sender as a holder of these files, reachable at these
    /// addresses. An empty file list registers the peer's presence only.
    Announce(Announce),
    /// The sender no longer holds this file.
    Unannounce {
        /// The file.
        id: FileId,
    },
    /// Who holds a file?
    Lookup {
        /// By content id or by exact name.
        key: LookupKey,
        /// Most providers to return per file (the tracker applies its own cap too).
        limit: u32,
    },
    /// Files whose name contains the query (case-insensitive).
    Search {
        /// The query.
        query: String,
        /// Most files to return (the tracker applies its own cap too).
        limit: u32,
    },
    /// Live peer count and file count.
    Stats,
}

/// The body of [`Request::Announce`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// Files the sender holds.
    pub files: Vec<AnnouncedFile>,
    /// Addresses the sender can be dialed at.
    pub addrs: Vec<Multiaddr>,
}

/// One file in an announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedFile {
    /// Content id.
    pub id: FileId,
    /// The name it is shared under.
    pub name: FileName,
    /// Size in bytes.
    pub size: u64,
    /// Whether the sender holds every piece (a seeder) or only some (a leecher).
    pub complete: bool,
}

/// What to look a file up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LookupKey {
    /// Its content id.
    Id(FileId),
    /// Its exact name; may match several files.
    Name(FileName),
}

/// The tracker's answer: a reply, or a wire error code.
pub type Response = Result<Reply, ErrorCode>;

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The announce was recorded; announce again within `interval_secs`, the registration lapses
    /// after `ttl_secs` without one.
    Announced {
        /// Seconds until the next announce.
        interval_secs: u32,
        /// Seconds a registration lives without a new announce.
        ttl_secs: u32,
    },
    /// The file was removed from the sender's registrations.
    Unannounced,
    /// Files matching a lookup, each with its providers.
    Providers(Vec<FileRecord>),
    /// Files matching a search.
    Found(Vec<FileSummary>),
    /// Counters.
    Stats(Stats),
}

/// A file and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Content id.
    pub id: FileId,
    /// A name it is shared under.
    pub name: FileName,
    /// Size in bytes, as announced.
    pub size: u64,
    /// Peers holding it.
    pub providers: Vec<Provider>,
    /// Distinct hosts seeding it, as the tracker counts them (by observed IP, so free
    /// identities on one host count once); 0 from a tracker that does not say.
    #[serde(default)]
    pub seeders: u32,
}

/// A peer that holds a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// The peer's authenticated id.
    pub peer: PeerId,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
    /// Whether it holds every piece.
    pub complete: bool,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// Content id.
    pub id: FileId,
    /// A name it is shared under.
    pub name: FileName,
    /// Size in bytes, as announced.
    pub size: u64,
    /// Peers holding every piece.
    pub seeders: u32,
    /// Peers holding some pieces.
    pub leechers: u32,
}

/// The tracker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Live registered peers.
    pub peers: u64,
    /// Distinct files indexed.
    pub files: u64,
}
