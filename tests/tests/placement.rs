//! A finished file is always the file asked for, and the network never chooses where it lands.
//! Each case runs the real binaries, where a user would meet it: two downloads that would share
//! a name, a file already there, hostile names, collections whose entries look like temporary
//! files, a planted symbolic link, a full disk and a file larger than the free space.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use bitswarm_node::part_name;
use bitswarm_protocols::{tracker::AnnouncedFile, transfer, FileId, FileName, Manifest};
use bitswarm_tests::{
    get_cmd, hostile::HostilePeer, make_file, run_with_timeout, share_bin, tracker_bin,
    tracker_bin_full, Proc, Tmpfs, STEP,
};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn id_of(path: &Path) -> anyhow::Result<FileId> {
    Ok(FileId::of(&std::fs::read(path)?))
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// Shares `path` and returns the seeder with the file's id (checked against the bytes).
fn seed(path: &Path, tracker: &str, home: &Path) -> anyhow::Result<(Proc, FileId)> {
    let (proc, line) = share_bin(path, tracker, home)?;
    let id: FileId = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
    anyhow::ensure!(id == id_of(path)?, "share printed the wrong id: {line}");
    Ok((proc, id))
}

/// Runs two gets at once and returns both outputs.
fn race(
    a: std::process::Command,
    b: std::process::Command,
    home: &Path,
) -> anyhow::Result<(Output, Output)> {
    let home_a = home.to_owned();
    let first = std::thread::spawn(move || run_with_timeout(a, &home_a, STEP));
    let second = run_with_timeout(b, home, STEP)?;
    let first = first
        .join()
        .map_err(|_| anyhow::anyhow!("the first get's thread panicked"))??;
    for o in [&first, &second] {
        eprintln!("get: {} {}{}", o.status, stdout(o), stderr(o));
    }
    Ok((first, second))
}

#[test]
fn two_gets_of_different_files_with_one_name_never_mix_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker) = tracker_bin(home)?;
    let (src1, src2) = (home.join("src1"), home.join("src2"));
    std::fs::create_dir_all(&src1)?;
    std::fs::create_dir_all(&src2)?;
    let size = 24 << 20;
    let f1 = make_file(&src1, "data.bin", size, 1)?;
    let f2 = make_file(&src2, "data.bin", size, 2)?;
    let (_s1, id1) = seed(&f1, &tracker, home)?;
    let (_s2, id2) = seed(&f2, &tracker, home)?;

    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let (a, b) = race(
        get_cmd(&id1.to_string(), &tracker, &out, &[])?,
        get_cmd(&id2.to_string(), &tracker, &out, &[])?,
        home,
    )?;
    let ok: Vec<(&Output, FileId)> = [(&a, id1), (&b, id2)]
        .into_iter()
        .filter(|(o, _)| o.status.success())
        .collect();
    assert_eq!(
        ok.len(),
        1,
        "exactly one takes the name:\n{}\n{}",
        stderr(&a),
        stderr(&b)
    );
    let (winner, winner_id) = ok[0];
    let (loser, loser_id) = if winner_id == id1 {
        (&b, id2)
    } else {
        (&a, id1)
    };
    assert!(
        stdout(winner).contains(&winner_id.to_string()),
        "{}",
        stdout(winner)
    );
    assert_eq!(
        id_of(&out.join("data.bin"))?,
        winner_id,
        "the final name holds exactly the file its get reported"
    );
    let msg = stderr(loser);
    assert!(
        msg.contains("data.bin exists and is not this file") && msg.contains("--name"),
        "clear refusal: {msg}"
    );
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");

    // The refused get, under a name of the user's choosing; what it verified is not fetched
    // again if it got that far.
    let again = run_with_timeout(
        get_cmd(
            &loser_id.to_string(),
            &tracker,
            &out,
            &["--name", "other.bin", "--json"],
        )?,
        home,
        STEP,
    )?;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(id_of(&out.join("other.bin"))?, loser_id);
    assert_eq!(id_of(&out.join("data.bin"))?, winner_id, "untouched");
    assert_eq!(names(&out)?, ["data.bin", "other.bin"], "no leftovers");
    Ok(())
}

