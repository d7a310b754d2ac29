//! BLAKE3 chaining values of pieces, and merging them up to a file's root hash.
//!
//! A file of `n >= 2` pieces is a BLAKE3 tree whose complete subtrees are the pieces (piece sizes
//! are powers of two of at least one BLAKE3 chunk). Each piece's chaining value comes from
//! `blake3::hazmat` (`set_input_offset` + `finalize_non_root`), and merging them up BLAKE3's
//! left-complete tree gives exactly `blake3::hash(file)`. A file of one piece has no parent
//! nodes: its single "chaining value" is the root hash itself.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::{FileId, Lengths, PieceIndex};

/// The value a manifest lists for `piece`: its chaining value, or for a one-piece file the root
/// hash.
///
/// `bytes` must be the whole piece (`lengths.piece_len(piece)` bytes).
pub fn hash_piece(lengths: &Lengths, piece: PieceIndex, bytes: &[u8]) -> [u8; 32] {
    if lengths.piece_count() == 1 {
        return *blake3::hash(bytes).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    // Piece offsets are multiples of a power-of-two piece size >= 16 KiB, so they are whole
    // BLAKE3 chunks and each piece is a complete subtree: the preconditions of the hazmat API.
    hasher.set_input_offset(lengths.offset(piece));
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// Merges the listed values of every piece into the file's root hash.
///
/// `values.len()` must equal `lengths.piece_count()` (checked by the caller).
pub(crate) fn root_of(lengths: &Lengths, values: &[[u8; 32]]) -> FileId {
    match values {
        [] => FileId::of(b""),
        [only] => FileId::from_bytes(*only),
        _ => {
            let piece = u64::from(lengths.piece_size());
            let size = lengths.size();
            let left = left_subtree_len(size);
            let split = usize::try_from(left / piece).unwrap_or(values.len());
            let l = merge(&values[..split], piece, left);
            let r = merge(&values[split..], piece, size - left);
            FileId::from(merge_subtrees_root(&l, &r, Mode::Hash))
        }
    }
}

/// The non-root chaining value of the subtree of `len` bytes made of `values`.
fn merge(values: &[ChainingValue], piece: u64, len: u64) -> ChainingValue {
    if values.len() <= 1 {
        return values.first().copied().unwrap_or_default();
    }
    let left = left_subtree_len(len);
    let split = usize::try_from(left / piece).unwrap_or(values.len());
    let l = merge(&values[..split], piece, left);
    let r = merge(&values[split..], piece, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// Hashes a file piece by piece, for sharing: feed each whole piece in order, then
/// [`PieceHasher::finish`].
#[derive(Debug)]
pub struct PieceHasher {
    lengths: Lengths,
    values: Vec<[u8; 32]>,
}

impl PieceHasher {
    /// A hasher for a file of these lengths.
    pub fn new(lengths: Lengths) -> Self {
        PieceHasher {
            lengths,
            values: Vec::with_capacity(lengths.piece_count() as usize),
        }
    }

    /// The next piece to feed, or `None` when every piece was fed.
    pub fn next_piece(&self) -> Option<PieceIndex> {
        u32::try_from(self.values.len())
            .ok()
            .and_then(|i| self.lengths.piece(i).ok())
    }

    /// Feeds the bytes of [`PieceHasher::next_piece`].
    pub fn update(&mut self, piece: PieceIndex, bytes: &[u8]) {
        self.values.push(hash_piece(&self.lengths, piece, bytes));
    }

    /// The root hash and every piece's value.
    pub fn finish(self) -> (FileId, Vec<[u8; 32]>) {
        (root_of(&self.lengths, &self.values), self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_PIECE_SIZE, MIN_PIECE_SIZE};

    fn data(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn root_by_pieces(bytes: &[u8], piece_size: u32) -> FileId {
        let lengths = Lengths::new(bytes.len() as u64, piece_size).unwrap();
        let mut hasher = PieceHasher::new(lengths);
        while let Some(p) = hasher.next_piece() {
            let start = lengths.offset(p) as usize;
            hasher.update(p, &bytes[start..start + lengths.piece_len(p) as usize]);
        }
        hasher.finish().0
    }

    #[test]
    fn root_equals_b3sum_at_piece_boundaries() {
        let p = MIN_PIECE_SIZE as usize;
        for len in [
            0,
            1,
            p - 1,
            p,
            p + 1,
            2 * p,
            3 * p,
            5 * p + 17,
            7 * p + 1,
            8 * p,
            13 * p + 999,
        ] {
            let bytes = data(len);
            let expected = FileId::from(blake3::hash(&bytes));
            assert_eq!(
                root_by_pieces(&bytes, MIN_PIECE_SIZE),
                expected,
                "len {len}"
            );
        }
    }

    #[test]
    fn root_equals_b3sum_with_default_pieces() {
        let p = DEFAULT_PIECE_SIZE as usize;
        for len in [p - 1, p, p + 1, 3 * p + 12345] {
            let bytes = data(len);
            assert_eq!(
                root_by_pieces(&bytes, DEFAULT_PIECE_SIZE),
                FileId::from(blake3::hash(&bytes)),
                "len {len}"
            );
        }
    }
}
