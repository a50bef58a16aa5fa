//! Logs that must be refused: tampered, signed by another key, replayed,
//! expired. Each leaves every terminal untouched.

use std::fs;

use anyhow::Result;
use tillup_core::manifest::Manifest;
use tillup_e2e::{ReleaseSpec, Store, serve_log, text};

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
    assert_eq!(store.folders(), before, "no terminal touched");
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    Ok(())
}

#[test]
fn a_tampered_log_is_refused() -> Result<()> {
    let store = Store::two_tills()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let (body, sig) = store.served_log()?;
    let tampered = String::from_utf8(body)?
        .replace("faster checkout", "FASTER checkout")
        .into_bytes();
    let url = serve_log(tampered, &sig)?;
    store.write_listener_config_for(url, &store.server.public_key, "prompt", &[])?;
    assert_refused(&store, &store.folders(), "does not verify", &[])
}

#[test]
fn a_log_signed_by_another_key_is_refused() -> Result<()> {
    let store = Store::two_tills()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let (body, _) = store.served_log()?;
    let other = tillup_core::sign::generate_keys()?;
    let sig =
        tillup_core::sign::SecretKey::parse(&other.secret_file, None)?.sign(&body, "attacker")?;
    let url = serve_log(body, &sig)?;
    store.write_listener_config_for(url, &store.server.public_key, "prompt", &[])?;
    assert_refused(&store, &store.folders(), "another key", &[])
}

#[test]
fn a_replayed_older_log_is_refused() -> Result<()> {
    let mut store = Store::two_tills()?;
    let (old_body, old_sig) = store.served_log()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    // The listener sees the newer log once...
    store.tillup_json(&["check"])?;
    // ...then a stale mirror serves the old one, correctly signed.
    let url = serve_log(old_body, &old_sig)?;
    store.write_listener_config_for(url, &store.server.public_key, "prompt", &[])?;
    assert_refused(&store, &store.folders(), "older than sequence", &[])?;
    // The real server is still accepted afterwards.
    store.write_listener_config("prompt", &[])?;
    let check = store.tillup_json(&["check"])?;
    assert_eq!(check["status"], "update_available");
    Ok(())
}

#[test]
fn an_expired_log_is_refused() -> Result<()> {
    let store = Store::two_tills()?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let before = store.folders();
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
