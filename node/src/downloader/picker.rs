//! [`PiecePicker`]: which piece to request next. Pure state, no I/O.
//!
//! Every piece is in exactly one of three states: missing (in `missing`), requested (a count in
//! `requested`), or held (bit set in `held`). Requests go out lowest index first, so a download
//! fills its file front to back; a failed request puts its piece back.

use std::collections::{BTreeSet, HashMap};

use bitswarm_protocols::{Lengths, PieceIndex};

/// Tracks which pieces are missing, requested and held.
#[derive(Debug, Clone)]
pub(crate) struct PiecePicker {
    lengths: Lengths,
    /// Pieces nobody has been asked for.
    missing: BTreeSet<PieceIndex>,
    /// Pieces asked for, with the number of outstanding requests.
    requested: HashMap<PieceIndex, u32>,
    /// Pieces verified and stored.
    held: Vec<bool>,
    held_count: u32,
}

impl PiecePicker {
    /// A picker with every piece missing.
    pub(crate) fn new(lengths: Lengths) -> Self {
        PiecePicker {
            lengths,
            missing: lengths.pieces().collect(),
            requested: HashMap::new(),
            held: vec![false; lengths.piece_count() as usize],
            held_count: 0,
        }
    }

    /// A picker with every piece held (a complete file).
    pub(crate) fn full(lengths: Lengths) -> Self {
        let count = lengths.piece_count();
        PiecePicker {
            lengths,
            missing: BTreeSet::new(),
            requested: HashMap::new(),
            held: vec![true; count as usize],
            held_count: count,
        }
    }

    /// The next piece to request, marked requested; `None` when none is left to ask for.
    pub(crate) fn pick(&mut self) -> Option<PieceIndex> {
        let piece = self.missing.pop_first()?;
        *self.requested.entry(piece).or_default() += 1;
        Some(piece)
    }

    /// A request for `piece` failed: it goes back to missing when no other request is out.
    pub(crate) fn failed(&mut self, piece: PieceIndex) {
        if let Some(n) = self.requested.get_mut(&piece) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.requested.remove(&piece);
                if !self.held[piece.as_usize()] {
                    self.missing.insert(piece);
                }
            }
        }
    }

    /// `piece` was verified and stored. Returns false if it was held already.
    pub(crate) fn stored(&mut self, piece: PieceIndex) -> bool {
        self.requested.remove(&piece);
        self.missing.remove(&piece);
        let slot = &mut self.held[piece.as_usize()];
        if *slot {
            return false;
        }
        *slot = true;
        self.held_count += 1;
        true
    }

    /// Whether `piece` is held.
    pub(crate) fn has(&self, piece: PieceIndex) -> bool {
        self.held.get(piece.as_usize()).copied().unwrap_or(false)
    }

    /// Whether every piece is held.
    pub(crate) fn is_complete(&self) -> bool {
        self.held_count == self.lengths.piece_count()
    }

    /// Pieces held, as the wire bitfield (bit `i`, most significant first, is piece `i`).
    pub(crate) fn bitfield(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.held.len().div_ceil(8)];
        for (i, held) in self.held.iter().enumerate() {
            if *held {
                bits[i / 8] |= 0x80 >> (i % 8);
            }
        }
        bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(pieces: u32) -> PiecePicker {
        PiecePicker::new(Lengths::new(u64::from(pieces) * 16384, 16384).unwrap())
    }

    #[test]
    fn given_fresh_picker_then_pieces_come_in_order_once() {
        let mut p = picker(3);
        let got: Vec<u32> = std::iter::from_fn(|| p.pick()).map(|i| i.get()).collect();
        assert_eq!(got, [0, 1, 2]);
        assert!(p.pick().is_none());
    }

    #[test]
    fn given_failed_request_then_piece_is_picked_again() {
        let mut p = picker(2);
        let a = p.pick().unwrap();
        p.failed(a);
        assert_eq!(p.pick(), Some(a));
    }

    #[test]
    fn given_all_stored_then_complete_with_full_bitfield() {
        let mut p = picker(9);
        while let Some(i) = p.pick() {
            assert!(p.stored(i));
        }
        assert!(p.is_complete());
        assert_eq!(p.bitfield(), [0xff, 0x80]);
    }

    #[test]
    fn given_stored_piece_then_late_failure_does_not_resurrect_it() {
        let mut p = picker(1);
        let a = p.pick().unwrap();
        assert!(p.stored(a));
        p.failed(a);
        assert!(p.pick().is_none());
        assert!(!p.stored(a), "stored twice");
    }
}
