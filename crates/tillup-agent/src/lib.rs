//! `tillup-agent`: the quiet service on each POS terminal (DESIGN §4).
//!
//! Three parts, each its own module:
//! - [`supervisor`]: process control of the main program (start, stop while
//!   not busy, health). Knows nothing of HTTP or folders.
//! - [`folder`]: the program folder and its siblings; stage, commit and
//!   rollback as renames. Synchronous, knows nothing of HTTP or processes.
//! - [`http`]: the token-authenticated API ([`http::app`]), one-liners over [`Agent`].
//!
//! **Architecture invariant:** the folder is swapped only while the main
//! program is stopped, and the folder path always names a complete folder.
//! Commit needs the program stopped; rollback stops it itself.

#![warn(missing_docs)]

pub mod config;
pub mod folder;
pub mod http;
pub mod memory;
pub mod openapi;
mod selfupdate;
pub mod supervisor;
pub mod tls;
mod trust;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use semver::Version;
use tillup_core::api::{
    AgentStatus, HealthReport, Snapshot, SnapshotChanges, StageChanges, StageReport, StageRequest,
    StartReport, StopReport, SwapReport,
};
use tillup_core::{Manifest, RelPath, Sha256Hex};
use tillup_fs::{BlobStore, HashCache};

use memory::{Memory, Trial};

pub use config::Config;
pub use http::{AgentError, app};

/// The hash cache of the folder that became previous at the last commit.
const PREVIOUS_CACHE: &str = "previous-hash-cache.json";

/// A scan of the folder while the main program was stopped.
#[derive(Clone)]
struct AtRest {
    /// [`supervisor::Supervisor::starts`] when it was taken.
    starts: u64,
    manifest: Arc<Manifest>,
}

/// The whole snapshots an agent keeps for [`Agent::snapshot_changes`]:
/// the host's snapshot before the stop, and one more in case it took
/// another (a retried step).
const SNAPSHOTS_KEPT: usize = 2;

/// The agent's state, shared by every request.
pub struct Agent {
    config: Config,
    layout: folder::Layout,
    supervisor: supervisor::Supervisor,
    store: BlobStore,
    state_dir: PathBuf,
    /// Serialises the operations that change the folder (and start/stop around them).
    folder_ops: Arc<tokio::sync::Mutex<()>>,
    /// Hash → path in the folder, from the last scan.
    index: Mutex<Option<Arc<HashMap<Sha256Hex, RelPath>>>>,
    /// The folder as a snapshot scanned it while the main program was
    /// stopped (see [`Agent::folder_now`]).
    at_rest: Mutex<Option<AtRest>>,
    /// The last whole snapshots served, by digest, newest last (see
    /// [`Agent::snapshot_changes`]).
    snapshots: Mutex<Vec<(Sha256Hex, Arc<Manifest>)>>,
    /// The manifest of the release last staged, checked (see
    /// [`Agent::release_files`]).
    release_files: Mutex<Option<Arc<tillup_core::install::ReleaseFiles>>>,
    /// The folder's hash cache, loaded at the first scan and kept: a scan
    /// of a folder of ten thousand files then reads no cache file.
    hash_cache: Arc<Mutex<Option<HashCache>>>,
    /// What survives a restart of the agent (see [`memory`]).
    memory: Mutex<Memory>,
    /// The last time the host asked anything (for the watchdog).
    last_contact: Mutex<Instant>,
    /// Its own executable, for a self-update.
    replacer: tillup_selfupdate::Replacer,
    /// The release of tillup-agent this process runs.
    self_version: Version,
    /// Whether that release is on trial (started, not yet confirmed).
    self_on_trial: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Opens the state folder and the incoming store; adopts a main program
    /// left running by an earlier agent. Call inside a tokio runtime.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let state_dir = config.state_dir();
        tillup_fs::private_dir(&state_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the state folder: {e}"))?;
        let store = BlobStore::open(state_dir.join("blobs"))?;
        let _ = store.clean_tmp();
        let layout = folder::Layout::new(&config.folder, &config.version_file);
        let mut memory = Memory::load(&Memory::path(&state_dir));
        // A power cut in the middle of a swap: put the folder back to all
        // old or all new before anything else looks at it.
        if let Some(what) = layout.recover()? {
            memory.notice(what);
        }
        if let Some(t) = &memory.trial
            && layout.version_of(&layout.folder).as_ref() != Some(&t.version)
        {
            memory.trial = None;
        }
        memory.save(&Memory::path(&state_dir))?;
        let replacer = tillup_selfupdate::Replacer::this_process(&state_dir)?;
        let self_on_trial = matches!(
            replacer.trial(),
            Ok(Some(t)) if t.phase == tillup_core::selfupdate::TrialPhase::Started
        );
        let self_version = replacer.running(
            memory.self_release.as_ref(),
            &tillup_selfupdate::build_version(),
        );
        let supervisor = supervisor::Supervisor::new(config.main.clone(), &state_dir);
        Ok(Arc::new(Self {
            layout,
            supervisor,
            store,
            state_dir,
            folder_ops: Arc::default(),
            index: Mutex::new(None),
            at_rest: Mutex::new(None),
            snapshots: Mutex::new(Vec::new()),
            release_files: Mutex::new(None),
            hash_cache: Arc::default(),
            memory: Mutex::new(memory),
            last_contact: Mutex::new(Instant::now()),
            replacer,
            self_version,
            self_on_trial: self_on_trial.into(),
            config,
        }))
    }

