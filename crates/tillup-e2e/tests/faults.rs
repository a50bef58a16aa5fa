//! The fault-injection suite (DESIGN §3 invariants under the faults of §6):
//! the real programs on loopback, killed with SIGKILL at exact points
//! (`TILLUP_CRASH_AT`), left without a host, short of disk, stuck in a sale.
//!
//! Every run ends with [`settled`]: each terminal's folder byte for byte
//! the old one or the new release plus its own files (never a mix), its
//! main program running that version, the host's backup of it intact, and
//! a report, on the host and on the server, that says what happened.
//!
//! One store serves many faults in turn: each fault upgrades it to the
//! next version, so the suite stays fast.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use anyhow::{Context, Result, bail, ensure};
use tillup_core::manifest::Manifest;
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, expected_after, manifest_of, text, without_sales};

/// A store of two terminals (1 is the canary) with short health checks.
fn two_terminals() -> Result<Store> {
    Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-700")],
            health_timeout_secs: 5,
            ..StoreSpec::default()
        },
    )
}

/// Each terminal's folder before a fault.
fn folders(store: &Store) -> BTreeMap<u32, Manifest> {
    store
        .terminals
        .iter()
        .map(|(n, t)| (*n, manifest_of(&t.folder)))
        .collect()
}

/// What a terminal ended as.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    Old,
    New,
}

/// Checks the invariants after a run that upgraded (or tried to upgrade)
/// from `before` to the release at `release` (version `to`), and returns
/// what each terminal ended as.
fn settled(
    store: &Store,
    before: &BTreeMap<u32, Manifest>,
    release: &std::path::Path,
    to: &str,
) -> Result<BTreeMap<u32, End>> {
    let release = manifest_of(release);
    let log = store.local_log();
    let entry = log["history"]
        .as_array()
        .and_then(|h| h.last())
        .context("no upgrade in the history")?;
    let id = entry["id"].as_str().context("an upgrade id")?;
    ensure!(entry["finished"].is_string(), "not finished: {entry}");
    let backup = store
        .backups()
        .into_iter()
        .last()
        .context("no backup folder")?;
    let mut ends = BTreeMap::new();
    for (n, old) in before {
        let t = &store.terminals[n];
        let now = without_sales(&manifest_of(&t.folder));
        let new = without_sales(&expected_after(&release, old));
        let old_version = std::fs::read_to_string(t.folder.join("VERSION"))?;
        let end = if now == new {
            End::New
        } else if now == without_sales(old) {
            End::Old
        } else {
            bail!("terminal {n} holds a mix of old and new: {now:?}");
        };
        let version = match end {
            End::New => to.to_owned(),
            End::Old => old_version.trim().to_owned(),
        };
        t.wait_running(&version)
            .with_context(|| format!("terminal {n} is not running {version}"))?;
        let reported = entry["terminals"]
            .as_array()
            .and_then(|ts| ts.iter().find(|r| r["number"] == *n))
            .with_context(|| format!("terminal {n} is not in the report {entry}"))?;
        // The host's backup of it is the folder as it was, byte for byte;
        // only a terminal never stopped may have none.
        let saved = backup.join(format!("terminal-{n}"));
        if saved.exists() {
            let saved = manifest_of(&saved);
            ensure!(
                saved == *old,
                "terminal {n}: the backup in {} differs from its old folder:\n{}",
                backup.display(),
                diff(&saved, old)
            );
        } else {
            ensure!(
                end == End::Old && reported["stopped_ms"].is_null(),
                "terminal {n} was stopped but has no backup in {}",
                backup.display()
            );
        }
        let want = match end {
            End::New => "upgraded",
            End::Old => "restored",
        };
        ensure!(
            reported["result"] == want,
            "terminal {n} is {end:?} but reported {reported}"
        );
        if end == End::Old {
            ensure!(
                reported["failure"].is_string() && reported["failed_at"].is_string(),
                "terminal {n}: the report does not say what failed and when: {reported}"
            );
        }
        ends.insert(*n, end);
    }
    ensure!(entry["reported"] == true, "not reported: {entry}");
    let on_server = store.server.cli(&["reports", &store.store_id])?;
    ensure!(
        on_server.contains(id),
        "the server has no report of {id}: {on_server}"
    );
    Ok(ends)
}

/// The files in which two manifests differ.
fn diff(a: &Manifest, b: &Manifest) -> String {
    let only = |x: &Manifest, y: &Manifest| -> Vec<String> {
        x.files()
            .iter()
            .filter(|f| y.get(&f.path) != Some(*f))
            .map(|f| f.path.to_string())
            .collect()
    };
    format!(
        "backup only: {:?}; folder only: {:?}",
        only(a, b),
        only(b, a)
    )
}

