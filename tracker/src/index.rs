//! The tracker's index: which peers hold which files, where to dial them, and when their
//! registrations lapse.
//!
//! [`FileIndex`] is a plain struct with no I/O and no clock: every operation that depends on
//! time takes `now`, so it is unit-tested synchronously. [`crate::Behaviour`] owns one and feeds
//! it the requests it receives.
//!
//! Against hostile peers (keys are free, so nothing is bounded per peer id alone):
//! - registrations are capped per host and per subnet of the IP the tracker observed
//!   ([`hosts`]), holdings and their name bytes are capped in all;
//! - announced addresses are kept only on the observed IP, or as circuits through this tracker;
//! - a lookup lists a random sample of holders, seeders first, at most a few per host and per
//!   subnet, so neither ground peer ids nor one host can fill the list;
//! - every reply is built within [`Limits::max_reply_bytes`];
//! - a search walks a trigram index (`names`), a bounded number of names per query, and
//!   ranks what it finds by seeding hosts, then age.
//!
//! Invariants, kept by every `pub` method:
//! - a file is in `files` iff at least one registered peer holds it;
//! - `files[id]` has `peer` as a holder iff `peers[peer].files` has `id`;
//! - `files[id].names[name]` counts the holders whose holding of `id` is `counted` under `name`,
//!   at most [`MAX_NAMES_PER_FILE`] names per file, and `names[name]` has `id` iff that count
//!   exists; a file with holders always has at least one name.

pub mod hosts;
mod names;
mod small;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use bitswarm_protocols::{
    tracker::{
        Announce, AnnouncedFile, FileRecord, FileSummary, LookupKey, Provider, Stats,
        MAX_ANNOUNCE_ADDRS, MAX_ANNOUNCE_FILES, MAX_QUERY_LEN,
    },
    ErrorCode, FileId, FileName,
};
use indexmap::IndexSet;
use libp2p::{Multiaddr, PeerId};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

pub use hosts::{Host, Origin, Prefix, MAX_ADDR_BYTES};
use names::NameIndex;
use small::{SmallMap, MAX_SIZES};

/// Default [`Limits::max_peers`].
pub const DEFAULT_MAX_PEERS: usize = 10_000;
/// Default [`Limits::max_files_per_peer`].
pub const DEFAULT_MAX_FILES_PER_PEER: usize = 4 * MAX_ANNOUNCE_FILES;
/// Default [`Limits::max_files`].
pub const DEFAULT_MAX_FILES: usize = 100_000;
/// Default [`Limits::max_lookup_results`].
pub const DEFAULT_MAX_LOOKUP_RESULTS: usize = 50;
/// Default [`Limits::max_lookup_files`].
pub const DEFAULT_MAX_LOOKUP_FILES: usize = 16;
/// Default [`Limits::max_search_results`].
pub const DEFAULT_MAX_SEARCH_RESULTS: usize = 100;
/// Default [`Limits::max_peers_per_host`]: generous, as many users can share one address
/// behind carrier-grade NAT.
pub const DEFAULT_MAX_PEERS_PER_HOST: usize = 32;
/// Default [`Limits::max_peers_per_subnet`].
pub const DEFAULT_MAX_PEERS_PER_SUBNET: usize = 128;
/// Default [`Limits::max_holdings_per_host`]: one host cannot fill the index on its own.
pub const DEFAULT_MAX_HOLDINGS_PER_HOST: usize = 16_384;
/// Default [`Limits::max_holdings_per_subnet`].
pub const DEFAULT_MAX_HOLDINGS_PER_SUBNET: usize = 65_536;
/// Default [`Limits::max_holdings`].
pub const DEFAULT_MAX_HOLDINGS: usize = 1_000_000;
/// Default [`Limits::max_name_bytes`].
pub const DEFAULT_MAX_NAME_BYTES: usize = 64 << 20;
/// Default [`Limits::max_reply_bytes`]: a quarter of what a client reads.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1 << 20;
/// Default [`Limits::lookup_per_host`].
pub const DEFAULT_LOOKUP_PER_HOST: usize = 2;
/// Default [`Limits::lookup_per_subnet`].
pub const DEFAULT_LOOKUP_PER_SUBNET: usize = 4;
/// Most files under one name that a lookup by name ranks (the work of one lookup is bounded;
/// past this, a name is shared by more files than anyone can choose among).
pub const MAX_FILES_RANKED: usize = 512;
/// Most distinct names indexed for one file. Further names are kept with the holder and
/// indexed when a slot frees up.
pub const MAX_NAMES_PER_FILE: usize = 8;

