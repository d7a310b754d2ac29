//! The downloads driven as a pure core: scripted inputs, a fixed clock, and the actions each
//! input produces. (The provider rules on their own are tested in `providers`.)

use std::path::Path;

use bitswarm_protocols::{tracker::Provider, WireManifest};
use libp2p::core::{transport::PortUse, ConnectedPoint, Endpoint};
use rand::SeedableRng;
use tokio::sync::oneshot::error::TryRecvError;

use super::*;
use crate::place::{Finished, Opened};

/// Manifests pin the piece size to the file size: small files have the default.
const PIECE: u32 = bitswarm_protocols::DEFAULT_PIECE_SIZE;

/// A file of `pieces` pieces and its manifest.
fn manifest(pieces: u32) -> (Vec<u8>, Arc<Manifest>) {
    let size = u64::from(pieces) * u64::from(PIECE);
    let data = vec![7u8; size as usize];
    let m = Manifest::of_bytes(FileName::new("data.bin").unwrap(), &data).unwrap();
    (data, Arc::new(m))
}

fn wire(m: &Manifest) -> WireManifest {
    m.to_wire()
}

/// One node's downloads with the state they share, and a clock the test moves.
struct World {
    d: Downloads,
    connections: Connections,
    holdings: Holdings,
    stats: LocalStats,
    now: Instant,
    next_conn: usize,
    next_download: u64,
}

impl World {
    fn new() -> Self {
        let config = Config {
            provider_wait: Duration::from_secs(30),
            ..Config::default()
        };
        World {
            d: Downloads::new(
                Settings::new(&config),
                PeerId::random(),
                StdRng::seed_from_u64(7),
                Arc::new(BufferPool::default()),
            ),
            connections: Connections::default(),
            holdings: Holdings::default(),
            stats: LocalStats::default(),
            now: Instant::now(),
            next_conn: 0,
            next_download: 0,
        }
    }

    /// Runs one input and returns the actions it produced.
    fn call(&mut self, f: impl FnOnce(&mut Downloads, &mut Cx<'_>)) -> Vec<Action> {
        let mut out = Vec::new();
        let mut cx = Cx {
            now: self.now,
            connections: &self.connections,
            holdings: &mut self.holdings,
            stats: &mut self.stats,
            out: &mut out,
        };
        f(&mut self.d, &mut cx);
        out
    }

    /// `actions` must be exactly one collection decoding: runs it as the event loop would and
    /// returns what its result leads to.
    fn run_decode(&mut self, download: DownloadId, actions: Vec<Action>) -> Vec<Action> {
        let [Action::Disk { job, .. }] = <[Action; 1]>::try_from(actions).unwrap() else {
            panic!("one decoding job expected");
        };
        assert!(matches!(job, DiskJob::DecodeCollection { .. }));
        let done = job.run(download, &BufferPool::default());
        self.call(|d, cx| d.on_task(cx, done))
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// A direct TCP connection to `peer`.
    fn connect(&mut self, peer: PeerId) {
        self.next_conn += 1;
        let point = ConnectedPoint::Dialer {
            address: "/ip4/127.0.0.1/tcp/4000".parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        let id = ConnectionId::new_unchecked(self.next_conn);
        self.connections.established(peer, id, &point);
    }

    fn start(
        &mut self,
        key: LookupKey,
    ) -> (DownloadId, oneshot::Receiver<Result<Outcome, GetError>>) {
        let (id, rx, actions) = self.start_in(key, None);
        assert!(
            matches!(actions[..], [Action::Lookup { .. }]),
            "{actions:?}"
        );
        (id, rx)
    }

    /// Starts a download of `key`, a file of the collection download `collection` if given.
    fn start_in(
        &mut self,
        key: LookupKey,
        collection: Option<DownloadId>,
    ) -> (
        DownloadId,
        oneshot::Receiver<Result<Outcome, GetError>>,
        Vec<Action>,
    ) {
        let (tx, rx) = oneshot::channel();
        self.next_download += 1;
        let get = Get {
            id: DownloadId::new(self.next_download),
            collection,
            key,
            out_dir: PathBuf::from("/nonexistent"),
            dir: None,
            name: None,
            max_size: u64::MAX,
        };
        let progress = Arc::new(watch::channel(Progress::default()).0);
        let mut id = None;
        let actions = self.call(|d, cx| id = Some(d.start(cx, get, progress, tx)));
        (id.unwrap(), rx, actions)
    }

    /// Starts a download of `m` whose lookup lists `providers` (all complete) and whose output
    /// directory does not hold it: it is now asking for the manifest.
    fn reach_manifest(
        &mut self,
        m: &Manifest,
        providers: &[PeerId],
    ) -> (
        DownloadId,
        oneshot::Receiver<Result<Outcome, GetError>>,
        Vec<Action>,
    ) {
        let (id, rx) = self.start(LookupKey::Id(m.id()));
        let actions = self.call(|d, cx| d.on_lookup(cx, id, vec![record(m, providers)]));
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::Disk {
                    job: DiskJob::Check { .. },
                    ..
                }
            )),
            "the output directory is checked first: {actions:?}"
        );
        assert!(manifest_asks(&actions).is_empty(), "not before the check");
        let done = TaskDone::Checked {
            download: id,
            result: Ok(None),
        };
        let actions = self.call(|d, cx| d.on_task(cx, done));
        (id, rx, actions)
    }

