//! A hostile peer: a bare libp2p swarm that announces files to the tracker and answers transfer
//! requests however a test says, including never (it keeps the stream open and silent).

use std::time::Duration;

use anyhow::Context;
use bitswarm_protocols::{
    tracker::{self, AnnouncedFile},
    tracker_codec, transfer, TrackerCodec, TransferCodec, TRACKER_PROTOCOL, TRANSFER_PROTOCOL,
};
use futures::StreamExt;
use libp2p::{
    noise, request_response,
    request_response::{ProtocolSupport, ResponseChannel},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, SwarmBuilder,
};
use tokio::task::JoinHandle;

#[derive(NetworkBehaviour)]
struct Hostile {
    tracker: request_response::Behaviour<TrackerCodec>,
    transfer: request_response::Behaviour<TransferCodec>,
}

/// How a hostile peer answers one transfer request: `Some` sends it, `None` never answers.
pub type Answer = Box<dyn FnMut(&transfer::Request) -> Option<transfer::Response> + Send>;

/// A running hostile peer; stopped when dropped.
pub struct HostilePeer {
    /// Its peer id.
    pub peer: PeerId,
    task: JoinHandle<()>,
}

impl HostilePeer {
    /// Starts a peer on 127.0.0.1 that announces `files` to the tracker at `tracker` (with
    /// `/p2p/<id>`) and answers requests with `answer`. Returns once the announce is
    /// acknowledged.
    pub async fn start(
        tracker: &Multiaddr,
        files: Vec<AnnouncedFile>,
        mut answer: Answer,
    ) -> anyhow::Result<Self> {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| Hostile {
                tracker: request_response::Behaviour::with_codec(
                    tracker_codec(),
                    [(TRACKER_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
                transfer: request_response::Behaviour::with_codec(
                    TransferCodec::default(),
                    [(TRANSFER_PROTOCOL, ProtocolSupport::Inbound)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(600)),
                ),
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let listen = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let Some(libp2p::multiaddr::Protocol::P2p(tracker_id)) = tracker.iter().last() else {
            anyhow::bail!("no /p2p in the tracker address {tracker}")
        };
        swarm.add_peer_address(tracker_id, tracker.clone());
        let announce = tracker::Announce {
            files,
            addrs: vec![listen],
        };
        swarm
            .behaviour_mut()
            .tracker
            .send_request(&tracker_id, tracker::Request::Announce(announce));
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(HostileEvent::Tracker(
                        request_response::Event::Message {
                            message: request_response::Message::Response { .. },
                            ..
                        },
                    )) => return Ok(()),
                    SwarmEvent::Behaviour(HostileEvent::Tracker(
                        request_response::Event::OutboundFailure { error, .. },
                    )) => anyhow::bail!("announce failed: {error}"),
                    _ => {}
                }
            }
        })
        .await
        .context("no answer to the announce")??;
        let peer = *swarm.local_peer_id();
        let task = tokio::spawn(async move {
            // Unanswered requests keep their streams open for as long as the peer runs.
            let mut silent: Vec<ResponseChannel<transfer::Response>> = Vec::new();
            loop {
                if let SwarmEvent::Behaviour(HostileEvent::Transfer(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) = swarm.select_next_some().await
                {
                    match answer(&request) {
                        Some(response) => {
                            let _ = swarm
                                .behaviour_mut()
                                .transfer
                                .send_response(channel, response);
                        }
                        None => silent.push(channel),
                    }
                }
            }
        });
        Ok(HostilePeer { peer, task })
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
