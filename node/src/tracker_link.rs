//! [`TrackerLink`]: the node's link to its tracker as a pure state machine. It holds the
//! connection state (`Idle -> Dialing -> Connected`), the requests waiting for a dial, and the
//! announce schedule with its redial backoff. It never touches the swarm and reads no clock:
//! the event loop passes the time, dials when told, and sends what it is handed. `W` is
//! whoever waits for a reply (the event loop's `TrackerWaiter`).

use std::time::{Duration, Instant};

use bitswarm_protocols::tracker;
use libp2p::{swarm::ConnectionId, PeerId};

use crate::backoff::Backoff;

/// Most requests that wait for the tracker to be dialed; more fail at once.
pub(crate) const MAX_QUEUED: usize = 256;
/// First redial delay after a failed dial (doubles up to the announce interval).
const MIN_REDIAL: Duration = Duration::from_secs(1);

/// The connection to the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Idle,
    Dialing {
        connection: ConnectionId,
        since: Instant,
    },
    Connected(PeerId),
}

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Route<W> {
    /// Send it now to the tracker `PeerId`.
    Send(PeerId, tracker::Request, W),
    /// Queued; dial the tracker (then report [`TrackerLink::dialing`]).
    Dial,
    /// Queued behind the dial under way.
    Queued,
    /// Refused: [`MAX_QUEUED`] requests wait already.
    Full(W),
}

/// What the housekeeping tick found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Tick {
    /// The dial has had no answer within the timeout: fail it ([`TrackerLink::dial_failed`]).
    pub(crate) dial_timed_out: bool,
    /// An announce is due.
    pub(crate) announce_due: bool,
}

/// The link to the tracker.
#[derive(Debug)]
pub(crate) struct TrackerLink<W> {
    link: Link,
    queued: Vec<(tracker::Request, W)>,
    dial_timeout: Duration,
    interval: Duration,
    next_announce: Option<Instant>,
    backoff: Backoff,
    /// An announce was acknowledged over the current connection: the tracker knows us (its
    /// relay reserves only for peers it has registered).
    registered: bool,
}

