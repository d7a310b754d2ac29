//! A download's upkeep and end: the tick (provider wait, re-lookups, bitfield refreshes,
//! probation, hole-punch waits), finishing, failing.

use super::*;
use crate::{
    client::{Downloaded, Source},
    place::{Finished, PlaceError},
};

/// How long a provider that has delivered nothing yet may sit on a request before it counts
/// as timed out (the transport's own timeout is [`crate::Config::request_timeout`]).
const PROBATION_PATIENCE: Duration = Duration::from_secs(4);

impl Downloads {
    /// Per-tick upkeep of every download at `cx.now`: the provider-wait deadline, re-lookups,
    /// bitfield refreshes of partial providers, overdue requests of providers on probation,
    /// and hole-punch waits.
    pub(crate) fn tick(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let wait = self.settings.provider_wait;
        let relookup = self.settings.relookup_interval;
        let mut ids: Vec<DownloadId> = self.map.keys().copied().collect();
        ids.sort_by_key(|id| id.0);
        for id in ids {
            let Some(dl) = self.map.get_mut(&id) else {
                continue;
            };
            if matches!(
                dl.phase,
                Phase::Checking(_) | Phase::Opening { .. } | Phase::Finishing { .. }
            ) {
                continue;
            }
            if now.duration_since(dl.last_progress) > wait {
                let error = match dl.phase.file() {
                    Some(file) => GetError::NoProviders {
                        file,
                        waited: wait,
                        last_problem: dl.last_problem.take(),
                    },
                    None => GetError::UnknownFile(dl.what()),
                };
                self.fail(cx, id, error);
                continue;
            }
            if let (Some(file), false, true) =
                (dl.phase.file(), dl.lookup_pending, now >= dl.next_lookup)
            {
                dl.lookup_pending = true;
                dl.next_lookup = now + relookup;
                cx.push(Action::Lookup {
                    download: id,
                    key: LookupKey::Id(file),
                });
            }
            let partial = dl.providers.have_due(now);
            let backed_off = dl.providers.clear_backoff(now);
            if matches!(dl.phase, Phase::Manifest { .. }) {
                // Lifted backoffs and patience run out: ask further providers.
                self.request_manifest(cx, id);
                continue;
            }
            // A provider on probation that sits on a request is treated as timed out long
            // before the transport's timeout: its piece goes elsewhere, and three strikes
            // drop it.
            let overdue = dl.providers.overdue(now, PROBATION_PATIENCE);
            let transfer = matches!(dl.phase, Phase::Transfer(_));
            for (peer, piece) in overdue {
                let why = format!(
                    "no answer within {}s to its first requests",
                    PROBATION_PATIENCE.as_secs()
                );
                self.on_request_failed(cx, id, peer, Want::Piece(piece), Failure::Timeout, &why);
            }
            if transfer {
                for peer in partial {
                    self.request_have(cx, id, peer);
                }
                if backed_off {
                    self.schedule(cx, id);
                }
            }
        }
        self.check_hole_punch_waits(cx);
    }

    /// Providers reachable only through a relay that carries no data get `holepunch_wait`
    /// for DCUtR to open a direct connection.
    pub(super) fn check_hole_punch_waits(&mut self, cx: &mut Cx<'_>) {
        let limit = self.settings.holepunch_wait;
        let mut expired = Vec::new();
        let connections = cx.connections;
        for dl in self.map.values_mut() {
            expired.extend(dl.providers.hole_punch_expired(cx.now, limit, |peer| {
                connections.only_signalling_relay(peer).is_some()
            }));
        }
        expired.sort();
        expired.dedup();
        for peer in expired {
            let why = format!("no direct connection within {}s", limit.as_secs());
            self.on_hole_punch_failed(cx, peer, &why);
        }
    }

