//! A download's data path: the manifest or collection, bitfields, pieces arriving and being
//! stored, and filling the providers' windows.

use super::*;

impl<E: NetworkBehaviour> EventLoop<E> {
    pub(super) fn on_manifest(&mut self, id: DownloadId, peer: PeerId, wire: WireManifest) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.manifest_asks.retain(|(p, _)| *p != peer);
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        let manifest = match wire.verify(file) {
            Ok(m) => Arc::new(m),
            Err(e) => return self.on_request_failed(id, peer, Want::Manifest, Failure::Fatal, &e),
        };
        let size = manifest.lengths().size();
        // A verified manifest fixes the piece count but not the last piece's length: a
        // provider could claim up to a piece more or less than the file has.
        if let Some(expected) = dl.expected_size.filter(|e| *e != size) {
            let why = format!("its manifest says {size} bytes, the tracker lists {expected}");
            return self.on_request_failed(id, peer, Want::Manifest, Failure::Fatal, &why);
        }
        if size > dl.max_size {
            let error = GetError::TooLarge {
                id: file,
                size,
                max: dl.max_size,
            };
            return self.fail_download(id, error);
        }
        // Names from the network are data: the manifest's is made safe before it is used.
        let name = match (&dl.name, &dl.key) {
            (Some(n), _) | (None, LookupKey::Name(n)) => n.clone(),
            (None, LookupKey::Id(_)) => place::safe_name(manifest.name(), &file),
        };
        dl.final_name = Some(name.clone());
        dl.last_progress = Instant::now();
        dl.progress.send_modify(|p| p.total = size);
        dl.phase = Phase::Opening {
            manifest: Arc::clone(&manifest),
        };
        let (dir, out_dir) = (dl.dir.clone(), dl.out_dir.clone());
        self.spawn_task(id, move || {
            let result = match dir {
                Some(dir) => Ok(dir),
                None => Dir::open(&out_dir),
            }
            .and_then(|dir| place::open_download(dir, &name, &manifest));
            TaskDone::Opened {
                download: id,
                result,
            }
        });
    }

    /// The id names a shared directory. Bytes that do not hash to the id are the provider's
    /// lie; bytes that do but are no valid collection are the collection's own fault, and no
    /// other provider can give different bytes for that id, so the download fails at once.
    pub(super) fn on_collection(&mut self, id: DownloadId, peer: PeerId, bytes: &[u8]) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        dl.manifest_asks.retain(|(p, _)| *p != peer);
        let (Some(file), Phase::Manifest) = (dl.file, &dl.phase) else {
            return;
        };
        match Collection::decode(bytes, file) {
            Err(e @ CollectionError::IdMismatch { .. }) => {
                self.on_request_failed(id, peer, Want::Manifest, Failure::Fatal, &e)
            }
            Err(source) => self.fail_download(id, GetError::InvalidCollection { id: file, source }),
            Ok(collection) => {
                info!(collection = %file, files = collection.entries().len(), "collection verified");
                if let Some(mut dl) = self.downloads.remove(&id) {
                    if let Some(reply) = dl.reply.take() {
                        let _ = reply.send(Ok(Outcome::Collection(Arc::new(collection))));
                    }
                }
            }
        }
    }

    pub(super) fn on_have(&mut self, id: DownloadId, peer: PeerId, bits: Vec<u8>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Some(p) = dl.providers.get_mut(&peer) else {
            return;
        };
        p.have_pending = false;
        let Phase::Transfer {
            manifest, picker, ..
        } = &mut dl.phase
        else {
            return;
        };
        let Some(have) = Bitfield::from_wire(manifest.lengths(), bits) else {
            return self.on_request_failed(
                id,
                peer,
                Want::Have,
                Failure::Fatal,
                &"malformed bitfield",
            );
        };
        if dl.providers.set_have(&peer, have, picker) {
            self.schedule(id);
        }
    }

    pub(super) fn on_piece(
        &mut self,
        id: DownloadId,
        peer: PeerId,
        piece: PieceIndex,
        bytes: Vec<u8>,
    ) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Transfer {
            manifest,
            file,
            picker,
            ..
        } = &dl.phase
        else {
            return;
        };
        if let Some(p) = dl.providers.get_mut(&peer) {
            p.path = self.connections.data_path(&peer).or(p.path);
        }
        if picker.has(piece) {
            // An endgame copy that lost the race: drop it.
            dl.providers.on_discarded(&peer, piece);
            self.pool.give(bytes);
            return self.schedule(id);
        }
        let (manifest, file, pool) = (
            Arc::clone(manifest),
            Arc::clone(file),
            Arc::clone(&self.pool),
        );
        // The provider's window slot stays taken until the piece is stored, which bounds the
        // piece bytes held in memory to the windows' total.
        self.spawn_task(id, move || {
            let result = store::store_piece(&pool, &file, &manifest, piece, bytes);
            TaskDone::PieceStored {
                download: id,
                peer,
                piece,
                result,
            }
        });
    }

    pub(crate) fn on_download_task(&mut self, done: TaskDone) {
        match done {
            TaskDone::Opened { download, result } => self.on_opened(download, result),
            TaskDone::PieceStored {
                download,
                peer,
                piece,
                result,
            } => match result {
                Ok(()) => self.on_piece_stored(download, peer, piece),
                Err(StoreError::BadPiece) => {
                    self.stats.bad_pieces += 1;
                    warn!(%peer, %piece, "piece failed verification");
                    // Banned for the file; the piece goes back with its other requests.
                    let why = "sent a piece that failed verification";
                    self.drop_provider(download, peer, true, &why);
                    self.request_manifest(download);
                    self.schedule(download);
                }
                Err(StoreError::Io(source)) => {
                    let Some(DownloadState {
                        file: Some(file),
                        phase: Phase::Transfer { dir, .. },
                        ..
                    }) = self.downloads.get(&download)
                    else {
                        return;
                    };
                    let error = place::write_error(dir, file, source);
                    self.fail_download(download, error.into());
                }
            },
            TaskDone::Finished { download, result } => self.on_finished(download, result),
            TaskDone::Checked { download, result } => self.on_checked(download, result),
            TaskDone::Panicked { download } => self.fail_download(download, GetError::TaskFailed),
        }
    }

    pub(super) fn on_opened(&mut self, id: DownloadId, result: Result<Opened, PlaceError>) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Opening { manifest } = &dl.phase else {
            return;
        };
        let manifest = Arc::clone(manifest);
        let (dir, file, resumed) = match result {
            Ok(Opened::Part { dir, file, resumed }) => (dir, file, resumed),
            Ok(Opened::Present {
                dir,
                manifest,
                file,
            }) => return self.on_present(id, Arc::new(manifest), &dir, file),
            Err(error) => return self.fail_download(id, error.into()),
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
        dl.last_progress = Instant::now();
        let complete = picker.is_complete();
        // A complete copy this node already serves keeps serving; otherwise serve what arrives.
        self.holdings.hold_partial(
            Arc::clone(&manifest),
            Arc::clone(&file),
            id,
            picker.held().clone(),
        );
        dl.phase = Phase::Transfer {
            manifest,
            file,
            dir,
            picker,
        };
        if complete {
            return self.finish(id);
        }
        let peers = dl.providers.peers();
        for peer in peers {
            self.init_provider(id, peer);
        }
        // Tell the tracker we hold (some of) this file, so other leechers find us.
        self.announce();
        self.schedule(id);
    }

    /// The final name already holds the file (checked by hash): nothing is fetched, and the
    /// node serves the copy it found.
    pub(super) fn on_present(
        &mut self,
        id: DownloadId,
        manifest: Arc<Manifest>,
        dir: &Dir,
        file: File,
    ) {
        let Some(mut dl) = self.downloads.remove(&id) else {
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
        self.holdings.hold_complete(manifest, Arc::new(file));
        let done = Downloaded {
            id: file_id,
            path,
            size,
            elapsed: dl.started.elapsed(),
            providers_used: 0,
            sources: Vec::new(),
            resumed: size,
            fetched: 0,
            present: true,
        };
        if let Some(reply) = dl.reply.take() {
            let _ = reply.send(Ok(Outcome::File(done)));
        }
        self.announce();
    }

    pub(super) fn on_piece_stored(&mut self, id: DownloadId, peer: PeerId, piece: PieceIndex) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let Phase::Transfer {
            picker, manifest, ..
        } = &mut dl.phase
        else {
            return;
        };
        dl.providers.on_stored(&peer, piece);
        // A stored piece paces the retries of providers that answered `Busy`.
        dl.providers.clear_backoff();
        if picker.stored(piece) {
            self.holdings.verified(&manifest.id(), id, piece);
            let len = u64::from(manifest.lengths().piece_len(piece));
            self.stats.downloaded += len;
            dl.fetched += len;
            dl.last_progress = Instant::now();
            let active = dl.providers.active();
            dl.progress.send_modify(|p| {
                p.done += len;
                p.providers = active;
            });
        }
        if picker.is_complete() {
            return self.finish(id);
        }
        self.schedule(id);
    }

    /// Fills every provider's window (see [`Providers::plan`]) and sends the requests.
    pub(crate) fn schedule(&mut self, id: DownloadId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let DownloadState {
            file: Some(file),
            phase: Phase::Transfer { picker, .. },
            providers,
            ..
        } = dl
        else {
            return;
        };
        let file = *file;
        // Pieces go only over a connection that can carry them: not before the peer is
        // connected (the dial may end up relayed), nor over a relay meant for hole punching.
        let connections = &self.connections;
        let plan = providers.plan(
            Instant::now(),
            picker,
            |peer| connections.data_path(peer).is_some(),
            |peer| connections.is_connected(peer),
            &mut self.rng,
        );
        for (peer, piece) in plan.requests {
            let request = transfer::Request::Piece {
                id: file,
                index: piece.get(),
            };
            let request_id = self
                .swarm
                .behaviour_mut()
                .transfer
                .send_request(&peer, request);
            self.transfer_pending.insert(
                request_id,
                TransferRequest {
                    download: id,
                    want: Want::Piece(piece),
                },
            );
        }
        for peer in plan.dial {
            self.dial_provider(peer);
        }
    }
}
