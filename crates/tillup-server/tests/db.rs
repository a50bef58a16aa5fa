//! One test suite for every [`Db`]: the embedded SQLite and a throwaway
//! PostgreSQL (started by the test in its own folder). Each case runs on a
//! fresh database and may open it twice, as two servers would.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::keys::SignedKeyList;
use tillup_core::log::{Notes, Release};
use tillup_core::roles::Role;
use tillup_server::db::{
    AuditRow, Db, KEEP_REPORTS, KEEP_UPGRADES, PersonRow, SessionRow, SignedLog,
};
use tillup_server::{Error, Location};

type Case = fn(&Location);

const CASES: &[(&str, Case)] = &[
    ("stores and tokens", stores_and_tokens),
    ("channels", channels),
    ("labels", labels),
    ("upgrades running now", upgrades_running_now),
    ("releases and logs", releases_and_logs),
    (
        "a failed signer leaves nothing",
        a_failed_signer_leaves_nothing,
    ),
    ("two handles sign in turn", two_handles_sign_in_turn),
    ("key lists", key_lists),
    ("blob references", blob_references),
    ("upgrades and reports", upgrades_and_reports),
    ("last checks", last_checks),
    ("leases", leases),
    ("generation is seen by another handle", generation_is_shared),
    (
        "people, sessions and the audit trail",
        people_sessions_audit,
    ),
    ("a release's admitted stores", admitted_stores),
    ("rollouts", rollouts),
];

/// Runs every case on a fresh database from `fresh`, naming the case that
/// failed.
fn run_suite(fresh: &mut dyn FnMut(&str) -> Location) {
    for (i, (name, case)) in CASES.iter().enumerate() {
        let location = fresh(&format!("case{i}"));
        let outcome = std::panic::catch_unwind(|| case(&location));
        if let Err(e) = outcome {
            let said = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("case `{name}` failed on {location}: {said}");
        }
    }
}

#[test]
fn the_suite_passes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(&mut |name| Location::Sqlite(dir.path().join(format!("{name}.db"))));
}

#[test]
fn the_suite_passes_on_postgres() {
    let pg = tillup_testbed::Postgres::start(false).unwrap();
    run_suite(&mut |name| Location::parse(&pg.database(name).unwrap()));
}

fn open(location: &Location) -> Box<dyn Db> {
    location.open().unwrap()
}

fn now() -> Timestamp {
    // Whole microseconds: what PostgreSQL keeps.
    Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap()
}

fn hash(n: u8) -> Sha256Hex {
    Sha256Hex::of(&[n])
}

fn release(version: &str) -> Release {
    Release {
        version: version.parse().unwrap(),
        date: now(),
        size: 10,
        sha256: hash(9),
        notes: Notes::default(),
        critical: false,
        min_from: None,
        models: Vec::new(),
        preserve: vec!["*.db".into()],
        stores: None,
    }
}

