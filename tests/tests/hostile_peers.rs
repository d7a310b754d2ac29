//! Hostile providers next to an honest one: the honest user is still served, within a bounded
//! time far shorter than the provider wait.

use std::time::{Duration, Instant};

use bitswarm_node::Config;
use bitswarm_protocols::{
    tracker::{AnnouncedFile, LookupKey},
    transfer, ErrorCode, FileId, FileName,
};
use bitswarm_tests::{
    hostile::HostilePeer, init_tracing, make_file, within, TestNode, TestTracker,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_busy_manifest_providers_cannot_stall_a_get() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let size = 3 << 20;
        let path = make_file(dir.path(), "wanted.bin", size, 21)?;
        let id = FileId::of(&std::fs::read(&path)?);
        let file = AnnouncedFile {
            id,
            name: FileName::new("wanted.bin")?,
            size: size as u64,
            complete: true,
        };
        // Six that accept the manifest request and never answer, two that are always Busy.
        let mut hostile = Vec::new();
        for i in 0..8 {
            let answer: bitswarm_tests::hostile::Answer = if i < 6 {
                Box::new(|_| None)
            } else {
                Box::new(|_| Some(transfer::Response::Error(ErrorCode::Busy)))
            };
            hostile.push(HostilePeer::start(&tracker.addr, vec![file.clone()], answer).await?);
        }
        let seeder = TestNode::start("honest", &tracker.addr).await?;
        seeder.client.share(&path).await?;

        let getter = TestNode::start_with(
            "getter",
            Config {
                tracker: Some(tracker.addr.clone()),
                provider_wait: Duration::from_secs(60),
                ..Config::default()
            },
        )
        .await?;
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out)?;
        let started = Instant::now();
        let done = getter
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await?;
        let took = started.elapsed();
        assert_eq!(FileId::of(&std::fs::read(&done.path)?), id);
        assert!(
            took < Duration::from_secs(25),
            "served in {took:?}, not after the silent providers' 30 s timeouts"
        );
        getter.stop().await?;
        seeder.stop().await?;
        drop(hostile);
        tracker.stop().await
    })
    .await
}