/// Bounds on what the index holds and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most registered peers.
    pub max_peers: usize,
    /// Most files one peer may be registered for.
    pub max_files_per_peer: usize,
    /// Most distinct files indexed.
    pub max_files: usize,
    /// Most providers returned per file by a lookup.
    pub max_lookup_results: usize,
    /// Most files returned by a lookup by name.
    pub max_lookup_files: usize,
    /// Most files returned by a search.
    pub max_search_results: usize,
    /// Most registered peers connecting from one host (IPv4 address, IPv6 /64).
    pub max_peers_per_host: usize,
    /// Most registered peers connecting from one subnet (IPv4 /24, IPv6 /48).
    pub max_peers_per_subnet: usize,
    /// Most holdings (peer, file) in all.
    pub max_holdings: usize,
    /// Most holdings of the peers of one host.
    pub max_holdings_per_host: usize,
    /// Most holdings of the peers of one subnet.
    pub max_holdings_per_subnet: usize,
    /// Most bytes of names held in all (each holding's name counts).
    pub max_name_bytes: usize,
    /// Most encoded bytes of one lookup or search reply.
    pub max_reply_bytes: usize,
    /// Most providers of one file a lookup lists from one host.
    pub lookup_per_host: usize,
    /// Most providers of one file a lookup lists from one subnet.
    pub lookup_per_subnet: usize,
    /// Peers on this machine (`127.0.0.1`, `::1`) are not counted per host or subnet, so local
    /// swarms and tests work.
    pub exempt_localhost: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers: DEFAULT_MAX_PEERS,
            max_files_per_peer: DEFAULT_MAX_FILES_PER_PEER,
            max_files: DEFAULT_MAX_FILES,
            max_lookup_results: DEFAULT_MAX_LOOKUP_RESULTS,
            max_lookup_files: DEFAULT_MAX_LOOKUP_FILES,
            max_search_results: DEFAULT_MAX_SEARCH_RESULTS,
            max_peers_per_host: DEFAULT_MAX_PEERS_PER_HOST,
            max_peers_per_subnet: DEFAULT_MAX_PEERS_PER_SUBNET,
            max_holdings: DEFAULT_MAX_HOLDINGS,
            max_holdings_per_host: DEFAULT_MAX_HOLDINGS_PER_HOST,
            max_holdings_per_subnet: DEFAULT_MAX_HOLDINGS_PER_SUBNET,
            max_name_bytes: DEFAULT_MAX_NAME_BYTES,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            lookup_per_host: DEFAULT_LOOKUP_PER_HOST,
            lookup_per_subnet: DEFAULT_LOOKUP_PER_SUBNET,
            exempt_localhost: true,
        }
    }
}

/// Why the index refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// One announce carried more than [`MAX_ANNOUNCE_FILES`] files.
    #[error("announce carries {0} files, more than {MAX_ANNOUNCE_FILES}")]
    TooManyFiles(usize),
    /// One announce carried more than [`MAX_ANNOUNCE_ADDRS`] addresses.
    #[error("announce carries {0} addresses, more than {MAX_ANNOUNCE_ADDRS}")]
    TooManyAddrs(usize),
    /// A search query longer than [`MAX_QUERY_LEN`] bytes.
    #[error("query of {0} bytes is longer than {MAX_QUERY_LEN}")]
    QueryTooLong(usize),
    /// [`Limits::max_peers`] peers are registered already.
    #[error("limit of {0} registered peers reached")]
    PeerLimit(usize),
    /// The peer's host or subnet has as many registered peers as it may.
    #[error("limit of {0} registered peers from one {1} reached")]
    HostLimit(usize, &'static str),
    /// [`Limits::max_holdings`] or [`Limits::max_name_bytes`] would be passed.
    #[error("the index is full ({0})")]
    IndexFull(&'static str),

    /// The announce would register the peer for more than [`Limits::max_files_per_peer`] files.
    #[error("limit of {0} files per peer reached")]
    PeerFileLimit(usize),
    /// The announce would index more than [`Limits::max_files`] files.
    #[error("limit of {0} indexed files reached")]
    FileLimit(usize),
    /// An unannounce of a file the peer is not registered for.
    #[error("file {0} is not registered for this peer")]
    NotHeld(FileId),
}

impl IndexError {
    /// The wire code sent back to the requester.
    pub fn code(&self) -> ErrorCode {
        match self {
            IndexError::TooManyFiles(_)
            | IndexError::TooManyAddrs(_)
            | IndexError::QueryTooLong(_) => ErrorCode::BadRequest,
            IndexError::PeerLimit(_)
            | IndexError::HostLimit(..)
            | IndexError::IndexFull(_)
            | IndexError::PeerFileLimit(_)
            | IndexError::FileLimit(_) => ErrorCode::LimitReached,
            IndexError::NotHeld(_) => ErrorCode::NotFound,
        }
    }
}

/// What an accepted announce changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// The peer was not registered before.
    pub new_peer: bool,
    /// Files the peer is registered for now.
    pub files: usize,
    /// Announced addresses dropped (not on the observed IP, too long, a name, ...).
    pub dropped_addrs: usize,
    /// Announced files dropped for a name with control characters.
    pub dropped_files: usize,
}

