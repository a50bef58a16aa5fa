//! Resumable transfers with real processes: the listener's link to the
//! server goes through a loopback proxy that cuts it mid-transfer, and the
//! proxy's byte counts show that no completed byte crossed twice.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use tillup_core::manifest::Manifest;
use tillup_e2e::proxy::{Direction, Proxy};
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, bin, manifest_of, noise, run, text, write};

/// The large file of the new release.
const LARGE: usize = 8 << 20;

/// A store whose listener reaches the server only through a proxy.
fn store_behind_proxy() -> Result<(Store, Proxy)> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-700")],
            ..StoreSpec::default()
        },
    )?;
    let proxy = Proxy::start(store.server.url())?;
    store.write_listener_config_for(
        proxy.url(),
        &store.server.public_key.clone(),
        "prompt",
        &[],
    )?;
    Ok((store, proxy))
}

/// The new release, with its large file.
fn publish_large(store: &Store) -> Result<Manifest> {
    let spec = ReleaseSpec {
        large_bytes: LARGE,
        ..ReleaseSpec::new("1.1.0")
    };
    Ok(manifest_of(&store.publish(&spec, &[])?))
}

/// The bytes of a manifest's distinct files: what a host holding none of
/// them must fetch, once each.
fn distinct_bytes(m: &Manifest) -> u64 {
    let mut seen = BTreeSet::new();
    m.files()
        .iter()
        .filter(|f| seen.insert(f.sha256))
        .map(|f| f.size)
        .sum()
}

/// The files of `release` whose content is not among `held`.
fn lacking(release: &Manifest, held: &BTreeSet<tillup_core::Sha256Hex>) -> Result<Manifest> {
    Ok(Manifest::new(
        release
            .files()
            .iter()
            .filter(|f| !held.contains(&f.sha256))
            .cloned()
            .collect(),
    )?)
}

/// The files of `release` that no terminal of `store` holds now.
fn from_server(store: &Store, release: &Manifest) -> Result<Manifest> {
    let held: BTreeSet<_> = store
        .terminals
        .values()
        .flat_map(|t| manifest_of(&t.folder).hashes())
        .collect();
    lacking(release, &held)
}

fn assert_all_upgraded(store: &Store) -> Result<()> {
    for t in store.terminals.values() {
        t.wait_running("1.1.0")?;
        assert_eq!(
            std::fs::read_to_string(t.folder.join("VERSION"))?.trim(),
            "1.1.0",
            "terminal {}",
            t.number
        );
    }
    Ok(())
}

#[test]
fn a_release_download_cut_three_times_resumes_and_no_byte_crosses_twice() -> Result<()> {
    let (store, proxy) = store_behind_proxy()?;
    let release = publish_large(&store)?;
    // What the server must send: the release's files no terminal holds
    // (the rest come from the terminals, over the LAN).
    let floor = distinct_bytes(&from_server(&store, &release)?);
    // Three connections cut, each after a quarter of the large file: a
    // download that started over would fetch about 3/4 of it again.
    let cut_at = LARGE as u64 / 4;
    proxy.cut_next(3, cut_at, Direction::Down);

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    assert_eq!(proxy.cuts(), 3, "the proxy cut three connections");
    assert_all_upgraded(&store)?;
    let down = proxy.bytes(Direction::Down);
    eprintln!(
        "server→host: {down} bytes for the release's {floor} bytes no terminal held, 3 cuts after {cut_at}"
    );
    assert!(
        down >= floor,
        "{down} bytes crossed server→host, less than the {floor} bytes of the release no terminal held"
    );
    assert!(
        down < floor + cut_at,
        "{down} bytes crossed server→host for a {floor}-byte release (large file {LARGE}): \
         bytes were fetched again after the cuts"
    );
    Ok(())
}

