//! [`Holdings`]: what this node holds and serves, and the pure answer to a transfer request.
//!
//! A file is held complete (shared, or downloaded and renamed) or partial (in download: its
//! `.part` file and the pieces verified so far). Holdings keep their own record of the verified
//! pieces, told by the downloader as each one is written, so answering a request never asks the
//! downloader. The event loop turns an [`Answer`] into a response or a read on a blocking task.

use std::{collections::HashMap, fs::File, sync::Arc};

use bitswarm_protocols::{
    tracker::AnnouncedFile, transfer, ErrorCode, FileId, FileName, Lengths, Manifest, PieceIndex,
    Prepared,
};

use crate::downloader::{Bitfield, DownloadId};

/// A file this node can serve pieces of.
#[derive(Debug)]
pub(crate) struct HeldFile {
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) file: Arc<File>,
    /// The manifest response, encoded once.
    response: transfer::Response,
    /// `None` when complete; otherwise the download writing it and the pieces it verified.
    partial: Option<(DownloadId, Bitfield)>,
}

/// A directory this node shares: its collection's canonical encoding, served by id.
#[derive(Debug)]
struct HeldCollection {
    name: FileName,
    size: u64,
    /// The collection response, encoded once.
    response: transfer::Response,
}

/// The manifest response of `manifest`: encoded once when possible (it always is), else the
/// plain message.
fn manifest_response(manifest: &Manifest) -> transfer::Response {
    let wire = manifest.to_wire();
    match Prepared::manifest(&wire) {
        Ok(prepared) => transfer::Response::Prepared(prepared),
        Err(_) => transfer::Response::Manifest(wire),
    }
}

/// How to answer a transfer request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Send this at once.
    Respond(transfer::Response),
    /// Read this piece (on a blocking task), then send it.
    Read {
        file: Arc<File>,
        lengths: Lengths,
        piece: PieceIndex,
    },
}

/// Every file and collection this node serves.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    files: HashMap<FileId, HeldFile>,
    collections: HashMap<FileId, HeldCollection>,
}

impl Holdings {
    /// Serves `manifest`'s file complete (a share, or a copy found already present); replaces
    /// a partial copy.
    pub(crate) fn hold_complete(&mut self, manifest: Arc<Manifest>, file: Arc<File>) {
        self.files.insert(
            manifest.id(),
            HeldFile {
                response: manifest_response(&manifest),
                manifest,
                file,
                partial: None,
            },
        );
    }

    /// Serves the pieces `have` of a file `download` is writing, unless the file is held
    /// already (a complete copy keeps serving).
    pub(crate) fn hold_partial(
        &mut self,
        manifest: Arc<Manifest>,
        file: Arc<File>,
        download: DownloadId,
        have: Bitfield,
    ) {
        self.files.entry(manifest.id()).or_insert_with(|| HeldFile {
            response: manifest_response(&manifest),
            manifest,
            file,
            partial: Some((download, have)),
        });
    }

    /// `download` verified and wrote `piece` of `id`.
    pub(crate) fn verified(&mut self, id: &FileId, download: DownloadId, piece: PieceIndex) {
        if let Some(HeldFile {
            partial: Some((owner, have)),
            ..
        }) = self.files.get_mut(id)
        {
            if *owner == download {
                have.set(piece);
            }
        }
    }

    /// `download` finished `id`: it is held complete now.
    pub(crate) fn completed(&mut self, id: &FileId, download: DownloadId) {
        if let Some(held) = self.files.get_mut(id) {
            if held
                .partial
                .as_ref()
                .is_some_and(|(owner, _)| *owner == download)
            {
                held.partial = None;
            }
        }
    }

    /// `download` failed: its partial copy of `id` is no longer served. Returns whether it
    /// was (so the tracker should be told).
    pub(crate) fn release(&mut self, id: &FileId, download: DownloadId) -> bool {
        let owned = self.files.get(id).is_some_and(|h| {
            h.partial
                .as_ref()
                .is_some_and(|(owner, _)| *owner == download)
        });
        if owned {
            self.files.remove(id);
        }
        owned
    }

    /// Serves a collection's encoding under its id.
    pub(crate) fn add_collection(
        &mut self,
        id: FileId,
        name: FileName,
        size: u64,
        encoded: Vec<u8>,
    ) {
        let response = match Prepared::collection(&encoded) {
            Ok(prepared) => transfer::Response::Prepared(prepared),
            Err(_) => transfer::Response::Collection(encoded),
        };
        self.collections.insert(
            id,
            HeldCollection {
                name,
                size,
                response,
            },
        );
    }

