//! In-process networks: one tracker and several nodes on loopback, through the real
//! `bitswarm_node::new`, each test under [`TEST_TIMEOUT`].

use std::time::Duration;

use bitswarm_node::Config;
use bitswarm_protocols::{tracker::LookupKey, FileId, FileName, DEFAULT_PIECE_SIZE};
use bitswarm_tests::{init_tracing, make_file, wait_until, within, TestNode, TestTracker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leechers_get_by_name_and_by_id_identical_bytes() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let seeder = TestNode::start("seeder", &tracker.addr).await?;
        let len = 3 * DEFAULT_PIECE_SIZE as usize + 12_345;
        let path = make_file(dir.path(), "data.bin", len, 1)?;
        let original = std::fs::read(&path)?;
        let shared = seeder.client.share(&path).await?;
        assert_eq!(
            shared.id,
            FileId::of(&original),
            "the id is the BLAKE3 hash b3sum prints"
        );

        let by_name = TestNode::start("by-name", &tracker.addr).await?;
        let by_id = TestNode::start("by-id", &tracker.addr).await?;
        let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&out_a)?;
        std::fs::create_dir_all(&out_b)?;
        let name = LookupKey::Name(FileName::new("data.bin")?);
        let got_a = by_name.client.get(name, &out_a).await?;
        let got_b = by_id.client.get(LookupKey::Id(shared.id), &out_b).await?;
        let (a, b) = (got_a.wait().await?, got_b.wait().await?);
        assert_eq!(std::fs::read(&a.path)?, original);
        assert_eq!(std::fs::read(&b.path)?, original);
        assert_eq!(a.path, out_a.join("data.bin"));
        assert!(
            !out_a.join(bitswarm_node::part_name(&shared.id)).exists(),
            "the .part file was renamed"
        );
        assert_eq!(std::fs::read_dir(&out_a)?.count(), 1, "nothing else left");
        assert_eq!(seeder.client.local_stats().await?.uploaded, 2 * len as u64);

        for node in [seeder, by_name, by_id] {
            node.stop().await?;
        }
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_serving_a_wrong_piece_is_caught_and_the_file_completes_from_an_honest_one(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let len = 24 * DEFAULT_PIECE_SIZE as usize + 7;
        let (honest_dir, liar_dir, out) = (
            dir.path().join("h"),
            dir.path().join("l"),
            dir.path().join("out"),
        );
        for d in [&honest_dir, &liar_dir, &out] {
            std::fs::create_dir_all(d)?;
        }
        let honest_path = make_file(&honest_dir, "big.bin", len, 7)?;
        let liar_path = make_file(&liar_dir, "big.bin", len, 7)?;
        let original = std::fs::read(&honest_path)?;

        let honest = TestNode::start("honest", &tracker.addr).await?;
        let liar = TestNode::start("liar", &tracker.addr).await?;
        let id = honest.client.share(&honest_path).await?.id;
        assert_eq!(liar.client.share(&liar_path).await?.id, id);
        // The liar's file changes on disk after it was hashed: every piece it serves is wrong.
        std::fs::write(&liar_path, vec![0u8; len])?;
        tracker.wait_peers(2).await?;

        let mut leecher = TestNode::start_with(
            "leecher",
            Config {
                tracker: Some(tracker.addr.clone()),
                window: 4,
                ..Config::default()
            },
        )
        .await?;
        let done = leecher
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(std::fs::read(&done.path)?, original);
        let stats = leecher.client.local_stats().await?;
        assert!(
            stats.bad_pieces >= 1,
            "the liar was asked and caught: {stats:?}"
        );
        let liar_id = liar.client.peer_id();
        assert!(
            leecher.saw_provider_dropped(liar_id),
            "the liar was dropped for the file"
        );
        assert_eq!(
            done.providers_used, 1,
            "only the honest seeder's pieces were kept"
        );

        for node in [honest, liar, leecher] {
            node.stop().await?;
        }
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_peer_count_rises_and_falls_after_a_peer_is_killed() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let tracker = TestTracker::start().await?;
        tracker.wait_peers(0).await?;
        let a = TestNode::start("a", &tracker.addr).await?;
        tracker.wait_peers(1).await?;
        let b = TestNode::start("b", &tracker.addr).await?;
        tracker.wait_peers(2).await?;

        // A query-only client sees the same count over the wire and does not count itself.
        let query = TestNode::start_with(
            "query",
            Config {
                tracker: Some(tracker.addr.clone()),
                announce_presence: false,
                ..Config::default()
            },
        )
        .await?;
        assert_eq!(query.client.stats().await?.peers, 2);

        b.kill().await;
        tracker.wait_peers(1).await?;
        let client = query.client.clone();
        wait_until(
            "stats over the wire shows 1 peer",
            Duration::from_secs(10),
            || {
                let c = client.clone();
                async move { c.stats().await.ok().filter(|s| s.peers == 1) }
            },
        )
        .await?;
        a.stop().await?;
        tracker.wait_peers(0).await?;
        query.stop().await?;
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_file_and_unreachable_tracker_fail_fast_with_clear_errors() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let node = TestNode::start("lonely", &tracker.addr).await?;
        let err = node
            .client
            .get(LookupKey::Name(FileName::new("nope.bin")?), dir.path())
            .await?
            .wait()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown file"), "{err}");
        node.stop().await?;
        tracker.stop().await?;

        // A port nothing listens on any more.
        let dead = TestTracker::start().await?;
        let addr = dead.addr.clone();
        dead.stop().await?;
        let node = TestNode::start("orphan", &addr).await?;
        let started = std::time::Instant::now();
        let err = node.client.stats().await.unwrap_err();
        assert!(err.to_string().contains("tracker unreachable"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(15));
        node.stop().await
    })
    .await
}
