//! The transfer protocol's I/O: inbound requests answered from [`crate::holdings::Holdings`]
//! (the decision is [`crate::holdings::Holdings::answer`]; this only sends it or runs the
//! read), and the answers to the downloads' requests handed to [`crate::downloader::Downloads`].
//!
//! Piece reads run on blocking tasks (positioned reads of one piece), at most
//! `config.max_serving_reads` at once; past that a request is answered `Busy` so a greedy peer
//! cannot queue unbounded work or memory here.

use std::{io, sync::Arc};

use bitswarm_protocols::{transfer, ErrorCode, FileId, PieceIndex};
use libp2p::{
    request_response::{self, ResponseChannel},
    swarm::{
        dial_opts::{DialOpts, PeerCondition},
        DialError, NetworkBehaviour,
    },
    PeerId,
};
use tracing::{debug, trace, warn};

use super::{EventLoop, TaskOutput};
use crate::{downloader::Action, holdings::Answer, store};

/// A finished piece read, ready to send.
pub(crate) struct ReadDone {
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
                    request, channel, ..
                } => self.on_transfer_request(peer, request, channel),
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
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound transfer request failed")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn respond(
        &mut self,
        channel: ResponseChannel<transfer::Response>,
        response: transfer::Response,
    ) {
        if self
            .swarm
            .behaviour_mut()
            .transfer
            .send_response(channel, response)
            .is_err()
        {
            trace!("requester went away before the response");
        }
    }

    fn on_transfer_request(
        &mut self,
        peer: PeerId,
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
        let answer =
            self.holdings
                .answer(&request, self.serving_reads, self.config.max_serving_reads);
        let (file, lengths, piece) = match answer {
            Answer::Respond(response) => return self.respond(channel, response),
            Answer::Read {
                file,
                lengths,
                piece,
            } => (file, lengths, piece),
        };
        self.serving_reads += 1;
        let pool = Arc::clone(&self.pool);
        self.tasks.spawn_blocking(move || {
            let result = store::read_piece(&pool, &file, &lengths, piece);
            TaskOutput::PieceRead(ReadDone {
                channel,
                peer,
                file: id,
                piece,
                result,
            })
        });
    }

    pub(super) fn on_piece_read(&mut self, done: ReadDone) {
        self.serving_reads = self.serving_reads.saturating_sub(1);
        let ReadDone {
            channel,
            peer,
            file,
            piece,
            result,
        } = done;
        match result {
            Ok(bytes) => {
                trace!(%peer, %file, %piece, "piece served");
                self.stats.uploaded += bytes.len() as u64;
                self.respond(channel, transfer::Response::Piece(bytes));
            }
            Err(error) => {
                warn!(%peer, %file, %piece, %error, "cannot read a shared piece");
                self.respond(channel, transfer::Response::Error(ErrorCode::Internal));
            }
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
