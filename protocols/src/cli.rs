//! What both binaries (`bitswarm`, `bitswarm-tracker`) do the same way around their libraries:
//! logging to stderr and Ctrl-C. Behind the `cli` feature, so the libraries and the fuzzers
//! stay free of a runtime and a subscriber.

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber, writing to stderr: `RUST_LOG` when set, else
/// `levels[verbose]` (the last one for any higher count). Call once, from `main`.
pub fn init_tracing(levels: &[&str], verbose: u8) {
    let level = levels
        .get(usize::from(verbose))
        .or(levels.last())
        .copied()
        .unwrap_or("warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Exit status after a second Ctrl-C (128 + SIGINT).
pub const INTERRUPTED_EXIT: i32 = 130;

/// Resolves on the first Ctrl-C, for a clean stop; a second one exits the process at once
/// with [`INTERRUPTED_EXIT`]. If the signal cannot be listened for, it never resolves.
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        return std::future::pending().await;
    }
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted twice: exiting now");
            std::process::exit(INTERRUPTED_EXIT);
        }
    });
}
