//! Staged rollouts by hand, end to end: a release admits stores by id in
//! the signed log; a store not admitted does not see it, one admitted
//! installs it at its next check, and admitting none stops new installs.
//! Real server, listener and agent on loopback.

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

    // Every admission is in the audit trail.
    let trail = store.server.cli(&["audit"])?;
    ensure!(
        trail.contains(&format!("stable/1.1.0: pilot-1, {ours}"))
            && trail.contains("stable/1.2.0: no store"),
        "{trail}"
    );
    Ok(())
}
