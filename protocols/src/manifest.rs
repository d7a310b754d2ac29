//! The [`Manifest`]: what a downloader needs to check every piece of one file.

use serde::{Deserialize, Serialize};

use crate::{
    hash::{hash_piece, root_of},
    FileId, FileName, Lengths, ManifestError, PieceIndex, TypeError,
};

/// Name, size, piece size and the BLAKE3 value of every piece of one file, verified to merge to
/// its [`FileId`].
///
/// A `Manifest` can only be made from values that merge to its id ([`Manifest::new`] or
/// [`WireManifest::verify`]), so holding one means its piece values can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    id: FileId,
    name: FileName,
    lengths: Lengths,
    values: Vec<[u8; 32]>,
}

/// A manifest as it travels: unverified until [`WireManifest::verify`] checks it against the id
/// that was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireManifest {
    /// The file's name.
    pub name: FileName,
    /// The file's size in bytes.
    pub size: u64,
    /// The piece size in bytes.
    pub piece_size: u32,
    /// The piece values, 32 bytes each, concatenated (one CBOR byte string).
    #[serde(with = "serde_bytes")]
    pub values: Vec<u8>,
}

impl WireManifest {
    /// Accepts the manifest only if its lengths are valid and its values merge to `id`.
    ///
    /// # Errors
    /// [`ManifestError`] says which check failed.
    pub fn verify(self, id: FileId) -> Result<Manifest, ManifestError> {
        let lengths = Lengths::new(self.size, self.piece_size)?;
        // The root hash does not depend on the piece size, so a manifest could verify with any
        // power of two. Pieces are requested by index alone, so every peer must cut the file the
        // same way: the piece size is fixed by the size.
        let canonical = Lengths::for_size(self.size)?;
        if canonical.piece_size() != self.piece_size {
            return Err(ManifestError::Invalid(TypeError::InvalidPieceSize(
                u64::from(self.piece_size),
            )));
        }
        let expected = lengths.piece_count() as usize;
        if self.values.len() != expected * 32 {
            return Err(ManifestError::WrongPieceCount {
                got: self.values.len() / 32,
                expected,
            });
        }
        let values: Vec<[u8; 32]> = self
            .values
            .chunks_exact(32)
            .map(|c| {
                let mut v = [0u8; 32];
                v.copy_from_slice(c);
                v
            })
            .collect();
        if root_of(&lengths, &values) != id {
            return Err(ManifestError::RootMismatch(id));
        }
        Ok(Manifest {
            id,
            name: self.name,
            lengths,
            values,
        })
    }
}

impl Manifest {
    /// A manifest from locally computed piece values (see [`crate::PieceHasher`]).
    ///
    /// # Errors
    /// [`ManifestError::WrongPieceCount`] if `values` does not match `lengths`.
    pub fn new(
        name: FileName,
        lengths: Lengths,
        values: Vec<[u8; 32]>,
    ) -> Result<Self, ManifestError> {
        let expected = lengths.piece_count() as usize;
        if values.len() != expected {
            return Err(ManifestError::WrongPieceCount {
                got: values.len(),
                expected,
            });
        }
        let id = root_of(&lengths, &values);
        Ok(Manifest {
            id,
            name,
            lengths,
            values,
        })
    }

    /// The manifest of `data` held in memory, with the default piece size for its length
    /// (tests, fuzz seeds and tools; a shared file is hashed from disk, piece by piece).
    ///
    /// # Errors
    /// [`ManifestError::Invalid`] past the largest file size.
    pub fn of_bytes(name: FileName, data: &[u8]) -> Result<Self, ManifestError> {
        let lengths = Lengths::for_size(data.len() as u64)?;
        let mut hasher = crate::PieceHasher::new(lengths);
        while let Some(piece) = hasher.next_piece() {
            let start = lengths.offset(piece) as usize;
            hasher.update(
                piece,
                &data[start..start + lengths.piece_len(piece) as usize],
            );
        }
        let (_, values) = hasher.finish();
        Manifest::new(name, lengths, values)
    }

    /// The file id these values merge to.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The file's name.
    pub fn name(&self) -> &FileName {
        &self.name
    }

    /// The file's piece arithmetic.
    pub fn lengths(&self) -> &Lengths {
        &self.lengths
    }

    /// Checks one piece's bytes against its value.
    ///
    /// # Errors
    /// [`ManifestError::PieceLength`] or [`ManifestError::PieceMismatch`].
    pub fn verify_piece(&self, piece: PieceIndex, bytes: &[u8]) -> Result<(), ManifestError> {
        let expected = self.lengths.piece_len(piece);
        if bytes.len() != expected as usize {
            return Err(ManifestError::PieceLength {
                index: piece.get(),
                got: bytes.len(),
                expected: u64::from(expected),
            });
        }
        let value = hash_piece(&self.lengths, piece, bytes);
        if Some(&value) != self.values.get(piece.as_usize()) {
            return Err(ManifestError::PieceMismatch(piece.get()));
        }
        Ok(())
    }

