//! Staged rollouts by hand, end to end: a release admits stores by id in
//! the signed log; a store not admitted does not see it, one admitted
//! installs it at its next check, and admitting none stops new installs;
//! a critical release on its way makes the daemon check sooner.
//! Real server, listener and agent on loopback.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use tillup_e2e::{ReleaseSpec, Store, text};

#[test]
fn a_store_outside_the_wave_does_not_install_until_it_is_admitted() -> Result<()> {
    let store = Store::one_till()?;
    let ours = store.store_id.clone();

    // The first wave is another store: for ours, 1.1.0 is not there.
    store.publish(&ReleaseSpec::new("1.1.0"), &["--store", "pilot-1"])?;
    let check = store.tillup_json(&["check"])?;
    ensure!(check["status"] == "up_to_date", "{check}");
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    store.terminals[&1].wait_running("1.0.0")?;

    // The next wave takes ours in: its next check finds it, and it installs.
    store
        .server
        .cli(&["admit", "--version", "1.1.0", "pilot-1", &ours])?;
    let check = store.tillup_json(&["check"])?;
    ensure!(check["status"] == "update_available", "{check}");
    ensure!(check["target"] == "1.1.0", "{check}");
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    store.terminals[&1].wait_running("1.1.0")?;

    // A rollout stopped (no store admitted) installs nowhere new.
    store.publish(&ReleaseSpec::new("1.2.0"), &[])?;
    store
        .server
        .cli(&["admit", "--version", "1.2.0", "--none"])?;
    let check = store.tillup_json(&["check"])?;
    ensure!(check["status"] == "up_to_date", "{check}");
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    store.terminals[&1].wait_running("1.1.0")?;

    // A critical release rolling out elsewhere: ours installs nothing yet,
    // but its daemon knows to check again within minutes, not hours.
    store.publish(
        &ReleaseSpec::new("1.3.0"),
        &["--critical", "--store", "pilot-1"],
    )?;
    let check = store.tillup_json(&["check"])?;
    ensure!(
        check["status"] == "up_to_date" && check["critical_on_the_way"] == "1.3.0",
        "{check}"
    );
    let out = store.tillup(&["daemon", "--once"])?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains(r#"{"outcome":"awaiting_wave","version":"1.3.0"}"#),
        "{}",
        text(&out)
    );
    store.terminals[&1].wait_running("1.1.0")?;

    // Every admission is in the audit trail.
    let trail = store.server.cli(&["audit"])?;
    ensure!(
        trail.contains(&format!("stable/1.1.0: pilot-1, {ours}"))
            && trail.contains("stable/1.2.0: no store"),
        "{trail}"
    );
    Ok(())
}

/// `rollout show ID`: the rollout and its stores' results.
fn show(store: &Store, id: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &store.server.cli(&["rollout", "show", id])?,
    )?)
}

