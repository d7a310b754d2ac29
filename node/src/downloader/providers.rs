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
//!   it again, unless it was banned (it sent bad data).
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
}

impl Provider {
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

    /// Adds `peer`. One dropped earlier is re-admitted afresh when the tracker lists it again
    /// (it may have come back), unless it was banned.
    pub(crate) fn admit(&mut self, peer: PeerId, complete: bool, from_tracker: bool) -> Admitted {
        let window = self.limits.window;
        match self.map.entry(peer) {
            Entry::Vacant(slot) => {
                slot.insert(Provider::new(complete, window));
                Admitted::New
            }
            Entry::Occupied(mut slot) => {
                let old = slot.get();
                if from_tracker && old.dropped && !old.banned {
                    slot.insert(Provider::new(complete, window));
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
    ) -> bool {
        let Some(p) = self.map.get_mut(peer) else {
            return false;
        };
        p.banned |= banned;
        if p.dropped {
            return false;
        }
        p.dropped = true;
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

    /// Lifts every `Busy` backoff; returns whether any was set.
    pub(crate) fn clear_backoff(&mut self) -> bool {
        let mut any = false;
        for p in self.map.values_mut() {
            any |= std::mem::take(&mut p.backoff);
        }
        any
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
        // Providers that have delivered before those on probation, fewer recent timeouts
        // first, then the emptiest windows, then by peer id (so the order does not depend on
        // the hash map's): scarce pieces go to those most likely to send them.
        order.sort_by_key(|(peer, p)| (p.pieces == 0, p.timeouts, p.in_flight.len(), **peer));
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
        // First every provider gets pieces that did not time out at it, then endgame copies;
        // only then may a provider with room left be asked again for a piece that timed out
        // there (nobody else could take it).
        for retry_timed_out in [false, true] {
            for (peer, p) in order.iter_mut() {
                let Some(have) = &p.have else { continue };
                let room = room_of(p)
                    .saturating_sub(p.in_flight.len())
                    .min(max_in_flight.saturating_sub(total));
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
                    let Some(dup) = picker.pick_endgame(have, |x| {
                        in_flight.contains_key(&x) || timed_out.contains(&x) || picks.contains(&x)
                    }) else {
                        break;
                    };
                    picks.push(dup);
                }
                total += picks.len();
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
mod tests {
    use bitswarm_protocols::Lengths;
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    const LIMITS: Limits = Limits {
        window: 4,
        max_window: 6,
        max_in_flight: 8,
        max_timeouts: 3,
    };

    struct Fixture {
        providers: Providers,
        picker: PiecePicker,
        lengths: Lengths,
        rng: StdRng,
        now: Instant,
    }

    /// A download of `pieces` pieces with `complete` complete providers, all connected and
    /// past probation (each has delivered a piece of an earlier run).
    fn fixture(pieces: u32, complete: usize) -> (Fixture, Vec<PeerId>) {
        let (mut f, peers) = fixture_unproven(pieces, complete);
        for peer in &peers {
            f.providers.get_mut(peer).unwrap().pieces = 1;
        }
        (f, peers)
    }

    /// The same with providers that have delivered nothing yet.
    fn fixture_unproven(pieces: u32, complete: usize) -> (Fixture, Vec<PeerId>) {
        let lengths = Lengths::new(u64::from(pieces) * 16384, 16384).unwrap();
        let mut f = Fixture {
            providers: Providers::new(LIMITS),
            picker: PiecePicker::new(lengths),
            lengths,
            rng: StdRng::seed_from_u64(1),
            now: Instant::now(),
        };
        let mut peers: Vec<PeerId> = (0..complete).map(|_| PeerId::random()).collect();
        peers.sort();
        for peer in &peers {
            assert_eq!(f.providers.admit(*peer, true, true), Admitted::New);
            f.providers
                .set_have(peer, Bitfield::full(&lengths), &mut f.picker);
        }
        (f, peers)
    }

    impl Fixture {
        fn plan(&mut self) -> Plan {
            self.providers.plan(
                self.now,
                &mut self.picker,
                |_| true,
                |_| true,
                &mut self.rng,
            )
        }

        fn to(&self, plan: &Plan, peer: PeerId) -> Vec<PieceIndex> {
            plan.requests
                .iter()
                .filter(|(p, _)| *p == peer)
                .map(|(_, x)| *x)
                .collect()
        }

        fn store(&mut self, peer: PeerId, piece: PieceIndex) {
            self.picker.stored(piece);
            self.providers.on_stored(&peer, piece);
        }
    }

    #[test]
    fn busy_backs_off_until_the_backoff_is_lifted_and_shrinks_the_window() {
        let (mut f, peers) = fixture(20, 1);
        let a = peers[0];
        let first = f.plan();
        assert_eq!(f.to(&first, a).len(), 4, "a full window");
        let piece = first.requests[0].1;
        let drop =
            f.providers
                .on_failure(&a, Some(piece), false, Failure::Busy, Some(&mut f.picker));
        assert!(!drop, "Busy never drops");
        assert!(f.plan().requests.is_empty(), "no request while backed off");
        assert!(f.providers.clear_backoff());
        let again = f.plan();
        assert!(again.requests.is_empty(), "window shrank to 3, 3 in flight");
        assert_eq!(f.providers.get(&a).unwrap().window(), 3);
        assert!(!f.providers.clear_backoff(), "nothing left to lift");
    }

    #[test]
    fn three_timeouts_in_a_row_drop_a_provider_and_each_halves_its_window() {
        let (mut f, peers) = fixture(20, 1);
        let a = peers[0];
        let plan = f.plan();
        let pieces = f.to(&plan, a);
        let mut dropped = Vec::new();
        for piece in &pieces[..3] {
            dropped.push(f.providers.on_failure(
                &a,
                Some(*piece),
                false,
                Failure::Timeout,
                Some(&mut f.picker),
            ));
        }
        assert_eq!(dropped, [false, false, true]);
        assert_eq!(f.providers.get(&a).unwrap().window(), 1, "4 -> 2 -> 1 -> 1");
        // A delivered piece in between resets the count.
        let (mut f, peers) = fixture(20, 1);
        let a = peers[0];
        let plan = f.plan();
        let pieces = f.to(&plan, a);
        for piece in &pieces[..2] {
            f.providers.on_failure(
                &a,
                Some(*piece),
                false,
                Failure::Timeout,
                Some(&mut f.picker),
            );
        }
        f.store(a, pieces[2]);
        assert!(!f.providers.on_failure(
            &a,
            Some(pieces[3]),
            false,
            Failure::Timeout,
            Some(&mut f.picker)
        ));
    }

    #[test]
    fn a_timed_out_piece_goes_to_another_provider_or_back_to_the_only_one() {
        // `a` alone first takes all three pieces and delivers two; the third times out.
        let (mut f, peers) = fixture(3, 2);
        let (a, b) = (peers[0], peers[1]);
        let first = f
            .providers
            .plan(f.now, &mut f.picker, |p| *p == a, |_| true, &mut f.rng);
        let mut at_a = f.to(&first, a);
        at_a.sort();
        assert_eq!(at_a.len(), 3);
        f.store(a, at_a[1]);
        f.store(a, at_a[2]);
        f.providers.on_failure(
            &a,
            Some(at_a[0]),
            false,
            Failure::Timeout,
            Some(&mut f.picker),
        );
        let retry = f.plan();
        assert_eq!(f.to(&retry, b), [at_a[0]], "asked elsewhere");
        assert!(
            f.to(&retry, a).is_empty(),
            "not of the provider it timed out at"
        );

        // One provider: nobody else to ask, so it is asked again.
        let (mut f, peers) = fixture(1, 1);
        let a = peers[0];
        let piece = f.plan().requests[0].1;
        f.providers.on_failure(
            &a,
            Some(piece),
            false,
            Failure::Timeout,
            Some(&mut f.picker),
        );
        let retry = f.plan();
        assert_eq!(f.to(&retry, a), [piece]);
    }

    #[test]
    fn a_dropped_provider_returns_its_pieces_and_only_a_banned_one_stays_out() {
        let (mut f, peers) = fixture(3, 2);
        let (a, b) = (peers[0], peers[1]);
        let plan = f
            .providers
            .plan(f.now, &mut f.picker, |p| *p == a, |_| true, &mut f.rng);
        let mut at_a = f.to(&plan, a);
        at_a.sort();
        assert_eq!(at_a.len(), 3);
        assert!(f.providers.drop_peer(&a, true, Some(&mut f.picker)));
        assert!(
            !f.providers.drop_peer(&a, false, Some(&mut f.picker)),
            "once"
        );
        let next = f.plan();
        assert_eq!(
            {
                let mut got = f.to(&next, b);
                got.sort();
                got
            },
            at_a,
            "the liar's pieces went back and to the honest provider"
        );
        assert_eq!(
            f.providers.admit(a, true, true),
            Admitted::Unchanged,
            "banned"
        );
        assert!(f.providers.drop_peer(&b, false, Some(&mut f.picker)));
        assert_eq!(
            f.providers.admit(b, true, false),
            Admitted::Unchanged,
            "not by a peer's word"
        );
        assert_eq!(f.providers.admit(b, true, true), Admitted::Readmitted);
        assert!(f.providers.uses(&b));
    }

    #[test]
    fn the_in_flight_cap_spreads_over_the_emptiest_windows() {
        let (mut f, peers) = fixture(40, 3);
        let plan = f.plan();
        assert_eq!(
            plan.requests.len(),
            LIMITS.max_in_flight,
            "capped at 8, not 3 x 4"
        );
        for peer in &peers {
            assert!(f.to(&plan, *peer).len() <= LIMITS.window);
        }
        assert!(
            f.plan().requests.is_empty(),
            "nothing more while the cap is reached"
        );
        // One piece stored frees one slot, for the emptiest provider.
        let (peer, piece) = plan.requests[0];
        f.store(peer, piece);
        assert_eq!(f.plan().requests.len(), 1);
    }

    #[test]
    fn a_full_window_grows_by_one_per_window_of_pieces_up_to_the_limit() {
        let (mut f, peers) = fixture(200, 1);
        let a = peers[0];
        let mut windows = Vec::new();
        for _ in 0..20 {
            // Keep the window full, deliver one piece, record the window.
            f.plan();
            let piece = *f.providers.get(&a).unwrap().in_flight.keys().min().unwrap();
            f.store(a, piece);
            windows.push(f.providers.get(&a).unwrap().window());
        }
        assert_eq!(windows[0], 4, "+1/4 after one piece");
        assert_eq!(windows[3], 4);
        assert_eq!(
            windows[4], 5,
            "+1 after about a window of pieces delivered while full"
        );
        assert_eq!(*windows.last().unwrap(), LIMITS.max_window, "capped");
    }

    #[test]
    fn endgame_duplicates_the_last_pieces_and_the_loser_only_frees_its_slot() {
        let (mut f, peers) = fixture(2, 2);
        let (a, b) = (peers[0], peers[1]);
        // Only `a` is usable at first: it gets both pieces.
        let first = f
            .providers
            .plan(f.now, &mut f.picker, |p| *p == a, |_| true, &mut f.rng);
        assert_eq!(f.to(&first, a).len(), 2);
        // `b` joins: nothing is missing, so it gets copies of the outstanding pieces.
        let second = f.plan();
        let dups = f.to(&second, b);
        assert_eq!(dups.len(), 2, "both outstanding pieces duplicated");
        // `b` wins the first; `a`'s copy arrives later and is discarded.
        f.store(b, dups[0]);
        assert!(f.picker.has(dups[0]));
        f.providers.on_discarded(&a, dups[0]);
        assert!(!f
            .providers
            .get(&a)
            .unwrap()
            .in_flight
            .contains_key(&dups[0]));
        assert_eq!(
            f.providers.get(&a).unwrap().pieces,
            1,
            "a loser counts nothing"
        );
    }

    #[test]
    fn a_provider_waiting_for_a_hole_punch_expires_after_the_wait() {
        let (mut f, peers) = fixture(4, 2);
        let (a, b) = (peers[0], peers[1]);
        let t0 = Instant::now();
        let wait = Duration::from_secs(20);
        let only_a = |p: &PeerId| *p == a;
        assert!(f.providers.hole_punch_expired(t0, wait, only_a).is_empty());
        let t = |s| t0 + Duration::from_secs(s);
        assert!(f
            .providers
            .hole_punch_expired(t(20), wait, only_a)
            .is_empty());
        assert_eq!(f.providers.hole_punch_expired(t(21), wait, only_a), [a]);
        // A data path in between restarts the wait.
        assert!(f
            .providers
            .hole_punch_expired(t(30), wait, only_a)
            .is_empty());
        assert!(f
            .providers
            .hole_punch_expired(t(31), wait, |_| false)
            .is_empty());
        assert!(f
            .providers
            .hole_punch_expired(t(50), wait, only_a)
            .is_empty());
        assert_eq!(f.providers.hole_punch_expired(t(71), wait, only_a), [a]);
        let _ = b;
    }

    #[test]
    fn a_provider_on_probation_gets_one_request_and_is_overdue_after_the_patience() {
        let (mut f, peers) = fixture_unproven(40, 2);
        let (a, b) = (peers[0], peers[1]);
        let first = f.plan();
        assert_eq!((f.to(&first, a).len(), f.to(&first, b).len()), (1, 1));
        // `a` delivers: it gets its full window; silent `b` keeps its one request.
        let piece = f.to(&first, a)[0];
        f.store(a, piece);
        let second = f.plan();
        assert_eq!(f.to(&second, a).len(), LIMITS.window);
        assert!(f.to(&second, b).is_empty());
        let patience = Duration::from_secs(4);
        assert!(f.providers.overdue(f.now + patience, patience).is_empty());
        let late = f.now + patience + Duration::from_secs(1);
        assert_eq!(
            f.providers.overdue(late, patience),
            [(b, f.to(&first, b)[0])],
            "only the provider that has delivered nothing"
        );
    }

    #[test]
    fn an_unconnected_provider_is_dialed_not_asked() {
        let (mut f, peers) = fixture(4, 2);
        let (a, b) = (peers[0], peers[1]);
        let plan = f
            .providers
            .plan(f.now, &mut f.picker, |p| *p == a, |p| *p == a, &mut f.rng);
        assert_eq!(plan.dial, [b]);
        assert!(f.to(&plan, b).is_empty());
        // Connected but only through a relay that carries no data: neither asked nor dialed.
        let plan = f
            .providers
            .plan(f.now, &mut f.picker, |p| *p == a, |_| true, &mut f.rng);
        assert!(plan.dial.is_empty());
        let _ = f.lengths;
    }
}