/// One file a peer holds, as that peer announced it.
#[derive(Debug)]
struct Holding {
    /// The name this peer shares the file under.
    name: FileName,
    /// Whether `name` is counted in the file's names (false while the file has
    /// [`MAX_NAMES_PER_FILE`] other names).
    counted: bool,
    /// The size this peer announced. Sizes are advisory (a downloader verifies the manifest,
    /// whose tree shape fixes the size), so the index reports what most holders say rather than
    /// letting the first announcer's claim lock out everyone else.
    size: u64,
    /// Whether `size` got a vote (false when the file had [`MAX_SIZES`] other sizes), so
    /// that leaving takes back only a vote that was given.
    voted: bool,
}

#[derive(Debug)]
struct PeerEntry {
    /// At most [`MAX_ANNOUNCE_ADDRS`], each checked by [`hosts::admit_addrs`].
    addrs: Vec<Multiaddr>,
    /// Where it connects from; `None` when not counted (this machine).
    host: Option<Host>,
    files: HashMap<FileId, Holding>,
    /// `None`: the TTL is too large to represent, the registration never lapses.
    expires: Option<Instant>,
}

#[derive(Debug)]
struct FileEntry {
    /// Name -> number of holders whose holding counts under it; never 0.
    names: SmallMap<FileName, usize>,
    /// Holders with every piece (indexed, for sampling in O(1) per pick).
    seeders: IndexSet<PeerId>,
    /// Holders with some pieces.
    leechers: IndexSet<PeerId>,
    /// Seeders per counted host; with `local_seeders`, how many distinct hosts seed it.
    seeder_hosts: HashMap<Prefix, usize>,
    /// Seeders on uncounted hosts (each counts as its own).
    local_seeders: usize,
    /// When it was first announced (older files rank first among equals).
    since: Instant,
    /// Announced size -> holders announcing it (at most [`MAX_SIZES`] sizes).
    sizes: SmallMap<u64, usize>,
}

impl FileEntry {
    fn holders(&self) -> impl Iterator<Item = (&PeerId, bool)> {
        self.seeders
            .iter()
            .map(|p| (p, true))
            .chain(self.leechers.iter().map(|p| (p, false)))
    }

    fn holder_count(&self) -> usize {
        self.seeders.len() + self.leechers.len()
    }

    /// Distinct hosts holding every piece.
    fn seeding_hosts(&self) -> usize {
        self.seeder_hosts.len() + self.local_seeders
    }

    fn count_seeder(&mut self, host: Option<Host>, add: bool) {
        match host {
            None if add => self.local_seeders += 1,
            None => self.local_seeders = self.local_seeders.saturating_sub(1),
            Some(h) if add => *self.seeder_hosts.entry(h.ip).or_default() += 1,
            Some(h) => {
                if let Some(n) = self.seeder_hosts.get_mut(&h.ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.seeder_hosts.remove(&h.ip);
                    }
                }
            }
        }
    }

    /// Records `peer` as a holder (`complete` or not), replacing an earlier state.
    fn set_holder(&mut self, peer: PeerId, complete: bool, host: Option<Host>) {
        let was_seeder = self.seeders.contains(&peer);
        if was_seeder == complete && (complete || self.leechers.contains(&peer)) {
            return;
        }
        self.remove_holder(&peer, host);
        if complete {
            self.seeders.insert(peer);
            self.count_seeder(host, true);
        } else {
            self.leechers.insert(peer);
        }
    }

    /// Counts one more holder announcing `size`; false when it could not be counted (the
    /// file has [`MAX_SIZES`] other sizes).
    fn vote(&mut self, size: u64) -> bool {
        if let Some(n) = self.sizes.get_mut(&size) {
            *n += 1;
            return true;
        }
        if self.sizes.len() >= MAX_SIZES {
            return false;
        }
        self.sizes.insert(size, 1);
        true
    }

    /// Takes back a vote for `size` given by [`FileEntry::vote`].
    fn unvote(&mut self, size: u64) {
        let emptied = self.sizes.get_mut(&size).is_some_and(|n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
        if emptied {
            self.sizes.remove(&size);
        }
    }

    /// The size most holders announced (the smallest among equally common ones).
    fn shown_size(&self) -> u64 {
        self.sizes
            .iter()
            .max_by_key(|(size, n)| (**n, std::cmp::Reverse(**size)))
            .map_or(0, |(size, _)| *size)
    }

    fn remove_holder(&mut self, peer: &PeerId, host: Option<Host>) {
        if self.seeders.swap_remove(peer) {
            self.count_seeder(host, false);
        }
        self.leechers.swap_remove(peer);
    }
}

