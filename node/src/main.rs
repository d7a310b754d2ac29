//! `bitswarm`: the peer command line (share, get, search, stats).

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use bitswarm_node::{identity, shown, Client, Config, Downloaded, GetRequest};
use bitswarm_protocols::cli::{ctrl_c, init_tracing, verbosity};
use bitswarm_protocols::{parse_addr, tracker::LookupKey, FileId, FileName, RelPath};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;

/// Tracker used when none is given (the tracker's default port on this machine).
const DEFAULT_TRACKER: &str = "127.0.0.1:7000";
/// Provider wait of commands that do not download.
const DEFAULT_WAIT: Duration = bitswarm_node::DEFAULT_PROVIDER_WAIT;
/// Listen address used when none is given: every interface, a free port.
const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/0";

/// Share and get files, verified piece by piece, from many peers at once.
#[derive(Parser, Debug)]
#[command(name = "bitswarm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    global: Global,
}

#[derive(Args, Debug)]
struct Global {
    /// Tracker address: ip:port or a multiaddr (default 127.0.0.1:7000).
    #[arg(long, global = true)]
    tracker: Option<String>,
    /// Address to listen on: ip:port or a multiaddr (default: all interfaces, a free port).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Key file (created if missing). Default: a free peer-N.key in the user's data directory.
    #[arg(long, global = true, conflicts_with = "ephemeral")]
    key: Option<PathBuf>,
    /// Use a throw-away identity.
    #[arg(long, global = true)]
    ephemeral: bool,
    /// Print machine-readable JSON results.
    #[arg(long, global = true)]
    json: bool,
    /// More logging (default errors only; -v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a file until Ctrl-C.
    Share {
        /// The file to share.
        path: PathBuf,
        /// Tracker (the prototype's positional form).
        #[arg(id = "tracker_pos", value_name = "TRACKER")]
        tracker: Option<String>,
        /// Listen address (the prototype's positional form).
        #[arg(id = "listen_pos", value_name = "LISTEN")]
        listen: Option<String>,
    },
    /// Download a file by name or content id.
    Get {
        /// A file name, or a 64-hex-digit content id (as `b3sum` prints).
        target: String,
        /// Tracker (the prototype's positional form).
        #[arg(id = "tracker_pos", value_name = "TRACKER")]
        tracker: Option<String>,
        /// Listen address (the prototype's positional form).
        #[arg(id = "listen_pos", value_name = "LISTEN")]
        listen: Option<String>,
        /// Directory to write into (a shared directory lands in DIR/NAME/, NAME being its name).
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// For a shared directory: get only this file of it (its path inside the directory).
        #[arg(long, value_name = "PATH")]
        file: Option<String>,
        /// Save under this name in the output directory (a file, or a shared directory's
        /// folder) instead of the one the network gives.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// For a shared directory: add its files into an existing folder of its name (files
        /// there with other content are still never replaced).
        #[arg(long)]
        merge: bool,
        /// Largest file (or shared directory, in total) to accept: bytes, or with a K, M, G or
        /// T suffix (powers of 1024).
        #[arg(long, value_name = "SIZE", default_value = "1T", value_parser = parse_size)]
        max_size: u64,
        /// Keep serving the file after it completes, until Ctrl-C.
        #[arg(long)]
        seed: bool,
        /// Seconds to wait for a provider to send data (all gone, or none reachable) before
        /// giving up; the .part file is kept for the next run.
        #[arg(long, value_name = "SECS", default_value_t = bitswarm_node::DEFAULT_PROVIDER_WAIT.as_secs())]
        wait: u64,
    },
    /// Search the tracker's index by name.
    Search {
        /// Part of a file name (case-insensitive).
        query: String,
        /// Tracker (positional form).
        #[arg(id = "tracker_pos", value_name = "TRACKER")]
        tracker: Option<String>,
    },
    /// The tracker's live peer count and file count.
    Stats {
        /// Tracker (positional form).
        #[arg(id = "tracker_pos", value_name = "TRACKER")]
        tracker: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: the user reads results, not logs.
    init_tracing(
        verbosity(&["error", "info", "debug", "trace"], cli.global.verbose),
        false,
    );
    // One node is one event loop; disk work and hashing run on the blocking pool. A
    // single-threaded scheduler saves the cross-thread wakeups of a work-stealing one: about
    // 10% fewer CPU-seconds per GiB in the 1 -> 8 benchmark (see README).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn addr(arg: Option<&str>, default: &str) -> anyhow::Result<Multiaddr> {
    Ok(parse_addr(arg.unwrap_or(default))?)
}

/// Starts a node; `announce_presence` is true for peers that transfer (they listen, keep a
/// key file and count as live at the tracker) and false for one-shot queries. Returns its client, the cancel token, the event loop task and the key slot
/// (which must live as long as the node).
async fn start(
    global: &Global,
    tracker: Option<&str>,
    listen: Option<&str>,
    announce_presence: bool,
    provider_wait: Duration,
) -> anyhow::Result<(
    Client,
    CancellationToken,
    tokio::task::JoinHandle<()>,
    Option<identity::KeySlot>,
)> {
    let tracker =
        addr(tracker.or(global.tracker.as_deref()), DEFAULT_TRACKER).context("tracker address")?;
    let listen = match listen.or(global.listen.as_deref()) {
        Some(l) => vec![addr(Some(l), DEFAULT_LISTEN).context("listen address")?],
        None if announce_presence => vec![addr(None, DEFAULT_LISTEN)?],
        None => Vec::new(),
    };
    let (keypair, slot) = if global.ephemeral || !announce_presence {
        (libp2p::identity::Keypair::generate_ed25519(), None)
    } else if let Some(path) = &global.key {
        (bitswarm_protocols::keyfile::load_or_create(path)?, None)
    } else {
        let dir = identity::default_dir().context("no data directory; use --key or --ephemeral")?;
        let slot = identity::claim_default(&dir)?;
        (slot.keypair.clone(), Some(slot))
    };
    let cancel = CancellationToken::new();
    let config = Config {
        keypair,
        listen_addrs: listen,
        tracker: Some(tracker),
        announce_presence,
        provider_wait,
        cancel: cancel.clone(),
        ..Config::default()
    };
    let (client, _events, event_loop) = bitswarm_node::new(config)?;
    let task = tokio::spawn(event_loop.run());
    Ok((client, cancel, task, slot))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Cmd::Share {
            path,
            tracker,
            listen,
        } => {
            let (client, cancel, task, _slot) =
                start(g, tracker.as_deref(), listen.as_deref(), true, DEFAULT_WAIT).await?;
            let shared = client
                .share(path.clone())
                .await
                .with_context(|| format!("cannot share {}", shown(path)))?;
            let addrs = client.listen_addrs().await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "sharing {} {} ({} bytes) as {}",
                shared.id,
                shared.name,
                shared.size,
                client.peer_id()
            )?;
            if shared.skipped > 0 {
                writeln!(
                    out,
                    "skipped {} hidden files, links or special files",
                    shared.skipped
                )?;
            }
            for a in addrs {
                writeln!(out, "listening on {a}")?;
            }
            writeln!(out, "serving until Ctrl-C")?;
            out.flush()?;
            drop(out);
            ctrl_c().await;
            cancel.cancel();
            let _ = task.await;
            Ok(())
        }
        Cmd::Get {
            target,
            tracker,
            listen,
            output,
            file,
            name,
            merge,
            max_size,
            seed,
            wait,
        } => {
            if !output.is_dir() {
                bail!("output directory {} does not exist", shown(output));
            }
            let key = parse_target(target)?;
            let file = file.as_deref().map(RelPath::new).transpose()?;
            let name = name
                .as_deref()
                .map(FileName::new)
                .transpose()
                .context("--name must be a single file name")?;
            let wait = Duration::from_secs(*wait);
            let (client, cancel, task, _slot) =
                start(g, tracker.as_deref(), listen.as_deref(), true, wait).await?;
            let request = GetRequest {
                file,
                name,
                merge: *merge,
                max_size: *max_size,
                ..GetRequest::new(key, output.clone())
            };
            let download = client.get_with(request).await?;
            let bar = progress_bar(download.progress(), g.json);
            let result = tokio::select! {
                r = download.wait() => r,
                () = ctrl_c() => {
                    cancel.cancel();
                    let _ = task.await;
                    bail!("interrupted; the .part file is kept");
                }
            };
            bar.abort();
            let done = result?;
            print_downloaded(&done, g.json)?;
            if *seed {
                println!("seeding until Ctrl-C");
                ctrl_c().await;
            }
            cancel.cancel();
            let _ = task.await;
            Ok(())
        }
        Cmd::Search { query, tracker } => {
            let (client, ..) = start(g, tracker.as_deref(), None, false, DEFAULT_WAIT).await?;
            let found = client.search(query.clone()).await?;
            if g.json {
                let rows: Vec<_> = found
                    .iter()
                    .map(|f| serde_json::json!({"id": f.id.to_string(), "name": f.name.as_str(), "size": f.size, "seeders": f.seeders, "leechers": f.leechers}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for f in &found {
                    println!(
                        "{}  {:>12}  seeders {:>3}  leechers {:>3}  {}",
                        f.id, f.size, f.seeders, f.leechers, f.name
                    );
                }
                if found.is_empty() {
                    println!("no files match {query:?}");
                }
            }
            Ok(())
        }
        Cmd::Stats { tracker } => {
            let (client, ..) = start(g, tracker.as_deref(), None, false, DEFAULT_WAIT).await?;
            let stats = client.stats().await?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({"peers": stats.peers, "files": stats.files})
                );
            } else {
                println!("peers {}\nfiles {}", stats.peers, stats.files);
            }
            Ok(())
        }
    }
}