    /// Changes the remembered state and writes it before the caller acts on it.
    fn remember(&self, change: impl FnOnce(&mut Memory)) -> Result<(), AgentError> {
        let mut m = self.memory.lock().expect("not poisoned");
        let mut next = m.clone();
        change(&mut next);
        if next != *m {
            next.save(&Memory::path(&self.state_dir))
                .map_err(AgentError::internal)?;
            *m = next;
        }
        Ok(())
    }

    fn memory(&self) -> Memory {
        self.memory.lock().expect("not poisoned").clone()
    }

    /// The host asked something: the watchdog waits again.
    pub fn touch(&self) {
        *self.last_contact.lock().expect("not poisoned") = Instant::now();
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        let free_bytes = tillup_fs::free_space(&self.config.folder)
            .or_else(|_| tillup_fs::free_space(&self.state_dir))
            .map_err(AgentError::internal)?;
        Ok(AgentStatus {
            terminal: self.config.terminal,
            model: self.config.model.clone(),
            version: self.layout.version_of(&self.layout.folder),
            main: self.supervisor.state(),
            busy: self.supervisor.is_busy().await,
            free_bytes,
            staged: self.layout.version_of(&self.layout.staging),
            previous: self.layout.version_of(&self.layout.previous),
            agent_version: self.self_version.to_string(),
            protocols: tillup_core::api::Protocols::THIS,
            notices: self.memory().notices,
            agent_on_trial: self.self_on_trial(),
        })
    }