    /// Whether nothing is served.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.collections.is_empty()
    }

    /// Whether some file is held complete.
    pub(crate) fn any_complete(&self) -> bool {
        self.files.values().any(|h| h.partial.is_none())
    }

    /// What to announce: every collection, and every file with whether it is complete.
    pub(crate) fn announced(&self) -> Vec<AnnouncedFile> {
        let collections = self.collections.iter().map(|(id, c)| AnnouncedFile {
            id: *id,
            name: c.name.clone(),
            size: c.size,
            complete: true,
        });
        let files = self.files.values().map(|h| AnnouncedFile {
            id: h.manifest.id(),
            name: h.manifest.name().clone(),
            size: h.manifest.lengths().size(),
            complete: h.partial.is_none(),
        });
        collections.chain(files).collect()
    }

    /// The answer to `request`: unknown files and pieces not held yet are `NotFound`, an index
    /// past the end is `BadRequest`, a held piece is to be read (if [`crate::serving::Serving`]
    /// admits it; else `Busy`).
    pub(crate) fn answer(&self, request: &transfer::Request) -> Answer {
        use transfer::Response;
        let not_found = Answer::Respond(Response::Error(ErrorCode::NotFound));
        match *request {
            transfer::Request::Manifest { id } => {
                match (self.files.get(&id), self.collections.get(&id)) {
                    // A clone of a prepared response shares its bytes.
                    (Some(held), _) => Answer::Respond(held.response.clone()),
                    (None, Some(c)) => Answer::Respond(c.response.clone()),
                    (None, None) => not_found,
                }
            }
            transfer::Request::Have { id } => match self.files.get(&id) {
                Some(held) => {
                    let bits = match &held.partial {
                        Some((_, have)) => have.to_wire(),
                        None => Bitfield::full(held.manifest.lengths()).to_wire(),
                    };
                    Answer::Respond(Response::Have(bits))
                }
                None => not_found,
            },
            transfer::Request::Piece { id, index, .. } => {
                let Some(held) = self.files.get(&id) else {
                    return not_found;
                };
                let lengths = *held.manifest.lengths();
                let Ok(piece) = lengths.piece(index) else {
                    return Answer::Respond(Response::Error(ErrorCode::BadRequest));
                };
                if held
                    .partial
                    .as_ref()
                    .is_some_and(|(_, have)| !have.has(piece))
                {
                    return not_found;
                }
                Answer::Read {
                    file: Arc::clone(&held.file),
                    lengths,
                    piece,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bitswarm_protocols::PieceHasher;

    use super::*;

    fn manifest(size: u64) -> Arc<Manifest> {
        let lengths = Lengths::new(size, 16384).unwrap();
        let mut hasher = PieceHasher::new(lengths);
        let data = vec![5u8; size as usize];
        while let Some(piece) = hasher.next_piece() {
            let start = lengths.offset(piece) as usize;
            hasher.update(
                piece,
                &data[start..start + lengths.piece_len(piece) as usize],
            );
        }
        let (_, values) = hasher.finish();
        Arc::new(Manifest::new(FileName::new("f").unwrap(), lengths, values).unwrap())
    }

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().unwrap())
    }

    fn code(answer: Answer) -> Option<ErrorCode> {
        match answer {
            Answer::Respond(transfer::Response::Error(code)) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn a_partial_file_serves_only_verified_pieces_and_a_complete_one_all() {
        let m = manifest(3 * 16384);
        let id = m.id();
        let dl = DownloadId::for_test(1);
        let mut h = Holdings::default();
        h.hold_partial(Arc::clone(&m), file(), dl, Bitfield::empty(m.lengths()));
        let piece = |i| transfer::Request::Piece {
            id,
            index: i,
            expect: 0,
        };
        assert_eq!(code(h.answer(&piece(1))), Some(ErrorCode::NotFound));
        h.verified(&id, dl, m.lengths().piece(1).unwrap());
        assert!(matches!(h.answer(&piece(1)), Answer::Read { .. }));
        assert_eq!(code(h.answer(&piece(0))), Some(ErrorCode::NotFound));
        assert_eq!(code(h.answer(&piece(3))), Some(ErrorCode::BadRequest));
        match h.answer(&transfer::Request::Have { id }) {
            Answer::Respond(transfer::Response::Have(bits)) => assert_eq!(bits, [0b0100_0000]),
            other => panic!("{other:?}"),
        }
        assert!(!h.announced()[0].complete);
        h.completed(&id, dl);
        assert!(matches!(h.answer(&piece(0)), Answer::Read { .. }));
        assert!(h.announced()[0].complete);
        assert!(!h.release(&id, dl), "a completed file is not released");
    }

    #[test]
    fn held_pieces_are_read_and_unknown_ids_not_found() {
        let m = manifest(16384);
        let id = m.id();
        let mut h = Holdings::default();
        h.hold_complete(Arc::clone(&m), file());
        let req = transfer::Request::Piece {
            id,
            index: 0,
            expect: 0,
        };
        assert!(matches!(h.answer(&req), Answer::Read { .. }));
        let other = transfer::Request::Manifest {
            id: FileId::of(b"other"),
        };
        assert_eq!(code(h.answer(&other)), Some(ErrorCode::NotFound));
        assert!(matches!(
            h.answer(&transfer::Request::Manifest { id }),
            Answer::Respond(transfer::Response::Prepared(_))
        ));
    }

    #[test]
    fn a_failed_download_stops_serving_its_copy_but_never_a_complete_one() {
        let m = manifest(16384);
        let id = m.id();
        let (one, two) = (DownloadId::for_test(1), DownloadId::for_test(2));
        let mut h = Holdings::default();
        h.hold_complete(Arc::clone(&m), file());
        h.hold_partial(Arc::clone(&m), file(), one, Bitfield::empty(m.lengths()));
        assert!(!h.release(&id, one), "the complete copy keeps serving");
        let mut h = Holdings::default();
        h.hold_partial(Arc::clone(&m), file(), one, Bitfield::empty(m.lengths()));
        assert!(!h.release(&id, two), "only its own download releases it");
        assert!(h.release(&id, one));
        assert!(h.is_empty());
    }
}