fn all(ends: &BTreeMap<u32, End>, end: End) -> bool {
    ends.values().all(|e| *e == end)
}

fn ok(out: &Output) -> Result<()> {
    ensure!(out.status.success(), "tillup failed: {}", text(out));
    Ok(())
}

/// The agent killed at each step of stop, stage, swap and health check,
/// and started again at once (as its service manager would): it finishes
/// or undoes what it was doing, the host goes on (taking a whole snapshot
/// where the agent no longer holds the one its changes would be against),
/// and every terminal ends on the new release.
#[test]
fn the_agent_killed_at_each_step_recovers_and_the_upgrade_completes() -> Result<()> {
    let mut store = two_terminals()?;
    let points = [
        "agent.stage.building",   // staging the release while the POS runs
        "agent.stopped",          // the snapshot before the stop is gone with it
        "agent.stage.building#2", // staging the terminal's own files, stopped
        "agent.swap.journaled",   // before the first rename
        "agent.swap.exchanged",   // new folder in, old one not yet previous
        "agent.swap.settling",    // old folder on its way to previous
        "agent.health",           // the new release started, being checked
    ];
    for (i, point) in points.iter().enumerate() {
        let to = format!("1.{}.0", i + 1);
        let release = store.publish(&ReleaseSpec::new(&to), &[])?;
        let before = folders(&store);
        let canary = store.terminals.get_mut(&1).unwrap();
        canary.start_agent_with(&[("TILLUP_CRASH_AT", point)])?;
        let (out, restarts) = store.tillup_supervised(&["update"])?;
        ok(&out).with_context(|| format!("killed at {point}"))?;
        ensure!(restarts == 1, "{point}: the agent was never killed");
        let ends = settled(&store, &before, &release, &to).with_context(|| point.to_string())?;
        ensure!(all(&ends, End::New), "{point}: {ends:?}");
    }
    Ok(())
}

/// The agent killed while it puts the old release back (its new one failed
/// the health check): after its restart the canary runs the old release,
/// and no other terminal was touched.
#[test]
fn the_agent_killed_while_rolling_back_still_ends_on_the_old_release() -> Result<()> {
    let mut store = two_terminals()?;
    let points = ["agent.swap.exchanged#2", "agent.health.rolled_back"];
    for (i, point) in points.iter().enumerate() {
        let to = format!("1.{}.0", i + 1);
        let mut spec = ReleaseSpec::new(&to);
        spec.fail_health = Some("the tax table is missing".into());
        let release = store.publish(&spec, &[])?;
        let before = folders(&store);
        let canary = store.terminals.get_mut(&1).unwrap();
        canary.start_agent_with(&[("TILLUP_CRASH_AT", point)])?;
        let (out, restarts) = store.tillup_supervised(&["update"])?;
        ensure!(restarts == 1, "{point}: the agent was never killed");
        ensure!(
            out.status.code() == Some(2),
            "{point}: tillup should say some terminals were not upgraded: {}",
            text(&out)
        );
        let ends = settled(&store, &before, &release, &to).with_context(|| point.to_string())?;
        ensure!(all(&ends, End::Old), "{point}: {ends:?}");
        // Terminal 2 was stopped and collected, never swapped.
        let history = store.local_log()["history"].clone();
        let last = history.as_array().unwrap().last().unwrap();
        let second = &last["terminals"][1]["failure"];
        ensure!(
            second.as_str().is_some_and(|f| f.contains("canary")),
            "{last}"
        );
    }
    Ok(())
}

/// `tillup update` killed before and after each kind of effect, then run
/// again: it resumes from its persisted state and completes.
#[test]
fn the_listener_killed_at_each_phase_resumes_and_completes() -> Result<()> {
    let store = two_terminals()?;
    let before_effects = [
        "prefetch",
        "gather",
        "prestage",
        "stop",
        "collect",
        "upload_backup",
        "process",
        "deliver",
        "stage",
        "commit",
        "start",
        "check_health",
        "send_report",
    ];
    let points: Vec<String> = before_effects
        .iter()
        .map(|e| format!("listener.before.{e}"))
        .chain(
            // After the upload the server holds the changed backup: the
            // changes sent again no longer apply and the whole one goes.
            ["stop", "upload_backup", "commit", "check_health"]
                .iter()
                .map(|e| format!("listener.after.{e}")),
        )
        .collect();
    for (i, point) in points.iter().enumerate() {
        let to = format!("2.{i}.0");
        let release = store.publish(&ReleaseSpec::new(&to), &[])?;
        let before = folders(&store);
        let out = store.tillup_with(&["update"], &[("TILLUP_CRASH_AT", point)])?;
        ensure!(
            out.status.signal() == Some(9),
            "{point}: not killed: {}",
            text(&out)
        );
        let out = store.tillup(&["update"])?;
        ok(&out).with_context(|| format!("resuming after {point}"))?;
        let ends = settled(&store, &before, &release, &to).with_context(|| point.clone())?;
        ensure!(all(&ends, End::New), "{point}: {ends:?}");
        let history = store.local_log()["history"].as_array().unwrap().len();
        ensure!(history == i + 1, "{point}: {history} history entries");
    }
    Ok(())
}