    /// Drives the download on to `Transfer`: `from` sends the manifest, and the `.part` file
    /// (in `dir`) opens empty.
    fn reach_transfer(
        &mut self,
        id: DownloadId,
        m: &Arc<Manifest>,
        from: PeerId,
        dir: &Path,
    ) -> Vec<Action> {
        let tag = TransferRequest {
            download: id,
            want: Want::Manifest,
        };
        let response = transfer::Response::Manifest(wire(m));
        let actions = self.call(|d, cx| d.on_response(cx, from, tag, response));
        assert!(
            matches!(
                actions[..],
                [Action::Disk {
                    job: DiskJob::Open { .. },
                    ..
                }]
            ),
            "{actions:?}"
        );
        let opened = Opened::Part {
            dir: Dir::open(dir).unwrap(),
            file: tempfile::tempfile().unwrap(),
            resumed: Vec::new(),
        };
        let done = TaskDone::Opened {
            download: id,
            result: Ok(opened),
        };
        self.call(|d, cx| d.on_task(cx, done))
    }
}

fn record(m: &Manifest, providers: &[PeerId]) -> FileRecord {
    FileRecord {
        id: m.id(),
        name: m.name().clone(),
        size: m.lengths().size(),
        providers: providers
            .iter()
            .map(|peer| Provider {
                peer: *peer,
                addrs: Vec::new(),
                complete: true,
            })
            .collect(),
        seeders: providers.len() as u32,
    }
}

fn manifest_asks(actions: &[Action]) -> Vec<PeerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request {
                peer,
                request: transfer::Request::Manifest { .. },
                ..
            } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn piece_requests(actions: &[Action]) -> Vec<(PeerId, TransferRequest)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request {
                peer,
                request: transfer::Request::Piece { .. },
                tag,
            } => Some((*peer, *tag)),
            _ => None,
        })
        .collect()
}

/// Jobs that touch files (not the decoding of a collection).
fn file_jobs(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| {
            matches!(a, Action::Disk { job, .. } if !matches!(job, DiskJob::DecodeCollection { .. }))
        })
        .count()
}

fn disk_jobs(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Disk { .. }))
        .count()
}

fn dropped(actions: &[Action]) -> Vec<PeerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(Event::ProviderDropped { peer, .. }) => Some(*peer),
            _ => None,
        })
        .collect()
}

fn peers(n: usize) -> Vec<PeerId> {
    let mut peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
    peers.sort();
    peers
}

