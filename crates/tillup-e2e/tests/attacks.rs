//! Attacks on the real programs over loopback, one test each, named after
//! the attack: what an attacker with a given position (a device on the shop
//! LAN, a store token, a proxy on the path) tries, and what must still hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tillup_core::api::{agent, server};
use tillup_e2e::{HostileBody, Store, StoreSpec};

/// Connections an attacker holds open in the half-open attack.
const HALF_OPEN: usize = 500;

/// Opens `n` connections to `url` that each send half a request header and
/// then nothing: a slowloris.
fn half_open(url: &str, n: usize) -> Result<Vec<TcpStream>> {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr).with_context(|| format!("connection {i}"))?;
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: till\r\nX-Slow: ")?;
            Ok(s)
        })
        .collect()
}

/// A GET with a bearer token that must answer 200 within a second.
fn answers_within_a_second(url: &str, token: &str) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .with_context(|| format!("{url} did not answer within a second"))?;
    ensure!(resp.status().is_success(), "{url}: {}", resp.status());
    Ok(())
}

#[test]
fn half_open_connections_do_not_lock_out_the_server_or_an_agent() -> Result<()> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    let till = &store.terminals[&1];
    let till_url = till.url().context("agent running")?.to_owned();
    let held_server = half_open(store.server.url(), HALF_OPEN)?;
    let held_agent = half_open(&till_url, HALF_OPEN)?;

    answers_within_a_second(
        &format!(
            "{}{}",
            store.server.url(),
            server::LOG.replace("{channel}", "stable")
        ),
        &store.store_token,
    )?;
    answers_within_a_second(&format!("{till_url}{}", agent::STATUS), &till.token)?;

    // The servers close what never finishes its header, so an attacker
    // must keep opening connections to hold any.
    for (who, mut held) in [("server", held_server), ("agent", held_agent)] {
        let s = &mut held[0];
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) => ensure!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "the {who} kept a half-open connection for a minute"
            ),
        }
        held.clear();
    }
    Ok(())
}

/// A store whose listener's server address is `url` (an attacker, or a
/// proxy on the path).
fn store_pointing_at(url: &str) -> Result<Store> {
    let store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    let key = store.server.public_key.clone();
    store.write_listener_config_for(url.to_owned(), &key, "prompt", &[])?;
    Ok(store)
}

/// The bytes of every file under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    walk(dir)
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// What the loopback sockets may hold between a server's writes and the
/// client's reads, on top of what the client read.
const SOCKET_SLACK: u64 = 32 << 20;

/// `tillup check` against `url` fails, saying `expected`; the server sent
/// at most `bound` bytes (plus what sockets buffer) and the host's data
/// folder stayed small.
fn check_fails_within(
    store: &Store,
    sent: &std::sync::atomic::AtomicU64,
    bound: u64,
    expected: &str,
) -> Result<()> {
    let out = store.tillup(&["check"])?;
    let said = tillup_e2e::text(&out);
    ensure!(!out.status.success(), "check passed: {said}");
    ensure!(said.contains(expected), "check said: {said}");
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(
        sent <= bound + SOCKET_SLACK,
        "the listener read {sent} bytes of an answer bounded at {bound}"
    );
    let held = bytes_under(&store.listener_data);
    ensure!(held < 1 << 20, "the host's data folder holds {held} bytes");
    Ok(())
}

#[test]
fn a_proxy_serving_an_endless_log_is_read_only_to_its_bound() -> Result<()> {
    let (url, sent) = tillup_e2e::hostile_http(200, HostileBody::Endless, 4)?;
    let store = store_pointing_at(&url)?;
    check_fails_within(
        &store,
        &sent,
        tillup_core::log::MAX_LOG_BYTES as u64,
        "allowed",
    )
}

#[test]
fn a_proxy_declaring_an_oversized_log_is_refused_before_it_is_read() -> Result<()> {
    let (url, sent) = tillup_e2e::hostile_http(200, HostileBody::Declared(8 << 30), 4)?;
    let store = store_pointing_at(&url)?;
    check_fails_within(&store, &sent, 0, "over the")
}

#[test]
fn a_proxy_sending_an_endless_error_body_is_read_only_to_its_bound() -> Result<()> {
    let (url, sent) = tillup_e2e::hostile_http(500, HostileBody::Endless, 4)?;
    let store = store_pointing_at(&url)?;
    check_fails_within(
        &store,
        &sent,
        tillup_listener::http::MAX_ERROR_BODY_BYTES as u64,
        "HTTP 500",
    )
}

#[test]
fn a_revoked_store_gets_401_on_its_next_check_until_its_token_is_rotated() -> Result<()> {
    let mut store = Store::new(
        None,
        StoreSpec {
            terminals: vec![(1, "CP-500")],
            ..StoreSpec::default()
        },
    )?;
    let out = store.tillup(&["check"])?;
    ensure!(out.status.success(), "{}", tillup_e2e::text(&out));

    store.server.cli(&["store", "revoke", &store.store_id])?;
    let out = store.tillup(&["check"])?;
    let said = tillup_e2e::text(&out);
    ensure!(!out.status.success(), "a revoked store checked: {said}");
    ensure!(said.contains("HTTP 401"), "{said}");
    let listed = store.server.cli(&["store", "list"])?;
    ensure!(listed.contains("revoked"), "{listed}");

    let old = store.store_token.clone();
    let new = store
        .server
        .cli(&["store", "rotate-token", &store.store_id])?;
    store.store_token = new.trim().to_owned();
    store.write_listener_config("prompt", &[])?;
    let out = store.tillup(&["check"])?;
    ensure!(out.status.success(), "{}", tillup_e2e::text(&out));

    // The old token stays refused.
    let resp = reqwest::blocking::Client::new()
        .get(format!(
            "{}{}",
            store.server.url(),
            server::LOG.replace("{channel}", "stable")
        ))
        .bearer_auth(&old)
        .send()?;
    ensure!(resp.status() == 401, "{}", resp.status());
    Ok(())
}
