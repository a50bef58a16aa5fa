//! A store without a network: `tillup-server export` writes a release into
//! a bundle, `tillup import` upgrades the store from it with the server
//! stopped. Real server, agents and `tillup` on loopback.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use tillup_core::manifest::Manifest;
use tillup_e2e::{ReleaseSpec, Store, manifest_of, text, without_sales};
use tillup_transfer::bundle::{BundleHeader, MAGIC, read_header};

/// Publishes 1.1.0 and exports it into a bundle under the store's root.
fn exported(store: &Store) -> Result<(PathBuf, PathBuf)> {
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let bundle = store.root.join("usb/tillup-1.1.0.bundle");
    fs::create_dir_all(bundle.parent().context("a folder")?)?;
    let said = store.server.cli(&[
        "export",
        "--version",
        "1.1.0",
        "--out",
        &bundle.display().to_string(),
    ])?;
    ensure!(said.contains("1.1.0"), "{said}");
    Ok((rel, bundle))
}

fn unsent_reports(store: &Store) -> usize {
    store.local_log()["unsent_reports"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_store_upgrades_from_a_bundle_with_the_server_stopped_and_reports_once_it_is_back() -> Result<()>
{
    let mut store = Store::two_tills()?;
    let old = store.folders();
    let (rel, bundle) = exported(&store)?;
    let port = store.server.proc.as_ref().context("served")?.port();
    store.server.proc = None;

    let out = store.tillup(&["import", &bundle.display().to_string()])?;
    ensure!(out.status.success(), "import failed: {}", text(&out));

    store.assert_upgraded(&rel, &old, "1.1.0")?;
    // The backup by terminal number is on the host, as online.
    let backup = store.backups().into_iter().last().context("a backup")?;
    for (t, before) in store.terminals.values().zip(&old) {
        assert_eq!(
            without_sales(&manifest_of(&backup.join(format!("terminal-{}", t.number)))),
            without_sales(before),
            "terminal {}'s backup",
            t.number
        );
    }
    assert_eq!(unsent_reports(&store), 1, "the report waits for the server");

    // The network is back: the next check sends the report.
    store.server.serve_with(port, &[])?;
    let out = store.tillup(&["check"])?;
    ensure!(out.status.success(), "check failed: {}", text(&out));
    assert_eq!(unsent_reports(&store), 0);
    let reports: serde_json::Value =
        serde_json::from_str(&store.server.cli(&["reports", &store.store_id])?)?;
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{reports}");
    Ok(())
}

/// A bundle of `header` and the pack that follows the header in `original`.
fn rewritten(original: &[u8], header: &BundleHeader, pack: Option<Vec<u8>>) -> Result<Vec<u8>> {
    let mut rest = original;
    read_header(&mut rest)?;
    let json = serde_json::to_vec(header)?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&pack.unwrap_or_else(|| rest.to_vec()));
    Ok(out)
}

/// `tillup import` of `bytes` fails saying `want`; no terminal changed.
fn refused(store: &Store, dir: &Path, name: &str, bytes: &[u8], want: &str) -> Result<()> {
    let before = store.folders();
    let path = dir.join(name);
    fs::write(&path, bytes)?;
    let out = store.tillup(&["import", &path.display().to_string()])?;
    ensure!(
        !out.status.success(),
        "{name}: import must fail: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains(want), "{name}: want `{want}`: {err}");
    assert_eq!(store.folders(), before, "{name}: no terminal touched");
    for t in store.terminals.values() {
        t.wait_running("1.0.0")?;
    }
    ensure!(store.backups().is_empty(), "{name}: no upgrade began");
    Ok(())
}

#[test]
fn a_tampered_bundle_is_refused_and_nothing_is_touched() -> Result<()> {
    let mut store = Store::two_tills()?;
    let (_, bundle) = exported(&store)?;
    store.server.proc = None;
    let original = fs::read(&bundle)?;
    let header = read_header(&mut &original[..])?;
    let dir = store.root.join("usb");

    let mut log = header.clone();
    log.log = log.log.replace("faster checkout", "FASTER checkout");
    ensure!(log.log != header.log, "the notes are in the log");
    refused(
        &store,
        &dir,
        "log.bundle",
        &rewritten(&original, &log, None)?,
        "does not verify",
    )?;

    let mut manifest = header.clone();
    manifest.manifest.push(' ');
    refused(
        &store,
        &dir,
        "manifest.bundle",
        &rewritten(&original, &manifest, None)?,
        "is not the one its signed log names",
    )?;

    // A file whose bytes are not those its name (hash) says.
    let files = Manifest::parse(header.manifest.as_bytes())?;
    let victim = files
        .files()
        .iter()
        .max_by_key(|f| f.size)
        .context("a file")?;
    let garbage = vec![0x5a; victim.size as usize];
    let pack = tillup_transfer::pack::forged(&[(victim.sha256, victim.size, 0, &garbage[..])], 3);
    refused(
        &store,
        &dir,
        "file.bundle",
        &rewritten(&original, &header, Some(pack))?,
        "expected SHA-256",
    )?;

    // Cut short, or not a bundle at all.
    refused(
        &store,
        &dir,
        "cut.bundle",
        &original[..original.len() / 2],
        "was cut",
    )?;
    refused(
        &store,
        &dir,
        "zip.bundle",
        b"PK\x03\x04",
        "not a tillup bundle",
    )?;
    Ok(())
}
