//! The tracker's default log shows its traffic, one line per event, as the prototype's did:
//! registrations, announces, lookups, searches and evictions; `--json-logs` gives the same as
//! JSON lines.

use std::{fs, process::Command, time::Duration};

use bitswarm_tests::{
    bin, get_cmd, init_tracing, make_file, run_with_timeout, share_bin, tracker_bin_logged, within,
    STEP,
};

/// Shares a file, fetches it, searches for it and stops the seeder; returns the tracker's log.
async fn traffic(extra: &[&str]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("tracker.log");
    let (tracker, plain, _) = tracker_bin_logged(dir.path(), &log, extra)?;
    let path = make_file(dir.path(), "logged.bin", 1 << 20, 41)?;
    let (seeder, _) = share_bin(&path, &plain, dir.path())?;
    let out = dir.path().join("out");
    fs::create_dir_all(&out)?;
    let output = run_with_timeout(get_cmd("logged.bin", &plain, &out, &[])?, dir.path(), STEP)?;
    anyhow::ensure!(
        output.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut search = Command::new(bin("bitswarm")?);
    search.args(["search", "logged", &plain]);
    run_with_timeout(search, dir.path(), STEP)?;
    drop(seeder);
    // The eviction of the seeder whose connection just closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(tracker);
    Ok(fs::read_to_string(&log)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_tracker_log_shows_every_announce_lookup_search_and_eviction(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let log = traffic(&[]).await?;
        for what in [
            "peer registered",
            "announce",
            "lookup by name",
            "search",
            "peer evicted",
        ] {
            assert!(
                log.lines()
                    .any(|l| l.contains(" INFO ") && l.contains(what)),
                "no {what:?} line at info in:\n{log}"
            );
        }
        assert!(
            log.lines()
                .any(|l| l.contains("lookup by name") && l.contains("name=logged.bin")),
            "the lookup names the file:\n{log}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let log = traffic(&["--json-logs"]).await?;
        let mut messages = Vec::new();
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("not JSON ({e}): {line}"))?;
            if let Some(m) = value.pointer("/fields/message").and_then(|m| m.as_str()) {
                messages.push(m.to_owned());
            }
        }
        assert!(
            messages.iter().any(|m| m == "peer registered"),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m == "lookup by name"),
            "{messages:?}"
        );
        Ok(())
    })
    .await
}