/// `tillup update` killed while the main programs are stopped and never
/// run again: each agent's watchdog starts its program again on the old
/// folder and says so. The next run finds those terminals running and
/// leaves them on the old release (their sales since the backup must not
/// be lost); the run after that upgrades them.
#[test]
fn a_listener_that_never_comes_back_leaves_no_terminal_stopped() -> Result<()> {
    let mut store = two_terminals()?;
    for t in store.terminals.values_mut() {
        t.watchdog_secs = 5;
        t.start_agent()?;
    }
    let release = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let before = folders(&store);
    let out = store.tillup_with(
        &["update"],
        &[("TILLUP_CRASH_AT", "listener.before.commit")],
    )?;
    ensure!(out.status.signal() == Some(9), "{}", text(&out));
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
        let status: serde_json::Value = t
            .http()
            .get(format!(
                "{}{}",
                t.url().unwrap(),
                tillup_core::api::agent::STATUS
            ))
            .bearer_auth(&t.token)
            .send()?
            .json()?;
        let notice = status["notices"]
            .as_array()
            .and_then(|n| n.last())
            .and_then(|n| n["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            notice.contains("silent") && notice.contains("started it again on version 1.0.0"),
            "terminal {}: {status}",
            t.number
        );
    }
    // The programs ran (and sold) since their backup: the resumed upgrade
    // must not swap in folders built from it. It leaves them on the old
    // release, and the same run starts a new upgrade from their folders
    // as they are now.
    let now = folders(&store);
    let out = store.tillup(&["update"])?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    let log = store.local_log();
    let resumed = &log["history"][0];
    for t in resumed["terminals"].as_array().unwrap() {
        ensure!(t["result"] == "restored", "{resumed}");
    }
    ensure!(
        resumed["terminals"][0]["failure"]
            .as_str()
            .is_some_and(|f| f.contains("the watchdog started it again")
                && f.contains("upgrade this terminal again")),
        "{resumed}"
    );
    // The store's report on the server carries what the agents did alone.
    let reports = store.server.cli(&["reports", &store.store_id])?;
    ensure!(
        reports.contains("agent_notices") && reports.contains("started it again on version 1.0.0"),
        "{reports}"
    );
    let ends = settled(&store, &now, &release, "1.1.0")?;
    ensure!(all(&ends, End::New), "{ends:?}");
    ensure!(manifest_of(&store.backups()[0].join("terminal-1")) == before[&1]);
    Ok(())
}

/// The server killed while it processes the store's backup, and while it
/// serves the release's files; started again on its port, it answers the
/// host's retries and the upgrade completes.
#[test]
fn the_server_killed_during_processing_or_download_is_retried() -> Result<()> {
    let mut store = two_terminals()?;
    for (i, point) in ["server.process", "server.deliver"].iter().enumerate() {
        let to = format!("1.{}.0", i + 1);
        let mut spec = ReleaseSpec::new(&to);
        spec.large_bytes = 4 << 20;
        let release = store.publish(&spec, &[])?;
        let before = folders(&store);
        let port = store.server.proc.as_ref().unwrap().port();
        store
            .server
            .serve_with(port, &[("TILLUP_CRASH_AT", point)])?;
        let (out, restarts) = store.tillup_supervised(&["update"])?;
        ok(&out).with_context(|| format!("server killed at {point}"))?;
        ensure!(restarts == 1, "{point}: the server was never killed");
        let ends = settled(&store, &before, &release, &to).with_context(|| point.to_string())?;
        ensure!(all(&ends, End::New), "{point}: {ends:?}");
    }
    Ok(())
}

