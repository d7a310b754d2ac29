//! Self-test of the NAT lab (`bitswarm_tests::netlab`): it builds, NATs outbound traffic,
//! drops unsolicited inbound traffic, and leaves nothing behind. Skipped unless root with `ip`
//! and `nft` (or fails, with `BITSWARM_NETLAB_REQUIRED=1`). Uses python3 as the TCP probe.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bitswarm_tests::{
    netlab::{self, Host, Lab, NatMode},
    Proc,
};

/// `serve PORT LIFE`: prints READY, then for each connection "FROM ip:port" (and sends it as
/// "OBS ip:port"), until LIFE seconds passed. `try HOST PORT TIMEOUT`: prints CONNECTED <line>,
/// TIMEOUT, REFUSED or ERROR:<why>.
const PROBE_PY: &str = r#"
import os, socket, sys, time
def out(*a): print(*a, flush=True)
if sys.argv[1] == "serve":
    port, end = int(sys.argv[2]), time.time() + float(sys.argv[3])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8); s.settimeout(0.2); out("READY")
    while time.time() < end:
        try: c, a = s.accept()
        except socket.timeout: continue
        out(f"FROM {a[0]}:{a[1]}"); c.sendall(f"OBS {a[0]}:{a[1]}\n".encode()); c.close()
else:
    host, port, t = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(); s.settimeout(t)
    try: s.connect((host, port)); out("CONNECTED " + s.makefile().readline().strip())
    except socket.timeout: out("TIMEOUT")
    except ConnectionRefusedError: out("REFUSED")
    except OSError as e: out("ERROR:" + (os.strerror(e.errno) if e.errno else str(e)))
"#;

/// Starts a probe server in `host` (the harness's [`Proc`]: ended on drop, stdout lines
/// readable with `wait_line`) and waits until it listens.
fn start_server(lab: &Lab, host: Host, port: u16) -> anyhow::Result<Proc> {
    let mut cmd = lab.command(host, "python3");
    cmd.args(["-c", PROBE_PY, "serve", &port.to_string(), "12"]);
    let mut server = Proc::spawn(cmd, &std::env::temp_dir()).context("spawning probe server")?;
    server.wait_line("READY", Duration::from_secs(5))?;
    Ok(server)
}

/// Runs the `try` probe in `from`'s namespace (`ip netns exec NS ...`).
fn try_connect(mut cmd: Command, host: &str, port: u16, secs: f64) -> anyhow::Result<String> {
    let out = cmd
        .args([
            "-c",
            PROBE_PY,
            "try",
            host,
            &port.to_string(),
            &secs.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .context("running probe client")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn lab_builds_and_nats() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let Some(mut lab) = netlab::lab_or_skip("bswt-", NatMode::Cone, NatMode::Cone) else {
        return Ok(());
    };
    eprintln!("lab up in {:?}", t0.elapsed());
    {
        // Outbound: a1 -> pub1 works, and pub1 sees natA's WAN address.
        let mut pub1 = start_server(&lab, Host::Pub1, 7000)?;
        let got = try_connect(lab.command(Host::A1, "python3"), netlab::PUB1_IP, 7000, 3.0)?;
        eprintln!("a1 -> pub1: {got}");
        if !got.starts_with(&format!("CONNECTED OBS {}:", netlab::NATA_WAN_IP)) {
            bail!("a1 -> pub1: {got}");
        }
        let from = pub1.wait_line("FROM ", Duration::from_secs(3))?;
        eprintln!("pub1 saw: {from}");
        if !from.starts_with(&format!("FROM {}:", netlab::NATA_WAN_IP)) {
            bail!("pub1 saw {from}, want source {}", netlab::NATA_WAN_IP);
        }

        // Inbound: a1 listens (control: its router reaches it), pub1 cannot reach it.
        let _a1 = start_server(&lab, Host::A1, 8000)?;
        let mut nat_a = Command::new("ip");
        nat_a.args(["netns", "exec", "bswt-natA", "python3"]);
        let got = try_connect(nat_a, netlab::A1_IP, 8000, 2.0)?;
        eprintln!("control natA -> a1: {got}");
        if !got.starts_with("CONNECTED") {
            bail!("control natA -> a1:8000: {got}");
        }
        let got = try_connect(lab.command(Host::Pub1, "python3"), netlab::A1_IP, 8000, 3.0)?;
        eprintln!("pub1 -> a1 (no route): {got}");
        if got.starts_with("CONNECTED") || got.is_empty() {
            bail!("pub1 -> a1 without route: {got:?}");
        }
        // Worst case: pub1 routes the LAN through natA; the NAT must still drop it.
        let st = lab
            .command(Host::Pub1, "ip")
            .args(["route", "add", "198.19.1.0/24", "via", netlab::NATA_WAN_IP])
            .status()?;
        if !st.success() {
            bail!("adding route in pub1: {st}");
        }
        let got = try_connect(lab.command(Host::Pub1, "python3"), netlab::A1_IP, 8000, 2.0)?;
        eprintln!("pub1 -> a1 (routed via natA): {got}");
        if got != "TIMEOUT" {
            bail!("pub1 -> a1 via natA: {got:?}, want TIMEOUT");
        }
    }

    let ns = lab.ns(Host::A1);
    if ns != "bswt-a1" {
        bail!("ns(A1) = {ns}");
    }
    lab.down()?;
    drop(lab);
    let list = Command::new("ip").args(["netns", "list"]).output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    if list.contains("bswt-") {
        bail!("namespaces left after down: {list}");
    }
    eprintln!("total {:?}", t0.elapsed());
    Ok(())
}