/// A size: bytes, or with a K, M, G or T suffix (powers of 1024; `KiB`, `MB` and the like are
/// read the same way).
fn parse_size(arg: &str) -> Result<u64, String> {
    let arg = arg.trim();
    let split = arg.find(|c: char| !c.is_ascii_digit()).unwrap_or(arg.len());
    let (digits, unit) = arg.split_at(split);
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown size unit {unit:?} (use K, M, G or T)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{arg:?} is not a size"))
}

/// A 64-hex-digit argument is a content id; anything else is a file name.
fn parse_target(target: &str) -> anyhow::Result<LookupKey> {
    if target.len() == 64 && target.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(LookupKey::Id(target.parse::<FileId>()?));
    }
    Ok(LookupKey::Name(FileName::new(target)?))
}

fn progress_bar(
    mut progress: tokio::sync::watch::Receiver<bitswarm_node::Progress>,
    json: bool,
) -> tokio::task::AbortHandle {
    let bar = if json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            bar.set_length(p.total);
            bar.set_position(p.done);
            bar.set_message(format!("{} peers", p.providers));
        }
        bar.finish_and_clear();
    })
    .abort_handle()
}

fn print_downloaded(done: &Downloaded, json: bool) -> anyhow::Result<()> {
    let secs = done.elapsed.as_secs_f64().max(1e-9);
    let mbps = done.size as f64 / secs / 1e6;
    if json {
        let sources: Vec<serde_json::Value> = done
            .sources
            .iter()
            .map(|s| serde_json::json!({"peer": s.peer.to_string(), "path": s.path, "pieces": s.pieces}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"id": done.id.to_string(), "path": done.path, "size": done.size, "seconds": secs, "mb_per_s": mbps, "providers": done.providers_used, "sources": sources, "resumed": done.resumed, "fetched": done.fetched, "present": done.present})
        );
    } else if done.present {
        println!(
            "already present: {} ({} bytes, verified) id {}",
            shown(&done.path),
            done.size,
            done.id
        );
    } else {
        println!(
            "downloaded {} ({} bytes in {:.2}s, {:.1} MB/s from {} peers) id {}",
            shown(&done.path),
            done.size,
            secs,
            mbps,
            done.providers_used,
            done.id
        );
        for s in &done.sources {
            let path = s
                .path
                .map_or_else(|| "path unknown".to_owned(), |p| p.to_string());
            println!("  from {}: {} pieces, {path}", s.peer, s.pieces);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("3 MiB"), Ok(3 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err(), "overflow");
    }
}
