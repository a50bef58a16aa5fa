//! Keys that rotate, with the real programs: the stores and terminals pin
//! an offline root; the online key and the root itself change while a
//! store is switched off, and at its next check it follows the server's
//! key lists and upgrades.

use std::path::Path;

use anyhow::{Result, ensure};
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, text};

/// `tillup-server root-keygen --out DIR`: the root's public line.
fn root_keygen(store: &Store, dir: &Path) -> Result<String> {
    let out = store
        .server
        .cli(&["root-keygen", "--out", &dir.display().to_string()])?;
    Ok(out.lines().next().unwrap_or_default().trim().to_owned())
}

/// Signs key list `version` with the root in `root_dir` and imports it.
fn sign_and_import(
    store: &Store,
    root_dir: &Path,
    version: u64,
    keys: &[&str],
    next_root: Option<&str>,
) -> Result<()> {
    let file = store.root.join(format!("keys-{version}.json"));
    let root_key = root_dir.join("root.key").display().to_string();
    let (version, out) = (version.to_string(), file.display().to_string());
    let mut args = vec![
        "sign-keys",
        "--root-key",
        &root_key,
        "--version",
        &version,
        "--out",
        &out,
    ];
    for k in keys {
        args.extend(["--online-key", k]);
    }
    if let Some(r) = next_root {
        args.extend(["--next-root", r]);
    }
    store.server.cli(&args)?;
    store.server.cli(&["keys", "import", &out])?;
    Ok(())
}

#[test]
fn a_store_off_during_a_key_and_a_root_rotation_upgrades_after_it() -> Result<()> {
    let mut store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-700")],
            ..StoreSpec::default()
        },
    )?;
    let (usb1, usb2) = (store.root.join("usb-1"), store.root.join("usb-2"));
    let root1 = root_keygen(&store, &usb1)?;
    let online1 = store.server.public_key.clone();
    sign_and_import(&store, &usb1, 1, &[&online1], None)?;
    // The store and its terminals pin the root, not the server's key.
    let url = store.server.url().to_owned();
    store.write_listener_config_for(url, &root1, "prompt", &[])?;
    for t in store.terminals.values_mut() {
        t.trust_key = root1.clone();
        t.start_agent()?;
    }
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    for t in store.terminals.values() {
        t.wait_running("1.1.0")?;
    }

    // The store is off. The server gets a new online key (the old one is
    // withdrawn), then the root is replaced, signed by the old one.
    let key_file = store.server.data.join("keys/tillup.key");
    let withdrawn = store.root.join("online-1.key");
    std::fs::copy(&key_file, &withdrawn)?;
    let online2 = store
        .server
        .cli(&["keygen", "--force"])?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    sign_and_import(&store, &usb1, 2, &[&online2], None)?;
    let root2 = root_keygen(&store, &usb2)?;
    sign_and_import(&store, &usb1, 3, &[&online2], Some(&root2))?;
    sign_and_import(&store, &usb2, 4, &[&online2], None)?;
    store.publish(&ReleaseSpec::new("1.2.0"), &[])?;

    // Back on: nothing was touched on the store's machines.
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    for t in store.terminals.values() {
        t.wait_running("1.2.0")?;
    }
    let trust: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.listener_data.join("trust.json"))?)?;
    ensure!(trust["trust"]["root"] == root2.as_str(), "{trust}");
    ensure!(trust["trust"]["list"]["version"] == 4, "{trust}");

    // Whoever kept the withdrawn key signs a newer log: refused.
    std::fs::copy(&withdrawn, &key_file)?;
    store.server.cli(&["sign-log"])?;
    let out = store.tillup(&["check"])?;
    let said = text(&out);
    ensure!(
        !out.status.success(),
        "a log by a withdrawn key passed: {said}"
    );
    ensure!(said.contains("does not verify"), "{said}");
    Ok(())
}