/// A terminal whose disk fills up while it receives the release fails
/// cleanly: its folder and program untouched, the reason in the report;
/// the other terminal is upgraded; once there is room, the next run
/// upgrades it too.
#[test]
fn a_full_disk_fails_that_terminal_cleanly() -> Result<()> {
    let mut store = two_terminals()?;
    let mut spec = ReleaseSpec::new("1.1.0");
    spec.large_bytes = 2 << 20;
    let release = store.publish(&spec, &[])?;
    let before = folders(&store);
    let full = store.terminals.get_mut(&2).unwrap();
    full.start_agent_with(&[("TILLUP_DISK_BUDGET", "1000000")])?;
    let out = store.tillup(&["update"])?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    let ends = settled(&store, &before, &release, "1.1.0")?;
    ensure!(ends[&1] == End::New && ends[&2] == End::Old, "{ends:?}");
    let log = store.local_log();
    let failure = log["history"][0]["terminals"][1]["failure"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        failure.contains("No space left on device"),
        "the report does not say the disk is full: {failure}"
    );
    let staging = store.terminals[&2].root.join("cupos.tillup-staging");
    ensure!(!staging.exists(), "a half-built staging folder is left");

    let full = store.terminals.get_mut(&2).unwrap();
    full.start_agent()?;
    let before = folders(&store);
    ok(&store.tillup(&["update"])?)?;
    let log = store.local_log();
    let last = log["history"].as_array().unwrap().last().unwrap();
    ensure!(
        last["terminals"][0]["number"] == 2 && last["terminals"][0]["result"] == "upgraded",
        "{last}"
    );
    let t2 = &store.terminals[&2];
    ensure!(
        without_sales(&manifest_of(&t2.folder))
            == without_sales(&expected_after(&manifest_of(&release), &before[&2]))
    );
    Ok(())
}

/// A sale that never ends: the agent waits the configured time, then
/// stops the program anyway, and the upgrade goes on.
#[test]
fn a_terminal_that_stays_busy_is_stopped_after_its_timeout() -> Result<()> {
    let mut store = two_terminals()?;
    let t = store.terminals.get_mut(&2).unwrap();
    t.busy_timeout_secs = 1;
    t.start_agent()?;
    std::fs::write(
        t.pos_state.join("busy"),
        "sale 1002, customer at the counter",
    )?;
    let release = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let before = folders(&store);
    ok(&store.tillup(&["update"])?)?;
    let ends = settled(&store, &before, &release, "1.1.0")?;
    ensure!(all(&ends, End::New), "{ends:?}");
    let agent_log = std::fs::read_to_string(store.terminals[&2].root.join("agent.log"))?;
    ensure!(
        agent_log.contains("a sale is in progress"),
        "the agent did not wait for the sale: {agent_log}"
    );
    Ok(())
}

/// A release that breaks on some terminals (their hardware, say): the
/// canary passes, the next failure is within the allowed share and the
/// upgrade goes on, the one after is not and it halts, leaving the last
/// terminal untouched on the old release. The report says which failed,
/// when, and why it halted.
#[test]
fn too_many_failures_after_the_canary_halt_the_upgrade() -> Result<()> {
    let mut store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-500"), (3, "CP-500"), (4, "CP-500")],
            health_timeout_secs: 5,
            ..StoreSpec::default()
        },
    )?;
    store.write_listener_config("prompt", &["parallel = 1", "halt_percent = 40"])?;
    for n in [2, 3] {
        let t = &store.terminals[&n];
        std::fs::write(
            t.folder.join("config/local/fail-on-1.1.0"),
            format!("terminal {n}: the new scale driver does not know this scale"),
        )?;
    }
    let release = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let before = folders(&store);
    let out = store.tillup(&["update"])?;
    ensure!(out.status.code() == Some(2), "{}", text(&out));
    let ends = settled(&store, &before, &release, "1.1.0")?;
    let expect = [End::New, End::Old, End::Old, End::Old];
    ensure!(ends.values().copied().eq(expect), "{ends:?}");
    let log = store.local_log();
    let entry = &log["history"][0];
    let failure = |n: usize| {
        entry["terminals"][n]["failure"]
            .as_str()
            .unwrap_or_default()
    };
    ensure!(
        failure(1).contains("the new scale driver") && failure(2).contains("the new scale driver"),
        "{entry}"
    );
    ensure!(failure(3).contains("halted"), "{entry}");
    let halted = entry["halted"].as_str().unwrap_or_default();
    ensure!(
        halted.contains("2 of the 3 terminals after the canary failed (2, 3)")
            && halted.contains("40%"),
        "{entry}"
    );
    // Never swapped: a swap leaves the old folder as previous.
    ensure!(
        !store.terminals[&4]
            .root
            .join("cupos.tillup-previous")
            .exists(),
        "terminal 4 was swapped"
    );
    Ok(())
}
