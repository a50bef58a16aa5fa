//! Several server addresses: a primary and its mirrors, tried in order.
//! Real server, agents and `tillup` on loopback.

use anyhow::{Result, ensure};
use tillup_e2e::{ReleaseSpec, Store, dead_address, serve_log, text};

/// The listener's config with `primary` as its server and `mirrors` after it.
fn point_at(store: &Store, primary: String, mirrors: &[String]) -> Result<()> {
    let list = format!("mirrors = {mirrors:?}");
    store.write_listener_config_for(primary, &store.server.public_key, "prompt", &[&list])
}

#[test]
fn with_the_primary_down_the_upgrade_completes_through_a_mirror() -> Result<()> {
    let store = Store::two_tills()?;
    let old = store.folders();
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    point_at(&store, dead_address(), &[store.server.url().to_owned()])?;

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));

    store.assert_upgraded(&rel, &old, "1.1.0")?;
    let log = store.local_log();
    let last = &log["history"][log["history"]
        .as_array()
        .map_or(0, Vec::len)
        .saturating_sub(1)];
    ensure!(
        last["finished"].is_string() && last.to_string().contains("1.1.0"),
        "the upgrade is in the local log: {log}"
    );
    // The backup and the report reached the server through the mirror.
    let reports: serde_json::Value =
        serde_json::from_str(&store.server.cli(&["reports", &store.store_id])?)?;
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{reports}");
    Ok(())
}

#[test]
fn a_mirror_serving_a_tampered_log_is_refused_and_nothing_is_touched() -> Result<()> {
    let store = Store::two_tills()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let (body, signature) = store.served_log()?;
    let tampered = String::from_utf8(body)?
        .replace("faster checkout", "FASTER checkout")
        .into_bytes();
    let mirror = serve_log(tampered, &signature)?;
    point_at(&store, dead_address(), &[mirror])?;
    let before = store.folders();

    let out = store.tillup(&["update"])?;
    ensure!(!out.status.success(), "update must fail: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("version log refused") && err.contains("does not verify"),
        "{err}"
    );
    assert_eq!(store.folders(), before, "no terminal touched");
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    Ok(())
}

#[test]
fn a_primary_serving_a_tampered_log_is_left_for_a_mirror_that_serves_the_signed_one() -> Result<()>
{
    let store = Store::two_tills()?;
    let old = store.folders();
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let (body, signature) = store.served_log()?;
    let tampered = String::from_utf8(body)?
        .replace("faster checkout", "FASTER checkout")
        .into_bytes();
    point_at(
        &store,
        serve_log(tampered, &signature)?,
        &[store.server.url().to_owned()],
    )?;

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    store.assert_upgraded(&rel, &old, "1.1.0")
}