    /// The wire form of this manifest.
    pub fn to_wire(&self) -> WireManifest {
        WireManifest {
            name: self.name.clone(),
            size: self.lengths.size(),
            piece_size: self.lengths.piece_size(),
            values: self.values.concat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PieceHasher, TypeError, DEFAULT_PIECE_SIZE as P, MIN_PIECE_SIZE};

    fn manifest_of(bytes: &[u8]) -> Manifest {
        let lengths = Lengths::for_size(bytes.len() as u64).unwrap();
        let mut h = PieceHasher::new(lengths);
        while let Some(p) = h.next_piece() {
            let s = lengths.offset(p) as usize;
            h.update(p, &bytes[s..s + lengths.piece_len(p) as usize]);
        }
        let (_, values) = h.finish();
        Manifest::new(FileName::new("f").unwrap(), lengths, values).unwrap()
    }

    fn piece<'a>(m: &Manifest, bytes: &'a [u8], i: u32) -> (PieceIndex, &'a [u8]) {
        let p = m.lengths().piece(i).unwrap();
        let s = m.lengths().offset(p) as usize;
        (p, &bytes[s..s + m.lengths().piece_len(p) as usize])
    }

    #[test]
    fn honest_manifest_and_pieces_verify() {
        let bytes: Vec<u8> = (0..5 * P + 7).map(|i| (i % 251) as u8).collect();
        let m = manifest_of(&bytes);
        assert_eq!(m.id(), FileId::of(&bytes));
        let back = m.to_wire().verify(m.id()).unwrap();
        for i in 0..back.lengths().piece_count() {
            let (p, b) = piece(&back, &bytes, i);
            back.verify_piece(p, b).unwrap();
        }
    }

    #[test]
    fn tampered_manifest_is_rejected() {
        let bytes = vec![7u8; 3 * P as usize];
        let m = manifest_of(&bytes);
        let mut wire = m.to_wire();
        wire.values[40] ^= 1;
        assert_eq!(
            wire.verify(m.id()),
            Err(ManifestError::RootMismatch(m.id()))
        );

        let mut wire = m.to_wire();
        wire.size += 1;
        assert!(
            wire.verify(m.id()).is_err(),
            "a changed size changes the tree"
        );

        let mut wire = m.to_wire();
        wire.values.truncate(32);
        assert!(matches!(
            wire.verify(m.id()),
            Err(ManifestError::WrongPieceCount { .. })
        ));

        let mut wire = m.to_wire();
        wire.piece_size = 1000;
        assert!(matches!(
            wire.verify(m.id()),
            Err(ManifestError::Invalid(TypeError::InvalidPieceSize(1000)))
        ));
        assert!(m.to_wire().verify(FileId::of(b"other")).is_err());
    }

    #[test]
    fn a_manifest_cut_with_another_piece_size_is_refused_although_its_root_matches() {
        let bytes: Vec<u8> = (0..2 * P).map(|i| (i % 7) as u8).collect();
        let lengths = Lengths::new(bytes.len() as u64, MIN_PIECE_SIZE).unwrap();
        let mut h = PieceHasher::new(lengths);
        while let Some(p) = h.next_piece() {
            let s = lengths.offset(p) as usize;
            h.update(p, &bytes[s..s + lengths.piece_len(p) as usize]);
        }
        let (root, values) = h.finish();
        assert_eq!(
            root,
            FileId::of(&bytes),
            "same root whatever the piece size"
        );
        let odd = Manifest::new(FileName::new("f").unwrap(), lengths, values).unwrap();
        assert!(matches!(
            odd.to_wire().verify(root),
            Err(ManifestError::Invalid(TypeError::InvalidPieceSize(_)))
        ));
        assert!(manifest_of(&bytes).to_wire().verify(root).is_ok());
    }

    #[test]
    fn tampered_piece_is_rejected() {
        let mut bytes: Vec<u8> = (0..4 * P).map(|i| (i % 13) as u8).collect();
        let m = manifest_of(&bytes);
        bytes[P as usize + 3] ^= 0x80;
        let (p, b) = piece(&m, &bytes, 1);
        assert_eq!(m.verify_piece(p, b), Err(ManifestError::PieceMismatch(1)));
        let (p0, b0) = piece(&m, &bytes, 0);
        assert!(m.verify_piece(p0, b0).is_ok());
        assert!(matches!(
            m.verify_piece(p0, &b0[1..]),
            Err(ManifestError::PieceLength { .. })
        ));
    }

    #[test]
    fn single_piece_and_empty_files_verify_against_plain_hash() {
        for bytes in [vec![], vec![1u8], vec![9u8; 100]] {
            let m = manifest_of(&bytes);
            assert_eq!(m.id(), FileId::of(&bytes));
            let m = m.to_wire().verify(FileId::of(&bytes)).unwrap();
            if !bytes.is_empty() {
                let (p, b) = piece(&m, &bytes, 0);
                m.verify_piece(p, b).unwrap();
                let mut bad = b.to_vec();
                bad[0] ^= 1;
                assert!(m.verify_piece(p, &bad).is_err());
            }
        }
    }
}
