//! [`Holdings`]: what this node holds and serves, and the pure answer to a transfer request.
//!
//! A file is held complete (shared, or downloaded and renamed) or partial (in download: its
//! `.part` file and the pieces verified so far). Holdings keep their own record of the verified
//! pieces, told by the downloader as each one is written, so answering a request never asks the
//! downloader. The event loop turns an [`Answer`] into a response or a read on a blocking task.
//!
//! What the user shares ([`Holdings::shares`]) are the roots: files held on their own account
//! (shared by path, or downloaded) and directories (collections). A file held only because a
//! shared directory holds it is served, but unsharing that directory stops serving it unless
//! another root still needs it ([`Holdings::unshare`]).

use std::{collections::HashMap, fs::File, sync::Arc};

use bitswarm_protocols::{
    tracker::AnnouncedFile, transfer, ErrorCode, FileId, FileName, Lengths, Manifest, PieceIndex,
    Prepared,
};

use crate::{
    client::SharedFile,
    downloader::{Bitfield, DownloadId},
};

/// A file this node can serve pieces of.
#[derive(Debug)]
pub(crate) struct HeldFile {
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) file: Arc<File>,
    /// The manifest response, encoded once.
    response: transfer::Response,
    /// `None` when complete; otherwise the download writing it and the pieces it verified.
    partial: Option<(DownloadId, Bitfield)>,
    /// Held on its own account (shared by path, or downloaded), not only as a file of a
    /// shared directory.
    direct: bool,
}

/// A directory this node shares: its collection's canonical encoding, served by id.
#[derive(Debug)]
struct HeldCollection {
    name: FileName,
    size: u64,
    /// Entries left out when the directory was hashed.
    skipped: usize,
    /// The ids of its files, each once.
    /// Sorted and without repeats (searched by `binary_search`).
    members: Vec<FileId>,
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
    /// Serves `manifest`'s file complete on its own account (a share, or a copy found already
    /// present); replaces a partial copy.
    pub(crate) fn hold_complete(&mut self, manifest: Arc<Manifest>, file: Arc<File>) {
        self.files.insert(
            manifest.id(),
            HeldFile {
                response: manifest_response(&manifest),
                manifest,
                file,
                partial: None,
                direct: true,
            },
        );
    }

    /// Serves `manifest`'s file complete as a file of a shared directory: replaces a partial
    /// copy, keeps a complete one (and whether it is held on its own account).
    fn hold_member(&mut self, manifest: Arc<Manifest>, file: Arc<File>) {
        let held = self.files.entry(manifest.id()).or_insert_with(|| HeldFile {
            response: manifest_response(&manifest),
            manifest: Arc::clone(&manifest),
            file: Arc::clone(&file),
            partial: None,
            direct: false,
        });
        if held.partial.is_some() {
            // The download goes on, but this copy is served (and its own is not needed). It
            // stays held on its own account (`direct`): unsharing the directory must not take
            // a file this node is downloading for itself.
            held.partial = None;
            held.file = file;
        }
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
            direct: true,
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

    /// Serves a shared directory: its collection's encoding under its id (`shared.id`), and
    /// its files.
    pub(crate) fn add_collection(
        &mut self,
        shared: &SharedFile,
        encoded: Vec<u8>,
        files: Vec<(Arc<Manifest>, Arc<File>)>,
    ) {
        let response = match Prepared::collection(&encoded) {
            Ok(prepared) => transfer::Response::Prepared(prepared),
            Err(_) => transfer::Response::Collection(encoded),
        };
        let mut members: Vec<FileId> = files.iter().map(|(m, _)| m.id()).collect();
        members.sort();
        members.dedup();
        for (manifest, file) in files {
            self.hold_member(manifest, file);
        }
        self.collections.insert(
            shared.id,
            HeldCollection {
                name: shared.name.clone(),
                size: shared.size,
                skipped: shared.skipped,
                members,
                response,
            },
        );
    }

    /// What the user shares: every directory, and every complete file held on its own account
    /// (shared, or downloaded and renamed), by name then id.
    pub(crate) fn shares(&self) -> impl Iterator<Item = SharedFile> + '_ {
        let collections = self.collections.iter().map(|(id, c)| SharedFile {
            id: *id,
            name: c.name.clone(),
            size: c.size,
            skipped: c.skipped,
        });
        let files = self
            .files
            .values()
            .filter(|h| h.direct && h.partial.is_none())
            .map(|h| SharedFile {
                id: h.manifest.id(),
                name: h.manifest.name().clone(),
                size: h.manifest.lengths().size(),
                skipped: 0,
            });
        collections.chain(files)
    }

    /// Whether this node serves `id`: a file (complete, or partly while downloading it) or a
    /// directory.
    pub(crate) fn holds(&self, id: &FileId) -> bool {
        self.files.contains_key(id) || self.collections.contains_key(id)
    }