    /// `POST /v1/stop`. Remembered first, so that a restarted agent leaves
    /// it stopped for the host and the watchdog bounds how long.
    pub async fn stop(&self, busy_timeout: Option<Duration>) -> Result<StopReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        self.remember(|m| {
            m.stopped_by_host.get_or_insert_with(jiff::Timestamp::now);
            m.watchdog_started = None;
        })?;
        let report = self.supervisor.stop(busy_timeout).await?;
        tillup_fs::fault::crash_point("agent.stopped");
        Ok(report)
    }

    /// `POST /v1/start`.
    pub async fn start(&self) -> Result<StartReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        self.start_locked().await
    }

    async fn start_locked(&self) -> Result<StartReport, AgentError> {
        let report = self.supervisor.start().await?;
        self.remember(|m| m.stopped_by_host = None)?;
        Ok(report)
    }

    /// Scans the folder (with the hash cache in STATE) and remembers where each hash lives.
    async fn scan(&self) -> Result<Arc<Manifest>, AgentError> {
        self.scan_saving(true).await
    }

    /// [`Agent::scan`], writing what it learnt to the hash cache's file
    /// only if `save`: otherwise the next scan that saves writes it, and
    /// a crash before costs reading a few files again.
    async fn scan_saving(&self, save: bool) -> Result<Arc<Manifest>, AgentError> {
        let (folder, cache_path) = (
            self.layout.folder.clone(),
            self.state_dir.join("hash-cache.json"),
        );
        let kept = Arc::clone(&self.hash_cache);
        let manifest = tokio::task::spawn_blocking(move || {
            let mut kept = kept.lock().expect("not poisoned");
            let cache = kept.get_or_insert_with(|| HashCache::load(&cache_path));
            let m = tillup_fs::scan_folder(&folder, cache)?;
            if save {
                cache.save(&cache_path)?;
            }
            let index = m
                .files()
                .iter()
                .map(|f| (f.sha256, f.path.clone()))
                .collect();
            Ok::<_, tillup_fs::Error>((Arc::new(m), Arc::new(index)))
        })
        .await
        .map_err(AgentError::internal)?
        .map_err(|e| folder_unfit(e, &self.layout.folder))?;
        let (manifest, index) = manifest;
        *self.index.lock().expect("not poisoned") = Some(index);
        Ok(manifest)
    }

    /// `GET /v1/snapshot`. Taken while the main program is stopped (the
    /// host's `Collect`), it is also what the commit checks against.
    pub async fn snapshot(&self) -> Result<Snapshot, AgentError> {
        let manifest = self.scan_at_rest().await?;
        let digest = {
            let m = Arc::clone(&manifest);
            tokio::task::spawn_blocking(move || m.digest())
                .await
                .map_err(AgentError::internal)?
        };
        {
            let mut kept = self.snapshots.lock().expect("not poisoned");
            kept.retain(|(d, _)| *d != digest);
            if kept.len() >= SNAPSHOTS_KEPT {
                kept.remove(0);
            }
            kept.push((digest, Arc::clone(&manifest)));
        }
        Ok(Snapshot {
            version: self.layout.version_of(&self.layout.folder),
            manifest: Arc::unwrap_or_clone(manifest),
            digest: Some(digest),
        })
    }

    /// `GET /v1/snapshot/changes?since=`: a snapshot as changes to the
    /// whole one of digest `since`, which must be among the last
    /// [`SNAPSHOTS_KEPT`] served (else 409: take a whole snapshot).
    pub async fn snapshot_changes(&self, since: Sha256Hex) -> Result<SnapshotChanges, AgentError> {
        let base = self
            .snapshots
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(d, _)| *d == since)
            .map(|(_, m)| Arc::clone(m))
            .ok_or_else(|| {
                AgentError::Conflict(format!(
                    "snapshot {since} is not among the agent's last ones (it may have restarted); take a whole snapshot (GET /v1/snapshot)"
                ))
            })?;
        let manifest = self.scan_at_rest().await?;
        Ok(SnapshotChanges {
            version: self.layout.version_of(&self.layout.folder),
            since,
            changes: base.changes_to(&manifest),
        })
    }

    /// A scan, kept as the folder at rest when the main program was
    /// stopped all through it (see [`Agent::folder_now`]).
    async fn scan_at_rest(&self) -> Result<Arc<Manifest>, AgentError> {
        let starts = self.supervisor.starts();
        let stopped = self.supervisor.stopped_since(starts);
        // While the till is stopped nothing waits that need not: what the
        // stop changed (its own files) is saved by a later scan, if the
        // folder is not swapped first (a swap drops the cache).
        let manifest = self.scan_saving(!stopped).await?;
        *self.at_rest.lock().expect("not poisoned") =
            (stopped && self.supervisor.stopped_since(starts)).then(|| AtRest {
                starts,
                manifest: Arc::clone(&manifest),
            });
        Ok(manifest)
    }

    /// The folder as it is now. The main program is the only writer of
    /// the folder besides the agent, so a scan taken while it was stopped
    /// stays true until it starts again or the agent swaps the folder:
    /// then no file is looked at twice while a till is stopped. Otherwise,
    /// a scan.
    async fn folder_now(&self) -> Result<Arc<Manifest>, AgentError> {
        let kept = self.at_rest.lock().expect("not poisoned").clone();
        match kept {
            Some(r) if self.supervisor.stopped_since(r.starts) => Ok(r.manifest),
            _ => self.scan().await,
        }
    }

    async fn ensure_index(&self) -> Result<(), AgentError> {
        if self.index.lock().expect("not poisoned").is_none() {
            self.scan().await?;
        }
        Ok(())
    }

    /// Where the bytes of each of `wanted` are (the folder by the last scan,
    /// or the incoming store), for a pack; the hashes not here are refused.
    pub async fn locator(
        &self,
        wanted: &[Sha256Hex],
    ) -> Result<tillup_transfer::Locate, AgentError> {
        let missing = self.missing(wanted).await?;
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(5).map(ToString::to_string).collect();
            return Err(AgentError::NotFound(format!(
                "{} of the files asked for are neither in the folder nor received: {}{}",
                missing.len(),
                shown.join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            )));
        }
        let index = self.last_index();
        let (folder, store) = (self.layout.folder.clone(), self.store.clone());
        Ok(Box::new(move |h| {
            index
                .get(h)
                .map(|p| tillup_fs::join(&folder, p))
                .or_else(|| store.has(h).then(|| store.path(h)))
        }))
    }

    /// Hash → path by the last scan (empty if none), without holding its lock.
    fn last_index(&self) -> Arc<HashMap<Sha256Hex, RelPath>> {
        self.index
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_default()
    }

    /// `POST /v1/blobs/missing`: the hashes neither in the folder nor in the incoming store.
    pub async fn missing(&self, wanted: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, AgentError> {
        self.ensure_index().await?;
        let index = self.last_index();
        Ok(self
            .store
            .missing(wanted.iter().filter(|h| !index.contains_key(h))))
    }

    /// The incoming store.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// `POST /v1/stage`.
    pub async fn stage(&self, req: StageRequest) -> Result<StageReport, AgentError> {
        self.stage_target(Target::Whole(req)).await
    }

    /// `POST /v1/stage/changes`: stages the folder that `req.changes` make
    /// of the one staged already. Refused (409) when the staging folder
    /// holds another folder than `req.base`: the host then sends the whole
    /// folder (`POST /v1/stage`).
    pub async fn stage_changes(&self, req: StageChanges) -> Result<StageReport, AgentError> {
        self.stage_target(Target::Changes(req)).await
    }

    async fn stage_target(&self, target: Target) -> Result<StageReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        let (version, signed) = target.release();
        let (version, signed) = (version.clone(), signed.clone());
        // Nothing is written for a release the chain did not sign.
        let accepted = self.accept_release(&version, &signed)?;
        // Its manifest, checked now rather than while the till is stopped.
        self.release_files(&accepted.release).await?;
        match target {
            // The whole folder: the folder as it is now.
            Target::Whole(_) => {
                self.scan().await?;
            }
            // Changes come after the stop, right after `Collect` scanned
            // the folder: its last scan is the folder as it is.
            Target::Changes(_) => self.ensure_index().await?,
        }
        let local = self
            .index
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_default();
        let (layout, store) = (self.layout.clone(), self.store.clone());
        // The previous release is the one to go back to only while the
        // current one is on trial; after that its folder is the cheapest
        // start for the next staging.
        let recycle = self
            .memory()
            .trial
            .is_none()
            .then(|| self.state_dir.join(PREVIOUS_CACHE));
        let whole = matches!(target, Target::Whole(_));
        let report = tokio::task::spawn_blocking(move || {
            // The staging folder's record is read once, whatever follows.
            let mut staged = layout.staged_with_digest();
            if staged.is_none()
                && let Some(cache_path) = recycle
                && let Some(m) = layout.recycle_previous(&mut HashCache::load(&cache_path))?
            {
                tracing::info!(
                    files = m.len(),
                    "the previous folder is the new staging folder"
                );
                staged = layout.staged_with_digest();
            }
            let req = target.resolve(staged.as_ref())?;
            let report = layout.stage_from(&local, &store, &req, staged.map(|(m, _)| m))?;
            // Received files the staged folder does not use are not needed
            // again: the incoming store stays within one release's changes
            // (and its manifest, which the commit checks against). A stage
            // that took nothing from it (the terminal's own files, after
            // the stop) leaves it as the stage before left it.
            if whole || report.received_bytes > 0 {
                let mut keep = req.manifest.hashes();
                keep.insert(accepted.release.sha256);
                if let Err(e) = store.retain(&keep) {
                    tracing::warn!("could not drop received files no longer needed: {e}");
                }
            }
            Ok::<_, AgentError>(report)
        })
        .await
        .map_err(AgentError::internal)??;
        self.keep_staged_release(&version, &signed)?;
        tracing::info!(?report, "staged");
        Ok(report)
    }

    /// `POST /v1/commit`: needs the main program stopped.
    pub async fn commit(&self, version: Version) -> Result<SwapReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        if self.holds(&version) {
            return Ok(SwapReport {
                version,
                swapped: false,
            });
        }
        if self.supervisor.is_running() {
            let why = match self.memory().watchdog_started {
                Some(at) => format!(
                    ": the watchdog started it again at {at} while the host was silent, so the folder the host collected before is out of date; upgrade this terminal again"
                ),
                None => ": stop the main program first (POST /v1/stop)".to_owned(),
            };
            return Err(AgentError::Conflict(format!(
                "the main program is running{why}"
            )));
        }
        // Only what the chain signed, with this terminal's own files as
        // they are now; remembered before the swap, so an older log is
        // refused from here on whatever happens next.
        let (seen, trust) = self.check_commit(&version).await?;
        let pinned = self.config.trust_key.trim().to_owned();
        self.remember(|m| {
            m.seen_log = Some(seen);
            m.trust = Some(trust);
            m.trust_pinned = Some(pinned);
        })?;
        // The folder about to become previous, as its hash cache knows it
        // (the stage that built the staging folder scanned it just before):
        // what makes reusing it for the next staging cheap. Moved, not
        // copied: the swap forgets the folder's cache anyway, and a cache
        // lost to a crash costs a rescan, never a wrong hash.
        let (from, to) = (
            self.state_dir.join("hash-cache.json"),
            self.state_dir.join(PREVIOUS_CACHE),
        );
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(AgentError::internal(e));
            }
            _ => {}
        }
        // On trial from before the swap: a crash right after it still
        // leaves the agent knowing what to put back if it is unhealthy.
        let previous = self.layout.version_of(&self.layout.folder);
        if let Some(previous) = previous.clone() {
            self.remember(|m| {
                m.trial = Some(Trial {
                    version: version.clone(),
                    previous,
                })
            })?;
        }
        let result = self.swap(version, folder::Layout::commit).await;
        if result.is_err() && self.layout.version_of(&self.layout.folder) == previous {
            self.remember(|m| m.trial = None)?;
        }
        result
    }

    /// `POST /v1/rollback`: stops the main program first if it runs (as
    /// `POST /v1/stop` does), so a release that starts but is unhealthy can
    /// be rolled back. Does nothing, and stops nothing, when the folder
    /// already holds `version`.
    pub async fn rollback(&self, version: Version) -> Result<SwapReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        if self.holds(&version) {
            return Ok(SwapReport {
                version,
                swapped: false,
            });
        }
        // Refuse before stopping anything when there is nothing to go back to.
        let previous = self.layout.version_of(&self.layout.previous);
        if previous.as_ref() != Some(&version) {
            return Err(folder::FolderError::NoPrevious {
                version,
                current: self.layout.version_of(&self.layout.folder),
                previous,
            }
            .into());
        }
        if self.supervisor.is_running() {
            let stop = self.supervisor.stop(None).await?;
            tracing::info!(?stop, "stopped the main program to roll back");
        }
        let report = self.swap(version, folder::Layout::rollback).await?;
        self.remember(|m| m.trial = None)?;
        Ok(report)
    }

    /// Whether the folder holds `version`.
    fn holds(&self, version: &Version) -> bool {
        self.layout.version_of(&self.layout.folder).as_ref() == Some(version)
    }

    /// Runs the swap `op`; the caller holds `folder_ops` and stopped the main program.
    async fn swap(
        &self,
        version: Version,
        op: fn(&folder::Layout, &Version) -> Result<bool, folder::FolderError>,
    ) -> Result<SwapReport, AgentError> {
        // Whatever becomes of the swap, the folder may change under it.
        *self.at_rest.lock().expect("not poisoned") = None;
        let layout = self.layout.clone();
        let v = version.clone();
        let swapped = tokio::task::spawn_blocking(move || op(&layout, &v))
            .await
            .map_err(AgentError::internal)??;
        // The folder's files changed under their paths: forget what was known of them.
        *self.index.lock().expect("not poisoned") = None;
        *self.hash_cache.lock().expect("not poisoned") = None;
        let _ = std::fs::remove_file(self.state_dir.join("hash-cache.json"));
        tracing::info!(%version, swapped, "swapped");
        Ok(SwapReport { version, swapped })
    }

    /// `GET /v1/health?version=…`: waits for the main program to report
    /// `version`. When `version` is on trial (just swapped in) and is not
    /// healthy, the agent puts the previous release back itself, starts it,
    /// and says so in the report, whatever becomes of the host.
    pub async fn health(&self, version: &Version) -> Result<HealthReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        self.health_locked(version).await
    }

    async fn health_locked(&self, version: &Version) -> Result<HealthReport, AgentError> {
        let timeout = Duration::from_secs(self.config.main.health_timeout_secs);
        tillup_fs::fault::crash_point("agent.health");
        let mut report = self.supervisor.health(version, timeout).await;
        let trial = self
            .memory()
            .trial
            .filter(|t| &t.version == version && self.holds(version));
        let Some(trial) = trial else {
            return Ok(report);
        };
        if report.healthy {
            self.remember(|m| m.trial = None)?;
            return Ok(report);
        }
        if self.supervisor.is_running() {
            self.supervisor.stop(None).await?;
        }
        self.swap(trial.previous.clone(), folder::Layout::rollback)
            .await?;
        tillup_fs::fault::crash_point("agent.health.rolled_back");
        let started = self.supervisor.start().await;
        let words = report.message.clone();
        self.remember(|m| {
            m.trial = None;
            m.notice(format!(
                "version {version} was not healthy ({words}); put {} back{}",
                trial.previous,
                match &started {
                    Ok(_) => " and started it".to_owned(),
                    Err(e) => format!(", but it would not start: {e}"),
                }
            ));
        })?;
        started?;
        report.rolled_back_to = Some(trial.previous);
        Ok(report)
    }

    /// The watchdog's look, every tick: if the host has been silent for
    /// `watchdog_secs` while the main program is stopped, start it on
    /// whatever folder is committed; if a release is still on trial, check
    /// it (rolling it back if unhealthy); if a release of tillup-agent is
    /// still on trial, go back to the previous one. Skipped while a
    /// request works.
    pub async fn watch(&self) {
        let bound = Duration::from_secs(self.config.watchdog_secs);
        let silent = self.last_contact.lock().expect("not poisoned").elapsed();
        if silent < bound {
            return;
        }
        let Ok(op) = Arc::clone(&self.folder_ops).try_lock_owned() else {
            return;
        };
        let memory = self.memory();
        if memory.stopped_by_host.is_some() {
            let result = if self.supervisor.is_running() {
                self.remember(|m| m.stopped_by_host = None)
            } else {
                let version = self.layout.version_of(&self.layout.folder);
                self.start_locked().await.and_then(|_| {
                    self.remember(|m| {
                        m.watchdog_started = Some(jiff::Timestamp::now());
                        m.notice(format!(
                            "the host was silent for {} s while the main program was stopped: started it again on version {}",
                            silent.as_secs(),
                            version.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
                        ))
                    })
                })
            };
            if let Err(e) = result {
                tracing::error!("watchdog: could not start the main program: {e}");
                return;
            }
        }
        if let Some(trial) = memory.trial
            && self.supervisor.is_running()
        {
            match self.health_locked(&trial.version).await {
                Ok(r) if r.healthy => {
                    let _ = self.remember(|m| {
                        m.notice(format!(
                            "the host was silent for {} s: checked version {} myself, it is healthy",
                            silent.as_secs(),
                            trial.version
                        ))
                    });
                }
                Ok(_) => {}
                Err(e) => tracing::error!("watchdog: the health check failed: {e}"),
            }
        }
        if let Err(e) = self.self_trial_unconfirmed(silent, op) {
            tracing::error!("watchdog: could not go back to the previous tillup-agent: {e}");
        }
    }
}

