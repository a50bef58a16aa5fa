//! A store upgraded end to end by the real programs on loopback.

use std::fs;

use anyhow::{Result, ensure};
use tillup_core::manifest::Manifest;
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, expected_after, manifest_of, text};

/// A manifest without one path (pos-sim appends to its sales log at every
/// start, so that file is checked separately).
fn without(m: &Manifest, path: &str) -> Manifest {
    Manifest::new(
        m.files()
            .iter()
            .filter(|f| f.path.as_str() != path)
            .cloned()
            .collect(),
    )
    .unwrap()
}

const SALES: &str = "data/sales.log";

/// The hashes of the blobs in a blob store.
fn received_blobs(store: &std::path::Path) -> std::collections::BTreeSet<tillup_core::Sha256Hex> {
    tillup_fs::BlobStore::open(store).unwrap().hashes().unwrap()
}

/// Every terminal holds exactly its old folder and runs 1.0.0.
fn assert_all_old(store: &Store, before: &[Manifest]) -> Result<()> {
    for (t, old) in store.terminals.values().zip(before) {
        t.wait_running("1.0.0")?;
        let now = without(&manifest_of(&t.folder), SALES);
        assert_eq!(now, without(old, SALES), "terminal {} is all-old", t.number);
    }
    Ok(())
}

/// The digest the signed log the host last accepted gives `version`'s manifest.
fn signed_manifest_digest(store: &Store, version: &str) -> Result<tillup_core::Sha256Hex> {
    let cached: serde_json::Value =
        serde_json::from_slice(&fs::read(store.listener_data.join("log-cache.json"))?)?;
    let log = tillup_core::log::VersionLog::parse(
        cached["body"].as_str().unwrap_or_default().as_bytes(),
    )?;
    log.release(&version.parse()?)
        .map(|r| r.sha256)
        .ok_or_else(|| anyhow::anyhow!("{version} is not in the log"))
}

