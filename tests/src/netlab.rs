//! A NAT test lab made of Linux network namespaces: a Rust port of
//! `/work/shared/netlab/netlab.sh` (`up` and `down`, nft backend), so that tests build and
//! tear down their own lab without the script.
//!
//! ```text
//!                   "internet" 198.18.0.0/24  (bridge nl-br0 in namespace <P>wan)
//!       +--------------+--------------+-------------------+-------------------+
//!    pub1 .10       pub2 .11     natA WAN .2           natB WAN .3
//!                                    | masquerade          | masquerade
//!                                    | LAN 198.19.1.1/24   | LAN 198.19.2.1/24
//!                                   a1 198.19.1.10        b1 198.19.2.10
//! ```
//!
//! Only namespace names carry the prefix `P` (`Pwan`, `Ppub1`, `Ppub2`, `PnatA`, `PnatB`,
//! `Pa1`, `Pb1`); interface names inside them are fixed (`nl-wan0`, `nl-lan0`, `nl-eth0`, `nl-br0`,
//! `nl-p-*`), so labs with different prefixes coexist with the same addresses.
//!
//! Containment, as in the script: every veth end is created directly inside a lab namespace
//! (nothing in the root namespace), routers and public hosts have no default route, `a1`/`b1`
//! route only to their own router, every `nft` and `/proc/sys` write runs through
//! `ip netns exec <lab ns>`, and `ip_forward=1` is set only in the routers. IPv6 is disabled in
//! every lab namespace. All lab addresses are in 198.18.0.0/15, which rust-libp2p does not
//! count as global (see the script's README).
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Every external command terminates on its
//! own; the only wait (for processes to exit on teardown) is bounded to 10 × 0.2 s.

use std::{
    ffi::OsStr,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// Address of `pub1` on the "internet".
pub const PUB1_IP: &str = "198.18.0.10";
/// Address of `pub2` on the "internet".
pub const PUB2_IP: &str = "198.18.0.11";
/// WAN address of router `natA`: what `pub1`/`pub2` see as the source of `a1`.
pub const NATA_WAN_IP: &str = "198.18.0.2";
/// WAN address of router `natB`: what `pub1`/`pub2` see as the source of `b1`.
pub const NATB_WAN_IP: &str = "198.18.0.3";
/// Address of `a1` on the LAN behind `natA`.
pub const A1_IP: &str = "198.19.1.10";
/// Address of `b1` on the LAN behind `natB`.
pub const B1_IP: &str = "198.19.2.10";

const NATA_LAN_IP: &str = "198.19.1.1";
const NATB_LAN_IP: &str = "198.19.2.1";

/// Every namespace (suffix) of a lab, in the order the script's `down` removes them.
const ALL_HOSTS: [&str; 7] = ["wan", "pub1", "pub2", "natA", "natB", "a1", "b1"];

/// Env var: when `"1"`, [`lab_or_skip`] panics instead of skipping (CI sets it).
const REQUIRED_ENV: &str = "BITSWARM_NETLAB_REQUIRED";

/// Serializes namespace creation and removal within this process: tests run in parallel and
/// the first `ip netns add` sets up the `/run/netns` mount, which should not race.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// NAT behaviour of a router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatMode {
    /// `masquerade`: port-preserving, endpoint-independent mapping; hole punching works.
    Cone,
    /// `masquerade random`: a random port per connection; hole punching fails.
    Symmetric,
}

/// A lab host where tests run programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Public host 198.18.0.10 (relay / tracker).
    Pub1,
    /// Second public host 198.18.0.11.
    Pub2,
    /// Host 198.19.1.10 behind `natA`.
    A1,
    /// Host 198.19.2.10 behind `natB`.
    B1,
}

impl Host {
    fn suffix(self) -> &'static str {
        match self {
            Host::Pub1 => "pub1",
            Host::Pub2 => "pub2",
            Host::A1 => "a1",
            Host::B1 => "b1",
        }
    }
}

/// A running lab. Dropping it tears it down (best effort; errors go to stderr).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    torn_down: bool,
}

