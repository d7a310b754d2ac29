//! Getting through NATs: listening on TCP and QUIC on one port before dialing anything,
//! holding a relay reservation at the tracker while the node is not known to be reachable,
//! and keeping track of each peer's connection path as DCUtR turns relayed connections into
//! direct ones.
//!
//! Reachability comes from AutoNAT with the tracker as the only server. Until it says
//! `Public`, the node reserves a slot at the tracker's relay and announces its circuit
//! address next to its direct ones, so a peer behind another NAT can dial it through the relay;
//! DCUtR then punches a hole and pieces move over the direct connection. A reservation that
//! closes (the tracker restarted, the connection dropped) is made again with backoff.

use std::time::{Duration, Instant};

use bitswarm_protocols::{quic_twin, tcp_port};
use libp2p::{
    autonat,
    core::{transport::ListenerId, ConnectedPoint},
    dcutr,
    multiaddr::Protocol,
    relay,
    swarm::ConnectionId,
    Multiaddr, PeerId,
};
use tracing::{debug, info, warn};

use crate::{backoff::Backoff, EventLoop};

/// Most time spent waiting for listeners to bind before dialing the tracker.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// First delay before retrying a failed reservation; doubles up to [`MAX_RETRY`].
pub(crate) const MIN_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between reservation attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// NAT-traversal state of the event loop.
#[derive(Debug)]
pub(crate) struct NatState {
    /// Listeners that have not reported an address yet.
    pending_listeners: Vec<ListenerId>,
    /// TCP listeners whose port QUIC should share, with the address they were asked for.
    tcp_listeners: Vec<(ListenerId, Multiaddr)>,
    /// The circuit listener at the tracker's relay.
    reservation: Option<ListenerId>,
    next_reservation: Instant,
    reservation_backoff: Backoff,
    /// AutoNAT confirmed a public address.
    public: bool,
}

impl NatState {
    pub(crate) fn new(tcp_listeners: Vec<(ListenerId, Multiaddr)>) -> Self {
        NatState {
            pending_listeners: tcp_listeners.iter().map(|(id, _)| *id).collect(),
            tcp_listeners,
            reservation: None,
            next_reservation: Instant::now(),
            reservation_backoff: Backoff::new(MIN_RETRY, MAX_RETRY),
            public: false,
        }
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

impl<E: libp2p::swarm::NetworkBehaviour> EventLoop<E> {
    /// Waits (at most [`LISTEN_WAIT`]) until every listener reported an address, starting a
    /// QUIC listener on each TCP listener's port as it does. TCP hole punching dials from the
    /// listening port, so nothing may be dialed before this.
    pub(crate) async fn await_listeners(&mut self) {
        let deadline = tokio::time::sleep(LISTEN_WAIT);
        tokio::pin!(deadline);
        while !self.nat.pending_listeners.is_empty() {
            tokio::select! {
                event = futures::StreamExt::select_next_some(&mut self.swarm) => {
                    self.handle_swarm_event(event)
                }
                () = &mut deadline => {
                    warn!(pending = self.nat.pending_listeners.len(), "listeners not ready; going on");
                    break;
                }
            }
        }
    }

    /// A listener reported `address`: a TCP one gets its QUIC twin on the same port.
    pub(crate) fn on_listener_up(&mut self, listener: ListenerId, address: &Multiaddr) {
        self.nat.pending_listeners.retain(|l| *l != listener);
        if Some(listener) == self.nat.reservation {
            info!(%address, "reachable through the tracker's relay");
            if self.registers() {
                self.announce();
            }
        }
        let Some(i) = self
            .nat
            .tcp_listeners
            .iter()
            .position(|(l, _)| *l == listener)
        else {
            return;
        };
        let (_, asked) = self.nat.tcp_listeners.swap_remove(i);
        if !self.config.quic {
            return;
        }
        let Some(quic) = tcp_port(address).and_then(|port| quic_twin(&asked, port)) else {
            return;
        };
        match self.swarm.listen_on(quic.clone()) {
            Ok(id) => self.nat.pending_listeners.push(id),
            Err(error) => warn!(addr = %quic, %error, "cannot listen on QUIC"),
        }
    }

    /// A listener closed or failed for good.
    pub(crate) fn on_listener_closed(
        &mut self,
        listener: ListenerId,
        reason: &dyn std::fmt::Display,
    ) {
        self.nat.pending_listeners.retain(|l| *l != listener);
        self.nat.tcp_listeners.retain(|(l, _)| *l != listener);
        if Some(listener) == self.nat.reservation {
            warn!(%reason, "relay reservation at the tracker closed; will reserve again");
            self.nat.reservation = None;
            self.nat.next_reservation = self.nat.reservation_backoff.failed(Instant::now());
        } else {
            debug!(%reason, "listener closed");
        }
    }

    /// Reserves a slot at the tracker's relay if this node needs one and has none.
    pub(crate) fn ensure_reservation(&mut self) {
        if !self.config.relay_reservation
            || !self.registers()
            || self.nat.public
            || self.nat.reservation.is_some()
            || Instant::now() < self.nat.next_reservation
        {
            return;
        }
        let (Some(tracker), Some(tracker_addr)) = (self.tracker.connected(), &self.tracker_addr)
        else {
            return;
        };
        let addr = reservation_addr(tracker_addr, tracker);
        debug!(%addr, "reserving a relay slot");
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => self.nat.reservation = Some(id),
            Err(error) => {
                warn!(%addr, %error, "cannot reserve a relay slot");
                self.nat.next_reservation = self.nat.reservation_backoff.failed(Instant::now());
            }
        }
    }

    /// Whether this node registers at the tracker (and so needs to be reachable): it announces
    /// its presence, or serves something.
    pub(crate) fn registers(&self) -> bool {
        self.config.announce_presence || !self.holdings.is_empty()
    }

    /// The tracker is connected: it is our AutoNAT server and relay.
    pub(crate) fn on_tracker_link(&mut self, tracker: PeerId, addr: &Multiaddr) {
        self.swarm
            .behaviour_mut()
            .autonat
            .add_server(tracker, Some(addr.clone()));
        self.ensure_reservation();
    }

    pub(crate) fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        point: &ConnectedPoint,
    ) {
        self.connections.established(peer, id, point);
        if self.connections.data_path(&peer).is_some() {
            self.close_relayed_if_direct(peer);
            self.on_peer_ready(peer);
        }
    }

