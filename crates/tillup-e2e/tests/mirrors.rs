//! Several server addresses: a primary and its mirrors, tried in order.
//! Real server, agents and `tillup` on loopback.

use anyhow::{Result, ensure};
use tillup_core::api::SIGNATURE_HEADER;
use tillup_core::manifest::Manifest;
use tillup_e2e::{
    ReleaseSpec, Store, StoreSpec, dead_address, expected_after, manifest_of, static_http, text,
    without_sales,
};

fn two_tills() -> Result<Store> {
    Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-700")],
            ..StoreSpec::default()
        },
    )
}

fn folders(store: &Store) -> Vec<Manifest> {
    store
        .terminals
        .values()
        .map(|t| manifest_of(&t.folder))
        .collect()
}

/// The listener's config with `primary` as its server and `mirrors` after it.
fn point_at(store: &Store, primary: String, mirrors: &[String]) -> Result<()> {
    let list = format!("mirrors = {mirrors:?}");
    store.write_listener_config_for(primary, &store.server.public_key, "prompt", &[&list])
}

#[test]
fn with_the_primary_down_the_upgrade_completes_through_a_mirror() -> Result<()> {
    let store = two_tills()?;
    let old = folders(&store);
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let release = manifest_of(&rel);
    point_at(&store, dead_address(), &[store.server.url().to_owned()])?;

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));

    for (t, before) in store.terminals.values().zip(&old) {
        t.wait_running("1.1.0")?;
        assert_eq!(
            without_sales(&manifest_of(&t.folder)),
            without_sales(&expected_after(&release, before)),
            "terminal {}",
            t.number
        );
    }
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
    let store = two_tills()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/v1/log/stable", store.server.url()))
        .bearer_auth(&store.store_token)
        .send()?
        .error_for_status()?;
    let signature = resp.headers()[SIGNATURE_HEADER].to_str()?.to_owned();
    let tampered = String::from_utf8(resp.bytes()?.to_vec())?
        .replace("faster checkout", "FASTER checkout")
        .into_bytes();
    let mirror = static_http(
        200,
        vec![
            (SIGNATURE_HEADER.into(), signature),
            ("content-type".into(), "application/json".into()),
        ],
        tampered,
        20,
    )?;
    point_at(&store, dead_address(), &[mirror])?;
    let before = folders(&store);

    let out = store.tillup(&["update"])?;
    ensure!(!out.status.success(), "update must fail: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("version log refused") && err.contains("does not verify"),
        "{err}"
    );
    assert_eq!(folders(&store), before, "no terminal touched");
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    Ok(())
}