impl Lab {
    /// Whether this process can build a lab: effective uid 0 (from `/proc/self/status`), and
    /// `ip` and `nft` on `PATH`. Returns `Err(reason)` when not.
    pub fn available() -> Result<(), String> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .ok_or_else(|| "no Uid line in /proc/self/status".to_string())?;
        if euid != "0" {
            return Err(format!("must run as root (effective uid {euid})"));
        }
        for (prog, pkg) in [("ip", "iproute2"), ("nft", "nftables")] {
            if !on_path(prog) {
                return Err(format!(
                    "{prog} not found on PATH (apt-get install -y {pkg})"
                ));
            }
        }
        Ok(())
    }

    /// Builds a lab whose namespaces are named `<prefix><host>` (e.g. `bsw3-a1`). Labs with
    /// different prefixes are independent. An existing lab with this prefix is removed first
    /// (processes inside it are ended). On failure, whatever was built is torn down.
    pub fn up(prefix: &str, nat_a: NatMode, nat_b: NatMode) -> Result<Lab> {
        check_prefix(prefix)?;
        let mut lab = Lab {
            prefix: prefix.to_string(),
            torn_down: false,
        };
        if ALL_HOSTS.iter().any(|h| ns_exists(&lab.ns_name(h))) {
            eprintln!("netlab: existing lab '{prefix}*' found, rebuilding");
            lab.down().context("removing the existing lab")?;
            lab.torn_down = false;
        }
        match lab.build(nat_a, nat_b) {
            Ok(()) => Ok(lab),
            Err(e) => {
                eprintln!("netlab: up failed, cleaning up: {e:#}");
                if let Err(e2) = lab.down() {
                    eprintln!("netlab: cleanup after failed up: {e2:#}");
                }
                Err(e.context(format!("building NAT lab '{prefix}*'")))
            }
        }
    }

    /// Namespace name of `host`, e.g. `bsw3-a1`.
    pub fn ns(&self, host: Host) -> String {
        self.ns_name(host.suffix())
    }

    /// Address of `host` in the lab.
    pub fn ip(host: Host) -> &'static str {
        match host {
            Host::Pub1 => PUB1_IP,
            Host::Pub2 => PUB2_IP,
            Host::A1 => A1_IP,
            Host::B1 => B1_IP,
        }
    }

    /// A command that runs `program` (add its args) inside `host`'s namespace:
    /// `ip netns exec <ns> program ...`.
    pub fn command(&self, host: Host, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(self.ns(host)).arg(program);
        cmd
    }

    /// Tears the lab down: ends processes left in its namespaces (TERM, up to 2 s, then KILL)
    /// and deletes the namespaces. Idempotent.
    pub fn down(&mut self) -> Result<()> {
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        for h in ALL_HOSTS {
            let n = self.ns_name(h);
            if !ns_exists(&n) {
                continue;
            }
            end_processes(&n);
            if let Err(e) = run("ip", &["netns", "del", &n]) {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("netlab down: {}", errors.join("; "));
        }
        self.torn_down = true;
        Ok(())
    }

    fn ns_name(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    /// `do_up` of the script, after the rebuild check.
    fn build(&self, nat_a: NatMode, nat_b: NatMode) -> Result<()> {
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            for h in ALL_HOSTS {
                let n = self.ns_name(h);
                run("ip", &["netns", "add", &n])?;
                run("ip", &["-n", &n, "link", "set", "lo", "up"])?;
            }
        }
        for h in ALL_HOSTS {
            let fwd = if h.starts_with("nat") { "1" } else { "0" };
            self.sysctl(
                h,
                &[
                    ("net.ipv6.conf.all.disable_ipv6", "1"),
                    ("net.ipv6.conf.default.disable_ipv6", "1"),
                    ("net.ipv4.ip_forward", fwd),
                    ("net.bridge.bridge-nf-call-iptables", "0"),
                ],
            )?;
        }
        // the "internet": one bridge in its own namespace
        let w = self.ns_name("wan");
        run("ip", &["-n", &w, "link", "add", "nl-br0", "type", "bridge"])?;
        run("ip", &["-n", &w, "link", "set", "nl-br0", "up"])?;
        for (h, addr) in [
            ("pub1", PUB1_IP),
            ("pub2", PUB2_IP),
            ("natA", NATA_WAN_IP),
            ("natB", NATB_WAN_IP),
        ] {
            let n = self.ns_name(h);
            let port = format!("nl-p-{h}");
            veth_pair(&n, "nl-wan0", &w, &port)?;
            run(
                "ip",
                &["-n", &w, "link", "set", &port, "master", "nl-br0", "up"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &n,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "nl-wan0",
                ],
            )?;
            run("ip", &["-n", &n, "link", "set", "nl-wan0", "up"])?;
        }
        // home LANs: router <-> host, host has a default route via its router
        for (r, r_lan, c, c_ip) in [
            ("natA", NATA_LAN_IP, "a1", A1_IP),
            ("natB", NATB_LAN_IP, "b1", B1_IP),
        ] {
            let (rn, cn) = (self.ns_name(r), self.ns_name(c));
            veth_pair(&rn, "nl-lan0", &cn, "nl-eth0")?;
            run(
                "ip",
                &[
                    "-n",
                    &rn,
                    "addr",
                    "add",
                    &format!("{r_lan}/24"),
                    "dev",
                    "nl-lan0",
                ],
            )?;
            run("ip", &["-n", &rn, "link", "set", "nl-lan0", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &cn,
                    "addr",
                    "add",
                    &format!("{c_ip}/24"),
                    "dev",
                    "nl-eth0",
                ],
            )?;
            run("ip", &["-n", &cn, "link", "set", "nl-eth0", "up"])?;
            run("ip", &["-n", &cn, "route", "add", "default", "via", r_lan])?;
        }
        self.router_fw("natA", nat_a)?;
        self.router_fw("natB", nat_b)?;
        Ok(())
    }

    /// Writes `/proc/sys` keys inside the lab namespace `<prefix><suffix>` only; keys that do
    /// not exist there (e.g. bridge-nf without br_netfilter) are skipped, like the script.
    fn sysctl(&self, suffix: &str, kvs: &[(&str, &str)]) -> Result<()> {
        let mut script = String::new();
        for (k, v) in kvs {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            script.push_str(&format!("[ -w {path} ] && echo {v} > {path}; "));
        }
        script.push_str("true");
        let n = self.ns_name(suffix);
        run("ip", &["netns", "exec", &n, "sh", "-c", &script])
    }

    /// NAT and filter rules of a router (the script's `router_fw`, nft backend).
    fn router_fw(&self, suffix: &str, mode: NatMode) -> Result<()> {
        let rnd = match mode {
            NatMode::Cone => "",
            NatMode::Symmetric => " random",
        };
        let ruleset = format!(
            r#"table ip netlab {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "nl-wan0" masquerade{rnd}
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iifname "nl-lan0" oifname "nl-wan0" accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname "lo" accept
    iifname "nl-lan0" accept
  }}
}}
"#
        );
        let n = self.ns_name(suffix);
        run_stdin(
            "ip",
            &["netns", "exec", &n, "nft", "-f", "-"],
            ruleset.as_bytes(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if let Err(e) = self.down() {
            eprintln!("netlab: teardown of '{}*' failed: {e:#}", self.prefix);
        }
    }
}