impl<W> TrackerLink<W> {
    /// An idle link; announces go every `interval` until the tracker names its own.
    pub(crate) fn new(dial_timeout: Duration, interval: Duration) -> Self {
        TrackerLink {
            link: Link::Idle,
            queued: Vec::new(),
            dial_timeout,
            interval,
            next_announce: None,
            backoff: Backoff::new(MIN_REDIAL, interval),
            registered: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn link(&self) -> Link {
        self.link
    }

    /// The tracker's id while connected.
    pub(crate) fn connected(&self) -> Option<PeerId> {
        match self.link {
            Link::Connected(peer) => Some(peer),
            _ => None,
        }
    }

    /// Whether `connection` is the dial to the tracker.
    pub(crate) fn is_dial(&self, connection: ConnectionId) -> bool {
        matches!(self.link, Link::Dialing { connection: c, .. } if c == connection)
    }

    /// Routes a request: sent at once when connected, else queued (and a dial asked for when
    /// none is under way).
    pub(crate) fn route(&mut self, request: tracker::Request, waiter: W) -> Route<W> {
        if let Link::Connected(peer) = self.link {
            return Route::Send(peer, request, waiter);
        }
        if self.queued.len() >= MAX_QUEUED {
            return Route::Full(waiter);
        }
        self.queued.push((request, waiter));
        match self.link {
            Link::Idle => Route::Dial,
            _ => Route::Queued,
        }
    }

    /// The event loop started dialing the tracker as `connection`.
    pub(crate) fn dialing(&mut self, connection: ConnectionId, now: Instant) {
        self.link = Link::Dialing {
            connection,
            since: now,
        };
    }

    /// `connection` reached the tracker `peer`. Returns the queued requests to send, or `None`
    /// when it is not the tracker dial.
    pub(crate) fn on_connected(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
    ) -> Option<Vec<(tracker::Request, W)>> {
        if !self.is_dial(connection) {
            return None;
        }
        self.link = Link::Connected(peer);
        self.registered = false;
        self.backoff.reset();
        Some(std::mem::take(&mut self.queued))
    }

    /// The dial failed (or timed out): the link is idle, the waiters returned are to be failed,
    /// and a scheduled announce (which redials) waits the backoff, which then doubles.
    pub(crate) fn dial_failed(&mut self, now: Instant) -> Vec<W> {
        self.link = Link::Idle;
        self.registered = false;
        if self.next_announce.is_some() {
            self.next_announce = Some(self.backoff.failed(now));
        }
        std::mem::take(&mut self.queued)
            .into_iter()
            .map(|(_, w)| w)
            .collect()
    }

    /// The last connection to the tracker closed (it may have restarted): idle, and announce
    /// again after the current backoff, which redials it.
    pub(crate) fn lost(&mut self, now: Instant) {
        self.link = Link::Idle;
        self.registered = false;
        if self.next_announce.is_some() {
            self.next_announce = Some(now + self.backoff.delay());
        }
    }

    /// An announce was sent at `now`: the next one is an interval later.
    pub(crate) fn announce_sent(&mut self, now: Instant) {
        self.next_announce = Some(now + self.interval);
    }

    /// The tracker acknowledged an announce and named its interval.
    pub(crate) fn announced(&mut self, interval: Duration, now: Instant) {
        self.registered = true;
        self.interval = interval;
        self.backoff.set_max(interval);
        self.next_announce = Some(now + interval);
    }

    /// Whether the tracker acknowledged an announce over the current connection.
    pub(crate) fn is_registered(&self) -> bool {
        self.registered && matches!(self.link, Link::Connected(_))
    }

    /// The announce interval in force.
    #[cfg(test)]
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// What is due at `now`.
    pub(crate) fn tick(&self, now: Instant) -> Tick {
        Tick {
            dial_timed_out: matches!(self.link, Link::Dialing { since, .. }
                if now.duration_since(since) > self.dial_timeout),
            announce_due: self.next_announce.is_some_and(|t| now >= t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);
    const INTERVAL: Duration = Duration::from_secs(30);

    fn lookup() -> tracker::Request {
        tracker::Request::Stats
    }

    #[test]
    fn requests_wait_for_one_dial_and_go_out_once_connected() {
        let now = Instant::now();
        let mut link: TrackerLink<u32> = TrackerLink::new(TIMEOUT, INTERVAL);
        assert!(matches!(link.route(lookup(), 1), Route::Dial));
        let conn = ConnectionId::new_unchecked(7);
        link.dialing(conn, now);
        assert!(
            matches!(link.route(lookup(), 2), Route::Queued),
            "one dial at a time"
        );
        let peer = PeerId::random();
        assert!(link
            .on_connected(ConnectionId::new_unchecked(8), peer)
            .is_none());
        let queued = link.on_connected(conn, peer).unwrap();
        assert_eq!(queued.iter().map(|(_, w)| *w).collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(link.route(lookup(), 3), Route::Send(p, _, 3) if p == peer));
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut link: TrackerLink<usize> = TrackerLink::new(TIMEOUT, INTERVAL);
        for w in 0..MAX_QUEUED {
            assert!(!matches!(link.route(lookup(), w), Route::Full(..)));
        }
        assert!(matches!(link.route(lookup(), MAX_QUEUED), Route::Full(w) if w == MAX_QUEUED));
    }

    #[test]
    fn a_dial_that_fails_or_times_out_fails_its_waiters_and_redials_with_backoff() {
        let t0 = Instant::now();
        let mut link: TrackerLink<u32> = TrackerLink::new(TIMEOUT, INTERVAL);
        link.announce_sent(t0);
        let _ = link.route(lookup(), 1);
        link.dialing(ConnectionId::new_unchecked(1), t0);
        assert!(!link.tick(t0 + TIMEOUT).dial_timed_out);
        assert!(
            link.tick(t0 + TIMEOUT + Duration::from_secs(1))
                .dial_timed_out
        );
        // Each failure pushes the next announce (the redial) out: 1 s, 2 s, 4 s ...
        let mut waits = Vec::new();
        for i in 0..6 {
            let now = t0 + Duration::from_secs(100 * i);
            let failed = link.dial_failed(now);
            assert_eq!(failed.len(), usize::from(i == 0), "the waiter fails once");
            assert_eq!(link.link(), Link::Idle);
            let due = (1..=120)
                .map(|s| now + Duration::from_secs(s))
                .find(|t| link.tick(*t).announce_due)
                .unwrap();
            waits.push((due - now).as_secs());
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 30],
            "doubling, capped at the interval"
        );
        // Connected again: the backoff starts over.
        let conn = ConnectionId::new_unchecked(2);
        link.dialing(conn, t0);
        link.on_connected(conn, PeerId::random()).unwrap();
        link.lost(t0);
        assert!(link.tick(t0 + Duration::from_secs(1)).announce_due);
    }

    #[test]
    fn registered_only_from_an_acknowledged_announce_until_the_connection_goes() {
        let t0 = Instant::now();
        let mut link: TrackerLink<u32> = TrackerLink::new(TIMEOUT, INTERVAL);
        let conn = ConnectionId::new_unchecked(1);
        link.dialing(conn, t0);
        link.on_connected(conn, PeerId::random()).unwrap();
        assert!(!link.is_registered(), "connected is not registered yet");
        link.announced(INTERVAL, t0);
        assert!(link.is_registered());
        link.lost(t0);
        assert!(!link.is_registered());
        let conn = ConnectionId::new_unchecked(2);
        link.dialing(conn, t0);
        link.on_connected(conn, PeerId::random()).unwrap();
        assert!(!link.is_registered(), "a new connection registers anew");
    }

    #[test]
    fn the_tracker_names_the_interval_and_the_backoff_ceiling() {
        let t0 = Instant::now();
        let mut link: TrackerLink<u32> = TrackerLink::new(TIMEOUT, INTERVAL);
        assert!(
            !link.tick(t0 + INTERVAL * 10).announce_due,
            "nothing scheduled yet"
        );
        link.announced(Duration::from_secs(5), t0);
        assert_eq!(link.interval(), Duration::from_secs(5));
        assert!(!link.tick(t0 + Duration::from_secs(4)).announce_due);
        assert!(link.tick(t0 + Duration::from_secs(5)).announce_due);
        for _ in 0..5 {
            link.dial_failed(t0);
        }
        assert!(
            link.tick(t0 + Duration::from_secs(5)).announce_due,
            "capped at 5 s"
        );
    }
}
