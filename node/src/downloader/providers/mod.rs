//! [`Providers`]: the providers of one download and the rules they live by. Pure state: no
//! swarm, no clock, no randomness of its own (the caller passes an RNG for the picker); the
//! event loop sends the requests a [`Plan`] names and reports how each one ended.
//!
//! Rules:
//! - Each provider has a window of requests in flight: it starts at `window`, grows by
//!   `1/window` per piece delivered while full (one per window of pieces, up to `max_window`),
//!   halves on a timeout and shrinks by one on `Busy`; never below one.
//! - `Busy` stops new requests to it until the backoff is cleared (a stored piece or the next
//!   housekeeping tick), so a busy provider is not asked again at round-trip speed.
//! - Timeouts drop a provider after `max_timeouts` in a row; a timed-out piece is not asked of the
//!   same provider again while another can serve it (with one provider there is nobody else).
//! - A dropped provider's requests go back to the picker. It is re-admitted when the tracker lists
//!   it again, unless it was banned (it sent bad data), and not before a backoff that doubles
//!   with each drop (5 s, 10 s, ... 5 min): a provider that keeps timing out cannot come back
//!   every re-lookup with a fresh window. A re-admitted provider starts on probation.
//! - `Busy` a few times in a row is ordinary load; past [`BUSY_STREAK`] in a row (with no piece
//!   delivered in between) the backoff grows exponentially (up to 30 s) instead of ending at the
//!   next tick.
//! - Peers that only asked us for the file (not listed by the tracker) are admitted as partial
//!   providers, at most [`MAX_INJECTED`] per download. A partial provider's bitfield is asked
//!   for again on a schedule that doubles (1 s up to 30 s) while it holds nothing we lack, and
//!   an injected one that has shown nothing useful [`USELESS_HAVES`] times is dropped.
//! - Providers on probation together hold at most half the in-flight cap while a proven one can
//!   serve, so a crowd of new peers that accept requests and never answer cannot take it all.
//! - While several providers can serve, each first gets at most its share of the in-flight cap
//!   (`max_in_flight / providers`); only what is left over goes to those with room, so a slow
//!   provider cannot hold the slots faster ones wait for.
//! - A provider that has delivered nothing yet is on probation: one request in flight, and a
//!   request it sits on for long ([`Providers::overdue`]) counts as a timeout. So peers that
//!   accept requests and never answer cannot hold the slots of one that serves.
//! - All providers together have at most `max_in_flight` requests. Providers that delivered go
//!   first, then fewer timeouts, then the emptiest windows, so the cap spreads over them and
//!   scarce pieces go to those most likely to send them.
//! - Endgame: once nothing is missing, requests still outstanding elsewhere are duplicated to
//!   providers with room (see [`PiecePicker::pick_endgame`]).

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    time::{Duration, Instant},
};

use bitswarm_protocols::PieceIndex;
use libp2p::PeerId;
use rand::Rng;

use super::{bitfield::Bitfield, picker::PiecePicker};
use crate::paths::DataPath;

/// Requests a provider that has delivered nothing yet may have in flight.
const PROBATION_WINDOW: usize = 1;
/// Providers per download that joined only by asking us for the file.
pub(crate) const MAX_INJECTED: usize = 16;
/// `Busy` answers in a row after which the backoff grows exponentially.
pub(crate) const BUSY_STREAK: u32 = 3;
/// First exponential `Busy` backoff; doubles per further `Busy`, up to [`MAX_BUSY_BACKOFF`].
const MIN_BUSY_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(30);
/// Backoff before a dropped provider may be re-admitted; doubles per drop.
pub(crate) const MIN_READMIT: Duration = Duration::from_secs(5);
const MAX_READMIT: Duration = Duration::from_secs(300);
/// First and longest interval between bitfield requests to a partial provider.
pub(crate) const MIN_HAVE_INTERVAL: Duration = Duration::from_secs(1);
const MAX_HAVE_INTERVAL: Duration = Duration::from_secs(30);
/// Bitfields in a row holding nothing we lack after which an injected provider is dropped.
pub(crate) const USELESS_HAVES: u32 = 8;