/// What a NAT-lab test does when the lab cannot be built: with `BITSWARM_NETLAB_REQUIRED=1`
/// it panics with the reason; otherwise it prints `skipping NAT-lab test: <reason>` to stderr
/// and returns `None`. Returns the lab when it was built.
pub fn lab_or_skip(prefix: &str, nat_a: NatMode, nat_b: NatMode) -> Option<Lab> {
    let reason = match Lab::available() {
        Err(reason) => reason,
        Ok(()) => match Lab::up(prefix, nat_a, nat_b) {
            Ok(lab) => return Some(lab),
            Err(e) => format!("{e:#}"),
        },
    };
    if std::env::var(REQUIRED_ENV).as_deref() == Ok("1") {
        panic!("NAT lab required ({REQUIRED_ENV}=1) but unavailable: {reason}");
    }
    eprintln!("skipping NAT-lab test: {reason}");
    None
}

/// Prefixes become namespace names (files in /run/netns): keep them short and plain, and never
/// empty (an empty prefix could remove someone else's namespace called e.g. `a1`).
fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 32 {
        bail!("netlab prefix must be 1 to 32 characters, got {prefix:?}");
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || prefix.starts_with('.')
    {
        bail!("netlab prefix may hold only [A-Za-z0-9._-] (not leading '.'), got {prefix:?}");
    }
    Ok(())
}

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn on_path(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(prog))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Both ends are created directly inside their namespaces: nothing in the root namespace.
fn veth_pair(ns1: &str, if1: &str, ns2: &str, if2: &str) -> Result<()> {
    run(
        "ip",
        &[
            "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2,
        ],
    )
}

/// PIDs of the processes in namespace `ns` (never this process).
fn ns_pids(ns: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && *p != me)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Ends the processes still running in `ns`: TERM, wait up to 10 × 0.2 s, then KILL.
fn end_processes(ns: &str) {
    let pids = ns_pids(ns);
    if pids.is_empty() {
        return;
    }
    eprintln!("netlab: ending processes left in {ns}: {}", pids.join(" "));
    signal("TERM", &pids);
    for _ in 0..10 {
        if ns_pids(ns).is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
    signal("KILL", &ns_pids(ns));
}

/// `kill -s SIG PIDS` through the shell builtin; errors (process already gone) are ignored.
fn signal(sig: &str, pids: &[String]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$0\" \"$@\" 2>/dev/null; true", sig])
        .args(pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn describe(prog: &str, args: &[&str]) -> String {
    format!("{prog} {}", args.join(" "))
}

/// Runs a command to completion; a failure carries its stderr.
fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", describe(prog, args)))?;
    check(prog, args, &out)
}

/// Like [`run`], feeding `input` on stdin.
fn run_stdin(prog: &str, args: &[&str], input: &[u8]) -> Result<()> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", describe(prog, args)))?;
    // Write, then always reap the child, even if the write failed.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(input),
        None => Ok(()),
    };
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", describe(prog, args)))?;
    check(prog, args, &out)?;
    written.with_context(|| format!("writing stdin of {}", describe(prog, args)))
}

fn check(prog: &str, args: &[&str], out: &std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(prog, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
