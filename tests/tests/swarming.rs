//! BitTorrent-grade swarming, in process: leechers trade pieces, downloads survive providers
//! that die or lie, and an interrupted download resumes without fetching verified pieces again.

use std::time::Duration;

use bitswarm_node::Config;
use bitswarm_protocols::{tracker::LookupKey, FileId, DEFAULT_PIECE_SIZE};
use bitswarm_tests::{init_tracing, make_file, within, TestNode, TestTracker};
use futures::future::try_join_all;

const PIECE: usize = DEFAULT_PIECE_SIZE as usize;

fn swarm_config(tracker: &TestTracker) -> Config {
    Config {
        tracker: Some(tracker.addr.clone()),
        relookup_interval: Duration::from_millis(300),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seeder_six_leechers_all_complete_and_the_leechers_trade_pieces() -> anyhow::Result<()>
{
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        // A seeder with little upload capacity, as on the internet: on loopback an unlimited
        // one can serve everyone before the leechers have learned of each other, and then the
        // share of the leechers' trading depends on the machine's speed.
        let seeder = TestNode::start_with(
            "seeder",
            Config {
                max_serving_reads: 2,
                ..swarm_config(&tracker)
            },
        )
        .await?;
        let size = 48 * PIECE + 4321;
        let path = make_file(dir.path(), "movie.bin", size, 11)?;
        let id = seeder.client.share(&path).await?.id;

        let mut leechers = Vec::new();
        for i in 0..6 {
            leechers
                .push(TestNode::start_with(&format!("leecher-{i}"), swarm_config(&tracker)).await?);
        }
        let downloads = leechers.iter().enumerate().map(|(i, l)| {
            let out = dir.path().join(format!("out-{i}"));
            let client = l.client.clone();
            async move {
                std::fs::create_dir_all(&out)?;
                anyhow::Ok(client.get(LookupKey::Id(id), &out).await?.wait().await?)
            }
        });
        let done = try_join_all(downloads).await?;
        for d in &done {
            assert_eq!(FileId::of(&std::fs::read(&d.path)?), id);
        }
        let delivered = 6 * size as u64;
        let seeded = seeder.client.local_stats().await?.uploaded;
        let mut traded = 0;
        for l in &leechers {
            traded += l.client.local_stats().await?.uploaded;
        }
        eprintln!("seeder uploaded {seeded} of {delivered} delivered; leechers uploaded {traded}");
        assert!(seeded + traded >= delivered);
        // Endgame duplicates the last few pieces; their losing copies are the only waste.
        assert!(
            seeded + traded <= delivered + delivered / 8,
            "little duplicate traffic: {}",
            seeded + traded - delivered
        );
        assert!(traded > 0, "leechers traded pieces");
        assert!(
            seeded < delivered * 3 / 4,
            "the seeder uploaded well under the total: {seeded} of {delivered}"
        );

        for node in leechers.into_iter().chain([seeder]) {
            node.stop().await?;
        }
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_transfer_leaves_the_others_to_finish() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let size = 64 * PIECE;
        let (a_dir, b_dir, out) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("out"),
        );
        for d in [&a_dir, &b_dir, &out] {
            std::fs::create_dir_all(d)?;
        }
        let seeders = [
            (
                TestNode::start("doomed", &tracker.addr).await?,
                make_file(&a_dir, "f.bin", size, 5)?,
            ),
            (
                TestNode::start("steady", &tracker.addr).await?,
                make_file(&b_dir, "f.bin", size, 5)?,
            ),
        ];
        let id = seeders[0].0.client.share(&seeders[0].1).await?.id;
        seeders[1].0.client.share(&seeders[1].1).await?;
        tracker.wait_peers(2).await?;
        let [(doomed, _), (steady, _)] = seeders;
        let doomed_id = doomed.client.peer_id();

        let mut leecher = TestNode::start_with(
            "leecher",
            Config {
                window: 1,
                ..swarm_config(&tracker)
            },
        )
        .await?;
        let download = leecher.client.get(LookupKey::Id(id), &out).await?;
        let mut progress = download.progress();
        progress.wait_for(|p| p.done >= 2 * PIECE as u64).await?;
        assert!(progress.borrow().done < size as u64, "killed mid-transfer");
        doomed.kill().await;
        let done = download.wait().await?;
        assert_eq!(FileId::of(&std::fs::read(&done.path)?), id);
        assert!(
            leecher.saw_provider_dropped(doomed_id),
            "the killed provider was dropped"
        );
        leecher.stop().await?;
        steady.stop().await?;
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_provider_gone_get_fails_in_bounded_time_and_a_later_run_resumes(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let size = 40 * PIECE + 99;
        let src = dir.path().join("src");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&src)?;
        std::fs::create_dir_all(&out)?;
        let path = make_file(&src, "big.iso", size, 8)?;
        let original = std::fs::read(&path)?;

        let seeder = TestNode::start("seeder", &tracker.addr).await?;
        let id = seeder.client.share(&path).await?.id;
        let wait = Duration::from_secs(2);
        let config = || Config {
            window: 1,
            provider_wait: wait,
            ..swarm_config(&tracker)
        };
        let leecher = TestNode::start_with("leecher", config()).await?;
        let download = leecher.client.get(LookupKey::Id(id), &out).await?;
        let mut progress = download.progress();
        progress.wait_for(|p| p.done >= 4 * PIECE as u64).await?;
        seeder.kill().await;
        let started = std::time::Instant::now();
        let err = download.wait().await.unwrap_err();
        assert!(err.to_string().contains("no provider"), "{err}");
        assert!(
            started.elapsed() < wait + Duration::from_secs(5),
            "bounded wait: {:?}",
            started.elapsed()
        );
        let part = out.join(bitswarm_node::part_name(&id));
        assert!(part.exists(), ".part kept");
        assert!(
            !out.join("big.iso").exists(),
            "no partial file under the final name"
        );
        leecher.stop().await?;

        // A torn write: the first piece on disk is damaged. It must be fetched again, not trusted.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&part)?;
            f.write_all_at(b"torn", 10)?;
        }
        let seeder = TestNode::start("seeder-again", &tracker.addr).await?;
        seeder.client.share(&path).await?;
        let leecher = TestNode::start_with("leecher-again", config()).await?;
        let done = leecher
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(std::fs::read(&done.path)?, original);
        assert!(
            done.resumed >= 2 * PIECE as u64,
            "verified pieces kept: {}",
            done.resumed
        );
        assert_eq!(
            done.resumed + done.fetched,
            size as u64,
            "no verified piece fetched twice"
        );
        assert!(
            done.fetched >= PIECE as u64,
            "the torn piece was fetched again"
        );
        assert_eq!(
            std::fs::read_dir(&out)?.count(),
            1,
            "only the file left: the .part file took its name"
        );
        leecher.stop().await?;
        seeder.stop().await?;
        tracker.stop().await
    })
    .await
}
