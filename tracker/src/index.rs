//! The tracker's index: which peers hold which files, where to dial them, and when their
//! registrations lapse.
//!
//! [`FileIndex`] is a plain struct with no I/O and no clock: every operation that depends on
//! time takes `now`, so it is unit-tested synchronously. [`crate::Behaviour`] owns one and feeds
//! it the requests it receives.
//!
//! Invariants, kept by every `pub` method:
//! - a file is in `files` iff at least one registered peer holds it;
//! - `files[id].holders` has `peer` iff `peers[peer].files` has `id`;
//! - `files[id].names[name]` counts the holders whose holding of `id` is `counted` under `name`,
//!   at most [`MAX_NAMES_PER_FILE`] names per file, and `names[name]` has `id` iff that count
//!   exists; a file with holders always has at least one name.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use bitswarm_protocols::{
    tracker::{
        Announce, AnnouncedFile, FileRecord, FileSummary, LookupKey, Provider, Stats,
        MAX_ANNOUNCE_ADDRS, MAX_ANNOUNCE_FILES, MAX_QUERY_LEN,
    },
    ErrorCode, FileId, FileName,
};
use libp2p::{Multiaddr, PeerId};

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
            IndexError::PeerLimit(_) | IndexError::PeerFileLimit(_) | IndexError::FileLimit(_) => {
                ErrorCode::LimitReached
            }
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
}

#[derive(Debug)]
struct PeerEntry {
    /// At most [`MAX_ANNOUNCE_ADDRS`].
    addrs: Vec<Multiaddr>,
    files: HashMap<FileId, Holding>,
    /// `None`: the TTL is too large to represent, the registration never lapses.
    expires: Option<Instant>,
}

#[derive(Debug)]
struct FileEntry {
    /// Name -> number of holders whose holding counts under it; never 0.
    names: BTreeMap<FileName, usize>,
    /// Holder -> whether it holds every piece.
    holders: BTreeMap<PeerId, bool>,
}

#[derive(Debug)]
struct NameEntry {
    /// The name in lower case, for case-insensitive search.
    lower: String,
    /// Files that count this name; never empty.
    files: BTreeSet<FileId>,
}

/// The tracker's registrations: peers, the files they hold, and a name index.
#[derive(Debug)]
pub struct FileIndex {
    limits: Limits,
    ttl: Duration,
    peers: HashMap<PeerId, PeerEntry>,
    files: HashMap<FileId, FileEntry>,
    names: BTreeMap<FileName, NameEntry>,
}