    /// Every piece is verified: fsync and rename on a blocking task.
    pub(super) fn finish(&mut self, cx: &mut Cx<'_>, id: DownloadId) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Transfer(t) = &dl.phase else {
            return;
        };
        let job = DiskJob::Finish {
            dir: t.dir.clone(),
            file: Arc::clone(&t.file),
            id: t.manifest.id(),
            name: t.name.clone(),
        };
        let finishing = Phase::Finishing {
            id: t.manifest.id(),
            size: t.manifest.lengths().size(),
            path: t.dir.join(t.name.as_str()),
        };
        dl.phase = finishing;
        cx.push(Action::Disk { download: id, job });
    }

    pub(super) fn on_finished(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        result: Result<Finished, PlaceError>,
    ) {
        let Some(dl) = self.map.get(&id) else {
            return;
        };
        let Phase::Finishing {
            id: file,
            size,
            path,
        } = &dl.phase
        else {
            return;
        };
        let (file, size, path) = (*file, *size, path.clone());
        match result {
            Err(error) => return self.fail(cx, id, error.into()),
            Ok(Finished::AlreadyThere) => {
                info!(%file, path = %path.display(), "the same file took the name first");
            }
            Ok(Finished::Renamed) => {}
        }
        let Some(dl) = self.map.remove(&id) else {
            return;
        };
        cx.holdings.completed(&file, id);
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
            elapsed: cx.now.duration_since(dl.started),
            providers_used: sources.len(),
            sources,
            resumed: dl.resumed,
            fetched: dl.fetched,
            present: false,
        };
        info!(%file, path = %path.display(), size, elapsed = ?done.elapsed, providers_used = done.providers_used, resumed = dl.resumed, "download complete");
        cx.push(Action::Emit(Event::Downloaded { file, path }));
        let _ = dl.reply.send(Ok(Outcome::File(done)));
        cx.push(Action::Announce);
    }

    /// Ends a download with `error`; its `.part` file stays for a later run.
    pub(crate) fn fail(&mut self, cx: &mut Cx<'_>, id: DownloadId, error: GetError) {
        let Some(dl) = self.map.remove(&id) else {
            return;
        };
        let file = dl.phase.file();
        if let Some(file) = file {
            if cx.holdings.release(&file, id) {
                cx.push(Action::Unannounce(file));
            }
        }
        if matches!(error, GetError::Cancelled) {
            info!(%id, file = ?file, "download cancelled");
        } else {
            warn!(file = ?file, %error, "download failed");
        }
        let _ = dl.reply.send(Err(error));
    }

    /// Cancels download `id` and, when it is a collection, the downloads of its files: each
    /// ends with [`GetError::Cancelled`], its `.part` file kept for a later run. A download that
    /// is finishing (every piece verified, the rename under way) completes instead: nothing is
    /// ever left half-renamed. Returns whether a download was cancelled.
    pub(crate) fn cancel(&mut self, cx: &mut Cx<'_>, id: DownloadId) -> bool {
        let mut ids: Vec<DownloadId> = self
            .map
            .iter()
            .filter(|(k, dl)| **k == id || dl.get.collection == Some(id))
            .filter(|(_, dl)| !matches!(dl.phase, Phase::Finishing { .. }))
            .map(|(k, _)| *k)
            .collect();
        ids.sort();
        if self.cancelled.len() == CANCELLED_MEMORY {
            self.cancelled.pop_front();
        }
        self.cancelled.push_back(id);
        for k in &ids {
            let file = self.map.get(k).and_then(|dl| dl.phase.file());
            self.fail(cx, *k, GetError::Cancelled);
            cx.push(Action::Emit(Event::Cancelled { download: *k, file }));
        }
        !ids.is_empty()
    }

    /// Ends every download with `error` (the node stops).
    pub(crate) fn fail_all(&mut self, cx: &mut Cx<'_>, error: impl Fn() -> GetError) {
        let ids: Vec<DownloadId> = self.map.keys().copied().collect();
        for id in ids {
            self.fail(cx, id, error());
        }
    }
}
