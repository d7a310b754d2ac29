//! A chat room per file: a gossipsub topic (`bitswarm-chat/<file id>`) carried by the node's
//! own connections, gossipsub being the node's extension behaviour.
//!
//! - [`behaviour`] builds the extension handed to `bitswarm_node::new_with_extension`:
//!   [`ChatBehaviour`], gossipsub composed with [`Nudge`] (see there why) by
//!   `#[derive(NetworkBehaviour)]`. Gossipsub signs messages with the node's key, derives
//!   message ids from the content, limits frames to 4 KiB, accepts room topics only (a few per
//!   peer), and holds every received message back until the application has checked it.
//! - [`Room::join`] subscribes through `Client::with_extension` and starts two tasks: one reads
//!   the node's events (checks each message, reports the verdict to gossipsub, hands good
//!   ones on), one keeps the room connected (asks the tracker who holds the file, dials those
//!   not connected yet through `NodeContext::dial`).
//!
//! Why the room stays up: the node closes a connection once it has been idle for
//! `Config::idle_timeout`, but gossipsub keeps a connection to a room member busy: its
//! handler holds its streams open for as long as the connection lives, and asks for the
//! connection to be kept while the peer is in the topic's mesh. So a member stays connected
//! after its download has finished, and the keep-connected task redials members that went
//! away (a restart, a NAT mapping that expired) and connects members that never met (two
//! getters who downloaded from the same seeder).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bitswarm_node::{Client, Event, NodeContext};
use bitswarm_protocols::{tracker::LookupKey, FileId};
use libp2p::{
    gossipsub::{
        self, IdentTopic, IdentityTransform, MaxCountSubscriptionFilter, MessageAcceptance,
        MessageAuthenticity, MessageId, PublishError, TopicHash, TopicSubscriptionFilter,
        ValidationMode,
    },
    identity::Keypair,
    swarm::NetworkBehaviour,
    Multiaddr, PeerId,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{message::ChatMessage, nudge::Nudge};

/// The chat's gossipsub.
pub(crate) type Gossipsub =
    gossipsub::Behaviour<IdentityTransform, MaxCountSubscriptionFilter<RoomTopics>>;

/// The node's extension: gossipsub, and [`Nudge`] to wake gossipsub's connection handlers
/// after something was queued for them. Its events are [`ChatBehaviourEvent`]s (made by the
/// derive: one variant per field).
#[derive(NetworkBehaviour)]
pub(crate) struct ChatBehaviour {
    /// The rooms.
    pub(crate) gossipsub: Gossipsub,
    /// Wakes connections.
    pub(crate) nudge: Nudge,
}

impl ChatBehaviour {
    /// Wakes the connections of every room member, after gossipsub queued something for them
    /// (a message published or forwarded, a subscription).
    fn nudge_members(&mut self) {
        let members: Vec<PeerId> = self
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| !topics.is_empty())
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &members {
            self.nudge.peer(peer);
        }
    }
}

/// An event of a chat node.
pub(crate) type NodeEvent = Event<ChatBehaviourEvent>;

/// Every room's topic starts with this, followed by the file id in hex.
pub(crate) const ROOM_PREFIX: &str = "bitswarm-chat/";
/// Largest gossipsub frame sent or accepted (a chat message is at most ~1 KiB plus its
/// signature and envelope).
pub(crate) const MAX_TRANSMIT: usize = 4 * 1024;
/// Messages gossipsub queues per peer before it reports the peer as slow.
pub(crate) const PEER_QUEUE: usize = 256;
/// How often the room asks the tracker who holds the file, to connect to members.
pub(crate) const ROOM_REFRESH: Duration = Duration::from_secs(10);
/// The room connects to members until this many are connected (gossipsub's mesh size).
pub(crate) const ROOM_TARGET: usize = 6;
/// Addresses tried per member.
pub(crate) const MAX_ADDRS: usize = 8;
/// What the room heard, waiting for the application.
pub(crate) const HEARD_QUEUE: usize = 64;
/// How often [`Speaker::say_when_someone_is_here`] looks at the room.
const SAY_POLL: Duration = Duration::from_millis(250);
/// How long a member reachable only through a relay meant for hole punching is waited for
/// to become directly connected before a message goes to it over the relay anyway.
const RELAY_GRACE: Duration = bitswarm_node::DEFAULT_HOLEPUNCH_WAIT;