#[test]
fn two_gets_of_one_file_into_one_directory_never_break_each_other() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker) = tracker_bin(home)?;
    let file = make_file(home, "movie.mkv", 48 << 20, 3)?;
    let (_seeder, id) = seed(&file, &tracker, home)?;
    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let (a, b) = race(
        get_cmd(&id.to_string(), &tracker, &out, &[])?,
        get_cmd("movie.mkv", &tracker, &out, &[])?,
        home,
    )?;
    for o in [&a, &b] {
        let msg = stderr(o);
        assert!(
            o.status.success() || msg.contains("another download of this file into"),
            "either done, or refused clearly while the other runs: {msg}"
        );
    }
    assert!(a.status.success() || b.status.success(), "one finished");
    assert_eq!(id_of(&out.join("movie.mkv"))?, id);
    assert_eq!(names(&out)?, ["movie.mkv"], "no leftovers");
    Ok(())
}

#[test]
fn a_present_file_is_not_fetched_again_and_a_different_one_is_never_replaced() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker) = tracker_bin(home)?;
    let file = make_file(home, "notes.pdf", 3 << 20, 4)?;
    let (seeder, id) = seed(&file, &tracker, home)?;
    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let first = run_with_timeout(get_cmd("notes.pdf", &tracker, &out, &[])?, home, STEP)?;
    assert!(first.status.success(), "{}", stderr(&first));

    let again = run_with_timeout(get_cmd("notes.pdf", &tracker, &out, &[])?, home, STEP)?;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).starts_with("already present: "),
        "{}",
        stdout(&again)
    );
    let json = run_with_timeout(
        get_cmd(&id.to_string(), &tracker, &out, &["--json"])?,
        home,
        STEP,
    )?;
    assert!(json.status.success(), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    assert_eq!(v["present"], true, "{v}");
    assert_eq!(v["fetched"], 0, "{v}");

    // With the only provider frozen (still listed, answering nothing) it is still there:
    // found before any provider is asked.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &seeder.id().to_string()])
        .status()?;
    assert!(stopped.success());
    let started = Instant::now();
    let alone = run_with_timeout(
        get_cmd("notes.pdf", &tracker, &out, &["--wait", "20"])?,
        home,
        STEP,
    )?;
    assert!(alone.status.success(), "{}", stderr(&alone));
    assert!(stdout(&alone).starts_with("already present: "));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not after waiting for a provider: {:?}",
        started.elapsed()
    );
    let resumed = std::process::Command::new("kill")
        .args(["-CONT", &seeder.id().to_string()])
        .status()?;
    assert!(resumed.success());

    // Someone else's file under that name.
    let other = home.join("other");
    std::fs::create_dir_all(&other)?;
    std::fs::write(other.join("notes.pdf"), b"my own notes")?;
    let refused = run_with_timeout(get_cmd("notes.pdf", &tracker, &other, &[])?, home, STEP)?;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("exists and is not this file"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read(other.join("notes.pdf"))?, b"my own notes");
    assert_eq!(names(&other)?, ["notes.pdf"], "nothing written beside it");

    // A limit on what a get accepts, checked before anything is fetched.
    let small = run_with_timeout(
        get_cmd("notes.pdf", &tracker, &other, &["--max-size", "1M"])?,
        home,
        STEP,
    )?;
    assert!(!small.status.success());
    assert!(
        stderr(&small).contains("more than the limit of 1048576 bytes"),
        "{}",
        stderr(&small)
    );
    assert_eq!(names(&other)?, ["notes.pdf"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_network_are_made_safe_and_printed_escaped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker, full) = tracker_bin_full(home)?;
    let src = home.join("src");
    std::fs::create_dir_all(&src)?;
    let hidden = make_file(&src, ".bash_login", 1000, 5)?;
    let (_s1, hidden_id) = seed(&hidden, &tracker, home)?;

    // The tracker indexes no name with control characters, but a file's id covers its bytes,
    // not its name: a peer announces an ordinary name and serves a manifest named with
    // terminal escapes.
    let plain = make_file(&src, "plain.txt", 2000, 6)?;
    let data = std::fs::read(&plain)?;
    let manifest = Manifest::of_bytes(FileName::new("evil\x1b[2J\x1b]0;pwned\x07.txt")?, &data)?;
    let evil_id = manifest.id();
    let wire = manifest.to_wire();
    let piece = manifest.lengths().piece_size() as usize;
    let announced = AnnouncedFile {
        id: evil_id,
        name: FileName::new("plain.txt")?,
        size: data.len() as u64,
        complete: true,
    };
    let _liar = HostilePeer::start(
        &full,
        vec![announced],
        Box::new(move |request| match request {
            transfer::Request::Manifest { .. } => Some(transfer::Response::Manifest(wire.clone())),
            transfer::Request::Have { .. } => None,
            transfer::Request::Piece { index, .. } => {
                let start = (*index as usize * piece).min(data.len());
                let end = (start + piece).min(data.len());
                Some(transfer::Response::Piece(data[start..end].to_vec()))
            }
        }),
    )
    .await?;

    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    for id in [hidden_id, evil_id] {
        let get = get_cmd(&id.to_string(), &tracker, &out, &[])?;
        let home = home.to_owned();
        let got = tokio::task::spawn_blocking(move || run_with_timeout(get, &home, STEP)).await??;
        assert!(got.status.success(), "{}", stderr(&got));
        let printed = stdout(&got) + &stderr(&got);
        assert!(
            !printed.contains('\x1b') && !printed.contains('\x07'),
            "nothing raw reaches the terminal: {printed:?}"
        );
    }
    assert_eq!(
        names(&out)?,
        ["_bash_login", "evil_[2J_]0;pwned_.txt"],
        "no hidden file, no control character in a name"
    );
    assert_eq!(id_of(&out.join("_bash_login"))?, hidden_id);
    assert_eq!(id_of(&out.join("evil_[2J_]0;pwned_.txt"))?, evil_id);

    // Sharing such a name is refused at once, with the reason.
    let evil = make_file(&src, "evil\x1b[2J.txt", 10, 7)?;
    let mut share = std::process::Command::new(bitswarm_tests::bin("bitswarm")?);
    share
        .arg("share")
        .arg(&evil)
        .args([tracker.as_str(), "127.0.0.1:0", "--ephemeral"]);
    let home2 = home.to_owned();
    let refused =
        tokio::task::spawn_blocking(move || run_with_timeout(share, &home2, STEP)).await??;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("control characters") && !stderr(&refused).contains('\x1b'),
        "{}",
        stderr(&refused)
    );
    Ok(())
}

