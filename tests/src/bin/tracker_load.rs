//! Tracker load benchmark: the real tracker binary and `--peers` simulated peers from this one
//! process, each a real libp2p identity (Noise and yamux over its own TCP connection) from an
//! address of its own in 127.0.0.0/8, announcing, re-announcing, looking up and searching;
//! then the same load while a hostile share of fake peers floods the tracker. Prints figures;
//! it is not a test.
//!
//! ```text
//! cargo build --release --bins && ./target/release/tracker_load --peers 10000 --secs 20
//! ```
//!
//! Reports registrations held; requests per second; p50/p99 latency; the tracker's resident
//! memory per connection (libp2p's cost: Noise, yamux, the handlers) and per registration on
//! top of it; and the tracker's CPU seconds per 10,000 requests (from `/proc`).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bitswarm_protocols::{
    tracker::{Announce, AnnouncedFile, LookupKey, Request, Response},
    ErrorCode, FileId, FileName,
};
use bitswarm_tests::hostile::{self, RawHandle, RawPeer};
use clap::Parser;
use futures::{stream, StreamExt};
use libp2p::{identity::Keypair, Multiaddr};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Parser, Debug)]
struct Args {
    /// Honest simulated peers.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Seconds of each load phase.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Hostile peers, as a share of the honest ones, in the attack phase.
    #[arg(long, default_value_t = 0.1)]
    hostile_share: f64,
    /// How often a hostile peer whose host is refused tries to connect again, in ms.
    #[arg(long, default_value_t = 100)]
    hostile_retry_ms: u64,
    /// Distinct files among the honest peers.
    #[arg(long, default_value_t = 2_000)]
    files: usize,
    /// Files each honest peer holds.
    #[arg(long, default_value_t = 2)]
    files_per_peer: usize,
    /// Requests in flight at once from the honest peers.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
}

/// Honest peers per address, and addresses per /24 (under the tracker's 32 and 128).
const PER_IP: usize = 25;
const IPS_PER_NET: usize = 4;

/// The address of honest peer `i`: 127.1.x.y, 100 peers per /24.
fn honest_ip(i: usize) -> Ipv4Addr {
    let k = i / PER_IP;
    let net = k / IPS_PER_NET;
    Ipv4Addr::new(
        127,
        1 + (net / 250) as u8,
        (net % 250) as u8,
        1 + (k % IPS_PER_NET) as u8,
    )
}

/// The address of hostile peer `i`: 127.100.x.y, as many per address as it may register.
fn hostile_ip(i: usize) -> Ipv4Addr {
    let k = i / 32;
    Ipv4Addr::new(
        127,
        100 + (k / 250 / 250) as u8,
        ((k / 250) % 250) as u8,
        1 + (k % 250) as u8,
    )
}

fn file(j: usize) -> anyhow::Result<AnnouncedFile> {
    Ok(AnnouncedFile {
        id: FileId::of(format!("file {j}").as_bytes()),
        name: FileName::new(format!("dataset-{j:05}.bin"))?,
        size: 1 << 30,
        complete: !j.is_multiple_of(3),
    })
}

/// (resident bytes, CPU seconds) of a process.
fn usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    Ok((hostile::rss(pid)?.0, hostile::cpu_secs(pid)?))
}

