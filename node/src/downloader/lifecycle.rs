//! A download's upkeep and end: the housekeeping tick (provider wait, re-lookups, bitfield
//! refreshes), finishing, failing, and what a download lets this node serve.

use super::*;

/// How long a provider that has delivered nothing yet may sit on a request before it counts
/// as timed out (the transport's own timeout is [`crate::Config::request_timeout`]).
const PROBATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(4);

impl<E: NetworkBehaviour> EventLoop<E> {
    /// Per-tick upkeep of every download: provider-wait deadline, re-lookups, bitfield
    /// refreshes of partial providers.
    pub(crate) fn downloads_housekeeping(&mut self) {
        let now = Instant::now();
        let wait = self.config.provider_wait;
        let relookup = self.config.relookup_interval;
        let ids: Vec<DownloadId> = self.downloads.keys().copied().collect();
        for id in ids {
            let Some(dl) = self.downloads.get_mut(&id) else {
                continue;
            };
            if matches!(
                dl.phase,
                Phase::Checking | Phase::Opening { .. } | Phase::Finishing { .. }
            ) {
                continue;
            }
            if now.duration_since(dl.last_progress) > wait {
                let file = dl.file;
                let error = match file {
                    Some(file) => GetError::NoProviders {
                        file,
                        waited: wait,
                        last_problem: dl.last_problem.take(),
                    },
                    None => GetError::UnknownFile(dl.what()),
                };
                self.fail_download(id, error);
                continue;
            }
            if let (Some(file), false, true) = (dl.file, dl.lookup_pending, now >= dl.next_lookup) {
                dl.lookup_pending = true;
                dl.next_lookup = now + relookup;
                self.tracker_request(
                    tracker::Request::Lookup {
                        key: LookupKey::Id(file),
                        limit: LOOKUP_LIMIT,
                    },
                    TrackerWaiter::Download(id),
                );
            }
            let Some(dl) = self.downloads.get_mut(&id) else {
                continue;
            };
            let partial: Vec<PeerId> = dl
                .providers
                .iter()
                .filter(|(_, p)| !p.complete && !p.dropped && !p.have_pending)
                .map(|(peer, _)| *peer)
                .collect();
            let backed_off = dl.providers.clear_backoff();
            if matches!(dl.phase, Phase::Manifest) {
                // Lifted backoffs and patience run out: ask further providers.
                self.request_manifest(id);
                continue;
            }
            // A provider on probation that sits on a request is treated as timed out long
            // before the transport's timeout: its piece goes elsewhere, and three strikes
            // drop it.
            let overdue = dl.providers.overdue(now, PROBATION_PATIENCE);
            for (peer, piece) in overdue {
                let why = format!(
                    "no answer within {}s to its first requests",
                    PROBATION_PATIENCE.as_secs()
                );
                self.on_request_failed(id, peer, Want::Piece(piece), Failure::Timeout, &why);
            }
            let Some(dl) = self.downloads.get_mut(&id) else {
                continue;
            };
            if matches!(dl.phase, Phase::Transfer { .. }) {
                for peer in partial {
                    self.request_have(id, peer);
                }
                if backed_off {
                    self.schedule(id);
                }
            }
        }
        self.check_hole_punch_waits(now);
    }

    /// Providers reachable only through a relay that carries no data get
    /// `holepunch_wait` for DCUtR to open a direct connection.
    fn check_hole_punch_waits(&mut self, now: Instant) {
        let limit = self.config.holepunch_wait;
        let mut expired = Vec::new();
        let connections = &self.connections;
        for dl in self.downloads.values_mut() {
            expired.extend(dl.providers.hole_punch_expired(now, limit, |peer| {
                connections.only_signalling_relay(peer).is_some()
            }));
        }
        for peer in expired {
            let why = format!("no direct connection within {}s", limit.as_secs());
            self.on_hole_punch_failed(peer, &why);
        }
    }

    pub(super) fn finish(&mut self, id: DownloadId) {
        let Some(dl) = self.downloads.get_mut(&id) else {
            return;
        };
        let (
            Some(name),
            Phase::Transfer {
                manifest,
                file,
                dir,
                ..
            },
        ) = (dl.final_name.clone(), &dl.phase)
        else {
            return;
        };
        let (file, dir, file_id) = (Arc::clone(file), dir.clone(), manifest.id());
        let size = manifest.lengths().size();
        dl.phase = Phase::Finishing {
            size,
            path: dir.join(name.as_str()),
        };
        self.spawn_task(id, move || {
            let result = place::finish(&dir, &file, &file_id, &name);
            TaskDone::Finished {
                download: id,
                result,
            }
        });
    }

    pub(super) fn on_finished(&mut self, id: DownloadId, result: Result<Finished, PlaceError>) {
        let Some(mut dl) = self.downloads.remove(&id) else {
            return;
        };
        let (Some(file), Phase::Finishing { size, path }) = (dl.file, &dl.phase) else {
            return;
        };
        let (size, path) = (*size, path.clone());
        match result {
            Err(error) => {
                self.downloads.insert(id, dl);
                return self.fail_download(id, error.into());
            }
            Ok(Finished::AlreadyThere) => {
                info!(%file, path = %path.display(), "the same file took the name first");
            }
            Ok(Finished::Renamed) => {}
        }
        self.holdings.completed(&file, id);
        let providers_used = dl.providers.iter().filter(|(_, p)| p.pieces > 0).count();
        let mut sources: Vec<Source> = dl
            .providers
            .iter()
            .filter(|(_, p)| p.pieces > 0)
            .map(|(peer, p)| Source {
                peer: *peer,
                path: p.path,
                pieces: p.pieces,
            })
            .collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.pieces));
        let done = Downloaded {
            id: file,
            path: path.clone(),
            size,
            elapsed: dl.started.elapsed(),
            providers_used,
            sources,
            resumed: dl.resumed,
            fetched: dl.fetched,
            present: false,
        };
        info!(%file, path = %path.display(), size, elapsed = ?done.elapsed, providers_used, resumed = dl.resumed, "download complete");
        self.emit(Event::Downloaded { file, path });
        if let Some(reply) = dl.reply.take() {
            let _ = reply.send(Ok(Outcome::File(done)));
        }
        self.announce();
    }

    /// Ends a download with `error`; its `.part` file stays for a later run.
    pub(crate) fn fail_download(&mut self, id: DownloadId, error: GetError) {
        let Some(mut dl) = self.downloads.remove(&id) else {
            return;
        };
        if let Some(file) = dl.file {
            if self.holdings.release(&file, id) {
                self.tracker_request(
                    tracker::Request::Unannounce { id: file },
                    TrackerWaiter::Unannounce,
                );
            }
        }
        warn!(file = ?dl.file, %error, "download failed");
        if let Some(reply) = dl.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}
