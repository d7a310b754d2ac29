//! Hostile peers against the real binaries: each case asserts the honest outcome within a
//! bounded time and the attacked process's resident memory or descriptors from `/proc`.

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use bitswarm_node::Config;
use bitswarm_protocols::{
    tracker::{AnnouncedFile, LookupKey},
    transfer, FileId, FileName, Manifest,
};
use bitswarm_tests::{
    bin, get_cmd,
    hostile::{self, Flood, HostilePeer, Injectors, SilentSockets, SlowReaders},
    init_tracing, make_file, run_with_timeout, share_bin, tracker_bin_full, within, Proc, TestNode,
    STEP,
};
use libp2p::{multiaddr::Protocol, Multiaddr};

const MIB: u64 = 1 << 20;

/// The seeder's direct TCP address, as the tracker lists it (not its relayed circuit).
async fn provider_addr(tracker: &Multiaddr, id: FileId) -> anyhow::Result<Multiaddr> {
    let providers = hostile::lookup(tracker, id).await?;
    let provider = providers
        .first()
        .ok_or_else(|| anyhow::anyhow!("the tracker lists no provider"))?;
    let addr = provider
        .addrs
        .iter()
        .find(|a| {
            a.iter().any(|p| matches!(p, Protocol::Tcp(_)))
                && !a.iter().any(|p| matches!(p, Protocol::P2pCircuit))
        })
        .ok_or_else(|| anyhow::anyhow!("no direct TCP address"))?;
    Ok(addr.clone().with(Protocol::P2p(provider.peer)))
}

