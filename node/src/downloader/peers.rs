//! A download's providers coming and going: admitted from lookups and from peers that ask us
//! for the file, given their bitfields, becoming reachable, failing to dial or to punch a hole,
//! and dropped.

use super::*;

impl Downloads {
    /// Adds providers not known yet; ready ones start receiving requests at once.
    ///
    /// A provider dropped earlier for a lost connection or timeouts is re-admitted when the
    /// tracker lists it again (it may have come back); one that sent bad data never is. When the
    /// download had no usable provider, new ones from the tracker restart the `provider_wait`
    /// clock; peers that merely asked us for the file do not (they could keep a stalled
    /// download alive forever).
    pub(super) fn add_providers(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        providers: Vec<tracker::Provider>,
        from_tracker: bool,
    ) {
        let local = self.local;
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let had_active = dl.providers.active() > 0;
        let mut added = Vec::new();
        let mut new = 0;
        for provider in providers.into_iter().filter(|p| p.peer != local) {
            for addr in crate::paths::prefer_tcp(provider.addrs) {
                cx.push(Action::AddAddress {
                    peer: provider.peer,
                    addr,
                });
            }
            match dl
                .providers
                .admit(provider.peer, provider.complete, from_tracker, cx.now)
            {
                Admitted::New => new += 1,
                Admitted::Readmitted => {}
                Admitted::Unchanged => continue,
            }
            added.push(provider.peer);
        }
        // Only a provider never seen before restarts the clock: one dropped and listed again
        // (say, unreachable through a failed hole punch) must not keep a download waiting
        // forever.
        if new > 0 && from_tracker && !had_active {
            dl.last_progress = cx.now;
        }
        if !added.is_empty() {
            debug!(file = ?dl.phase.file(), added = added.len(), active = dl.providers.active(), "providers joined");
        }
        for peer in added {
            self.init_provider(cx, id, peer);
        }
        self.request_manifest(cx, id);
        self.schedule(cx, id);
    }

    /// A peer asked us for `file`, which we are downloading: it is downloading it too, so it
    /// may have pieces we lack. It joins as a partial provider.
    pub(crate) fn on_interested_peer(&mut self, cx: &mut Cx<'_>, peer: PeerId, file: FileId) {
        let id = self
            .map
            .iter()
            .find(|(_, d)| d.phase.file() == Some(file) && !d.providers.contains(&peer))
            .map(|(id, _)| *id);
        if let Some(id) = id {
            let provider = tracker::Provider {
                peer,
                addrs: Vec::new(),
                complete: false,
            };
            self.add_providers(cx, id, vec![provider], false);
        }
    }

    /// Gives a provider its bitfield: full for a complete one, asked for otherwise.
    pub(super) fn init_provider(&mut self, cx: &mut Cx<'_>, id: DownloadId, peer: PeerId) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let Phase::Transfer(t) = &mut dl.phase else {
            return;
        };
        let Some(p) = dl.providers.get(&peer) else {
            return;
        };
        if p.dropped || p.have.is_some() {
            return;
        }
        if p.complete {
            let full = Bitfield::full(t.manifest.lengths());
            dl.providers.set_have(&peer, full, &mut t.picker);
        } else {
            self.request_have(cx, id, peer);
        }
    }

    pub(super) fn request_have(&mut self, cx: &mut Cx<'_>, id: DownloadId, peer: PeerId) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let (Some(file), Some(p)) = (dl.phase.file(), dl.providers.get_mut(&peer)) else {
            return;
        };
        if p.have_pending || p.dropped {
            return;
        }
        p.have_pending = true;
        cx.push(Action::Request {
            peer,
            request: transfer::Request::Have { id: file },
            tag: TransferRequest {
                download: id,
                want: Want::Have,
            },
        });
    }

    /// Downloads that count `peer` as a (not dropped) provider.
    pub(super) fn using(&self, peer: PeerId) -> Vec<DownloadId> {
        self.map
            .iter()
            .filter(|(_, d)| d.providers.uses(&peer))
            .map(|(id, _)| *id)
            .collect()
    }

    /// `peer` may now carry pieces (connected, or its hole was punched): ask it for the
    /// manifest if one is wanted, and fill its windows.
    pub(crate) fn on_peer_ready(&mut self, cx: &mut Cx<'_>, peer: PeerId) {
        for id in self.using(peer) {
            self.request_manifest(cx, id);
            self.schedule(cx, id);
        }
    }

    /// A new path may carry pieces (a relayed circuit is up): every download fills its
    /// windows again.
    pub(crate) fn schedule_all(&mut self, cx: &mut Cx<'_>) {
        let ids: Vec<DownloadId> = self.map.keys().copied().collect();
        for id in ids {
            self.schedule(cx, id);
        }
    }

    /// A dial to `peer` failed and no connection to it is left: it is dropped from every
    /// download (a later lookup may list it again).
    pub(crate) fn on_dial_failed(&mut self, cx: &mut Cx<'_>, peer: PeerId, why: &str) {
        if cx.connections.is_connected(&peer) {
            return;
        }
        let reason = format!("cannot dial: {why}");
        for id in self.using(peer) {
            self.drop_provider(cx, id, peer, false, &reason);
            self.request_manifest(cx, id);
            self.schedule(cx, id);
        }
    }

    /// A provider we reach only through a relay that carries no file data could not be
    /// reached directly (the hole punch failed or never came): it is dropped, with the reason
    /// spelled out, and its relayed connections close (a fresh one after a re-lookup gives
    /// DCUtR a fresh try).
    pub(crate) fn on_hole_punch_failed(&mut self, cx: &mut Cx<'_>, peer: PeerId, why: &str) {
        let Some(relay) = cx.connections.only_signalling_relay(&peer) else {
            return;
        };
        let limit = relay.and_then(|r| cx.connections.relay_limit_of(&r));
        let reason = match limit {
            Some(bytes) => format!(
                "reachable only through the tracker's relay, and hole punching failed ({why}); \
                 the relay carries at most {bytes} bytes per circuit, too little for file data \
                 (a tracker started with --relay-data relays it)"
            ),
            None => format!(
                "reachable only through a relay that does not carry file data, and hole \
                 punching failed ({why})"
            ),
        };
        for id in self.using(peer) {
            self.drop_provider(cx, id, peer, false, &reason);
            self.schedule(cx, id);
        }
        let relayed = cx.connections.relayed(&peer);
        cx.out.extend(relayed.into_iter().map(Action::Close));
    }

    /// Drops `peer` for this download (`banned`: for good): its requests' pieces go back to
    /// the picker.
    pub(super) fn drop_provider(
        &mut self,
        cx: &mut Cx<'_>,
        id: DownloadId,
        peer: PeerId,
        banned: bool,
        why: &dyn std::fmt::Display,
    ) {
        let Some(dl) = self.map.get_mut(&id) else {
            return;
        };
        let picker = dl.phase.picker();
        if !dl.providers.drop_peer(&peer, banned, picker, cx.now) {
            return;
        }
        let file = dl.phase.file();
        warn!(%peer, file = ?file, reason = %why, "provider dropped");
        dl.last_problem = Some(format!("{peer}: {why}"));
        if let Some(file) = file {
            cx.push(Action::Emit(Event::ProviderDropped {
                file,
                peer,
                reason: why.to_string(),
            }));
        }
    }
}