/// The room's topic for `file`.
pub(crate) fn topic(file: &FileId) -> IdentTopic {
    IdentTopic::new(format!("{ROOM_PREFIX}{file}"))
}

/// Accepts room topics only (`bitswarm-chat/<valid file id>`), ours and remote peers'
/// subscriptions alike, so a peer cannot make us track arbitrary topics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RoomTopics;

impl TopicSubscriptionFilter for RoomTopics {
    fn can_subscribe(&mut self, topic: &TopicHash) -> bool {
        topic
            .as_str()
            .strip_prefix(ROOM_PREFIX)
            .is_some_and(|id| id.parse::<FileId>().is_ok())
    }
}

/// A message's id: the BLAKE3 hash of its author, sequence number and bytes (20 bytes of it),
/// so an id always names one content.
fn message_id(message: &gossipsub::Message) -> MessageId {
    let mut hash = blake3::Hasher::new();
    if let Some(source) = &message.source {
        hash.update(&source.to_bytes());
    }
    hash.update(&message.sequence_number.unwrap_or(0).to_be_bytes());
    hash.update(&message.data);
    MessageId::new(&hash.finalize().as_bytes()[..20])
}

/// The extension of a node whose identity is `keypair` (give the node the same key:
/// `Config { keypair, .. }`, so messages are signed by the peer id others see).
pub(crate) fn behaviour(keypair: &Keypair) -> anyhow::Result<ChatBehaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(MAX_TRANSMIT)
        // Signed by the author, with a sequence number; unsigned messages are dropped.
        .validation_mode(ValidationMode::Strict)
        .message_id_fn(message_id)
        // Received messages wait for our verdict before they are forwarded.
        .validate_messages()
        .connection_handler_queue_len(PEER_QUEUE)
        .build()
        .map_err(|e| anyhow!("gossipsub config: {e}"))?;
    let filter = MaxCountSubscriptionFilter {
        filter: RoomTopics,
        max_subscribed_topics: 16,
        max_subscriptions_per_request: 16,
    };
    let gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
        MessageAuthenticity::Signed(keypair.clone()),
        config,
        filter,
    )
    .map_err(|e| anyhow!("gossipsub: {e}"))?;
    Ok(ChatBehaviour {
        gossipsub,
        nudge: Nudge::default(),
    })
}

/// A checked message and the member who signed it.
#[derive(Debug, Clone)]
pub(crate) struct ChatLine {
    /// The author (its signature checked by gossipsub).
    pub(crate) from: PeerId,
    /// What it says.
    pub(crate) message: ChatMessage,
}

/// Who is in the room, as this node sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Members {
    /// Connected peers subscribed to the room.
    pub(crate) subscribed: Vec<PeerId>,
    /// Those of them with a connection fit for data (direct, hole-punched, or a relay that
    /// carries data), as opposed to a relay circuit meant only for hole punching, which the
    /// node replaces by a direct connection (or closes).
    pub(crate) ready: Vec<PeerId>,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Said {
    /// Sent to the room.
    Sent,
    /// Nobody is in the room yet; nothing was sent.
    Nobody,
}

/// Says things in a room (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Speaker {
    client: Client,
    topic: IdentTopic,
    nick: String,
}

impl Speaker {
    /// The room's topic.
    pub(crate) fn topic(&self) -> &IdentTopic {
        &self.topic
    }

