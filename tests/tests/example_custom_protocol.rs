//! The `custom_protocol` example: a preview protocol of its own, plugged into a peer and into
//! the tracker through their extension slots, run as the example's binary.

use std::{fs, process::Command, time::Duration};

use bitswarm_tests::{example_bin, make_file, run_with_timeout, Proc, STEP};

const RUN: Duration = Duration::from_secs(60);

#[test]
fn the_demo_previews_a_file_from_the_tracker_and_a_provider_then_downloads_it() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let out = run_with_timeout(
        Command::new(example_bin("custom_protocol")?),
        dir.path(),
        RUN,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the demo failed");
    assert!(stdout.contains("is \"preview-demo.txt\", 52890 bytes, 1 seeding"));
    assert!(stdout.contains("preview from 12D3"));
    assert!(stdout.contains("preview matches the downloaded file"));
    Ok(())
}

#[test]
fn separate_processes_preview_through_the_tracker_and_the_sharer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let bin = example_bin("custom_protocol")?;
    let mut cmd = Command::new(&bin);
    cmd.args(["tracker", "127.0.0.1:0"]);
    let mut tracker = Proc::spawn(cmd, home)?;
    let line = tracker.wait_line("tracker ", STEP)?;
    let addr = line.trim_start_matches("tracker ").trim().to_owned();

    let path = make_file(home, "sample.bin", 300_000, 77)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("share").arg(&path).args([&addr, "127.0.0.1:0"]);
    let mut sharer = Proc::spawn(cmd, home)?;
    let line = sharer.wait_line("sharing ", STEP)?;
    let id = line.trim_start_matches("sharing ").trim().to_owned();

    let got = home.join("got");
    fs::create_dir_all(&got)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["preview", "sample.bin", &addr, "127.0.0.1:0", "--get"])
        .arg(&got);
    let out = run_with_timeout(cmd, home, RUN)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "preview failed");
    // The tracker answered from its index, the sharer with the file's first 64 bytes.
    assert!(stdout.contains(&format!(
        "tracker says {id} is \"sample.bin\", 300000 bytes"
    )));
    let original = fs::read(&path)?;
    let shown = format!("{:?}", String::from_utf8_lossy(&original[..64]));
    assert!(
        stdout.contains(&shown),
        "the preview is not the file's first 64 bytes"
    );
    assert_eq!(fs::read(got.join("sample.bin"))?, original);
    drop((tracker, sharer));
    Ok(())
}