/// The tracker's registrations: peers, the files they hold, and a name index.
#[derive(Debug)]
pub struct FileIndex {
    limits: Limits,
    ttl: Duration,
    /// The tracker's own id: circuit addresses through it are kept.
    local: PeerId,
    peers: HashMap<PeerId, PeerEntry>,
    files: HashMap<FileId, FileEntry>,
    names: NameIndex,
    /// Registered peers per host and per subnet prefix.
    hosts: HashMap<Prefix, usize>,
    /// Holdings of the peers per host and per subnet prefix.
    host_holdings: HashMap<Prefix, usize>,
    /// Holdings in all, and the bytes of their names.
    holdings: usize,
    name_bytes: usize,
    /// Picks lookup samples.
    rng: StdRng,
}

impl FileIndex {
    /// An empty index of the tracker `local`, whose registrations lapse `ttl` after their last
    /// announce. `seed` drives the sampling of lookups (fixed in tests, random in a tracker).
    pub fn new(limits: Limits, ttl: Duration, local: PeerId, seed: u64) -> Self {
        FileIndex {
            limits,
            ttl,
            local,
            peers: HashMap::new(),
            files: HashMap::new(),
            names: NameIndex::default(),
            hosts: HashMap::new(),
            host_holdings: HashMap::new(),
            holdings: 0,
            name_bytes: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The limits this index enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether `peer` is registered.
    pub fn is_registered(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Registers `peer`, seen as `origin`, (or refreshes its registration) as a holder of the
    /// announced files.
    ///
    /// Additive: files registered by earlier announces stay. The announced addresses that pass
    /// [`hosts::admit_addrs`] replace the earlier ones, the complete flag and name of a
    /// re-announced file are updated, and the registration lapses `ttl` after `now`. An empty
    /// file list registers presence only. Either the whole announce is applied or nothing is.
    ///
    /// # Errors
    /// [`IndexError::TooManyFiles`], [`IndexError::TooManyAddrs`],
    /// or one of the limit errors when the announce would pass a [`Limits`] bound.
    pub fn announce_from(
        &mut self,
        peer: PeerId,
        announce: Announce,
        origin: &Origin,
        now: Instant,
    ) -> Result<Announced, IndexError> {
        let Announce { files, addrs } = announce;
        if files.len() > MAX_ANNOUNCE_FILES {
            return Err(IndexError::TooManyFiles(files.len()));
        }
        if addrs.len() > MAX_ANNOUNCE_ADDRS {
            return Err(IndexError::TooManyAddrs(addrs.len()));
        }
        // A name with control characters (terminal escapes, a `\x01` to sort first) is not
        // indexed; the rest of the announce stands.
        let announced_files = files.len();
        let files: Vec<AnnouncedFile> = files
            .into_iter()
            .filter(|f| !f.name.as_str().chars().any(char::is_control))
            .collect();
        let dropped_files = announced_files - files.len();
        // One entry per id, the last one given (as applying them in order would leave), so the
        // checks below count exactly what is applied.
        let mut last: HashMap<FileId, usize> = HashMap::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            last.insert(f.id, i);
        }
        let files: Vec<AnnouncedFile> = files
            .into_iter()
            .enumerate()
            .filter(|(i, f)| last.get(&f.id) == Some(i))
            .map(|(_, f)| f)
            .collect();
        let host = Host::of(origin.remote.first().copied(), self.limits.exempt_localhost);
        let known = self.peers.get(&peer);
        let moved = known.is_some_and(|p| p.host != host);
        if known.is_none() && self.peers.len() >= self.limits.max_peers {
            return Err(IndexError::PeerLimit(self.limits.max_peers));
        }
        if let (Some(h), true) = (host, known.is_none() || moved) {
            if self.count_of(h.ip) >= self.limits.max_peers_per_host {
                return Err(IndexError::HostLimit(
                    self.limits.max_peers_per_host,
                    "host",
                ));
            }
            if self.count_of(h.net) >= self.limits.max_peers_per_subnet {
                return Err(IndexError::HostLimit(
                    self.limits.max_peers_per_subnet,
                    "subnet",
                ));
            }
        }
        // Check everything before changing anything.
        let (mut new_for_peer, mut new_in_index) = (0, 0);
        let mut bytes_delta: isize = 0;
        for f in &files {
            let before = known.and_then(|p| p.files.get(&f.id));
            if before.is_none() {
                new_for_peer += 1;
            }
            let old_len = before.map_or(0, |h| h.name.as_str().len());
            bytes_delta += f.name.as_str().len() as isize - old_len as isize;
            if !self.files.contains_key(&f.id) {
                new_in_index += 1;
            }
        }
        let held = known.map_or(0, |p| p.files.len());
        if held + new_for_peer > self.limits.max_files_per_peer {
            return Err(IndexError::PeerFileLimit(self.limits.max_files_per_peer));
        }
        // Only what an announce adds is checked against the totals: a refresh that adds
        // nothing always passes.
        if new_in_index > 0 && self.files.len() + new_in_index > self.limits.max_files {
            return Err(IndexError::FileLimit(self.limits.max_files));
        }
        if new_for_peer > 0 && self.holdings + new_for_peer > self.limits.max_holdings {
            return Err(IndexError::IndexFull("holdings"));
        }
        if let Some(h) = host.filter(|_| new_for_peer > 0 || moved) {
            // A peer moving brings all its holdings to the new host.
            let bringing = if moved {
                held + new_for_peer
            } else {
                new_for_peer
            };
            let on = |p| self.host_holdings.get(&p).copied().unwrap_or(0);
            if on(h.ip) + bringing > self.limits.max_holdings_per_host {
                return Err(IndexError::HostLimit(
                    self.limits.max_holdings_per_host,
                    "host's holdings",
                ));
            }
            if on(h.net) + bringing > self.limits.max_holdings_per_subnet {
                return Err(IndexError::HostLimit(
                    self.limits.max_holdings_per_subnet,
                    "subnet's holdings",
                ));
            }
        }
        if bytes_delta > 0
            && self.name_bytes.saturating_add_signed(bytes_delta) > self.limits.max_name_bytes
        {
            return Err(IndexError::IndexFull("name bytes"));
        }

        let announced = addrs.len();
        let addrs = hosts::admit_addrs(addrs, origin, &self.local, &peer, MAX_ANNOUNCE_ADDRS);
        let dropped_addrs = announced - addrs.len();
        let expires = now.checked_add(self.ttl);
        let new_peer = known.is_none();
        if moved {
            // Re-counted under its new host, seeding counts included.
            self.move_host(peer, host);
        }
        if new_peer {
            self.count_host(host, true);
        }
        let entry = self.peers.entry(peer).or_insert_with(|| PeerEntry {
            addrs: Vec::new(),
            host,
            files: HashMap::new(),
            expires,
        });
        entry.addrs = addrs;
        entry.expires = expires;
        for f in files {
            self.hold(peer, f, now);
        }
        let files = self.peers.get(&peer).map_or(0, |p| p.files.len());
        Ok(Announced {
            new_peer,
            files,
            dropped_addrs,
            dropped_files,
        })
    }

    /// [`FileIndex::announce_from`] by a peer on this machine.
    #[cfg(test)]
    pub fn announce(
        &mut self,
        peer: PeerId,
        announce: Announce,
        now: Instant,
    ) -> Result<Announced, IndexError> {
        let local = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        self.announce_from(peer, announce, &Origin::new(local, local), now)
    }

    fn count_of(&self, prefix: Prefix) -> usize {
        self.hosts.get(&prefix).copied().unwrap_or(0)
    }

    fn count_host(&mut self, host: Option<Host>, add: bool) {
        let Some(h) = host else { return };
        for prefix in [h.ip, h.net] {
            if add {
                *self.hosts.entry(prefix).or_default() += 1;
            } else if let Some(n) = self.hosts.get_mut(&prefix) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.hosts.remove(&prefix);
                }
            }
        }
    }

