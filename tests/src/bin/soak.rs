//! Soak: a real tracker and `--peers` real peers (the `bitswarm` binary, one process each) on
//! loopback for `--minutes`, with churn (seeders killed with SIGKILL and restarted, files fetched
//! again and again) and a few hostile peers (one sends bad pieces, one never answers, one is
//! always Busy; each restarted now and then). Prints figures; it is not a test.
//!
//! ```text
//! cargo build --release --bins && ./target/release/soak --minutes 30
//! ```
//!
//! Reports transfers completed and failed (with the reasons), bytes corrupted (a completed get
//! whose file does not hash to its id; must be 0), panics in any process (must be 0), and the
//! resident memory of the tracker, of one seeder that runs throughout, and the largest of the
//! others, sampled over time.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use bitswarm_protocols::{tracker::AnnouncedFile, transfer, ErrorCode, FileId, FileName, Manifest};
use bitswarm_tests::{
    hostile::{self, HostilePeer},
    make_file,
};
use clap::Parser;
use libp2p::Multiaddr;
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Parser, Debug)]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Peer processes (a third seed, the rest get).
    #[arg(long, default_value_t = 20)]
    peers: usize,
    /// Distinct files shared.
    #[arg(long, default_value_t = 6)]
    files: usize,
    /// Size of each file in MiB.
    #[arg(long, default_value_t = 16)]
    file_mib: usize,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 60)]
    sample_secs: u64,
}

/// One peer slot: the process in it now and what it does.
struct Slot {
    role: Role,
    child: Option<Child>,
    started: Instant,
    /// Seeders: when to kill it. Getters: what it fetches, into where.
    until: Instant,
    file: usize,
    out: PathBuf,
    log: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Seeds for the whole run (its memory is the long-lived one to watch).
    Steady,
    /// Seeds for a random while, killed with SIGKILL, restarted.
    Churning,
    /// Gets a random file, checks it, deletes it, again.
    Getter,
}

/// Resident memory in MiB, while the process runs.
fn rss(pid: u32) -> Option<u64> {
    hostile::rss(pid).ok().map(|(now, _)| now >> 20)
}

fn manifest_of(data: &[u8], name: &str) -> anyhow::Result<Manifest> {
    Ok(Manifest::of_bytes(FileName::new(name)?, data)?)
}

