//! Request rate limits: token buckets per peer id and per host, with time passed in.
//!
//! Each bucket holds up to `burst` tokens and refills at `per_sec`; a request takes its cost
//! ([`cost`]: a search, which walks the name index, costs more than a lookup). The
//! maps are bounded: when one is full, buckets that have refilled completely (idle peers) are
//! forgotten, and if that frees nothing the request is refused, so a flood of fresh identities
//! cannot grow them.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use crate::index::hosts::Prefix;

/// Default requests per second per peer id: a peer announces every 30 s, and a downloader
/// looks each file up every few seconds (a collection's files all at once, hence the burst).
pub const DEFAULT_PEER_RATE: f64 = 20.0;
/// Default burst per peer id.
pub const DEFAULT_PEER_BURST: f64 = 100.0;
/// Default requests per second per host (IPv4 address or IPv6 /64), all its peer ids
/// together: room for many users behind one carrier-grade NAT, not for a crowd of identities.
pub const DEFAULT_HOST_RATE: f64 = 100.0;
/// Default burst per host.
pub const DEFAULT_HOST_BURST: f64 = 300.0;
/// Default searches per second from everyone together: what the event loop can spend on them
/// (about a fifth of a core) while lookups go on.
pub const DEFAULT_SEARCH_RATE: f64 = 1000.0;
/// Tokens a search costs.
pub const SEARCH_COST: f64 = 8.0;
/// Most buckets of each kind remembered.
pub const MAX_BUCKETS: usize = 65_536;

/// How fast requests may come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Requests per second one peer id may make, sustained.
    pub peer_per_sec: f64,
    /// Requests one peer id may make at once.
    pub peer_burst: f64,
    /// Requests per second one host may make, all its peer ids together.
    pub host_per_sec: f64,
    /// Requests one host may make at once.
    pub host_burst: f64,
    /// Searches per second from everyone together (and as many at once): however many hosts
    /// a crowd has, searching cannot take the loop from lookups.
    pub searches_per_sec: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            peer_per_sec: DEFAULT_PEER_RATE,
            peer_burst: DEFAULT_PEER_BURST,
            host_per_sec: DEFAULT_HOST_RATE,
            host_burst: DEFAULT_HOST_BURST,
            searches_per_sec: DEFAULT_SEARCH_RATE,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets<K> {
    per_sec: f64,
    burst: f64,
    map: HashMap<K, Bucket>,
    /// When a full map was last swept for refilled buckets (at most once a second, so a
    /// stream of newcomers to a full map does not cost a sweep each).
    swept: Option<Instant>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    fn new(per_sec: f64, burst: f64) -> Self {
        Buckets {
            per_sec,
            burst,
            map: HashMap::new(),
            swept: None,
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + secs * self.per_sec).min(self.burst)
    }

    /// The tokens `key` has at `now`, or `None` when it has no bucket and there is no room
    /// for one (after forgetting the buckets that have refilled).
    fn tokens(&mut self, key: K, now: Instant) -> Option<f64> {
        if let Some(b) = self.map.get(&key) {
            return Some(self.level(b, now));
        }
        if self.map.len() >= MAX_BUCKETS {
            let second = std::time::Duration::from_secs(1);
            if self
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= second)
            {
                self.swept = Some(now);
                let (per_sec, burst) = (self.per_sec, self.burst);
                self.map.retain(|_, b| {
                    let secs = now.saturating_duration_since(b.at).as_secs_f64();
                    (b.tokens + secs * per_sec) < burst
                });
            }
            if self.map.len() >= MAX_BUCKETS {
                return None;
            }
        }
        Some(self.burst)
    }

    fn set(&mut self, key: K, tokens: f64, now: Instant) {
        self.map.insert(key, Bucket { tokens, at: now });
    }
}

