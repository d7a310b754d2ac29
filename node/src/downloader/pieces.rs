//! A download's data path: the manifest or collection, bitfields, pieces arriving and being
//! stored, and filling the providers' windows.

use bitswarm_protocols::{Collection, CollectionError, WireManifest};

use super::*;
use crate::{
    client::Downloaded,
    place::{self, Opened, PlaceError},
    store::StoreError,
};

impl Downloads {
    pub(super) fn on_manifest(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        wire: WireManifest,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Manifest { found, asks } = &mut dl.phase else {
            return;
        };
        asks.retain(|(p, _)| *p != peer);
        let found = *found;
        let manifest = match wire.verify(found.id) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                return self.on_request_failed(cx, id, peer, Want::Manifest, Failure::Fatal, &e)
            }
        };
        let size = manifest.lengths().size();
        // A verified manifest fixes the piece count but not the last piece's length: a
        // provider could claim up to a piece more or less than the file has.
        if size != found.size {
            let why = format!(
                "its manifest says {size} bytes, the tracker lists {}",
                found.size
            );
            return self.on_request_failed(cx, id, peer, Want::Manifest, Failure::Fatal, &why);
        }
        if size > dl.get.max_size {
            let error = GetError::TooLarge {
                id: found.id,
                size,
                max: dl.get.max_size,
            };
            return self.fail(cx, id, error);
        }
        // Names from the network are data: the manifest's is made safe before it is used.
        let name = dl.name_for(manifest.name(), &found.id);
        dl.last_progress = cx.now;
        dl.progress.send_modify(|p| p.total = size);
        dl.phase = Phase::Opening {
            manifest: Arc::clone(&manifest),
            name: name.clone(),
        };
        cx.push(Action::Disk {
            download: id,
            job: DiskJob::Open {
                dir: dl.get.dir.clone(),
                out_dir: dl.get.out_dir.clone(),
                name,
                manifest,
            },
        });
    }

    /// The id names a shared directory: its bytes are checked and decoded on a blocking task
    /// ([`DiskJob::DecodeCollection`]), then [`Downloads::on_collection_decoded`].
    pub(super) fn on_collection(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        bytes: Vec<u8>,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Manifest { found, .. } = &dl.phase else {
            return;
        };
        let job = DiskJob::DecodeCollection {
            peer,
            id: found.id,
            bytes,
        };
        cx.push(Action::Disk { download: id, job });
    }

    /// Bytes that do not hash to the id are the provider's lie; bytes that do but are no valid
    /// collection are the collection's own fault, and no other provider can give different
    /// bytes for that id, so the download fails at once. Either way no file job is started:
    /// the caller gets the verified collection and fetches its entries itself.
    pub(super) fn on_collection_decoded(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        result: Result<Collection, CollectionError>,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Manifest { found, asks } = &mut dl.phase else {
            return;
        };
        asks.retain(|(p, _)| *p != peer);
        let file = found.id;
        match result {
            Err(e @ CollectionError::IdMismatch { .. }) => {
                self.on_request_failed(cx, id, peer, Want::Manifest, Failure::Fatal, &e)
            }
            Err(source) => {
                let error = GetError::InvalidCollection { id: file, source };
                self.fail(cx, id, error)
            }
            Ok(collection) => {
                info!(collection = %file, files = collection.entries().len(), "collection verified");
                if let Some(dl) = self.map.remove(&id) {
                    let _ = dl.reply.send(Ok(Outcome::Collection(Arc::new(collection))));
                }
            }
        }
    }

    pub(super) fn on_have(&mut self, cx: &mut Cx<'_>, id: DownloadId, peer: PeerId, bits: Vec<u8>) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Some(p) = dl.providers.get_mut(&peer) else {
            return;
        };
        p.have_pending = false;
        let Phase::Transfer(t) = &mut dl.phase else {
            return;
        };
        let Some(have) = Bitfield::from_wire(t.manifest.lengths(), bits) else {
            let why = "malformed bitfield";
            return self.on_request_failed(cx, id, peer, Want::Have, Failure::Fatal, &why);
        };
        let useful = have.has_any_not_in(t.picker.held());
        let changed = dl.providers.set_have(&peer, have, &mut t.picker);
        if dl.providers.on_have(&peer, useful, cx.now) {
            let why = "holds nothing this download lacks";
            return self.drop_provider(cx, id, peer, false, &why);
        }
        if changed {
            self.schedule(cx, id);
        }
    }

    pub(super) fn on_piece(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        piece: PieceIndex,
        bytes: Vec<u8>,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Transfer(t) = &dl.phase else {
            return;
        };
        if let Some(p) = dl.providers.get_mut(&peer) {
            p.path = cx.connections.data_path(&peer).or(p.path);
        }
        if t.picker.has(piece) {
            // An endgame copy that lost the race: drop it.
            dl.providers.on_discarded(&peer, piece);
            self.pool.give(bytes);
            return self.schedule(cx, id);
        }
        // The provider's window slot stays taken until the piece is stored, which bounds the
        // piece bytes held in memory to the windows' total.
        cx.push(Action::Disk {
            download: id,
            job: DiskJob::Store {
                file: Arc::clone(&t.file),
                manifest: Arc::clone(&t.manifest),
                peer,
                piece,
                bytes,
            },
        });
    }

    /// A disk job finished.
    pub(crate) fn on_task(&mut self, cx: &mut Cx<'_>, done: TaskDone) {
        match done {
            TaskDone::Checked { download, result } => self.on_checked(cx, download, result),
            TaskDone::Opened { download, result } => self.on_opened(cx, download, result),
            TaskDone::PieceStored {
                download,
                peer,
                piece,
                result,
            } => match result {
                Ok(()) => self.on_piece_stored(cx, download, peer, piece),
                Err(StoreError::BadPiece) => {
                    cx.stats.bad_pieces += 1;
                    warn!(%peer, %piece, "piece failed verification");
                    // Banned for the file; the piece goes back with its other requests.
                    let why = "sent a piece that failed verification";
                    self.drop_provider(cx, download, peer, true, &why);
                    self.request_manifest(cx, download);
                    self.schedule(cx, download);
                }
                Err(StoreError::Io(source)) => {
                    let Some(DownloadState {
                        phase: Phase::Transfer(t),
                        ..
                    }) = self.map.get(&download)
                    else {
                        return;
                    };
                    let error = place::write_error(&t.dir, &t.manifest.id(), source);
                    self.fail(cx, download, error.into());
                }
            },
            TaskDone::Finished { download, result } => self.on_finished(cx, download, result),
            TaskDone::CollectionDecoded {
                download,
                peer,
                result,
            } => self.on_collection_decoded(cx, download, peer, result),
            TaskDone::Panicked { download } => self.fail(cx, download, GetError::TaskFailed),
        }
    }

    /// The output directory was looked at: done if the file is there, else on to the manifest.
    pub(super) fn on_checked(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        result: Result<Option<(Dir, Manifest, File)>, PlaceError>,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Checking(found) = dl.phase else {
            return;
        };
        match result {
            Err(error) => self.fail(cx, id, error.into()),
            Ok(Some((dir, manifest, file))) => {
                self.on_present(cx, id, Arc::new(manifest), &dir, file)
            }
            Ok(None) => {
                dl.phase = Phase::Manifest {
                    found,
                    asks: Vec::new(),
                };
                dl.last_progress = cx.now;
                self.request_manifest(cx, id);
            }
        }
    }

    pub(super) fn on_opened(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        result: Result<Opened, PlaceError>,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Opening { manifest, name } = &dl.phase else {
            return;
        };
        let (manifest, name) = (Arc::clone(manifest), name.clone());
        let (dir, file, resumed) = match result {
            Ok(Opened::Part { dir, file, resumed }) => (dir, file, resumed),
            Ok(Opened::Present {
                dir,
                manifest,
                file,
            }) => return self.on_present(cx, id, Arc::new(manifest), &dir, file),
            Err(error) => return self.fail(cx, id, error.into()),
        };
        let file = Arc::new(file);
        let mut picker = PiecePicker::new(*manifest.lengths());
        for piece in resumed {
            if picker.stored(piece) {
                dl.resumed += u64::from(manifest.lengths().piece_len(piece));
            }
        }
        if dl.resumed > 0 {
            info!(file = %manifest.id(), bytes = dl.resumed, "resuming: verified pieces kept from an earlier run");
        }
        let resumed = dl.resumed;
        dl.progress.send_modify(|p| p.done = resumed);
        dl.last_progress = cx.now;
        let complete = picker.is_complete();
        // A complete copy this node already serves keeps serving; otherwise serve what arrives.
        cx.holdings.hold_partial(
            Arc::clone(&manifest),
            Arc::clone(&file),
            id,
            picker.held().clone(),
        );
        dl.phase = Phase::Transfer(Transfer {
            manifest,
            file,
            dir,
            picker,
            name,
        });
        if complete {
            return self.finish(cx, id);
        }
        let peers = dl.providers.peers();
        for peer in peers {
            self.init_provider(cx, id, peer);
        }
        // Tell the tracker we hold (some of) this file, so other leechers find us.
        cx.push(Action::Announce);
        self.schedule(cx, id);
    }

    /// The final name already holds the file (checked by hash): nothing is fetched, and the
    /// node serves the copy it found.
    pub(super) fn on_present(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        manifest: Arc<Manifest>,
        dir: &Dir,
        file: File,
    ) {
        let Some(dl) = self.map.remove(&id) else {
            return;
        };
        let file_id = manifest.id();
        let size = manifest.lengths().size();
        let path = dir.join(manifest.name().as_str());
        info!(file = %file_id, path = %path.display(), "already present");
        dl.progress.send_modify(|p| {
            p.total = size;
            p.done = size;
        });
        cx.holdings.hold_complete(manifest, Arc::new(file));
        let done = Downloaded {
            id: file_id,
            path,
            size,
            elapsed: cx.now.duration_since(dl.started),
            providers_used: 0,
            sources: Vec::new(),
            resumed: size,
            fetched: 0,
            present: true,
        };
        let _ = dl.reply.send(Ok(Outcome::File(done)));
        cx.push(Action::Announce);
    }

    pub(super) fn on_piece_stored(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        piece: PieceIndex,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Transfer(t) = &mut dl.phase else {
            return;
        };
        dl.providers.on_stored(&peer, piece);
        // A stored piece paces the retries of providers that answered `Busy`.
        dl.providers.clear_backoff(cx.now);
        if t.picker.stored(piece) {
            cx.holdings.verified(&t.manifest.id(), id, piece);
            let len = u64::from(t.manifest.lengths().piece_len(piece));
            cx.stats.downloaded += len;
            dl.fetched += len;
            dl.last_progress = cx.now;
            let active = dl.providers.active();
            dl.progress.send_modify(|p| {
                p.done += len;
                p.providers = active;
            });
        }
        if t.picker.is_complete() {
            return self.finish(cx, id);
        }
        self.schedule(cx, id);
    }

    /// Fills every provider's window (see [`Providers::plan`]) and asks for the pieces.
    pub(super) fn schedule(&mut self, cx: &mut Cx<'_>, id: DownloadId) {
        let Downloads { map, rng, .. } = self;
        let Some(DownloadState {
            phase: Phase::Transfer(t),
            providers,
            ..
        }) = map.get_mut(&id)
        else {
            return;
        };
        let file = t.manifest.id();
        // Pieces go only over a connection that can carry them: not before the peer is
        // connected (the dial may end up relayed), nor over a relay meant for hole punching.
        let connections = cx.connections;
        let plan = providers.plan(
            cx.now,
            &mut t.picker,
            |peer| connections.data_path(peer).is_some(),
            |peer| connections.is_connected(peer),
            rng,
        );
        for (peer, piece) in plan.requests {
            cx.push(Action::Request {
                peer,
                request: transfer::Request::Piece {
                    id: file,
                    index: piece.get(),
                    expect: t.manifest.lengths().piece_len(piece),
                },
                tag: TransferRequest {
                    download: id,
                    want: Want::Piece(piece),
                },
            });
        }
        cx.out.extend(plan.dial.into_iter().map(Action::Dial));
    }
}
