//! Logs that must be refused: tampered, signed by another key, replayed,
//! expired. Each leaves every terminal untouched.

use std::fs;

use anyhow::Result;
use base64::Engine;
use tillup_core::api::SIGNATURE_HEADER;
use tillup_core::manifest::Manifest;
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, manifest_of, static_http, text};

/// The served log and its signature text.
fn fetch_log(store: &Store) -> Result<(Vec<u8>, String)> {
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/v1/log/stable", store.server.url()))
        .bearer_auth(&store.store_token)
        .send()?
        .error_for_status()?;
    let sig = resp.headers()[SIGNATURE_HEADER].to_str()?.to_owned();
    let sig = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(sig)?)?;
    Ok((resp.bytes()?.to_vec(), sig))
}

fn serve_log(body: Vec<u8>, signature: &str) -> Result<String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    static_http(
        200,
        vec![
            (SIGNATURE_HEADER.into(), b64),
            ("content-type".into(), "application/json".into()),
        ],
        body,
        20,
    )
}

fn folders(store: &Store) -> Vec<Manifest> {
    store
        .terminals
        .values()
        .map(|t| manifest_of(&t.folder))
        .collect()
}

/// `check` and `update` both fail saying `want`; nothing on a terminal changed.
fn assert_refused(store: &Store, before: &[Manifest], want: &str, extra: &[&str]) -> Result<()> {
    for cmd in ["check", "update"] {
        let mut args = vec![cmd];
        args.extend_from_slice(extra);
        let out = store.tillup(&args)?;
        assert!(!out.status.success(), "{cmd} must fail: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("version log refused") && err.contains(want),
            "{cmd}: want `{want}`: {err}"
        );
    }
    assert_eq!(folders(store), before, "no terminal touched");
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    Ok(())
}

fn small_store() -> Result<Store> {
    Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-500")],
            ..StoreSpec::default()
        },
    )
}

#[test]
fn a_tampered_log_is_refused() -> Result<()> {
    let store = small_store()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let (body, sig) = fetch_log(&store)?;
    let tampered = String::from_utf8(body)?
        .replace("faster checkout", "FASTER checkout")
        .into_bytes();
    let url = serve_log(tampered, &sig)?;
    store.write_listener_config_for(url, &store.server.public_key, "prompt", &[])?;
    assert_refused(&store, &folders(&store), "does not verify", &[])
}

#[test]
fn a_log_signed_by_another_key_is_refused() -> Result<()> {
    let store = small_store()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let (body, _) = fetch_log(&store)?;
    let other = tillup_core::sign::generate_keys()?;
    let sig =
        tillup_core::sign::SecretKey::parse(&other.secret_file, None)?.sign(&body, "attacker")?;
    let url = serve_log(body, &sig)?;
    store.write_listener_config_for(url, &store.server.public_key, "prompt", &[])?;
    assert_refused(&store, &folders(&store), "another key", &[])
}

#[test]
fn a_replayed_older_log_is_refused() -> Result<()> {
    let mut store = small_store()?;
    let (old_body, old_sig) = fetch_log(&store)?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    // The listener sees the newer log once...
    store.tillup_json(&["check"])?;
    // ...then a stale mirror serves the old one, correctly signed.
    let url = serve_log(old_body, &old_sig)?;
    store.write_listener_config_for(url, &store.server.public_key, "prompt", &[])?;
    assert_refused(&store, &folders(&store), "older than sequence", &[])?;
    // The real server is still accepted afterwards.
    store.write_listener_config("prompt", &[])?;
    let check = store.tillup_json(&["check"])?;
    assert_eq!(check["status"], "update_available");
    Ok(())
}

#[test]
fn an_expired_log_is_refused() -> Result<()> {
    let store = small_store()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let before = folders(&store);
    assert_refused(
        &store,
        &before,
        "expired",
        &["--now", "2099-01-01T00:00:00Z"],
    )?;
    let log = fs::read_to_string(store.listener_data.join("local-log.json")).unwrap_or_default();
    assert!(
        !log.contains("\"sequence\""),
        "a refused log is not recorded as seen: {log}"
    );
    Ok(())
}
