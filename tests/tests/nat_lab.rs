//! NAT-lab tests: the real binaries in network namespaces behind real Linux NAT (nftables
//! masquerade), built and torn down by [`bitswarm_tests::netlab`]. Needs root and nftables;
//! without them each test prints why and passes, unless `BITSWARM_NETLAB_REQUIRED=1` (CI sets
//! it), which turns "cannot build the lab" into a failure.
//!
//! Topology: the tracker on `pub1` (public), a seeder on `a1` behind `natA`, a leecher on `b1`
//! behind `natB`, `pub2` as a public peer. Each test has its own lab (namespace prefix), so
//! they run in parallel.
//!
//! `BITSWARM_NAT_ROUNDS=N` repeats the hole-punch scenario N times per transport and prints
//! the success count (for measuring; CI runs one round).

use std::{path::Path, time::Duration};

use bitswarm_protocols::FileId;
use bitswarm_tests::{
    bin, make_file,
    netlab::{lab_or_skip, Host, Lab, NatMode, PUB1_IP},
    Proc,
};

const STEP: Duration = Duration::from_secs(60);
const TRACKER_PORT: u16 = 7000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Tcp,
    Quic,
}

fn tracker_addr(via: Via) -> String {
    match via {
        Via::Tcp => format!("/ip4/{PUB1_IP}/tcp/{TRACKER_PORT}"),
        Via::Quic => format!("/ip4/{PUB1_IP}/udp/{TRACKER_PORT}/quic-v1"),
    }
}

/// Starts the tracker on `pub1` (fixed port, TCP and QUIC) with `extra` flags.
fn start_tracker(lab: &Lab, home: &Path, extra: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = lab.command(Host::Pub1, bin("bitswarm-tracker")?);
    cmd.arg(format!("{PUB1_IP}:{TRACKER_PORT}"))
        .args(["--autonat-private-ips", "--key"])
        .arg(home.join("tracker.key"))
        .args(extra);
    let mut proc = Proc::spawn(cmd, home)?;
    proc.wait_line("listening on ", STEP)?;
    Ok(proc)
}

/// Starts `bitswarm share FILE TRACKER 0.0.0.0:0` on `host`; returns it and the file id.
fn start_seeder(
    lab: &Lab,
    host: Host,
    home: &Path,
    file: &Path,
    via: Via,
) -> anyhow::Result<(Proc, FileId)> {
    let mut cmd = lab.command(host, bin("bitswarm")?);
    cmd.arg("share")
        .arg(file)
        .args([&tracker_addr(via), "0.0.0.0:0"]);
    let mut proc = Proc::spawn(cmd, home)?;
    let line = proc.wait_line("sharing ", STEP)?;
    let id = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
    Ok((proc, id))
}

/// Runs `bitswarm get ID TRACKER 0.0.0.0:0 -o OUT --json --wait SECS` on `host`.
fn get(
    lab: &Lab,
    host: Host,
    home: &Path,
    id: FileId,
    via: Via,
    wait_secs: u64,
) -> anyhow::Result<std::process::Output> {
    let out = home.join("out");
    std::fs::create_dir_all(&out)?;
    let mut cmd = lab.command(host, bin("bitswarm")?);
    cmd.args(["get", &id.to_string(), &tracker_addr(via), "0.0.0.0:0"])
        .args(["--json", "--wait", &wait_secs.to_string(), "-o"])
        .arg(&out);
    bitswarm_tests::run_with_timeout(cmd, home, STEP + Duration::from_secs(wait_secs))
}