#[test]
fn the_manifest_is_asked_of_a_connected_provider_and_an_unconnected_one_is_dialed() {
    let (_, m) = manifest(4);
    let [near, far] = peers(2)[..] else {
        unreachable!()
    };
    let mut w = World::new();
    w.connect(near);
    let (_, _rx, actions) = w.reach_manifest(&m, &[near, far]);
    assert_eq!(manifest_asks(&actions), vec![near]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Dial(p) if *p == far)),
        "the other is dialed meanwhile, for pieces (or the manifest if the first fails)"
    );

    // Only an unconnected provider: it is dialed, not asked.
    let mut w = World::new();
    let (_, _rx, actions) = w.reach_manifest(&m, &[far]);
    assert!(manifest_asks(&actions).is_empty());
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Dial(p) if *p == far)));
}

#[test]
fn a_peer_that_only_asked_for_the_file_is_not_asked_for_its_manifest_while_a_listed_one_is_dialed()
{
    let (_, m) = manifest(4);
    let [listed, injected] = peers(2)[..] else {
        unreachable!()
    };
    let mut w = World::new();
    w.connect(injected);
    let (_, _rx, actions) = w.reach_manifest(&m, &[listed]);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Dial(p) if *p == listed)));
    // Connected, asking us for the file: it joins, but the listed one is still being dialed.
    let actions = w.call(|d, cx| d.on_interested_peer(cx, injected, m.id()));
    assert!(
        manifest_asks(&actions).is_empty(),
        "an injected provider waits while a listed one may come: {actions:?}"
    );
    // The listed one cannot be dialed: now the injected one is asked.
    let actions = w.call(|d, cx| d.on_dial_failed(cx, listed, "refused"));
    assert_eq!(manifest_asks(&actions), vec![injected]);
}

#[test]
fn a_silent_manifest_provider_gives_its_slot_to_the_next_after_its_patience() {
    let (_, m) = manifest(4);
    let all = peers(3);
    let mut w = World::new();
    for p in &all {
        w.connect(*p);
    }
    let (_, _rx, actions) = w.reach_manifest(&m, &all);
    let mut asked = manifest_asks(&actions);
    assert_eq!(asked.len(), 1);
    // The next tick adds a second request (two are waited for at once)...
    w.advance(Duration::from_millis(300));
    asked.extend(manifest_asks(&w.call(|d, cx| d.tick(cx))));
    assert_eq!(asked.len(), 2);
    // ...but no third while both are within their patience.
    w.advance(Duration::from_millis(300));
    assert!(manifest_asks(&w.call(|d, cx| d.tick(cx))).is_empty());
    // The first has sat on its request past the patience: the third provider is asked.
    w.advance(MANIFEST_PATIENCE);
    asked.extend(manifest_asks(&w.call(|d, cx| d.tick(cx))));
    asked.sort();
    assert_eq!(asked, all, "each provider asked once");
}

#[test]
fn a_busy_manifest_provider_is_not_asked_again_until_the_backoff_lifts() {
    let (_, m) = manifest(4);
    let [only] = peers(1)[..] else { unreachable!() };
    let mut w = World::new();
    w.connect(only);
    let (id, _rx, actions) = w.reach_manifest(&m, &[only]);
    assert_eq!(manifest_asks(&actions), vec![only]);
    let tag = TransferRequest {
        download: id,
        want: Want::Manifest,
    };
    let busy = transfer::Response::Error(ErrorCode::Busy);
    let actions = w.call(|d, cx| d.on_response(cx, only, tag, busy));
    assert!(
        manifest_asks(&actions).is_empty(),
        "asked again at once: {actions:?}"
    );
    w.advance(Duration::from_secs(1));
    let actions = w.call(|d, cx| d.tick(cx));
    assert_eq!(
        manifest_asks(&actions),
        vec![only],
        "asked again after the tick"
    );
}

