//! Transfer benchmark through the real node library, one process per peer so each side's CPU
//! time and peak memory are its own. Prints figures; it is not a test.
//!
//! ```text
//! cargo run --release --example bench                               # 1 seeder -> 1 leecher, 1 GiB
//! cargo run --release --example bench -- --seeders 1 --leechers 8
//! cargo run --release --example bench -- --seeders 4 --leechers 1
//! ```
//!
//! The parent runs the tracker and re-runs this binary as `seed` and `leech` children; each
//! child reports `/proc/self` CPU seconds and peak RSS when the parent asks (after every
//! leecher is done, so leechers keep serving each other until the end). A seeder's CPU figure
//! leaves out hashing its file before the transfer.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bitswarm_examples::{generate_file, start_tracker, usage};
use bitswarm_node::Config;
use bitswarm_protocols::{parse_addr, tracker::LookupKey, FileId};
use clap::{Parser, Subcommand};
use tokio::io::AsyncBufReadExt;

#[derive(Parser, Debug)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// File size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Seeders.
    #[arg(long, default_value_t = 1)]
    seeders: usize,
    /// Leechers.
    #[arg(long, default_value_t = 1)]
    leechers: usize,
    /// Piece requests in flight per provider.
    #[arg(long, default_value_t = bitswarm_node::DEFAULT_WINDOW)]
    window: usize,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Child: share FILE, print `ready`, report usage when asked.
    Seed { tracker: String, file: PathBuf },
    /// Child: get ID into OUT, print `done SECS`, report usage when asked.
    Leech {
        tracker: String,
        id: String,
        out: PathBuf,
        window: usize,
    },
}

const STEP: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Peers run like the `bitswarm` binary: one event loop on a single-threaded scheduler,
    // blocking work on the blocking pool.
    let rt = if args.role.is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    match args.role {
        Some(Role::Seed { tracker, file }) => rt.block_on(seed(&tracker, file)),
        Some(Role::Leech {
            tracker,
            id,
            out,
            window,
        }) => rt.block_on(leech(&tracker, &id, out, window)),
        None => rt.block_on(parent(&args)),
    }
}

fn node_config(tracker: &str, window: usize) -> anyhow::Result<Config> {
    Ok(Config {
        listen_addrs: vec![parse_addr("127.0.0.1:0")?],
        tracker: Some(parse_addr(tracker)?),
        window,
        ..Config::default()
    })
}

/// Waits for `report` on stdin, then prints `usage CPU_SECS PEAK_RSS_MIB UPLOADED`, with the
/// CPU seconds spent before `base_cpu` (hashing the shared file) left out.
async fn report_when_asked(client: &bitswarm_node::Client, base_cpu: f64) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line == "report" {
            let stats = client.local_stats().await?;
            let u = usage()?;
            println!(
                "usage {} {} {}",
                u.cpu_secs - base_cpu,
                u.peak_rss_mib,
                stats.uploaded
            );
            return Ok(());
        }
    }
    Ok(())
}

async fn seed(tracker: &str, file: PathBuf) -> anyhow::Result<()> {
    let (client, _events, event_loop) =
        bitswarm_node::new(node_config(tracker, bitswarm_node::DEFAULT_WINDOW)?)?;
    tokio::spawn(event_loop.run());
    let shared = client.share(file).await?;
    let base = usage()?.cpu_secs;
    println!("ready {}", shared.id);
    report_when_asked(&client, base).await
}

async fn leech(tracker: &str, id: &str, out: PathBuf, window: usize) -> anyhow::Result<()> {
    let (client, _events, event_loop) = bitswarm_node::new(node_config(tracker, window)?)?;
    tokio::spawn(event_loop.run());
    let id: FileId = id.parse()?;
    let done = client.get(LookupKey::Id(id), out).await?.wait().await?;
    println!("done {}", done.elapsed.as_secs_f64());
    report_when_asked(&client, 0.0).await
}

struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProc {
            child,
            stdin,
            lines,
        })
    }

    fn expect(&self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + STEP;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context(format!("waiting for {prefix}"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Asks for and parses `(cpu_secs, peak_rss_mib, uploaded_bytes)`.
    fn report(&mut self) -> anyhow::Result<(f64, f64, u64)> {
        writeln!(self.stdin, "report")?;
        let line = self.expect("usage ")?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 {
            bail!("bad usage line {line:?}");
        }
        Ok((f[0].parse()?, f[1].parse()?, f[2].parse()?))
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn parent(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(std::env::temp_dir())?;
    let file = dir.path().join("bench.bin");
    let size = args.size_mib << 20;
    generate_file(&file, size, 9)?;
    let gib = size as f64 / (1u64 << 30) as f64;

    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker_addr = start_tracker(cancel.clone()).await?.to_string();

    let mut seeders = Vec::new();
    let mut id = String::new();
    for _ in 0..args.seeders {
        let s = ChildProc::spawn(&[
            "seed".into(),
            tracker_addr.clone(),
            file.display().to_string(),
        ])?;
        id = s.expect("ready ")?;
        seeders.push(s);
    }
    println!(
        "bench: {} seeder(s) -> {} leecher(s), {} MiB, window {}, loopback, one process per peer",
        args.seeders, args.leechers, args.size_mib, args.window
    );
    let started = Instant::now();
    let mut leechers = Vec::new();
    for i in 0..args.leechers {
        let out = dir.path().join(format!("l{i}"));
        std::fs::create_dir_all(&out)?;
        leechers.push(ChildProc::spawn(&[
            "leech".into(),
            tracker_addr.clone(),
            id.clone(),
            out.display().to_string(),
            args.window.to_string(),
        ])?);
    }
    let mut times = Vec::new();
    for l in &leechers {
        times.push(l.expect("done ")?.parse::<f64>()?);
    }
    let to_last = started.elapsed().as_secs_f64();
    for i in 0..args.leechers {
        let got = std::fs::read(dir.path().join(format!("l{i}")).join("bench.bin"))?;
        anyhow::ensure!(
            FileId::of(&got).to_string() == id,
            "leecher {i} has different bytes"
        );
    }

    let mut uploaded_total = 0u64;
    let mut cpu_total = 0.0;
    let mut seeder_uploaded = 0u64;
    for (i, s) in seeders.iter_mut().enumerate() {
        let (cpu, rss, up) = s.report()?;
        cpu_total += cpu;
        uploaded_total += up;
        seeder_uploaded += up;
        println!("seeder  {i}: cpu {cpu:.2}s ({:.2} CPU-s/GiB uploaded), peak RSS {rss:.0} MiB, uploaded {} MiB", cpu / (up as f64 / (1u64 << 30) as f64).max(1e-9), up >> 20);
    }
    for (i, l) in leechers.iter_mut().enumerate() {
        let (cpu, rss, up) = l.report()?;
        cpu_total += cpu;
        uploaded_total += up;
        println!(
            "leecher {i}: {:.2}s, {:.0} MB/s, cpu {cpu:.2}s ({:.2} CPU-s/GiB), peak RSS {rss:.1} MiB, uploaded {} MiB",
            times[i],
            size as f64 / times[i] / 1e6,
            cpu / gib,
            up >> 20
        );
    }
    let delivered = size as f64 * args.leechers as f64;
    println!("time to last leecher: {to_last:.2}s");
    println!("aggregate: {:.0} MB/s delivered", delivered / to_last / 1e6);
    println!(
        "CPU, all peers: {:.2} CPU-s per GiB delivered",
        cpu_total / (delivered / (1u64 << 30) as f64)
    );
    if uploaded_total > 0 {
        println!(
            "seeders' share of uploaded bytes: {:.0}%",
            100.0 * seeder_uploaded as f64 / uploaded_total as f64
        );
    }
    cancel.cancel();
    Ok(())
}