impl FileIndex {
    /// An empty index whose registrations lapse `ttl` after their last announce.
    pub fn new(limits: Limits, ttl: Duration) -> Self {
        FileIndex {
            limits,
            ttl,
            peers: HashMap::new(),
            files: HashMap::new(),
            names: BTreeMap::new(),
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

    /// Registers `peer` (or refreshes its registration) as a holder of the announced files.
    ///
    /// Additive: files registered by earlier announces stay. The announced addresses replace
    /// the earlier ones, the complete flag and name of a re-announced file are updated, and the
    /// registration lapses `ttl` after `now`. An empty file list registers presence only.
    /// Either the whole announce is applied or nothing is.
    ///
    /// # Errors
    /// [`IndexError::TooManyFiles`], [`IndexError::TooManyAddrs`],
    /// or one of the limit errors when the announce would pass a [`Limits`] bound.
    pub fn announce(
        &mut self,
        peer: PeerId,
        announce: Announce,
        now: Instant,
    ) -> Result<Announced, IndexError> {
        let Announce { files, addrs } = announce;
        if files.len() > MAX_ANNOUNCE_FILES {
            return Err(IndexError::TooManyFiles(files.len()));
        }
        if addrs.len() > MAX_ANNOUNCE_ADDRS {
            return Err(IndexError::TooManyAddrs(addrs.len()));
        }
        let known = self.peers.get(&peer);
        if known.is_none() && self.peers.len() >= self.limits.max_peers {
            return Err(IndexError::PeerLimit(self.limits.max_peers));
        }
        // Check everything before changing anything.
        let mut seen = HashSet::with_capacity(files.len());
        let (mut new_for_peer, mut new_in_index) = (0, 0);
        for f in &files {
            if seen.insert(f.id) {
                if !known.is_some_and(|p| p.files.contains_key(&f.id)) {
                    new_for_peer += 1;
                }
                if !self.files.contains_key(&f.id) {
                    new_in_index += 1;
                }
            }
        }
        let held = known.map_or(0, |p| p.files.len());
        if held + new_for_peer > self.limits.max_files_per_peer {
            return Err(IndexError::PeerFileLimit(self.limits.max_files_per_peer));
        }
        if self.files.len() + new_in_index > self.limits.max_files {
            return Err(IndexError::FileLimit(self.limits.max_files));
        }

        let expires = now.checked_add(self.ttl);
        let new_peer = known.is_none();
        let entry = self.peers.entry(peer).or_insert_with(|| PeerEntry {
            addrs: Vec::new(),
            files: HashMap::new(),
            expires,
        });
        entry.addrs = addrs;
        entry.expires = expires;
        for f in files {
            self.hold(peer, f);
        }
        let files = self.peers.get(&peer).map_or(0, |p| p.files.len());
        Ok(Announced { new_peer, files })
    }

    /// Removes `id` from `peer`'s registrations; the peer stays registered.
    ///
    /// # Errors
    /// [`IndexError::NotHeld`] when the peer is not registered for the file.
    pub fn unannounce(&mut self, peer: PeerId, id: FileId) -> Result<(), IndexError> {
        let holding = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.files.remove(&id))
            .ok_or(IndexError::NotHeld(id))?;
        self.drop_holding(peer, id, holding);
        Ok(())
    }

    /// Removes `peer` and all its registrations. Returns whether it was registered.
    pub fn remove_peer(&mut self, peer: PeerId) -> bool {
        let Some(entry) = self.peers.remove(&peer) else {
            return false;
        };
        for (id, holding) in entry.files {
            self.drop_holding(peer, id, holding);
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
    /// [`Limits::max_lookup_results`] means that limit), seeders first.
    ///
    /// A lookup by id finds at most one file; a lookup by name finds every file shared under
    /// that exact name, up to [`Limits::max_lookup_files`]. Nothing found is an empty list.
    pub fn lookup(&self, key: &LookupKey, limit: usize) -> Vec<FileRecord> {
        let per_file = capped(limit, self.limits.max_lookup_results);
        match key {
            LookupKey::Id(id) => self.record(*id, None, per_file).into_iter().collect(),
            LookupKey::Name(name) => self.names.get(name).map_or_else(Vec::new, |entry| {
                entry
                    .files
                    .iter()
                    .filter_map(|id| self.record(*id, Some(name), per_file))
                    .take(self.limits.max_lookup_files)
                    .collect()
            }),
        }
    }

    /// Files with a name containing `query` (case-insensitive; an empty query matches every
    /// file), in name order, at most `limit` (0 or more than [`Limits::max_search_results`]
    /// means that limit). A file appears once, under the first name that matches.
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
        let mut hits = Vec::new();
        let matching = self.names.iter().filter(|(_, e)| e.lower.contains(&needle));
        'names: for (name, entry) in matching {
            for id in &entry.files {
                if hits.len() >= max {
                    break 'names;
                }
                let Some(file) = self.files.get(id) else {
                    continue;
                };
                if seen.insert(*id) {
                    let seeders = file.holders.values().filter(|c| **c).count();
                    let leechers = file.holders.len() - seeders;
                    hits.push(FileSummary {
                        id: *id,
                        name: name.clone(),
                        size: self.size_of(*id),
                        seeders: saturating_u32(seeders),
                        leechers: saturating_u32(leechers),
                    });
                }
            }
        }
        Ok(hits)
    }

    /// Registered peers and distinct files.
    pub fn stats(&self) -> Stats {
        Stats {
            peers: u64::try_from(self.peers.len()).unwrap_or(u64::MAX),
            files: u64::try_from(self.files.len()).unwrap_or(u64::MAX),
        }
    }

    /// Records that `peer` (registered) holds `f`, replacing an earlier holding of the same id.
    fn hold(&mut self, peer: PeerId, f: AnnouncedFile) {
        let AnnouncedFile {
            id,
            name,
            size,
            complete,
        } = f;
        // Taken out of the peer first, so a name promotion below cannot pick it.
        let previous = self.peers.get_mut(&peer).and_then(|p| p.files.remove(&id));
        let file = self.files.entry(id).or_insert_with(|| FileEntry {
            names: BTreeMap::new(),
            holders: BTreeMap::new(),
        });
        file.holders.insert(peer, complete);
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
                },
            );
        }
    }

    /// Removes `peer` from the holders of `id`; `holding` was already taken out of the peer.
    fn drop_holding(&mut self, peer: PeerId, id: FileId, holding: Holding) {
        let Some(file) = self.files.get_mut(&id) else {
            return;
        };
        file.holders.remove(&peer);
        if file.holders.is_empty() {
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
        self.names
            .entry(name.clone())
            .or_insert_with(|| NameEntry {
                lower: name.as_str().to_lowercase(),
                files: BTreeSet::new(),
            })
            .files
            .insert(id);
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
        if let Some(entry) = self.names.get_mut(name) {
            entry.files.remove(&id);
            if entry.files.is_empty() {
                self.names.remove(name);
            }
        }
    }

    /// The record of `id` under `name` (or its most shared name) with `max` providers.
    /// The size most holders of `id` announced (the smallest among equally common ones).
    fn size_of(&self, id: FileId) -> u64 {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for peer in self
            .files
            .get(&id)
            .into_iter()
            .flat_map(|f| f.holders.keys())
        {
            if let Some(h) = self.peers.get(peer).and_then(|p| p.files.get(&id)) {
                *counts.entry(h.size).or_default() += 1;
            }
        }
        let best = counts.values().copied().max().unwrap_or(0);
        counts
            .into_iter()
            .find(|(_, n)| *n == best)
            .map_or(0, |(size, _)| size)
    }

    fn record(&self, id: FileId, name: Option<&FileName>, max: usize) -> Option<FileRecord> {
        let file = self.files.get(&id)?;
        let name = match name {
            Some(name) => name.clone(),
            None => file
                .names
                .iter()
                .max_by_key(|(_, count)| **count)
                .map(|(name, _)| name.clone())?,
        };
        let (seeders, leechers): (Vec<_>, Vec<_>) = file.holders.iter().partition(|(_, c)| **c);
        let providers = seeders
            .into_iter()
            .chain(leechers)
            .filter_map(|(peer, complete)| {
                Some(Provider {
                    peer: *peer,
                    addrs: self.peers.get(peer)?.addrs.clone(),
                    complete: *complete,
                })
            })
            .take(max)
            .collect();
        Some(FileRecord {
            id,
            name,
            size: self.size_of(id),
            providers,
        })
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
    file.holders
        .keys()
        .filter_map(|peer| {
            let h = peers.get(peer)?.files.get(&id)?;
            (!h.counted).then(|| (*peer, h.name.clone()))
        })
        .collect()
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