/// The `(kind, transport)` of every source in `get --json` output.
fn paths(output: &std::process::Output) -> anyhow::Result<Vec<(String, String)>> {
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let sources = json["sources"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no sources in {json}"))?;
    Ok(sources
        .iter()
        .map(|s| {
            let kind = s["path"]["kind"].as_str().unwrap_or("unknown").to_owned();
            let transport = s["path"]["transport"].as_str().unwrap_or("").to_owned();
            (kind, transport)
        })
        .collect())
}

fn assert_got(output: &std::process::Output, home: &Path, file: &Path) -> anyhow::Result<()> {
    assert!(
        output.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let name = file.file_name().unwrap_or_default();
    assert_eq!(
        std::fs::read(home.join("out").join(name))?,
        std::fs::read(file)?,
        "downloaded bytes differ"
    );
    Ok(())
}

fn rounds() -> usize {
    std::env::var("BITSWARM_NAT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Scenario a: seeder behind cone NAT A, leecher behind cone NAT B. The file completes with
/// identical bytes, and every piece came over a hole-punched connection of `via`.
fn hole_punch(prefix: &str, via: Via) -> anyhow::Result<()> {
    let Some(lab) = lab_or_skip(prefix, NatMode::Cone, NatMode::Cone) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let _tracker = start_tracker(&lab, &home.join("t"), &[])?;
    let file = make_file(home, "holepunch.bin", 3 * 1024 * 1024 + 77, 7)?;
    let (_seeder, id) = start_seeder(&lab, Host::A1, &home.join("s"), &file, via)?;

    let want = match via {
        Via::Tcp => "tcp",
        Via::Quic => "quic",
    };
    let n = rounds();
    let mut punched = 0;
    for round in 0..n {
        let leecher_home = home.join(format!("l{round}"));
        let output = get(&lab, Host::B1, &leecher_home, id, via, 45)?;
        let ok = output.status.success()
            && std::fs::read(leecher_home.join("out").join("holepunch.bin"))?
                == std::fs::read(&file)?;
        let paths = if ok { paths(&output)? } else { Vec::new() };
        let all_punched =
            !paths.is_empty() && paths.iter().all(|(k, t)| k == "hole-punched" && t == want);
        eprintln!(
            "round {round}: ok={ok} paths={paths:?} {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        if ok && all_punched {
            punched += 1;
        }
    }
    eprintln!("hole punch over {want}: {punched}/{n} rounds");
    assert_eq!(
        punched, n,
        "every round completes over a hole-punched {want} connection"
    );
    Ok(())
}

#[test]
fn nat_hole_punch_tcp() -> anyhow::Result<()> {
    hole_punch("bsw-hpt-", Via::Tcp)
}

#[test]
fn nat_hole_punch_quic() -> anyhow::Result<()> {
    hole_punch("bsw-hpq-", Via::Quic)
}

/// Scenario b: NAT A symmetric defeats hole punching. With `--relay-data` the file comes over
/// the relay; without it `get` fails and says why.
#[test]
fn nat_symmetric_falls_back_to_the_relay_or_says_why() -> anyhow::Result<()> {
    let Some(lab) = lab_or_skip("bsw-sym-", NatMode::Symmetric, NatMode::Cone) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let file = make_file(home, "relayed.bin", 2 * 1024 * 1024 + 5, 8)?;

    // Relay carries data: completes, relayed.
    {
        let _tracker = start_tracker(&lab, &home.join("t1"), &["--relay-data"])?;
        let (_seeder, id) = start_seeder(&lab, Host::A1, &home.join("s1"), &file, Via::Tcp)?;
        let leecher = home.join("l1");
        let output = get(&lab, Host::B1, &leecher, id, Via::Tcp, 60)?;
        assert_got(&output, &leecher, &file)?;
        let paths = paths(&output)?;
        assert!(
            paths.iter().all(|(k, _)| k == "relayed"),
            "pieces came over the relay: {paths:?}"
        );
    }

    // Default relay (hole punching only): fails with the reason.
    let _tracker = start_tracker(&lab, &home.join("t2"), &[])?;
    let (_seeder, id) = start_seeder(&lab, Host::A1, &home.join("s2"), &file, Via::Tcp)?;
    let leecher = home.join("l2");
    let output = get(&lab, Host::B1, &leecher, id, Via::Tcp, 25)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "get must fail: {stderr}");
    assert!(
        stderr.contains("hole punching failed") && stderr.contains("--relay-data"),
        "the error says why: {stderr}"
    );
    assert!(
        !leecher.join("out").join("relayed.bin").exists(),
        "no file presented as complete"
    );
    Ok(())
}

/// Scenario c: a public seeder and a leecher behind NAT (direct), and the reverse (the NAT'd
/// seeder reached through the relay, then directly).
#[test]
fn nat_public_and_natted_peers() -> anyhow::Result<()> {
    let Some(lab) = lab_or_skip("bsw-pub-", NatMode::Cone, NatMode::Cone) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let _tracker = start_tracker(&lab, &home.join("t"), &[])?;
    let file = make_file(home, "mixed.bin", 2 * 1024 * 1024 + 9, 9)?;

    let (seeder, id) = start_seeder(&lab, Host::Pub2, &home.join("s1"), &file, Via::Tcp)?;
    let leecher = home.join("l1");
    let output = get(&lab, Host::B1, &leecher, id, Via::Tcp, 45)?;
    assert_got(&output, &leecher, &file)?;
    let p = paths(&output)?;
    assert!(
        p.iter().all(|(k, _)| k == "direct"),
        "a public seeder is dialed directly: {p:?}"
    );
    drop(seeder);

    let file2 = make_file(home, "mixed2.bin", 2 * 1024 * 1024 + 11, 10)?;
    let (_seeder, id2) = start_seeder(&lab, Host::A1, &home.join("s2"), &file2, Via::Tcp)?;
    let leecher = home.join("l2");
    let output = get(&lab, Host::Pub2, &leecher, id2, Via::Tcp, 45)?;
    assert_got(&output, &leecher, &file2)?;
    let p = paths(&output)?;
    assert!(
        !p.is_empty() && p.iter().all(|(k, _)| k == "hole-punched" || k == "direct"),
        "pieces came over a direct connection: {p:?}"
    );
    Ok(())
}

/// Scenario d: the tracker restarts mid-session; the NAT'd seeder reserves and announces again,
/// and a later get succeeds.
#[test]
fn nat_tracker_restart() -> anyhow::Result<()> {
    let Some(lab) = lab_or_skip("bsw-rst-", NatMode::Cone, NatMode::Cone) else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let file = make_file(home, "restart.bin", 2 * 1024 * 1024 + 13, 11)?;
    let tracker_home = home.join("t");
    let mut tracker = start_tracker(&lab, &tracker_home, &[])?;
    let (_seeder, id) = start_seeder(&lab, Host::A1, &home.join("s"), &file, Via::Tcp)?;
    tracker.kill();
    // Same key and address: the seeder's redial reaches the new instance, whose index is empty.
    std::thread::sleep(Duration::from_secs(2));
    let _tracker = start_tracker(&lab, &tracker_home, &[])?;
    // The seeder redials with backoff (at most a few seconds here) and announces again.
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let mut search = lab.command(Host::B1, bin("bitswarm")?);
        search.args([
            "search",
            "restart.bin",
            "--tracker",
            &tracker_addr(Via::Tcp),
        ]);
        let out = bitswarm_tests::run_with_timeout(search, &home.join("q"), STEP)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success()
            && stdout.contains("restart.bin")
            && !stdout.contains("no files match")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the seeder did not announce again after the restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let leecher = home.join("l");
    let output = get(&lab, Host::B1, &leecher, id, Via::Tcp, 45)?;
    assert_got(&output, &leecher, &file)?;
    let p = paths(&output)?;
    assert!(
        p.iter().all(|(k, _)| k == "hole-punched"),
        "after the restart the seeder is reached through a punched hole: {p:?}"
    );
    Ok(())
}
