//! The transfer protocol's I/O: inbound requests answered from [`crate::holdings::Holdings`]
//! (the decision is [`crate::holdings::Holdings::answer`]; this only sends it or runs the
//! read), and the answers to the downloads' requests handed to [`crate::downloader::Downloads`].
//!
//! Piece reads run on blocking tasks (positioned reads of one piece). What they may cost is
//! [`crate::serving::Serving`]'s to decide: a response holds its bytes until the transport has
//! written it, past the limits a request is answered `Busy`, and a peer whose piece response
//! times out unread is disconnected.

use std::{io, sync::Arc, time::Instant};

use bitswarm_protocols::{transfer, ErrorCode, FileId, PieceIndex};
use libp2p::{
    request_response::{self, InboundFailure, InboundRequestId, ResponseChannel},
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        DialError, NetworkBehaviour,
    },
    PeerId,
};
use tracing::{debug, trace, warn};

use super::{EventLoop, TaskOutput};
use crate::{downloader::Action, holdings::Answer, serving::STALL_PATIENCE, store};

/// A finished piece read, ready to send.
pub(crate) struct ReadDone {
    request: InboundRequestId,
    channel: ResponseChannel<transfer::Response>,
    peer: PeerId,
    file: FileId,
    piece: PieceIndex,
    result: io::Result<Vec<u8>>,
}

impl<E: NetworkBehaviour> EventLoop<E> {
    pub(super) fn handle_transfer_event(
        &mut self,
        event: request_response::Event<transfer::Request, transfer::Response>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => self.on_transfer_request(peer, request_id, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(tag) = self.transfer_pending.remove(&request_id) {
                        self.drive(|d, cx| d.on_response(cx, peer, tag, response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(tag) = self.transfer_pending.remove(&request_id) {
                    self.drive(|d, cx| d.on_failure(cx, peer, tag, &error));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, "inbound transfer request failed");
                let admitted = self.serving.finished(request_id, Instant::now()).is_some();
                if admitted && matches!(error, InboundFailure::Timeout) {
                    // It asked for a piece and did not read it within the request timeout:
                    // whatever else it has open here is cut off too.
                    warn!(%peer, "disconnecting a peer that does not read the pieces it asks for");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.serving.finished(request_id, Instant::now());
            }
        }
    }

    /// Sends a response; returns false when the requester went away first (no event about it
    /// will come).
    fn respond(
        &mut self,
        channel: ResponseChannel<transfer::Response>,
        response: transfer::Response,
    ) -> bool {
        let sent = self
            .swarm
            .behaviour_mut()
            .transfer
            .send_response(channel, response)
            .is_ok();
        if !sent {
            trace!("requester went away before the response");
        }
        sent
    }

    fn on_transfer_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: transfer::Request,
        channel: ResponseChannel<transfer::Response>,
    ) {
        let (transfer::Request::Manifest { id }
        | transfer::Request::Have { id }
        | transfer::Request::Piece { id, .. }) = request;
        if !self.downloads.is_empty() {
            self.drive(|d, cx| d.on_interested_peer(cx, peer, id));
        }
        if let transfer::Request::Manifest { id } = request {
            debug!(%peer, file = %id, "manifest requested");
        }
        let (file, lengths, piece) = match self.holdings.answer(&request) {
            Answer::Respond(response) => {
                self.respond(channel, response);
                return;
            }
            Answer::Read {
                file,
                lengths,
                piece,
            } => (file, lengths, piece),
        };
        if !self
            .serving
            .admit(request_id, peer, lengths.piece_len(piece), Instant::now())
        {
            self.respond(channel, transfer::Response::Error(ErrorCode::Busy));
            return;
        }
        let pool = Arc::clone(&self.pool);
        self.tasks.spawn_blocking(move || {
            let result = store::read_piece(&pool, &file, &lengths, piece);
            TaskOutput::PieceRead(ReadDone {
                request: request_id,
                channel,
                peer,
                file: id,
                piece,
                result,
            })
        });
    }

    pub(super) fn on_piece_read(&mut self, done: ReadDone) {
        self.serving.read_done();
        let ReadDone {
            request,
            channel,
            peer,
            file,
            piece,
            result,
        } = done;
        let sent = match result {
            Ok(bytes) => {
                trace!(%peer, %file, %piece, "piece served");
                self.stats.uploaded += bytes.len() as u64;
                self.respond(channel, transfer::Response::Piece(bytes))
            }
            Err(error) => {
                warn!(%peer, %file, %piece, %error, "cannot read a shared piece");
                self.respond(channel, transfer::Response::Error(ErrorCode::Internal))
            }
        };
        if !sent {
            self.serving.finished(request, Instant::now());
        }
    }

    /// Disconnects peers that have piece responses waiting and take none of them: their
    /// responses end with the connection, and their bytes are free for peers that read.
    pub(super) fn cut_off_stalled_readers(&mut self) {
        for peer in self.serving.stalled(Instant::now(), STALL_PATIENCE) {
            warn!(%peer, "disconnecting a peer that does not read the pieces it asks for");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Dials a provider that is not connected (a no-op while a dial to it is under way). A dial
    /// that cannot even start is the downloads' to hear of: returns what they decide.
    pub(super) fn dial_provider(&mut self, peer: PeerId) -> Option<Vec<Action>> {
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => None,
            Err(error) => {
                let why = error.to_string();
                Some(self.decide(|d, cx| d.on_dial_failed(cx, peer, &why)))
            }
        }
    }
}