/// `tillup-agent self-check`: what the agent needs to run, checked without
/// serving or touching the main program (the state folder, its stores and
/// memory, its TLS identity). A self-update keeps a new executable only if
/// this passes.
pub fn self_check(config: &Config) -> anyhow::Result<serde_json::Value> {
    let state_dir = config.state_dir();
    tillup_fs::private_dir(&state_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the state folder: {e}"))?;
    BlobStore::open(state_dir.join("blobs"))?;
    let memory = Memory::load(&Memory::path(&state_dir));
    if config.tls {
        tls::Identity::load_or_create(&state_dir)?;
    }
    Ok(serde_json::json!({
        "program": "tillup-agent",
        "build": env!("CARGO_PKG_VERSION"),
        "terminal": config.terminal,
        "kept_release": memory.self_release.map(|k| k.version),
    }))
}

/// Binds, prints `listening on https://IP:PORT` (`http://` without TLS)
/// as the first stdout line, starts the main program if configured, and
/// serves until SIGINT/SIGTERM. The main program is left running when the
/// agent exits.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    use std::io::Write;
    // A new executable that started before without being confirmed, or
    // whose swap was cut before its probe passed: back to the kept one.
    let replacer = tillup_selfupdate::Replacer::this_process(&config.state_dir())?;
    match replacer.at_start()? {
        tillup_core::selfupdate::OnStart::GoBack(t) => {
            // Said to the host, which is waiting for the new release.
            let path = Memory::path(&config.state_dir());
            let mut memory = Memory::load(&path);
            memory.notice(format!(
                "tillup-agent {} started without being confirmed healthy: {} {}",
                t.to,
                tillup_core::selfupdate::WENT_BACK,
                t.from
            ));
            memory.save(&path)?;
            let e = tillup_selfupdate::restart(replacer.exe());
            anyhow::bail!("could not restart on {}: {e}", replacer.exe().display());
        }
        tillup_core::selfupdate::OnStart::RunOnTrial(_) => {
            tillup_fs::fault::crash_point("agent.self.on_trial");
        }
        tillup_core::selfupdate::OnStart::Run => {}
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let autostart = config.main.autostart;
    let tls = if config.tls {
        let identity = tls::Identity::load_or_create(&config.state_dir())?;
        tracing::info!(
            "pairing code of this terminal: {} (type it on the store host: tillup pair {} CODE)",
            identity.pairing_code(),
            config.terminal
        );
        Some(tillup_serve::tls_config(
            identity.cert_der,
            identity.key_der,
        )?)
    } else {
        tracing::warn!(
            "TLS is off (tls = false): the host's token and this terminal's files cross the LAN in clear"
        );
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let agent = Agent::new(config)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{addr}")?;
        out.flush()?;
    }
    if agent.memory().stopped_by_host.is_some() {
        tracing::warn!(
            "the host stopped the main program before this agent restarted: leaving it to the host, or to the watchdog in {} s",
            agent.config.watchdog_secs
        );
    } else if autostart
        && !agent.supervisor.is_running()
        && let Err(e) = agent.start().await
    {
        tracing::error!("could not start the main program at start-up: {e}");
    }
    let watchdog = Arc::clone(&agent);
    let tick = Duration::from_secs(agent.config.watchdog_secs)
        .div_f32(4.0)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            watchdog.watch().await;
        }
    });
    tillup_serve::serve(
        listener,
        app(agent),
        tillup_serve::Limits::AGENT,
        tls,
        shutdown(),
    )
    .await?;
    Ok(())
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The folder a stage request names: whole, or as changes to the staged one.
enum Target {
    Whole(StageRequest),
    Changes(StageChanges),
}

