//! A protocol of your own, plugged into a bitswarm peer and into the tracker: before
//! downloading a file, ask the tracker what it is and a provider for its first bytes.
//!
//! The protocol ([`preview`]) is libp2p's request-response behaviour over the example's own
//! message types. A node takes it as its extension (`bitswarm_node::new_with_extension`), the
//! tracker too (`bitswarm_tracker::Tracker::bind_with_extension`); neither crate is changed.
//! Requests arrive as extension events; the application answers them by running a closure on
//! the behaviour inside the event loop (`Client::with_extension`, `TrackerHandle::with_extension`),
//! with the node's or the tracker's facts at hand (the tracker answers from its index).
//!
//! ```text
//! cargo run --example custom_protocol                      # all of it in one process
//! cargo run --example custom_protocol -- tracker 127.0.0.1:7000
//! cargo run --example custom_protocol -- share FILE 127.0.0.1:7000 127.0.0.1:0
//! cargo run --example custom_protocol -- preview NAME_OR_ID 127.0.0.1:7000 127.0.0.1:0 [--get DIR]
//! ```

mod preview;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use bitswarm_node::{Client, Config, NodeContext};
use bitswarm_protocols::{parse_addr, tracker::LookupKey, FileId, FileName};
use bitswarm_tracker::{Tracker, TrackerContext};
use clap::{Parser, Subcommand};
use libp2p::{
    request_response::{self, ProtocolSupport},
    Multiaddr, PeerId,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one preview request may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of preview asked for.
const PREVIEW_LEN: u32 = 64;

type NodeEvent = bitswarm_node::Event<preview::Event>;

#[derive(Parser, Debug)]
#[command(about = "A preview protocol of our own, on a bitswarm peer and tracker")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A tracker, a seeder and a getter in one process on loopback (the default).
    Demo,
    /// A tracker that also answers previews from its index.
    Tracker {
        /// Where to listen, `ip:port`.
        listen: String,
    },
    /// Share a file and answer previews of it.
    Share {
        /// The file.
        file: PathBuf,
        /// The tracker, `ip:port` (or a multiaddr).
        tracker: String,
        /// Where to listen, `ip:port`.
        listen: String,
    },
    /// Ask the tracker and a provider about a file, then (with `--get`) download it.
    Preview {
        /// A file name or content id.
        key: String,
        /// The tracker, `ip:port` (or a multiaddr).
        tracker: String,
        /// Where to listen, `ip:port`.
        listen: String,
        /// Download it into this directory after the preview.
        #[arg(long)]
        get: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cancel = CancellationToken::new();
    match Args::parse().command.unwrap_or(Command::Demo) {
        Command::Demo => demo(cancel).await,
        Command::Tracker { listen } => {
            let addr = start_tracker(parse_addr(&listen)?, cancel.clone()).await?;
            println!("tracker {addr}");
            tokio::signal::ctrl_c().await?;
            cancel.cancel();
            Ok(())
        }
        Command::Share {
            file,
            tracker,
            listen,
        } => {
            let config = node_config(parse_addr(&tracker)?, parse_addr(&listen)?, &cancel);
            let (_client, id) = start_sharer(config, file).await?;
            println!("sharing {id}");
            tokio::signal::ctrl_c().await?;
            cancel.cancel();
            Ok(())
        }
        Command::Preview {
            key,
            tracker,
            listen,
            get,
        } => {
            let config = node_config(parse_addr(&tracker)?, parse_addr(&listen)?, &cancel);
            let found = preview_then_get(config, parse_key(&key)?, get).await?;
            found.print();
            cancel.cancel();
            Ok(())
        }
    }
}

/// The whole example in one process: a tracker, a seeder of a generated file, and a getter
/// that previews it, downloads it, and checks the preview against what it downloaded.
async fn demo(cancel: CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tracker = start_tracker(parse_addr("127.0.0.1:0")?, cancel.clone()).await?;
    println!("tracker {tracker}");
    let path = dir.path().join("preview-demo.txt");
    let text: String = (0..2000)
        .map(|i| format!("line {i} of the demo file\n"))
        .collect();
    std::fs::write(&path, &text)?;
    let loopback = parse_addr("127.0.0.1:0")?;
    let (_seeder, id) = start_sharer(
        node_config(tracker.clone(), loopback.clone(), &cancel),
        path,
    )
    .await?;
    println!("sharing {id}");
    let out = dir.path().join("got");
    std::fs::create_dir_all(&out)?;
    let found = preview_then_get(
        node_config(tracker, loopback, &cancel),
        LookupKey::Id(id),
        Some(out),
    )
    .await?;
    found.print();
    let Some(got) = &found.downloaded else {
        bail!("nothing downloaded");
    };
    if !std::fs::read(got)?.starts_with(&found.bytes) {
        bail!("the preview is not the start of the file downloaded");
    }
    println!("preview matches the downloaded file");
    cancel.cancel();
    Ok(())
}

fn node_config(tracker: Multiaddr, listen: Multiaddr, cancel: &CancellationToken) -> Config {
    Config {
        listen_addrs: vec![listen],
        tracker: Some(tracker),
        cancel: cancel.child_token(),
        ..Config::default()
    }
}

fn parse_key(key: &str) -> anyhow::Result<LookupKey> {
    Ok(match key.parse::<FileId>() {
        Ok(id) => LookupKey::Id(id),
        Err(_) => LookupKey::Name(FileName::new(key)?),
    })
}

/// Starts a tracker whose extension answers previews with what its index knows of the file.
async fn start_tracker(listen: Multiaddr, cancel: CancellationToken) -> anyhow::Result<Multiaddr> {
    let config = bitswarm_tracker::Config {
        listen_addrs: vec![listen],
        ..Default::default()
    };
    let (tracker, mut events) =
        Tracker::bind_with_extension(config, preview::behaviour(ProtocolSupport::Inbound)).await?;
    let addr = tracker
        .listen_addrs()
        .into_iter()
        .next()
        .context("the tracker listens nowhere")?;
    let handle = tracker.handle();
    tokio::spawn(tracker.run(cancel));
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let preview::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } = event
            else {
                continue;
            };
            // Answered inside the tracker's loop: a lookup in its index is quick.
            let answered = handle
                .with_extension(
                    move |rr: &mut preview::Behaviour, ctx: &mut TrackerContext<'_>| {
                        let records = ctx.lookup(&LookupKey::Id(request.file), 1);
                        let _ = rr.send_response(channel, preview::answer_from_index(&records));
                    },
                )
                .await;
            if answered.is_err() {
                break;
            }
        }
    });
    Ok(addr)
}

