//! NAT traversal's I/O: listeners, the relay reservation ([`NatState`] decides), each peer's
//! connection path ([`crate::paths::Connections`] records it), and the relay client, DCUtR and
//! AutoNAT events that feed them.
//!
//! [`NatState`]: crate::nat::NatState

use std::time::Instant;

use libp2p::{
    autonat,
    core::{transport::ListenerId, ConnectedPoint},
    dcutr, relay,
    swarm::{ConnectionId, NetworkBehaviour},
    Multiaddr, PeerId,
};
use tracing::{debug, info, warn};

use super::EventLoop;
use crate::nat::{NatAction, LISTEN_WAIT};

impl<E: NetworkBehaviour> EventLoop<E> {
    /// Waits (at most [`LISTEN_WAIT`]) until every listener reported an address, starting a
    /// QUIC listener on each TCP listener's port as it does. TCP hole punching dials from the
    /// listening port, so nothing may be dialed before this.
    pub(super) async fn await_listeners(&mut self) {
        let deadline = tokio::time::sleep(LISTEN_WAIT);
        tokio::pin!(deadline);
        while self.nat.pending_listeners() > 0 {
            tokio::select! {
                event = futures::StreamExt::select_next_some(&mut self.swarm) => {
                    self.handle_swarm_event(event)
                }
                () = &mut deadline => {
                    warn!(pending = self.nat.pending_listeners(), "listeners not ready; going on");
                    break;
                }
            }
        }
    }

    fn execute_nat(&mut self, actions: Vec<NatAction>) {
        for action in actions {
            match action {
                NatAction::ListenQuic(addr) => match self.swarm.listen_on(addr.clone()) {
                    Ok(id) => self.nat.quic_listening(id),
                    Err(error) => warn!(%addr, %error, "cannot listen on QUIC"),
                },
                NatAction::Reserve(addr) => {
                    debug!(%addr, "reserving a relay slot");
                    match self.swarm.listen_on(addr.clone()) {
                        Ok(id) => self.nat.reserving(id),
                        Err(error) => {
                            warn!(%addr, %error, "cannot reserve a relay slot");
                            self.nat.reservation_failed(Instant::now());
                        }
                    }
                }
                NatAction::RemoveListener(id) => {
                    self.swarm.remove_listener(id);
                }
                NatAction::Announce => self.announce(),
            }
        }
    }

    /// A listener reported `address`.
    pub(super) fn on_listener_up(&mut self, listener: ListenerId, address: &Multiaddr) {
        let actions = self.nat.on_listener_up(listener, address, self.registers());
        self.execute_nat(actions);
    }

    /// Reserves a slot at the tracker's relay if this node needs one and has none.
    pub(super) fn ensure_reservation(&mut self) {
        // Only once the tracker has acknowledged an announce over this connection: its relay
        // reserves only for peers it has registered.
        let tracker = self
            .tracker
            .connected()
            .filter(|_| self.tracker.is_registered())
            .zip(self.tracker_addr.as_ref());
        let wanted = self
            .nat
            .reservation_wanted(Instant::now(), self.registers(), tracker);
        self.execute_nat(wanted.into_iter().collect());
    }

    /// Whether this node registers at the tracker (and so needs to be reachable): it announces
    /// its presence, or serves something.
    fn registers(&self) -> bool {
        self.config.announce_presence || !self.holdings.is_empty()
    }

    /// The tracker is connected: it is our AutoNAT server and relay.
    pub(super) fn on_tracker_link(&mut self, tracker: PeerId, addr: &Multiaddr) {
        self.swarm
            .behaviour_mut()
            .autonat
            .add_server(tracker, Some(addr.clone()));
        self.ensure_reservation();
    }

    pub(super) fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        point: &ConnectedPoint,
    ) {
        self.connections.established(peer, id, point);
        if self.connections.data_path(&peer).is_some() {
            self.close_relayed_if_direct(peer);
            self.drive(|d, cx| d.on_peer_ready(cx, peer));
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

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                limit,
            } => {
                if !renewal {
                    info!(relay = %relay_peer_id, ?limit, "relay reservation accepted");
                }
                self.nat.reservation_accepted();
            }
            relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => {
                debug!(relay = %relay_peer_id, ?limit, "circuit through relay");
                self.connections
                    .relay_limit(relay_peer_id, limit.and_then(|l| l.data_in_bytes()));
                self.drive(|d, cx| d.schedule_all(cx));
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

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(id) => {
                info!(%peer, "hole punched: direct connection");
                self.connections.hole_punched(peer, id);
                self.close_relayed_if_direct(peer);
                self.drive(|d, cx| d.on_peer_ready(cx, peer));
            }
            Err(error) => {
                warn!(%peer, %error, "hole punching failed");
                let why = error.to_string();
                self.drive(|d, cx| d.on_hole_punch_failed(cx, peer, &why));
            }
        }
    }

    pub(super) fn on_autonat_event(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { old, new } = event else {
            return debug!(?event, "autonat");
        };
        info!(?old, ?new, "reachability");
        let public = matches!(new, autonat::NatStatus::Public(_));
        let actions = self.nat.on_status(public, self.registers());
        self.execute_nat(actions);
        self.ensure_reservation();
    }
}
