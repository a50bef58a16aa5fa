//! Attacks on the real programs over loopback, one test each, named after
//! the attack: what an attacker with a given position (a device on the shop
//! LAN, a store token, a proxy on the path) tries, and what must still hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tillup_core::api::{StageRequest, agent, server};
use tillup_core::install::SignedLog;
use tillup_core::manifest::FileEntry;
use tillup_core::{Manifest, Sha256Hex};
use tillup_e2e::{HostileBody, ReleaseSpec, Store, expected_after, manifest_of};
use tillup_listener::clients::AgentClient;
use tillup_listener::http::Peer;

/// Connections an attacker holds open in the half-open attack.
const HALF_OPEN: usize = 500;

/// Opens `n` connections to `url` that each send half a request header and
/// then nothing: a slowloris.
fn half_open(url: &str, n: usize) -> Result<Vec<TcpStream>> {
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
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
    // An agent's certificate is its own (the host pins it); this checks
    // only that it answers.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .danger_accept_invalid_certs(true)
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
    let store = Store::one_till()?;
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
/// proxy on the path); `extra` lines go at the top of its config.
fn store_pointing_at(url: &str, extra: &[&str]) -> Result<Store> {
    let store = Store::one_till()?;
    let key = store.server.public_key.clone();
    store.write_listener_config_for(url.to_owned(), &key, "prompt", extra)?;
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

/// The most memory `tillup check` may hold against a hostile server: what
/// it needs for the largest log it reads, and far below what an unbounded
/// read of these bodies would take.
const HOST_MEMORY_BOUND: u64 = 96 << 20;

/// `tillup check` against `url` fails, saying `expected`; the server sent
/// at most `bound` bytes (plus what sockets buffer), the host's data
/// folder stayed small and its memory within [`HOST_MEMORY_BOUND`].
fn check_fails_within(
    store: &Store,
    sent: &std::sync::atomic::AtomicU64,
    bound: u64,
    expected: &str,
) -> Result<()> {
    let (out, memory) = store.tillup_peak_memory(&["check"])?;
    ensure!(
        memory <= HOST_MEMORY_BOUND,
        "tillup check held {memory} bytes of memory"
    );
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

/// A store whose server is a hostile HTTP server answering `status` with
/// `body`: `tillup check` fails saying `expected`, within `bound`.
fn hostile_server(status: u16, body: HostileBody, bound: u64, expected: &str) -> Result<()> {
    let (url, sent) = tillup_e2e::hostile_http(status, body, 4)?;
    let store = store_pointing_at(&url, &[])?;
    check_fails_within(&store, &sent, bound, expected)
}

#[test]
fn a_proxy_serving_an_endless_log_is_read_only_to_its_bound() -> Result<()> {
    let bound = tillup_core::log::MAX_LOG_BYTES as u64;
    hostile_server(200, HostileBody::Endless, bound, "allowed")
}

#[test]
fn a_proxy_declaring_an_oversized_log_is_refused_before_it_is_read() -> Result<()> {
    hostile_server(200, HostileBody::Declared(8 << 30), 0, "over the")
}

#[test]
fn a_proxy_trickling_a_log_is_left_once_it_falls_behind_the_slowest_rate() -> Result<()> {
    // Two answers that trickle, then nothing listens: the retries end fast.
    let (url, sent) = tillup_e2e::hostile_http(200, HostileBody::Trickle, 2)?;
    // The default pace gives a body a minute of grace; a test need not wait it.
    let store = store_pointing_at(
        &url,
        &["pace = { answer_within_secs = 60, grace_secs = 2, min_rate_bytes_per_sec = 1024 }"],
    )?;
    // Each answer is left within the grace plus its few bytes' time.
    check_fails_within(&store, &sent, 1024, "slower than")
}

#[test]
fn a_proxy_sending_an_endless_error_body_is_read_only_to_its_bound() -> Result<()> {
    let bound = tillup_listener::http::MAX_ERROR_BODY_BYTES as u64;
    hostile_server(500, HostileBody::Endless, bound, "HTTP 500")
}

#[test]
fn a_revoked_store_gets_401_on_its_next_check_until_its_token_is_rotated() -> Result<()> {
    let mut store = Store::one_till()?;
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

/// What an agent token holder (and a copy of what the server signed)
/// gives them: the agent's typed client, a blob store to send from, and
/// the signed log and release manifests the server publishes.
struct TokenHolder {
    agent: AgentClient,
    blobs: tillup_fs::BlobStore,
    _dir: tempfile::TempDir,
}

impl TokenHolder {
    fn new(till: &tillup_e2e::Terminal) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let blobs = tillup_fs::BlobStore::open(dir.path().join("blobs"))?;
        // The token holder reaches the agent as its host does.
        let paired = tillup_listener::config::Terminal {
            number: till.number,
            address: till.url().context("agent running")?.to_owned(),
            token: till.token.clone(),
            cert_sha256: till.fingerprint(),
        };
        let peer = Peer::new(
            "the till",
            &paired.address,
            &till.token,
            tillup_listener::pairing::client_for(&paired),
        );
        Ok(Self {
            agent: AgentClient::new(peer),
            blobs,
            _dir: dir,
        })
    }

    /// Holds `bytes` to send.
    fn hold(&self, bytes: &[u8]) -> Result<Sha256Hex> {
        Ok(self.blobs.put_bytes(bytes)?)
    }

    /// Holds every file of `folder`.
    fn hold_folder(&self, folder: &std::path::Path) -> Result<Manifest> {
        let m = manifest_of(folder);
        for f in m.files() {
            self.hold(&std::fs::read(tillup_fs::join(folder, &f.path))?)?;
        }
        Ok(m)
    }

    /// Sends what `folder` needs and stages it as `version` with `log`.
    async fn stage(
        &self,
        version: &str,
        folder: &Manifest,
        log: &SignedLog,
        release_manifest: Sha256Hex,
    ) -> std::result::Result<(), tillup_listener::Error> {
        let mut hashes = folder.hashes();
        hashes.insert(release_manifest);
        self.agent
            .send(
                hashes.into_iter().collect(),
                &self.blobs,
                &Default::default(),
            )
            .await?;
        self.agent
            .stage(&StageRequest {
                version: version.parse().expect("a version"),
                manifest: folder.clone(),
                release: log.clone(),
            })
            .await
            .map(|_| ())
    }
}

/// The server's current signed log of `stable`, as a mirror serves it.
fn signed_log(store: &Store) -> Result<SignedLog> {
    use base64::Engine;
    let resp = reqwest::blocking::Client::new()
        .get(format!(
            "{}{}",
            store.server.url(),
            server::LOG.replace("{channel}", "stable")
        ))
        .bearer_auth(&store.store_token)
        .send()?
        .error_for_status()?;
    let signature = resp
        .headers()
        .get(tillup_core::api::SIGNATURE_HEADER)
        .context("no signature header")?
        .to_str()?
        .to_owned();
    let signature =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(signature.as_bytes())?)?;
    Ok(SignedLog {
        log: resp.text()?,
        signature,
        keys: Default::default(),
    })
}

/// The bytes of the manifest the signed log names for `version`.
fn release_manifest_bytes(store: &Store, log: &SignedLog, version: &str) -> Result<Vec<u8>> {
    let parsed = tillup_core::log::VersionLog::parse(log.log.as_bytes())?;
    let sha = parsed
        .release(&version.parse()?)
        .context("the version is in the log")?
        .sha256;
    let resp = reqwest::blocking::Client::new()
        .get(format!(
            "{}{}",
            store.server.url(),
            server::BLOB.replace("{sha256}", &sha.to_string())
        ))
        .bearer_auth(&store.store_token)
        .send()?
        .error_for_status()?;
    Ok(resp.bytes()?.to_vec())
}

/// The files of `folder` but the terminal's own (which its running
/// program writes): what an install would change.
fn program_files(folder: &std::path::Path) -> Manifest {
    let own = tillup_core::manifest::Preserve::new(tillup_e2e::PRESERVE).expect("valid patterns");
    Manifest::new(
        manifest_of(folder)
            .files()
            .iter()
            .filter(|f| !own.matches(&f.path))
            .cloned()
            .collect(),
    )
    .expect("a subset of a manifest")
}

/// The till's program files are still `before` and it runs `version`.
fn untouched(till: &tillup_e2e::Terminal, before: &Manifest, version: &str) -> Result<()> {
    let after = program_files(&till.folder);
    ensure!(
        after == *before,
        "the till's folder changed: {:?}",
        before.changes_to(&after)
    );
    till.wait_running(version)
}

/// The refusal's HTTP status and message.
fn refused(r: std::result::Result<(), tillup_listener::Error>) -> Result<(u16, String)> {
    match r {
        Err(tillup_listener::Error::Refused {
            status, message, ..
        }) => Ok((status, message)),
        Err(e) => anyhow::bail!("failed otherwise than refused: {e}"),
        Ok(()) => anyhow::bail!("accepted"),
    }
}

#[test]
fn an_agent_token_holder_cannot_install_a_changed_file_an_added_file_or_an_old_release()
-> Result<()> {
    let store = Store::one_till()?;
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let till = &store.terminals[&1];
    let before = manifest_of(&till.folder);
    let before_program = program_files(&till.folder);
    let log = signed_log(&store)?;
    let manifest_bytes = release_manifest_bytes(&store, &log, "1.1.0")?;
    let rt = tokio::runtime::Runtime::new()?;
    let holder = TokenHolder::new(till)?;
    let release_manifest = holder.hold(&manifest_bytes)?;
    let release = holder.hold_folder(&rel)?;
    holder.hold_folder(&till.folder)?;
    let genuine = expected_after(&release, &before);

    let evil = b"evil build".as_slice();
    let evil_hash = holder.hold(evil)?;
    let entry = |path: &str| FileEntry {
        path: tillup_core::RelPath::new(path).expect("a path"),
        size: evil.len() as u64,
        sha256: evil_hash,
        exec: true,
    };
    let changed = Manifest::new(
        genuine
            .files()
            .iter()
            .map(|f| {
                if f.path.as_str() == "bin/pos-sim" {
                    entry("bin/pos-sim")
                } else {
                    f.clone()
                }
            })
            .collect(),
    )?;
    let added = Manifest::new(
        genuine
            .files()
            .iter()
            .cloned()
            .chain([entry("bin/implant")])
            .collect(),
    )?;

    rt.block_on(async {
        holder.agent.stop().await?;
        for (what, folder) in [("one file changed", &changed), ("one file added", &added)] {
            // Staging writes only the staging folder; the commit is where
            // the terminal checks the folder against the signed release.
            holder
                .stage("1.1.0", folder, &log, release_manifest)
                .await?;
            let (status, message) =
                refused(holder.agent.commit(&"1.1.0".parse()?).await.map(|_| ()))?;
            ensure!(status == 403, "{what}: {status} {message}");
            ensure!(message.contains("not release 1.1.0"), "{what}: {message}");
        }
        holder.agent.start().await?;
        anyhow::Ok(())
    })?;
    untouched(till, &before_program, "1.0.0")?;

    // The store upgrades for real; then the holder replays the release it
    // replaced, with the genuine log that still names it.
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", tillup_e2e::text(&out));
    till.wait_running("1.1.0")?;
    let upgraded = program_files(&till.folder);
    let old_manifest = holder.hold(&release_manifest_bytes(&store, &log, "1.0.0")?)?;
    rt.block_on(async {
        let (status, message) = refused(holder.stage("1.0.0", &before, &log, old_manifest).await)?;
        ensure!(
            status == 403 && message.contains("downgrade"),
            "{status} {message}"
        );
        anyhow::Ok(())
    })?;
    untouched(till, &upgraded, "1.1.0")?;
    Ok(())
}

#[test]
fn a_tampered_replayed_or_expired_log_handed_to_an_agent_is_refused() -> Result<()> {
    let store = Store::one_till()?;
    let before_release = signed_log(&store)?;
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let log = signed_log(&store)?;
    let manifest_bytes = release_manifest_bytes(&store, &log, "1.1.0")?;
    // The till accepts the newest log at its upgrade: from then on an
    // older one is a replay.
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", tillup_e2e::text(&out));
    let till = &store.terminals[&1];
    till.wait_running("1.1.0")?;
    let upgraded = program_files(&till.folder);

    let holder = TokenHolder::new(till)?;
    let release_manifest = holder.hold(&manifest_bytes)?;
    let release = holder.hold_folder(&rel)?;
    holder.hold_folder(&till.folder)?;
    let folder = expected_after(&release, &manifest_of(&till.folder));

    let tampered = SignedLog {
        log: log
            .log
            .replace("\"CP-500\"", "\"CP-501\"")
            .replace("1.1.0", "1.1.1"),
        ..log.clone()
    };
    // Signed with the chain's own key, but expired a day ago.
    let secret = tillup_core::sign::SecretKey::parse(
        &std::fs::read_to_string(store.server.data.join("keys/tillup.key"))?,
        None,
    )?;
    let mut expired_log: serde_json::Value = serde_json::from_str(&log.log)?;
    let yesterday = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24);
    expired_log["expires"] = yesterday.to_string().into();
    expired_log["generated"] = (yesterday - jiff::SignedDuration::from_hours(24))
        .to_string()
        .into();
    expired_log["sequence"] = (expired_log["sequence"].as_u64().unwrap_or(0) + 1).into();
    let expired_text = expired_log.to_string();
    let expired = SignedLog {
        signature: secret.sign(expired_text.as_bytes(), "expired")?,
        log: expired_text,
        keys: Default::default(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    for (what, bad, version, want) in [
        ("tampered", &tampered, "1.1.1", "signature"),
        ("replayed", &before_release, "1.1.0", "replayed"),
        ("expired", &expired, "1.1.0", "expired"),
    ] {
        let (status, message) = rt.block_on(refused_stage(
            &holder,
            version,
            &folder,
            bad,
            release_manifest,
        ))?;
        ensure!(status == 403, "{what}: {status} {message}");
        ensure!(message.contains(want), "{what}: {message}");
    }
    untouched(till, &upgraded, "1.1.0")?;
    Ok(())
}

async fn refused_stage(
    holder: &TokenHolder,
    version: &str,
    folder: &Manifest,
    log: &SignedLog,
    release_manifest: Sha256Hex,
) -> Result<(u16, String)> {
    refused(holder.stage(version, folder, log, release_manifest).await)
}

#[test]
fn a_store_reads_only_the_channels_it_is_assigned() -> Result<()> {
    let store = Store::one_till()?;
    let beta = store.root.join("releases/beta");
    tillup_e2e::build_release(&beta, &ReleaseSpec::new("2.0.0-beta.1"))?;
    store
        .server
        .publish(&beta, "2.0.0-beta.1", &["--channel", "beta"])?;
    let read = |channel: &str| -> Result<reqwest::StatusCode> {
        Ok(reqwest::blocking::Client::new()
            .get(format!(
                "{}{}",
                store.server.url(),
                server::LOG.replace("{channel}", channel)
            ))
            .bearer_auth(&store.store_token)
            .send()?
            .status())
    };
    ensure!(read("stable")? == 200);
    ensure!(read("beta")? == 403, "a stable store read the beta log");
    store
        .server
        .cli(&["store", "channels", &store.store_id, "stable", "beta"])?;
    ensure!(read("beta")? == 200);
    store
        .server
        .cli(&["store", "channels", &store.store_id, "beta"])?;
    ensure!(read("stable")? == 403);
    Ok(())
}

#[test]
fn a_store_over_its_quota_is_refused_and_other_stores_are_not() -> Result<()> {
    let mut store = Store::one_till()?;
    store
        .server
        .serve_with(0, &[("TILLUP_STORE_QUOTA_BYTES", "100000")])?;
    let other_token = store.server.add_store("store-002")?;
    let dir = tempfile::tempdir()?;
    let blobs = tillup_fs::BlobStore::open(dir.path())?;
    let hashes = (0..3)
        .map(|i| blobs.put_bytes(&tillup_e2e::noise(i, 60_000)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let client = |id: &str, token: &str| {
        tillup_listener::clients::ServerClient::new(
            Peer::new(
                "the server",
                store.server.url(),
                token,
                tillup_listener::http::client(),
            ),
            id,
        )
    };
    let rt = tokio::runtime::Runtime::new()?;
    let over =
        rt.block_on(client(&store.store_id, &store.store_token).send(hashes.clone(), &blobs));
    match over {
        Err(tillup_listener::Error::Refused {
            status: 413,
            message,
            ..
        }) => ensure!(
            message.contains("may upload 100000") && message.contains("store-001"),
            "{message}"
        ),
        other => anyhow::bail!("a store over its quota: {other:?}"),
    }
    // Another store's uploads go on.
    rt.block_on(client("store-002", &other_token).send(hashes[2..].to_vec(), &blobs))?;
    Ok(())
}

/// Uploads a store token holder starts and then feeds nothing: more than
/// the server's blocking pool (512 threads) would hold if uploads held one.
const SLOW_UPLOADS: usize = 600;

#[test]
fn slow_uploads_of_one_store_do_not_stall_the_log_checks_of_every_store() -> Result<()> {
    let store = Store::one_till()?;
    let other_token = store.server.add_store("store-002")?;
    let addr = store.server.url().trim_start_matches("http://").to_owned();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: server\r\nAuthorization: Bearer {}\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        server::PACK,
        store.store_token,
        tillup_core::api::PACK_MEDIA_TYPE
    );
    // A zstd frame's first bytes, then silence.
    let first = b"4\r\n\x28\xb5\x2f\xfd\r\n";
    let held = (0..SLOW_UPLOADS)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).with_context(|| format!("upload {i}"))?;
            s.write_all(head.as_bytes())?;
            s.write_all(first)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    // Let the server take them all in.
    std::thread::sleep(Duration::from_secs(2));
    answers_within_a_second(
        &format!(
            "{}{}",
            store.server.url(),
            server::LOG.replace("{channel}", "stable")
        ),
        &other_token,
    )?;
    drop(held);
    Ok(())
}

/// `tillup-agent --config … pairing-code` of terminal `n`.
fn pairing_code(store: &Store, n: u32) -> Result<String> {
    let t = &store.terminals[&n];
    let out = tillup_e2e::run(
        {
            let mut c = std::process::Command::new(tillup_e2e::bin("tillup-agent")?);
            c.arg("--config").arg(&t.config).arg("pairing-code");
            c
        },
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "{}", tillup_e2e::text(&out));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn a_device_in_a_terminals_place_is_refused_once_the_terminal_is_paired() -> Result<()> {
    let mut store = Store::one_till()?;
    // A host just installed: it knows the terminal's address, not its
    // certificate, and talks to it only once paired.
    let config = std::fs::read_to_string(&store.listener_config)?;
    let unpaired: String = config
        .lines()
        .filter(|l| !l.starts_with("cert_sha256"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&store.listener_config, &unpaired)?;
    let out = store.tillup(&["status"])?;
    ensure!(
        tillup_e2e::text(&out).contains("not paired"),
        "{}",
        tillup_e2e::text(&out)
    );

    let code = pairing_code(&store, 1)?;
    // A code misread, or another terminal's: nothing is saved.
    let wrong = tillup_core::pairing::code(&Sha256Hex::of(b"another terminal"));
    let out = store.tillup(&["pair", "1", &wrong])?;
    ensure!(!out.status.success(), "{}", tillup_e2e::text(&out));
    ensure!(std::fs::read_to_string(&store.listener_config)? == unpaired);
    let out = store.tillup(&["pair", "1", &code.to_lowercase()])?;
    ensure!(out.status.success(), "{}", tillup_e2e::text(&out));
    let status = store.tillup_json(&["status"])?;
    ensure!(status.to_string().contains("1.0.0"), "{status}");

    // Another device takes the terminal's address (here: the agent with a
    // new identity on the same port): the host refuses to talk to it.
    let till = store.terminals.get_mut(&1).context("terminal 1")?;
    let port = till.port;
    till.stop();
    std::fs::remove_dir_all(till.root.join("agent-state/tls"))?;
    till.port = port;
    till.start_agent()?;
    let out = store.tillup(&["status"])?;
    let said = tillup_e2e::text(&out);
    ensure!(said.contains("another device answers"), "{said}");
    Ok(())
}
