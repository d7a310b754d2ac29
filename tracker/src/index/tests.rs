//! Unit tests of [`FileIndex`]: each checks the index's invariants after acting on it.

use super::*;

const TTL: Duration = Duration::from_secs(90);

fn index() -> FileIndex {
    FileIndex::new(Limits::default(), TTL, PeerId::random(), 7)
}

fn file(data: &str, name: &str, complete: bool) -> AnnouncedFile {
    AnnouncedFile {
        id: FileId::of(data.as_bytes()),
        name: FileName::new(name).unwrap(),
        size: data.len() as u64,
        complete,
    }
}

fn announce(files: Vec<AnnouncedFile>) -> Announce {
    Announce {
        files,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
    }
}

fn name(s: &str) -> LookupKey {
    LookupKey::Name(FileName::new(s).unwrap())
}

fn id(data: &str) -> LookupKey {
    LookupKey::Id(FileId::of(data.as_bytes()))
}

impl FileIndex {
    /// Panics when an invariant of the module docs does not hold.
    fn check(&self) {
        let mut holdings = 0;
        let mut name_bytes = 0;
        for (peer, p) in &self.peers {
            for (fid, h) in &p.files {
                assert!(
                    self.files[fid].holders().any(|(q, _)| q == peer),
                    "holder missing"
                );
                holdings += 1;
                name_bytes += h.name.as_str().len();
            }
        }
        assert_eq!((self.holdings, self.name_bytes), (holdings, name_bytes));
        let mut hosts: HashMap<Prefix, usize> = HashMap::new();
        for p in self.peers.values() {
            if let Some(h) = p.host {
                *hosts.entry(h.ip).or_default() += 1;
                *hosts.entry(h.net).or_default() += 1;
            }
        }
        assert_eq!(hosts, self.hosts, "host counts");
        let mut held: HashMap<Prefix, usize> = HashMap::new();
        for p in self.peers.values() {
            if let Some(h) = p.host.filter(|_| !p.files.is_empty()) {
                *held.entry(h.ip).or_default() += p.files.len();
                *held.entry(h.net).or_default() += p.files.len();
            }
        }
        assert_eq!(held, self.host_holdings, "holdings per host");
        for (fid, f) in &self.files {
            assert!(f.holder_count() > 0, "file without holders");
            assert!(!f.names.is_empty(), "file with holders but no name");
            assert!(f.names.len() <= MAX_NAMES_PER_FILE);
            let mut seeding: HashSet<Option<Prefix>> = HashSet::new();
            let mut local = 0;
            for (peer, complete) in f.holders() {
                assert!(self.peers[peer].files.contains_key(fid), "holding missing");
                if complete {
                    match self.peers[peer].host {
                        Some(h) => {
                            seeding.insert(Some(h.ip));
                        }
                        None => local += 1,
                    }
                }
            }
            assert_eq!(f.seeding_hosts(), seeding.len() + local, "seeding hosts");
            let votes: usize = f.sizes.values().sum();
            assert!(votes <= f.holder_count(), "size votes");
            for (n, count) in f.names.iter() {
                let counted = f
                    .holders()
                    .filter(|(p, _)| {
                        let h = &self.peers[*p].files[fid];
                        h.counted && h.name == *n
                    })
                    .count();
                assert_eq!(*count, counted, "name count of {n}");
                assert!(
                    self.names.files(n).is_some_and(|ids| ids.contains(fid)),
                    "name index misses {n}"
                );
            }
        }
        for n in self.names.names() {
            let ids = self.names.files(n).unwrap();
            assert!(!ids.is_empty());
            for fid in ids {
                assert!(self.files[fid].names.contains_key(n), "stale name {n}");
            }
        }
    }

    fn names_indexed(&self) -> Vec<String> {
        self.names.names().map(|n| n.to_string()).collect()
    }
}

#[test]
fn given_empty_index_when_peer_announces_then_lookup_by_id_finds_it() {
    let mut idx = index();
    let peer = PeerId::random();
    let res = idx
        .announce(
            peer,
            announce(vec![file("a", "a.txt", true)]),
            Instant::now(),
        )
        .unwrap();
    assert_eq!(
        res,
        Announced {
            new_peer: true,
            files: 1,
            dropped_addrs: 0,
            dropped_files: 0,
        }
    );
    let found = idx.lookup(&id("a"), 0);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name.as_str(), "a.txt");
    assert_eq!(found[0].size, 1);
    assert_eq!(found[0].providers.len(), 1);
    assert_eq!(found[0].providers[0].peer, peer);
    assert!(found[0].providers[0].complete);
    assert_eq!(found[0].providers[0].addrs.len(), 1);
    assert!(idx.lookup(&id("nope"), 0).is_empty());
    idx.check();
}