/// `base` doubled `n` times, at most `max`.
fn doubled(base: Duration, n: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.min(16)).min(max)
}

/// The numbers the rules use (from [`crate::Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Starting window.
    pub(crate) window: usize,
    /// Largest window.
    pub(crate) max_window: usize,
    /// Most requests in flight over all providers.
    pub(crate) max_in_flight: usize,
    /// Timeouts in a row after which a provider is dropped.
    pub(crate) max_timeouts: u32,
}

/// How a request ended without its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The provider cannot serve this file: drop it.
    Fatal,
    /// No answer in time: shrink its window, drop it after a few.
    Timeout,
    /// It is overloaded: shrink its window, try again later.
    Busy,
    /// The connection it went over closed while another to the same peer lives (a relayed
    /// one closed after a hole punch): ask again, no penalty.
    Retry,
}

/// One provider of one download.
#[derive(Debug)]
pub(crate) struct Provider {
    /// Announced as holding every piece.
    pub(crate) complete: bool,
    /// Its pieces, once known (complete providers: as soon as the manifest is).
    pub(crate) have: Option<Bitfield>,
    /// Pieces requested from it and not yet stored or failed, with when each was asked.
    pub(crate) in_flight: HashMap<PieceIndex, Instant>,
    /// Current window (fractional so it can grow by 1/window per piece).
    window: f64,
    /// Timeouts since its last delivered piece.
    timeouts: u32,
    /// Not used for this download (until a re-lookup re-admits it, unless `banned`).
    pub(crate) dropped: bool,
    /// Sent bad data: never used again for this file.
    banned: bool,
    /// Answered `Busy`: no new requests until the backoff is cleared.
    backoff: bool,
    /// Asked for the manifest already (not again unless that request failed softly).
    pub(crate) asked_manifest: bool,
    /// A bitfield request is outstanding.
    pub(crate) have_pending: bool,
    /// Pieces that timed out at this provider: asked elsewhere.
    timed_out: HashSet<PieceIndex>,
    /// Verified pieces it sent.
    pub(crate) pieces: u64,
    /// The connection its last verified piece came over.
    pub(crate) path: Option<DataPath>,
    /// Since when it is connected only through a relay that carries no file data (waiting
    /// for a hole punch).
    signalling_since: Option<Instant>,
    /// Listed by the tracker (else it only asked us for the file: injected).
    listed: bool,
    /// Times it was dropped; each doubles the wait before it may be re-admitted.
    drops: u32,
    /// Not re-admitted before this.
    readmit_at: Option<Instant>,
    /// `Busy` answers since its last delivered piece.
    busy_streak: u32,
    /// An exponential `Busy` backoff lasts until then.
    busy_until: Option<Instant>,
    /// Its bitfield is asked for again at this time (`None`: as soon as possible).
    have_next: Option<Instant>,
    /// Bitfields in a row that held nothing we lack.
    useless_haves: u32,
}

impl Provider {
    /// Whether the tracker listed it (else it only asked us for the file).
    pub(crate) fn is_listed(&self) -> bool {
        self.listed
    }

    fn new(complete: bool, window: usize) -> Self {
        Provider {
            complete,
            have: None,
            in_flight: HashMap::new(),
            window: window as f64,
            timeouts: 0,
            dropped: false,
            banned: false,
            backoff: false,
            asked_manifest: false,
            have_pending: false,
            timed_out: HashSet::new(),
            pieces: 0,
            path: None,
            signalling_since: None,
            listed: false,
            drops: 0,
            readmit_at: None,
            busy_streak: 0,
            busy_until: None,
            have_next: None,
            useless_haves: 0,
        }
    }

    /// Answered `Busy` and not asked again until the backoff is lifted.
    pub(crate) fn backed_off(&self) -> bool {
        self.backoff
    }

    /// Its window, in whole requests.
    pub(crate) fn window(&self) -> usize {
        self.window.floor() as usize
    }
}

/// What adding a provider did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Never seen before.
    New,
    /// Dropped earlier (not banned) and listed again by the tracker: starts afresh.
    Readmitted,
    /// Known already (or banned): nothing changed.
    Unchanged,
}