#[test]
fn a_download_with_no_provider_sending_data_fails_when_the_provider_wait_expires() {
    let (_, m) = manifest(4);
    let [gone] = peers(1)[..] else { unreachable!() };
    let mut w = World::new();
    let (_, mut rx, _) = w.reach_manifest(&m, &[gone]);
    w.advance(Duration::from_secs(29));
    w.call(|d, cx| d.tick(cx));
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "still waiting at 29 s"
    );
    w.advance(Duration::from_secs(2));
    let actions = w.call(|d, cx| d.tick(cx));
    match rx.try_recv() {
        Ok(Err(GetError::NoProviders { file, waited, .. })) => {
            assert_eq!(file, m.id());
            assert_eq!(waited, Duration::from_secs(30));
        }
        other => panic!("{other:?}"),
    }
    assert!(w.d.is_empty());
    assert_eq!(disk_jobs(&actions), 0);
}

#[test]
fn a_lookup_naming_nothing_fails_the_get_as_an_unknown_file() {
    let (_, m) = manifest(1);
    let mut w = World::new();
    let (id, mut rx) = w.start(LookupKey::Id(m.id()));
    let mut other = record(&m, &peers(1));
    other.id = FileId::of(b"another file");
    let actions = w.call(|d, cx| d.on_lookup(cx, id, vec![other]));
    assert!(matches!(rx.try_recv(), Ok(Err(GetError::UnknownFile(_)))));
    assert_eq!(disk_jobs(&actions), 0);
}

#[test]
fn a_hostile_collection_produces_no_file_action() {
    let [liar, honest] = peers(2)[..] else {
        unreachable!()
    };
    // Bytes that hash to the id asked for but are no valid collection: the collection's own
    // fault, so the get fails, and nothing is written.
    let garbage = b"\xa1\x64name\x63../".to_vec();
    let id = FileId::of(&garbage);
    let fake = FileRecord {
        id,
        name: FileName::new("pack").unwrap(),
        size: 10,
        providers: vec![],
        seeders: 0,
    };
    let mut w = World::new();
    w.connect(liar);
    w.connect(honest);
    let (dl, mut rx) = w.start(LookupKey::Id(id));
    let mut lookup = fake.clone();
    lookup.providers = record_providers(&[liar, honest]);
    w.call(|d, cx| d.on_lookup(cx, dl, vec![lookup]));
    let done = TaskDone::Checked {
        download: dl,
        result: Ok(None),
    };
    let asked = manifest_asks(&w.call(|d, cx| d.on_task(cx, done)));
    assert_eq!(asked.len(), 1);
    let tag = TransferRequest {
        download: dl,
        want: Want::Manifest,
    };
    // First a lie: bytes that do not hash to the id. They are checked off the event loop;
    // that provider is dropped, and no file job follows.
    let lie = transfer::Response::Collection(b"not the collection".to_vec());
    let actions = w.call(|d, cx| d.on_response(cx, asked[0], tag, lie));
    let actions = w.run_decode(dl, actions);
    assert_eq!(dropped(&actions), vec![asked[0]]);
    assert_eq!(file_jobs(&actions), 0);
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "the get goes on"
    );
    let next = manifest_asks(&actions);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0], asked[0]);
    // Then the bytes of the id, which do not decode: the get fails, still with no file job.
    let bad = transfer::Response::Collection(garbage);
    let actions = w.call(|d, cx| d.on_response(cx, next[0], tag, bad));
    let actions = w.run_decode(dl, actions);
    assert_eq!(file_jobs(&actions), 0);
    assert!(
        matches!(rx.try_recv(), Ok(Err(GetError::InvalidCollection { .. }))),
        "an invalid collection fails the get"
    );
    assert!(w.d.is_empty());
}

fn record_providers(peers: &[PeerId]) -> Vec<Provider> {
    peers
        .iter()
        .map(|peer| Provider {
            peer: *peer,
            addrs: Vec::new(),
            complete: true,
        })
        .collect()
}

