//! What both binaries (`bitswarm`, `bitswarm-tracker`) do the same way around their libraries:
//! logging to stderr and Ctrl-C. Behind the `cli` feature, so the libraries and the fuzzers
//! stay free of a runtime and a subscriber.

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber, writing to stderr: `RUST_LOG` when set, else
/// `level` (an `EnvFilter` directive); as JSON lines when `json`; coloured only when stderr is
/// a terminal. Call once, from `main`.
pub fn init_tracing(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: a log file or a shipper gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The level of `-v` given `verbose` times: `levels[verbose]`, the last one for any higher
/// count.
pub fn verbosity<'a>(levels: &[&'a str], verbose: u8) -> &'a str {
    levels
        .get(usize::from(verbose))
        .or(levels.last())
        .copied()
        .unwrap_or("warn")
}

/// Raises this process's soft limit on open files to its hard limit, so a server can hold
/// as many connections as its connection limits allow. Returns the new soft limit.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)?;
    }
    // `None` is unlimited.
    Ok(limit.current.unwrap_or(u64::MAX))
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
