//! [`Serving`]: what answering other peers' piece requests may cost this node, as pure state.
//!
//! A piece response holds a buffer from the moment its read is admitted until the transport has
//! written it (`ResponseSent`) or given up on it (`InboundFailure`, after the request timeout at
//! the latest): a peer that asks and never reads must not hold more than its share. So a piece
//! request is admitted only while
//! - fewer than `max_reads` disk reads run,
//! - the bytes of every admitted, unsent response stay within `max_bytes`, and
//! - the asking peer has fewer than `max_per_peer` responses admitted and unsent;
//!
//! otherwise it is answered `Busy`. A peer that has responses waiting and has taken none of
//! them for [`STALL_PATIENCE`] does not read: [`Serving::stalled`] names it, and the event loop
//! disconnects it, which frees everything it held (long before the request timeout).
//!
//! The event loop reports each read's end and each response's end, with the time; nothing here
//! knows the swarm or the clock.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use libp2p::{request_response::InboundRequestId, PeerId};

/// How long a peer with responses waiting may go without taking one before it counts as not
/// reading (a 1 MiB piece in 15 s is 70 KB/s: slower links should ask for fewer at once).
pub(crate) const STALL_PATIENCE: Duration = Duration::from_secs(15);

/// The bounds (from [`crate::Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServingLimits {
    /// Disk reads at once.
    pub(crate) max_reads: usize,
    /// Piece bytes admitted and not yet sent, over all peers.
    pub(crate) max_bytes: u64,
    /// Piece responses admitted and not yet sent, per peer.
    pub(crate) max_per_peer: usize,
}

/// Piece responses admitted and not yet sent, by request (`K`: request-response's inbound
/// request id).
#[derive(Debug)]
pub(crate) struct Serving<K = InboundRequestId> {
    limits: ServingLimits,
    /// Disk reads running.
    reads: usize,
    /// Bytes of the responses in `open`.
    bytes: u64,
    /// Per peer: responses admitted and not yet sent, and when it last made progress (took a
    /// response, or had its first one admitted).
    per_peer: HashMap<PeerId, (usize, Instant)>,
    /// Admitted responses: who asked, how many bytes.
    open: HashMap<K, (PeerId, u64)>,
}

impl<K: Hash + Eq + Copy> Serving<K> {
    pub(crate) fn new(limits: ServingLimits) -> Self {
        Serving {
            limits,
            reads: 0,
            bytes: 0,
            per_peer: HashMap::new(),
            open: HashMap::new(),
        }
    }

    /// Admits `peer`'s request for a piece of `len` bytes at `now` (its read starts), or
    /// refuses it (answer `Busy`).
    pub(crate) fn admit(&mut self, request: K, peer: PeerId, len: u32, now: Instant) -> bool {
        let len = u64::from(len);
        let peer_open = self.per_peer.get(&peer).map_or(0, |(n, _)| *n);
        if self.reads >= self.limits.max_reads
            || self.bytes + len > self.limits.max_bytes
            || peer_open >= self.limits.max_per_peer
            || self.open.contains_key(&request)
        {
            return false;
        }
        self.reads += 1;
        self.bytes += len;
        self.per_peer.entry(peer).or_insert((0, now)).0 += 1;
        self.open.insert(request, (peer, len));
        true
    }

    /// An admitted read ended (its response is being sent, or it failed).
    pub(crate) fn read_done(&mut self) {
        self.reads = self.reads.saturating_sub(1);
    }

    /// The response to `request` was written, failed, or will never be sent, at `now`: its
    /// bytes are free. Returns who asked, if it was an admitted piece response.
    pub(crate) fn finished(&mut self, request: K, now: Instant) -> Option<PeerId> {
        let (peer, len) = self.open.remove(&request)?;
        self.bytes -= len;
        if let Some((n, progress)) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            *progress = now;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        Some(peer)
    }

    /// Peers with responses waiting that have taken none for longer than `patience` at `now`.
    /// Each is named once per `patience` (the caller disconnects it; the responses end as the
    /// connection closes).
    pub(crate) fn stalled(&mut self, now: Instant, patience: Duration) -> Vec<PeerId> {
        let mut stalled = Vec::new();
        for (peer, (_, progress)) in &mut self.per_peer {
            if now.duration_since(*progress) > patience {
                *progress = now;
                stalled.push(*peer);
            }
        }
        stalled.sort();
        stalled
    }