    /// Moves a registered `peer` to `host`: host counts and the seeding counts of its files.
    fn move_host(&mut self, peer: PeerId, host: Option<Host>) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let old = std::mem::replace(&mut entry.host, host);
        let ids: Vec<FileId> = entry.files.keys().copied().collect();
        for id in ids {
            if let Some(file) = self.files.get_mut(&id) {
                if file.seeders.contains(&peer) {
                    file.count_seeder(old, false);
                    file.count_seeder(host, true);
                }
            }
        }
        self.count_host(old, false);
        self.count_host(host, true);
        let n = self.peers.get(&peer).map_or(0, |p| p.files.len());
        count_in(&mut self.host_holdings, old, n, false);
        count_in(&mut self.host_holdings, host, n, true);
    }

    /// Removes `id` from `peer`'s registrations; the peer stays registered.
    ///
    /// # Errors
    /// [`IndexError::NotHeld`] when the peer is not registered for the file.
    pub fn unannounce(&mut self, peer: PeerId, id: FileId) -> Result<(), IndexError> {
        let (host, holding) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| Some((p.host, p.files.remove(&id)?)))
            .ok_or(IndexError::NotHeld(id))?;
        self.drop_holding(peer, host, id, holding);
        Ok(())
    }

    /// Removes `peer` and all its registrations. Returns whether it was registered.
    pub fn remove_peer(&mut self, peer: PeerId) -> bool {
        let Some(entry) = self.peers.remove(&peer) else {
            return false;
        };
        self.count_host(entry.host, false);
        for (id, holding) in entry.files {
            self.drop_holding(peer, entry.host, id, holding);
        }
        true
    }

    /// Removes every peer whose registration lapsed at or before `now`, and returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let lapsed: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.expires.is_some_and(|at| at <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &lapsed {
            self.remove_peer(*peer);
        }
        lapsed
    }

    /// The files matching `key`, each with up to `limit` providers (0 or more than
    /// [`Limits::max_lookup_results`] means that limit): a random sample of its holders,
    /// seeders first, at most [`Limits::lookup_per_host`] per host and
    /// [`Limits::lookup_per_subnet`] per subnet, with at least one address each. The whole
    /// reply stays within [`Limits::max_reply_bytes`].
    ///
    /// A lookup by id finds at most one file; a lookup by name finds the files shared under
    /// that exact name, up to [`Limits::max_lookup_files`], the one seeded by the most distinct
    /// hosts first (then the oldest). Nothing found is an empty list.
    pub fn lookup(&mut self, key: &LookupKey, limit: usize) -> Vec<FileRecord> {
        let per_file = capped(limit, self.limits.max_lookup_results);
        let mut budget = self.limits.max_reply_bytes.saturating_sub(REPLY_OVERHEAD);
        let ids: Vec<(FileId, Option<FileName>)> = match key {
            LookupKey::Id(id) => vec![(*id, None)],
            LookupKey::Name(name) => {
                // Bounded work: at most `MAX_FILES_RANKED` of the files under one name.
                let mut ranked: Vec<(Rank, FileId)> = self
                    .names
                    .files(name)
                    .into_iter()
                    .flatten()
                    .take(MAX_FILES_RANKED)
                    .map(|id| (self.rank(id), *id))
                    .collect();
                top(&mut ranked, self.limits.max_lookup_files);
                ranked
                    .into_iter()
                    .map(|(_, id)| (id, Some(name.clone())))
                    .collect()
            }
        };
        let mut records = Vec::new();
        for (id, name) in ids {
            match self.record(id, name, per_file, &mut budget) {
                Some(record) => records.push(record),
                None if budget == 0 => break,
                None => {}
            }
        }
        records
    }

    /// Sort key: most seeding hosts first, then the oldest.
    fn rank(&self, id: &FileId) -> Rank {
        let file = self.files.get(id);
        (
            std::cmp::Reverse(file.map_or(0, FileEntry::seeding_hosts)),
            file.map(|f| f.since),
        )
    }

    /// Files with a name containing `query` (case-insensitive; an empty query matches every
    /// file), ranked by seeding hosts, then age, at most `limit` (0 or more than
    /// [`Limits::max_search_results`] means that limit) and [`Limits::max_reply_bytes`]. A
    /// file appears once, under the first name that matches. The work is bounded (see
    /// `names`): on a very large index a common query may miss some matches.
    ///
    /// # Errors
    /// [`IndexError::QueryTooLong`] past [`MAX_QUERY_LEN`] bytes.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<FileSummary>, IndexError> {
        if query.len() > MAX_QUERY_LEN {
            return Err(IndexError::QueryTooLong(query.len()));
        }
        let max = capped(limit, self.limits.max_search_results);
        let needle = query.to_lowercase();
        let mut seen = HashSet::new();
        // Each hit's rank computed once; only the best `max` are sorted.
        let mut hits: Vec<(Rank, FileId, &FileName)> = Vec::new();
        // Bounded work: at most `MAX_FILES_RANKED` files in all, however many share a name.
        let mut examined = 0;
        'names: for (name, ids) in self.names.matching(&needle) {
            for id in ids {
                examined += 1;
                if examined > MAX_FILES_RANKED {
                    break 'names;
                }
                if self.files.contains_key(id) && seen.insert(*id) {
                    hits.push((self.rank(id), *id, name));
                }
            }
        }
        top(&mut hits, max);
        let mut budget = self.limits.max_reply_bytes.saturating_sub(REPLY_OVERHEAD);
        let mut found = Vec::new();
        for (_, id, name) in hits {
            let Some(file) = self.files.get(&id) else {
                continue;
            };
            let cost = SUMMARY_BYTES + name.as_str().len();
            if cost > budget {
                break;
            }
            budget -= cost;
            found.push(FileSummary {
                id,
                name: name.clone(),
                size: self.size_of(id),
                seeders: saturating_u32(file.seeders.len()),
                leechers: saturating_u32(file.leechers.len()),
            });
        }
        Ok(found)
    }

    /// Registered peers and distinct files.
    pub fn stats(&self) -> Stats {
        Stats {
            peers: u64::try_from(self.peers.len()).unwrap_or(u64::MAX),
            files: u64::try_from(self.files.len()).unwrap_or(u64::MAX),
        }
    }

    /// Records that `peer` (registered) holds `f`, replacing an earlier holding of the same id.
    fn hold(&mut self, peer: PeerId, f: AnnouncedFile, now: Instant) {
        let AnnouncedFile {
            id,
            name,
            size,
            complete,
        } = f;
        // Taken out of the peer first, so a name promotion below cannot pick it.
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let host = p.host;
        let previous = p.files.remove(&id);
        match &previous {
            Some(prev) => self.name_bytes -= prev.name.as_str().len().min(self.name_bytes),
            None => {
                self.holdings += 1;
                count_in(&mut self.host_holdings, host, 1, true);
            }
        }
        self.name_bytes += name.as_str().len();
        let file = self.files.entry(id).or_insert_with(|| FileEntry {
            names: SmallMap::default(),
            seeders: IndexSet::new(),
            leechers: IndexSet::new(),
            seeder_hosts: HashMap::new(),
            local_seeders: 0,
            since: now,
            sizes: SmallMap::default(),
        });
        file.set_holder(peer, complete, host);
        if let Some(prev) = previous.as_ref().filter(|p| p.voted) {
            file.unvote(prev.size);
        }
        let voted = file.vote(size);
        let counted = match previous {
            Some(prev) if prev.name == name => prev.counted,
            Some(prev) => {
                if prev.counted {
                    self.release_name(id, &prev.name);
                }
                self.claim_name(id, &name)
            }
            None => self.claim_name(id, &name),
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.files.insert(
                id,
                Holding {
                    name,
                    counted,
                    size,
                    voted,
                },
            );
        }
    }

    /// Removes `peer` (counted under `host`) from the holders of `id`; `holding` was already
    /// taken out of the peer.
    fn drop_holding(&mut self, peer: PeerId, host: Option<Host>, id: FileId, holding: Holding) {
        self.holdings = self.holdings.saturating_sub(1);
        count_in(&mut self.host_holdings, host, 1, false);
        self.name_bytes = self.name_bytes.saturating_sub(holding.name.as_str().len());
        let Some(file) = self.files.get_mut(&id) else {
            return;
        };
        file.remove_holder(&peer, host);
        if holding.voted {
            file.unvote(holding.size);
        }
        if file.holder_count() == 0 {
            let names: Vec<FileName> = file.names.keys().cloned().collect();
            self.files.remove(&id);
            for name in names {
                self.unindex_name(id, &name);
            }
        } else if holding.counted {
            self.release_name(id, &holding.name);
        }
    }

    /// Counts `name` for `id`; false when the file has [`MAX_NAMES_PER_FILE`] other names.
    fn claim_name(&mut self, id: FileId, name: &FileName) -> bool {
        let Some(file) = self.files.get_mut(&id) else {
            return false;
        };
        if let Some(count) = file.names.get_mut(name) {
            *count += 1;
            return true;
        }
        if file.names.len() >= MAX_NAMES_PER_FILE {
            return false;
        }
        file.names.insert(name.clone(), 1);
        self.names.add(name, id);
        true
    }

    /// Uncounts one holder's `name` for `id`; when it was the last, frees the slot for a
    /// holder whose name was not counted.
    fn release_name(&mut self, id: FileId, name: &FileName) {
        let Some(file) = self.files.get_mut(&id) else {
            return;
        };
        let Some(count) = file.names.get_mut(name) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        file.names.remove(name);
        self.unindex_name(id, name);
        let waiting: Vec<(PeerId, FileName)> = file_waiting(&self.files, &self.peers, id);
        for (peer, name) in waiting {
            if self.claim_name(id, &name) {
                if let Some(h) = self.peers.get_mut(&peer).and_then(|p| p.files.get_mut(&id)) {
                    h.counted = true;
                }
            }
        }
    }

    fn unindex_name(&mut self, id: FileId, name: &FileName) {
        self.names.remove(name, id);
    }

    /// The size most holders of `id` announced (the smallest among equally common ones), in
    /// O(1).
    fn size_of(&self, id: FileId) -> u64 {
        self.files.get(&id).map_or(0, FileEntry::shown_size)
    }

    /// The record of `id` under `name` (or its most shared name) with up to `max` sampled
    /// providers, within `budget` bytes (taken from it); `None` when the file is unknown or
    /// its record does not fit (then `budget` is left at 0).
    fn record(
        &mut self,
        id: FileId,
        name: Option<FileName>,
        max: usize,
        budget: &mut usize,
    ) -> Option<FileRecord> {
        let file = self.files.get(&id)?;
        let name = match name {
            Some(name) => name,
            None => file
                .names
                .iter()
                .max_by_key(|(_, count)| **count)
                .map(|(name, _)| name.clone())?,
        };
        let head = RECORD_BYTES + name.as_str().len();
        if head > *budget {
            *budget = 0;
            return None;
        }
        *budget -= head;
        let mut picker = Picker {
            peers: &self.peers,
            limits: &self.limits,
            per_host: HashMap::new(),
            taken: HashSet::new(),
            out: Vec::new(),
            max,
            budget,
        };
        picker.sample(&file.seeders, true, &mut self.rng);
        picker.sample(&file.leechers, false, &mut self.rng);
        let providers = picker.out;
        let seeders = saturating_u32(file.seeding_hosts());
        Some(FileRecord {
            id,
            name,
            size: self.size_of(id),
            providers,
            seeders,
        })
    }
}

