//! The `chat` example: a gossipsub room per file, run inside bitswarm nodes as their extension,
//! over the nodes' own connections. Run as the example's binary: its in-process demo, two
//! processes against the real tracker on loopback, and the same across two NATs in a netlab
//! (skipped without root and nftables unless `BITSWARM_NETLAB_REQUIRED=1`).
//!
//! Each chat process is told to `--say` a line once someone is in the room and to leave after
//! hearing one message (`--exit-after 1`); a message that never arrives makes the process run
//! into its own `--wait` or the test's deadline, and the test fails.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::Context;
use bitswarm_protocols::FileId;
use bitswarm_tests::{
    bin, example_bin, make_file,
    netlab::{lab_or_skip, Host, NatMode, PUB1_IP},
    run_with_timeout, tracker_bin, Proc,
};

const ALICE_SAYS: &str = "hello from alice";
const BOB_SAYS: &str = "hi alice, bob here";
/// The demo's own deadline is 60 s.
const DEMO_RUN: Duration = Duration::from_secs(90);
/// One chat process on loopback, from start to exit.
const LOOPBACK_RUN: Duration = Duration::from_secs(60);
/// What a chat process on loopback waits for others (`--wait`), well within its run.
const LOOPBACK_WAIT: Duration = Duration::from_secs(30);
/// One chat process in the NAT lab (reservation, relay, hole punch), from start to exit.
const NAT_RUN: Duration = Duration::from_secs(150);
/// What a chat process in the NAT lab waits for others (`--wait`).
const NAT_WAIT: Duration = Duration::from_secs(90);

/// The chat example's binary (`cargo build --workspace --examples` builds it).
fn chat_bin() -> anyhow::Result<PathBuf> {
    example_bin("chat")
}

/// Starts a chat process named `name` (for errors) in its own `home`.
fn spawn_chat(name: &str, cmd: Command, home: &Path) -> anyhow::Result<Proc> {
    Proc::spawn(cmd, home).with_context(|| name.to_owned())
}

/// Waits for `proc` to exit within `timeout`: its status and output, or an error naming it.
fn finish(name: &str, proc: Proc, timeout: Duration) -> anyhow::Result<(ExitStatus, Vec<String>)> {
    proc.finish(timeout).with_context(|| name.to_owned())
}

/// The id in `sharing <id> <name>`.
fn shared_id(line: &str) -> anyhow::Result<FileId> {
    let id = line.split_whitespace().nth(1).context("no id")?;
    Ok(id.parse()?)
}

/// Both ended well and each printed the other's line (and not its own).
fn assert_talked(
    (alice_status, alice_out): &(ExitStatus, Vec<String>),
    (bob_status, bob_out): &(ExitStatus, Vec<String>),
) {
    eprintln!("alice printed {alice_out:?}\nbob printed {bob_out:?}");
    assert!(alice_status.success(), "alice failed: {alice_status}");
    assert!(bob_status.success(), "bob failed: {bob_status}");
    let has = |out: &[String], line: &str| out.iter().any(|l| l == line);
    assert!(
        has(alice_out, &format!("<bob> {BOB_SAYS}")),
        "alice heard bob"
    );
    assert!(
        has(bob_out, &format!("<alice> {ALICE_SAYS}")),
        "bob heard alice"
    );
    assert!(
        !has(alice_out, &format!("<alice> {ALICE_SAYS}"))
            && !has(bob_out, &format!("<bob> {BOB_SAYS}")),
        "nobody is shown their own message as received"
    );
}

/// The getter printed `downloaded <id> <path>` and the file there is the shared one.
fn assert_downloaded(bob_out: &[String], id: &FileId, original: &Path) -> anyhow::Result<()> {
    let prefix = format!("downloaded {id} ");
    let line = bob_out
        .iter()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("bob did not report the download: {bob_out:?}"))?;
    let path = PathBuf::from(line.trim_start_matches(&prefix));
    assert_eq!(
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        std::fs::read(original)?,
        "the downloaded bytes differ"
    );
    Ok(())
}

/// `chat share FILE TRACKER LISTEN --nick alice --say ... --exit-after 1`.
fn share_cmd(
    program: Command,
    file: &Path,
    tracker: &str,
    listen: &str,
    wait: Duration,
) -> Command {
    let mut cmd = program;
    cmd.arg("share")
        .arg(file)
        .args([tracker, listen, "--nick", "alice", "--say", ALICE_SAYS])
        .args(["--exit-after", "1", "--wait", &wait.as_secs().to_string()]);
    cmd
}

/// `chat get NAME TRACKER LISTEN --nick bob -o OUT --say ... --exit-after 1`.
fn get_cmd(
    program: Command,
    name: &str,
    tracker: &str,
    listen: &str,
    out: &Path,
    wait: Duration,
) -> Command {
    let mut cmd = program;
    cmd.args(["get", name, tracker, listen, "--nick", "bob", "-o"])
        .arg(out)
        .args(["--say", BOB_SAYS, "--exit-after", "1"])
        .args(["--wait", &wait.as_secs().to_string()]);
    cmd
}