#[test]
fn a_collection_with_entries_named_like_temporary_files_arrives_whole_and_never_merges(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker) = tracker_bin(home)?;
    let tree = home.join("src").join("pack");
    std::fs::create_dir_all(tree.join("sub"))?;
    make_file(&tree, "a", 100_000, 7)?;
    make_file(&tree, "a.part", 200_000, 8)?;
    make_file(&tree, "a.part.resume", 300, 9)?;
    make_file(&tree.join("sub"), "a.part", 400, 10)?;
    make_file(&tree, ".secret", 10, 11)?;
    let (mut seeder, line) = share_bin(&tree, &tracker, home)?;
    let id = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    seeder.wait_line("skipped 1 hidden files", STEP)?;

    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let got = run_with_timeout(get_cmd(&id, &tracker, &out, &[])?, home, STEP)?;
    assert!(got.status.success(), "{}", stderr(&got));
    let pack = out.join("pack");
    assert_eq!(names(&out)?, ["pack"], "no temporary directory left");
    assert_eq!(names(&pack)?, ["a", "a.part", "a.part.resume", "sub"]);
    for rel in ["a", "a.part", "a.part.resume", "sub/a.part"] {
        assert_eq!(
            std::fs::read(pack.join(rel))?,
            std::fs::read(tree.join(rel))?,
            "{rel}"
        );
    }

    // Again: already there, nothing fetched.
    let again = run_with_timeout(get_cmd(&id, &tracker, &out, &["--json"])?, home, STEP)?;
    assert!(again.status.success(), "{}", stderr(&again));
    let v: serde_json::Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(
        (v["present"].clone(), v["fetched"].clone()),
        (true.into(), 0.into())
    );

    // A different directory of that name is not merged into unless asked.
    let other = home.join("other");
    std::fs::create_dir_all(other.join("pack"))?;
    std::fs::write(other.join("pack/mine.txt"), b"mine")?;
    let refused = run_with_timeout(get_cmd(&id, &tracker, &other, &[])?, home, STEP)?;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("exists and is not this file"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(names(&other.join("pack"))?, ["mine.txt"], "untouched");
    assert_eq!(
        names(&other)?,
        ["pack"],
        "no temporary directory left behind"
    );
    let merged = run_with_timeout(get_cmd(&id, &tracker, &other, &["--merge"])?, home, STEP)?;
    assert!(merged.status.success(), "{}", stderr(&merged));
    assert_eq!(
        names(&other.join("pack"))?,
        ["a", "a.part", "a.part.resume", "mine.txt", "sub"]
    );
    Ok(())
}