/// Encoded bytes of a reply around its list, at most.
const REPLY_OVERHEAD: usize = 64;
/// Encoded bytes of a file record besides its name and providers, at most.
const RECORD_BYTES: usize = 96;
/// Encoded bytes of a provider besides its addresses, at most.
const PROVIDER_BYTES: usize = 64;
/// Encoded bytes of one address besides its bytes, at most.
const ADDR_OVERHEAD: usize = 4;
/// Encoded bytes of a search hit besides its name, at most.
const SUMMARY_BYTES: usize = 96;

/// Picks a lookup's providers: random, bounded per host and subnet and by the byte budget.
struct Picker<'a> {
    peers: &'a HashMap<PeerId, PeerEntry>,
    limits: &'a Limits,
    per_host: HashMap<Prefix, usize>,
    taken: HashSet<PeerId>,
    out: Vec<Provider>,
    max: usize,
    budget: &'a mut usize,
}

impl Picker<'_> {
    /// Adds holders from `set` (all `complete` or not) until `max`, the budget, or a bounded
    /// number of tries runs out. A small set is shuffled whole; from a large one random
    /// members are drawn, so the cost is O(max), not O(holders).
    fn sample(&mut self, set: &IndexSet<PeerId>, complete: bool, rng: &mut StdRng) {
        let want = self.max.saturating_sub(self.out.len());
        if want == 0 || set.is_empty() {
            return;
        }
        let tries = want.saturating_mul(4).saturating_add(64);
        if set.len() <= tries {
            let mut order: Vec<usize> = (0..set.len()).collect();
            order.shuffle(rng);
            for i in order {
                if !self.offer(set.get_index(i), complete) {
                    return;
                }
            }
        } else {
            for _ in 0..tries {
                let i = rng.gen_range(0..set.len());
                if !self.offer(set.get_index(i), complete) {
                    return;
                }
            }
        }
    }

    /// Considers one holder; false when the sample is complete (max or budget reached).
    fn offer(&mut self, peer: Option<&PeerId>, complete: bool) -> bool {
        if self.out.len() >= self.max || *self.budget == 0 {
            return false;
        }
        let Some(peer) = peer else { return true };
        let Some(entry) = self.peers.get(peer) else {
            return true;
        };
        if entry.addrs.is_empty() || self.taken.contains(peer) {
            return true;
        }
        if let Some(h) = entry.host {
            let on_host = self.per_host.get(&h.ip).copied().unwrap_or(0);
            let on_net = self.per_host.get(&h.net).copied().unwrap_or(0);
            if on_host >= self.limits.lookup_per_host || on_net >= self.limits.lookup_per_subnet {
                return true;
            }
        }
        let cost = PROVIDER_BYTES
            + entry
                .addrs
                .iter()
                .map(|a| a.len() + ADDR_OVERHEAD)
                .sum::<usize>();
        if cost > *self.budget {
            *self.budget = 0;
            return false;
        }
        *self.budget -= cost;
        if let Some(h) = entry.host {
            *self.per_host.entry(h.ip).or_default() += 1;
            *self.per_host.entry(h.net).or_default() += 1;
        }
        self.taken.insert(*peer);
        self.out.push(Provider {
            peer: *peer,
            addrs: entry.addrs.clone(),
            complete,
        });
        true
    }
}

