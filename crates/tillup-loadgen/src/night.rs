//! The release night: every store checks its log at its interval (with
//! jitter), and stores start their upgrade at the arrival rate of the
//! window (a Poisson process), each through the listener's real
//! [`ServerClient`]: the new log, its terminals' own files, the backup,
//! the processing, the release's new files, the report.
//!
//! Time is compressed the honest way: the run is a slice of the window at
//! the window's own request rates, not the whole night squeezed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, RngCore, SeedableRng};
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::api::{Backup, ProcessAnswer, ProcessRequest, TerminalBackup, TerminalTarget};
use tillup_core::manifest::{FileEntry, Manifest};
use tillup_core::path::RelPath;
use tillup_fs::BlobStore;
use tillup_listener::clients::ServerClient;
use tillup_listener::http::Peer;
use tillup_transfer::Size;
use tokio::sync::Semaphore;

use crate::stats::{Endpoint, Stats};

/// The channel every store reads.
const CHANNEL: &str = "stable";
/// The most upgrades in flight at once; an arrival beyond it is counted
/// as shed (the server fell behind the arrival rate).
pub const MAX_IN_FLIGHT: usize = 256;

/// What the night simulates.
#[derive(Clone, Debug)]
pub struct Night {
    /// Terminals per store.
    pub tills: u32,
    /// Each terminal's own (incompressible) bytes.
    pub own_bytes: usize,
    /// The listener's check interval.
    pub check_interval: Duration,
    /// Up to this much is added to each interval.
    pub check_jitter: Duration,
    /// The release window the stores' upgrades arrive in.
    pub window: Duration,
    /// How long the run lasts (a slice of the window).
    pub run_for: Duration,
}

/// What the run did besides the per-endpoint figures.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Upgrades started.
    pub upgrades_started: usize,
    /// Upgrades that went through every step.
    pub upgrades_done: usize,
    /// Arrivals dropped because [`MAX_IN_FLIGHT`] upgrades were running.
    pub shed: usize,
    /// The most upgrades running at once.
    pub most_in_flight: usize,
    /// Bytes the stores downloaded (release files).
    pub bytes_down: u64,
    /// Seconds the run lasted, including the upgrades in flight at its end.
    pub seconds: f64,
}

/// The shared inputs of every simulated store.
struct Shared {
    night: Night,
    from: Manifest,
    from_version: Version,
    to_version: Version,
    /// The release's files the stores do not hold (hash → size).
    new_files: BTreeMap<Sha256Hex, Size>,
    stats: Stats,
    scratch: std::path::PathBuf,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    bytes_down: AtomicU64,
}

/// Runs the night against `urls` (requests spread over them) for the
/// `stores` (id, token); `scratch` holds each upgrade's local blobs while
/// it runs.
pub async fn run(
    night: Night,
    urls: &[String],
    stores: &[(String, String)],
    from: (&str, Manifest),
    to: (&str, &Manifest),
    scratch: &Path,
) -> Result<(Stats, Outcome)> {
    let held = from.1.hashes();
    let new_files =
        to.1.files()
            .iter()
            .filter(|f| !held.contains(&f.sha256))
            .map(|f| (f.sha256, Size::Exactly(f.size)))
            .collect();
    let shared = Arc::new(Shared {
        night: night.clone(),
        from: from.1,
        from_version: from.0.parse()?,
        to_version: to.0.parse()?,
        new_files,
        stats: Stats::default(),
        scratch: scratch.to_owned(),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
        bytes_down: AtomicU64::new(0),
    });
    let http = tillup_listener::http::client();
    let clients: Vec<ServerClient> = stores
        .iter()
        .enumerate()
        .map(|(i, (id, token))| {
            let url = &urls[i % urls.len()];
            ServerClient::new(Peer::new("server", url, token, http.clone()), id)
        })
        .collect();
    // Every store holds the current log already, as after its last check.
    let etag = clients[0]
        .log(CHANNEL, None)
        .await?
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("the server sent no ETag")?;

    let started = Instant::now();
    let deadline = started + night.run_for;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let (client, shared, etag) = (client.clone(), shared.clone(), etag.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let interval = shared.night.check_interval;
            // Where in its interval each store happens to be.
            let mut next = started + interval.mul_f64(rng.random::<f64>());
            loop {
                tokio::time::sleep_until(next.into()).await;
                if Instant::now() >= deadline {
                    return;
                }
                check(&client, &etag, &shared.stats).await;
                next += interval + shared.night.check_jitter.mul_f64(rng.random::<f64>());
            }
        });
    }

    // Upgrades arrive as a Poisson process at the window's rate.
    let rate = stores.len() as f64 / night.window.as_secs_f64();
    let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut at = started;
    let (mut started_n, mut shed) = (0, 0);
    let mut upgrades = tokio::task::JoinSet::new();
    let done = Arc::new(AtomicUsize::new(0));
    for client in &clients {
        let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
        at += Duration::from_secs_f64(gap);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            shed += 1;
            continue;
        };
        started_n += 1;
        let (client, shared, done) = (client.clone(), shared.clone(), done.clone());
        let seed = rng.next_u64();
        upgrades.spawn(async move {
            let n = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            shared.most_in_flight.fetch_max(n, Ordering::SeqCst);
            if upgrade(&client, &shared, seed).await {
                done.fetch_add(1, Ordering::SeqCst);
            }
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }
    while upgrades.join_next().await.is_some() {}
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let shared = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("a simulated store outlived the run"))?;
    let outcome = Outcome {
        upgrades_started: started_n,
        upgrades_done: done.load(Ordering::SeqCst),
        shed,
        most_in_flight: shared.most_in_flight.load(Ordering::SeqCst),
        bytes_down: shared.bytes_down.load(Ordering::SeqCst),
        seconds,
    };
    Ok((shared.stats, outcome))
}

