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
use tillup_core::api::{AgentStatus, agent as agent_routes};

pub mod check;
pub mod config;
pub mod http;
pub mod local_log;
pub mod runner;
pub mod schedule;

pub use config::Config;
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
    #[error("another upgrade ({0}) is not finished; it is resumed by the next `tillup update`")]
    Busy(String),
    #[error(transparent)]
    Fs(#[from] tillup_fs::Error),
    #[error("{0}")]
    Other(String),
}

/// The listener: a configuration, its data folder and its peers.
pub struct Listener {
    pub config: Config,
    pub data_dir: PathBuf,
    server: Peer,
    agents: BTreeMap<u32, Peer>,
}

impl Listener {
    pub fn new(config: Config) -> Result<Self, Error> {
        let http = http::client();
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(|e| tillup_fs::Error::Io {
            path: data_dir.clone(),
            source: e,
        })?;
        let downloads = http::Downloads::default();
        let server = Peer::new(
            "the server",
            &config.server,
            &config.store_token,
            http.clone(),
            downloads.clone(),
        );
        let agents = config
            .terminals
            .iter()
            .map(|t| {
                (
                    t.number,
                    Peer::new(
                        format!("terminal {}", t.number),
                        &t.address,
                        &t.token,
                        http.clone(),
                        downloads.clone(),
                    ),
                )
            })
            .collect();
        Ok(Self {
            config,
            data_dir,
            server,
            agents,
        })
    }

    pub(crate) fn agent(&self, n: u32) -> Result<&Peer, Error> {
        self.agents
            .get(&n)
            .ok_or_else(|| Error::Other(format!("terminal {n} is not in the configuration")))
    }

    /// Every terminal's agent status, asked at once.
    pub async fn agent_statuses(&self) -> BTreeMap<u32, Result<AgentStatus, Error>> {
        let asks = self.agents.iter().map(|(n, peer)| async move {
            (
                *n,
                peer.get_json::<AgentStatus>("report its status", agent_routes::STATUS)
                    .await,
            )
        });
        join_all(asks).await.into_iter().collect()
    }
}