fn file_id(path: &std::path::Path) -> anyhow::Result<FileId> {
    Ok(FileId::of(&fs::read(path)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_read_cannot_exhaust_a_seeders_memory_and_an_honest_get_completes(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let size = 64 * MIB;
        let path = make_file(dir.path(), "big.bin", size as usize, 5)?;
        let id = file_id(&path)?;
        let (seeder, _) = share_bin(&path, &plain, dir.path())?;
        let target = provider_addr(&full, id).await?;
        let (_, baseline) = hostile::rss(seeder.id())?;

        // Eight identities each ask for every piece and read nothing: unbounded, the seeder
        // would hold 8 x 64 MiB of piece responses.
        let _readers = SlowReaders::start(&target, id, 64, 8, 64)?;
        let mut peak = 0;
        let attack = Instant::now();
        while attack.elapsed() < Duration::from_secs(3) {
            peak = peak.max(hostile::rss(seeder.id())?.0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // An honest get meanwhile.
        let out = dir.path().join("out");
        fs::create_dir_all(&out)?;
        let started = Instant::now();
        let get = get_cmd(&id.to_string(), &plain, &out, &["--wait", "90"])?;
        let home = dir.path().to_owned();
        let getter = tokio::task::spawn_blocking(move || {
            run_with_timeout(get, &home, Duration::from_secs(120))
        });
        while !getter.is_finished() {
            peak = peak.max(hostile::rss(seeder.id())?.0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let output = getter.await??;
        let took = started.elapsed();
        assert!(
            output.status.success(),
            "the honest get failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(file_id(&out.join("big.bin"))?, id);
        let (_, hwm) = hostile::rss(seeder.id())?;
        let bound = baseline + 100 * MIB;
        assert!(
            hwm < bound && peak < bound,
            "the seeder's memory grew from {} MiB to {} MiB (peak RSS seen {} MiB)",
            baseline / MIB,
            hwm / MIB,
            peak / MIB
        );
        assert!(
            took < Duration::from_secs(60),
            "the honest get took {took:?}"
        );
        eprintln!(
            "seeder RSS {} MiB -> peak {} MiB under 8 non-reading peers; honest get {took:?}",
            baseline / MIB,
            hwm / MIB
        );
        drop(seeder);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_bounded_logged_once_and_others_are_served(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let path = make_file(dir.path(), "small.bin", (3 * MIB) as usize, 6)?;
        let id = file_id(&path)?;
        let log = dir.path().join("seeder.log");
        let mut share = Command::new(bin("bitswarm")?);
        share
            .arg("share")
            .arg(&path)
            .args([plain.as_str(), "127.0.0.1:0", "--ephemeral"])
            .env("RUST_LOG", "bitswarm_node=warn")
            .stderr(fs::File::create(&log)?);
        let mut seeder = Proc::spawn(share, dir.path())?;
        seeder.wait_line("sharing ", STEP)?;
        let target = provider_addr(&full, id).await?;
        let before = hostile::open_fds(seeder.id())?;

        // 80 identities, all from 127.0.0.2 (not this machine's own 127.0.0.1): at most 16
        // connections from one address are kept.
        let flood = Flood::start(&target, "127.0.0.2".parse()?, 80).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = hostile::open_fds(seeder.id())?;
        assert!(
            flood.upgraded <= 16,
            "{} of 80 connections from one address were accepted",
            flood.upgraded
        );
        assert!(
            during < before + 30,
            "the seeder's descriptors went from {before} to {during} under {} connections",
            flood.upgraded
        );

        // Someone else (127.0.0.1) is still served.
        let out = dir.path().join("out");
        fs::create_dir_all(&out)?;
        let get = get_cmd(&id.to_string(), &plain, &out, &[])?;
        let output = run_with_timeout(get, dir.path(), STEP)?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(file_id(&out.join("small.bin"))?, id);

        drop(seeder);
        let logged = fs::read_to_string(&log)?;
        let refusals = logged
            .lines()
            .filter(|l| l.contains("inbound connection refused"))
            .count();
        assert_eq!(
            refusals, 1,
            "the refused connections from one address are one warning:\n{logged}"
        );
        drop(flood);
        Ok(())
    })
    .await
}

/// The manifest of the file at `path`, as an honest provider would send it.
fn manifest_of(path: &std::path::Path) -> anyhow::Result<Manifest> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    Ok(Manifest::of_bytes(FileName::new(name)?, &fs::read(path)?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_sending_pieces_of_the_wrong_size_is_dropped_before_they_are_read(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let size = 32 * MIB;
        let path = make_file(dir.path(), "sized.bin", size as usize, 7)?;
        let id = file_id(&path)?;
        let manifest = manifest_of(&path)?;
        let file = AnnouncedFile {
            id,
            name: manifest.name().clone(),
            size,
            complete: true,
        };
        // It sends the real manifest, then 16 MiB for every 1 MiB piece.
        let wire = manifest.to_wire();
        let liar = HostilePeer::start(
            &full,
            vec![file],
            Box::new(move |request| match request {
                transfer::Request::Manifest { .. } => {
                    Some(transfer::Response::Manifest(wire.clone()))
                }
                transfer::Request::Have { .. } => None,
                transfer::Request::Piece { .. } => {
                    Some(transfer::Response::Piece(vec![0; 16 << 20]))
                }
            }),
        )
        .await?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;

        let mut getter = TestNode::start_with(
            "getter",
            Config {
                tracker: Some(full.clone()),
                provider_wait: Duration::from_secs(60),
                ..Config::default()
            },
        )
        .await?;
        let out = dir.path().join("out");
        fs::create_dir_all(&out)?;
        let done = getter
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(file_id(&done.path)?, id);
        let stats = getter.client.local_stats().await?;
        if done.sources.iter().any(|s| s.peer == liar.peer) {
            anyhow::bail!("a piece from the liar counted: {:?}", done.sources);
        }
        assert!(
            getter.saw_provider_dropped(liar.peer),
            "the liar was dropped"
        );
        assert_eq!(
            stats.bad_pieces, 0,
            "its oversized bodies were refused on their header, never read and verified"
        );
        getter.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_injected_providers_that_claim_everything_and_never_answer_cannot_stall_a_get(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let size = 64 * MIB;
        let path = make_file(dir.path(), "wanted.bin", size as usize, 8)?;
        let id = file_id(&path)?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;

        let getter = TestNode::start_with(
            "getter",
            Config {
                tracker: Some(full.clone()),
                provider_wait: Duration::from_secs(60),
                ..Config::default()
            },
        )
        .await?;
        let addr = getter
            .client
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the getter listens nowhere"))?
            .with(Protocol::P2p(getter.client.peer_id()));
        // Forty identities knock on the getter for the file every 100 ms, so they join the
        // download as soon as it knows the file; each claims all 64 pieces and answers no
        // piece request. Unbounded, they would hold every in-flight slot and the get would
        // wait out timeout after timeout.
        let injectors = Injectors::start(&addr, id, 64, 40)?;
        let (_, before) = hostile::rss(std::process::id())?;
        tokio::time::sleep(Duration::from_secs(1)).await;

        let out = dir.path().join("out");
        fs::create_dir_all(&out)?;
        let started = Instant::now();
        let done = getter
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await?;
        let took = started.elapsed();
        assert_eq!(file_id(&done.path)?, id);
        let admitted = injectors.admitted();
        let (_, after) = hostile::rss(std::process::id())?;
        eprintln!(
            "get took {took:?} next to 40 stalling injectors ({admitted} admitted); \
             process peak RSS {} -> {} MiB",
            before / MIB,
            after / MIB
        );
        assert!(
            admitted > 0,
            "no injector was ever asked anything: the attack did not run"
        );
        assert!(
            admitted <= 16,
            "{admitted} of 40 injected providers were taken (cap 16)"
        );
        assert!(
            took < Duration::from_secs(30),
            "the get took {took:?} next to the stalling injectors"
        );
        assert!(
            after < before + 256 * MIB,
            "this process's peak memory went from {} to {} MiB",
            before / MIB,
            after / MIB
        );
        drop(injectors);
        getter.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_opens_handshakes_and_never_finishes_them_cannot_lock_others_out(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let path = make_file(dir.path(), "small.bin", (3 * MIB) as usize, 9)?;
        let id = file_id(&path)?;
        let (seeder, _) = share_bin(&path, &plain, dir.path())?;
        let target = provider_addr(&full, id).await?;
        let before = hostile::open_fds(seeder.id())?;

        // 200 sockets from 127.0.0.2 that never send a byte, reopened as soon as the seeder
        // closes one: without a per-address bound on handshakes they hold all 64 pending
        // slots, each for the 10 s handshake timeout, and nobody else gets in.
        let silent = SilentSockets::start(&target, "127.0.0.2".parse()?, 200)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let during = hostile::open_fds(seeder.id())?;

        // Someone else (127.0.0.1) is served meanwhile, well within one handshake timeout.
        let out = dir.path().join("out");
        fs::create_dir_all(&out)?;
        let started = Instant::now();
        let get = get_cmd(&id.to_string(), &plain, &out, &[])?;
        let output = run_with_timeout(get, dir.path(), STEP)?;
        let took = started.elapsed();
        eprintln!(
            "{} silent sockets opened; seeder descriptors {before} -> {during}; get took {took:?}",
            silent.opened()
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(file_id(&out.join("small.bin"))?, id);
        assert!(
            took < Duration::from_secs(8),
            "the get took {took:?} while one host held handshakes open"
        );
        assert!(
            during < before + 40,
            "the seeder's descriptors went from {before} to {during}"
        );
        drop(silent);
        drop(seeder);
        Ok(())
    })
    .await
}