    /// Stops serving `id`, a directory or a complete file (a file in download is its
    /// download's: cancel that instead). A directory takes its files along, except those held
    /// on their own account or by another shared directory. Returns what was unshared and every
    /// id no longer served (to unannounce), or `None` when `id` names nothing of that kind.
    pub(crate) fn unshare(&mut self, id: &FileId) -> Option<(SharedFile, Vec<FileId>)> {
        if let Some(c) = self.collections.remove(id) {
            let shared = SharedFile {
                id: *id,
                name: c.name,
                size: c.size,
                skipped: c.skipped,
            };
            let mut gone = vec![*id];
            for member in c.members {
                let needed = self
                    .collections
                    .values()
                    .any(|o| o.members.binary_search(&member).is_ok());
                let orphan = self
                    .files
                    .get(&member)
                    .is_some_and(|h| !h.direct && h.partial.is_none());
                if orphan && !needed {
                    self.files.remove(&member);
                    gone.push(member);
                }
            }
            return Some((shared, gone));
        }
        let held = self.files.get_mut(id)?;
        if held.partial.is_some() || !held.direct {
            // A download's (cancel it instead), or only a shared directory's file (unshare
            // the directory: the directory would be left announced without it).
            return None;
        }
        let shared = SharedFile {
            id: *id,
            name: held.manifest.name().clone(),
            size: held.manifest.lengths().size(),
            skipped: 0,
        };
        let in_a_directory = self
            .collections
            .values()
            .any(|c| c.members.binary_search(id).is_ok());
        if in_a_directory {
            // No longer on its own account, but still served (and announced) as a file of
            // a shared directory.
            held.direct = false;
            return Some((shared, Vec::new()));
        }
        self.files.remove(id);
        Some((shared, vec![*id]))
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

    /// A manifest of a one-piece file named `name` holding `byte`s.
    fn named(name: &str, byte: u8) -> Arc<Manifest> {
        let data = vec![byte; 1000];
        Arc::new(Manifest::of_bytes(FileName::new(name).unwrap(), &data).unwrap())
    }

    fn dir(name: &str, id: u8) -> SharedFile {
        SharedFile {
            id: FileId::of(&[id]),
            name: FileName::new(name).unwrap(),
            size: 2000,
            skipped: 1,
        }
    }

    fn ids(shares: impl Iterator<Item = SharedFile>) -> Vec<FileId> {
        let mut ids: Vec<FileId> = shares.map(|s| s.id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn unsharing_a_directory_takes_only_the_files_nothing_else_holds() {
        let (own, only, both) = (named("own", 1), named("only", 2), named("both", 3));
        let mut h = Holdings::default();
        h.hold_complete(Arc::clone(&own), file());
        let (a, b) = (dir("a", 1), dir("b", 2));
        let files = |ms: &[&Arc<Manifest>]| ms.iter().map(|m| (Arc::clone(m), file())).collect();
        h.add_collection(&a, vec![1], files(&[&own, &only, &both, &both]));
        h.add_collection(&b, vec![2], files(&[&both]));
        // The roots: both directories and the file shared on its own.
        let mut want = vec![a.id, b.id, own.id()];
        want.sort();
        assert_eq!(ids(h.shares()), want);
        assert!(
            h.shares().any(|s| s == a),
            "a directory keeps its skipped count"
        );

        let (shared, mut gone) = h.unshare(&a.id).unwrap();
        assert_eq!(shared, a);
        gone.sort();
        let mut want = vec![a.id, only.id()];
        want.sort();
        assert_eq!(gone, want, "own is shared on its own, both by b");
        assert!(!h.holds(&only.id()) && !h.holds(&a.id));
        assert!(h.holds(&own.id()) && h.holds(&both.id()));
        assert!(h.unshare(&a.id).is_none(), "unshared already");

        let (_, gone) = h.unshare(&b.id).unwrap();
        assert_eq!(gone, [b.id, both.id()]);
        let (shared, gone) = h.unshare(&own.id()).unwrap();
        assert_eq!((shared.name.as_str(), gone), ("own", vec![own.id()]));
        assert!(h.is_empty());
        assert!(h.announced().is_empty(), "nothing is announced any more");
    }

    #[test]
    fn a_file_unshared_on_its_own_stays_served_for_the_directory_that_holds_it() {
        let x = named("x", 1);
        let mut h = Holdings::default();
        h.hold_complete(Arc::clone(&x), file());
        let a = dir("a", 1);
        h.add_collection(&a, vec![1], vec![(Arc::clone(&x), file())]);
        let (shared, gone) = h.unshare(&x.id()).unwrap();
        assert_eq!(shared.id, x.id());
        assert!(gone.is_empty(), "still announced as the directory's file");
        assert!(h.holds(&x.id()), "the directory can still be fetched whole");
        assert_eq!(ids(h.shares()), [a.id], "no longer listed on its own");
        assert!(h.unshare(&x.id()).is_none(), "only the directory's now");
        let (_, gone) = h.unshare(&a.id).unwrap();
        assert!(gone.contains(&x.id()) && !h.holds(&x.id()));
    }

    #[test]
    fn a_file_in_download_stays_held_when_a_directory_holding_it_is_unshared() {
        let m = named("m", 1);
        let mut h = Holdings::default();
        let dl = DownloadId::for_test(1);
        h.hold_partial(Arc::clone(&m), file(), dl, Bitfield::empty(m.lengths()));
        let a = dir("a", 1);
        h.add_collection(&a, vec![1], vec![(Arc::clone(&m), file())]);
        let (_, gone) = h.unshare(&a.id).unwrap();
        assert_eq!(gone, [a.id], "the file is this node's own download");
        assert!(h.holds(&m.id()));
        h.completed(&m.id(), dl);
        assert!(h.holds(&m.id()), "seeded once downloaded");
    }

    #[test]
    fn a_file_in_download_is_not_a_share_and_cannot_be_unshared() {
        let m = manifest(16384);
        let mut h = Holdings::default();
        let dl = DownloadId::for_test(1);
        h.hold_partial(Arc::clone(&m), file(), dl, Bitfield::empty(m.lengths()));
        assert!(h.holds(&m.id()));
        assert_eq!(h.shares().count(), 0);
        assert!(h.unshare(&m.id()).is_none());
        h.completed(&m.id(), dl);
        assert_eq!(ids(h.shares()), [m.id()], "a downloaded file is shared");
        assert!(h.unshare(&m.id()).is_some());
        assert!(!h.holds(&m.id()));
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