#[test]
fn given_registered_peer_when_it_reannounces_then_expiry_is_refreshed_and_files_add_up() {
    let mut idx = index();
    let peer = PeerId::random();
    let t0 = Instant::now();
    idx.announce(peer, announce(vec![file("a", "a", false)]), t0)
        .unwrap();
    let mut again = announce(vec![file("a", "a", true), file("b", "b", true)]);
    again.addrs = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()];
    let res = idx.announce(peer, again, t0 + TTL / 2).unwrap();
    assert!(!res.new_peer);
    assert_eq!(res.files, 2);

    assert!(idx.expire(t0 + TTL).is_empty(), "refreshed at TTL/2");
    let rec = &idx.lookup(&id("a"), 0)[0];
    assert!(rec.providers[0].complete, "complete flag updated");
    assert_eq!(
        rec.providers[0].addrs[0].to_string(),
        "/ip4/127.0.0.1/tcp/1"
    );
    assert_eq!(idx.expire(t0 + TTL + TTL / 2), vec![peer]);
    idx.check();
}

#[test]
fn given_presence_only_announce_then_peer_counts_without_files() {
    let mut idx = index();
    idx.announce(PeerId::random(), announce(vec![]), Instant::now())
        .unwrap();
    assert_eq!(idx.stats(), Stats { peers: 1, files: 0 });
}

#[test]
fn given_two_ids_under_one_name_when_lookup_by_name_then_both_are_found() {
    let mut idx = index();
    let (p1, p2) = (PeerId::random(), PeerId::random());
    let now = Instant::now();
    idx.announce(p1, announce(vec![file("v1", "report.pdf", true)]), now)
        .unwrap();
    idx.announce(p2, announce(vec![file("v2", "report.pdf", true)]), now)
        .unwrap();
    let found = idx.lookup(&name("report.pdf"), 0);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|r| r.name.as_str() == "report.pdf"));
    assert!(
        idx.lookup(&name("REPORT.pdf"), 0).is_empty(),
        "lookup is exact"
    );
    idx.check();
}

#[test]
fn given_seeder_and_leecher_when_search_then_counts_split_and_case_is_ignored() {
    let mut idx = index();
    let now = Instant::now();
    idx.announce(
        PeerId::random(),
        announce(vec![
            file("m", "Holiday.MKV", true),
            file("x", "notes.txt", true),
        ]),
        now,
    )
    .unwrap();
    idx.announce(
        PeerId::random(),
        announce(vec![file("m", "holiday.mkv", false)]),
        now,
    )
    .unwrap();
    let hits = idx.search("DAY.mk", 0).unwrap();
    assert_eq!(hits.len(), 1, "one file under two matching names");
    assert_eq!((hits[0].seeders, hits[0].leechers), (1, 1));
    assert_eq!(
        idx.search("", 0).unwrap().len(),
        2,
        "empty query matches all"
    );
    assert!(idx.search("zzz", 0).unwrap().is_empty());
    idx.check();
}

#[test]
fn given_several_peers_then_stats_count_live_peers_and_distinct_files() {
    let mut idx = index();
    let now = Instant::now();
    for _ in 0..3 {
        let files = vec![
            file("shared", "s", true),
            file(&PeerId::random().to_string(), "u", true),
        ];
        idx.announce(PeerId::random(), announce(files), now)
            .unwrap();
    }
    assert_eq!(idx.stats(), Stats { peers: 3, files: 4 });
    idx.check();
}

