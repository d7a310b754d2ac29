//! The provider rules, each driven with scripted inputs and a fixed clock.

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
    fixture_with(LIMITS, pieces, complete)
}

/// Unproven providers under other limits.
fn fixture_with(limits: Limits, pieces: u32, complete: usize) -> (Fixture, Vec<PeerId>) {
    let now = Instant::now();
    let lengths = Lengths::new(u64::from(pieces) * 16384, 16384).unwrap();
    let mut f = Fixture {
        providers: Providers::new(limits),
        picker: PiecePicker::new(lengths),
        lengths,
        rng: StdRng::seed_from_u64(1),
        now,
    };
    let mut peers: Vec<PeerId> = (0..complete).map(|_| PeerId::random()).collect();
    peers.sort();
    for peer in &peers {
        assert_eq!(f.providers.admit(*peer, true, true, f.now), Admitted::New);
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
    let drop = f.providers.on_failure(
        &a,
        Some(piece),
        false,
        Failure::Busy,
        Some(&mut f.picker),
        f.now,
    );
    assert!(!drop, "Busy never drops");
    assert!(f.plan().requests.is_empty(), "no request while backed off");
    assert!(f.providers.clear_backoff(f.now));
    let again = f.plan();
    assert!(again.requests.is_empty(), "window shrank to 3, 3 in flight");
    assert_eq!(f.providers.get(&a).unwrap().window(), 3);
    assert!(!f.providers.clear_backoff(f.now), "nothing left to lift");
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
            f.now,
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
            f.now,
        );
    }
    f.store(a, pieces[2]);
    assert!(!f.providers.on_failure(
        &a,
        Some(pieces[3]),
        false,
        Failure::Timeout,
        Some(&mut f.picker),
        f.now
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
        f.now,
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
        f.now,
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
    assert!(f.providers.drop_peer(&a, true, Some(&mut f.picker), f.now));
    assert!(
        !f.providers.drop_peer(&a, false, Some(&mut f.picker), f.now),
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
        f.providers.admit(a, true, true, f.now),
        Admitted::Unchanged,
        "banned"
    );
    assert!(f.providers.drop_peer(&b, false, Some(&mut f.picker), f.now));
    assert_eq!(
        f.providers.admit(b, true, false, f.now),
        Admitted::Unchanged,
        "not by a peer's word"
    );
    assert_eq!(
        f.providers.admit(b, true, true, f.now),
        Admitted::Unchanged,
        "not before its backoff"
    );
    let later = f.now + MIN_READMIT;
    assert_eq!(
        f.providers.admit(b, true, true, later),
        Admitted::Readmitted
    );
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

#[test]
fn peers_that_only_asked_us_for_the_file_are_admitted_up_to_a_cap() {
    let (mut f, _) = fixture(4, 0);
    for _ in 0..MAX_INJECTED {
        let injected = f.providers.admit(PeerId::random(), false, false, f.now);
        assert_eq!(injected, Admitted::New);
    }
    let one_more = f.providers.admit(PeerId::random(), false, false, f.now);
    assert_eq!(one_more, Admitted::Unchanged, "past the cap");
    let listed = f.providers.admit(PeerId::random(), false, true, f.now);
    assert_eq!(
        listed,
        Admitted::New,
        "the tracker's providers are not capped"
    );
    // Dropping injected ones frees no room: the cap bounds what is remembered.
    let first = *f
        .providers
        .map
        .keys()
        .find(|p| !f.providers.map[*p].listed)
        .unwrap();
    assert!(f.providers.drop_peer(&first, false, None, f.now));
    let after_drop = f.providers.admit(PeerId::random(), false, false, f.now);
    assert_eq!(after_drop, Admitted::Unchanged);
}

#[test]
fn each_drop_doubles_the_wait_before_the_tracker_can_readmit_a_provider() {
    let (mut f, peers) = fixture(4, 1);
    let a = peers[0];
    let t0 = f.now;
    assert!(f.providers.drop_peer(&a, false, Some(&mut f.picker), t0));
    assert_eq!(
        f.providers.admit(a, true, true, t0 + MIN_READMIT),
        Admitted::Readmitted
    );
    assert_eq!(
        f.providers.get(&a).unwrap().pieces,
        0,
        "re-admitted on probation"
    );
    let t1 = t0 + MIN_READMIT;
    assert!(f.providers.drop_peer(&a, false, Some(&mut f.picker), t1));
    assert_eq!(
        f.providers.admit(a, true, true, t1 + MIN_READMIT),
        Admitted::Unchanged
    );
    assert_eq!(
        f.providers.admit(a, true, true, t1 + 2 * MIN_READMIT),
        Admitted::Readmitted
    );
}

#[test]
fn busy_in_a_long_streak_backs_off_exponentially_until_a_piece_is_delivered() {
    let (mut f, peers) = fixture(20, 1);
    let a = peers[0];
    let busy = |f: &mut Fixture| {
        f.providers
            .on_failure(&a, None, false, Failure::Busy, Some(&mut f.picker), f.now)
    };
    for _ in 0..BUSY_STREAK {
        busy(&mut f);
        assert!(
            f.providers.clear_backoff(f.now),
            "ordinary load: lifted at the next tick"
        );
    }
    busy(&mut f);
    assert!(
        !f.providers.clear_backoff(f.now),
        "a streak: not lifted at once"
    );
    let half = Duration::from_millis(500);
    assert!(f.providers.clear_backoff(f.now + half));
    busy(&mut f);
    assert!(
        !f.providers.clear_backoff(f.now + half),
        "the next waits twice as long"
    );
    assert!(f.providers.clear_backoff(f.now + 2 * half));
    // A delivered piece ends the streak.
    let piece = f.plan().requests[0].1;
    f.store(a, piece);
    busy(&mut f);
    assert!(f.providers.clear_backoff(f.now));
}

#[test]
fn a_slow_provider_holds_no_more_than_its_share_while_another_waits() {
    let limits = Limits {
        window: 8,
        max_window: 32,
        max_in_flight: 8,
        max_timeouts: 3,
    };
    let (mut f, peers) = fixture_with(limits, 100, 2);
    for peer in &peers {
        f.providers.get_mut(peer).unwrap().pieces = 1;
    }
    let (slow, fast) = (peers[0], peers[1]);
    let first = f.plan();
    assert_eq!((f.to(&first, slow).len(), f.to(&first, fast).len()), (4, 4));
    // The fast one delivers again and again; the slow one sits on its four.
    for _ in 0..5 {
        let done: Vec<PieceIndex> = f
            .providers
            .get(&fast)
            .unwrap()
            .in_flight
            .keys()
            .copied()
            .collect();
        for piece in done {
            f.store(fast, piece);
        }
        let next = f.plan();
        assert!(
            f.to(&next, slow).is_empty(),
            "the slow one gets nothing more"
        );
        assert_eq!(f.to(&next, fast).len(), 4);
    }
    // Alone, a provider may use the whole cap.
    let (mut f, peers) = fixture_with(limits, 100, 1);
    f.providers.get_mut(&peers[0]).unwrap().pieces = 1;
    assert_eq!(f.plan().requests.len(), 8);
}

#[test]
fn an_injected_provider_that_never_has_anything_we_lack_is_asked_less_often_then_dropped() {
    let (mut f, _) = fixture(4, 0);
    let (injected, listed) = (PeerId::random(), PeerId::random());
    f.providers.admit(injected, false, false, f.now);
    f.providers.admit(listed, false, true, f.now);
    let mut due = f.providers.have_due(f.now);
    due.sort();
    let mut both = vec![injected, listed];
    both.sort();
    assert_eq!(due, both, "a new partial provider is asked at once");
    assert!(!f.providers.on_have(&injected, false, f.now));
    let one = Duration::from_secs(1);
    assert!(!f.providers.have_due(f.now + one).contains(&injected));
    assert!(
        f.providers.have_due(f.now + 2 * one).contains(&injected),
        "after 2 s"
    );
    let mut dropped = false;
    for _ in 1..USELESS_HAVES {
        dropped = f.providers.on_have(&injected, false, f.now);
    }
    assert!(dropped, "dropped after {USELESS_HAVES} useless bitfields");
    for _ in 0..2 * USELESS_HAVES {
        assert!(
            !f.providers.on_have(&listed, false, f.now),
            "the tracker's are kept"
        );
    }
    assert!(!f.providers.on_have(&listed, true, f.now));
    assert!(
        f.providers.have_due(f.now + one).contains(&listed),
        "useful: every second"
    );
}

#[test]
fn a_crowd_on_probation_holds_at_most_half_the_cap_while_a_proven_provider_can_serve() {
    let (mut f, peers) = fixture_unproven(100, 12);
    let proven = peers[0];
    f.providers.get_mut(&proven).unwrap().pieces = 1;
    let plan = f.plan();
    let to_proven = f.to(&plan, proven).len();
    assert_eq!(plan.requests.len(), LIMITS.max_in_flight);
    assert_eq!(
        plan.requests.len() - to_proven,
        LIMITS.max_in_flight / 2,
        "the crowd holds half"
    );
    assert_eq!(to_proven, LIMITS.max_in_flight / 2);
    // With nobody proven yet, the crowd may use the whole cap, one request each.
    let (mut f, _) = fixture_unproven(100, 12);
    assert_eq!(f.plan().requests.len(), LIMITS.max_in_flight);
}