/// Tokens a request costs: a search (a walk of up to a thousand names) eight, a lookup by
/// name (up to 16 files) two, anything else one.
pub fn cost(request: &bitswarm_protocols::tracker::Request) -> f64 {
    use bitswarm_protocols::tracker::{LookupKey, Request};
    match request {
        Request::Search { .. } => SEARCH_COST,
        Request::Lookup {
            key: LookupKey::Name(_),
            ..
        } => 2.0,
        _ => 1.0,
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// This peer id asked too often.
    Peer,
    /// Its host (all its peer ids) asked too often.
    Host,
    /// Everyone together searched too often.
    Searches,
}

/// Token buckets per peer id and per host.
#[derive(Debug)]
pub struct RateLimiter {
    peers: Buckets<PeerId>,
    hosts: Buckets<Prefix>,
    /// One bucket for all searches.
    searches: Buckets<()>,
}

impl RateLimiter {
    /// Buckets as `limits` says.
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            peers: Buckets::new(limits.peer_per_sec, limits.peer_burst),
            hosts: Buckets::new(limits.host_per_sec, limits.host_burst),
            searches: Buckets::new(limits.searches_per_sec, limits.searches_per_sec),
        }
    }

    /// Whether `peer`, connecting from `host` (`None`: not counted per host), may make a
    /// request costing `cost` tokens at `now`.
    ///
    /// # Errors
    /// Which limit it passed.
    pub fn check(
        &mut self,
        peer: PeerId,
        host: Option<Prefix>,
        cost: f64,
        now: Instant,
    ) -> Result<(), Limited> {
        // Both looked at before either is charged: a refused request costs nothing.
        let on_host = match host {
            Some(h) => Some((h, self.hosts.tokens(h, now).ok_or(Limited::Host)?)),
            None => None,
        };
        let on_peer = self.peers.tokens(peer, now).ok_or(Limited::Peer)?;
        if on_peer < cost {
            return Err(Limited::Peer);
        }
        let search = cost >= SEARCH_COST;
        let all_searches = if search {
            let tokens = self.searches.tokens((), now).ok_or(Limited::Searches)?;
            if tokens < 1.0 {
                return Err(Limited::Searches);
            }
            Some(tokens)
        } else {
            None
        };
        if let Some((h, tokens)) = on_host {
            if tokens < cost {
                return Err(Limited::Host);
            }
            self.hosts.set(h, tokens - cost, now);
        }
        if let Some(tokens) = all_searches {
            self.searches.set((), tokens - 1.0, now);
        }
        self.peers.set(peer, on_peer - cost, now);
        Ok(())
    }
}

/// Strikes a peer has before it is disconnected: refusals for rate (or unread answers) beyond
/// those given back at [`STRIKES_PER_SEC`].
pub const STRIKE_BURST: f64 = 50.0;
/// Strikes given back per second: a peer that asks no faster than this is never disconnected
/// for its own refusals, however often it is refused.
pub const STRIKES_PER_SEC: f64 = 1.0;
/// How long a disconnected peer id is refused.
pub const PEER_BAN: Duration = Duration::from_secs(60);
/// Strikes a host has, all its peer ids together, beyond those given back at
/// [`HOST_STRIKES_PER_SEC`]: a crowd of identities each asking a little counts here.
pub const HOST_STRIKE_BURST: f64 = 200.0;
/// Host strikes given back per second.
pub const HOST_STRIKES_PER_SEC: f64 = 20.0;
/// How long a host out of strikes is refused new connections, and has each of its peers
/// that is refused again disconnected.
pub const HOST_BAN: Duration = Duration::from_secs(60);

/// What a strike did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strike {
    /// Counted; the peer has strikes left (or could not be counted: the map is full).
    Counted,
    /// Disconnect the peer; its id is refused for [`PEER_BAN`]. `host_banned` when this strike
    /// put its host out of strikes: it is refused new connections for [`HOST_BAN`].
    Disconnect {
        /// Its host ran out of strikes with this one.
        host_banned: bool,
    },
}

/// Peers and hosts that keep asking past their limits: disconnected, and kept out a while.
///
/// A refused request still costs the tracker its stream (yamux, multistream-select, the
/// request-response handler, Noise framing), about what an answered one costs, so a crowd that
/// asks far past its limits takes the event loop from honest peers although every request of
/// it is refused. Each refusal is a strike on the peer and on its host. A peer out of strikes
/// is disconnected (which drops its registration) and its id refused for [`PEER_BAN`]. A host
/// out of strikes is refused new connections for [`HOST_BAN`], before any handshake, and
/// while it is, each of its peers that is refused again is disconnected; its peers that stay
/// within the limits (idle seeders behind the same NAT) keep their connections. Every map is
/// bounded by [`MAX_BUCKETS`].
#[derive(Debug)]
pub struct Bans {
    strikes: Buckets<PeerId>,
    host_strikes: Buckets<Prefix>,
    peers: Banned<PeerId>,
    hosts: Banned<Prefix>,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            strikes: Buckets::new(STRIKES_PER_SEC, STRIKE_BURST),
            host_strikes: Buckets::new(HOST_STRIKES_PER_SEC, HOST_STRIKE_BURST),
            peers: Banned::default(),
            hosts: Banned::default(),
        }
    }
}