#[test]
fn a_manifest_whose_size_disagrees_with_the_tracker_is_that_providers_failure() {
    let (_, m) = manifest(4);
    let [liar, honest] = peers(2)[..] else {
        unreachable!()
    };
    let mut w = World::new();
    w.connect(liar);
    w.connect(honest);
    let (id, _rx) = w.start(LookupKey::Id(m.id()));
    let mut r = record(&m, &[liar, honest]);
    r.size -= 1;
    w.call(|d, cx| d.on_lookup(cx, id, vec![r]));
    let done = TaskDone::Checked {
        download: id,
        result: Ok(None),
    };
    let first = manifest_asks(&w.call(|d, cx| d.on_task(cx, done)))[0];
    let tag = TransferRequest {
        download: id,
        want: Want::Manifest,
    };
    let actions =
        w.call(|d, cx| d.on_response(cx, first, tag, transfer::Response::Manifest(wire(&m))));
    assert_eq!(dropped(&actions), vec![first]);
    assert_eq!(
        disk_jobs(&actions),
        0,
        "no .part is opened for a manifest of another size"
    );
}

#[test]
fn a_provider_sending_a_bad_piece_is_banned_its_pieces_go_to_another_and_the_tracker_cannot_readmit_it(
) {
    let (_, m) = manifest(8);
    let all = peers(2);
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new();
    for p in &all {
        w.connect(*p);
    }
    let (id, _rx, actions) = w.reach_manifest(&m, &all);
    let first = manifest_asks(&actions)[0];
    let actions = w.reach_transfer(id, &m, first, dir.path());
    let requests = piece_requests(&actions);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Announce)),
        "a leecher announces"
    );
    let (liar, honest) = (all[0], all[1]);
    let lies: Vec<_> = requests.iter().filter(|(p, _)| *p == liar).collect();
    assert!(
        !lies.is_empty() && requests.iter().any(|(p, _)| *p == honest),
        "{requests:?}"
    );
    let (_, tag) = *lies[0];
    let Want::Piece(piece) = tag.want else {
        unreachable!()
    };
    // The piece arrives and is stored (verified) on a blocking task...
    let bytes = transfer::Response::Piece(vec![0; PIECE as usize]);
    let actions = w.call(|d, cx| d.on_response(cx, liar, tag, bytes));
    assert!(matches!(
        actions[..],
        [Action::Disk {
            job: DiskJob::Store { .. },
            ..
        }]
    ));
    // ...which finds it bad: the liar is banned, and its pieces are asked of the honest one.
    let done = TaskDone::PieceStored {
        download: id,
        peer: liar,
        piece,
        result: Err(crate::store::StoreError::BadPiece),
    };
    let actions = w.call(|d, cx| d.on_task(cx, done));
    assert_eq!(dropped(&actions), vec![liar]);
    assert_eq!(w.stats.bad_pieces, 1);
    assert!(piece_requests(&actions).iter().all(|(p, _)| *p == honest));
    // A re-lookup listing it again does not bring it back.
    w.advance(Duration::from_secs(5));
    let actions = w.call(|d, cx| d.on_lookup(cx, id, vec![record(&m, &all)]));
    assert!(piece_requests(&actions).iter().all(|(p, _)| *p == honest));
    assert!(!w.d.map[&id].providers.uses(&liar));
}

#[test]
fn a_provider_dropped_for_timeouts_is_readmitted_when_the_tracker_lists_it_again_after_a_backoff() {
    let (_, m) = manifest(16);
    let [slow] = peers(1)[..] else { unreachable!() };
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new();
    w.connect(slow);
    let (id, _rx, _) = w.reach_manifest(&m, &[slow]);
    let mut requests = piece_requests(&w.reach_transfer(id, &m, slow, dir.path()));
    for _ in 0..3 {
        let (peer, tag) = requests.remove(0);
        let actions = w.call(|d, cx| d.on_failure(cx, peer, tag, &OutboundFailure::Timeout));
        requests.extend(piece_requests(&actions));
    }
    assert!(
        !w.d.map[&id].providers.uses(&slow),
        "three timeouts drop it"
    );
    w.call(|d, cx| d.on_lookup(cx, id, vec![record(&m, &[slow])]));
    assert!(
        !w.d.map[&id].providers.uses(&slow),
        "not at the next re-lookup"
    );
    w.advance(providers::MIN_READMIT);
    let actions = w.call(|d, cx| d.on_lookup(cx, id, vec![record(&m, &[slow])]));
    assert!(
        w.d.map[&id].providers.uses(&slow),
        "listed again after its backoff: re-admitted"
    );
    assert!(!piece_requests(&actions).is_empty(), "and asked again");
}

