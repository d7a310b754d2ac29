//! The embedding API of a node, in process on loopback: driving an extension behaviour with
//! `Client::with_extension`, unsharing, listing shares and downloads, cancelling a download.
//! Every test runs under [`bitswarm_tests::TEST_TIMEOUT`] and every wait has its own deadline.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitswarm_node::{new_with_extension, Config, Error, Event, GetError};
use bitswarm_protocols::{
    parse_addr,
    tracker::{AnnouncedFile, LookupKey},
    transfer, FileId, FileName, Manifest, DEFAULT_PIECE_SIZE,
};
use bitswarm_tests::{
    hostile::{self, HostilePeer},
    init_tracing, make_file, wait_until, within, TestNode, TestTracker,
};
use libp2p::{
    core::{transport::PortUse, Endpoint},
    swarm::{
        dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId,
};
use tokio::sync::mpsc;

/// Most events [`Watcher`] holds for the swarm to collect.
const WATCHER_QUEUE: usize = 64;

/// A tiny extension: it remembers every peer a connection was established with, emits that
/// peer as its event, and counts the closures run on it.
#[derive(Default)]
struct Watcher {
    established: Vec<PeerId>,
    calls: u32,
    queue: VecDeque<PeerId>,
}

impl NetworkBehaviour for Watcher {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = PeerId;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionEstablished(e) = event {
            self.established.push(e.peer_id);
            if self.queue.len() < WATCHER_QUEUE {
                self.queue.push_back(e.peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<PeerId, THandlerInEvent<Self>>> {
        match self.queue.pop_front() {
            Some(peer) => Poll::Ready(ToSwarm::GenerateEvent(peer)),
            None => Poll::Pending,
        }
    }
}

/// Waits up to `timeout` for an event `pick` takes, skipping the others.
async fn next_event<X, T>(
    events: &mut mpsc::Receiver<Event<X>>,
    timeout: Duration,
    mut pick: impl FnMut(Event<X>) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, async {
        loop {
            let event = events.recv().await.context("the node's events ended")?;
            if let Some(found) = pick(event) {
                return Ok(found);
            }
        }
    })
    .await
    .context("no such event in time")?
}

/// The providers the tracker lists for `file` (none when it lists no such file).
/// A leecher whose downloads neither silent requests nor a long wait for data end: they end
/// only when cancelled (or by the test's deadline).
async fn patient_leecher(tracker: &TestTracker) -> anyhow::Result<TestNode> {
    TestNode::start_with(
        "leecher",
        Config {
            tracker: Some(tracker.addr.clone()),
            request_timeout: Duration::from_secs(110),
            provider_wait: Duration::from_secs(110),
            ..Config::default()
        },
    )
    .await
}

async fn listed(tracker: &TestTracker, file: FileId) -> anyhow::Result<Vec<PeerId>> {
    Ok(hostile::lookup(&tracker.addr, file)
        .await?
        .into_iter()
        .map(|p| p.peer)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_extension_reaches_the_behaviour_and_the_node_facts_and_refuses_another_type(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let Some(libp2p::multiaddr::Protocol::P2p(tracker_id)) = tracker.addr.iter().last() else {
            anyhow::bail!("no /p2p in {}", tracker.addr)
        };
        let config = Config {
            listen_addrs: vec![parse_addr("127.0.0.1:0")?],
            tracker: Some(tracker.addr.clone()),
            root_span: tracing::info_span!("node", name = "watcher"),
            ..Config::default()
        };
        let (client, mut events, event_loop) = new_with_extension(config, Watcher::default())?;
        let task = tokio::spawn(event_loop.run());
        client.listen_addrs().await?;

        // The behaviour runs in the swarm: it saw the tracker connection, and its event came
        // out on the node's events.
        let first = next_event(&mut events, Duration::from_secs(20), |e| match e {
            Event::Extension(peer) => Some(peer),
            _ => None,
        })
        .await?;
        assert_eq!(first, tracker_id, "the first connection is the tracker's");
        let c = client.clone();
        wait_until(
            "the node is connected to the tracker",
            Duration::from_secs(20),
            || {
                let c = c.clone();
                async move {
                    c.with_extension(|_: &mut Watcher, cx| cx.tracker())
                        .await
                        .ok()
                        .flatten()
                }
            },
        )
        .await?;

        let facts = |w: &mut Watcher, cx: &mut bitswarm_node::NodeContext<'_>| {
            w.calls += 1;
            let connected: Vec<PeerId> = cx.connected_peers().collect();
            let shares: Vec<FileId> = cx.shares().map(|s| s.id).collect();
            (
                w.calls,
                w.established.clone(),
                connected,
                cx.tracker(),
                cx.local_peer_id(),
                shares,
            )
        };
        let (calls, established, connected, tracker_seen, local, shares) =
            client.with_extension(facts).await?;
        assert_eq!(calls, 1);
        assert!(established.contains(&tracker_id), "{established:?}");
        assert!(connected.contains(&tracker_id), "{connected:?}");
        assert_eq!(tracker_seen, Some(tracker_id));
        assert_eq!(local, client.peer_id());
        assert!(shares.is_empty());

        // Commands are ordered: the closure after a share sees the share.
        let path = make_file(dir.path(), "seen.bin", 10_000, 3)?;
        let shared = client.share(&path).await?;
        let (calls, .., shares) = client.with_extension(facts).await?;
        assert_eq!(calls, 2, "the same behaviour, not a copy");
        assert_eq!(shares, [shared.id]);
        let (holds, unknown) = client
            .with_extension(move |_: &mut Watcher, cx| {
                (cx.holds(&shared.id), cx.holds(&FileId::of(b"nothing")))
            })
            .await?;
        assert!(holds && !unknown);

        // The extension dials a peer by id and address; the node connects, and the behaviour
        // sees the connection.
        let other = TestNode::start("other", &tracker.addr).await?;
        let (other_id, other_addrs) = (other.client.peer_id(), other.client.listen_addrs().await?);
        let addrs = other_addrs.clone();
        client
            .with_extension(move |_: &mut Watcher, cx| cx.dial(other_id, addrs))
            .await??;
        let c = client.clone();
        wait_until(
            "the dialed peer is connected",
            Duration::from_secs(20),
            || {
                let c = c.clone();
                async move {
                    c.with_extension(move |w: &mut Watcher, cx| {
                        (cx.is_connected(&other_id) && w.established.contains(&other_id))
                            .then_some(())
                    })
                    .await
                    .ok()
                    .flatten()
                }
            },
        )
        .await?;
        let dialed = next_event(&mut events, Duration::from_secs(10), |e| match e {
            Event::Extension(peer) if peer == other_id => Some(peer),
            _ => None,
        })
        .await?;
        assert_eq!(dialed, other_id);

        // Dials per call are bounded.
        let too_many = client
            .with_extension(move |_: &mut Watcher, cx| {
                let results: Vec<bool> = (0..=bitswarm_node::MAX_EXTENSION_DIALS)
                    .map(|_| cx.dial(PeerId::random(), Vec::new()).is_ok())
                    .collect();
                results
            })
            .await?;
        assert_eq!(
            too_many.iter().filter(|ok| **ok).count(),
            bitswarm_node::MAX_EXTENSION_DIALS
        );
        assert!(!too_many[bitswarm_node::MAX_EXTENSION_DIALS]);

        // Another type is a typed error, and the closure does not run.
        let err = client
            .with_extension(|_: &mut dummy::Behaviour, _| ())
            .await
            .unwrap_err();
        match &err {
            Error::WrongExtension { expected, actual } => {
                assert!(expected.ends_with("dummy::Behaviour"), "{expected}");
                assert!(actual.ends_with("Watcher"), "{actual}");
            }
            other => panic!("expected WrongExtension, got {other:?}"),
        }
        // The plain node's extension is the dummy behaviour.
        let plain = other
            .client
            .with_extension(|_: &mut dummy::Behaviour, cx| cx.local_peer_id())
            .await?;
        assert_eq!(plain, other_id);
        assert!(matches!(
            other.client.with_extension(|_: &mut Watcher, _| ()).await,
            Err(Error::WrongExtension { .. })
        ));

        // A closure that panics is an error; the node runs on.
        let panicked = client
            .with_extension(|_: &mut Watcher, _| -> u32 { panic!("a buggy extension closure") })
            .await;
        assert!(
            matches!(panicked, Err(Error::ExtensionPanicked)),
            "{panicked:?}"
        );
        let (calls, ..) = client.with_extension(facts).await?;
        assert_eq!(calls, 3, "the panicking closure ran, the node survived it");

        other.stop().await?;
        client.shutdown().await?;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .context("node did not stop")??;
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshare_stops_serving_and_unannounces_and_shares_lists_what_is_left() -> anyhow::Result<()>
{
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let mut seeder = TestNode::start("seeder", &tracker.addr).await?;
        let me = seeder.client.peer_id();
        let a = seeder
            .client
            .share(make_file(dir.path(), "a.bin", 70_000, 1)?)
            .await?;
        let b = seeder
            .client
            .share(make_file(dir.path(), "b.bin", 80_000, 2)?)
            .await?;
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder)?;
        let inner_path = make_file(&folder, "inner.bin", 50_000, 3)?;
        let inner = FileId::of(&std::fs::read(&inner_path)?);
        let d = seeder.client.share(&folder).await?;
        let names = |shares: Vec<bitswarm_node::SharedFile>| -> Vec<String> {
            shares.into_iter().map(|s| s.name.to_string()).collect()
        };
        assert_eq!(
            names(seeder.client.shares().await?),
            ["a.bin", "b.bin", "folder"],
            "several paths, each shared once; a directory's files are not listed on their own"
        );
        for file in [a.id, b.id, d.id, inner] {
            assert!(listed(&tracker, file).await?.contains(&me), "{file} listed");
        }

        let unshared = seeder.client.unshare(a.id).await?;
        assert_eq!(unshared, a);
        let ev = next_event(&mut seeder.events, Duration::from_secs(5), |e| match e {
            Event::Unshared { file } => Some(file),
            _ => None,
        })
        .await?;
        assert_eq!(ev, a);
        assert_eq!(names(seeder.client.shares().await?), ["b.bin", "folder"]);
        assert!(
            !listed(&tracker, a.id).await?.contains(&me),
            "the tracker no longer lists this peer for the unshared file"
        );
        assert!(
            listed(&tracker, b.id).await?.contains(&me),
            "the other file stays listed"
        );
        assert!(matches!(
            seeder.client.unshare(a.id).await,
            Err(Error::NotShared(id)) if id == a.id
        ));

        // The directory goes with the file only it held.
        assert_eq!(seeder.client.unshare(d.id).await?, d);
        assert_eq!(names(seeder.client.shares().await?), ["b.bin"]);
        for file in [d.id, inner] {
            assert!(
                !listed(&tracker, file).await?.contains(&me),
                "{file} unlisted"
            );
        }

        // A get of the unshared file finds it nowhere; the one still shared is served.
        let leecher = TestNode::start_with(
            "leecher",
            Config {
                tracker: Some(tracker.addr.clone()),
                provider_wait: Duration::from_secs(3),
                ..Config::default()
            },
        )
        .await?;
        let out = dir.path().join("out");
        std::fs::create_dir(&out)?;
        let err = leecher
            .client
            .get(LookupKey::Id(a.id), &out)
            .await?
            .wait()
            .await
            .unwrap_err();
        assert!(
            matches!(err, GetError::UnknownFile(_) | GetError::NoProviders { .. }),
            "{err}"
        );
        assert!(!out.join("a.bin").exists());
        let got = leecher
            .client
            .get(LookupKey::Id(b.id), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(FileId::of(&std::fs::read(&got.path)?), b.id);

        leecher.stop().await?;
        seeder.stop().await?;
        tracker.stop().await
    })
    .await
}

/// A provider's "busy" answer: it keeps the asker waiting without dropping the provider.
fn busy() -> transfer::Response {
    transfer::Response::Error(bitswarm_protocols::ErrorCode::Busy)
}

/// A file's manifest, and an answer for a hostile provider that sends the manifest and the
/// first piece, and for every other piece says it is busy.
fn first_piece_only(
    data: &[u8],
    name: &str,
) -> anyhow::Result<(Manifest, bitswarm_tests::hostile::Answer)> {
    let manifest = Manifest::of_bytes(FileName::new(name)?, data)?;
    let wire = manifest.to_wire();
    let first = manifest.lengths().piece(0)?;
    let len = manifest.lengths().piece_len(first) as usize;
    let piece = data[..len].to_vec();
    let answer: bitswarm_tests::hostile::Answer = Box::new(move |request| match request {
        transfer::Request::Manifest { .. } => Some(transfer::Response::Manifest(wire.clone())),
        transfer::Request::Piece { index: 0, .. } => Some(transfer::Response::Piece(piece.clone())),
        // Every other piece: busy, again and again (an answer, so the provider is kept; never
        // the data). Left unanswered, a provider on probation whose first requests missed
        // piece 0 would be dropped before the first piece came in.
        transfer::Request::Piece { .. } => Some(busy()),
        transfer::Request::Have { .. } => None,
    });
    Ok((manifest, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_lists_progress_and_cancel_ends_the_wait_keeping_the_part_file_for_a_resume(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        // Two pieces: the first requests to the provider always include piece 0.
        let size = 2 * DEFAULT_PIECE_SIZE as usize;
        let path = make_file(dir.path(), "slow.bin", size, 9)?;
        let data = std::fs::read(&path)?;
        let (manifest, answer) = first_piece_only(&data, "slow.bin")?;
        let id = manifest.id();
        let first_len = u64::from(DEFAULT_PIECE_SIZE);
        let file = AnnouncedFile {
            id,
            name: FileName::new("slow.bin")?,
            size: size as u64,
            complete: true,
        };
        let slow = HostilePeer::start(&tracker.addr, vec![file], answer).await?;

        let mut leecher = patient_leecher(&tracker).await?;
        let out = dir.path().join("out");
        std::fs::create_dir(&out)?;
        assert!(leecher.client.downloads().await?.is_empty());
        let download = leecher.client.get(LookupKey::Id(id), &out).await?;
        let download_id = download.id();

        // Listed, with the first piece done and the rest outstanding.
        let c = leecher.client.clone();
        let status = wait_until("the first piece is in", Duration::from_secs(30), || {
            let c = c.clone();
            async move {
                let all = c.downloads().await.ok()?;
                all.into_iter()
                    .find(|s| s.id == download_id && s.progress.done >= first_len)
            }
        })
        .await?;
        assert_eq!(status.key, LookupKey::Id(id));
        assert_eq!(status.collection, None);
        assert_eq!(status.out_dir, out);
        assert_eq!(status.name.as_ref().map(FileName::as_str), Some("slow.bin"));
        assert_eq!(status.progress.id, Some(id));
        assert_eq!(status.progress.total, size as u64);
        assert_eq!(status.progress.done, first_len, "the rest never comes");
        assert_eq!(leecher.client.downloads().await?.len(), 1);

        // Cancelled from elsewhere while a task waits for it.
        let waiter = tokio::spawn(download.wait());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "still downloading before the cancel");
        let asked = Instant::now();
        assert!(leecher.client.cancel(download_id).await?);
        let result = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .context("the wait did not end within 5 s of the cancel")??;
        assert!(
            matches!(result, Err(GetError::Cancelled)),
            "{:?}",
            result.map(|d| d.path)
        );
        assert!(asked.elapsed() < Duration::from_secs(5));
        let ev = next_event(&mut leecher.events, Duration::from_secs(5), |e| match e {
            Event::Cancelled { download, file } => Some((download, file)),
            _ => None,
        })
        .await?;
        assert_eq!(ev, (download_id, Some(id)));
        assert!(leecher.client.downloads().await?.is_empty());
        assert!(
            !leecher.client.cancel(download_id).await?,
            "nothing left to cancel"
        );
        assert!(
            !out.join("slow.bin").exists(),
            "nothing under the final name"
        );
        let part = out.join(bitswarm_node::part_name(&id));
        assert!(part.exists(), "the .part file is kept");
        assert_eq!(std::fs::read_dir(&out)?.count(), 1, "and nothing else");

        // Again, resuming from the .part file; cancelled through its own handle this time.
        let download = leecher.client.get(LookupKey::Id(id), &out).await?;
        let c = leecher.client.clone();
        let again = download.id();
        assert_ne!(again, download_id, "ids are not reused");
        wait_until(
            "the resumed download is in transfer",
            Duration::from_secs(30),
            || {
                let c = c.clone();
                async move {
                    let all = c.downloads().await.ok()?;
                    all.into_iter()
                        .find(|s| s.id == again && s.progress.total > 0)
                }
            },
        )
        .await?;
        assert!(download.cancel().await?);
        let result = tokio::time::timeout(Duration::from_secs(5), download.wait())
            .await
            .context("the second wait did not end within 5 s of the cancel")?;
        assert!(matches!(result, Err(GetError::Cancelled)));
        assert!(!out.join("slow.bin").exists());

        // With an honest seeder the next get resumes from the kept piece.
        drop(slow);
        let seeder = TestNode::start("seeder", &tracker.addr).await?;
        seeder.client.share(&path).await?;
        let done = leecher
            .client
            .get(LookupKey::Id(id), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(std::fs::read(&done.path)?, data);
        assert_eq!(
            done.resumed, first_len,
            "the cancelled run's piece was kept"
        );
        assert!(!part.exists(), "renamed into place");

        seeder.stop().await?;
        leecher.stop().await?;
        tracker.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharing_a_big_directory_withdraws_every_file_and_the_node_is_not_cut_off(
) -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let seeder = TestNode::start("seeder", &tracker.addr).await?;
        let me = seeder.client.peer_id();
        let kept = seeder
            .client
            .share(make_file(dir.path(), "kept.bin", 10_000, 1)?)
            .await?;
        // One unannounce per file: 160 at once would pass the tracker's 16 streams per
        // connection (the rest failing, the files left listed) and its burst of 100 and 50
        // strikes (the tracker cutting the node off, dropping every registration).
        let folder = dir.path().join("many");
        std::fs::create_dir(&folder)?;
        let mut members = Vec::new();
        for i in 0..160 {
            let path = make_file(&folder, &format!("f{i:03}.bin"), 100, 100 + i)?;
            members.push(FileId::of(&std::fs::read(path)?));
        }
        let d = seeder.client.share(&folder).await?;
        let started = Instant::now();
        assert_eq!(seeder.client.unshare(d.id).await?, d);
        eprintln!(
            "unshared 161 ids in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            !listed(&tracker, d.id).await?.contains(&me),
            "the directory is withdrawn"
        );
        for (i, file) in members.iter().enumerate().step_by(8) {
            assert!(
                !listed(&tracker, *file).await?.contains(&me),
                "file {i} of the directory is still listed"
            );
        }
        assert!(
            listed(&tracker, kept.id).await?.contains(&me),
            "the node's other share is still listed: it was not cut off"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_file_of_a_collection_ends_the_whole_collection() -> anyhow::Result<()> {
    init_tracing();
    within(async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        // A provider of a two-file collection that sends each file's manifest and first piece,
        // then nothing: both files stay in download.
        let size = 2 * DEFAULT_PIECE_SIZE as usize;
        let mut manifests = Vec::new();
        let mut entries = Vec::new();
        for (i, name) in ["one.bin", "two.bin"].into_iter().enumerate() {
            let data = std::fs::read(make_file(dir.path(), name, size, 40 + i as u64)?)?;
            let manifest = Manifest::of_bytes(FileName::new(name)?, &data)?;
            let first = data[..DEFAULT_PIECE_SIZE as usize].to_vec();
            entries.push(bitswarm_protocols::CollectionEntry {
                path: bitswarm_protocols::RelPath::new(name)?,
                size: size as u64,
                id: manifest.id(),
            });
            manifests.push((manifest, first));
        }
        let collection = bitswarm_protocols::Collection::new(FileName::new("pair")?, entries)?;
        let (cid, bytes) = (collection.id(), collection.encode());
        let mut announced = vec![AnnouncedFile {
            id: cid,
            name: FileName::new("pair")?,
            size: 2 * size as u64,
            complete: true,
        }];
        for (m, _) in &manifests {
            announced.push(AnnouncedFile {
                id: m.id(),
                name: m.name().clone(),
                size: size as u64,
                complete: true,
            });
        }
        let served: Vec<(FileId, bitswarm_protocols::WireManifest, Vec<u8>)> = manifests
            .iter()
            .map(|(m, first)| (m.id(), m.to_wire(), first.clone()))
            .collect();
        let answer: bitswarm_tests::hostile::Answer = Box::new(move |request| match request {
            transfer::Request::Manifest { id } if *id == cid => {
                Some(transfer::Response::Collection(bytes.clone()))
            }
            transfer::Request::Manifest { id } => served
                .iter()
                .find(|(f, _, _)| f == id)
                .map(|(_, wire, _)| transfer::Response::Manifest(wire.clone())),
            transfer::Request::Piece { id, index: 0, .. } => served
                .iter()
                .find(|(f, _, _)| f == id)
                .map(|(_, _, first)| transfer::Response::Piece(first.clone())),
            transfer::Request::Piece { .. } => Some(busy()),
            transfer::Request::Have { .. } => None,
        });
        let _slow = HostilePeer::start(&tracker.addr, announced, answer).await?;

        let leecher = patient_leecher(&tracker).await?;
        let out = dir.path().join("out");
        std::fs::create_dir(&out)?;
        let download = leecher.client.get(LookupKey::Id(cid), &out).await?;
        let waiter = tokio::spawn(download.wait());
        let c = leecher.client.clone();
        let files = wait_until("both files in download", Duration::from_secs(30), || {
            let c = c.clone();
            async move {
                let all = c.downloads().await.ok()?;
                let files: Vec<_> = all.into_iter().filter(|s| s.collection.is_some()).collect();
                (files.len() == 2).then_some(files)
            }
        })
        .await?;
        // Cancel one file: the collection's wait ends, and the other file is not left running
        // with nobody waiting for it.
        assert!(leecher.client.cancel(files[0].id).await?);
        let result = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .context("the collection's wait did not end")??;
        assert!(matches!(result, Err(GetError::Cancelled)), "{result:?}");
        let c = leecher.client.clone();
        wait_until("no download left", Duration::from_secs(10), || {
            let c = c.clone();
            async move { c.downloads().await.ok()?.is_empty().then_some(()) }
        })
        .await?;
        Ok(())
    })
    .await
}