    /// Bytes admitted and not yet sent.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request ids (request-response makes the real ones; any distinct keys do here).
    fn ids(n: u64) -> Vec<u64> {
        (0..n).collect()
    }

    fn serving(max_reads: usize, max_bytes: u64, max_per_peer: usize) -> Serving<u64> {
        Serving::new(ServingLimits {
            max_reads,
            max_bytes,
            max_per_peer,
        })
    }

    #[test]
    fn a_peer_that_does_not_read_holds_at_most_its_share_and_others_are_still_served() {
        let (slow, honest) = (PeerId::random(), PeerId::random());
        let mut s = serving(32, 16 << 20, 4);
        let now = Instant::now();
        let ids = ids(10);
        // The slow peer's reads finish, but its responses are never written.
        for id in &ids[..4] {
            assert!(s.admit(*id, slow, 1 << 20, now));
            s.read_done();
        }
        assert!(
            !s.admit(ids[4], slow, 1 << 20, now),
            "its fifth unsent response is refused"
        );
        assert_eq!(s.bytes(), 4 << 20);
        assert!(
            s.admit(ids[5], honest, 1 << 20, now),
            "another peer is served"
        );
        // Its responses time out at last: its share is free again.
        for id in &ids[..4] {
            assert_eq!(s.finished(*id, now), Some(slow));
        }
        assert!(s.admit(ids[6], slow, 1 << 20, now));
        assert_eq!(s.finished(ids[9], now), None, "never admitted");
    }

    #[test]
    fn bytes_count_until_the_response_is_sent_not_until_the_read_ends() {
        let mut s = serving(32, 3 << 20, 32);
        let now = Instant::now();
        let ids = ids(5);
        for (i, id) in ids[..3].iter().enumerate() {
            assert!(s.admit(*id, PeerId::random(), 1 << 20, now), "{i}");
            s.read_done();
        }
        assert!(
            !s.admit(ids[3], PeerId::random(), 1 << 20, now),
            "reads are done but nothing was sent: the byte budget is spent"
        );
        s.finished(ids[0], now);
        assert!(s.admit(ids[4], PeerId::random(), 1 << 20, now));
    }

    #[test]
    fn reads_past_the_cap_are_refused_until_one_ends() {
        let mut s = serving(2, u64::MAX, 32);
        let now = Instant::now();
        let ids = ids(3);
        assert!(s.admit(ids[0], PeerId::random(), 10, now));
        assert!(s.admit(ids[1], PeerId::random(), 10, now));
        assert!(!s.admit(ids[2], PeerId::random(), 10, now));
        s.read_done();
        assert!(s.admit(ids[2], PeerId::random(), 10, now));
    }

    #[test]
    fn a_peer_that_takes_none_of_its_responses_is_named_stalled_once_per_patience() {
        let (stuck, reading) = (PeerId::random(), PeerId::random());
        let mut s = serving(32, 64 << 20, 16);
        let t0 = Instant::now();
        let ids = ids(4);
        assert!(s.admit(ids[0], stuck, 1 << 20, t0));
        assert!(s.admit(ids[1], reading, 1 << 20, t0));
        assert!(s.admit(ids[2], reading, 1 << 20, t0));
        let patience = Duration::from_secs(15);
        // The reading peer takes one response now and then; the stuck one never does.
        let t1 = t0 + Duration::from_secs(10);
        s.finished(ids[1], t1);
        assert!(s.stalled(t1, patience).is_empty());
        let t2 = t0 + Duration::from_secs(16);
        assert_eq!(s.stalled(t2, patience), vec![stuck]);
        assert!(s.stalled(t2, patience).is_empty(), "named once");
        // A peer with nothing waiting is never stalled.
        s.finished(ids[2], t2);
        s.finished(ids[0], t2);
        assert!(s.stalled(t2 + patience * 2, patience).is_empty());
    }
}
