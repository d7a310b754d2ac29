//! [`Nudge`]: a behaviour that wakes the connection handlers of chosen peers, composed next to
//! gossipsub so that gossipsub's handlers look at their send queue.
//!
//! Why: libp2p-gossipsub 0.50 keeps one send queue per peer, shared by the handlers of all the
//! connections to that peer, and a handler without an outbound stream yet only checks whether
//! the queue is empty when something else polls it; a push wakes only handlers already
//! waiting on the queue. When a peer is first reached through a relay and then directly (the
//! node punches a hole and closes the relayed connection), the relayed connection's handler
//! took the first messages; the direct one has no stream yet, and a message published later
//! sits in the queue until some other protocol on that connection happens to wake it (the
//! node's ping, every 15 s), by which time gossipsub has dropped it (a publish may wait
//! 5 s). An event sent to a connection's handler polls the whole connection, gossipsub's
//! handler included: it then finds the message and opens its stream.
//!
//! The handler does nothing else: it never opens or accepts a stream and never keeps a
//! connection alive.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    task::{Context, Poll, Waker},
};

use libp2p::{
    core::{transport::PortUse, upgrade::DeniedUpgrade, Endpoint},
    swarm::{
        handler::ConnectionEvent, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent,
        ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};

/// Nudges queued at most; more are dropped (a nudge only needs to happen once per wake-up).
const MAX_PENDING: usize = 256;

/// Wakes the connection handlers of peers on request ([`Nudge::peer`]).
#[derive(Debug, Default)]
pub(crate) struct Nudge {
    /// Every established connection, by peer (as many as the node's connection limits allow).
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Connections to nudge.
    pending: VecDeque<(PeerId, ConnectionId)>,
    waker: Option<Waker>,
}

impl Nudge {
    /// Wakes the handlers of every connection to `peer`.
    pub(crate) fn peer(&mut self, peer: &PeerId) {
        let Some(connections) = self.connections.get(peer) else {
            return;
        };
        for connection in connections {
            if self.pending.len() >= MAX_PENDING {
                break;
            }
            self.pending.push_back((*peer, *connection));
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl NetworkBehaviour for Nudge {
    type ConnectionHandler = NudgeHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(NudgeHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(NudgeHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(connections) = self.connections.get_mut(&e.peer_id) {
                    connections.retain(|c| *c != e.connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, connection)) = self.pending.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event: (),
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The handler of [`Nudge`]: takes `()` events and does nothing with them (receiving one is
/// the point: the connection is polled).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NudgeHandler;

impl ConnectionHandler for NudgeHandler {
    type FromBehaviour = ();
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, (): ()) {}

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        _: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
    }
}
