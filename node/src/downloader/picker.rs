//! [`PiecePicker`]: which piece to ask which provider for next. Pure state, no I/O.
//!
//! Every piece is in exactly one state: missing, requested (with the number of outstanding
//! requests; more than one only in endgame) or held. `availability[i]` counts the providers
//! whose bitfield has piece `i`; picks go rarest first, and a random starting point makes the
//! choice among equally rare pieces random, so leechers spread out over different pieces and
//! can trade them. Once nothing is missing, endgame hands out pieces that are still requested
//! elsewhere (at most [`ENDGAME_COPIES`] requests per piece), and the first copy to arrive wins.

use bitswarm_protocols::{Lengths, PieceIndex};
use rand::Rng;

use super::bitfield::Bitfield;

/// Most outstanding requests for one piece in endgame.
pub(crate) const ENDGAME_COPIES: u8 = 2;
/// Endgame starts once nothing is missing and at most this many pieces are still requested:
/// duplicating a long tail of outstanding requests would waste more than it saves.
pub(crate) const ENDGAME_MAX_OUTSTANDING: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    Requested(u8),
    Held,
}

/// Tracks piece states and availability for one download.
#[derive(Debug, Clone)]
pub(crate) struct PiecePicker {
    lengths: Lengths,
    state: Vec<State>,
    availability: Vec<u16>,
    held: Bitfield,
    missing: u32,
    /// Pieces in the requested state.
    requested: u32,
}

impl PiecePicker {
    /// A picker with every piece missing.
    pub(crate) fn new(lengths: Lengths) -> Self {
        let n = lengths.piece_count() as usize;
        PiecePicker {
            lengths,
            state: vec![State::Missing; n],
            availability: vec![0; n],
            held: Bitfield::empty(&lengths),
            missing: lengths.piece_count(),
            requested: 0,
        }
    }

    /// Counts a provider's pieces in the availability.
    pub(crate) fn add_provider(&mut self, have: &Bitfield) {
        self.adjust(have, true);
    }

    /// Removes a provider's pieces from the availability.
    pub(crate) fn remove_provider(&mut self, have: &Bitfield) {
        self.adjust(have, false);
    }

    fn adjust(&mut self, have: &Bitfield, add: bool) {
        for p in self.lengths.pieces() {
            if have.has(p) {
                let a = &mut self.availability[p.as_usize()];
                *a = if add {
                    a.saturating_add(1)
                } else {
                    a.saturating_sub(1)
                };
            }
        }
    }

    /// Up to `n` missing pieces that `have` holds, rarest first (ties broken from a starting
    /// point drawn from `rng`), marked requested. `skip` excludes pieces (for example ones that
    /// just timed out at this provider).
    pub(crate) fn pick(
        &mut self,
        have: &Bitfield,
        n: usize,
        skip: impl Fn(PieceIndex) -> bool,
        rng: &mut impl Rng,
    ) -> Vec<PieceIndex> {
        if n == 0 || self.missing == 0 {
            return Vec::new();
        }
        let count = self.lengths.piece_count();
        let start = rng.gen_range(0..count);
        // (availability, distance from the random start, piece): sorting on the first two gives
        // rarest first and a random order among equals.
        let mut candidates: Vec<(u16, u32, PieceIndex)> = self
            .lengths
            .pieces()
            .filter(|p| self.state[p.as_usize()] == State::Missing && have.has(*p) && !skip(*p))
            .map(|p| {
                (
                    self.availability[p.as_usize()],
                    (p.get() + count - start) % count,
                    p,
                )
            })
            .collect();
        if candidates.len() > n {
            candidates.select_nth_unstable(n - 1);
            candidates.truncate(n);
        }
        candidates.sort_unstable();
        let picked: Vec<PieceIndex> = candidates.into_iter().map(|(_, _, p)| p).collect();
        for p in &picked {
            self.state[p.as_usize()] = State::Requested(1);
            self.missing -= 1;
            self.requested += 1;
        }
        picked
    }

    /// Endgame: a piece that is requested elsewhere but not yet held, that `have` holds and
    /// `skip` does not exclude, marked as requested once more.
    pub(crate) fn pick_endgame(
        &mut self,
        have: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        if self.missing != 0 || self.requested > ENDGAME_MAX_OUTSTANDING {
            return None;
        }
        self.copy(have, skip)
    }

    /// A copy of a piece that is requested but not held, that `have` holds and `skip` does not
    /// exclude, once nothing is missing, however many are outstanding (unlike
    /// [`PiecePicker::pick_endgame`]); marked as requested once more. For pieces stuck at
    /// providers on probation.
    pub(crate) fn pick_rescue(
        &mut self,
        have: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        if self.missing != 0 {
            return None;
        }
        self.copy(have, skip)
    }

    /// A requested piece with fewer than [`ENDGAME_COPIES`] requests that `have` holds and
    /// `skip` does not exclude, marked as requested once more.
    fn copy(&mut self, have: &Bitfield, skip: impl Fn(PieceIndex) -> bool) -> Option<PieceIndex> {
        let piece = self.lengths.pieces().find(|p| {
            matches!(self.state[p.as_usize()], State::Requested(k) if k < ENDGAME_COPIES)
                && have.has(*p)
                && !skip(*p)
        })?;
        if let State::Requested(k) = &mut self.state[piece.as_usize()] {
            *k += 1;
        }
        Some(piece)
    }