/// Holders of `id` whose name is not counted, with that name.
fn file_waiting(
    files: &HashMap<FileId, FileEntry>,
    peers: &HashMap<PeerId, PeerEntry>,
    id: FileId,
) -> Vec<(PeerId, FileName)> {
    let Some(file) = files.get(&id) else {
        return Vec::new();
    };
    file.holders()
        .filter_map(|(peer, _)| {
            let h = peers.get(peer)?.files.get(&id)?;
            (!h.counted).then(|| (*peer, h.name.clone()))
        })
        .collect()
}

/// Adds (or takes) `n` to the counts of `host`'s address and subnet in `counts`.
fn count_in(counts: &mut HashMap<Prefix, usize>, host: Option<Host>, n: usize, add: bool) {
    let Some(h) = host else { return };
    if n == 0 {
        return;
    }
    for prefix in [h.ip, h.net] {
        if add {
            *counts.entry(prefix).or_default() += n;
        } else if let Some(c) = counts.get_mut(&prefix) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                counts.remove(&prefix);
            }
        }
    }
}

/// How files rank in lookups by name and in searches: most seeding hosts, then the oldest.
type Rank = (std::cmp::Reverse<usize>, Option<Instant>);

/// Keeps the `n` smallest of `items`, sorted: O(len) to select, then O(n log n).
fn top<T: Ord>(items: &mut Vec<T>, n: usize) {
    if items.len() > n {
        if n == 0 {
            items.clear();
            return;
        }
        items.select_nth_unstable(n - 1);
        items.truncate(n);
    }
    items.sort_unstable();
}

/// `limit`, where 0 or anything above `cap` means `cap`.
fn capped(limit: usize, cap: usize) -> usize {
    if limit == 0 {
        cap
    } else {
        limit.min(cap)
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