/// A log check by a store that holds the current log.
async fn check(client: &ServerClient, etag: &str, stats: &Stats) {
    let t = Instant::now();
    match client.log(CHANNEL, Some(etag)).await {
        Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {
            stats.ok(Endpoint::LogCheck, t.elapsed());
        }
        Ok(r) => stats.error(
            Endpoint::LogCheck,
            format!("HTTP {} where 304 was due", r.status()),
        ),
        Err(e) => stats.error(Endpoint::LogCheck, e.to_string()),
    }
}

/// Times one step; `false` (and the error counted) if it failed.
async fn step<T, E: std::fmt::Display>(
    stats: &Stats,
    e: Endpoint,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    let t = Instant::now();
    match f.await {
        Ok(v) => {
            stats.ok(e, t.elapsed());
            Some(v)
        }
        Err(err) => {
            stats.error(e, err.to_string());
            None
        }
    }
}

/// One store's upgrade, as the listener's runner does it; `true` if every
/// step succeeded.
async fn upgrade(client: &ServerClient, shared: &Shared, seed: u64) -> bool {
    let stats = &shared.stats;
    let Ok(dir) = tempfile::tempdir_in(&shared.scratch) else {
        stats.error(Endpoint::UploadOwnFiles, "no scratch folder".into());
        return false;
    };
    let result = async {
        let log = step(stats, Endpoint::LogFetch, async {
            let r = client.log(CHANNEL, None).await?;
            let status = r.status();
            r.bytes()
                .await
                .map_err(|e| tillup_listener::Error::Unreachable {
                    peer: "server".into(),
                    what: "read the log".into(),
                    message: e.to_string(),
                })
                .map(|b| (status, b.len()))
        })
        .await?;
        if log.0 != reqwest::StatusCode::OK {
            stats.error(Endpoint::LogFetch, format!("HTTP {}", log.0));
            return None;
        }
        let blobs = BlobStore::open(dir.path().join("blobs")).ok()?;
        let (backup, own) = backup_of(shared, &blobs, seed).ok()?;
        step(stats, Endpoint::UploadOwnFiles, client.send(own, &blobs)).await?;
        let upgrade = format!("u{seed:016x}");
        step(stats, Endpoint::Backup, client.put_backup(&upgrade, &backup)).await?;
        let req = ProcessRequest {
            channel: CHANNEL.into(),
            terminals: (1..=shared.night.tills)
                .map(|number| TerminalTarget {
                    number,
                    target: shared.to_version.clone(),
                })
                .collect(),
            answer: ProcessAnswer::Digests,
            ahead: false,
        };
        let digests = step(stats, Endpoint::Process, client.process(&upgrade, &req)).await?;
        if digests.terminals.len() != shared.night.tills as usize {
            stats.error(
                Endpoint::Process,
                format!("{} terminals processed", digests.terminals.len()),
            );
            return None;
        }
        let progress = Arc::default();
        let down = step(
            stats,
            Endpoint::DownloadNewFiles,
            client.fetch(&shared.new_files, &blobs, &progress),
        )
        .await?;
        shared.bytes_down.fetch_add(down, Ordering::SeqCst);
        let report = serde_json::json!({
            "id": upgrade,
            "kind": "upgrade",
            "upgrade": {"id": upgrade, "from": shared.from_version, "to": shared.to_version, "outcome": "installed"},
        });
        step(stats, Endpoint::Report, client.report(&report)).await?;
        Some(())
    }
    .await;
    result.is_some()
}

/// The store's backup: every terminal runs the first release with its own
/// files (new random bytes, under the preserve patterns), which are put in
/// `blobs`. Returns the backup and the own files' hashes.
fn backup_of(shared: &Shared, blobs: &BlobStore, seed: u64) -> Result<(Backup, Vec<Sha256Hex>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut own = Vec::new();
    let mut terminals = Vec::new();
    for number in 1..=shared.night.tills {
        let mut files: Vec<FileEntry> = shared.from.files().to_vec();
        for (path, share) in [
            ("config/local/terminal.ini", 0.02),
            ("data/pos.db", 0.8),
            ("logs/pos.log", 0.18),
        ] {
            let mut bytes = vec![0u8; (shared.night.own_bytes as f64 * share) as usize];
            rng.fill_bytes(&mut bytes);
            let sha256 = blobs.put_bytes(&bytes)?;
            own.push(sha256);
            files.push(FileEntry {
                path: RelPath::new(path)?,
                size: bytes.len() as u64,
                sha256,
                exec: false,
            });
        }
        terminals.push(TerminalBackup {
            number,
            model: "POS-1".into(),
            version: shared.from_version.clone(),
            manifest: Manifest::new(files)?,
        });
    }
    Ok((Backup { terminals }, own))
}