    /// Who is in the room now.
    pub(crate) async fn members(&self) -> anyhow::Result<Members> {
        let hash = self.topic.hash();
        Ok(self
            .client
            .with_extension(move |chat: &mut ChatBehaviour, cx: &mut NodeContext<'_>| {
                let subscribed: Vec<PeerId> = chat
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(peer, _)| *peer)
                    .collect();
                let ready = subscribed
                    .iter()
                    .copied()
                    .filter(|p| cx.data_path(p).is_some())
                    .collect();
                Members { subscribed, ready }
            })
            .await?)
    }

    /// Publishes `text` (checked first) under this speaker's nick.
    pub(crate) async fn say(&self, text: &str) -> anyhow::Result<Said> {
        let data = ChatMessage::new(&self.nick, text)?.encode();
        let hash = self.topic.hash();
        let published = self
            .client
            .with_extension(move |chat: &mut ChatBehaviour, _: &mut NodeContext<'_>| {
                let published = chat.gossipsub.publish(hash, data);
                chat.nudge_members();
                published
            })
            .await?;
        match published {
            Ok(_) => Ok(Said::Sent),
            Err(PublishError::NoPeersSubscribedToTopic) => Ok(Said::Nobody),
            Err(PublishError::AllQueuesFull(n)) => {
                bail!("the message was not sent: the queues of all {n} members are full")
            }
            Err(e) => bail!("the message was not sent: {e}"),
        }
    }

    /// Says `text` once someone is in the room: a member with a connection fit for data, or
    /// any member once it has been in the room for the hole-punch wait. Looks every 250 ms,
    /// for at most `within`.
    pub(crate) async fn say_when_someone_is_here(
        &self,
        text: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut first_seen: Option<Instant> = None;
        let rounds = within.as_millis() / SAY_POLL.as_millis() + 1;
        for _ in 0..rounds {
            let members = self.members().await?;
            if members.subscribed.is_empty() {
                first_seen = None;
            } else {
                first_seen.get_or_insert_with(Instant::now);
            }
            let waited_for_relay = first_seen.is_some_and(|t| t.elapsed() >= RELAY_GRACE);
            if (!members.ready.is_empty() || waited_for_relay)
                && self.say(text).await? == Said::Sent
            {
                return Ok(());
            }
            if started.elapsed() >= within {
                break;
            }
            tokio::time::sleep(SAY_POLL).await;
        }
        bail!("nobody joined the room within {}s", within.as_secs())
    }
}

/// What happens in a room, as this node sees it.
#[derive(Debug, Clone)]
pub(crate) enum Heard {
    /// A member said something (checked).
    Message(ChatLine),
    /// A peer joined the room (subscribed).
    Joined(PeerId),
    /// A member left the room (unsubscribed; a member that disconnects leaves silently).
    Left(PeerId),
}

/// A joined room: a [`Speaker`] and what the other members do.
#[derive(Debug)]
pub(crate) struct Room {
    /// Says things.
    pub(crate) speaker: Speaker,
    /// Checked messages of others and members coming and going, in the order they happened.
    pub(crate) heard: mpsc::Receiver<Heard>,
}

impl Room {
    /// Joins the room of `file` as `nick`: subscribes, then reads `events` (the node's event
    /// receiver; the room owns it from now on) and keeps the room connected, until `cancel`.
    pub(crate) async fn join(
        client: Client,
        events: mpsc::Receiver<NodeEvent>,
        file: FileId,
        nick: &str,
        cancel: CancellationToken,
    ) -> anyhow::Result<Room> {
        crate::message::check_nick(nick).context("--nick")?;
        let topic = topic(&file);
        let t = topic.clone();
        client
            .with_extension(move |chat: &mut ChatBehaviour, _: &mut NodeContext<'_>| {
                let subscribed = chat.gossipsub.subscribe(&t);
                chat.nudge_members();
                subscribed
            })
            .await?
            .map_err(|e| anyhow!("cannot join {topic}: {e}"))?;
        let (tx, heard) = mpsc::channel(HEARD_QUEUE);
        tokio::spawn(read_events(
            client.clone(),
            events,
            topic.hash(),
            tx,
            cancel.clone(),
        ));
        tokio::spawn(keep_connected(client.clone(), file, topic.hash(), cancel));
        Ok(Room {
            speaker: Speaker {
                client,
                topic,
                nick: nick.to_owned(),
            },
            heard,
        })
    }
}