#[test]
fn given_peer_past_ttl_when_expire_then_it_and_its_names_are_gone() {
    let mut idx = index();
    let t0 = Instant::now();
    let (old, fresh) = (PeerId::random(), PeerId::random());
    idx.announce(old, announce(vec![file("a", "only-old", true)]), t0)
        .unwrap();
    idx.announce(
        fresh,
        announce(vec![file("b", "fresh", true)]),
        t0 + TTL / 2,
    )
    .unwrap();
    assert!(idx.expire(t0 + TTL - Duration::from_millis(1)).is_empty());
    assert_eq!(idx.expire(t0 + TTL), vec![old]);
    assert!(!idx.is_registered(&old));
    assert_eq!(idx.names_indexed(), ["fresh"]);
    assert!(idx.lookup(&name("only-old"), 0).is_empty());
    assert_eq!(idx.stats(), Stats { peers: 1, files: 1 });
    idx.check();
}

#[test]
fn given_two_holders_when_one_is_removed_then_only_its_name_leaves_the_index() {
    let mut idx = index();
    let now = Instant::now();
    let (p1, p2) = (PeerId::random(), PeerId::random());
    idx.announce(p1, announce(vec![file("a", "one", true)]), now)
        .unwrap();
    idx.announce(p2, announce(vec![file("a", "two", false)]), now)
        .unwrap();
    assert!(idx.remove_peer(p1));
    assert!(!idx.remove_peer(p1), "already gone");
    assert_eq!(idx.names_indexed(), ["two"]);
    let rec = &idx.lookup(&id("a"), 0)[0];
    assert_eq!(rec.name.as_str(), "two");
    assert_eq!(rec.providers.len(), 1);
    assert!(idx.remove_peer(p2));
    assert!(idx.names_indexed().is_empty());
    assert_eq!(idx.stats(), Stats { peers: 0, files: 0 });
    idx.check();
}

