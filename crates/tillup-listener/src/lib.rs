//! The store host's listener, without any GUI.
//!
//! [`Listener`] holds the configuration and the HTTP peers; its methods are
//! the use cases the `tillup` CLI and the tray app both call: [`Listener::check`],
//! [`Listener::update`], [`Listener::status`], [`Listener::tick`].
//!
//! **Architecture invariant:** nothing here knows about Tauri, windows or
//! IPC; progress leaves through a callback.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures_util::future::join_all;
use tillup_core::api::AgentStatus;

pub mod bridge;
pub mod check;
pub mod clients;
pub mod config;
pub mod http;
pub mod local_log;
pub mod pace;
pub mod pairing;
pub mod progress;
pub mod runner;
pub mod schedule;
pub mod selfupdate;
pub mod view;

use clients::{AgentClient, ServerClient};
pub use config::{Config, MAX_CONFIG_BYTES};
use http::Peer;

/// Everything that can go wrong in the listener, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(
        "{path} is damaged ({message}); move it aside to start afresh, or restore it from a backup"
    )]
    Damaged { path: PathBuf, message: String },
    #[error(
        "cannot reach {peer} to {what}: {message}; check that it is running and that its address in the configuration is right"
    )]
    Unreachable {
        peer: String,
        what: String,
        message: String,
    },
    #[error("{peer} refused to {what} (HTTP {status}): {message}")]
    Refused {
        peer: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error("{peer} gave an unreadable answer to {what}: {message}")]
    BadAnswer {
        peer: String,
        what: String,
        message: String,
    },
    #[error("version log refused: {0}")]
    LogRejected(String),
    #[error("version log refused: {0}")]
    Stale(tillup_core::log::Refusal),
    #[error("refused to trust data from the server: {0}")]
    Untrusted(String),
    #[error("not enough free space: {0}")]
    NoSpace(String),
    #[error("another tillup is working on {0} (a check or an upgrade); try again when it is done")]
    Busy(PathBuf),
    #[error(transparent)]
    Fs(#[from] tillup_fs::Error),
    #[error("bundle {path} refused: {message}")]
    Bundle { path: PathBuf, message: String },
    #[error(transparent)]
    SelfUpdate(#[from] tillup_selfupdate::SelfUpdateError),
    #[error("{0}")]
    Other(String),
}

/// Logs to stderr at `filter` (an `EnvFilter` directive), unless
/// `TILLUP_LOG` says otherwise; colours only on a terminal. For the
/// binaries over this library (`tillup`, `tillup-tray`).
pub fn init_logging(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TILLUP_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The data folder's lock; released when dropped (or when the process dies).
pub(crate) struct Lock(#[allow(dead_code)] std::fs::File);

/// The listener: a configuration, its data folder and its peers.
pub struct Listener {
    pub config: Config,
    pub data_dir: PathBuf,
    server: ServerClient,
    agents: BTreeMap<u32, AgentClient>,
    /// The bytes of the running upgrade's transfers, for the CLI and the window.
    pub transfers: std::sync::Arc<progress::Transfers>,
    /// The release of tillup this process runs (see [`Listener::self_version`]).
    running_release: std::sync::OnceLock<semver::Version>,
}

impl Listener {
    pub fn new(config: Config) -> Result<Self, Error> {
        let http = http::client();
        let data_dir = config.data_dir();
        tillup_fs::private_dir(&data_dir)?;
        let pace = config.pace.pace();
        let server = ServerClient::new(
            Peer::new(
                "the server",
                &config.server,
                &config.store_token,
                http.clone(),
            )
            .with_mirrors(&config.mirrors)
            .with_pace(pace),
            &config.store_id,
        );
        let agents = config
            .terminals
            .iter()
            .map(|t| {
                let name = format!("terminal {}", t.number);
                let client = if t.address.starts_with("https://") {
                    pairing::client_for(t)
                } else {
                    http.clone()
                };
                let peer = Peer::new(name, &t.address, &t.token, client).with_pace(pace);
                (t.number, AgentClient::new(peer))
            })
            .collect();
        Ok(Self {
            config,
            data_dir,
            server,
            agents,
            transfers: Default::default(),
            running_release: Default::default(),
        })
    }

    /// Held by every use case that may change the data folder, so that a
    /// daemon and a command line never drive the same upgrade or write the
    /// local log at once.
    pub(crate) fn exclusive(&self) -> Result<Lock, Error> {
        let path = self.data_dir.join("tillup.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| tillup_fs::Error::Io {
                path: path.clone(),
                source: e,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Lock(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy(self.data_dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(tillup_fs::Error::Io { path, source: e }.into())
            }
        }
    }

    pub(crate) fn agent(&self, n: u32) -> Result<&AgentClient, Error> {
        self.agents
            .get(&n)
            .ok_or_else(|| Error::Other(format!("terminal {n} is not in the configuration")))
    }

    /// Every terminal's agent status, asked at once.
    pub async fn agent_statuses(&self) -> BTreeMap<u32, Result<AgentStatus, Error>> {
        self.statuses_of(self.agents.keys().copied()).await
    }

    /// The agent status of each of `terminals` in the configuration, asked at once.
    pub(crate) async fn statuses_of(
        &self,
        terminals: impl IntoIterator<Item = u32>,
    ) -> BTreeMap<u32, Result<AgentStatus, Error>> {
        let asks = terminals
            .into_iter()
            .filter_map(|n| Some((n, self.agents.get(&n)?)))
            .map(|(n, agent)| async move { (n, agent.status().await) });
        join_all(asks).await.into_iter().collect()
    }
}

/// Runs `f` on the blocking pool: work on whole manifests, so that
/// several run side by side and none holds up the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Other(format!("a worker failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(data: &std::path::Path) -> Listener {
        let key = tillup_core::sign::generate_keys().unwrap().public_line;
        let text = format!(
            "server = \"http://127.0.0.1:9\"\npublic_key = \"{key}\"\nstore_id = \"s\"\nstore_token = \"t\"\ndata_dir = {:?}\n",
            data.display().to_string()
        );
        Listener::new(toml::from_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn one_listener_at_a_time_works_on_a_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (listener(dir.path()), listener(dir.path()));
        let held = a.exclusive().unwrap();
        let err = b.exclusive().err().expect("the second must wait");
        assert!(matches!(err, Error::Busy(_)), "{err}");
        assert!(err.to_string().contains("try again"), "{err}");
        drop(held);
        b.exclusive().unwrap();
    }
}
