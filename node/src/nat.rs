//! Getting through NATs, as pure state: listening on TCP and QUIC on one port before dialing
//! anything, and holding a relay reservation at the tracker while the node is not known to be
//! reachable. [`NatState`] decides; the event loop executes its [`NatAction`]s (listen, stop
//! listening, announce) and reports back the listener ids the swarm assigned.
//!
//! Reachability comes from AutoNAT with the tracker as the only server. Until it says
//! `Public`, the node reserves a slot at the tracker's relay and announces its circuit
//! address next to its direct ones, so a peer behind another NAT can dial it through the relay;
//! DCUtR then punches a hole and pieces move over the direct connection (each peer's path is
//! [`crate::paths::Connections`]'). A reservation that closes (the tracker restarted, the
//! connection dropped) is made again with backoff.

use std::time::{Duration, Instant};

use bitswarm_protocols::{quic_twin, tcp_port};
use libp2p::{core::transport::ListenerId, multiaddr::Protocol, Multiaddr, PeerId};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;

/// Most time spent waiting for listeners to bind before dialing the tracker.
pub(crate) const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// First delay before retrying a failed reservation; doubles up to [`MAX_RETRY`].
pub(crate) const MIN_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between reservation attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the event loop must do for NAT traversal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NatAction {
    /// Listen on this QUIC address, the twin of a TCP listener's port; report the listener
    /// with [`NatState::quic_listening`].
    ListenQuic(Multiaddr),
    /// Listen on this circuit address (a relay reservation); report the listener with
    /// [`NatState::reserving`], or a refusal with [`NatState::reservation_failed`].
    Reserve(Multiaddr),
    /// Stop listening (give up the reservation).
    RemoveListener(ListenerId),
    /// Announce again: the node's addresses changed.
    Announce,
}

/// NAT-traversal state of one node.
#[derive(Debug)]
pub(crate) struct NatState {
    /// Listeners that have not reported an address yet.
    pending_listeners: Vec<ListenerId>,
    /// TCP listeners whose port QUIC should share, with the address they were asked for.
    tcp_listeners: Vec<(ListenerId, Multiaddr)>,
    /// Start a QUIC twin for each TCP listener.
    quic: bool,
    /// Reserve at the tracker's relay while not publicly reachable.
    relay_reservation: bool,
    /// The circuit listener at the tracker's relay.
    reservation: Option<ListenerId>,
    next_reservation: Instant,
    reservation_backoff: Backoff,
    /// AutoNAT confirmed a public address.
    public: bool,
}

impl NatState {
    pub(crate) fn new(
        tcp_listeners: Vec<(ListenerId, Multiaddr)>,
        quic: bool,
        relay_reservation: bool,
        now: Instant,
    ) -> Self {
        NatState {
            pending_listeners: tcp_listeners.iter().map(|(id, _)| *id).collect(),
            tcp_listeners,
            quic,
            relay_reservation,
            reservation: None,
            next_reservation: now,
            reservation_backoff: Backoff::new(MIN_RETRY, MAX_RETRY),
            public: false,
        }
    }

    /// Listeners that have not reported an address yet; nothing may be dialed before they
    /// have (TCP hole punching dials from the listening port).
    pub(crate) fn pending_listeners(&self) -> usize {
        self.pending_listeners.len()
    }

    /// A listener reported `address`: a TCP one gets its QUIC twin on the same port; the
    /// reservation's makes the node reachable through the relay (announced if it
    /// `registers`).
    pub(crate) fn on_listener_up(
        &mut self,
        listener: ListenerId,
        address: &Multiaddr,
        registers: bool,
    ) -> Vec<NatAction> {
        let mut actions = Vec::new();
        self.pending_listeners.retain(|l| *l != listener);
        if Some(listener) == self.reservation {
            info!(%address, "reachable through the tracker's relay");
            if registers {
                actions.push(NatAction::Announce);
            }
        }
        let Some(i) = self.tcp_listeners.iter().position(|(l, _)| *l == listener) else {
            return actions;
        };
        let (_, asked) = self.tcp_listeners.swap_remove(i);
        if self.quic {
            if let Some(quic) = tcp_port(address).and_then(|port| quic_twin(&asked, port)) {
                actions.push(NatAction::ListenQuic(quic));
            }
        }
        actions
    }

