//! Test harness for bitswarm: in-process networks (a tracker and N nodes on loopback through
//! the real `bitswarm_node::new`) and helpers to run the real binaries.
//!
//! Conditions are polled with [`wait_until`], never waited for with fixed sleeps, and every
//! wait has a deadline.

use std::{
    future::Future,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bitswarm_node::{Client, Config, Event};
use bitswarm_protocols::parse_addr;
use libp2p::Multiaddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod hostile;
pub mod netlab;

/// Every in-process test runs under this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn within<F: Future<Output = anyhow::Result<()>>>(body: F) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, body).await?
}

/// Installs a test subscriber once (`RUST_LOG` selects what is shown).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `cond` every 50 ms until it yields `Some`, or fails after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tracker running in this process.
pub struct TestTracker {
    /// Its dialable address, with `/p2p/<id>`.
    pub addr: Multiaddr,
    /// Its live counters.
    pub stats: tokio::sync::watch::Receiver<bitswarm_protocols::tracker::Stats>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl TestTracker {
    /// Starts a tracker on 127.0.0.1 with a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let config = bitswarm_tracker::Config {
            listen_addrs: vec![parse_addr("127.0.0.1:0")?],
            root_span: tracing::info_span!("tracker"),
            ..Default::default()
        };
        let tracker = bitswarm_tracker::Tracker::bind(config).await?;
        let addr = tracker
            .listen_addrs()
            .into_iter()
            .next()
            .context("tracker has no address")?;
        let stats = tracker.stats_watch();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(tracker.run(cancel.clone()));
        Ok(TestTracker {
            addr,
            stats,
            cancel,
            task,
        })
    }

    /// Waits until the tracker's live peer count is `n`.
    pub async fn wait_peers(&self, n: u64) -> anyhow::Result<()> {
        let stats = self.stats.clone();
        wait_until(
            &format!("tracker peer count {n}"),
            Duration::from_secs(30),
            || {
                let s = *stats.borrow();
                async move { (s.peers == n).then_some(()) }
            },
        )
        .await
    }

    /// Stops the tracker and waits for its loop to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("tracker did not stop")??;
        Ok(())
    }
}

/// A node running in this process.
pub struct TestNode {
    /// Its handle.
    pub client: Client,
    /// Its events.
    pub events: tokio::sync::mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl TestNode {
    /// Starts a node on 127.0.0.1 with a free port, using `tracker`.
    pub async fn start(name: &str, tracker: &Multiaddr) -> anyhow::Result<Self> {
        Self::start_with(
            name,
            Config {
                tracker: Some(tracker.clone()),
                ..Config::default()
            },
        )
        .await
    }

    /// Starts a node from `config`, listening on 127.0.0.1 with a free port.
    pub async fn start_with(name: &str, config: Config) -> anyhow::Result<Self> {
        let config = Config {
            listen_addrs: vec![parse_addr("127.0.0.1:0")?],
            root_span: tracing::info_span!("node", name),
            ..config
        };
        let (client, events, event_loop) = bitswarm_node::new(config)?;
        let task = tokio::spawn(event_loop.run());
        client.listen_addrs().await?;
        Ok(TestNode {
            client,
            events,
            task,
        })
    }

    /// Whether the node has reported dropping `peer` as a provider (drains queued events).
    pub fn saw_provider_dropped(&mut self, peer: libp2p::PeerId) -> bool {
        let mut dropped = false;
        while let Ok(ev) = self.events.try_recv() {
            dropped |= matches!(ev, Event::ProviderDropped { peer: p, .. } if p == peer);
        }
        dropped
    }

    /// Shuts the node down cleanly and checks that its event loop ends.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.client.shutdown().await?;
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("node did not stop")??;
        Ok(())
    }

    /// Ends the node abruptly, as a crash would: its task is aborted, its connections drop.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Writes `len` pseudo-random bytes (deterministic for `seed`) to `dir/name`.
pub fn make_file(dir: &Path, name: &str, len: usize, seed: u64) -> anyhow::Result<PathBuf> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// The directory holding this profile's binaries (`target/<profile>`), found from the test
/// executable's own path (`target/<profile>/deps/<test>`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?;
    Ok(dir.to_owned())
}

/// A path to one of the workspace's binaries; run `cargo build --bins` first.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} not built: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// A path to one of the workspace's examples (`cargo test --workspace` builds them, as does
/// `cargo build --workspace --examples`).
pub fn example_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join("examples").join(name);
    if !path.exists() {
        bail!(
            "{} not built: run `cargo build --workspace --examples` first",
            path.display()
        );
    }
    Ok(path)
}

/// Most stdout lines a [`Proc`] keeps.
pub const MAX_PROC_LINES: usize = 10_000;

