//! Shared helpers of the bitswarm examples and benchmark: test data and process accounting.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::Context;

/// Writes `size` pseudo-random bytes (xorshift, deterministic for `seed`) to `path`, one MiB
/// at a time.
pub fn generate_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Starts a tracker on 127.0.0.1 with a free port in this process; returns its address (with
/// `/p2p/<id>`). It runs until `cancel` is cancelled.
pub async fn start_tracker(
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<libp2p::Multiaddr> {
    let tracker = bitswarm_tracker::Tracker::bind(bitswarm_tracker::Config {
        listen_addrs: vec![bitswarm_protocols::parse_addr("127.0.0.1:0")?],
        ..Default::default()
    })
    .await?;
    let addr = tracker
        .listen_addrs()
        .into_iter()
        .next()
        .context("tracker address")?;
    tokio::spawn(tracker.run(cancel));
    Ok(addr)
}

/// CPU time and peak memory of this process so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU seconds, all threads.
    pub cpu_secs: f64,
    /// Peak resident set size, in MiB.
    pub peak_rss_mib: f64,
}

/// Reads [`Usage`] from `/proc/self` (Linux).
pub fn usage() -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("odd /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmHWM")?
        .parse()?;
    Ok(Usage {
        cpu_secs: ticks / clock_ticks_per_sec(),
        peak_rss_mib: hwm_kib / 1024.0,
    })
}

/// `getconf CLK_TCK`, or Linux's usual 100.
fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