async fn connect_all(
    target: &Multiaddr,
    ips: Vec<Ipv4Addr>,
    keys: impl Fn(usize) -> Keypair,
) -> anyhow::Result<Vec<RawHandle>> {
    // Interleaved across addresses (the tracker takes at most 16 handshakes from one address
    // at a time), and each tried a few times.
    let mut order: Vec<(usize, Ipv4Addr)> = ips.into_iter().enumerate().collect();
    order.sort_by_key(|(i, _)| (i % PER_IP, *i));
    let jobs = order.into_iter().map(|(i, ip)| {
        let key = keys(i);
        async move {
            let mut last = None;
            for attempt in 0..5u32 {
                match RawPeer::connect(target, ip, key.clone()).await {
                    Ok(peer) => return anyhow::Ok(peer.spawn()),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        }
    });
    let results: Vec<anyhow::Result<RawHandle>> =
        stream::iter(jobs).buffer_unordered(64).collect().await;
    let mut peers = Vec::new();
    let mut failed = 0;
    for r in results {
        match r {
            Ok(p) => peers.push(p),
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        eprintln!("  {failed} connections failed");
    }
    Ok(peers)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok: u64,
    limited: u64,
    other: u64,
    /// Hostile: times the tracker closed its connection.
    cut_off: u64,
    /// Hostile: connections opened again with a fresh identity.
    reconnected: u64,
    /// Hostile: connection attempts that failed (its host refused).
    connect_refused: u64,
}

impl Tally {
    fn add(&mut self, took: Duration, answer: &anyhow::Result<Response>) {
        self.latencies_us.push(took.as_micros() as u64);
        match answer {
            Ok(Ok(_)) => self.ok += 1,
            Ok(Err(ErrorCode::LimitReached)) => self.limited += 1,
            _ => self.other += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.limited += other.limited;
        self.other += other.other;
        self.cut_off += other.cut_off;
        self.reconnected += other.reconnected;
        self.connect_refused += other.connect_refused;
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn total(&self) -> u64 {
        self.ok + self.limited + self.other
    }
}

/// Honest load for `secs`: each of `concurrency` workers picks its peers in turn and sends a
/// re-announce (10%), a lookup by id (70%) or a search (20%). Returns (all, lookups) tallies.
async fn honest_load(
    peers: &[RawHandle],
    args: &Args,
    seed: u64,
) -> anyhow::Result<(Tally, Tally)> {
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let per_worker = peers.len().div_ceil(args.concurrency).max(1);
    let mut tasks = Vec::new();
    for (w, chunk) in peers.chunks(per_worker).enumerate() {
        let chunk: Vec<RawHandle> = chunk.to_vec();
        let files = args.files;
        let files_per_peer = args.files_per_peer;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + w as u64);
            let (mut all, mut lookups) = (Tally::default(), Tally::default());
            let mut turn = 0;
            while Instant::now() < deadline {
                let peer = &chunk[turn % chunk.len()];
                turn += 1;
                let roll: f64 = rng.gen();
                let request = if roll < 0.1 {
                    let held = (0..files_per_peer)
                        .map(|_| file(rng.gen_range(0..files)))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    Request::Announce(Announce {
                        files: held,
                        addrs: Vec::new(),
                    })
                } else if roll < 0.8 {
                    Request::Lookup {
                        key: LookupKey::Id(file(rng.gen_range(0..files))?.id),
                        limit: 50,
                    }
                } else {
                    Request::Search {
                        query: format!("set-{:03}", rng.gen_range(0..files / 10 + 1)),
                        limit: 20,
                    }
                };
                let is_lookup = matches!(request, Request::Lookup { .. });
                let started = Instant::now();
                let answer = peer.tracker(request).await;
                let took = started.elapsed();
                all.add(took, &answer);
                if is_lookup {
                    lookups.add(took, &answer);
                }
            }
            anyhow::Ok((all, lookups))
        }));
    }
    let (mut all, mut lookups) = (Tally::default(), Tally::default());
    for t in tasks {
        let (a, l) = t.await??;
        all.merge(a);
        lookups.merge(l);
    }
    Ok((all, lookups))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Err(error) = bitswarm_protocols::cli::raise_fd_limit() {
        eprintln!("cannot raise the open-file limit: {error}");
    }
    let exe = std::env::current_exe()?;
    let bins = exe.parent().context("no binary directory")?.to_owned();
    let tracker_bin = bins.join("bitswarm-tracker");
    anyhow::ensure!(
        tracker_bin.exists(),
        "build the binaries first: cargo build --release --bins"
    );
    let hostile_n = (args.peers as f64 * args.hostile_share).round() as usize;
    let dir = tempfile::tempdir()?;
    let (mut tracker, full) = start_tracker(&tracker_bin, dir.path(), &args, hostile_n)?;
    let pid = tracker.id();
    let (rss0, _) = usage(pid)?;
    println!(
        "tracker_load: {} honest peers ({} per address, {} per /24), {} files, then {} hostile",
        args.peers,
        PER_IP,
        PER_IP * IPS_PER_NET,
        args.files,
        hostile_n
    );

    let started = Instant::now();
    let honest = connect_all(&full, (0..args.peers).map(honest_ip).collect(), |_| {
        Keypair::generate_ed25519()
    })
    .await?;
    // One request over each connection first, so the per-connection figure includes the
    // request path's buffers and the per-registration one is the index alone.
    let warmed: Vec<anyhow::Result<Response>> = stream::iter(honest.iter())
        .map(|peer| peer.tracker(Request::Stats))
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let warm_failed = warmed.iter().filter(|r| r.is_err()).count();
    if warm_failed > 0 {
        eprintln!("  {warm_failed} first requests failed");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_conn, _) = usage(pid)?;
    println!(
        "connected {} in {:.1} s; tracker RSS {} -> {} MiB: {:.1} KiB per connection (libp2p: Noise, yamux, handlers)",
        honest.len(),
        started.elapsed().as_secs_f64(),
        rss0 >> 20,
        rss_conn >> 20,
        (rss_conn.saturating_sub(rss0)) as f64 / 1024.0 / honest.len().max(1) as f64
    );

    let started = Instant::now();
    let files = args.files;
    let per_peer = args.files_per_peer;
    let registered: Vec<anyhow::Result<Response>> = stream::iter(honest.iter().enumerate())
        .map(|(i, peer)| async move {
            let held = (0..per_peer)
                .map(|k| file((i * per_peer + k) % files))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let addr: Multiaddr =
                format!("/ip4/{}/tcp/{}", honest_ip(i), 40_000 + i % 20_000).parse()?;
            peer.tracker(Request::Announce(Announce {
                files: held,
                addrs: vec![addr],
            }))
            .await
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let accepted = registered.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_reg, _) = usage(pid)?;
    let stats = match honest.first() {
        Some(p) => p.tracker(Request::Stats).await?,
        None => anyhow::bail!("no peer connected"),
    };
    println!(
        "registered {accepted} in {:.1} s ({stats:?}); tracker RSS {} MiB: {:.2} KiB per registration on top of its connection",
        started.elapsed().as_secs_f64(),
        rss_reg >> 20,
        (rss_reg.saturating_sub(rss_conn)) as f64 / 1024.0 / accepted.max(1) as f64
    );

    // Honest load alone.
    let (_, cpu0) = usage(pid)?;
    let t0 = Instant::now();
    let (mut all, mut lookups) = honest_load(&honest, &args, 1).await?;
    let secs = t0.elapsed().as_secs_f64();
    let (rss_load, cpu1) = usage(pid)?;
    report(
        "honest load",
        &mut all,
        &mut lookups,
        secs,
        cpu1 - cpu0,
        rss_load,
    );

    // The same, while hostile peers flood.
    let hostile = connect_all(&full, (0..hostile_n).map(hostile_ip).collect(), |_| {
        hostile::low_key()
    })
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for (i, peer) in hostile.iter().cloned().enumerate() {
        let stop = stop.clone();
        let target = Target {
            addr: full.clone(),
            ip: hostile_ip(i),
            retry: Duration::from_millis(args.hostile_retry_ms),
        };
        attackers.push(tokio::spawn(attack(peer, target, i, files, stop)));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, cpu0) = usage(pid)?;
    let t0 = Instant::now();
    let (mut all, mut lookups) = honest_load(&honest, &args, 2).await?;
    let secs = t0.elapsed().as_secs_f64();
    let (rss_attack, cpu1) = usage(pid)?;
    stop.store(true, Ordering::Relaxed);
    let mut hostile_tally = Tally::default();
    for a in attackers {
        hostile_tally.merge(a.await?);
    }
    report(
        "honest load under attack",
        &mut all,
        &mut lookups,
        secs,
        cpu1 - cpu0,
        rss_attack,
    );
    println!(
        "  hostile: {} requests, {} answered, {} refused (LimitReached), {} failed",
        hostile_tally.total(),
        hostile_tally.ok,
        hostile_tally.limited,
        hostile_tally.other
    );
    println!(
        "  hostile: cut off {} times, came back as a fresh identity {} times, {} connection attempts refused",
        hostile_tally.cut_off, hostile_tally.reconnected, hostile_tally.connect_refused
    );
    let stats = match honest.first() {
        Some(p) => p.tracker(Request::Stats).await?,
        None => anyhow::bail!("no peer connected"),
    };
    println!("registrations held at the end: {stats:?}");
    drop((honest, hostile));
    tracker.kill()?;
    let _ = tracker.wait();
    Ok(())
}

/// Where a hostile peer connects to, and from.
struct Target {
    addr: Multiaddr,
    ip: Ipv4Addr,
    retry: Duration,
}

/// A hostile peer: announces the popular files under ground keys with a victim's addresses,
/// then floods lookups and searches as fast as the tracker answers, until `stop`. When the
/// tracker cuts it off it comes back as a fresh identity from the same address, trying again
/// every `--hostile-retry-ms` (100) while the tracker refuses its host (a remote attacker's retries would cost this
/// machine nothing; here they share its two cores, so they are paced).
async fn attack(
    mut peer: RawHandle,
    target: Target,
    i: usize,
    files: usize,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = StdRng::seed_from_u64(i as u64);
    while !stop.load(Ordering::Relaxed) {
        flood(&peer, files, &mut rng, &stop, &mut tally).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tally.cut_off += 1;
        while !stop.load(Ordering::Relaxed) {
            match RawPeer::connect(&target.addr, target.ip, Keypair::generate_ed25519()).await {
                Ok(fresh) => {
                    peer = fresh.spawn();
                    tally.reconnected += 1;
                    break;
                }
                Err(_) => {
                    tally.connect_refused += 1;
                    tokio::time::sleep(target.retry).await;
                }
            }
        }
    }
    tally
}

/// One identity's flood, until its connection fails or `stop`.
async fn flood(
    peer: &RawHandle,
    files: usize,
    rng: &mut StdRng,
    stop: &AtomicBool,
    tally: &mut Tally,
) {
    let popular: Vec<AnnouncedFile> = (0..4).filter_map(|j| file(j).ok()).collect();
    let victim: Vec<Multiaddr> = (0..16)
        .filter_map(|k| format!("/ip4/192.0.2.{}/tcp/{}", 1 + k, 80).parse().ok())
        .collect();
    let started = Instant::now();
    let answer = peer
        .tracker(Request::Announce(Announce {
            files: popular,
            addrs: victim,
        }))
        .await;
    tally.add(started.elapsed(), &answer);
    if answer.is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let request = if rng.gen_bool(0.5) {
            Request::Search {
                query: "dataset".into(),
                limit: 100,
            }
        } else {
            Request::Lookup {
                key: LookupKey::Id(
                    file(rng.gen_range(0..files.min(4))).map_or(FileId::of(b"x"), |f| f.id),
                ),
                limit: 50,
            }
        };
        let started = Instant::now();
        let answer = peer.tracker(request).await;
        tally.add(started.elapsed(), &answer);
        if answer.is_err() {
            return;
        }
    }
}

fn report(what: &str, all: &mut Tally, lookups: &mut Tally, secs: f64, cpu: f64, rss: u64) {
    let n = all.total();
    let (p50, p99) = (all.percentile(0.5), all.percentile(0.99));
    let (l50, l99) = (lookups.percentile(0.5), lookups.percentile(0.99));
    println!(
        "{what}: {n} requests in {secs:.1} s = {:.0}/s ({} ok, {} refused, {} failed); p50 {:.2} ms, p99 {:.2} ms; lookups p50 {:.2} ms, p99 {:.2} ms, {} of {} ok; tracker {:.2} CPU-s per 10k requests, RSS {} MiB",
        n as f64 / secs,
        all.ok,
        all.limited,
        all.other,
        p50,
        p99,
        l50,
        l99,
        lookups.ok,
        lookups.total(),
        cpu / (n.max(1) as f64 / 10_000.0),
        rss >> 20
    );
}

fn start_tracker(
    bin: &Path,
    home: &Path,
    args: &Args,
    hostile: usize,
) -> anyhow::Result<(std::process::Child, Multiaddr)> {
    let max = (args.peers + hostile + 256).to_string();
    let mut tracker = Command::new(bin)
        .args(["127.0.0.1:0", "--ephemeral", "-q", "--no-quic"])
        .args(["--max-connections", &max, "--max-peers", &max])
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = tracker.stdout.take().context("tracker stdout")?;
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let full = loop {
        let line = lines.next().context("the tracker exited")??;
        if let Some(addr) = line.strip_prefix("listening on /ip4/127.0.0.1/tcp/") {
            break format!("/ip4/127.0.0.1/tcp/{addr}").parse()?;
        }
    };
    // Keep reading its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((tracker, full))
}