/// The three hostile peers, announcing every file.
async fn hostile_peers(
    tracker: &Multiaddr,
    files: &[(FileId, String, Vec<u8>)],
) -> anyhow::Result<Vec<HostilePeer>> {
    let announced: Vec<AnnouncedFile> = files
        .iter()
        .map(|(id, name, data)| {
            Ok(AnnouncedFile {
                id: *id,
                name: FileName::new(name.as_str())?,
                size: data.len() as u64,
                complete: true,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let manifests: Vec<(FileId, transfer::Response)> = files
        .iter()
        .map(|(id, name, data)| {
            Ok((
                *id,
                transfer::Response::Manifest(manifest_of(data, name)?.to_wire()),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let manifest_for = move |request: &transfer::Request| match request {
        transfer::Request::Manifest { id } => manifests
            .iter()
            .find(|(m, _)| m == id)
            .map(|(_, r)| r.clone()),
        _ => None,
    };
    let liar_manifests = manifest_for.clone();
    let liar = HostilePeer::start(
        tracker,
        announced.clone(),
        Box::new(move |request| match request {
            transfer::Request::Piece { .. } => Some(transfer::Response::Piece(vec![0xAA; 1 << 20])),
            transfer::Request::Have { .. } => None,
            other => liar_manifests(other),
        }),
    )
    .await?;
    let silent = HostilePeer::start(tracker, announced.clone(), Box::new(|_| None)).await?;
    let busy = HostilePeer::start(
        tracker,
        announced,
        Box::new(|_| Some(transfer::Response::Error(ErrorCode::Busy))),
    )
    .await?;
    Ok(vec![liar, silent, busy])
}

fn spawn(bin: &Path, args: &[&str], home: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(bin)
        .args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bins = exe.parent().context("no binary directory")?.to_owned();
    let (node_bin, tracker_bin) = (bins.join("bitswarm"), bins.join("bitswarm-tracker"));
    anyhow::ensure!(
        node_bin.exists() && tracker_bin.exists(),
        "build the binaries first: cargo build --release --bins"
    );
    let dir = tempfile::tempdir()?;
    let result = soak(&args, &node_bin, &tracker_bin, dir.path()).await;
    if result.is_err() {
        // Keep the logs of a run that broke off, to see why.
        let kept = dir.keep();
        eprintln!("logs kept in {}", kept.display());
    }
    result
}

async fn soak(args: &Args, node_bin: &Path, tracker_bin: &Path, home: &Path) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(2026);

    let tracker_log = home.join("tracker.log");
    let mut tracker = Command::new(tracker_bin)
        .args(["127.0.0.1:0", "--ephemeral"])
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&tracker_log)?)
        .spawn()?;
    let stdout = tracker.stdout.take().context("tracker stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("listening on /ip4/127.0.0.1/tcp/"))
    })
    .await?
    .context("the tracker printed no address")?;
    let tracker_addr: Multiaddr = line.trim_start_matches("listening on ").parse()?;
    let tracker_plain = {
        let port = line
            .trim_start_matches("listening on /ip4/127.0.0.1/tcp/")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        format!("127.0.0.1:{port}")
    };

    let mut files = Vec::new();
    for i in 0..args.files {
        let name = format!("soak-{i}.bin");
        let path = make_file(home, &name, args.file_mib << 20, 100 + i as u64)?;
        let data = fs::read(&path)?;
        files.push((FileId::of(&data), name, data));
    }
    let paths: Vec<PathBuf> = files.iter().map(|(_, n, _)| home.join(n)).collect();

    let seeders = (args.peers / 3).max(2);
    let mut slots = Vec::new();
    for i in 0..args.peers {
        let role = match i {
            0 => Role::Steady,
            i if i < seeders => Role::Churning,
            _ => Role::Getter,
        };
        let out = home.join(format!("out-{i}"));
        fs::create_dir_all(&out)?;
        slots.push(Slot {
            role,
            child: None,
            started: Instant::now(),
            until: Instant::now(),
            file: i % args.files,
            out,
            log: home.join(format!("peer-{i}.log")),
        });
    }
    let mut hostile = hostile_peers(&tracker_addr, &files).await?;
    let mut next_hostile_restart = Instant::now() + Duration::from_secs(60);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.minutes * 60);
    let mut next_sample = started;
    let (mut completed, mut failed, mut corrupted_bytes) = (0u64, 0u64, 0u64);
    let mut kills = 0u64;
    let mut hostile_failures = 0u64;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples: Vec<(u64, Option<u64>, Option<u64>, u64)> = Vec::new();
    let mut get_secs: Vec<f64> = Vec::new();
    eprintln!(
        "soak: tracker + {} peers ({} seeding, {} getting) + 3 hostile, {} files of {} MiB, {} min",
        args.peers,
        seeders,
        args.peers - seeders,
        args.files,
        args.file_mib,
        args.minutes
    );

    while Instant::now() < deadline {
        let now = Instant::now();
        for slot in &mut slots {
            // A finished getter: count it and check what it wrote.
            if slot.role == Role::Getter {
                if let Some(child) = &mut slot.child {
                    if let Some(status) = child.try_wait()? {
                        slot.child = None;
                        let (id, name, data) = &files[slot.file];
                        let path = slot.out.join(name);
                        if status.success() {
                            completed += 1;
                            get_secs.push(slot.started.elapsed().as_secs_f64());
                            let got = fs::read(&path).unwrap_or_default();
                            if FileId::of(&got) != *id {
                                let wrong =
                                    got.iter().zip(data.iter()).filter(|(a, b)| a != b).count()
                                        + got.len().abs_diff(data.len());
                                corrupted_bytes += wrong as u64;
                            }
                        } else {
                            failed += 1;
                            let log = fs::read_to_string(&slot.log).unwrap_or_default();
                            let reason = log
                                .lines()
                                .rev()
                                .find(|l| l.starts_with("error:"))
                                .map(|l| {
                                    // Drop ids and numbers so equal causes count together.
                                    l.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
                                })
                                .unwrap_or_else(|| format!("exit {status}"));
                            *reasons.entry(reason).or_default() += 1;
                        }
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            // A churning seeder past its time: SIGKILL.
            if slot.role == Role::Churning && now >= slot.until {
                if let Some(mut child) = slot.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                    kills += 1;
                }
            }
            if slot.child.is_none() {
                slot.started = now;
                let log = slot.log.to_str().context("log path")?.to_owned();
                let _ = fs::write(&log, "");
                slot.child = Some(match slot.role {
                    Role::Steady | Role::Churning => {
                        slot.file = rng.gen_range(0..files.len());
                        slot.until = now + Duration::from_secs(rng.gen_range(20..90));
                        let path = paths[slot.file].to_str().context("path")?;
                        spawn(
                            node_bin,
                            &["share", path, &tracker_plain, "127.0.0.1:0", "--ephemeral"],
                            home,
                            slot.log.as_path(),
                        )?
                    }
                    Role::Getter => {
                        slot.file = rng.gen_range(0..files.len());
                        let id = files[slot.file].0.to_string();
                        let out = slot.out.to_str().context("out path")?;
                        spawn(
                            node_bin,
                            &[
                                "get",
                                &id,
                                &tracker_plain,
                                "127.0.0.1:0",
                                "--ephemeral",
                                "-o",
                                out,
                                "--wait",
                                "20",
                            ],
                            home,
                            slot.log.as_path(),
                        )?
                    }
                });
            }
        }
        if now >= next_hostile_restart {
            hostile.clear();
            // A restart that fails (the tracker busy, say) is counted and tried again
            // next minute; it does not end the soak.
            match hostile_peers(&tracker_addr, &files).await {
                Ok(peers) => hostile = peers,
                Err(error) => {
                    eprintln!("hostile peers not restarted: {error:#}");
                    hostile_failures += 1;
                }
            }
            next_hostile_restart = now + Duration::from_secs(60);
        }
        if now >= next_sample {
            let steady = slots[0].child.as_ref().and_then(|c| rss(c.id()));
            let others = slots[1..]
                .iter()
                .filter_map(|s| s.child.as_ref().and_then(|c| rss(c.id())))
                .max();
            let tracker_rss = rss(tracker.id()).unwrap_or(0);
            let minute = started.elapsed().as_secs() / 60;
            eprintln!(
                "  {minute:>3} min: completed {completed}, failed {failed}, corrupted {corrupted_bytes} B; RSS tracker {tracker_rss} MiB, steady seeder {} MiB, largest other {} MiB",
                steady.map_or("-".into(), |v| v.to_string()),
                others.map_or("-".into(), |v| v.to_string())
            );
            samples.push((minute, steady, others, tracker_rss));
            next_sample = now + Duration::from_secs(args.sample_secs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for slot in &mut slots {
        if let Some(mut child) = slot.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    drop(hostile);
    let tracker_rss = rss(tracker.id()).unwrap_or(0);
    let _ = tracker.kill();
    let _ = tracker.wait();

    // Panics anywhere: every process's log.
    let mut panics = 0;
    for entry in fs::read_dir(home)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            panics += fs::read_to_string(&path)?.matches("panicked").count();
        }
    }
    get_secs.sort_by(f64::total_cmp);
    let median = get_secs.get(get_secs.len() / 2).copied().unwrap_or(0.0);
    println!(
        "soak: {} min, tracker + {} peers ({} seeding, {} of them killed and restarted {kills} times) + 3 hostile peers restarted every minute",
        args.minutes,
        args.peers,
        seeders,
        seeders - 1
    );
    println!("transfers completed: {completed} (median {median:.1} s), failed: {failed}");
    for (reason, n) in &reasons {
        println!("  {n} x {reason}");
    }
    println!("bytes corrupted: {corrupted_bytes}");
    println!("panics: {panics}");
    println!("hostile-peer restarts that failed: {hostile_failures}");
    println!("memory (RSS, MiB) over time: minute, tracker, steady seeder, largest other peer");
    for (minute, steady, others, tracker) in &samples {
        println!(
            "  {minute:>3}  {tracker:>5}  {:>5}  {:>5}",
            steady.map_or("-".into(), |v| v.to_string()),
            others.map_or("-".into(), |v| v.to_string())
        );
    }
    println!("tracker RSS at the end: {tracker_rss} MiB");
    Ok(())
}