#[test]
fn given_last_holder_when_it_unannounces_then_file_goes_and_peer_stays() {
    let mut idx = index();
    let peer = PeerId::random();
    idx.announce(peer, announce(vec![file("a", "a", true)]), Instant::now())
        .unwrap();
    let fid = FileId::of(b"a");
    idx.unannounce(peer, fid).unwrap();
    assert_eq!(idx.unannounce(peer, fid), Err(IndexError::NotHeld(fid)));
    assert_eq!(
        idx.unannounce(PeerId::random(), fid).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(idx.stats(), Stats { peers: 1, files: 0 });
    assert!(idx.names_indexed().is_empty());
    idx.check();
}

#[test]
fn given_reannounce_under_a_new_name_then_the_old_name_is_released() {
    let mut idx = index();
    let peer = PeerId::random();
    let now = Instant::now();
    idx.announce(peer, announce(vec![file("a", "old", true)]), now)
        .unwrap();
    idx.announce(peer, announce(vec![file("a", "new", true)]), now)
        .unwrap();
    assert_eq!(idx.names_indexed(), ["new"]);
    idx.check();
}

#[test]
fn given_a_file_with_all_name_slots_taken_when_one_frees_then_a_waiting_name_is_indexed() {
    let mut idx = index();
    let now = Instant::now();
    let peers: Vec<PeerId> = (0..=MAX_NAMES_PER_FILE).map(|_| PeerId::random()).collect();
    for (i, peer) in peers.iter().enumerate() {
        idx.announce(
            *peer,
            announce(vec![file("a", &format!("n{i}"), true)]),
            now,
        )
        .unwrap();
    }
    assert_eq!(idx.names_indexed().len(), MAX_NAMES_PER_FILE);
    let waiting = format!("n{MAX_NAMES_PER_FILE}");
    assert!(idx.lookup(&name(&waiting), 0).is_empty());
    idx.remove_peer(peers[0]);
    assert_eq!(idx.lookup(&name(&waiting), 0).len(), 1, "promoted");
    assert_eq!(idx.names_indexed().len(), MAX_NAMES_PER_FILE);
    idx.check();
}

#[test]
fn given_oversized_announce_or_query_then_bad_request_and_nothing_changes() {
    let mut idx = index();
    let peer = PeerId::random();
    let now = Instant::now();
    let many: Vec<_> = (0..=MAX_ANNOUNCE_FILES)
        .map(|i| file(&i.to_string(), "f", true))
        .collect();
    let err = idx.announce(peer, announce(many), now).unwrap_err();
    assert_eq!(err, IndexError::TooManyFiles(MAX_ANNOUNCE_FILES + 1));
    assert_eq!(err.code(), ErrorCode::BadRequest);

    let mut addrs = announce(vec![]);
    addrs.addrs = vec!["/ip4/1.1.1.1/tcp/1".parse().unwrap(); MAX_ANNOUNCE_ADDRS + 1];
    let err = idx.announce(peer, addrs, now).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);

    let err = idx.search(&"q".repeat(MAX_QUERY_LEN + 1), 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(idx.search(&"q".repeat(MAX_QUERY_LEN), 0).is_ok());
    assert_eq!(idx.stats(), Stats { peers: 0, files: 0 });
}

#[test]
fn given_conflicting_sizes_then_no_announce_is_refused_and_the_majority_size_is_shown() {
    let mut idx = index();
    let now = Instant::now();
    idx.announce(PeerId::random(), announce(vec![file("a", "a", true)]), now)
        .unwrap();
    let mut liar = file("a", "a", true);
    liar.size = 99;
    // A conflicting size is no reason to refuse an announce: a squatter announcing first with
    // a wrong size must not lock honest seeders out. The size most holders agree on is shown.
    let liar_peer = PeerId::random();
    idx.announce(liar_peer, announce(vec![file("b", "b", true), liar]), now)
        .unwrap();
    let id = file("a", "a", true).id;
    let shown = |idx: &mut FileIndex| idx.lookup(&LookupKey::Id(id), 0)[0].size;
    assert_eq!(shown(&mut idx), 1, "tie between 1 and 99: the smaller");
    idx.announce(PeerId::random(), announce(vec![file("a", "a", true)]), now)
        .unwrap();
    assert_eq!(shown(&mut idx), 1, "two holders say 1");
    assert_eq!(idx.stats(), Stats { peers: 3, files: 2 });
    idx.check();
}

#[test]
fn given_peer_limit_reached_then_new_peers_are_refused_but_known_ones_refresh() {
    let limits = Limits {
        max_peers: 2,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    let first = PeerId::random();
    idx.announce(first, announce(vec![]), now).unwrap();
    idx.announce(PeerId::random(), announce(vec![]), now)
        .unwrap();
    let err = idx
        .announce(PeerId::random(), announce(vec![]), now)
        .unwrap_err();
    assert_eq!(err, IndexError::PeerLimit(2));
    assert_eq!(err.code(), ErrorCode::LimitReached);
    idx.announce(first, announce(vec![]), now).unwrap();
}

#[test]
fn given_files_per_peer_limit_then_additive_announces_stop_at_it() {
    let limits = Limits {
        max_files_per_peer: 2,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let (peer, now) = (PeerId::random(), Instant::now());
    idx.announce(
        peer,
        announce(vec![file("a", "a", true), file("a", "a", true)]),
        now,
    )
    .unwrap();
    idx.announce(peer, announce(vec![file("b", "b", true)]), now)
        .unwrap();
    let err = idx
        .announce(
            peer,
            announce(vec![file("a", "a", true), file("c", "c", true)]),
            now,
        )
        .unwrap_err();
    assert_eq!(err, IndexError::PeerFileLimit(2));
    assert_eq!(err.code(), ErrorCode::LimitReached);
    idx.announce(peer, announce(vec![file("a", "a", false)]), now)
        .unwrap();
    idx.check();
}

#[test]
fn given_total_file_limit_then_new_files_are_refused_but_known_ones_accepted() {
    let limits = Limits {
        max_files: 1,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    idx.announce(PeerId::random(), announce(vec![file("a", "a", true)]), now)
        .unwrap();
    let err = idx
        .announce(PeerId::random(), announce(vec![file("b", "b", true)]), now)
        .unwrap_err();
    assert_eq!(err, IndexError::FileLimit(1));
    assert_eq!(err.code(), ErrorCode::LimitReached);
    idx.announce(PeerId::random(), announce(vec![file("a", "a", true)]), now)
        .unwrap();
    assert_eq!(idx.stats(), Stats { peers: 2, files: 1 });
}

#[test]
fn given_result_limits_then_lookup_and_search_are_capped_seeders_first() {
    let limits = Limits {
        max_lookup_results: 3,
        max_lookup_files: 2,
        max_search_results: 4,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    for i in 0..6 {
        let files = vec![
            file("popular", "popular", i == 5),
            file(&format!("v{i}"), "same-name", true),
        ];
        idx.announce(PeerId::random(), announce(files), now)
            .unwrap();
    }
    let rec = &idx.lookup(&id("popular"), 0)[0];
    assert_eq!(rec.providers.len(), 3, "capped by the limits");
    assert!(rec.providers[0].complete, "seeder first");
    assert_eq!(idx.lookup(&id("popular"), 2)[0].providers.len(), 2);
    assert_eq!(idx.lookup(&id("popular"), 100)[0].providers.len(), 3);
    assert_eq!(idx.lookup(&name("same-name"), 0).len(), 2);
    assert_eq!(idx.search("", 0).unwrap().len(), 4);
    assert_eq!(idx.search("", 1).unwrap().len(), 1);
    idx.check();
}

fn from(ip: &str) -> Origin {
    Origin::new(ip.parse().unwrap(), "203.0.113.1".parse().unwrap())
}

fn addr_on(ip: &str, port: u16) -> Vec<Multiaddr> {
    vec![format!("/ip4/{ip}/tcp/{port}").parse().unwrap()]
}

#[test]
fn files_whose_names_have_control_characters_are_left_out_of_an_announce() {
    let mut idx = index();
    let done = idx
        .announce(
            PeerId::random(),
            announce(vec![
                file("a", "\u{1}aaa-first", true),
                file("b", "evil\u{1b}[2J.txt", true),
                file("c", "fine.txt", true),
            ]),
            Instant::now(),
        )
        .unwrap();
    assert_eq!((done.files, done.dropped_files), (1, 2));
    assert!(idx.lookup(&id("a"), 0).is_empty());
    assert_eq!(idx.lookup(&id("c"), 0).len(), 1);
    assert_eq!(idx.search("", 0).unwrap().len(), 1);
    idx.check();
}

#[test]
fn registrations_are_capped_per_host_and_per_subnet_and_freed_when_peers_leave() {
    let limits = Limits {
        max_peers_per_host: 2,
        max_peers_per_subnet: 3,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    let reg = |idx: &mut FileIndex, peer, ip: &str| {
        let a = Announce {
            files: vec![],
            addrs: addr_on(ip, 1),
        };
        idx.announce_from(peer, a, &from(ip), now)
    };
    let first = PeerId::random();
    reg(&mut idx, first, "198.51.100.7").unwrap();
    reg(&mut idx, PeerId::random(), "198.51.100.7").unwrap();
    let err = reg(&mut idx, PeerId::random(), "198.51.100.7").unwrap_err();
    assert_eq!(err, IndexError::HostLimit(2, "host"));
    assert_eq!(err.code(), ErrorCode::LimitReached);
    reg(&mut idx, PeerId::random(), "198.51.100.8").unwrap();
    let err = reg(&mut idx, PeerId::random(), "198.51.100.9").unwrap_err();
    assert_eq!(err, IndexError::HostLimit(3, "subnet"));
    // A known peer re-announces; another subnet is free; leaving frees a slot.
    reg(&mut idx, first, "198.51.100.7").unwrap();
    reg(&mut idx, PeerId::random(), "198.51.101.1").unwrap();
    idx.remove_peer(first);
    reg(&mut idx, PeerId::random(), "198.51.100.9").unwrap();
    idx.check();
}

#[test]
fn holdings_and_name_bytes_are_capped_in_all() {
    let limits = Limits {
        max_holdings: 3,
        max_name_bytes: 1000,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    idx.announce(
        PeerId::random(),
        announce(vec![file("a", "a", true), file("b", "b", true)]),
        now,
    )
    .unwrap();
    let err = idx
        .announce(
            PeerId::random(),
            announce(vec![file("c", "c", true), file("d", "d", true)]),
            now,
        )
        .unwrap_err();
    assert_eq!(err, IndexError::IndexFull("holdings"));
    let long = "n".repeat(255);
    let limits = Limits {
        max_name_bytes: 300,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    idx.announce(
        PeerId::random(),
        announce(vec![file("a", &long, true)]),
        now,
    )
    .unwrap();
    let err = idx
        .announce(
            PeerId::random(),
            announce(vec![file("b", &long, true)]),
            now,
        )
        .unwrap_err();
    assert_eq!(err, IndexError::IndexFull("name bytes"));
    idx.check();
}

#[test]
fn addresses_not_on_the_observed_ip_are_dropped_and_reported() {
    let mut idx = index();
    let peer = PeerId::random();
    let a = Announce {
        files: vec![file("a", "a", true)],
        addrs: vec![
            "/ip4/198.51.100.7/tcp/4001".parse().unwrap(),
            "/ip4/192.0.2.99/tcp/80".parse().unwrap(),
        ],
    };
    let done = idx
        .announce_from(peer, a, &from("198.51.100.7"), Instant::now())
        .unwrap();
    assert_eq!(done.dropped_addrs, 1);
    let rec = &idx.lookup(&id("a"), 0)[0];
    assert_eq!(rec.providers[0].addrs.len(), 1);
    assert_eq!(
        rec.providers[0].addrs[0].to_string(),
        "/ip4/198.51.100.7/tcp/4001"
    );
}

#[test]
fn a_lookup_samples_holders_at_random_with_few_per_host_and_seeders_first() {
    let mut idx = index();
    let now = Instant::now();
    // 40 seeders on one /24 (10 per address), and 10 seeders and 5 leechers elsewhere.
    for i in 0..40 {
        let ip = format!("198.51.100.{}", i % 4);
        let a = Announce {
            files: vec![file("hot", "hot", true)],
            addrs: addr_on(&ip, 1000 + i),
        };
        idx.announce_from(PeerId::random(), a, &from(&ip), now)
            .unwrap();
    }
    let mut honest = HashSet::new();
    for i in 0..15u16 {
        let ip = format!("10.{i}.0.1");
        let peer = PeerId::random();
        let a = Announce {
            files: vec![file("hot", "hot", i < 10)],
            addrs: addr_on(&ip, 1),
        };
        idx.announce_from(peer, a, &from(&ip), now).unwrap();
        honest.insert(peer);
    }
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let rec = &idx.lookup(&id("hot"), 12)[0];
        assert_eq!(rec.providers.len(), 12);
        let crowd = rec
            .providers
            .iter()
            .filter(|p| !honest.contains(&p.peer))
            .count();
        assert!(crowd <= 4, "{crowd} from one /24");
        let first_leecher = rec.providers.iter().position(|p| !p.complete);
        if let Some(i) = first_leecher {
            assert!(
                rec.providers[i..].iter().all(|p| !p.complete),
                "seeders first"
            );
        }
        seen.extend(rec.providers.iter().map(|p| p.peer));
        assert_eq!(
            rec.seeders, 14,
            "4 hosts of the crowd and 10 honest ones seed it"
        );
    }
    assert!(
        seen.len() > 20,
        "the sample varies: {} peers seen",
        seen.len()
    );
    idx.check();
}

#[test]
fn a_reply_is_built_within_its_byte_budget() {
    let limits = Limits {
        max_reply_bytes: 4096,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    for i in 0..50u16 {
        let ip = format!("10.{i}.0.1");
        let addrs = (0..16)
            .map(|k| format!("/ip4/{ip}/tcp/{}", 2000 + k).parse().unwrap())
            .collect();
        let a = Announce {
            files: vec![file("big", "big", true)],
            addrs,
        };
        idx.announce_from(PeerId::random(), a, &from(&ip), now)
            .unwrap();
    }
    let records = idx.lookup(&id("big"), 0);
    let response: bitswarm_protocols::tracker::Response = Ok(
        bitswarm_protocols::tracker::Reply::Providers(records.clone()),
    );
    let bytes = cbor4ii::serde::to_vec(Vec::new(), &response).unwrap().len();
    assert!(bytes <= 4096, "{bytes} bytes");
    assert!(!records[0].providers.is_empty(), "some providers fit");
}

#[test]
fn search_ranks_by_seeding_hosts_then_age() {
    let mut idx = index();
    let t0 = Instant::now();
    let seed = |idx: &mut FileIndex, data: &str, name: &str, ip: &str, at| {
        let a = Announce {
            files: vec![file(data, name, true)],
            addrs: addr_on(ip, 1),
        };
        idx.announce_from(PeerId::random(), a, &from(ip), at)
            .unwrap();
    };
    seed(&mut idx, "old", "zz-movie.mkv", "10.0.0.1", t0);
    seed(
        &mut idx,
        "new",
        "aa-movie.mkv",
        "10.0.1.1",
        t0 + Duration::from_secs(1),
    );
    seed(
        &mut idx,
        "hot",
        "mm-movie.mkv",
        "10.0.2.1",
        t0 + Duration::from_secs(2),
    );
    seed(
        &mut idx,
        "hot",
        "mm-movie.mkv",
        "10.0.3.1",
        t0 + Duration::from_secs(2),
    );
    let names: Vec<String> = idx
        .search("movie", 0)
        .unwrap()
        .into_iter()
        .map(|h| h.name.to_string())
        .collect();
    assert_eq!(names, ["mm-movie.mkv", "zz-movie.mkv", "aa-movie.mkv"]);
}

#[test]
fn an_announce_repeating_an_id_is_counted_as_applied_and_cannot_wedge_the_totals() {
    let limits = Limits {
        max_name_bytes: 400,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    let long = "b".repeat(255);
    // Short first, long last: applying both leaves the long name, so the long one is what
    // the checks count.
    let peer = PeerId::random();
    let twice = |id: &str| announce(vec![file(id, "a", true), file(id, &long, true)]);
    idx.announce(peer, twice("x"), now).unwrap();
    let err = idx.announce(PeerId::random(), twice("y"), now).unwrap_err();
    assert_eq!(err, IndexError::IndexFull("name bytes"), "255 + 255 > 400");
    idx.check();
    // Never past the cap, so a refresh that adds nothing passes.
    idx.announce(peer, announce(vec![]), now).unwrap();
    idx.check();
}

#[test]
fn a_holder_whose_size_got_no_vote_takes_none_back_when_it_leaves() {
    let mut idx = index();
    let now = Instant::now();
    let sized = |size: u64| AnnouncedFile {
        size,
        ..file("f", "f", true)
    };
    // Eight junk sizes fill the slots; the true size 1000 then gets no vote from `late`.
    let mut junk = Vec::new();
    for size in 1..=8 {
        let p = PeerId::random();
        idx.announce(p, announce(vec![sized(size)]), now).unwrap();
        junk.push(p);
    }
    let late = PeerId::random();
    idx.announce(late, announce(vec![sized(1000)]), now)
        .unwrap();
    idx.remove_peer(junk[0]);
    for _ in 0..2 {
        idx.announce(PeerId::random(), announce(vec![sized(1000)]), now)
            .unwrap();
    }
    // `late` leaving must not take one of the two honest votes (which would tie 1000 with
    // the junk sizes, and the smallest would be shown).
    idx.remove_peer(late);
    let rec = &idx.lookup(&LookupKey::Id(sized(1).id), 0)[0];
    assert_eq!(rec.size, 1000, "two votes for 1000, one for each junk size");
    idx.check();
}

#[test]
fn one_host_cannot_hold_more_than_its_share_of_the_index() {
    let limits = Limits {
        max_holdings_per_host: 3,
        max_holdings_per_subnet: 5,
        ..Limits::default()
    };
    let mut idx = FileIndex::new(limits, TTL, PeerId::random(), 7);
    let now = Instant::now();
    let with = |ip: &str, files: Vec<AnnouncedFile>| Announce {
        files,
        addrs: addr_on(ip, 1),
    };
    let a = PeerId::random();
    idx.announce_from(
        a,
        with(
            "198.51.100.7",
            vec![file("1", "1", true), file("2", "2", true)],
        ),
        &from("198.51.100.7"),
        now,
    )
    .unwrap();
    let err = idx
        .announce_from(
            PeerId::random(),
            with(
                "198.51.100.7",
                vec![file("3", "3", true), file("4", "4", true)],
            ),
            &from("198.51.100.7"),
            now,
        )
        .unwrap_err();
    assert_eq!(err, IndexError::HostLimit(3, "host's holdings"));
    idx.announce_from(
        PeerId::random(),
        with(
            "198.51.100.8",
            vec![file("3", "3", true), file("4", "4", true)],
        ),
        &from("198.51.100.8"),
        now,
    )
    .unwrap();
    let err = idx
        .announce_from(
            PeerId::random(),
            with(
                "198.51.100.9",
                vec![file("5", "5", true), file("6", "6", true)],
            ),
            &from("198.51.100.9"),
            now,
        )
        .unwrap_err();
    assert_eq!(err, IndexError::HostLimit(5, "subnet's holdings"));
    // Leaving frees the share; moving carries it.
    idx.remove_peer(a);
    idx.announce_from(
        PeerId::random(),
        with("198.51.100.9", vec![file("5", "5", true)]),
        &from("198.51.100.9"),
        now,
    )
    .unwrap();
    idx.check();
}