#[test]
fn chat_demo_exchanges_a_signed_message_each_way() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(chat_bin()?);
    cmd.arg("demo");
    let started = Instant::now();
    let out = run_with_timeout(cmd, dir.path(), DEMO_RUN)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{stdout}{}\n(demo took {:.1?})",
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    assert!(out.status.success(), "the demo failed: {}", out.status);
    // Each line names the peer whose signature gossipsub checked: alice hears bob's peer id.
    let peer_of = |who: &str| -> Option<String> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{who} (")))
            .and_then(|rest| rest.split(')').next())
            .map(str::to_owned)
    };
    let (alice, bob) = (
        peer_of("alice").context("alice's peer id")?,
        peer_of("bob").context("bob's peer id")?,
    );
    assert_ne!(alice, bob);
    assert!(
        stdout.contains(&format!("alice heard <bob> {BOB_SAYS} from {bob}")),
        "alice heard bob"
    );
    assert!(
        stdout.contains(&format!("bob heard <alice> {ALICE_SAYS} from {alice}")),
        "bob heard alice"
    );
    assert!(stdout.contains("bob downloaded chat-demo.bin and checked it"));
    assert!(stdout.contains("chat demo ok"));
    Ok(())
}

#[test]
fn chat_share_and_get_talk_through_a_real_tracker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker) = tracker_bin(&home.join("t"))?;
    let file = make_file(home, "room.bin", 300_000, 21)?;
    let chat = chat_bin()?;
    let started = Instant::now();

    let cmd = share_cmd(
        Command::new(&chat),
        &file,
        &tracker,
        "127.0.0.1:0",
        LOOPBACK_WAIT,
    );
    let mut alice = spawn_chat("alice", cmd, &home.join("a"))?;
    let id = shared_id(&alice.wait_line("sharing ", LOOPBACK_RUN).context("alice")?)?;
    assert_eq!(id, FileId::of(&std::fs::read(&file)?));

    let out = home.join("b").join("out");
    std::fs::create_dir_all(&out)?;
    let cmd = get_cmd(
        Command::new(&chat),
        "room.bin",
        &tracker,
        "127.0.0.1:0",
        &out,
        LOOPBACK_WAIT,
    );
    let bob = spawn_chat("bob", cmd, &home.join("b"))?;
    let bob = finish("bob", bob, LOOPBACK_RUN)?;
    let alice = finish("alice", alice, LOOPBACK_RUN)?;
    eprintln!("both done in {:.1?}", started.elapsed());
    assert_talked(&alice, &bob);
    assert_downloaded(&bob.1, &id, &file)
}

/// Alice behind cone NAT A, bob behind cone NAT B, the tracker (and its relay) public: bob
/// finds alice through the tracker, reaches her through the relay and a punched hole (the
/// node does that by itself for the download), and the room runs over that connection.
#[test]
fn chat_across_two_nats_through_the_relay_and_a_punched_hole() -> anyhow::Result<()> {
    let Some(lab) = lab_or_skip("bsw-chat-", NatMode::Cone, NatMode::Cone) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let chat = chat_bin()?;
    let tracker = format!("{PUB1_IP}:7000");

    let mut cmd = lab.command(Host::Pub1, bin("bitswarm-tracker")?);
    cmd.args([tracker.as_str(), "--autonat-private-ips", "--ephemeral"]);
    let mut tracker_proc = Proc::spawn(cmd, &home.join("t"))?;
    tracker_proc.wait_line("listening on ", LOOPBACK_RUN)?;

    let file = make_file(home, "nat-room.bin", 100_000, 22)?;
    let started = Instant::now();
    let cmd = share_cmd(
        lab.command(Host::A1, &chat),
        &file,
        &tracker,
        "0.0.0.0:0",
        NAT_WAIT,
    );
    let mut alice = spawn_chat("alice", cmd, &home.join("a"))?;
    let id = shared_id(&alice.wait_line("sharing ", NAT_RUN).context("alice")?)?;

    let out = home.join("b").join("out");
    std::fs::create_dir_all(&out)?;
    let cmd = get_cmd(
        lab.command(Host::B1, &chat),
        "nat-room.bin",
        &tracker,
        "0.0.0.0:0",
        &out,
        NAT_WAIT,
    );
    let bob = spawn_chat("bob", cmd, &home.join("b"))?;
    let bob = finish("bob", bob, NAT_RUN)?;
    let alice = finish("alice", alice, NAT_RUN)?;
    eprintln!("both done in {:.1?}", started.elapsed());
    assert_talked(&alice, &bob);
    assert_downloaded(&bob.1, &id, &file)?;
    drop(tracker_proc);
    drop(lab);
    Ok(())
}