impl Bans {
    /// Counts a refused request of `peer`, connected from `host` (`None`: not counted per
    /// host), at `now`.
    pub fn strike(&mut self, peer: PeerId, host: Option<Prefix>, now: Instant) -> Strike {
        if let Some(h) = host {
            if self.hosts.holds(&h, now) {
                return self.disconnect(peer, now, false);
            }
            if let Some(left) = self.host_strikes.tokens(h, now) {
                if left >= 2.0 {
                    self.host_strikes.set(h, left - 1.0, now);
                } else {
                    self.host_strikes.map.remove(&h);
                    self.hosts.insert(h, now + HOST_BAN, now);
                    return self.disconnect(peer, now, true);
                }
            }
        }
        let Some(left) = self.strikes.tokens(peer, now) else {
            return Strike::Counted;
        };
        if left >= 2.0 {
            self.strikes.set(peer, left - 1.0, now);
            return Strike::Counted;
        }
        self.disconnect(peer, now, false)
    }

    fn disconnect(&mut self, peer: PeerId, now: Instant, host_banned: bool) -> Strike {
        // Its strikes are forgotten: the ban keeps it out.
        self.strikes.map.remove(&peer);
        self.peers.insert(peer, now + PEER_BAN, now);
        Strike::Disconnect { host_banned }
    }

    /// Whether `peer` is refused at `now`.
    pub fn peer_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers.holds(peer, now)
    }

    /// Whether new connections from `host` are refused at `now`.
    pub fn host_banned(&self, host: &Prefix, now: Instant) -> bool {
        self.hosts.holds(host, now)
    }
}

/// Keys refused until a time; at most [`MAX_BUCKETS`] (when full, lapsed ones are forgotten;
/// if none has lapsed the newcomer is not recorded).
#[derive(Debug)]
struct Banned<K>(HashMap<K, Instant>);

impl<K> Default for Banned<K> {
    fn default() -> Self {
        Banned(HashMap::new())
    }
}

impl<K: Hash + Eq> Banned<K> {
    fn insert(&mut self, key: K, until: Instant, now: Instant) {
        if self.0.len() >= MAX_BUCKETS && !self.0.contains_key(&key) {
            self.0.retain(|_, t| *t > now);
            if self.0.len() >= MAX_BUCKETS {
                return;
            }
        }
        self.0.insert(key, until);
    }