/// Waits (bounded) until the rollout `id` is in `phase` (and at `wave`,
/// if given): the server moves it on the stores' reports.
fn wait_phase(
    store: &Store,
    id: &str,
    phase: &str,
    wave: Option<u64>,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let shown = show(store, id)?;
        let state = &shown["rollout"]["state"]["phase"];
        if state["phase"] == phase && wave.is_none_or(|w| state["wave"] == w) {
            return Ok(shown);
        }
        ensure!(
            Instant::now() < deadline,
            "rollout {id} never reached {phase} {wave:?}: {shown}; the pilot's reports: {}",
            store.server.cli(&["reports", &store.store_id])?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts a rollout of `version`: our store as the pilot, then every
/// other store (`others`, registered and never upgrading) as one wave.
fn start(store: &Store, version: &str) -> Result<String> {
    let ours = store.store_id.clone();
    let started: serde_json::Value = serde_json::from_str(&store.server.cli(&[
        "rollout",
        "start",
        "--version",
        version,
        "--pilot",
        &ours,
        "--wave",
        "100",
        "--soak-minutes",
        "0",
    ])?)?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    ensure!(
        started["waves"][0] == serde_json::json!([ours]),
        "{started}"
    );
    ensure!(
        started["waves"][1] == serde_json::json!(["other-1", "other-2"]),
        "{started}"
    );
    Ok(id)
}

#[test]
fn a_pilot_that_succeeds_advances_the_rollout_and_one_whose_canary_fails_halts_it() -> Result<()> {
    let store = Store::one_till()?;
    for other in ["other-1", "other-2"] {
        store.server.add_store(other)?;
    }

    // 1.1.0: the pilot (ours) installs it and reports; the next wave starts.
    store.publish(&ReleaseSpec::new("1.1.0"), &["--store", "nobody-yet"])?;
    let id = start(&store, "1.1.0")?;
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    store.terminals[&1].wait_running("1.1.0")?;
    let shown = wait_phase(&store, &id, "running", Some(1))?;
    ensure!(
        shown["results"][&store.store_id]["result"] == "succeeded",
        "{shown}"
    );
    // The last wave passes only once its stores report: here they never do.
    store.server.cli(&["rollout", "advance", &id])?;
    wait_phase(&store, &id, "done", None)?;

    // Our store reported its till's model and version: a filter on them
    // takes it (and not the stores that never reported), or leaves it out.
    let model = store.terminals[&1].model.clone();
    for (filter_model, running, waves) in [
        (
            model.as_str(),
            "1.1.0",
            serde_json::json!([[&store.store_id], []]),
        ),
        ("NO-SUCH-MODEL", "1.1.0", serde_json::json!([[], []])),
        (model.as_str(), "1.0.0", serde_json::json!([[], []])),
    ] {
        let started: serde_json::Value = serde_json::from_str(&store.server.cli(&[
            "rollout",
            "start",
            "--version",
            "1.1.0",
            "--pilot",
            &store.store_id,
            "--wave",
            "100",
            "--model",
            filter_model,
            "--running",
            running,
        ])?)?;
        ensure!(
            started["waves"] == waves,
            "{filter_model} {running}: {started}"
        );
        let id = started["id"].as_str().unwrap_or_default();
        store.server.cli(&["rollout", "abort", id])?;
    }

    // 1.2.0 fails its health check on our canary: the rollout halts, says
    // where and why, and the next wave is never admitted.
    let mut broken = ReleaseSpec::new("1.2.0");
    broken.fail_health = Some("the tax table is missing".into());
    store.publish(&broken, &["--store", "nobody-yet"])?;
    let id = start(&store, "1.2.0")?;
    store.tillup(&["update"])?;
    store.terminals[&1].wait_running("1.1.0")?;
    let shown = wait_phase(&store, &id, "halted", Some(0))?;
    let why = shown["rollout"]["state"]["phase"]["why"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        why.contains(&store.store_id) && why.contains("tax table is missing"),
        "{shown}"
    );
    let check = store.tillup_json(&["check"])?;
    ensure!(
        check["status"] == "up_to_date",
        "halted: nobody is admitted: {check}"
    );

    // Aborting is audited.
    store.server.cli(&["rollout", "abort", &id])?;
    let trail = store.server.cli(&["audit"])?;
    ensure!(
        trail.contains("rollout.abort") && trail.contains("rollout.start"),
        "{trail}"
    );
    Ok(())
}

#[test]
fn a_rollout_takes_only_the_stores_its_labels_choose() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = tillup_e2e::Server::start(&dir.path().join("server"))?;
    for (store, labels) in [
        ("north-1", &["region=north", "mall"][..]),
        ("north-2", &["region=north"]),
        ("north-3", &["region=north", "mall"]),
        ("south-1", &["region=south", "mall"]),
    ] {
        server.add_store(store)?;
        let mut args = vec!["store", "label", store];
        args.extend(labels);
        server.cli(&args)?;
    }
    // A label nobody can type in a filter is refused with the rule.
    let bad = server.cli(&["store", "label", "north-1", "region north"]);
    ensure!(
        bad.as_ref().is_err_and(|e| e.to_string().contains("A-Z")),
        "{bad:?}"
    );
    let release = dir.path().join("1.1.0");
    tillup_e2e::build_release(&release, &ReleaseSpec::new("1.1.0"))?;
    server.publish(&release, "1.1.0", &["--store", "nobody-yet"])?;

    // Pilots outside the filter are dropped too; the shares split the rest.
    let started: serde_json::Value = serde_json::from_str(&server.cli(&[
        "rollout",
        "start",
        "--version",
        "1.1.0",
        "--pilot",
        "north-1",
        "--pilot",
        "south-1",
        "--wave",
        "100",
        "--label",
        "region=north",
        "--label",
        "mall",
    ])?)?;
    ensure!(
        started["waves"] == serde_json::json!([["north-1"], ["north-3"]]),
        "{started}"
    );
    ensure!(
        server.cli(&["audit"])?.contains("store.label"),
        "labelling is audited"
    );
    Ok(())
}
