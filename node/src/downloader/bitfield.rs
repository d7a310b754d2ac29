//! [`Bitfield`]: which pieces of a file a peer holds, and its wire form.

use bitswarm_protocols::{Lengths, PieceIndex};

/// One bit per piece. Invariant: `bits.len() == count.div_ceil(8)` and the unused bits of the
/// last byte are zero, so two bitfields of one file compare equal iff they hold the same pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitfield {
    bits: Vec<u8>,
    count: u32,
    ones: u32,
}

impl Bitfield {
    /// No piece held.
    pub(crate) fn empty(lengths: &Lengths) -> Self {
        let count = lengths.piece_count();
        Bitfield {
            bits: vec![0; count.div_ceil(8) as usize],
            count,
            ones: 0,
        }
    }

    /// Every piece held.
    pub(crate) fn full(lengths: &Lengths) -> Self {
        let mut b = Self::empty(lengths);
        for p in lengths.pieces() {
            b.set(p);
        }
        b
    }

    /// Validates a bitfield from the network: exact length, no bits past the last piece.
    pub(crate) fn from_wire(lengths: &Lengths, bits: Vec<u8>) -> Option<Self> {
        let count = lengths.piece_count();
        if bits.len() != count.div_ceil(8) as usize {
            return None;
        }
        let tail = count % 8;
        if tail != 0 && bits.last().is_some_and(|last| last & (0xff >> tail) != 0) {
            return None;
        }
        let ones = bits.iter().map(|b| b.count_ones()).sum();
        Some(Bitfield { bits, count, ones })
    }

    /// The wire form (bit `i`, most significant first in each byte, is piece `i`).
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        self.bits.clone()
    }

    /// Whether this holds a piece that `other` (of the same file) does not.
    pub(crate) fn has_any_not_in(&self, other: &Bitfield) -> bool {
        self.bits
            .iter()
            .zip(&other.bits)
            .any(|(mine, theirs)| mine & !theirs != 0)
    }

    /// Whether piece `p` is held.
    pub(crate) fn has(&self, p: PieceIndex) -> bool {
        let i = p.as_usize();
        self.bits
            .get(i / 8)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// Marks piece `p` held; returns whether it was new.
    pub(crate) fn set(&mut self, p: PieceIndex) -> bool {
        let i = p.as_usize();
        match self.bits.get_mut(i / 8) {
            Some(b) if *b & (0x80 >> (i % 8)) == 0 => {
                *b |= 0x80 >> (i % 8);
                self.ones += 1;
                true
            }
            _ => false,
        }
    }

    /// Whether every piece is held.
    pub(crate) fn is_full(&self) -> bool {
        self.ones == self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(pieces: u32) -> Lengths {
        Lengths::new(u64::from(pieces) * 16384, 16384).unwrap()
    }

    #[test]
    fn wire_bitfields_are_validated() {
        let l = lengths(10);
        assert!(Bitfield::from_wire(&l, vec![0xff, 0xc0]).is_some_and(|b| b.is_full()));
        assert!(Bitfield::from_wire(&l, vec![0xff]).is_none(), "too short");
        assert!(
            Bitfield::from_wire(&l, vec![0xff, 0xc0, 0]).is_none(),
            "too long"
        );
        assert!(
            Bitfield::from_wire(&l, vec![0xff, 0xe0]).is_none(),
            "bit past the end"
        );
    }

    #[test]
    fn set_and_has_agree_with_the_wire_form() {
        let l = lengths(9);
        let mut b = Bitfield::empty(&l);
        assert!(b.set(l.piece(8).unwrap()));
        assert!(!b.set(l.piece(8).unwrap()));
        assert!(b.has(l.piece(8).unwrap()) && !b.has(l.piece(0).unwrap()));
        assert_eq!(b.to_wire(), [0, 0x80]);
        assert!(Bitfield::full(&l).is_full());
    }
}