#[test]
fn the_last_verified_piece_finishes_the_file_and_answers_the_get() {
    let (_, m) = manifest(2);
    let [seeder] = peers(1)[..] else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new();
    w.connect(seeder);
    let (id, mut rx, _) = w.reach_manifest(&m, &[seeder]);
    let mut requests = piece_requests(&w.reach_transfer(id, &m, seeder, dir.path()));
    let mut finish = Vec::new();
    while let Some((peer, tag)) = requests.pop() {
        let Want::Piece(piece) = tag.want else {
            unreachable!()
        };
        let done = TaskDone::PieceStored {
            download: id,
            peer,
            piece,
            result: Ok(()),
        };
        let actions = w.call(|d, cx| d.on_task(cx, done));
        requests.extend(piece_requests(&actions));
        finish.extend(actions);
    }
    assert!(
        finish.iter().any(|a| matches!(
            a,
            Action::Disk {
                job: DiskJob::Finish { .. },
                ..
            }
        )),
        "{finish:?}"
    );
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "not done before the rename"
    );
    let done = TaskDone::Finished {
        download: id,
        result: Ok(Finished::Renamed),
    };
    let actions = w.call(|d, cx| d.on_task(cx, done));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Emit(Event::Downloaded { .. }))));
    match rx.try_recv() {
        Ok(Ok(Outcome::File(done))) => {
            assert_eq!(done.fetched, m.lengths().size());
            assert_eq!(done.sources.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.stats.downloaded, m.lengths().size());
}

#[test]
fn a_second_download_of_the_same_file_is_refused_while_the_first_runs() {
    let (_, m) = manifest(2);
    let mut w = World::new();
    let providers = peers(1);
    let (_, _rx1, _) = w.reach_manifest(&m, &providers);
    let (id2, mut rx2) = w.start(LookupKey::Id(m.id()));
    w.call(|d, cx| d.on_lookup(cx, id2, vec![record(&m, &providers)]));
    assert!(matches!(rx2.try_recv(), Ok(Err(GetError::Busy(_)))));
}

#[test]
fn a_name_resolves_to_the_file_most_hosts_seed_unless_another_comes_close() {
    let rec = |data: &[u8], seeders| FileRecord {
        id: FileId::of(data),
        name: FileName::new("song.ogg").unwrap(),
        size: 1,
        providers: vec![],
        seeders,
    };
    let key = LookupKey::Name(FileName::new("song.ogg").unwrap());
    // The file six hosts seed, and a stray (or hostile) copy from one host.
    let chosen = choose_record(&key, vec![rec(b"stray", 1), rec(b"real", 6)]).unwrap();
    assert_eq!(chosen.id, FileId::of(b"real"));
    // Two files about as widely seeded under one name: the user must pick by id.
    assert!(matches!(
        choose_record(&key, vec![rec(b"a", 3), rec(b"b", 2)]),
        Err(GetError::Ambiguous { .. })
    ));
    // A tracker that does not count seeders: ambiguous, as before.
    assert!(matches!(
        choose_record(&key, vec![rec(b"a", 0), rec(b"b", 0)]),
        Err(GetError::Ambiguous { .. })
    ));
}

#[test]
fn a_cancelled_download_answers_cancelled_stops_serving_its_copy_and_ignores_late_results() {
    let (_, m) = manifest(4);
    let [seeder] = peers(1)[..] else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new();
    w.connect(seeder);
    let (id, mut rx, _) = w.reach_manifest(&m, &[seeder]);
    let requests = piece_requests(&w.reach_transfer(id, &m, seeder, dir.path()));
    assert!(!requests.is_empty());
    assert!(w.holdings.holds(&m.id()), "the partial copy is served");
    let status = w.d.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].id, id);
    assert_eq!(
        status[0].name.as_ref().map(|n| n.as_str()),
        Some("data.bin")
    );
    assert_eq!(status[0].progress.total, m.lengths().size());
    assert_eq!(w.d.providers_of(&m.id()).collect::<Vec<_>>(), [seeder]);

    let mut cancelled = false;
    let actions = w.call(|d, cx| cancelled = d.cancel(cx, id));
    assert!(cancelled);
    assert!(matches!(rx.try_recv(), Ok(Err(GetError::Cancelled))));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Unannounce(f) if *f == m.id())),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Emit(Event::Cancelled { download, file: Some(f) }) if *download == id && *f == m.id()
    )));
    assert!(!w.holdings.holds(&m.id()), "its copy is no longer served");
    assert!(w.d.status().is_empty());
    assert_eq!(w.d.providers_of(&m.id()).count(), 0);
    // A piece stored after the cancel changes nothing.
    let (peer, tag) = requests[0];
    let Want::Piece(piece) = tag.want else {
        unreachable!()
    };
    let done = TaskDone::PieceStored {
        download: id,
        peer,
        piece,
        result: Ok(()),
    };
    assert!(w.call(|d, cx| d.on_task(cx, done)).is_empty());
    let mut again = true;
    w.call(|d, cx| again = d.cancel(cx, id));
    assert!(!again, "nothing left to cancel");
}

