//! Shared directories (collections): the whole tree, one file of it, one swarm per file, and a
//! hostile collection that tries to write outside the target directory.

use bitswarm_node::GetRequest;
use bitswarm_protocols::{
    tracker::{self, LookupKey},
    transfer, FileId, FileName, RelPath,
};
use bitswarm_tests::{
    hostile::HostilePeer, init_tracing, make_file, within, TestNode, TestTracker,
};

/// Writes a small tree and returns its root.
fn make_tree(base: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let root = base.join("album");
    std::fs::create_dir_all(root.join("disc 2/bonus"))?;
    make_file(&root, "cover.jpg", 70_000, 1)?;
    make_file(&root.join("disc 2"), "track.flac", 2 * 1024 * 1024 + 17, 2)?;
    make_file(&root.join("disc 2/bonus"), "notes.txt", 5, 3)?;
    make_file(&root, "empty", 0, 4)?;
    // Same content twice: one swarm, fetched once then again for the second path.
    make_file(&root.join("disc 2"), "empty too", 0, 5)?;
    make_file(&root.join("disc 2/bonus"), "cover copy.jpg", 70_000, 1)?;
    Ok(root)
}

fn same_tree(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<()> {
    for rel in [
        "cover.jpg",
        "disc 2/track.flac",
        "disc 2/bonus/notes.txt",
        "empty",
    ] {
        assert_eq!(
            std::fs::read(a.join(rel))?,
            std::fs::read(b.join(rel))?,
            "{rel} differs"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_directory_is_fetched_whole_or_one_file_and_each_file_is_one_swarm(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let root = make_tree(dir.path())?;
        let tracker = TestTracker::start().await?;
        let sharer = TestNode::start("sharer", &tracker.addr).await?;
        let shared = sharer.client.share(&root).await?;
        assert_eq!(shared.name.as_str(), "album");
        // The same track shared alone by someone else is the same swarm.
        let solo = TestNode::start("solo", &tracker.addr).await?;
        let track = solo.client.share(root.join("disc 2/track.flac")).await?;
        let records = solo.client.lookup(LookupKey::Id(track.id)).await?;
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].providers.len(),
            2,
            "one swarm for the file shared alone and in the directory"
        );

        let getter = TestNode::start("getter", &tracker.addr).await?;
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out)?;
        let done = getter
            .client
            .get(LookupKey::Id(shared.id), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(done.path, out.join("album"));
        same_tree(&root, &done.path)?;
        assert_eq!(done.size, shared.size);

        // By the directory's name, into another place; and then again: files already there
        // with the right hash are kept, not fetched.
        let out2 = dir.path().join("out2");
        std::fs::create_dir_all(&out2)?;
        let by_name = getter
            .client
            .get(LookupKey::Name(FileName::new("album")?), &out2)
            .await?
            .wait()
            .await?;
        same_tree(&root, &by_name.path)?;
        let again = getter
            .client
            .get(LookupKey::Name(FileName::new("album")?), &out2)
            .await?
            .wait()
            .await?;
        assert_eq!((again.fetched, again.resumed), (0, shared.size));
        assert!(again.present, "a complete copy is reported as present");

        // One file of it.
        let out3 = dir.path().join("out3");
        std::fs::create_dir_all(&out3)?;
        let request = GetRequest {
            file: Some(RelPath::new("disc 2/bonus/notes.txt")?),
            ..GetRequest::new(LookupKey::Id(shared.id), &out3)
        };
        let one = getter.client.get_with(request).await?.wait().await?;
        assert_eq!(one.path, out3.join("notes.txt"));
        assert_eq!(
            std::fs::read(&one.path)?,
            std::fs::read(root.join("disc 2/bonus/notes.txt"))?
        );
        assert_eq!(std::fs::read_dir(&out3)?.count(), 1, "nothing else written");

        for node in [getter, solo, sharer] {
            node.stop().await?;
        }
        tracker.stop().await
    })
    .await
}

#[derive(serde::Serialize)]
struct RawEntry {
    path: String,
    size: u64,
    id: FileId,
}

#[derive(serde::Serialize)]
struct RawCollection {
    v: u64,
    name: String,
    entries: Vec<RawEntry>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_with_an_escaping_path_is_refused_and_nothing_is_written() -> anyhow::Result<()>
{
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        // The bytes hash to the id the evil peer announces, so only validation can catch them.
        let payload = RawCollection {
            v: 1,
            name: "innocent".into(),
            entries: vec![RawEntry {
                path: "../escaped".into(),
                size: 4,
                id: FileId::of(b"evil"),
            }],
        };
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &payload)?;
        let id = FileId::of(&bytes);

        let served = bytes.clone();
        let evil = HostilePeer::start(
            &tracker.addr,
            vec![tracker::AnnouncedFile {
                id,
                name: FileName::new("innocent")?,
                size: 4,
                complete: true,
            }],
            Box::new(move |_| Some(transfer::Response::Collection(served.clone()))),
        )
        .await?;
        tracker.wait_peers(1).await?;

        let victim = TestNode::start("victim", &tracker.addr).await?;
        let out = dir.path().join("inside");
        std::fs::create_dir_all(&out)?;
        let err = victim
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await
            .unwrap_err();
        let msg = format!("{:#}", anyhow::Error::from(err));
        assert!(
            msg.contains("invalid") && msg.contains(".."),
            "clear error: {msg}"
        );
        assert!(
            !dir.path().join("escaped").exists(),
            "nothing written outside the target"
        );
        assert_eq!(
            std::fs::read_dir(&out)?.count(),
            0,
            "nothing written inside either"
        );
        drop(evil);
        victim.stop().await?;
        tracker.stop().await
    })
    .await
}