/// Starts a node that shares `path` and answers previews of what it shares.
async fn start_sharer(config: Config, path: PathBuf) -> anyhow::Result<(Client, FileId)> {
    let (client, mut events, event_loop) =
        bitswarm_node::new_with_extension(config, preview::behaviour(ProtocolSupport::Full))?;
    tokio::spawn(event_loop.run());
    let shared = client.share(&path).await?;
    let files = Arc::new(HashMap::from([(shared.id, path)]));
    let answering = client.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let NodeEvent::Extension(preview::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = event
            else {
                continue;
            };
            // The file is read here, off the event loop; only the answer goes into it.
            let answer = match files.get(&request.file) {
                Some(path) => preview::answer_from_file(path, request.len).await,
                None => preview::Response::NotFound,
            };
            let sent = answering
                .with_extension(
                    move |rr: &mut preview::Behaviour, _: &mut NodeContext<'_>| {
                        let _ = rr.send_response(channel, answer);
                    },
                )
                .await;
            if sent.is_err() {
                break;
            }
        }
    });
    Ok((client, shared.id))
}

/// What a preview found.
struct Found {
    id: FileId,
    card: preview::Response,
    provider: PeerId,
    bytes: Vec<u8>,
    downloaded: Option<PathBuf>,
}

impl Found {
    fn print(&self) {
        match &self.card {
            preview::Response::Card {
                name,
                size,
                seeders,
            } => println!(
                "tracker says {} is {name:?}, {size} bytes, {seeders} seeding",
                self.id
            ),
            other => println!("tracker says {}: {other:?}", self.id),
        }
        println!(
            "preview from {}: {:?}",
            self.provider,
            String::from_utf8_lossy(&self.bytes)
        );
        if let Some(path) = &self.downloaded {
            println!("downloaded {}", path.display());
        }
    }
}

/// Looks `key` up, asks the tracker and then a provider for a preview, and downloads it into
/// `get` if given.
async fn preview_then_get(
    config: Config,
    key: LookupKey,
    get: Option<PathBuf>,
) -> anyhow::Result<Found> {
    let (client, mut events, event_loop) =
        bitswarm_node::new_with_extension(config, preview::behaviour(ProtocolSupport::Full))?;
    tokio::spawn(event_loop.run());
    let records = client.lookup(key).await?;
    let record = records.first().context("the tracker knows no such file")?;
    let request = preview::Request {
        file: record.id,
        len: PREVIEW_LEN,
    };
    let card = ask(&client, &mut events, None, request.clone()).await?;
    let mut last_error = None;
    for provider in &record.providers {
        let to = Some((provider.peer, provider.addrs.clone()));
        match ask(&client, &mut events, to, request.clone()).await {
            Ok(preview::Response::Bytes(bytes)) => {
                let downloaded = match get {
                    Some(dir) => Some(
                        client
                            .get(LookupKey::Id(record.id), dir)
                            .await?
                            .wait()
                            .await?
                            .path,
                    ),
                    None => None,
                };
                return Ok(Found {
                    id: record.id,
                    card,
                    provider: provider.peer,
                    bytes,
                    downloaded,
                });
            }
            Ok(other) => last_error = Some(anyhow::anyhow!("{}: {other:?}", provider.peer)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no provider listed")))
        .context("no provider sent a preview")
}

/// Sends `request` to `to` (a provider and its addresses), or to the tracker when `None`, and
/// waits (at most [`ASK_TIMEOUT`]) for its answer among the node's events.
async fn ask(
    client: &Client,
    events: &mut mpsc::Receiver<NodeEvent>,
    to: Option<(PeerId, Vec<Multiaddr>)>,
    request: preview::Request,
) -> anyhow::Result<preview::Response> {
    let sent = client
        .with_extension(
            move |rr: &mut preview::Behaviour, ctx: &mut NodeContext<'_>| match to {
                Some((peer, addrs)) => Some(rr.send_request_with_addresses(&peer, request, addrs)),
                None => ctx
                    .tracker()
                    .map(|tracker| rr.send_request(&tracker, request)),
            },
        )
        .await?;
    let id = sent.context("not connected to the tracker")?;
    let answer = async {
        while let Some(event) = events.recv().await {
            match event {
                NodeEvent::Extension(preview::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) if request_id == id => return Ok(response),
                NodeEvent::Extension(preview::Event::OutboundFailure {
                    request_id, error, ..
                }) if request_id == id => bail!("preview request failed: {error}"),
                _ => {}
            }
        }
        bail!("the node stopped")
    };
    tokio::time::timeout(ASK_TIMEOUT, answer)
        .await
        .context("no answer in time")?
}