    /// A request for `piece` ended without the piece: it is missing again when no other
    /// request for it is outstanding.
    pub(crate) fn failed(&mut self, piece: PieceIndex) {
        let s = &mut self.state[piece.as_usize()];
        match *s {
            State::Requested(1) => {
                *s = State::Missing;
                self.missing += 1;
                self.requested -= 1;
            }
            State::Requested(k) => *s = State::Requested(k - 1),
            State::Missing | State::Held => {}
        }
    }

    /// `piece` was verified and stored. Returns false if it was held already.
    pub(crate) fn stored(&mut self, piece: PieceIndex) -> bool {
        let s = &mut self.state[piece.as_usize()];
        match *s {
            State::Held => return false,
            State::Missing => self.missing -= 1,
            State::Requested(_) => self.requested -= 1,
        }
        *s = State::Held;
        self.held.set(piece)
    }

    /// Whether `piece` is held.
    pub(crate) fn has(&self, piece: PieceIndex) -> bool {
        self.held.has(piece)
    }

    /// Whether every piece is held.
    pub(crate) fn is_complete(&self) -> bool {
        self.held.is_full()
    }

    /// The pieces held.
    pub(crate) fn held(&self) -> &Bitfield {
        &self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn lengths(pieces: u32) -> Lengths {
        Lengths::new(u64::from(pieces) * 16384, 16384).unwrap()
    }

    fn bits(l: &Lengths, pieces: &[u32]) -> Bitfield {
        let mut b = Bitfield::empty(l);
        for p in pieces {
            b.set(l.piece(*p).unwrap());
        }
        b
    }

    #[test]
    fn given_fresh_picker_then_every_piece_is_picked_once() {
        let l = lengths(5);
        let mut p = PiecePicker::new(l);
        let full = Bitfield::full(&l);
        p.add_provider(&full);
        let mut got: Vec<u32> = p
            .pick(&full, 10, |_| false, &mut rng())
            .iter()
            .map(|i| i.get())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(p.pick(&full, 1, |_| false, &mut rng()).is_empty());
    }

    #[test]
    fn given_uneven_availability_then_rarest_piece_comes_first() {
        let l = lengths(4);
        let mut p = PiecePicker::new(l);
        let seeder = Bitfield::full(&l);
        p.add_provider(&seeder);
        p.add_provider(&bits(&l, &[0, 1, 3]));
        p.add_provider(&bits(&l, &[0, 1]));
        // Availability: 0 -> 3, 1 -> 3, 2 -> 1, 3 -> 2.
        let first: Vec<u32> = p
            .pick(&seeder, 2, |_| false, &mut rng())
            .iter()
            .map(|i| i.get())
            .collect();
        assert_eq!(first, [2, 3]);
    }

    #[test]
    fn given_peer_without_piece_then_it_is_not_asked_for_it() {
        let l = lengths(3);
        let mut p = PiecePicker::new(l);
        let partial = bits(&l, &[1]);
        p.add_provider(&partial);
        let got = p.pick(&partial, 3, |_| false, &mut rng());
        assert_eq!(got, [l.piece(1).unwrap()]);
    }

    #[test]
    fn given_failed_request_then_piece_is_picked_again_unless_skipped() {
        let l = lengths(1);
        let full = Bitfield::full(&l);
        let mut p = PiecePicker::new(l);
        let a = p.pick(&full, 1, |_| false, &mut rng())[0];
        p.failed(a);
        assert!(p.pick(&full, 1, |x| x == a, &mut rng()).is_empty());
        assert_eq!(p.pick(&full, 1, |_| false, &mut rng()), [a]);
    }

    #[test]
    fn given_a_long_tail_of_requests_then_endgame_waits() {
        let l = lengths(ENDGAME_MAX_OUTSTANDING + 1);
        let full = Bitfield::full(&l);
        let mut p = PiecePicker::new(l);
        let all = p.pick(&full, 64, |_| false, &mut rng());
        assert!(p.pick_endgame(&full, |_| false).is_none());
        assert!(p.stored(all[0]));
        assert!(p.pick_endgame(&full, |_| false).is_some());
    }

    #[test]
    fn given_everything_requested_then_endgame_duplicates_once_and_first_copy_wins() {
        let l = lengths(2);
        let full = Bitfield::full(&l);
        let mut p = PiecePicker::new(l);
        let both = p.pick(&full, 2, |_| false, &mut rng());
        assert_eq!(both.len(), 2);
        let dup = p.pick_endgame(&full, |x| x == both[0]).unwrap();
        assert_eq!(dup, both[1]);
        assert!(
            p.pick_endgame(&full, |x| x == both[0]).is_none(),
            "at most two copies"
        );
        assert!(p.stored(dup));
        assert!(!p.stored(dup), "the losing copy is not stored twice");
        p.failed(dup);
        assert!(p.stored(both[0]));
        assert!(p.is_complete());
    }
}