#[test]
fn a_symlink_planted_at_the_temporary_name_is_not_followed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let (_tracker, tracker) = tracker_bin(home)?;
    let file = make_file(home, "payload.bin", 2 << 20, 12)?;
    let (_seeder, id) = seed(&file, &tracker, home)?;
    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let canary = home.join("canary");
    std::fs::write(&canary, b"do not touch")?;
    std::os::unix::fs::symlink(&canary, out.join(part_name(&id)))?;

    let got = run_with_timeout(get_cmd("payload.bin", &tracker, &out, &[])?, home, STEP)?;
    assert!(!got.status.success());
    assert!(
        stderr(&got).contains("is a symbolic link or not a regular file"),
        "{}",
        stderr(&got)
    );
    assert_eq!(std::fs::read(&canary)?, b"do not touch");
    assert!(!out.join("payload.bin").exists());
    Ok(())
}

/// Bytes allocated to `path` (0 if missing).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Fills the file system of `dir` until less than 256 KiB is free, with `dir/filler`.
fn fill(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let chunk = vec![0xa5u8; 1 << 20];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    let small = vec![0xa5u8; 4096];
    while file.write_all(&small).is_ok() {}
    Ok(path)
}

#[test]
fn a_full_disk_fails_clearly_keeps_the_part_file_and_a_later_run_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let mount = home.join("small");
    std::fs::create_dir_all(&mount)?;
    let Some(_tmpfs) = Tmpfs::mount_or_skip(&mount, 64 << 20) else {
        return Ok(());
    };
    let (_tracker, tracker) = tracker_bin(home)?;
    let size = 48 << 20;
    let file = make_file(home, "image.raw", size, 13)?;
    let (_seeder, id) = seed(&file, &tracker, home)?;

    // Larger than the free space: refused before anything is written.
    std::fs::write(mount.join("filler"), vec![0u8; 32 << 20])?;
    let refused = run_with_timeout(get_cmd("image.raw", &tracker, &mount, &[])?, home, STEP)?;
    assert!(!refused.status.success());
    let msg = stderr(&refused);
    assert!(
        msg.contains("not enough space") && msg.contains(&mount.display().to_string()),
        "{msg}"
    );
    assert_eq!(names(&mount)?, ["filler"], "nothing written");
    std::fs::remove_file(mount.join("filler"))?;

    // The disk fills up while the download runs.
    let part = mount.join(part_name(&id));
    let mut cmd = get_cmd("image.raw", &tracker, &mount, &[])?;
    cmd.env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut get = cmd.spawn()?;
    let deadline = Instant::now() + STEP;
    while allocated(&part) < 2 << 20 {
        if Instant::now() > deadline || get.try_wait()?.is_some() {
            let _ = get.kill();
            anyhow::bail!(
                "no piece written, or the get ended first: {:?}",
                get.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let filler = fill(&mount)?;
    while get.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = get.kill();
            anyhow::bail!("the get did not end on a full disk");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = get.wait_with_output()?;
    assert!(!output.status.success(), "a get on a full disk fails");
    let msg = stderr(&output);
    assert!(
        msg.contains("disk full") && msg.contains(&mount.display().to_string()),
        "names the file system: {msg}"
    );
    assert!(part.exists(), ".part kept");
    assert!(!mount.join("image.raw").exists());

    // Space freed: the next run resumes.
    std::fs::remove_file(filler)?;
    let done = run_with_timeout(
        get_cmd("image.raw", &tracker, &mount, &["--json"])?,
        home,
        STEP,
    )?;
    assert!(done.status.success(), "{}", stderr(&done));
    let v: serde_json::Value = serde_json::from_slice(&done.stdout)?;
    let (resumed, fetched) = (
        v["resumed"].as_u64().unwrap_or(0),
        v["fetched"].as_u64().unwrap_or(0),
    );
    assert!(resumed >= 2 << 20, "verified pieces kept: {v}");
    assert_eq!(resumed + fetched, size as u64, "none fetched twice: {v}");
    assert_eq!(id_of(&mount.join("image.raw"))?, id);
    assert_eq!(names(&mount)?, ["image.raw"]);
    Ok(())
}
