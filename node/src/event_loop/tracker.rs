//! The tracker link's I/O: dialing the tracker, sending requests as [`TrackerLink`] routes
//! them, announcing, and handing each answer to whoever waits for it.
//!
//! [`TrackerLink`]: crate::tracker_link::TrackerLink

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bitswarm_protocols::tracker::{
    self, Announce, AnnouncedFile, FileRecord, FileSummary, Reply, Stats,
};
use libp2p::{
    multiaddr::Protocol,
    request_response,
    swarm::{dial_opts::DialOpts, ConnectionId, DialError, NetworkBehaviour},
    Multiaddr, PeerId,
};
use tokio::sync::oneshot;
use tracing::{debug, info, trace, warn};

use super::EventLoop;
use crate::{
    client::SharedFile,
    downloader::DownloadId,
    error::{Error, Result, ShareError},
    tracker_link::Route,
    Event,
};

/// Announce interval used until the tracker names its own.
pub(super) const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// Bounds on the interval a tracker may ask for.
const ANNOUNCE_INTERVAL_RANGE: (u64, u64) = (1, 3600);

/// A share's answer, held until its announce is acknowledged.
pub(crate) type ShareReply = (SharedFile, oneshot::Sender<Result<SharedFile, ShareError>>);

/// Who waits for a tracker reply.
pub(crate) enum TrackerWaiter {
    /// An announce; a share waiting for it is answered when it is acknowledged (or fails: the
    /// file is served either way and the next announce retries).
    Announce(Option<ShareReply>),
    Lookup(oneshot::Sender<Result<Vec<FileRecord>>>),
    Search(oneshot::Sender<Result<Vec<FileSummary>>>),
    Stats(oneshot::Sender<Result<Stats>>),
    Download(DownloadId),
    /// An unannounce; an unshare waiting for it is answered once every unannounce it sent is.
    Unannounce(Option<Arc<UnshareReply>>),
}

/// An unshare's answer, shared by the unannounces it sent: sent when the last of them is
/// answered or failed (the last clone dropped). The file is unshared either way.
pub(crate) struct UnshareReply(Option<(SharedFile, oneshot::Sender<Result<SharedFile>>)>);

impl UnshareReply {
    pub(crate) fn new(shared: SharedFile, reply: oneshot::Sender<Result<SharedFile>>) -> Self {
        UnshareReply(Some((shared, reply)))
    }
}

impl Drop for UnshareReply {
    fn drop(&mut self) {
        if let Some((shared, reply)) = self.0.take() {
            let _ = reply.send(Ok(shared));
        }
    }
}

