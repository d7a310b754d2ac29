//! Chat with the people who share or get the same file: a room per file, a gossipsub topic
//! (`bitswarm-chat/<file id>`) running inside the bitswarm node as its extension behaviour,
//! over the node's own connections (direct, or relayed and hole-punched behind NAT).
//!
//! ```text
//! cargo run --example chat -- demo
//! cargo run --example chat -- share FILE 127.0.0.1:7000 0.0.0.0:0 --nick alice
//! cargo run --example chat -- get NAME_OR_ID 127.0.0.1:7000 0.0.0.0:0 --nick bob -o DIR
//! ```
//!
//! Each line typed is sent to the room; each message received is printed as `<nick> text`.
//! `--say TEXT` sends TEXT once someone is in the room, `--exit-after N` leaves after N
//! messages. Ctrl-D (end of input) or Ctrl-C leaves the room.
//!
//! How it is put together: [`room::behaviour`] builds the gossipsub behaviour;
//! `bitswarm_node::new_with_extension` runs it inside the node; [`room::Room::join`]
//! subscribes and keeps the room connected through `Client::with_extension`, which runs a
//! closure on the behaviour inside the node's event loop, with the node's facts and a dialer
//! at hand (`NodeContext`).

mod message;
mod nudge;
mod room;

use std::{
    io::{BufRead, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use bitswarm_examples::{generate_file, start_tracker};
use bitswarm_node::{Client, Config, Downloaded, GetError};
use bitswarm_protocols::{parse_addr, tracker::LookupKey, FileId, FileName};
use clap::{Args, Parser, Subcommand};
use libp2p::{identity::Keypair, Multiaddr};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::room::{ChatLine, Heard, NodeEvent, Room, Said};

/// The whole demo must finish within this.
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the demo's peers wait for each other.
const DEMO_WAIT: Duration = Duration::from_secs(30);
/// After the last message, time for what we sent to leave before the node stops.
const LINGER: Duration = Duration::from_secs(1);
/// Lines typed and not sent yet.
const INPUT_QUEUE: usize = 16;
/// Longest input line read (a message's text plus its line ending).
const MAX_LINE: usize = message::MAX_TEXT + 2;

#[derive(Parser, Debug)]
#[command(about = "Chat with the peers that share or get the same file")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A tracker and two peers in this process on loopback: one shares a file, the other gets
    /// it, and they say hello to each other in the file's room.
    Demo,
    /// Share a file and chat in its room.
    Share {
        /// The file to share.
        file: PathBuf,
        /// The tracker, `ip:port` (or a multiaddr).
        tracker: String,
        /// Where to listen, `ip:port` (port 0: any free port).
        listen: String,
        #[command(flatten)]
        chat: ChatArgs,
    },
    /// Get a file and chat in its room (while downloading, and after).
    Get {
        /// The file: a name, or its 64-hex-digit content id.
        target: String,
        /// The tracker, `ip:port` (or a multiaddr).
        tracker: String,
        /// Where to listen, `ip:port` (port 0: any free port).
        listen: String,
        /// Directory to download into.
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        #[command(flatten)]
        chat: ChatArgs,
    },
}

#[derive(Args, Debug)]
struct ChatArgs {
    /// Your name in the room (up to 32 bytes, no spaces, '<' or '>').
    #[arg(long)]
    nick: String,
    /// Say this once someone is in the room.
    #[arg(long, value_name = "TEXT")]
    say: Option<String>,
    /// Leave after receiving this many messages (once --say is sent and a download is done).
    #[arg(long, value_name = "N")]
    exit_after: Option<usize>,
    /// Seconds to wait for others before giving up: for someone to join the room (--say),
    /// and, getting, for a provider to send data.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    wait: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cancel = CancellationToken::new();
    let result = match Cli::parse().command {
        Command::Demo => tokio::time::timeout(DEMO_TIMEOUT, demo(&cancel))
            .await
            .unwrap_or_else(|_| bail!("the demo did not finish within {DEMO_TIMEOUT:?}")),
        Command::Share {
            file,
            tracker,
            listen,
            chat,
        } => share(file, &tracker, &listen, chat, &cancel).await,
        Command::Get {
            target,
            tracker,
            listen,
            output,
            chat,
        } => get(&target, &tracker, &listen, output, chat, &cancel).await,
    };
    cancel.cancel();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a node whose extension is the chat's behaviour, gossipsub signing with the node's
/// own key.
fn start_node(
    tracker: Multiaddr,
    listen: Multiaddr,
    provider_wait: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<(Client, mpsc::Receiver<NodeEvent>)> {
    let keypair = Keypair::generate_ed25519();
    let chat = room::behaviour(&keypair)?;
    let config = Config {
        keypair,
        listen_addrs: vec![listen],
        tracker: Some(tracker),
        provider_wait,
        cancel: cancel.child_token(),
        ..Config::default()
    };
    let (client, events, event_loop) = bitswarm_node::new_with_extension(config, chat)?;
    tokio::spawn(event_loop.run());
    Ok((client, events))
}

fn addrs(tracker: &str, listen: &str) -> anyhow::Result<(Multiaddr, Multiaddr)> {
    Ok((
        parse_addr(tracker).context("tracker address")?,
        parse_addr(listen).context("listen address")?,
    ))
}

fn parse_key(target: &str) -> anyhow::Result<LookupKey> {
    Ok(match target.parse::<FileId>() {
        Ok(id) => LookupKey::Id(id),
        Err(_) => LookupKey::Name(FileName::new(target)?),
    })
}

/// Prints one line on stdout, flushed.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn share(
    file: PathBuf,
    tracker: &str,
    listen: &str,
    args: ChatArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    message::check_nick(&args.nick).context("--nick")?;
    let (tracker, listen) = addrs(tracker, listen)?;
    let (client, events) = start_node(tracker, listen, Duration::from_secs(args.wait), cancel)?;
    let shared = client
        .share(&file)
        .await
        .with_context(|| format!("cannot share {}", file.display()))?;
    print_line(&format!("sharing {} {}", shared.id, shared.name));
    let room = Room::join(
        client.clone(),
        events,
        shared.id,
        &args.nick,
        cancel.child_token(),
    )
    .await?;
    eprintln!("* in room {} as {}", room.speaker.topic(), args.nick);
    chat(client, room, args, None).await
}

async fn get(
    target: &str,
    tracker: &str,
    listen: &str,
    output: PathBuf,
    args: ChatArgs,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    message::check_nick(&args.nick).context("--nick")?;
    let key = parse_key(target)?;
    let (tracker, listen) = addrs(tracker, listen)?;
    let (client, events) = start_node(tracker, listen, Duration::from_secs(args.wait), cancel)?;
    let (file, download) = start_get(&client, key, output).await?;
    let room = Room::join(
        client.clone(),
        events,
        file,
        &args.nick,
        cancel.child_token(),
    )
    .await?;
    eprintln!("* in room {} as {}", room.speaker.topic(), args.nick);
    chat(client, room, args, Some(download)).await
}

type Finished = JoinHandle<Result<Downloaded, GetError>>;

/// Starts getting `key`; returns the file's id as soon as the tracker has named it (the room
/// is joined while the download runs) and the task that waits for the download.
async fn start_get(
    client: &Client,
    key: LookupKey,
    out: PathBuf,
) -> anyhow::Result<(FileId, Finished)> {
    let download = client.get(key, out).await?;
    let mut progress = download.progress();
    let mut finished = tokio::spawn(download.wait());
    let named = tokio::select! {
        named = progress.wait_for(|p| p.id.is_some()) => named.ok().and_then(|p| p.id),
        done = &mut finished => {
            let done = done.context("the download task failed")??;
            return Ok((done.id, tokio::spawn(async move { Ok(done) })));
        }
    };
    match named {
        Some(id) => Ok((id, finished)),
        None => {
            let done = finished.await.context("the download task failed")??;
            Ok((done.id, tokio::spawn(async move { Ok(done) })))
        }
    }
}

/// The interactive part: stdin to the room, the room to stdout, until `--exit-after` or end
/// of input (then the download, if any, is finished first) or Ctrl-C; a failed download ends
/// it too.
async fn chat(
    client: Client,
    room: Room,
    args: ChatArgs,
    mut download: Option<Finished>,
) -> anyhow::Result<()> {
    let input = read_stdin();
    let wait = Duration::from_secs(args.wait);
    let conversation = converse(
        room,
        args.say,
        Some(input),
        args.exit_after,
        wait,
        |heard| match heard {
            Heard::Message(line) => print_line(&line.message.to_string()),
            Heard::Joined(peer) => eprintln!("* {peer} joined the room"),
            Heard::Left(peer) => eprintln!("* {peer} left the room"),
        },
    );
    tokio::pin!(conversation);
    loop {
        tokio::select! {
            done = &mut conversation => {
                done?;
                break;
            }
            done = finished(&mut download), if download.is_some() => {
                download = None;
                let done = done.context("the download task failed")?.context("download failed")?;
                print_line(&format!("downloaded {} {}", done.id, done.path.display()));
            }
            _ = tokio::signal::ctrl_c() => {
                let _ = tokio::time::timeout(LINGER, client.shutdown()).await;
                return Ok(());
            }
        }
    }
    if let Some(task) = download {
        eprintln!("* leaving once the download is done");
        tokio::select! {
            done = task => {
                let done = done.context("the download task failed")?.context("download failed")?;
                print_line(&format!("downloaded {} {}", done.id, done.path.display()));
            }
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    // What we said last may still be on its way out.
    tokio::time::sleep(LINGER).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.shutdown()).await;
    Ok(())
}

async fn finished(
    download: &mut Option<Finished>,
) -> Result<Result<Downloaded, GetError>, tokio::task::JoinError> {
    match download {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(input: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Talks in `room`: says `say` once someone is there, sends each line of `input`, hands what
/// it hears to `on_heard`. Ends once `say` is said and either `exit_after` messages arrived or
/// (without `exit_after`) the input ended. Returns the number of messages received.
async fn converse(
    mut room: Room,
    say: Option<String>,
    mut input: Option<mpsc::Receiver<String>>,
    exit_after: Option<usize>,
    wait: Duration,
    mut on_heard: impl FnMut(&Heard),
) -> anyhow::Result<usize> {
    let speaker = room.speaker.clone();
    let mut said = say.is_none();
    let saying = async {
        match &say {
            Some(text) => speaker.say_when_someone_is_here(text, wait).await,
            None => Ok(()),
        }
    };
    tokio::pin!(saying);
    let mut received = 0;
    loop {
        if said {
            match exit_after {
                Some(n) if received >= n => break,
                None if input.is_none() => break,
                _ => {}
            }
        }
        tokio::select! {
            done = &mut saying, if !said => {
                done?;
                said = true;
            }
            heard = room.heard.recv() => {
                let Some(heard) = heard else { bail!("the node stopped") };
                on_heard(&heard);
                if matches!(heard, Heard::Message(_)) {
                    received += 1;
                }
            }
            text = recv_opt(&mut input) => match text {
                Some(text) => match room.speaker.say(&text).await {
                    Ok(Said::Sent) => {}
                    Ok(Said::Nobody) => eprintln!("* nobody is in the room yet; not sent"),
                    Err(e) => eprintln!("* not sent: {e:#}"),
                },
                None => input = None,
            },
        }
    }
    Ok(received)
}

/// Reads stdin on a thread of its own (a blocking read must not hold up the runtime, nor
/// its shutdown) into a bounded channel, one line at a time, each at most [`MAX_LINE`] bytes.
fn read_stdin() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match read_line_bounded(&mut stdin, &mut buf, MAX_LINE) {
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    eprintln!(
                        "* line too long (over {} bytes); not sent",
                        message::MAX_TEXT
                    );
                    continue;
                }
                Ok(None) | Err(_) => break,
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            if tx.blocking_send(line.to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads one line into `buf`: `None` at the end of input, `Some(false)` for a line longer than
/// `max` (dropped, read up to its end), `Some(true)` otherwise.
fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = input.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.ends_with(b"\n") || n <= max {
        return Ok(Some(true));
    }
    let mut rest = Vec::new();
    loop {
        rest.clear();
        let m = input.by_ref().take(4096).read_until(b'\n', &mut rest)?;
        if m == 0 || rest.ends_with(b"\n") {
            return Ok(Some(false));
        }
    }
}

/// The demo: a tracker, alice sharing a generated file, bob getting it; each says one thing
/// in the file's room once the other is there and waits to hear the other.
async fn demo(cancel: &CancellationToken) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tracker = start_tracker(cancel.child_token()).await?;
    println!("tracker {tracker}");
    let loopback = parse_addr("127.0.0.1:0")?;

    let path = dir.path().join("chat-demo.bin");
    generate_file(&path, 256 * 1024, 42)?;
    let (alice, alice_events) = start_node(tracker.clone(), loopback.clone(), DEMO_WAIT, cancel)?;
    let shared = alice.share(&path).await?;
    println!(
        "alice ({}) shares {} ({} bytes), id {}",
        alice.peer_id(),
        shared.name,
        shared.size,
        shared.id
    );
    let alice_room = Room::join(
        alice.clone(),
        alice_events,
        shared.id,
        "alice",
        cancel.child_token(),
    )
    .await?;
    println!("alice is in room {}", alice_room.speaker.topic());

    let (bob, bob_events) = start_node(tracker, loopback, DEMO_WAIT, cancel)?;
    let out = dir.path().join("bob");
    std::fs::create_dir_all(&out)?;
    let (file, download) = start_get(&bob, LookupKey::Name(shared.name.clone()), out).await?;
    if file != shared.id {
        bail!("bob is getting {file}, not the file alice shares");
    }
    let bob_room = Room::join(bob.clone(), bob_events, file, "bob", cancel.child_token()).await?;
    println!(
        "bob ({}) is in room {} (downloading)",
        bob.peer_id(),
        bob_room.speaker.topic()
    );

    let (hello, reply) = ("hello from alice", "hi alice, bob here");
    let wait = DEMO_WAIT;
    let (mut alice_heard, mut bob_heard) = (Vec::new(), Vec::new());
    let (_, _, done) = tokio::try_join!(
        converse(
            alice_room,
            Some(hello.into()),
            None,
            Some(1),
            wait,
            note("alice", &mut alice_heard)
        ),
        converse(
            bob_room,
            Some(reply.into()),
            None,
            Some(1),
            wait,
            note("bob", &mut bob_heard)
        ),
        async { Ok(download.await.context("the download task failed")??) },
    )?;
    check_heard("alice", &alice_heard, bob.peer_id(), reply)?;
    check_heard("bob", &bob_heard, alice.peer_id(), hello)?;
    check_download(&done, &shared.id)?;
    println!(
        "bob downloaded {} and checked it",
        done.path
            .file_name()
            .map(Path::new)
            .unwrap_or(&done.path)
            .display()
    );
    for (who, heard) in [("alice", &alice_heard), ("bob", &bob_heard)] {
        for line in heard {
            println!("{who} heard {} from {}", line.message, line.from);
        }
    }
    println!("chat demo ok: one message each way, each signed by the peer that sent it");
    tokio::time::sleep(LINGER).await;
    let _ = tokio::join!(alice.shutdown(), bob.shutdown());
    Ok(())
}

/// What the demo does with what `who` hears: messages kept in `into`, the rest printed.
fn note<'a>(who: &'static str, into: &'a mut Vec<ChatLine>) -> impl FnMut(&Heard) + 'a {
    move |heard| match heard {
        Heard::Message(line) => into.push(line.clone()),
        Heard::Joined(peer) => println!("{who} sees {peer} join the room"),
        Heard::Left(peer) => println!("{who} sees {peer} leave the room"),
    }
}

fn check_heard(
    who: &str,
    heard: &[ChatLine],
    from: libp2p::PeerId,
    text: &str,
) -> anyhow::Result<()> {
    match heard {
        [line] if line.from == from && line.message.text == text => Ok(()),
        _ => bail!("{who} heard {heard:?}, expected {text:?} from {from}"),
    }
}

fn check_download(done: &Downloaded, id: &FileId) -> anyhow::Result<()> {
    let bytes = std::fs::read(&done.path)?;
    if FileId::of(&bytes) != *id {
        bail!("the downloaded file differs from the shared one");
    }
    Ok(())
}