    /// With a direct connection to `peer`, its relayed ones only waste the relay (and
    /// request-response would spread requests over them).
    fn close_relayed_if_direct(&mut self, peer: PeerId) {
        for id in self.connections.relayed_if_direct(&peer) {
            debug!(%peer, "closing the relayed connection: a direct one is up");
            self.swarm.close_connection(id);
        }
    }

    pub(crate) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                limit,
            } => {
                if !renewal {
                    info!(relay = %relay_peer_id, ?limit, "relay reservation accepted");
                }
                self.nat.reservation_backoff.reset();
            }
            relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => {
                debug!(relay = %relay_peer_id, ?limit, "circuit through relay");
                self.connections
                    .relay_limit(relay_peer_id, limit.and_then(|l| l.data_in_bytes()));
                let ids: Vec<_> = self.downloads.keys().copied().collect();
                for id in ids {
                    self.schedule(id);
                }
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                debug!(peer = %src_peer_id, ?limit, "inbound circuit");
                // Inbound circuits come through our reservation, at the tracker.
                if let Some(relay) = self.tracker.connected() {
                    self.connections
                        .relay_limit(relay, limit.and_then(|l| l.data_in_bytes()));
                }
            }
        }
    }

    pub(crate) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(id) => {
                info!(%peer, "hole punched: direct connection");
                self.connections.hole_punched(peer, id);
                self.close_relayed_if_direct(peer);
                self.on_peer_ready(peer);
            }
            Err(error) => {
                warn!(%peer, %error, "hole punching failed");
                self.on_hole_punch_failed(peer, &error.to_string());
            }
        }
    }

    pub(crate) fn on_autonat_event(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            return debug!(?event, "autonat");
        };
        info!(?old, ?new, "reachability");
        self.nat.public = matches!(new, autonat::NatStatus::Public(_));
        if self.nat.public {
            if let Some(id) = self.nat.reservation.take() {
                info!("publicly reachable: giving up the relay reservation");
                self.swarm.remove_listener(id);
                if self.registers() {
                    self.announce();
                }
            }
        } else {
            self.ensure_reservation();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_address_names_the_tracker_once() {
        let tracker = PeerId::random();
        let plain: Multiaddr = "/ip4/198.18.0.10/tcp/7000".parse().unwrap();
        let full = plain.clone().with(Protocol::P2p(tracker));
        let want = plain
            .clone()
            .with(Protocol::P2p(tracker))
            .with(Protocol::P2pCircuit);
        assert_eq!(reservation_addr(&plain, tracker), want);
        assert_eq!(reservation_addr(&full, tracker), want);
    }
}