impl Target {
    /// The version to stage and the signed log naming it.
    fn release(&self) -> (&Version, &tillup_core::install::SignedLog) {
        match self {
            Target::Whole(req) => (&req.version, &req.release),
            Target::Changes(req) => (&req.version, &req.release),
        }
    }

    /// The whole folder, given what is staged now.
    fn resolve(self, staged: Option<&(Manifest, Sha256Hex)>) -> Result<StageRequest, AgentError> {
        let req = match self {
            Target::Whole(req) => return Ok(req),
            Target::Changes(req) => req,
        };
        let manifest = match staged.map(|(m, digest)| (*digest, m)) {
            // Asked again after a lost answer: staged already.
            Some((digest, m)) if digest == req.result => m.clone(),
            Some((digest, m)) if digest == req.base => {
                let m = m.with_changes(&req.changes).map_err(|e| {
                    AgentError::BadRequest(format!("the changes to the staged folder: {e}"))
                })?;
                let reached = m.digest();
                if reached != req.result {
                    return Err(AgentError::BadRequest(format!(
                        "the changes lead to the folder {reached}, not to {} as the request says",
                        req.result
                    )));
                }
                m
            }
            _ => {
                return Err(AgentError::Conflict(format!(
                    "the staging folder does not hold the folder {} these changes start from; send the whole folder (POST {})",
                    req.base,
                    tillup_core::api::agent::STAGE
                )));
            }
        };
        Ok(StageRequest {
            version: req.version,
            manifest,
            release: req.release,
        })
    }
}

/// A scan's failure: what the store can fix in its program folder (a
/// link, a name tillup cannot carry, no folder at all) is a 409 that names
/// it, so the host's report says what to do; anything else is internal.
fn folder_unfit(e: tillup_fs::Error, folder: &std::path::Path) -> AgentError {
    match e {
        tillup_fs::Error::Symlink { .. } | tillup_fs::Error::BadName { .. } => {
            AgentError::Conflict(format!(
                "the program folder cannot be backed up as it is, so nothing was changed: {e}"
            ))
        }
        tillup_fs::Error::Io {
            ref path,
            ref source,
        } if path == folder && source.kind() == std::io::ErrorKind::NotFound => {
            AgentError::Conflict(format!(
                "there is no program folder at {}: install the POS program there, or set `folder` in the agent's config to where it is",
                folder.display()
            ))
        }
        e => e.into(),
    }
}