fn signer(bytes: &'static [u8]) -> tillup_server::db::Signer<'static> {
    Box::new(move |sequence, releases| {
        assert!(!releases.is_empty());
        let at = now();
        Ok(SignedLog {
            sequence,
            generated: at,
            expires: at + SignedDuration::from_hours(24),
            bytes: bytes.to_vec(),
            signature: format!("sig {sequence}"),
        })
    })
}

fn stores_and_tokens(location: &Location) {
    let db = open(location);
    let g0 = db.generation().unwrap();
    db.add_store("s1", "t1", now()).unwrap();
    db.add_store("s2", "t2", now()).unwrap();
    let g1 = db.generation().unwrap();
    assert_ne!(g0, g1, "adding a store moves the generation");
    assert!(matches!(
        db.add_store("s1", "t3", now()),
        Err(Error::StoreExists(_))
    ));
    assert_eq!(db.store_by_token("t1").unwrap().as_deref(), Some("s1"));
    assert!(db.store_exists("s2").unwrap());
    assert!(!db.store_exists("nope").unwrap());

    db.revoke_store("s1", now()).unwrap();
    assert_ne!(
        db.generation().unwrap(),
        g1,
        "revoking moves the generation"
    );
    assert_eq!(db.store_by_token("t1").unwrap(), None);
    let access = db.store_access().unwrap();
    assert_eq!(access.len(), 1, "a revoked store has no access: {access:?}");
    assert_eq!(access[0].store, "s2");
    assert_eq!(access[0].token_sha256, "t2");
    assert_eq!(access[0].channels, ["stable"]);
    assert!(matches!(
        db.revoke_store("nope", now()),
        Err(Error::UnknownStore(_))
    ));

    let g2 = db.generation().unwrap();
    db.replace_store_token("s1", "t1b").unwrap();
    assert_ne!(
        db.generation().unwrap(),
        g2,
        "a new token moves the generation"
    );
    assert_eq!(db.store_by_token("t1").unwrap(), None);
    assert_eq!(db.store_by_token("t1b").unwrap().as_deref(), Some("s1"));
    assert!(matches!(
        db.replace_store_token("nope", "x"),
        Err(Error::UnknownStore(_))
    ));
    let rows = db.stores().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert!(
        rows[0].revoked.is_none(),
        "a new token lifts the revocation"
    );

    assert_eq!(db.uploaded_bytes("s1").unwrap(), 0);
    db.add_uploaded_bytes("s1", 5).unwrap();
    db.add_uploaded_bytes("s1", 7).unwrap();
    assert_eq!(db.uploaded_bytes("s1").unwrap(), 12);
    assert_eq!(db.uploaded_bytes("nope").unwrap(), 0);
}

fn channels(location: &Location) {
    let db = open(location);
    db.add_store("s", "t", now()).unwrap();
    assert_eq!(db.store_channels("s").unwrap(), ["stable"]);
    let g = db.generation().unwrap();
    db.set_store_channels("s", &["pilot".into(), "beta".into(), "pilot".into()])
        .unwrap();
    assert_ne!(db.generation().unwrap(), g);
    assert_eq!(db.store_channels("s").unwrap(), ["beta", "pilot"]);
    assert_eq!(db.store_access().unwrap()[0].channels, ["beta", "pilot"]);
    assert!(matches!(
        db.set_store_channels("nope", &["stable".into()]),
        Err(Error::UnknownStore(_))
    ));
}

fn labels(location: &Location) {
    let db = open(location);
    db.add_store("north-1", "t1", now()).unwrap();
    db.add_store("south-1", "t2", now()).unwrap();
    assert!(db.store_labels().unwrap().is_empty());
    let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    db.set_store_labels("north-1", &set(&["region=north", "mall"]))
        .unwrap();
    db.set_store_labels("south-1", &set(&["region=south"]))
        .unwrap();
    db.set_store_labels("south-1", &set(&["region=south", "mall"]))
        .unwrap();
    let labels = db.store_labels().unwrap();
    assert_eq!(labels["north-1"], set(&["mall", "region=north"]));
    assert_eq!(labels["south-1"], set(&["mall", "region=south"]));
    db.set_store_labels("north-1", &set(&[])).unwrap();
    assert!(!db.store_labels().unwrap().contains_key("north-1"));
    assert!(matches!(
        db.set_store_labels("nope", &set(&["x"])),
        Err(Error::UnknownStore(_))
    ));
}

fn releases_and_logs(location: &Location) {
    let db = open(location);
    assert_eq!(db.latest_log("stable").unwrap(), None);
    db.put_release("stable", &release("1.1.0"), &[hash(1), hash(2)])
        .unwrap();
    db.put_release("stable", &release("1.0.0"), &[hash(1)])
        .unwrap();
    db.put_release("beta", &release("2.0.0"), &[]).unwrap();
    let mut replaced = release("1.1.0");
    replaced.size = 99;
    db.put_release("stable", &replaced, &[hash(3)]).unwrap();
    let versions: Vec<Version> = db
        .releases("stable")
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(
        versions,
        ["1.0.0".parse().unwrap(), "1.1.0".parse().unwrap()]
    );
    let got = db
        .release("stable", &"1.1.0".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(got, replaced);
    assert_eq!(
        db.release("stable", &"9.0.0".parse().unwrap()).unwrap(),
        None
    );

    let g = db.generation().unwrap();
    let first = db.append_log("stable", signer(b"one")).unwrap();
    let second = db.append_log("stable", signer(b"two")).unwrap();
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert_ne!(
        db.generation().unwrap(),
        g,
        "a new log moves the generation"
    );
    assert_eq!(db.latest_log("stable").unwrap().unwrap(), second);
    db.append_log("beta", signer(b"b")).unwrap();
    assert_eq!(db.log_channels().unwrap(), ["beta", "stable"]);

    // A replaced release makes only its new blobs readable.
    db.add_store("s", "t", now()).unwrap();
    assert_eq!(
        db.unreadable("s", &[hash(1), hash(2), hash(3)]).unwrap(),
        [hash(2)]
    );
}

fn a_failed_signer_leaves_nothing(location: &Location) {
    let db = open(location);
    let failed = db.append_log(
        "stable",
        Box::new(|_, releases| {
            assert!(releases.is_empty());
            Err(Error::NothingPublished("stable".into()))
        }),
    );
    assert!(matches!(failed, Err(Error::NothingPublished(_))));
    assert_eq!(db.latest_log("stable").unwrap(), None);
    assert!(db.log_channels().unwrap().is_empty());
}

/// Two handles (two servers) signing at once never share a sequence.
fn two_handles_sign_in_turn(location: &Location) {
    let a = open(location);
    a.put_release("stable", &release("1.0.0"), &[]).unwrap();
    let b = open(location);
    let per_thread = 15;
    let sequences: Vec<u64> = std::thread::scope(|s| {
        let runs: Vec<_> = [&a, &b]
            .into_iter()
            .map(|db| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|_| db.append_log("stable", signer(b"x")).unwrap().sequence)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    let mut sorted = sequences.clone();
    sorted.sort();
    assert_eq!(sorted, (1..=2 * per_thread).collect::<Vec<_>>());
}

fn key_lists(location: &Location) {
    let db = open(location);
    let list = |n: u32| SignedKeyList {
        list: format!("list {n}"),
        signature: format!("sig {n}"),
    };
    db.add_key_list(1, &list(1), true).unwrap();
    db.add_key_list(2, &list(2), false).unwrap();
    db.add_key_list(3, &list(3), false).unwrap();
    assert!(matches!(
        db.add_key_list(3, &list(9), false),
        Err(Error::KeyListNotNewer {
            version: 3,
            newest: 3
        })
    ));
    let chain = db.key_chain().unwrap();
    let lists: Vec<&str> = chain.lists.iter().map(|l| l.list.as_str()).collect();
    assert_eq!(
        lists,
        ["list 1", "list 3"],
        "next-root lists and the newest"
    );
}

fn blob_references(location: &Location) {
    let db = open(location);
    db.add_store("a", "ta", now()).unwrap();
    db.add_store("b", "tb", now()).unwrap();
    db.put_release("stable", &release("1.0.0"), &[hash(1)])
        .unwrap();
    db.add_store_blobs("a", &[hash(2), hash(2), hash(3)])
        .unwrap();
    db.add_store_blobs("a", &[hash(2)]).unwrap();
    let asked = [hash(4), hash(1), hash(2), hash(4), hash(3)];
    assert_eq!(db.unreadable("a", &asked).unwrap(), [hash(4)]);
    assert_eq!(
        db.unreadable("b", &asked).unwrap(),
        [hash(4), hash(2), hash(3)],
        "in order, each once; another store's blobs are unreadable"
    );
}

fn upgrades_and_reports(location: &Location) {
    let db = open(location);
    db.add_store("s", "t", now()).unwrap();
    let start = now();
    let mut forgotten = Vec::new();
    for i in 0..KEEP_UPGRADES + 3 {
        let at = start + SignedDuration::from_secs(i);
        forgotten.extend(db.record_backup("s", &format!("u{i:02}"), at).unwrap());
    }
    assert_eq!(forgotten, ["u00", "u01", "u02"]);
    db.record_processed("s", "u10", now()).unwrap();
    // A backup sent again is the same upgrade.
    assert!(
        db.record_backup("s", "u10", now() + SignedDuration::from_secs(60))
            .unwrap()
            .is_empty()
    );

    for i in 0..KEEP_REPORTS + 5 {
        let report = serde_json::json!({"upgrade": {"id": format!("r{i}")}});
        db.add_report("s", now(), &report).unwrap();
    }
    let retry =
        serde_json::json!({"upgrade": {"id": format!("r{}", KEEP_REPORTS + 4)}, "again": true});
    db.add_report("s", now(), &retry).unwrap();
    db.add_report("s", now(), &serde_json::json!({"free": 1}))
        .unwrap();
    let reports = db.reports("s").unwrap();
    assert_eq!(reports.len(), KEEP_REPORTS as usize);
    assert_eq!(reports[0].report["upgrade"]["id"], "r6", "the oldest go");
    assert!(
        reports.iter().any(|r| r.report == retry),
        "a retried report replaces the first one"
    );
    assert_eq!(reports.last().unwrap().report["free"], 1);
    assert!(db.reports("other").unwrap().is_empty());
}

fn upgrades_running_now(location: &Location) {
    let db = open(location);
    db.add_store("a", "ta", now()).unwrap();
    db.add_store("b", "tb", now()).unwrap();
    let t0 = now();
    let at = |secs: i64| t0 + SignedDuration::from_secs(secs);
    db.record_backup("a", "long-ago", at(-3 * 3600)).unwrap();
    db.record_backup("a", "ua", at(60)).unwrap();
    db.record_backup("b", "ub", at(120)).unwrap();
    db.record_processed("b", "ub", at(121)).unwrap();
    db.record_backup("a", "done", at(30)).unwrap();
    let report = |id: &str| serde_json::json!({"upgrade": {"id": id}});
    db.add_report("a", at(90), &report("done")).unwrap();

    let running = db.unreported_upgrades(t0).unwrap();
    let ids: Vec<(&str, &str)> = running
        .iter()
        .map(|u| (u.store.as_str(), u.upgrade.as_str()))
        .collect();
    assert_eq!(
        ids,
        [("b", "ub"), ("a", "ua")],
        "newest first, reported and old ones left out"
    );
    assert_eq!(running[0].backup_at, at(120));
    assert_eq!(running[0].processed_at, Some(at(121)));
    assert_eq!(running[1].processed_at, None);

    db.add_report("b", at(200), &report("ub")).unwrap();
    assert_eq!(db.unreported_upgrades(t0).unwrap().len(), 1);
}

fn last_checks(location: &Location) {
    let db = open(location);
    db.add_store("a", "ta", now()).unwrap();
    db.add_store("b", "tb", now()).unwrap();
    let g = db.generation().unwrap();
    let t0 = now();
    let t1 = t0 + SignedDuration::from_millis(1500);
    db.record_checks(&[("a".into(), t1), ("b".into(), t0), ("ghost".into(), t0)])
        .unwrap();
    // Another server flushes an older check of `a` later.
    db.record_checks(&[("a".into(), t0)]).unwrap();
    let rows = db.stores().unwrap();
    assert_eq!(rows[0].last_check, Some(t1), "an older time never wins");
    assert_eq!(rows[1].last_check, Some(t0));
    assert_eq!(
        db.generation().unwrap(),
        g,
        "last checks do not invalidate what servers hold in memory"
    );
}

fn leases(location: &Location) {
    let a = open(location);
    let b = open(location);
    let ttl = Duration::from_secs(60);
    let t = now();
    assert!(a.take_lease("job", "server-a", t, ttl).unwrap());
    assert!(!b.take_lease("job", "server-b", t, ttl).unwrap());
    assert!(b.take_lease("other", "server-b", t, ttl).unwrap());
    let later = t + SignedDuration::from_secs(30);
    assert!(
        a.take_lease("job", "server-a", later, ttl).unwrap(),
        "renewed"
    );
    let expired = later + SignedDuration::from_secs(61);
    assert!(b.take_lease("job", "server-b", expired, ttl).unwrap());
    assert!(!a.take_lease("job", "server-a", expired, ttl).unwrap());
}

/// A change through one handle is seen by the other's generation (for
/// PostgreSQL through a notification, so it is waited for, boundedly).
fn generation_is_shared(location: &Location) {
    let a = open(location);
    let b = open(location);
    let before = a.generation().unwrap();
    b.add_store("s", "t", now()).unwrap();
    let started = Instant::now();
    while a.generation().unwrap() == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the other handle never saw the change"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(a.store_access().unwrap().len(), 1);
}

fn people_sessions_audit(location: &Location) {
    let (db, other) = (open(location), open(location));
    let t0 = Timestamp::from_second(now().as_second()).unwrap();
    let person = |name: &str, role| PersonRow {
        name: name.into(),
        role,
        password: format!("$argon2id$not-a-real-hash-{name}"),
        created: t0,
        disabled: None,
    };
    db.add_person(&person("ana", Role::Admin)).unwrap();
    db.add_person(&person("bo", Role::Viewer)).unwrap();
    assert!(matches!(
        other.add_person(&person("ana", Role::Viewer)),
        Err(Error::PersonExists(_))
    ));
    assert_eq!(
        other.person("ana").unwrap(),
        Some(person("ana", Role::Admin))
    );
    assert_eq!(other.person("nobody").unwrap(), None);
    let names: Vec<String> = db.people().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["ana", "bo"]);

    // A session is found by its token's digest, until it ends.
    let hour = SignedDuration::from_hours(1);
    let session = |person: &str, role| SessionRow {
        person: person.into(),
        role,
        csrf: format!("csrf-{person}"),
        expires: t0 + hour,
    };
    db.add_session("t-ana", &session("ana", Role::Admin), t0)
        .unwrap();
    db.add_session("t-bo", &session("bo", Role::Viewer), t0)
        .unwrap();
    assert_eq!(
        other.session("t-ana", t0).unwrap(),
        Some(session("ana", Role::Admin))
    );
    assert_eq!(other.session("t-ana", t0 + hour).unwrap(), None, "ended");
    assert_eq!(other.session("t-unknown", t0).unwrap(), None);
    other.end_session("t-ana").unwrap();
    other.end_session("t-ana").unwrap();
    assert_eq!(db.session("t-ana", t0).unwrap(), None);
    // Disabling ends the person's sessions and keeps them out.
    db.disable_person("bo", t0).unwrap();
    assert_eq!(other.session("t-bo", t0).unwrap(), None);
    assert_eq!(other.person("bo").unwrap().unwrap().disabled, Some(t0));
    assert!(matches!(
        db.disable_person("nobody", t0),
        Err(Error::UnknownPerson(_))
    ));
    // Ended sessions are forgotten when another begins.
    db.add_session("t-old", &session("ana", Role::Admin), t0)
        .unwrap();
    db.add_session(
        "t-new",
        &SessionRow {
            expires: t0 + hour + hour,
            ..session("ana", Role::Admin)
        },
        t0 + hour,
    )
    .unwrap();
    assert_eq!(db.session("t-old", t0).unwrap(), None, "forgotten");

    // The audit trail, newest first.
    for (i, action) in ["publish", "store.revoke", "rollout.start"]
        .iter()
        .enumerate()
    {
        other
            .record_audit(&AuditRow {
                at: t0 + SignedDuration::from_secs(i as i64),
                who: "ana".into(),
                action: (*action).into(),
                subject: format!("subject {i}"),
            })
            .unwrap();
    }
    let trail = db.audit(2).unwrap();
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["rollout.start", "store.revoke"]);
    assert_eq!(trail[0].at, t0 + SignedDuration::from_secs(2));
}

fn admitted_stores(location: &Location) {
    let (db, other) = (open(location), open(location));
    let r = release("1.1.0");
    db.put_release("stable", &r, &[hash(1)]).unwrap();
    let wave = ["s-1".to_owned(), "s-2".to_owned()];
    other
        .set_release_stores("stable", &r.version, Some(&wave))
        .unwrap();
    let got = db.release("stable", &r.version).unwrap().unwrap();
    assert_eq!(got.stores.as_deref(), Some(&wave[..]));
    assert_eq!(
        Release {
            stores: None,
            ..got
        },
        r,
        "nothing else changed"
    );
    db.set_release_stores("stable", &r.version, None).unwrap();
    assert_eq!(other.releases("stable").unwrap(), [r]);
    assert!(matches!(
        db.set_release_stores("stable", &"9.9.9".parse().unwrap(), None),
        Err(Error::UnknownRelease { .. })
    ));
    // The release's blobs stay readable throughout.
    db.add_store("s-1", "t", now()).unwrap();
    assert!(db.unreadable("s-1", &[hash(1)]).unwrap().is_empty());
}

fn rollouts(location: &Location) {
    use tillup_core::rollout::{Event, Plan, Rollout, WaveSpec, WaveStores};
    use tillup_server::db::RolloutRow;
    let (db, other) = (open(location), open(location));
    let t0 = Timestamp::from_second(now().as_second()).unwrap();
    let plan = Plan {
        waves: vec![WaveSpec {
            name: "all".into(),
            stores: WaveStores::Share(100),
            success_percent: 100,
            error_percent: 0,
            soak_secs: 60,
        }],
        requires_approval: false,
        filter: Default::default(),
    };
    let row = |id: &str, created| RolloutRow {
        id: id.into(),
        channel: "stable".into(),
        version: "1.1.0".parse().unwrap(),
        plan: plan.clone(),
        waves: vec![["s-1".to_owned()].into()],
        state: Rollout::new(&plan, "ana", created),
        created,
    };
    db.add_rollout(&row("r-1", t0)).unwrap();
    db.add_rollout(&row("r-2", t0 + SignedDuration::from_secs(1)))
        .unwrap();
    assert_eq!(other.rollout("r-1").unwrap(), Some(row("r-1", t0)));
    assert_eq!(other.rollout("r-9").unwrap(), None);
    let ids: Vec<String> = other
        .rollouts()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["r-2", "r-1"], "newest first");
    // A state is saved only over the one it was computed from.
    let was = row("r-1", t0).state;
    let paused = was
        .step(
            &plan,
            &[],
            &Default::default(),
            &Event::Pause { by: "bo".into() },
            t0,
        )
        .unwrap();
    assert!(db.save_rollout("r-1", &was, &paused).unwrap());
    assert!(
        !other.save_rollout("r-1", &was, &paused).unwrap(),
        "moved meanwhile"
    );
    assert_eq!(other.rollout("r-1").unwrap().unwrap().state, paused);
}