impl<E: NetworkBehaviour> EventLoop<E> {
    pub(super) fn dial_tracker(&mut self) {
        let Some(addr) = self.tracker_addr.clone() else {
            return;
        };
        let fresh = self.tracker_fresh_port;
        let opts = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                let opts = DialOpts::peer_id(peer).addresses(vec![addr.clone()]);
                if fresh {
                    opts.allocate_new_port().build()
                } else {
                    opts.build()
                }
            }
            _ => {
                let opts = DialOpts::unknown_peer_id().address(addr.clone());
                if fresh {
                    opts.allocate_new_port().build()
                } else {
                    opts.build()
                }
            }
        };
        self.tracker.dialing(opts.connection_id(), Instant::now());
        debug!(%addr, "dialing tracker");
        if let Err(e) = self.swarm.dial(opts) {
            self.tracker_fresh_port = false;
            self.tracker_dial_failed(e.to_string());
        }
    }

    pub(super) fn on_tracker_connected(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        addr: &Multiaddr,
    ) {
        let Some(queued) = self.tracker.on_connected(connection_id, peer) else {
            return;
        };
        self.tracker_fresh_port = false;
        info!(tracker = %peer, "connected to tracker");
        // The tracker is the node's index, relay and AutoNAT server: never limited.
        self.swarm.behaviour_mut().limits.bypass(&peer);
        self.swarm.add_peer_address(peer, addr.clone());
        self.on_tracker_link(peer, addr);
        self.emit(Event::TrackerConnected { peer });
        for (request, waiter) in queued {
            self.tracker_request(request, waiter);
        }
        if self.config.announce_presence || self.holdings.any_complete() {
            self.announce();
        }
    }

    pub(super) fn tracker_dial_failed(&mut self, reason: String) {
        warn!(%reason, "tracker unreachable");
        for waiter in self.tracker.dial_failed(Instant::now()) {
            self.fail_tracker_waiter(waiter, Error::TrackerUnreachable(reason.clone()));
        }
    }

    /// The last connection to the tracker closed (it may have restarted, losing its index):
    /// announce again soon, which redials it, and reserve again once connected.
    pub(super) fn on_tracker_lost(&mut self) {
        warn!("lost the tracker; reconnecting");
        self.tracker.lost(Instant::now());
    }

    /// Sends a request to the tracker, dialing it first if needed.
    pub(super) fn tracker_request(&mut self, request: tracker::Request, waiter: TrackerWaiter) {
        if self.tracker_addr.is_none() {
            return self.fail_tracker_waiter(waiter, Error::NoTracker);
        }
        match self.tracker.route(request, waiter) {
            Route::Send(peer, request, waiter) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .tracker
                    .send_request(&peer, request);
                self.tracker_pending.insert(id, waiter);
            }
            Route::Dial => self.dial_tracker(),
            Route::Queued => {}
            Route::Full(waiter) => self.fail_tracker_waiter(
                waiter,
                Error::TrackerUnreachable("too many requests wait for the tracker".to_owned()),
            ),
        }
    }

    pub(super) fn fail_tracker_waiter(&mut self, waiter: TrackerWaiter, error: Error) {
        match waiter {
            TrackerWaiter::Announce(share) => {
                warn!(%error, "announce failed; retrying at the next interval");
                if let Some((shared, reply)) = share {
                    let _ = reply.send(Ok(shared));
                }
            }
            TrackerWaiter::Lookup(tx) => drop(tx.send(Err(error))),
            TrackerWaiter::Search(tx) => drop(tx.send(Err(error))),
            TrackerWaiter::Stats(tx) => drop(tx.send(Err(error))),
            TrackerWaiter::Download(id) => self.drive(|d, cx| d.on_lookup_failed(cx, id, error)),
            TrackerWaiter::Unannounce(unshare) => {
                debug!(%error, "unannounce failed");
                // The unshare waiting for it is answered once its last unannounce ends.
                drop(unshare);
            }
        }
    }

    /// Tells the tracker which files this node serves (complete, or partly during a download) and where to reach it.
    pub(super) fn announce(&mut self) {
        self.announce_then(None);
    }

    /// [`EventLoop::announce`], answering `share` once the tracker acknowledged the last part.
    pub(super) fn announce_then(&mut self, mut share: Option<ShareReply>) {
        if self.tracker_addr.is_none() {
            return;
        }
        let files = self.holdings.announced();
        // Circuit and confirmed external addresses first: the announce keeps only so many, and
        // a host with many interfaces must not crowd out the way to reach it through its NAT.
        let mut addrs: Vec<Multiaddr> = Vec::new();
        let circuits = self
            .listen_addrs
            .iter()
            .filter(|a| crate::paths::circuit_relay(a).is_some());
        let rest = self
            .listen_addrs
            .iter()
            .filter(|a| crate::paths::circuit_relay(a).is_none());
        for addr in circuits.chain(self.swarm.external_addresses()).chain(rest) {
            if addrs.len() == tracker::MAX_ANNOUNCE_ADDRS {
                break;
            }
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        self.tracker.announce_sent(Instant::now());
        // Announces are additive at the tracker, so a large share goes in several.
        let mut chunks: Vec<Vec<AnnouncedFile>> = files
            .chunks(tracker::MAX_ANNOUNCE_FILES)
            .map(<[_]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, files) in chunks.into_iter().enumerate() {
            let announce = Announce {
                files,
                addrs: addrs.clone(),
            };
            let waiter = TrackerWaiter::Announce(if i == last { share.take() } else { None });
            self.tracker_request(tracker::Request::Announce(announce), waiter);
        }
    }

    pub(super) fn handle_tracker_event(
        &mut self,
        event: request_response::Event<tracker::Request, tracker::Response>,
    ) {
        match event {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(waiter) = self.tracker_pending.remove(&request_id) {
                    self.on_tracker_response(waiter, response);
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(waiter) = self.tracker_pending.remove(&request_id) {
                    self.fail_tracker_waiter(waiter, Error::TrackerUnreachable(error.to_string()));
                }
            }
            other => trace!(?other, "tracker protocol event"),
        }
    }

    pub(super) fn on_tracker_response(
        &mut self,
        waiter: TrackerWaiter,
        response: tracker::Response,
    ) {
        let reply = match response {
            Ok(reply) => reply,
            Err(code) => return self.fail_tracker_waiter(waiter, Error::Tracker(code)),
        };
        match (waiter, reply) {
            (TrackerWaiter::Announce(share), Reply::Announced { interval_secs, .. }) => {
                if let Some((shared, reply)) = share {
                    let _ = reply.send(Ok(shared));
                }
                let (lo, hi) = ANNOUNCE_INTERVAL_RANGE;
                let interval = Duration::from_secs(u64::from(interval_secs).clamp(lo, hi));
                self.tracker.announced(interval, Instant::now());
                debug!(?interval, "announced");
                self.ensure_reservation();
            }
            (TrackerWaiter::Lookup(tx), Reply::Providers(records)) => drop(tx.send(Ok(records))),
            (TrackerWaiter::Search(tx), Reply::Found(found)) => drop(tx.send(Ok(found))),
            (TrackerWaiter::Stats(tx), Reply::Stats(stats)) => drop(tx.send(Ok(stats))),
            (TrackerWaiter::Download(id), Reply::Providers(records)) => {
                self.drive(|d, cx| d.on_lookup(cx, id, records))
            }
            (TrackerWaiter::Unannounce(unshare), Reply::Unannounced) => {
                trace!("unannounced");
                drop(unshare);
            }
            (waiter, _) => self.fail_tracker_waiter(waiter, Error::UnexpectedReply),
        }
    }
}