/// Checks one received message: on our topic, signed, well formed.
fn check(topic: &TopicHash, message: &gossipsub::Message) -> Result<ChatLine, &'static str> {
    if &message.topic != topic {
        return Err("another topic");
    }
    // Strict validation has checked the signature; the source is the signer.
    let from = message.source.ok_or("unsigned")?;
    let message = ChatMessage::decode(&message.data).map_err(|e| e.0)?;
    Ok(ChatLine { from, message })
}

/// Reads the node's events: checks every chat message and tells gossipsub whether to forward
/// it (through `with_extension`), and passes good ones, and members coming and going, to
/// `heard`.
async fn read_events(
    client: Client,
    mut events: mpsc::Receiver<NodeEvent>,
    topic: TopicHash,
    heard: mpsc::Sender<Heard>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = cancel.cancelled() => return,
        };
        let Some(event) = event else { return };
        let event = match event {
            Event::Extension(ChatBehaviourEvent::Gossipsub(event)) => event,
            Event::Extension(ChatBehaviourEvent::Nudge(never)) => match never {},
            _ => continue,
        };
        let noted = match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let checked = check(&topic, &message);
                let verdict = match &checked {
                    Ok(_) => MessageAcceptance::Accept,
                    Err(why) => {
                        tracing::debug!(peer = %propagation_source, why, "message refused");
                        MessageAcceptance::Reject
                    }
                };
                let reported = client
                    .with_extension(move |chat: &mut ChatBehaviour, _: &mut NodeContext<'_>| {
                        // Accepted: gossipsub forwards it to the other members.
                        chat.gossipsub.report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            verdict,
                        );
                        chat.nudge_members();
                    })
                    .await;
                if reported.is_err() {
                    return; // the node stopped
                }
                checked.ok().map(Heard::Message)
            }
            gossipsub::Event::Subscribed { peer_id, topic: t } if t == topic => {
                Some(Heard::Joined(peer_id))
            }
            gossipsub::Event::Unsubscribed { peer_id, topic: t } if t == topic => {
                Some(Heard::Left(peer_id))
            }
            gossipsub::Event::SlowPeer { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "a member does not keep up");
                None
            }
            _ => None,
        };
        if let Some(noted) = noted {
            if heard.send(noted).await.is_err() {
                return; // the room was left
            }
        }
    }
}

/// Every [`ROOM_REFRESH`] (the first time at once): while fewer than [`ROOM_TARGET`] members
/// are connected, asks the tracker who holds the file and dials those not connected yet.
async fn keep_connected(client: Client, file: FileId, topic: TopicHash, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(ROOM_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let records = match client.lookup(LookupKey::Id(file)).await {
            Ok(records) => records,
            Err(bitswarm_node::Error::NodeStopped) => return,
            Err(e) => {
                tracing::debug!(error = %e, "room lookup failed; trying again later");
                continue;
            }
        };
        let holders: Vec<(PeerId, Vec<Multiaddr>)> = records
            .into_iter()
            .filter(|r| r.id == file)
            .flat_map(|r| r.providers)
            .map(|p| (p.peer, p.addrs.into_iter().take(MAX_ADDRS).collect()))
            .collect();
        let t = topic.clone();
        let dialed = client
            .with_extension(move |chat: &mut ChatBehaviour, cx: &mut NodeContext<'_>| {
                let members = chat
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&t))
                    .count();
                let me = cx.local_peer_id();
                let mut dialed = 0;
                for (peer, addrs) in holders {
                    if members + dialed >= ROOM_TARGET {
                        break;
                    }
                    if peer == me || cx.is_connected(&peer) {
                        continue;
                    }
                    match cx.dial(peer, addrs) {
                        Ok(_) => dialed += 1,
                        Err(_) => break, // too many dials for one call
                    }
                }
                dialed
            })
            .await;
        match dialed {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "dialing room members"),
            Err(_) => return, // the node stopped
        }
    }
}
