//! The real binaries, run as a user would, with the Python prototype's usage:
//! `bitswarm-tracker IP:PORT`, `bitswarm share FILE TRACKER LISTEN`, `bitswarm get NAME TRACKER
//! LISTEN`. Needs `cargo build --workspace --bins` first (the README's test command does it).

use std::{process::Command, time::Duration};

use bitswarm_protocols::FileId;
use bitswarm_tests::{bin, make_file, run_with_timeout, tracker_bin as tracker, Proc, STEP};

#[test]
fn prototype_usage_share_then_get_by_name_gives_identical_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker_addr) = tracker(home)?;
    let file = make_file(home, "song.ogg", 2 * 1024 * 1024 + 333, 42)?;

    let mut share = Command::new(bin("bitswarm")?);
    share
        .arg("share")
        .arg(&file)
        .args([&tracker_addr, "127.0.0.1:0"]);
    let mut seeder = Proc::spawn(share, home)?;
    let line = seeder.wait_line("sharing ", STEP)?;
    let id: FileId = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
    assert_eq!(id, FileId::of(&std::fs::read(&file)?));

    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let mut get = Command::new(bin("bitswarm")?);
    get.args(["get", "song.ogg", &tracker_addr, "127.0.0.1:0", "-o"])
        .arg(&out);
    let output = run_with_timeout(get, home, STEP)?;
    assert!(
        output.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(out.join("song.ogg"))?, std::fs::read(&file)?);

    // The same file by content id, as --json.
    let out2 = home.join("out2");
    std::fs::create_dir_all(&out2)?;
    let mut get = Command::new(bin("bitswarm")?);
    get.args([
        "get",
        &id.to_string(),
        "--tracker",
        &tracker_addr,
        "--json",
        "-o",
    ])
    .arg(&out2);
    let output = run_with_timeout(get, home, STEP)?;
    assert!(
        output.status.success(),
        "get by id failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(json["id"], id.to_string());
    assert_eq!(std::fs::read(out2.join("song.ogg"))?, std::fs::read(&file)?);

    let mut stats = Command::new(bin("bitswarm")?);
    stats.args(["stats", &tracker_addr, "--json"]);
    let output = run_with_timeout(stats, home, STEP)?;
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(json["files"], 1);
    assert!(
        json["peers"].as_u64() >= Some(1),
        "the seeder is a live peer: {json}"
    );

    let mut search = Command::new(bin("bitswarm")?);
    search.args(["search", "SONG", &tracker_addr]);
    let output = run_with_timeout(search, home, STEP)?;
    assert!(String::from_utf8_lossy(&output.stdout).contains("song.ogg"));
    Ok(())
}

/// Runs `bitswarm ARGS`, expects failure within `STEP`, and returns its stderr.
fn expect_failure(home: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin("bitswarm")?);
    cmd.args(args);
    let output = run_with_timeout(cmd, home, STEP)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} succeeded");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one-line error: {stderr}"
    );
    Ok(stderr)
}

#[test]
fn user_errors_exit_non_zero_with_one_clear_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (mut tracker, tracker_addr) = tracker(home)?;

    let err = expect_failure(
        home,
        &[
            "get",
            "missing.iso",
            &tracker_addr,
            "127.0.0.1:0",
            "-o",
            ".",
        ],
    )?;
    assert!(err.contains("unknown file"), "{err}");

    let err = expect_failure(home, &["get", "x.iso", "300.1.1.1:7000"])?;
    assert!(err.contains("bad address"), "{err}");

    tracker.kill();
    let err = expect_failure(home, &["stats", &tracker_addr])?;
    assert!(err.contains("tracker unreachable"), "{err}");
    let err = expect_failure(home, &["get", "x.iso", &tracker_addr, "127.0.0.1:0"])?;
    assert!(err.contains("tracker unreachable"), "{err}");
    Ok(())
}

#[test]
fn tracker_refuses_a_bad_listen_address() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(bin("bitswarm-tracker")?);
    cmd.arg("not-an-address");
    let output = run_with_timeout(cmd, dir.path(), STEP)?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad address"));
    Ok(())
}

#[test]
fn a_get_killed_with_sigkill_resumes_without_fetching_verified_pieces_again() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker_addr) = tracker(home)?;
    let size = 256 * 1024 * 1024 + 5;
    let file = make_file(home, "disk.img", size, 77)?;
    let mut share = Command::new(bin("bitswarm")?);
    share
        .arg("share")
        .arg(&file)
        .args([&tracker_addr, "127.0.0.1:0", "--ephemeral"]);
    let mut seeder = Proc::spawn(share, home)?;
    seeder.wait_line("sharing ", STEP)?;

    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let get = || -> anyhow::Result<Command> {
        let mut get = Command::new(bin("bitswarm")?);
        get.args([
            "get",
            "disk.img",
            &tracker_addr,
            "127.0.0.1:0",
            "--json",
            "--ephemeral",
            "-o",
        ])
        .arg(&out);
        Ok(get)
    };
    let id = FileId::of(&std::fs::read(&file)?);
    let part = out.join(bitswarm_node::part_name(&id));
    // Some pieces are on disk once the sparse .part file has blocks allocated.
    let written = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&part).is_ok_and(|m| m.blocks() * 512 >= 16 << 20)
    };
    let mut first = Proc::spawn(get()?, home)?;
    let deadline = std::time::Instant::now() + STEP;
    while !written() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no pieces were written"
        );
        anyhow::ensure!(
            !out.join("disk.img").exists(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill(); // SIGKILL: no cleanup
    assert!(!out.join("disk.img").exists(), "killed mid-transfer");

    let output = run_with_timeout(get()?, home, STEP)?;
    assert!(
        output.status.success(),
        "resumed get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let (resumed, fetched) = (
        json["resumed"].as_u64().unwrap_or(0),
        json["fetched"].as_u64().unwrap_or(0),
    );
    assert!(resumed > 0, "pieces from the killed run were kept: {json}");
    assert_eq!(
        resumed + fetched,
        size as u64,
        "no verified piece fetched twice: {json}"
    );
    assert_eq!(FileId::of(&std::fs::read(out.join("disk.img"))?), id);
    assert!(!part.exists(), "the .part file took the final name");
    assert_eq!(std::fs::read_dir(&out)?.count(), 1, "nothing else left");
    Ok(())
}