    /// The QUIC twin asked for by [`NatAction::ListenQuic`] is starting as `listener`.
    pub(crate) fn quic_listening(&mut self, listener: ListenerId) {
        self.pending_listeners.push(listener);
    }

    /// A listener closed or failed for good at `now`; a closed reservation is made again after
    /// the backoff.
    pub(crate) fn on_listener_closed(
        &mut self,
        listener: ListenerId,
        reason: &dyn std::fmt::Display,
        now: Instant,
    ) {
        self.pending_listeners.retain(|l| *l != listener);
        self.tcp_listeners.retain(|(l, _)| *l != listener);
        if Some(listener) == self.reservation {
            warn!(%reason, "relay reservation at the tracker closed; will reserve again");
            self.reservation = None;
            self.next_reservation = self.reservation_backoff.failed(now);
        } else {
            debug!(%reason, "listener closed");
        }
    }

    /// The reservation to make at `now`, if the node needs one and has none: it `registers`
    /// at the tracker, is not known to be public, and `tracker` (its peer id and address) is
    /// connected.
    pub(crate) fn reservation_wanted(
        &self,
        now: Instant,
        registers: bool,
        tracker: Option<(PeerId, &Multiaddr)>,
    ) -> Option<NatAction> {
        if !self.relay_reservation
            || !registers
            || self.public
            || self.reservation.is_some()
            || now < self.next_reservation
        {
            return None;
        }
        let (peer, addr) = tracker?;
        Some(NatAction::Reserve(reservation_addr(addr, peer)))
    }

    /// The reservation asked for is starting as `listener`.
    pub(crate) fn reserving(&mut self, listener: ListenerId) {
        self.reservation = Some(listener);
    }

    /// The reservation could not even be started at `now`: try again after the backoff.
    pub(crate) fn reservation_failed(&mut self, now: Instant) {
        self.next_reservation = self.reservation_backoff.failed(now);
    }

    /// The relay accepted the reservation: the backoff starts afresh.
    pub(crate) fn reservation_accepted(&mut self) {
        self.reservation_backoff.reset();
    }

    /// AutoNAT's verdict changed. Once public, the reservation is given up (and the node
    /// announces its addresses again if it `registers`).
    pub(crate) fn on_status(&mut self, public: bool, registers: bool) -> Vec<NatAction> {
        self.public = public;
        let mut actions = Vec::new();
        if public {
            if let Some(id) = self.reservation.take() {
                info!("publicly reachable: giving up the relay reservation");
                actions.push(NatAction::RemoveListener(id));
                if registers {
                    actions.push(NatAction::Announce);
                }
            }
        }
        actions
    }
}