/// A child process that is killed when dropped, with its stdout lines delivered to a channel
/// and the ones read kept (at most [`MAX_PROC_LINES`]).
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Spawns `cmd` with stdout piped (stderr inherited) in its own environment `home`.
    pub fn spawn(mut cmd: Command, home: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(home)?;
        cmd.env("HOME", home)
            .env("XDG_DATA_HOME", home.join("data"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn {cmd:?}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads the next stdout line within `left`, keeping it.
    fn next_line(&mut self, left: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(left).ok()?;
        if self.seen.len() < MAX_PROC_LINES {
            self.seen.push(line.clone());
        }
        Some(line)
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if line.starts_with(prefix) => return Ok(line),
                Some(_) => {}
                None => bail!(
                    "no line starting with {prefix:?} within {timeout:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits for the process to exit (killing it at the deadline) and returns its status and
    /// every stdout line it printed (those read by [`Proc::wait_line`] too).
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                self.drain();
                bail!(
                    "still running after {timeout:?}; it printed {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.drain();
        Ok((status, std::mem::take(&mut self.seen)))
    }

    /// Collects the lines left (the reader ends when the process's stdout closes).
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.seen.len() < MAX_PROC_LINES {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next_line(left).is_none() {
                break;
            }
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (by its own id) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to completion within `timeout`, killing it if it overruns.
pub fn run_with_timeout(
    mut cmd: Command,
    home: &Path,
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    cmd.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot spawn {cmd:?}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} ran past {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One step of a multi-process test (a process starting, a small transfer) may take this long.
pub const STEP: Duration = Duration::from_secs(30);

/// Starts the real `bitswarm-tracker 127.0.0.1:0` and returns it with its `ip:port`.
pub fn tracker_bin(home: &Path) -> anyhow::Result<(Proc, String)> {
    let (proc, plain, _) = tracker_bin_full(home)?;
    Ok((proc, plain))
}

/// [`tracker_bin`], also returning the full address it printed (with `/p2p/<id>`).
/// It logs warnings only; see [`tracker_bin_logged`] for its default log.
pub fn tracker_bin_full(home: &Path) -> anyhow::Result<(Proc, String, Multiaddr)> {
    let mut cmd = Command::new(bin("bitswarm-tracker")?);
    cmd.args(["127.0.0.1:0", "--ephemeral"])
        .env("RUST_LOG", "warn");
    tracker_proc(cmd, home)
}

/// [`tracker_bin_full`] with its default log (every request at info, plus `extra` arguments)
/// written to `log`.
pub fn tracker_bin_logged(
    home: &Path,
    log: &Path,
    extra: &[&str],
) -> anyhow::Result<(Proc, String, Multiaddr)> {
    let mut cmd = Command::new(bin("bitswarm-tracker")?);
    cmd.args(["127.0.0.1:0", "--ephemeral"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(log)?);
    tracker_proc(cmd, home)
}

fn tracker_proc(cmd: Command, home: &Path) -> anyhow::Result<(Proc, String, Multiaddr)> {
    let mut proc = Proc::spawn(cmd, home)?;
    let line = proc.wait_line("listening on /ip4/127.0.0.1/tcp/", STEP)?;
    let full: Multiaddr = line.trim_start_matches("listening on ").trim().parse()?;
    let port = line
        .trim_start_matches("listening on /ip4/127.0.0.1/tcp/")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((proc, format!("127.0.0.1:{port}"), full))
}

/// Starts the real `bitswarm share PATH TRACKER 127.0.0.1:0` and returns it with the first
/// line it printed (`sharing <id> <name> ...`).
pub fn share_bin(path: &Path, tracker: &str, home: &Path) -> anyhow::Result<(Proc, String)> {
    let mut share = Command::new(bin("bitswarm")?);
    share
        .arg("share")
        .arg(path)
        .args([tracker, "127.0.0.1:0", "--ephemeral"]);
    let mut proc = Proc::spawn(share, home)?;
    let line = proc.wait_line("sharing ", STEP)?;
    Ok((proc, line))
}

/// `bitswarm get TARGET TRACKER 127.0.0.1:0 --ephemeral -o OUT` followed by `extra`.
pub fn get_cmd(target: &str, tracker: &str, out: &Path, extra: &[&str]) -> anyhow::Result<Command> {
    let mut get = Command::new(bin("bitswarm")?);
    get.args(["get", target, tracker, "127.0.0.1:0", "--ephemeral", "-o"])
        .arg(out)
        .args(extra);
    Ok(get)
}

/// A tmpfs of a fixed size mounted for one test (needs root), unmounted when dropped.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on the existing directory `path`. Where that is not
    /// possible (not root) the test is skipped with a message, or fails when
    /// `BITSWARM_NETLAB_REQUIRED=1` (CI runs as root).
    pub fn mount_or_skip(path: &Path, size: u64) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::piped())
            .output();
        let reason = match status {
            Ok(out) if out.status.success() => {
                return Some(Tmpfs {
                    path: path.to_owned(),
                })
            }
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        if std::env::var("BITSWARM_NETLAB_REQUIRED").as_deref() == Ok("1") {
            panic!("cannot mount a tmpfs (BITSWARM_NETLAB_REQUIRED=1): {reason}");
        }
        eprintln!("skipping tmpfs test: cannot mount a tmpfs: {reason}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