#[test]
fn a_backup_upload_cut_three_times_resumes_and_sends_each_byte_once() -> Result<()> {
    let (store, proxy) = store_behind_proxy()?;
    // A large terminal-local file: the server lacks it, so the backup
    // upload carries it.
    let local = 6usize << 20;
    let journal = noise(4242, local);
    let t1 = &store.terminals[&1];
    write(&t1.folder.join("data/journal.db"), &journal);
    publish_large(&store)?;
    let cut_at = local as u64 / 4;
    proxy.cut_next(3, cut_at, Direction::Up);

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    assert_eq!(proxy.cuts(), 3, "the proxy cut three uploads");
    assert_all_upgraded(&store)?;
    // Kept by the upgrade (`data/**` is preserved), byte for byte.
    assert_eq!(std::fs::read(t1.folder.join("data/journal.db"))?, journal);
    let server_blobs = tillup_fs::BlobStore::open(store.server.data.join("blobs"))?;
    assert!(server_blobs.has(&tillup_core::Sha256Hex::of(&journal)));
    let up = proxy.bytes(Direction::Up);
    eprintln!("host→server: {up} bytes for a {local}-byte local file, 3 cuts after {cut_at}");
    assert!(up >= local as u64, "{up} bytes crossed host→server");
    assert!(
        up < local as u64 + cut_at,
        "{up} bytes crossed host→server for a {local}-byte local file: bytes were sent again after the cuts"
    );
    Ok(())
}

#[test]
fn the_server_killed_mid_download_and_restarted_elsewhere_is_resumed_from() -> Result<()> {
    let (mut store, proxy) = store_behind_proxy()?;
    let release = publish_large(&store)?;
    let floor = distinct_bytes(&release);
    // The connection that reaches half the large file stops there, held
    // open, while the server is killed under it.
    let hold_at = LARGE as u64 / 2;
    proxy.hold_next(hold_at, Direction::Down);

    let mut cmd = Command::new(bin("tillup")?);
    cmd.arg("--config")
        .arg(&store.listener_config)
        .arg("update")
        .env_remove("TILLUP_NOW");
    let update = std::thread::spawn(move || run(cmd, Duration::from_secs(300)));
    for _ in 0..2400 {
        if proxy.holds() > 0 || update.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(proxy.holds(), 1, "a download reached the hold point");
    // SIGKILL, then a new server process on a new port, same data.
    let old_url = store.server.url().to_owned();
    store.server.serve()?;
    assert_ne!(store.server.url(), old_url);
    proxy.set_target(store.server.url())?;
    proxy.release();

    let out = update.join().expect("the update thread does not panic")?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    assert_all_upgraded(&store)?;
    let down = proxy.bytes(Direction::Down);
    eprintln!("server→host: {down} bytes for a {floor}-byte release, server killed at {hold_at}");
    assert!(
        down < floor + hold_at,
        "{down} bytes crossed server→host for a {floor}-byte release: the download started over"
    );
    Ok(())
}

#[test]
fn a_push_to_a_terminal_cut_three_times_resumes_and_sends_each_byte_once() -> Result<()> {
    let mut store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500"), (2, "CP-700")],
            ..StoreSpec::default()
        },
    )?;
    let t1 = &store.terminals[&1];
    let proxy = Proxy::start(t1.url().expect("agent running"))?;
    let old = manifest_of(&t1.folder);
    store
        .terminals
        .get_mut(&1)
        .expect("terminal 1")
        .listener_address = Some(proxy.url().replace("http://", "https://"));
    store.write_listener_config("prompt", &[])?;
    let release = publish_large(&store)?;
    // What terminal 1 lacks of the release: the files it must be sent.
    let needed = lacking(&release, &old.hashes())?;
    let floor = distinct_bytes(&needed);
    let cut_at = LARGE as u64 / 4;
    proxy.cut_next(3, cut_at, Direction::Up);

    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update failed: {}", text(&out));
    assert_eq!(proxy.cuts(), 3, "the proxy cut three pushes");
    assert_all_upgraded(&store)?;
    let up = proxy.bytes(Direction::Up);
    eprintln!("host→terminal 1: {up} bytes for {floor} bytes it lacked, 3 cuts after {cut_at}");
    assert!(up >= floor, "{up} bytes crossed host→terminal");
    assert!(
        up < floor + cut_at,
        "{up} bytes crossed host→terminal 1 for {floor} bytes it lacked: bytes were sent again after the cuts"
    );
    Ok(())
}
