//! A whole bitswarm network in one process, on loopback: a tracker, one seeder sharing a
//! generated file, and several leechers getting it at once. Prints each leecher's time and
//! throughput and checks every copy against the original's BLAKE3 hash.
//!
//! ```text
//! cargo run --release --example swarm                     # 64 MiB, 3 leechers
//! cargo run --release --example swarm -- --size-mib 256 --leechers 5
//! ```

use std::time::Instant;

use anyhow::Context;
use bitswarm_examples::{generate_file, start_tracker};
use bitswarm_node::Config;
use bitswarm_protocols::{parse_addr, tracker::LookupKey, FileId, FileName};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "Run a tracker, a seeder and leechers in one process on loopback")]
struct Args {
    /// Size of the generated file, in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Number of leechers.
    #[arg(long, default_value_t = 3)]
    leechers: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let cancel = CancellationToken::new();

    let tracker_addr = start_tracker(cancel.child_token()).await?;
    println!("tracker   {tracker_addr}");

    let loopback = parse_addr("127.0.0.1:0")?;
    let node = |cancel: CancellationToken| Config {
        listen_addrs: vec![loopback.clone()],
        tracker: Some(tracker_addr.clone()),
        cancel,
        ..Config::default()
    };

    let path = dir.path().join("swarm-demo.bin");
    let size = args.size_mib << 20;
    generate_file(&path, size, 1)?;
    let (seeder, _events, event_loop) = bitswarm_node::new(node(cancel.child_token()))?;
    tokio::spawn(event_loop.run());
    let shared = seeder.share(&path).await?;
    println!(
        "seeder    {} shares {} ({} MiB) id {}",
        seeder.peer_id(),
        shared.name,
        args.size_mib,
        shared.id
    );

    let started = Instant::now();
    let mut downloads = Vec::new();
    for i in 0..args.leechers {
        let (client, _events, event_loop) = bitswarm_node::new(node(cancel.child_token()))?;
        tokio::spawn(event_loop.run());
        let out = dir.path().join(format!("leecher-{i}"));
        std::fs::create_dir_all(&out)?;
        let download = client
            .get(LookupKey::Name(FileName::new("swarm-demo.bin")?), out)
            .await?;
        downloads.push(tokio::spawn(async move { (i, download.wait().await) }));
    }
    for task in downloads {
        let (i, result) = task.await?;
        let done = result.with_context(|| format!("leecher {i}"))?;
        let bytes = std::fs::read(&done.path)?;
        anyhow::ensure!(
            FileId::of(&bytes) == shared.id,
            "leecher {i} got different bytes"
        );
        println!(
            "leecher {i} done in {:.2}s: {:.0} MB/s, verified (BLAKE3 {})",
            done.elapsed.as_secs_f64(),
            done.size as f64 / done.elapsed.as_secs_f64() / 1e6,
            shared.id.short()
        );
    }
    let total = started.elapsed().as_secs_f64();
    let delivered = size * args.leechers as u64;
    println!(
        "all {} leechers complete in {total:.2}s; {:.0} MB/s delivered in total",
        args.leechers,
        delivered as f64 / total / 1e6
    );
    cancel.cancel();
    Ok(())
}
