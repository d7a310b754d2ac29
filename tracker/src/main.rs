//! `bitswarm-tracker`: runs a tracker until Ctrl-C.
//!
//! Parses the command line, installs tracing, builds a [`Config`] and calls the library. Prints
//! each dialable address on stdout as `listening on /ip4/.../p2p/<id>`; logs go to stderr.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use bitswarm_protocols::cli::{ctrl_c, init_tracing, raise_fd_limit, verbosity};
use bitswarm_protocols::parse_addr;
use bitswarm_tracker::{config, config::ConnectionLimits, Config, Limits, RelayLimits, Tracker};
use clap::{ArgAction, Parser};
use libp2p::Multiaddr;
use tokio_util::sync::CancellationToken;

/// The command line, as parsed.
#[derive(Debug, Parser)]
#[command(name = "bitswarm-tracker", version, about = "Run a bitswarm tracker")]
struct Args {
    /// Address to listen on: `ip:port` (e.g. 127.0.0.1:7000) or a multiaddr
    /// [default: /ip4/0.0.0.0/tcp/7000 when no --listen is given either]
    #[arg(value_name = "ADDR")]
    addr: Option<String>,
    /// Another address to listen on (repeatable)
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Key file, created on first use [default: <data dir>/bitswarm/tracker.key]
    #[arg(long, value_name = "FILE", conflicts_with = "ephemeral")]
    key: Option<PathBuf>,
    /// Use a throw-away key: a new peer id on every start
    #[arg(long)]
    ephemeral: bool,
    /// Seconds between the announces peers are asked for
    #[arg(long, value_name = "SECS", default_value_t = config::DEFAULT_ANNOUNCE_INTERVAL.as_secs())]
    interval: u64,
    /// Seconds a registration lives without an announce [default: 3 x interval]
    #[arg(long, value_name = "SECS")]
    ttl: Option<u64>,
    /// The tracker's public address, as peers dial it (repeatable) [default: the listen
    /// addresses on a specific IP]. The relay works only with one.
    #[arg(long = "external-addr", value_name = "ADDR")]
    external_addr: Vec<String>,
    /// Relay file data too: circuits get no byte limit and live a day (unless the limits below
    /// say otherwise). By default circuits only coordinate hole punching.
    #[arg(long)]
    relay_data: bool,
    /// Bytes one relayed circuit may carry, 0 for no limit
    /// [default: 131072, or 1073741824 with --relay-data]
    #[arg(long, value_name = "BYTES")]
    relay_circuit_bytes: Option<u64>,
    /// Seconds one relayed circuit may live [default: 120, or 86400 with --relay-data]
    #[arg(long, value_name = "SECS")]
    relay_circuit_secs: Option<u32>,
    /// Relayed circuits one peer may have open
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_RELAY_CIRCUITS_PER_PEER)]
    relay_circuits_per_peer: usize,
    /// Do not listen on QUIC (by default each TCP address with a fixed port gets a QUIC twin)
    #[arg(long)]
    no_quic: bool,
    /// Answer AutoNAT probes from peers at non-global addresses (a LAN or a test lab)
    #[arg(long)]
    autonat_private_ips: bool,
    /// Most connections in all (each takes a file descriptor; the open-file limit is raised
    /// to its hard limit at start)
    #[arg(long, value_name = "N", default_value_t = ConnectionLimits::tracker().max_connections)]
    max_connections: u32,
    /// Most registered peers
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_peers)]
    max_peers: usize,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides). By default every request,
    /// share and eviction is logged at info.
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Log only warnings and errors
    #[arg(short, long)]
    quiet: bool,
    /// Log as JSON lines (one object per event), for log shippers
    #[arg(long)]
    json_logs: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, as `{:#}` prints them, without the empty and repeated
/// messages that libp2p's nested transport errors produce.
fn chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || parts.last().is_some_and(|last| last.ends_with(&msg)) {
            continue;
        }
        parts.push(msg);
    }
    parts.join(": ")
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let level = if args.quiet {
        "warn"
    } else {
        verbosity(&LOG_LEVELS, args.verbose)
    };
    init_tracing(level, args.json_logs);
    if let Err(error) = raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let config = config_from(&args)?;

    let tracker = Tracker::bind(config)
        .await
        .context("cannot start the tracker")?;
    {
        let mut out = io::stdout().lock();
        for addr in tracker.listen_addrs() {
            writeln!(out, "listening on {addr}")?;
        }
        out.flush()?;
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_ctrl_c(shutdown.clone()));
    tracker.run(shutdown).await;
    Ok(())
}

/// Validates the parsed arguments into a [`Config`].
fn config_from(args: &Args) -> anyhow::Result<Config> {
    let mut listen_addrs: Vec<Multiaddr> = args
        .addr
        .iter()
        .chain(&args.listen)
        .map(|a| parse_addr(a))
        .collect::<Result<_, _>>()?;
    if listen_addrs.is_empty() {
        listen_addrs.push(config::default_listen_addr());
    }
    if args.interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let interval = Duration::from_secs(args.interval);
    let ttl = Duration::from_secs(args.ttl.unwrap_or(args.interval.saturating_mul(3)));
    if ttl <= interval {
        bail!(
            "--ttl ({}s) must be longer than --interval ({}s)",
            ttl.as_secs(),
            interval.as_secs()
        );
    }
    let external_addrs = args
        .external_addr
        .iter()
        .map(|a| parse_addr(a))
        .collect::<Result<_, _>>()?;
    let mut relay = RelayLimits {
        max_circuits_per_peer: args.relay_circuits_per_peer,
        ..RelayLimits::default()
    };
    if args.relay_data {
        relay = relay.carrying_data();
    }
    if let Some(bytes) = args.relay_circuit_bytes {
        relay.max_circuit_bytes = bytes;
    }
    if let Some(secs) = args.relay_circuit_secs {
        relay.max_circuit_duration = Duration::from_secs(secs.into());
    }
    let config = Config {
        listen_addrs,
        announce_interval: interval,
        external_addrs,
        relay,
        quic: !args.no_quic,
        autonat_private_ips: args.autonat_private_ips,
        connection_limits: ConnectionLimits {
            max_connections: args.max_connections,
            ..ConnectionLimits::tracker()
        },
        limits: Limits {
            max_peers: args.max_peers,
            ..Limits::default()
        },
        ..Config::default()
    }
    .with_ttl(ttl);
    if args.ephemeral {
        return Ok(config);
    }
    let path = match &args.key {
        Some(path) => path.clone(),
        None => dirs::data_dir()
            .context("no data directory for the key file; use --key FILE or --ephemeral")?
            .join("bitswarm")
            .join("tracker.key"),
    };
    Ok(config.with_key_file(&path)?)
}

/// The first Ctrl-C cancels `shutdown`; the second exits at once.
async fn stop_on_ctrl_c(shutdown: CancellationToken) {
    ctrl_c().await;
    eprintln!("stopping (Ctrl-C again to force)");
    shutdown.cancel();
}

/// Log levels by `-v` count (`-q` is warn): `RUST_LOG` overrides.
const LOG_LEVELS: [&str; 3] = [
    "warn,bitswarm_tracker=info",
    "info,bitswarm_tracker=debug,bitswarm_protocols=debug",
    "trace",
];