/// The address to listen on for a reservation at `tracker`: its transport address, then
/// `/p2p/TRACKER/p2p-circuit`.
fn reservation_addr(tracker_addr: &Multiaddr, tracker: PeerId) -> Multiaddr {
    let mut addr = tracker_addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr.with(Protocol::P2p(tracker)).with(Protocol::P2pCircuit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (PeerId, Multiaddr) {
        let addr = "/ip4/198.18.0.10/tcp/7000".parse().unwrap();
        (PeerId::random(), addr)
    }

    #[test]
    fn reservation_address_names_the_tracker_once() {
        let (peer, plain) = tracker();
        let full = plain.clone().with(Protocol::P2p(peer));
        let want = plain
            .clone()
            .with(Protocol::P2p(peer))
            .with(Protocol::P2pCircuit);
        assert_eq!(reservation_addr(&plain, peer), want);
        assert_eq!(reservation_addr(&full, peer), want);
    }

    #[test]
    fn a_tcp_listener_gets_a_quic_twin_on_its_port_and_stays_pending_until_both_are_up() {
        let now = Instant::now();
        let tcp = ListenerId::next();
        let asked: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mut nat = NatState::new(vec![(tcp, asked)], true, true, now);
        assert_eq!(nat.pending_listeners(), 1);
        let bound: Multiaddr = "/ip4/127.0.0.1/tcp/4100".parse().unwrap();
        let actions = nat.on_listener_up(tcp, &bound, true);
        let want: Multiaddr = "/ip4/127.0.0.1/udp/4100/quic-v1".parse().unwrap();
        assert_eq!(actions, vec![NatAction::ListenQuic(want)]);
        let quic = ListenerId::next();
        nat.quic_listening(quic);
        assert_eq!(nat.pending_listeners(), 1, "the QUIC twin is awaited too");
        assert!(nat.on_listener_up(quic, &bound, true).is_empty());
        assert_eq!(nat.pending_listeners(), 0);

        let mut no_quic = NatState::new(vec![(tcp, bound.clone())], false, true, now);
        assert!(no_quic.on_listener_up(tcp, &bound, true).is_empty());
    }

    #[test]
    fn a_reservation_is_wanted_only_while_registered_connected_and_not_public() {
        let now = Instant::now();
        let (peer, addr) = tracker();
        let mut nat = NatState::new(Vec::new(), true, true, now);
        assert_eq!(
            nat.reservation_wanted(now, false, Some((peer, &addr))),
            None
        );
        assert_eq!(nat.reservation_wanted(now, true, None), None);
        let Some(NatAction::Reserve(circuit)) =
            nat.reservation_wanted(now, true, Some((peer, &addr)))
        else {
            panic!("a registered, connected, unknown-reachability node reserves");
        };
        assert_eq!(circuit, reservation_addr(&addr, peer));
        let id = ListenerId::next();
        nat.reserving(id);
        assert_eq!(
            nat.reservation_wanted(now, true, Some((peer, &addr))),
            None,
            "one at a time"
        );
        // The circuit listener comes up: the node announces its circuit address.
        assert_eq!(
            nat.on_listener_up(id, &circuit, true),
            vec![NatAction::Announce]
        );
        // AutoNAT says public: the reservation goes, and no new one is made.
        let actions = nat.on_status(true, true);
        assert_eq!(
            actions,
            vec![NatAction::RemoveListener(id), NatAction::Announce]
        );
        assert_eq!(nat.reservation_wanted(now, true, Some((peer, &addr))), None);
        // Private again: reserve again.
        assert!(nat.on_status(false, true).is_empty());
        assert!(nat
            .reservation_wanted(now, true, Some((peer, &addr)))
            .is_some());

        let off = NatState::new(Vec::new(), true, false, now);
        assert_eq!(off.reservation_wanted(now, true, Some((peer, &addr))), None);
    }

    #[test]
    fn a_closed_reservation_is_made_again_after_a_growing_backoff() {
        let t0 = Instant::now();
        let (peer, addr) = tracker();
        let tracker = Some((peer, &addr));
        let mut nat = NatState::new(Vec::new(), true, true, t0);
        nat.reserving(ListenerId::next());
        let first = nat.reservation.unwrap();
        nat.on_listener_closed(first, &"relay went away", t0);
        assert_eq!(
            nat.reservation_wanted(t0, true, tracker),
            None,
            "backing off"
        );
        let t1 = t0 + MIN_RETRY;
        assert!(nat.reservation_wanted(t1, true, tracker).is_some());
        // A second failure waits longer.
        nat.reservation_failed(t1);
        assert_eq!(nat.reservation_wanted(t1 + MIN_RETRY, true, tracker), None);
        assert!(nat
            .reservation_wanted(t1 + 2 * MIN_RETRY, true, tracker)
            .is_some());
        // An accepted reservation resets the backoff.
        nat.reservation_accepted();
        nat.reservation_failed(t1);
        assert!(nat
            .reservation_wanted(t1 + MIN_RETRY, true, tracker)
            .is_some());
    }
}
