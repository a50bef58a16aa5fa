//! The server's background jobs. Some run on every server (their work is
//! local or idempotent); the rest run on one server at a time, under a
//! lease in the shared database (see ARCHITECTURE.md, "More than one
//! server").

use std::time::Duration;

use jiff::Timestamp;
use tokio::task::JoinSet;

use crate::access::CHECK_FLUSH;
use crate::data::KeySource;
use crate::http::{AppError, AppState};

/// How often the hourly jobs run.
const HOURLY: Duration = Duration::from_secs(3600);
/// The lease of the re-signing job: longer than a re-signing takes, short
/// enough that another server takes over within the hour if its holder
/// stops.
pub const RESIGN_LEASE: Duration = Duration::from_secs(30 * 60);
/// The name of the re-signing job's lease.
pub const RESIGN_LEASE_NAME: &str = "resign-logs";

/// How long the server that looks at rollouts keeps the job (it renews
/// at every look): one server at a time moves them and signs the logs.
pub const ROLLOUT_LEASE: Duration = Duration::from_secs(120);
/// Its name.
pub const ROLLOUT_LEASE_NAME: &str = "rollouts";

/// The running jobs; dropping or aborting it stops them.
#[derive(Debug)]
pub struct Jobs(JoinSet<()>);

impl Jobs {
    /// Stops every job.
    pub fn abort(mut self) {
        self.0.abort_all();
    }
}

/// Starts the jobs: writing last-check times (every server, for its own
/// requests), dropping abandoned uploads (every server, its own temporary
/// files), and, with a key, re-signing logs past half their validity (one
/// server at a time).
pub fn spawn(state: AppState, key: Option<KeySource>) -> Jobs {
    let mut set = JoinSet::new();
    let st = state.clone();
    set.spawn(async move {
        let mut every = tokio::time::interval(CHECK_FLUSH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            flush_checks(&st).await;
        }
    });
    let st = state.clone();
    set.spawn(async move {
        let mut every = tokio::time::interval(HOURLY);
        loop {
            every.tick().await;
            match st.blocking(|st| st.blobs().expire_tmp()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(files = n, "dropped abandoned uploads"),
                Err(e) => tracing::error!(error = ?e, "dropping abandoned uploads failed"),
            }
        }
    });
    if let Some(key) = key.clone() {
        let (st, holder) = (state.clone(), holder_name());
        set.spawn(async move {
            let mut every = tokio::time::interval(crate::rollouts::LOOK_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = st.rollouts_nudged() => {}
                }
                let (key, holder) = (key.clone(), holder.clone());
                let done = st
                    .blocking(move |st| {
                        let now = Timestamp::now();
                        if !st.db().take_lease(ROLLOUT_LEASE_NAME, &holder, now, ROLLOUT_LEASE)? {
                            return Ok(Vec::new());
                        }
                        crate::rollouts::look_all(st.db(), &key, now)
                    })
                    .await;
                match done {
                    Ok(moved) => {
                        for r in moved {
                            tracing::info!(rollout = %r.id, phase = ?r.state.phase, "rollout moved");
                        }
                    }
                    Err(e) => log_failure("looking at the rollouts", e),
                }
            }
        });
    }
    if let Some(key) = key {
        let holder = holder_name();
        set.spawn(async move {
            let mut every = tokio::time::interval(HOURLY);
            loop {
                every.tick().await;
                let (key, holder) = (key.clone(), holder.clone());
                let done = state
                    .blocking(move |st| {
                        let now = Timestamp::now();
                        if !st
                            .db()
                            .take_lease(RESIGN_LEASE_NAME, &holder, now, RESIGN_LEASE)?
                        {
                            return Ok(None);
                        }
                        crate::ops::resign_due(st.db(), &key, now).map(Some)
                    })
                    .await;
                match done {
                    Ok(None) => tracing::debug!("another server holds the re-signing lease"),
                    Ok(Some(done)) => {
                        for (channel, sequence) in done {
                            tracing::info!(%channel, sequence, "re-signed the log: less than half its validity remained");
                        }
                    }
                    Err(e) => log_failure("re-signing the log", e),
                }
            }
        });
    }
    Jobs(set)
}

/// Writes the last-check times noted since the last flush.
pub async fn flush_checks(state: &AppState) {
    if let Err(e) = state.flush_checks().await {
        log_failure("writing the stores' last-check times", e);
    }
}

fn log_failure(what: &str, e: AppError) {
    match e {
        AppError::Internal(e) => tracing::error!(error = %e, "{what} failed"),
        e => tracing::error!(error = ?e, "{what} failed"),
    }
}

/// Names this process among the servers sharing a database.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "server".into());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
