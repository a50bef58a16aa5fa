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
pub mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use semver::Version;
use tillup_core::api::{
    AgentStatus, HealthReport, Snapshot, StageReport, StageRequest, StartReport, StopReport,
    SwapReport,
};
use tillup_core::{Manifest, RelPath, Sha256Hex};
use tillup_fs::{BlobStore, HashCache};

pub use config::Config;
pub use http::{AgentError, app};

/// The agent's state, shared by every request.
pub struct Agent {
    config: Config,
    layout: folder::Layout,
    supervisor: supervisor::Supervisor,
    store: BlobStore,
    state_dir: PathBuf,
    /// Serialises the operations that change the folder (and start/stop around them).
    folder_ops: tokio::sync::Mutex<()>,
    /// Hash → path in the folder, from the last scan.
    index: Mutex<Option<HashMap<Sha256Hex, RelPath>>>,
}

impl Agent {
    /// Opens the state folder and the incoming store; adopts a main program
    /// left running by an earlier agent. Call inside a tokio runtime.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let state_dir = config.state_dir();
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the state folder {}: {e}",
                state_dir.display()
            )
        })?;
        let store = BlobStore::open(state_dir.join("blobs"))?;
        let _ = store.clean_tmp();
        let layout = folder::Layout::new(&config.folder, &config.version_file);
        let supervisor = supervisor::Supervisor::new(config.main.clone(), &state_dir);
        Ok(Arc::new(Self {
            layout,
            supervisor,
            store,
            state_dir,
            folder_ops: tokio::sync::Mutex::new(()),
            index: Mutex::new(None),
            config,
        }))
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
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    /// `POST /v1/stop`.
    pub async fn stop(&self, busy_timeout: Option<Duration>) -> Result<StopReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        Ok(self.supervisor.stop(busy_timeout).await?)
    }

    /// `POST /v1/start`.
    pub async fn start(&self) -> Result<StartReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        Ok(self.supervisor.start().await?)
    }

    /// Scans the folder (with the hash cache in STATE) and remembers where each hash lives.
    async fn scan(&self) -> Result<Manifest, AgentError> {
        let (folder, cache_path) = (
            self.layout.folder.clone(),
            self.state_dir.join("hash-cache.json"),
        );
        let manifest = tokio::task::spawn_blocking(move || {
            let mut cache = HashCache::load(&cache_path);
            let m = tillup_fs::scan_folder(&folder, &mut cache)?;
            cache.save(&cache_path)?;
            Ok::<_, tillup_fs::Error>(m)
        })
        .await
        .map_err(AgentError::internal)?
        .map_err(AgentError::internal)?;
        let index = manifest
            .files()
            .iter()
            .map(|f| (f.sha256, f.path.clone()))
            .collect();
        *self.index.lock().expect("not poisoned") = Some(index);
        Ok(manifest)
    }

    /// `GET /v1/snapshot`.
    pub async fn snapshot(&self) -> Result<Snapshot, AgentError> {
        let manifest = self.scan().await?;
        Ok(Snapshot {
            version: self.layout.version_of(&self.layout.folder),
            manifest,
        })
    }

    async fn ensure_index(&self) -> Result<(), AgentError> {
        if self.index.lock().expect("not poisoned").is_none() {
            self.scan().await?;
        }
        Ok(())
    }

    /// Where the bytes with hash `h` are: in the folder (by the last scan) or the incoming store.
    pub async fn blob_path(&self, h: &Sha256Hex) -> Result<Option<PathBuf>, AgentError> {
        self.ensure_index().await?;
        let in_folder = self
            .index
            .lock()
            .expect("not poisoned")
            .as_ref()
            .and_then(|i| i.get(h).map(|p| tillup_fs::join(&self.layout.folder, p)));
        Ok(in_folder.or_else(|| self.store.has(h).then(|| self.store.path(h))))
    }

    /// `POST /v1/blobs/missing`: the hashes neither in the folder nor in the incoming store.
    pub async fn missing(&self, wanted: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, AgentError> {
        self.ensure_index().await?;
        let index = self.index.lock().expect("not poisoned");
        let index = index.as_ref().expect("ensured");
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
        let _op = self.folder_ops.lock().await;
        let current = self.scan().await?;
        let (layout, store) = (self.layout.clone(), self.store.clone());
        let report = tokio::task::spawn_blocking(move || {
            let report = layout.stage(&current, &store, &req)?;
            // Received files the staged folder does not use are not needed
            // again: the incoming store stays within one release's changes.
            if let Err(e) = store.retain(&req.manifest.hashes()) {
                tracing::warn!("could not drop received files no longer needed: {e}");
            }
            Ok::<_, folder::FolderError>(report)
        })
        .await
        .map_err(AgentError::internal)??;
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
            return Err(AgentError::Conflict(
                "the main program is running: stop the main program first (POST /v1/stop)".into(),
            ));
        }
        self.swap(version, folder::Layout::commit).await
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
        self.swap(version, folder::Layout::rollback).await
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
        let layout = self.layout.clone();
        let v = version.clone();
        let swapped = tokio::task::spawn_blocking(move || op(&layout, &v))
            .await
            .map_err(AgentError::internal)??;
        // The folder's files changed under their paths: forget what was known of them.
        *self.index.lock().expect("not poisoned") = None;
        let _ = std::fs::remove_file(self.state_dir.join("hash-cache.json"));
        tracing::info!(%version, swapped, "swapped");
        Ok(SwapReport { version, swapped })
    }

    /// `GET /v1/health?version=…`.
    pub async fn health(&self, version: &Version) -> HealthReport {
        self.supervisor
            .health(
                version,
                Duration::from_secs(self.config.main.health_timeout_secs),
            )
            .await
    }
}

/// Binds, prints `listening on http://IP:PORT` as the first stdout line,
/// starts the main program if configured, and serves until SIGINT/SIGTERM.
/// The main program is left running when the agent exits.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let autostart = config.main.autostart;
    let agent = Agent::new(config)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    if autostart
        && !agent.supervisor.is_running()
        && let Err(e) = agent.start().await
    {
        tracing::error!("could not start the main program at start-up: {e}");
    }
    axum::serve(listener, app(agent))
        .with_graceful_shutdown(shutdown())
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