/// A one-line account of a dial failure: the innermost cause per address, not libp2p's nested,
/// multi-line report.
/// Whether a dial failed because, for one of its addresses, its local address (the listening
/// port, reused) was in use: a connection from that port to the same address is still open or
/// closing (TIME_WAIT) in this or an earlier process.
pub(super) fn address_in_use(error: &DialError) -> bool {
    fn in_use(e: &(dyn std::error::Error + 'static)) -> bool {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::AddrInUse {
                return true;
            }
            // An `io::Error` wrapping another hides it from `source`.
            if io.get_ref().is_some_and(|inner| in_use(inner)) {
                return true;
            }
        }
        // Wrappers (`Either`, the DNS and timeout transports) pass `source` through to their
        // inner error's source, so the `io::Error` itself may never be visited: its message
        // (glibc's, musl's) is what remains.
        let text = e.to_string();
        if text.contains("Address already in use") || text.ends_with("Address in use") {
            return true;
        }
        e.source().is_some_and(in_use)
    }
    let DialError::Transport(errors) = error else {
        return false;
    };
    errors.iter().any(|(_, e)| in_use(e))
}

pub(super) fn dial_error_summary(error: &DialError) -> String {
    fn root(e: &dyn std::error::Error) -> String {
        let mut e = e;
        while let Some(source) = e.source() {
            e = source;
        }
        e.to_string()
    }
    let text = match error {
        DialError::Transport(errors) => errors
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", root(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => root(other),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use libp2p::TransportError;

    use super::*;

    #[test]
    fn a_dial_that_failed_on_a_local_address_in_use_is_told_apart() {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/7000".parse().unwrap();
        let wrapped = std::io::Error::other(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        let in_use = DialError::Transport(vec![(addr.clone(), TransportError::Other(wrapped))]);
        assert!(address_in_use(&in_use));
        // As the boxed transports report it: only the message is left of the OS error.
        let opaque = std::io::Error::other(format!("{}", std::io::Error::from_raw_os_error(98)));
        let in_use = DialError::Transport(vec![(addr.clone(), TransportError::Other(opaque))]);
        assert!(address_in_use(&in_use));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused = DialError::Transport(vec![(addr, TransportError::Other(refused))]);
        assert!(!address_in_use(&refused));
    }
}
