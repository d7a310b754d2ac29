//! Attacks on the real tracker binary by many cheap identities, from other loopback addresses
//! (`127.0.0.x`, each a host of its own to the tracker): each test asserts the honest outcome
//! within a bounded time, and the tracker's resident memory from `/proc` where memory is what
//! the attack goes for.

use std::{
    fs,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use bitswarm_protocols::{
    tracker::{Announce, AnnouncedFile, LookupKey, Reply, Request},
    ErrorCode, FileId, FileName,
};
use bitswarm_tests::{
    hostile::{self, low_key, RawPeer},
    init_tracing, make_file, share_bin, tracker_bin_full, tracker_bin_logged, within,
};
use libp2p::{identity::Keypair, multiaddr::Protocol, Multiaddr, PeerId};

const MIB: u64 = 1 << 20;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The seeder's entry for `path`: its announced file and (once the tracker lists it) its id.
async fn honest_seeder(full: &Multiaddr, id: FileId) -> anyhow::Result<PeerId> {
    let providers = hostile::lookup(full, id).await?;
    providers
        .first()
        .map(|p| p.peer)
        .ok_or_else(|| anyhow::anyhow!("the tracker lists no provider yet"))
}

fn wanted(path: &std::path::Path) -> anyhow::Result<AnnouncedFile> {
    let data = fs::read(path)?;
    Ok(AnnouncedFile {
        id: FileId::of(&data),
        name: FileName::new(path.file_name().and_then(|n| n.to_str()).unwrap_or("f"))?,
        size: data.len() as u64,
        complete: true,
    })
}

/// A raw peer from `from` that announces `files` with `addrs`; returns it and the answer.
async fn announcer(
    full: &Multiaddr,
    from: Ipv4Addr,
    key: Keypair,
    files: Vec<AnnouncedFile>,
    addrs: Vec<Multiaddr>,
) -> anyhow::Result<(RawPeer, bitswarm_protocols::tracker::Response)> {
    let mut peer = RawPeer::connect(full, from, key).await?;
    let answer = peer
        .tracker(&Request::Announce(Announce { files, addrs }))
        .await?;
    Ok((peer, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fat_addresses_are_dropped_so_lookups_stay_small_even_when_nobody_reads_them(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (tracker, plain, full) = tracker_bin_full(dir.path())?;
        let path = make_file(dir.path(), "popular.bin", MIB as usize, 31)?;
        let file = wanted(&path)?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;
        let honest = honest_seeder(&full, file.id).await?;
        let (base, _) = hostile::rss(tracker.id())?;

        // 30 identities from one host each announce the file with 16 addresses of 30 kB
        // (480 kB, under the 512 KiB request limit). Stored as given, one lookup answer
        // would be 14 MB, past every client's 4 MiB limit.
        let fat: Vec<Multiaddr> = (0..16)
            .map(|i| format!("/dns4/{}{i}.example/tcp/1", "a".repeat(30_000)).parse())
            .collect::<Result<_, _>>()?;
        let mut fakes = Vec::new();
        for _ in 0..30 {
            let key = Keypair::generate_ed25519();
            let (peer, answer) =
                announcer(&full, ip(2), key, vec![file.clone()], fat.clone()).await?;
            anyhow::ensure!(answer.is_ok(), "announce refused: {answer:?}");
            fakes.push(peer);
        }
        // Eight more ask for it 16 times each and read nothing.
        let mut unread = Vec::new();
        let mut askers = Vec::new();
        for _ in 0..8 {
            let mut peer = RawPeer::connect(&full, ip(3), Keypair::generate_ed25519()).await?;
            for _ in 0..16 {
                let lookup = Request::Lookup {
                    key: LookupKey::Id(file.id),
                    limit: 50,
                };
                unread.push(peer.tracker_unread(&lookup).await?);
            }
            askers.push(peer);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;

        let started = Instant::now();
        let providers = hostile::lookup(&full, file.id).await?;
        let took = started.elapsed();
        let (now, peak) = hostile::rss(tracker.id())?;
        eprintln!(
            "lookup {took:?}, {} providers; tracker RSS {} -> {} MiB (peak {} MiB)",
            providers.len(),
            base / MIB,
            now / MIB,
            peak / MIB
        );
        assert!(
            providers.iter().any(|p| p.peer == honest),
            "the honest seeder is listed"
        );
        let addr_bytes: usize = providers
            .iter()
            .flat_map(|p| &p.addrs)
            .map(|a| a.len())
            .sum();
        assert!(
            addr_bytes < 64 * 1024,
            "{addr_bytes} bytes of addresses in one lookup"
        );
        assert!(took < Duration::from_secs(5), "the lookup took {took:?}");
        assert!(
            peak < base + 64 * MIB,
            "the tracker's memory went from {} to {} MiB",
            base / MIB,
            peak / MIB
        );
        drop((fakes, unread, askers));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_low_peer_ids_cannot_crowd_an_honest_seeder_out_of_lookups() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let path = make_file(dir.path(), "target.bin", MIB as usize, 32)?;
        let file = wanted(&path)?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;
        let honest = honest_seeder(&full, file.id).await?;

        // 60 seeders whose keys start with a zero byte (so their ids sort first), from two
        // hosts, each with a valid address on its own IP. In peer-id order the list of 50
        // would be theirs alone.
        let mut fakes = Vec::new();
        for i in 0..60u16 {
            let host = ip(4 + (i % 2) as u8);
            let addr: Multiaddr = format!("/ip4/{host}/tcp/{}", 20_000 + i).parse()?;
            let (peer, answer) =
                announcer(&full, host, low_key(), vec![file.clone()], vec![addr]).await?;
            anyhow::ensure!(answer.is_ok(), "announce refused: {answer:?}");
            fakes.push(peer);
        }
        for round in 0..5 {
            let providers = hostile::lookup(&full, file.id).await?;
            let fake = providers.iter().filter(|p| p.peer != honest).count();
            assert!(
                providers.iter().any(|p| p.peer == honest),
                "round {round}: the honest seeder is missing from {} providers",
                providers.len()
            );
            assert!(
                fake <= 4,
                "round {round}: {fake} of the fakes from two hosts of one /24 were listed"
            );
        }
        drop(fakes);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_from_one_host_is_capped_logged_once_and_honest_peers_register(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("tracker.log");
        let (tracker, plain, full) = tracker_bin_logged(dir.path(), &log, &[])?;
        let mut accepted = Vec::new();
        let mut refused = 0;
        for _ in 0..60 {
            let (peer, answer) =
                announcer(&full, ip(6), Keypair::generate_ed25519(), vec![], vec![]).await?;
            match answer {
                Ok(Reply::Announced { .. }) => accepted.push(peer),
                Err(ErrorCode::LimitReached) => refused += 1,
                other => anyhow::bail!("unexpected answer {other:?}"),
            }
        }
        assert!(
            accepted.len() <= 32,
            "{} identities from one host registered",
            accepted.len()
        );
        assert_eq!(accepted.len() + refused, 60);

        // An honest peer from elsewhere still registers and is found.
        let path = make_file(dir.path(), "honest.bin", MIB as usize, 33)?;
        let file = wanted(&path)?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;
        honest_seeder(&full, file.id).await?;

        drop(tracker);
        let logged = fs::read_to_string(&log)?;
        let warnings = logged
            .lines()
            .filter(|l| l.contains("request refused") && l.contains("WARN"))
            .count();
        assert_eq!(
            warnings, 1,
            "{refused} refusals from one host are one warning:\n{logged}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_flood_is_rate_limited_and_others_are_still_answered() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let path = make_file(dir.path(), "findme.bin", MIB as usize, 34)?;
        let file = wanted(&path)?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;
        honest_seeder(&full, file.id).await?;

        let mut flooder = RawPeer::connect(&full, ip(7), Keypair::generate_ed25519()).await?;
        let (mut answered, mut refused, mut cut_off) = (0, 0, false);
        let started = Instant::now();
        for i in 0..300 {
            let search = Request::Search {
                query: format!("f{i}"),
                limit: 100,
            };
            match flooder.tracker(&search).await {
                Ok(Ok(_)) => answered += 1,
                Ok(Err(ErrorCode::LimitReached)) => refused += 1,
                Ok(Err(other)) => anyhow::bail!("unexpected error {other:?}"),
                // Past its strikes the tracker closes the connection.
                Err(_) => {
                    cut_off = true;
                    break;
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "searches for {secs:.2} s: {answered} answered, {refused} refused, cut off: {cut_off}"
        );
        assert!(refused > 0, "searches for {secs:.2} s and none refused");
        // A search costs 8 of the 100-token burst and the 20 tokens a second.
        assert!(
            f64::from(answered) <= (100.0 + 20.0 * secs) / 8.0 + 1.0,
            "{answered} answered in {secs:.2} s: more than the burst and the rate allow"
        );
        assert!(
            cut_off,
            "a flooder refused {refused} times kept its connection"
        );

        // Someone else searching meanwhile is answered.
        let mut other = RawPeer::connect(&full, ip(8), Keypair::generate_ed25519()).await?;
        let answer = other
            .tracker(&Request::Search {
                query: "findme".into(),
                limit: 10,
            })
            .await?;
        match answer {
            Ok(Reply::Found(hits)) => assert!(hits.iter().any(|h| h.id == file.id)),
            other => anyhow::bail!("the honest search got {other:?}"),
        }
        Ok(())
    })
    .await
}

/// Floods lookups as `peer` until the tracker closes the connection (or `max` requests):
/// (answered, refused, closed).
async fn flood_lookups(peer: &mut RawPeer, id: FileId, max: usize) -> (usize, usize, bool) {
    let (mut answered, mut refused) = (0, 0);
    for _ in 0..max {
        let lookup = Request::Lookup {
            key: LookupKey::Id(id),
            limit: 50,
        };
        match peer.tracker(&lookup).await {
            Ok(Ok(_)) => answered += 1,
            Ok(Err(_)) => refused += 1,
            Err(_) => return (answered, refused, true),
        }
    }
    (answered, refused, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_keep_asking_past_their_limits_are_cut_off_and_then_their_host(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, plain, full) = tracker_bin_full(dir.path())?;
        let path = make_file(dir.path(), "wanted.bin", MIB as usize, 35)?;
        let file = wanted(&path)?;
        let (_seeder, _) = share_bin(&path, &plain, dir.path())?;
        honest_seeder(&full, file.id).await?;

        // Identity after identity from one host floods lookups as fast as they are answered,
        // until the host cannot connect any more.
        let mut first_key = None;
        let mut host_refused = None;
        for round in 0..10 {
            let key = Keypair::generate_ed25519();
            first_key.get_or_insert_with(|| key.clone());
            let Ok(mut flooder) = RawPeer::connect(&full, ip(9), key).await else {
                host_refused = Some(round);
                break;
            };
            let (answered, refused, closed) = flood_lookups(&mut flooder, file.id, 2_000).await;
            eprintln!("flooder {round}: {answered} answered, {refused} refused, closed: {closed}");
            assert!(
                closed,
                "flooder {round} was never cut off ({refused} refused)"
            );
            assert!(
                refused <= 60,
                "flooder {round} cut off after {refused} refusals, past its 50 strikes"
            );
        }
        // The host ran out of its 200 strikes: its new connections are refused before any
        // handshake...
        assert!(
            host_refused.is_some_and(|round| round >= 3),
            "the host was refused after {host_refused:?} identities, not after its 200 strikes"
        );
        // ...and the first flooder's id is refused from anywhere.
        let key = first_key.ok_or_else(|| anyhow::anyhow!("no flooder ran"))?;
        let refused_id = match RawPeer::connect(&full, ip(10), key).await {
            Err(_) => true,
            Ok(mut peer) => peer.tracker(&Request::Stats).await.is_err(),
        };
        assert!(refused_id, "a banned peer id was served");

        // Another host is served as ever.
        let mut honest = RawPeer::connect(&full, ip(11), Keypair::generate_ed25519()).await?;
        let answer = honest
            .tracker(&Request::Lookup {
                key: LookupKey::Id(file.id),
                limit: 50,
            })
            .await?;
        match answer {
            Ok(Reply::Providers(records)) => assert!(!records.is_empty()),
            other => anyhow::bail!("the honest lookup got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_peers_may_reserve_a_relay_slot() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let (_tracker, _plain, full) = tracker_bin_full(dir.path())?;
        let circuit = full.clone().with(Protocol::P2pCircuit);

        let stranger = hostile::reserve(&full, &circuit, false).await?;
        assert!(!stranger, "a peer that never announced got a reservation");
        let member = hostile::reserve(&full, &circuit, true).await?;
        assert!(member, "a registered peer was refused a reservation");
        Ok(())
    })
    .await
}