#[test]
fn cancelling_a_collection_cancels_its_files_and_those_asked_for_later() {
    let (_, m) = manifest(2);
    let (_, other) = manifest(3);
    let mut w = World::new();
    let collection = DownloadId::new(1000);
    let (a, mut rx_a, _) = w.start_in(LookupKey::Id(m.id()), Some(collection));
    let (b, mut rx_b) = w.start(LookupKey::Id(other.id()));
    let mut cancelled = false;
    w.call(|d, cx| cancelled = d.cancel(cx, collection));
    assert!(cancelled);
    assert!(matches!(rx_a.try_recv(), Ok(Err(GetError::Cancelled))));
    assert!(
        matches!(rx_b.try_recv(), Err(TryRecvError::Empty)),
        "another download runs on"
    );
    assert_eq!(w.d.status().iter().map(|s| s.id).collect::<Vec<_>>(), [b]);
    assert_ne!(a, b);
    let (_, mut rx_late, actions) = w.start_in(LookupKey::Id(other.id()), Some(collection));
    assert!(actions.is_empty(), "no lookup: {actions:?}");
    assert!(matches!(rx_late.try_recv(), Ok(Err(GetError::Cancelled))));
}

#[test]
fn a_finishing_download_is_not_cancelled_and_completes() {
    let (_, m) = manifest(1);
    let [seeder] = peers(1)[..] else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new();
    w.connect(seeder);
    let (id, mut rx, _) = w.reach_manifest(&m, &[seeder]);
    let requests = piece_requests(&w.reach_transfer(id, &m, seeder, dir.path()));
    let [(peer, tag)] = requests[..] else {
        panic!("{requests:?}")
    };
    let Want::Piece(piece) = tag.want else {
        unreachable!()
    };
    let done = TaskDone::PieceStored {
        download: id,
        peer,
        piece,
        result: Ok(()),
    };
    w.call(|d, cx| d.on_task(cx, done));
    let mut cancelled = true;
    w.call(|d, cx| cancelled = d.cancel(cx, id));
    assert!(!cancelled, "the rename is under way");
    let done = TaskDone::Finished {
        download: id,
        result: Ok(Finished::Renamed),
    };
    w.call(|d, cx| d.on_task(cx, done));
    assert!(matches!(rx.try_recv(), Ok(Ok(Outcome::File(_)))));
}