#[test]
fn happy_path_every_terminal_is_the_new_release_plus_its_own_files() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    let old: Vec<(u32, Manifest, String)> = store
        .terminals
        .values()
        .map(|t| {
            (
                t.number,
                manifest_of(&t.folder),
                fs::read_to_string(t.folder.join(SALES)).unwrap(),
            )
        })
        .collect();
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let release = manifest_of(&rel);

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));

    let backups = store.backups();
    assert_eq!(
        backups.len(),
        1,
        "one backup folder by time and version: {backups:?}"
    );
    assert!(
        backups[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_1.1.0")
    );
    for (n, old_manifest, old_sales) in &old {
        let t = &store.terminals[n];
        let now = manifest_of(&t.folder);
        let expected = expected_after(&release, old_manifest);
        assert_eq!(
            without(&now, SALES),
            without(&expected, SALES),
            "terminal {n}"
        );
        let sales = fs::read_to_string(t.folder.join(SALES))?;
        assert!(
            sales.starts_with(old_sales.as_str()) && sales.contains("version 1.1.0"),
            "terminal {n}: sales log kept and appended: {sales}"
        );
        assert!(
            t.folder
                .join(format!("config/local/terminal-{n}.ini"))
                .is_file(),
            "terminal-local config kept"
        );
        assert!(
            !t.folder.join("docs/legacy-readme.txt").exists(),
            "removed file gone"
        );
        assert_eq!(
            fs::read(t.folder.join("商品/价格表.csv"))?,
            fs::read(rel.join("商品/价格表.csv"))?
        );
        // The host's backup is the old folder, byte for byte.
        assert_eq!(
            &manifest_of(&backups[0].join(format!("terminal-{n}"))),
            old_manifest,
            "terminal {n} backup"
        );
        t.wait_running("1.1.0")?;
        // Content-addressed: the terminal was sent exactly the release files
        // its folder did not already hold, each once, and the release's
        // manifest it checks them against.
        let held: std::collections::BTreeSet<_> = old_manifest.hashes();
        let mut needed: std::collections::BTreeSet<_> =
            release.hashes().difference(&held).copied().collect();
        needed.insert(signed_manifest_digest(&store, "1.1.0")?);
        assert_eq!(
            received_blobs(&t.root.join("agent-state/blobs")),
            needed,
            "terminal {n}"
        );
    }

    let log = store.local_log();
    for n in 1..=3 {
        assert_eq!(
            log["terminals"][n.to_string()]["installed"]["version"],
            "1.1.0",
            "{log}"
        );
    }
    let history = &log["history"][0];
    assert!(
        history["terminals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["result"] == "upgraded" && t["stopped_ms"].is_i64()),
        "{history}"
    );
    assert_eq!(history["reported"], true);

    // The server holds the store's backup (in the temporary area of that
    // upgrade) and its report.
    let id = history["id"].as_str().unwrap();
    let backup: serde_json::Value = serde_json::from_slice(&fs::read(
        store
            .server
            .data
            .join(format!("stores/store-001/upgrades/{id}/backup.json")),
    )?)?;
    assert_eq!(backup["terminals"].as_array().unwrap().len(), 3);
    let reports: serde_json::Value =
        serde_json::from_str(&store.server.cli(&["reports", "store-001"])?)?;
    assert_eq!(reports.as_array().unwrap().len(), 1, "{reports}");
    assert!(reports.to_string().contains(id));

    // Nothing more to do: a second update changes nothing.
    let again = store.tillup_json(&["update"])?;
    assert_eq!(again["upgrades"].as_array().unwrap().len(), 0, "{again}");
    let status = store.tillup_json(&["status"])?;
    for t in status["terminals"].as_array().unwrap() {
        assert_eq!(t["version"], "1.1.0");
        assert_eq!(t["main"]["state"], "running");
    }
    Ok(())
}

/// A POS that writes its journal as it closes changes its folder after the
/// host took it before the stop: the backup is the folder as the program
/// left it, and the new folder keeps what it wrote.
#[test]
fn what_a_terminal_writes_as_it_stops_is_in_its_backup_and_its_new_folder() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    let journal = &store.terminals[&1];
    fs::write(journal.folder.join(tillup_pos_sim::JOURNAL_ON_CLOSE), b"")?;
    let before: Vec<(u32, String)> = store
        .terminals
        .values()
        .map(|t| (t.number, fs::read_to_string(t.folder.join(SALES)).unwrap()))
        .collect();
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));

    let backup = &store.backups()[0];
    for (n, log_before) in &before {
        let backed_up = fs::read_to_string(backup.join(format!("terminal-{n}")).join(SALES))?;
        let written_as_it_stopped = backed_up
            .strip_prefix(log_before.as_str())
            .unwrap_or_else(|| panic!("terminal {n}: the backup lost its sales log: {backed_up}"));
        if *n == 1 {
            assert!(
                written_as_it_stopped.lines().count() == 1
                    && written_as_it_stopped.starts_with("closed ")
                    && written_as_it_stopped.contains("version 1.0.0"),
                "terminal 1's backup holds its log as the program left it: {backed_up}"
            );
        } else {
            assert_eq!(
                written_as_it_stopped, "",
                "terminal {n} wrote nothing as it stopped"
            );
        }
        let now = fs::read_to_string(store.terminals[n].folder.join(SALES))?;
        let since = now.strip_prefix(backed_up.as_str()).unwrap_or_else(|| {
            panic!("terminal {n}: the new folder lost the log it stopped with: {now}")
        });
        assert!(
            since.starts_with("opened ") && since.contains("version 1.1.0"),
            "terminal {n}: {now}"
        );
    }
    Ok(())
}