/// What [`Providers::plan`] decided: requests to send, providers to dial.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `(provider, piece)` requests, each now counted in flight.
    pub(crate) requests: Vec<(PeerId, PieceIndex)>,
    /// Providers to connect to before they can be asked.
    pub(crate) dial: Vec<PeerId>,
}

/// The providers of one download.
#[derive(Debug)]
pub(crate) struct Providers {
    map: HashMap<PeerId, Provider>,
    limits: Limits,
}

impl Providers {
    pub(crate) fn new(limits: Limits) -> Self {
        Providers {
            map: HashMap::new(),
            limits,
        }
    }

    pub(crate) fn get(&self, peer: &PeerId) -> Option<&Provider> {
        self.map.get(peer)
    }

    pub(crate) fn get_mut(&mut self, peer: &PeerId) -> Option<&mut Provider> {
        self.map.get_mut(peer)
    }

    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.map.contains_key(peer)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&PeerId, &Provider)> {
        self.map.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&PeerId, &mut Provider)> {
        self.map.iter_mut()
    }

    pub(crate) fn peers(&self) -> Vec<PeerId> {
        self.map.keys().copied().collect()
    }

    /// Providers not dropped.
    pub(crate) fn active(&self) -> usize {
        self.map.values().filter(|p| !p.dropped).count()
    }

    /// Whether `peer` is a provider that is not dropped.
    pub(crate) fn uses(&self, peer: &PeerId) -> bool {
        self.map.get(peer).is_some_and(|p| !p.dropped)
    }

    /// Adds `peer` at `now` (`from_tracker`: listed by the tracker; else it asked us for the
    /// file, and is admitted only while fewer than [`MAX_INJECTED`] such are). One dropped
    /// earlier is re-admitted afresh, on probation, when the tracker lists it again after its
    /// backoff (it may have come back), unless it was banned.
    pub(crate) fn admit(
        &mut self,
        peer: PeerId,
        complete: bool,
        from_tracker: bool,
        now: Instant,
    ) -> Admitted {
        let window = self.limits.window;
        // Dropped ones count too: the cap bounds the map, not only the active set, so a stream of
        // fresh identities cannot grow it.
        let injected = self.map.values().filter(|p| !p.listed).count();
        match self.map.entry(peer) {
            Entry::Vacant(slot) => {
                if !from_tracker && injected >= MAX_INJECTED {
                    return Admitted::Unchanged;
                }
                let mut p = Provider::new(complete, window);
                p.listed = from_tracker;
                slot.insert(p);
                Admitted::New
            }
            Entry::Occupied(mut slot) => {
                let old = slot.get_mut();
                old.listed |= from_tracker;
                let due = old.readmit_at.is_none_or(|at| now >= at);
                if from_tracker && old.dropped && !old.banned && due {
                    let drops = old.drops;
                    let mut p = Provider::new(complete, window);
                    p.listed = true;
                    p.drops = drops;
                    slot.insert(p);
                    Admitted::Readmitted
                } else {
                    Admitted::Unchanged
                }
            }
        }
    }

    /// A piece request to `peer` ended without the piece, or a manifest or bitfield request
    /// failed (`piece` is `None`). Applies the window, backoff and timeout rules; returns true
    /// when `peer` must now be dropped ([`Providers::drop_peer`]).
    pub(crate) fn on_failure(
        &mut self,
        peer: &PeerId,
        piece: Option<PieceIndex>,
        manifest: bool,
        failure: Failure,
        picker: Option<&mut PiecePicker>,
        now: Instant,
    ) -> bool {
        let max_timeouts = self.limits.max_timeouts;
        let Some(p) = self.map.get_mut(peer) else {
            return false;
        };
        if let (Some(piece), Some(picker)) = (piece, picker) {
            // A dropped provider's pieces went back to the picker already; returning one twice
            // would mark it missing while another provider is fetching it.
            if p.in_flight.remove(&piece).is_some() {
                picker.failed(piece);
            }
        }
        if manifest && failure != Failure::Fatal {
            p.asked_manifest = false;
        }
        match failure {
            Failure::Fatal => true,
            Failure::Timeout => {
                p.timeouts += 1;
                p.window = (p.window / 2.0).max(1.0);
                if let Some(piece) = piece {
                    p.timed_out.insert(piece);
                }
                p.timeouts >= max_timeouts
            }
            Failure::Busy => {
                p.window = (p.window - 1.0).max(1.0);
                p.backoff = true;
                p.busy_streak += 1;
                if p.busy_streak > BUSY_STREAK {
                    let n = p.busy_streak - BUSY_STREAK - 1;
                    p.busy_until = Some(now + doubled(MIN_BUSY_BACKOFF, n, MAX_BUSY_BACKOFF));
                }
                false
            }
            Failure::Retry => false,
        }
    }

    /// Drops `peer` for this download (banned: for good); its requests go back to the picker.
    /// Returns false when it was dropped already.
    pub(crate) fn drop_peer(
        &mut self,
        peer: &PeerId,
        banned: bool,
        picker: Option<&mut PiecePicker>,
        now: Instant,
    ) -> bool {
        let Some(p) = self.map.get_mut(peer) else {
            return false;
        };
        p.banned |= banned;
        if p.dropped {
            return false;
        }
        p.dropped = true;
        p.readmit_at = Some(now + doubled(MIN_READMIT, p.drops, MAX_READMIT));
        p.drops += 1;
        if let Some(picker) = picker {
            if let Some(have) = p.have.take() {
                picker.remove_provider(&have);
            }
            for (piece, _) in p.in_flight.drain() {
                picker.failed(piece);
            }
        }
        true
    }

    /// `peer`'s bitfield arrived (or, for a complete provider, is known): the picker counts it.
    /// Returns false when nothing changed.
    pub(crate) fn set_have(
        &mut self,
        peer: &PeerId,
        have: Bitfield,
        picker: &mut PiecePicker,
    ) -> bool {
        let Some(p) = self.map.get_mut(peer) else {
            return false;
        };
        if p.dropped || p.have.as_ref() == Some(&have) {
            return false;
        }
        if let Some(old) = p.have.take() {
            picker.remove_provider(&old);
        }
        picker.add_provider(&have);
        p.have = Some(have);
        true
    }

    /// A piece from `peer` was verified and written: its slot frees, its timeouts reset, and its
    /// window grows when it was full.
    pub(crate) fn on_stored(&mut self, peer: &PeerId, piece: PieceIndex) {
        let max_window = self.limits.max_window as f64;
        if let Some(p) = self.map.get_mut(peer) {
            let was_full = p.in_flight.len() as f64 >= p.window.floor();
            p.in_flight.remove(&piece);
            p.pieces += 1;
            p.timeouts = 0;
            p.busy_streak = 0;
            p.busy_until = None;
            if was_full {
                p.window = (p.window + 1.0 / p.window).min(max_window);
            }
        }
    }

    /// An endgame copy from `peer` lost the race: its slot frees.
    pub(crate) fn on_discarded(&mut self, peer: &PeerId, piece: PieceIndex) {
        if let Some(p) = self.map.get_mut(peer) {
            p.in_flight.remove(&piece);
        }
    }

    /// Providers that have been reachable only through a relay that carries no file data
    /// (`signalling_only`) for longer than `limit` at `now`: the hole punch did not come. Each
    /// is reported once per wait; a provider that got a data path starts a new wait next time.
    pub(crate) fn hole_punch_expired(
        &mut self,
        now: Instant,
        limit: Duration,
        signalling_only: impl Fn(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let mut expired = Vec::new();
        for (peer, p) in self.map.iter_mut().filter(|(_, p)| !p.dropped) {
            if !signalling_only(peer) {
                p.signalling_since = None;
                continue;
            }
            let since = *p.signalling_since.get_or_insert(now);
            if now.duration_since(since) > limit {
                p.signalling_since = None;
                expired.push(*peer);
            }
        }
        expired.sort();
        expired
    }

    /// Requests that a provider on probation (nothing delivered yet) has left unanswered for
    /// longer than `patience`: the caller treats each as timed out, so its piece goes to
    /// another provider long before the transport's request timeout.
    pub(crate) fn overdue(&self, now: Instant, patience: Duration) -> Vec<(PeerId, PieceIndex)> {
        let mut overdue: Vec<(PeerId, PieceIndex)> = self
            .map
            .iter()
            .filter(|(_, p)| !p.dropped && p.pieces == 0)
            .flat_map(|(peer, p)| {
                p.in_flight
                    .iter()
                    .filter(move |(_, at)| now.duration_since(**at) > patience)
                    .map(move |(piece, _)| (*peer, *piece))
            })
            .collect();
        overdue.sort();
        overdue
    }

    /// Lifts every `Busy` backoff that may end at `now` (not an exponential one before its
    /// time); returns whether any was lifted.
    pub(crate) fn clear_backoff(&mut self, now: Instant) -> bool {
        let mut any = false;
        for p in self.map.values_mut() {
            if p.backoff && p.busy_until.is_none_or(|until| now >= until) {
                p.backoff = false;
                any = true;
            }
        }
        any
    }

    /// Partial providers whose bitfield is due to be asked for at `now`.
    pub(crate) fn have_due(&self, now: Instant) -> Vec<PeerId> {
        let mut due: Vec<PeerId> = self
            .map
            .iter()
            .filter(|(_, p)| !p.complete && !p.dropped && !p.have_pending)
            .filter(|(_, p)| p.have_next.is_none_or(|at| now >= at))
            .map(|(peer, _)| *peer)
            .collect();
        due.sort();
        due
    }

    /// `peer`'s bitfield arrived at `now`: `useful` when it holds a piece we lack. Sets when to
    /// ask again; returns true when an injected provider has shown nothing useful too often and
    /// must be dropped.
    pub(crate) fn on_have(&mut self, peer: &PeerId, useful: bool, now: Instant) -> bool {
        let Some(p) = self.map.get_mut(peer) else {
            return false;
        };
        p.have_pending = false;
        if useful {
            p.useless_haves = 0;
        } else {
            p.useless_haves += 1;
        }
        let wait = doubled(MIN_HAVE_INTERVAL, p.useless_haves, MAX_HAVE_INTERVAL);
        p.have_next = Some(now + wait);
        !p.listed && p.useless_haves >= USELESS_HAVES
    }

    /// Fills every usable provider's window from `picker`: rarest missing pieces first, then
    /// endgame duplicates, within the total cap, emptiest windows first. `can_carry` says
    /// whether a provider has a connection that carries pieces; one that is not connected at
    /// all (`connected` false) and has nothing in flight is named to dial.
    pub(crate) fn plan(
        &mut self,
        now: Instant,
        picker: &mut PiecePicker,
        can_carry: impl Fn(&PeerId) -> bool,
        connected: impl Fn(&PeerId) -> bool,
        rng: &mut impl Rng,
    ) -> Plan {
        let max_in_flight = self.limits.max_in_flight;
        let mut plan = Plan::default();
        let mut total: usize = self.map.values().map(|p| p.in_flight.len()).sum();
        let mut order: Vec<(&PeerId, &mut Provider)> = Vec::new();
        for (peer, p) in self.map.iter_mut() {
            if p.dropped || p.backoff || p.have.is_none() {
                continue;
            }
            if can_carry(peer) {
                order.push((peer, p));
            } else if !connected(peer) && p.in_flight.is_empty() {
                plan.dial.push(*peer);
            }
        }
        // Providers that have delivered before those on probation, listed ones before
        // injected ones, fewer recent timeouts first, then the emptiest windows, then by peer
        // id (so the order does not depend on the hash map's): scarce pieces go to those most
        // likely to send them.
        order.sort_by_key(|(peer, p)| {
            (
                p.pieces == 0,
                !p.listed,
                p.timeouts,
                p.in_flight.len(),
                **peer,
            )
        });
        // A provider that has delivered nothing yet is on probation: one request at a time, so
        // providers that accept requests and never answer cannot take the slots of one that
        // does (see [`Providers::overdue`]).
        let room_of = |p: &Provider| {
            if p.pieces == 0 {
                p.window().min(PROBATION_WINDOW)
            } else {
                p.window()
            }
        };
        // Each provider's fair share of the cap while several can serve: the first pass fills
        // windows only up to it, so a slow provider with a wide window cannot take the slots
        // faster ones wait for; the next fills what is left over.
        let share = (max_in_flight / order.len().max(1)).max(1);
        let proven_can_serve = order.iter().any(|(_, p)| p.pieces > 0);
        let probation_cap = if proven_can_serve {
            (max_in_flight / 2).max(1)
        } else {
            max_in_flight
        };
        let mut on_probation: usize = order
            .iter()
            .filter(|(_, p)| p.pieces == 0)
            .map(|(_, p)| p.in_flight.len())
            .sum();
        // Injected providers on probation share half the cap even before anyone has
        // delivered, so a crowd of them cannot take every slot from a listed provider.
        let injected_cap = (max_in_flight / 2).max(1);
        let mut on_injected: usize = order
            .iter()
            .filter(|(_, p)| p.pieces == 0 && !p.listed)
            .map(|(_, p)| p.in_flight.len())
            .sum();
        // Pieces a provider that has delivered is fetching: in good hands. Those held only by
        // providers on probation are rescued by a proven one with room (below).
        let mut in_good_hands: HashSet<PieceIndex> = order
            .iter()
            .filter(|(_, p)| p.pieces > 0)
            .flat_map(|(_, p)| p.in_flight.keys().copied())
            .collect();
        // Then every provider gets pieces that did not time out at it, then endgame copies;
        // only last may a provider with room left be asked again for a piece that timed out
        // there (nobody else could take it).
        for (capped, retry_timed_out) in [(true, false), (false, false), (false, true)] {
            for (peer, p) in order.iter_mut() {
                let Some(have) = &p.have else { continue };
                let mut window = room_of(p);
                if capped {
                    window = window.min(share);
                }
                let mut room = window
                    .saturating_sub(p.in_flight.len())
                    .min(max_in_flight.saturating_sub(total));
                let unproven = p.pieces == 0;
                let injected = unproven && !p.listed;
                if unproven {
                    room = room.min(probation_cap.saturating_sub(on_probation));
                }
                if injected {
                    room = room.min(injected_cap.saturating_sub(on_injected));
                }
                if room == 0 || (retry_timed_out && p.timed_out.is_empty()) {
                    continue;
                }
                let mut picks = if retry_timed_out {
                    p.timed_out.clear();
                    picker.pick(have, room, |_| false, rng)
                } else {
                    let timed_out = &p.timed_out;
                    picker.pick(have, room, |x| timed_out.contains(&x), rng)
                };
                while !retry_timed_out && picks.len() < room {
                    // Not a copy of a piece it has, or one that timed out here.
                    let (in_flight, timed_out) = (&p.in_flight, &p.timed_out);
                    let mine = |x| {
                        in_flight.contains_key(&x) || timed_out.contains(&x) || picks.contains(&x)
                    };
                    let dup = picker.pick_endgame(have, mine).or_else(|| {
                        // A proven provider with room copies a piece that only providers on
                        // probation are sitting on, endgame or not: a crowd that accepts
                        // requests and never answers then costs nothing but their copies.
                        (!unproven)
                            .then(|| {
                                picker.pick_rescue(have, |x| mine(x) || in_good_hands.contains(&x))
                            })
                            .flatten()
                    });
                    let Some(dup) = dup else {
                        break;
                    };
                    picks.push(dup);
                }
                total += picks.len();
                if unproven {
                    on_probation += picks.len();
                } else {
                    in_good_hands.extend(picks.iter().copied());
                }
                if injected {
                    on_injected += picks.len();
                }
                for piece in picks {
                    p.in_flight.insert(piece, now);
                    plan.requests.push((**peer, piece));
                }
            }
        }
        plan.dial.sort();
        plan
    }
}

#[cfg(test)]
mod tests;