    fn holds(&self, key: &K, now: Instant) -> bool {
        self.0.get(key).is_some_and(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_a_host_bounds_all_its_peers() {
        let mut rl = RateLimiter::new(RateLimits {
            peer_per_sec: 10.0,
            peer_burst: 5.0,
            host_per_sec: 20.0,
            host_burst: 8.0,
            ..RateLimits::default()
        });
        let t0 = Instant::now();
        let host = Some(Prefix::V4(0xc633_6407, 32));
        let a = PeerId::random();
        let allowed = (0..10)
            .filter(|_| rl.check(a, host, 1.0, t0).is_ok())
            .count();
        assert_eq!(allowed, 5, "the burst");
        assert_eq!(rl.check(a, host, 1.0, t0), Err(Limited::Peer));
        let later = t0 + Duration::from_millis(100);
        assert!(
            rl.check(a, host, 1.0, later).is_ok(),
            "one token back after 100 ms"
        );
        // Fresh identities from the same host share its bucket (8, 6 taken or tried already).
        let mut refused = None;
        for _ in 0..10 {
            if let Err(e) = rl.check(PeerId::random(), host, 1.0, later) {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused, Some(Limited::Host));
        assert!(
            rl.check(PeerId::random(), None, 1.0, later).is_ok(),
            "uncounted hosts pass"
        );
    }

    #[test]
    fn a_search_costs_eight_requests() {
        let mut rl = RateLimiter::new(RateLimits {
            peer_per_sec: 1.0,
            peer_burst: 16.0,
            ..RateLimits::default()
        });
        let t0 = Instant::now();
        let peer = PeerId::random();
        let search = bitswarm_protocols::tracker::Request::Search {
            query: "x".into(),
            limit: 1,
        };
        assert!(rl.check(peer, None, cost(&search), t0).is_ok());
        assert!(rl.check(peer, None, cost(&search), t0).is_ok());
        assert_eq!(rl.check(peer, None, cost(&search), t0), Err(Limited::Peer));
        assert!(
            rl.check(peer, None, 0.0, t0).is_ok(),
            "no tokens were taken"
        );
    }

    #[test]
    fn searches_from_everyone_together_are_bounded() {
        let mut rl = RateLimiter::new(RateLimits {
            searches_per_sec: 3.0,
            ..RateLimits::default()
        });
        let t0 = Instant::now();
        let ok = (0..10)
            .filter(|_| rl.check(PeerId::random(), None, SEARCH_COST, t0).is_ok())
            .count();
        assert_eq!(ok, 3, "fresh identities share the one search budget");
        assert!(
            rl.check(PeerId::random(), None, 1.0, t0).is_ok(),
            "lookups are not held back"
        );
    }

    #[test]
    fn the_bucket_maps_are_bounded() {
        let mut rl = RateLimiter::new(RateLimits::default());
        let now = Instant::now();
        for _ in 0..MAX_BUCKETS {
            assert!(rl.check(PeerId::random(), None, 1.0, now).is_ok());
        }
        assert!(rl.peers.map.len() <= MAX_BUCKETS);
        // All are part-used: a newcomer is refused rather than growing the map...
        assert_eq!(
            rl.check(PeerId::random(), None, 1.0, now),
            Err(Limited::Peer)
        );
        // ...until the old ones have refilled and can be forgotten.
        let later = now + Duration::from_secs(10);
        assert!(rl.check(PeerId::random(), None, 1.0, later).is_ok());
        assert!(rl.peers.map.len() <= MAX_BUCKETS);
    }

    #[test]
    fn a_peer_refused_past_its_strikes_is_banned() {
        let mut bans = Bans::default();
        let t0 = Instant::now();
        let host = Some(Prefix::V4(0xc633_6407, 32));
        let flooder = PeerId::random();
        let strikes = (0..100)
            .take_while(|_| bans.strike(flooder, host, t0) == Strike::Counted)
            .count();
        assert_eq!(
            strikes as f64,
            STRIKE_BURST - 1.0,
            "the 50th strike disconnects"
        );
        assert!(bans.peer_banned(&flooder, t0));
        assert!(!bans.peer_banned(&flooder, t0 + PEER_BAN), "the ban lapses");
        assert!(!bans.host_banned(&Prefix::V4(0xc633_6407, 32), t0));
    }

    #[test]
    fn a_crowd_of_identities_each_refused_a_little_bans_its_host_not_others() {
        let mut bans = Bans::default();
        let t0 = Instant::now();
        let h = Prefix::V4(0xc633_6407, 32);
        let crowd: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
        // Each identity refused 3 times: none out of its own strikes.
        let mut first_ban = None;
        'rounds: for round in 0..3 {
            for (i, peer) in crowd.iter().enumerate() {
                if bans.strike(*peer, Some(h), t0) != Strike::Counted {
                    first_ban = Some((round, i));
                    break 'rounds;
                }
            }
        }
        assert_eq!(first_ban, Some((1, 99)), "the host's 200th strike");
        assert!(bans.host_banned(&h, t0));
        // While the host is banned, any of its peers refused again is disconnected...
        assert_eq!(
            bans.strike(crowd[0], Some(h), t0),
            Strike::Disconnect { host_banned: false }
        );
        // ...but not a peer elsewhere, and the ban lapses.
        let other = Prefix::V4(0xc633_6408, 32);
        assert_eq!(bans.strike(crowd[1], Some(other), t0), Strike::Counted);
        assert!(!bans.host_banned(&other, t0));
        assert!(!bans.host_banned(&h, t0 + HOST_BAN));
    }

    #[test]
    fn a_peer_refused_no_faster_than_strikes_come_back_is_never_disconnected() {
        let mut bans = Bans::default();
        let t0 = Instant::now();
        let peer = PeerId::random();
        // Refused once a second for ten minutes (its host flooded by someone else).
        for s in 0..600 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(bans.strike(peer, None, now), Strike::Counted, "at {s} s");
        }
        assert!(!bans.peer_banned(&peer, t0 + Duration::from_secs(600)));
    }
}