#[test]
fn an_offline_terminal_is_left_out_and_the_next_update_finishes_it() -> Result<()> {
    let mut store = Store::new(None, StoreSpec::default())?;
    store.terminals.get_mut(&3).unwrap().stop();
    store.write_listener_config("prompt", &[])?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;

    let out = store.tillup(&["update", "--json"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let first = &outcome["upgrades"][0];
    assert_eq!(first["terminals"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(
        first["left_out"][0][0], 3,
        "terminal 3 is reported as left out: {first}"
    );
    for n in [1, 2] {
        store.terminals[&n].wait_running("1.1.0")?;
    }
    assert_eq!(
        fs::read_to_string(store.terminals[&3].folder.join("VERSION"))?.trim(),
        "1.0.0"
    );

    // Terminal 3 comes back (on a new port); the next update finishes it.
    store.terminals.get_mut(&3).unwrap().start_agent()?;
    store.write_listener_config("prompt", &[])?;
    store.terminals[&3].wait_running("1.0.0")?;
    let out = store.tillup(&["update", "--json"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let terminals = outcome["upgrades"][0]["terminals"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(terminals.len(), 1);
    assert_eq!(terminals[0]["number"], 3);
    store.terminals[&3].wait_running("1.1.0")?;
    let reports: serde_json::Value =
        serde_json::from_str(&store.server.cli(&["reports", "store-001"])?)?;
    assert_eq!(reports.as_array().unwrap().len(), 2);
    Ok(())
}

#[test]
fn republished_same_version_is_a_warning_and_installs_nothing() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    store.tillup_json(&["check"])?;
    let before: Vec<Manifest> = store
        .terminals
        .values()
        .map(|t| manifest_of(&t.folder))
        .collect();
    let mut again = ReleaseSpec::new("1.0.0");
    again.large_bytes += 1000;
    store.publish(&again, &["--replace"])?;

    let check = store.tillup_json(&["check"])?;
    assert_eq!(check["status"], "up_to_date", "{check}");
    let warning = &check["comparison"]["warnings"][0];
    assert_eq!(warning["warning"], "republished", "{check}");
    assert!(
        warning["changed"]
            .as_array()
            .unwrap()
            .contains(&"size".into())
    );
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let after: Vec<Manifest> = store
        .terminals
        .values()
        .map(|t| manifest_of(&t.folder))
        .collect();
    assert_eq!(before, after, "nothing installed");
    let status = store.tillup(&["status"])?;
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("republished"),
        "{}",
        text(&status)
    );
    // ...and reported to the chain's IT, once.
    store.tillup_json(&["check"])?;
    let reports: serde_json::Value =
        serde_json::from_str(&store.server.cli(&["reports", "store-001"])?)?;
    let warnings: Vec<_> = reports
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["report"]["kind"] == "warnings")
        .collect();
    assert_eq!(warnings.len(), 1, "{reports}");
    assert!(warnings[0].to_string().contains("republished"));
    Ok(())
}

#[test]
fn min_from_goes_through_the_intermediate_release() -> Result<()> {
    let mut store = Store::new(None, StoreSpec::default())?;
    store.write_listener_config("prompt", &["keep_backups = 1"])?;
    let first_catalog = manifest_of(&store.root.join("releases/1.0.0"))
        .get(&tillup_core::RelPath::new("assets/catalog.bin")?)
        .unwrap()
        .sha256;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    store.publish(&ReleaseSpec::new("2.0.0"), &["--min-from", "1.1.0"])?;
    let check = store.tillup_json(&["check"])?;
    assert_eq!(
        check["comparison"]["terminals"][0][1]["next"], "1.1.0",
        "{check}"
    );
    assert_eq!(check["comparison"]["terminals"][0][1]["target"], "2.0.0");

    let outcome = store.tillup_json(&["update"])?;
    let hops: Vec<String> = outcome["upgrades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["terminals"][0]["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hops, ["1.1.0", "2.0.0"], "{outcome}");
    for t in store.terminals.values() {
        t.wait_running("2.0.0")?;
    }
    // The host keeps what it was told to: one backup (the newest, of the
    // 1.1.0 folders), and no longer the files of 1.0.0.
    let backups = store.backups();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(backups[0].to_string_lossy().ends_with("_2.0.0"));
    let host_blobs = received_blobs(&store.listener_data.join("blobs"));
    assert!(!host_blobs.is_empty() && !host_blobs.contains(&first_catalog));
    // Each terminal keeps no received file its folder does not use, but
    // the manifest of the release it runs (what it checked it against).
    let signed = signed_manifest_digest(&store, "2.0.0")?;
    for t in store.terminals.values() {
        let mut used = manifest_of(&t.folder).hashes();
        used.insert(signed);
        let kept = received_blobs(&t.root.join("agent-state/blobs"));
        assert!(
            !kept.is_empty() && kept.is_subset(&used),
            "terminal {}",
            t.number
        );
    }
    Ok(())
}

#[test]
fn a_release_that_excludes_a_model_leaves_that_terminal_alone() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    store.publish(&ReleaseSpec::new("1.1.0"), &["--model", "CP-500"])?;
    let check = store.tillup_json(&["check"])?;
    let t3 = &check["comparison"]["terminals"][2];
    assert_eq!(t3[0], 3);
    assert_eq!(t3[1]["verdict"], "not_for_model", "{check}");
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    store.terminals[&1].wait_running("1.1.0")?;
    store.terminals[&2].wait_running("1.1.0")?;
    store.terminals[&3].wait_running("1.0.0")?;
    let check = store.tillup(&["check"])?;
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("no release for model CP-700"),
        "{}\n{shown}",
        text(&check)
    );
    Ok(())
}

#[test]
fn scheduled_mode_upgrades_only_inside_the_window_without_asking() -> Result<()> {
    let mut store = Store::new(None, StoreSpec::default())?;
    store.write_listener_config("scheduled", &[])?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;

    let noon = store.tillup(&[
        "daemon",
        "--once",
        "--now",
        "2026-11-21T12:00:00+08:00[Asia/Shanghai]",
    ])?;
    ensure!(noon.status.success(), "{}", text(&noon));
    assert!(
        String::from_utf8_lossy(&noon.stdout).contains("waiting_for_window"),
        "{}",
        text(&noon)
    );
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    assert!(
        store.local_log()["pending"].is_null(),
        "no prompt in scheduled mode"
    );

    let night = store.tillup(&[
        "daemon",
        "--once",
        "--now",
        "2026-11-22T03:30:00+08:00[Asia/Shanghai]",
    ])?;
    ensure!(night.status.success(), "{}", text(&night));
    for t in store.terminals.values() {
        t.wait_running("1.1.0")?;
    }
    assert_eq!(store.local_log()["history"][0]["trigger"]["by"], "schedule");
    Ok(())
}

#[test]
fn prompt_mode_records_the_prompt_and_remembers_skip() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let tick = store.tillup(&["daemon", "--once"])?;
    assert!(
        String::from_utf8_lossy(&tick.stdout).contains("\"prompted\""),
        "{}",
        text(&tick)
    );
    assert_eq!(store.local_log()["pending"]["version"], "1.1.0");
    let skip = store.tillup(&["answer", "skip"])?;
    ensure!(skip.status.success(), "{}", text(&skip));
    let tick = store.tillup(&["daemon", "--once"])?;
    assert!(
        String::from_utf8_lossy(&tick.stdout).contains("\"skipped\""),
        "{}",
        text(&tick)
    );
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    Ok(())
}

#[test]
fn a_bad_config_is_a_clear_error_naming_the_file() -> Result<()> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    let cfg = fs::read_to_string(&store.listener_config)?.replace("03:00", "3 o'clock");
    fs::write(&store.listener_config, cfg)?;
    let out = store.tillup(&["check"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("window.start") && err.contains("HH:MM"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_release_that_fails_its_health_check_is_rolled_back_on_the_canary_only() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    let before: Vec<Manifest> = store
        .terminals
        .values()
        .map(|t| manifest_of(&t.folder))
        .collect();
    let mut broken = ReleaseSpec::new("1.1.0");
    broken.fail_health = Some("database migration 42 failed: disk I/O error".into());
    store.publish(&broken, &[])?;

    let out = store.tillup(&["update", "--json"])?;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a failed upgrade exits 2: {}",
        text(&out)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let terminals = outcome["upgrades"][0]["terminals"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        terminals.iter().all(|t| t["result"] == "restored"),
        "{outcome}"
    );
    let canary = terminals[0]["failure"].as_str().unwrap();
    assert!(
        canary.contains("health check") && canary.contains("database migration 42 failed"),
        "the program's own words: {canary}"
    );
    assert!(
        terminals[1]["failure"].as_str().unwrap().contains("canary"),
        "{outcome}"
    );

    assert_all_old(&store, &before)?;
    // Only the canary's folder was ever swapped.
    assert!(
        store.terminals[&1]
            .root
            .join("cupos.tillup-previous")
            .exists()
    );
    assert!(
        !store.terminals[&2]
            .root
            .join("cupos.tillup-previous")
            .exists()
    );
    let log = store.local_log();
    assert_eq!(log["terminals"]["1"]["installed"]["version"], "1.0.0");
    assert!(
        log["terminals"]["1"]["last_report"]
            .as_str()
            .unwrap()
            .contains("restored")
    );
    Ok(())
}

#[test]
fn a_release_that_runs_but_stays_unhealthy_is_rolled_back() -> Result<()> {
    let spec = StoreSpec {
        terminals: vec![(1, "CP-500"), (2, "CP-500")],
        health_timeout_secs: 3,
        ..StoreSpec::default()
    };
    let store = Store::new(None, spec)?;
    let before: Vec<Manifest> = store
        .terminals
        .values()
        .map(|t| manifest_of(&t.folder))
        .collect();
    let mut sick = ReleaseSpec::new("1.1.0");
    sick.unhealthy = Some("payment terminal not found on COM3".into());
    store.publish(&sick, &[])?;

    let out = store.tillup(&["update", "--json"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let canary = &outcome["upgrades"][0]["terminals"][0];
    assert_eq!(canary["result"], "restored", "{outcome}");
    assert!(
        canary["failure"]
            .as_str()
            .unwrap()
            .contains("payment terminal not found on COM3"),
        "{outcome}"
    );
    assert_all_old(&store, &before)?;
    Ok(())
}

#[test]
fn a_sale_in_progress_delays_the_stop_until_it_ends() -> Result<()> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let t = &store.terminals[&1];
    let busy = t.pos_state.join("busy");
    fs::write(&busy, "sale 1001")?;
    // The sale ends once the agent says it is waiting for it.
    let agent_log = t.root.join("agent.log");
    let clear = {
        let busy = busy.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(120) {
                if fs::read_to_string(&agent_log)
                    .unwrap_or_default()
                    .contains("a sale is in progress")
                {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            fs::remove_file(busy)
        })
    };
    let out = store.tillup(&["update", "-v"])?;
    clear.join().unwrap()?;
    ensure!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let waited: u64 = err
        .split("waited_busy_ms=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(waited > 0, "the stop waited for the sale: {err}");
    assert!(!err.contains("forced=true"), "{err}");
    t.wait_running("1.1.0")?;
    Ok(())
}

#[test]
fn upgrade_tonight_waits_for_the_window_and_records_who_confirmed() -> Result<()> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let noon = ["--now", "2026-11-21T12:00:00+08:00[Asia/Shanghai]"];
    let tick = |now: &[&str]| {
        let mut args = vec!["daemon", "--once"];
        args.extend_from_slice(now);
        store.tillup(&args)
    };
    let first = tick(&noon)?;
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("\"prompted\""),
        "{}",
        text(&first)
    );
    let answer = store.tillup(&["answer", "tonight"])?;
    assert!(answer.status.success(), "{}", text(&answer));
    let later = tick(&noon)?;
    assert!(
        String::from_utf8_lossy(&later.stdout).contains("waiting_for_window"),
        "{}",
        text(&later)
    );
    store.terminals[&1].wait_running("1.0.0")?;

    let night = tick(&["--now", "2026-11-22T03:30:00+08:00[Asia/Shanghai]"])?;
    assert!(night.status.success(), "{}", text(&night));
    store.terminals[&1].wait_running("1.1.0")?;
    let log = store.local_log();
    assert_eq!(
        log["history"][0]["trigger"]["name"], "store manager (upgrade tonight)",
        "{log}"
    );
    assert!(log["pending"].is_null(), "the prompt is answered: {log}");
    Ok(())
}

/// A release whose version carries semver build metadata installs: the
/// health check's query once sent the `+` unencoded, the agent read it as
/// a space, and every terminal was rolled back.
#[test]
fn a_version_with_build_metadata_installs_on_every_terminal() -> Result<()> {
    let store = Store::new(None, StoreSpec::default())?;
    store.publish(&ReleaseSpec::new("1.1.0+build.5"), &[])?;
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    for t in store.terminals.values() {
        t.wait_running("1.1.0+build.5")?;
        assert_eq!(
            fs::read_to_string(t.folder.join("VERSION"))?.trim(),
            "1.1.0+build.5",
            "terminal {}",
            t.number
        );
    }
    let log = store.local_log();
    let results: Vec<&str> = log["history"][0]["terminals"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["result"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        !results.is_empty() && results.iter().all(|r| *r == "upgraded"),
        "{results:?}"
    );
    Ok(())
}

/// Every file and folder under `root` whose mode lets users other than
/// its owner in (the folder itself must be 0700).
#[cfg(unix)]
fn open_to_others(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut open = Vec::new();
    let mode = |p: &std::path::Path| {
        std::fs::symlink_metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    if mode(root) != 0o700 {
        open.push(format!("{} {:o}", root.display(), mode(root)));
    }
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            // The server's public key is public; the test harness writes
            // the server's output into `serve.log`.
            let exempt = p.extension().is_some_and(|x| x == "pub")
                || p.file_name().is_some_and(|n| n == "serve.log");
            if mode(&p) & 0o077 != 0 && !exempt {
                open.push(format!("{} {:o}", p.display(), mode(&p)));
            }
        }
    }
    open
}

#[cfg(unix)]
#[test]
fn data_at_rest_is_private_to_its_user_on_server_host_and_agent() -> Result<()> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    let mut open = open_to_others(&store.server.data);
    open.extend(open_to_others(&store.listener_data));
    for t in store.terminals.values() {
        open.extend(open_to_others(&t.root.join("agent-state")));
    }
    ensure!(open.is_empty(), "open to other users: {open:#?}");
    Ok(())
}
