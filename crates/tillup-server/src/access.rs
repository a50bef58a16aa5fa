//! What every request needs, held in memory: which token belongs to which
//! store and channels, each channel's newest signed log (with its ETag),
//! and the stores' last-check times not yet written.
//!
//! A log check is the most frequent request of a release night; answered
//! from here it costs no database transaction and no fsync. The snapshot
//! is exact, not merely recent: before answering, [`Access::current`]
//! compares it with [`Db::generation`], which every change to a store, a
//! token, a channel or a log moves (in this server, in another server on
//! the same database, or in the `tillup-server` command line), and reloads
//! it if they differ. A revoked token is refused on its next request.
//!
//! Last-check times are kept in memory and written in one transaction
//! every [`CHECK_FLUSH`]: a crash loses at most that much of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::http::HeaderValue;
use base64::Engine;
use jiff::Timestamp;
use tillup_core::Sha256Hex;

use crate::db::{Db, SignedLog};
use crate::error::Error;

/// How often the last-check times are written to the database.
pub const CHECK_FLUSH: Duration = Duration::from_secs(2);

/// A channel's newest log, ready to send.
#[derive(Debug)]
pub struct ReadyLog {
    /// The log as stored.
    pub log: SignedLog,
    /// The signed bytes, to send without copying.
    pub body: axum::body::Bytes,
    /// Its ETag (quoted).
    pub etag: HeaderValue,
    /// The base64 of its `.minisig` text, the signature header's value.
    pub signature_header: HeaderValue,
}

impl ReadyLog {
    fn new(log: SignedLog) -> Result<Self, Error> {
        let etag = format!(
            "\"{}-{}\"",
            log.sequence,
            &Sha256Hex::of(&log.bytes).to_string()[..16]
        );
        let sig = base64::engine::general_purpose::STANDARD.encode(log.signature.as_bytes());
        let bad = |e: axum::http::header::InvalidHeaderValue| {
            Error::Corrupt(format!("log {}: {e}", log.sequence))
        };
        Ok(Self {
            etag: HeaderValue::from_str(&etag).map_err(bad)?,
            signature_header: HeaderValue::from_str(&sig).map_err(bad)?,
            body: axum::body::Bytes::from(log.bytes.clone()),
            log,
        })
    }
}

/// One store as a token reveals it.
#[derive(Debug)]
pub struct StoreEntry {
    /// The store's id.
    pub store: String,
    /// The channels it may read, sorted.
    pub channels: Vec<String>,
}

/// The state at one generation.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: Option<u64>,
    by_token: HashMap<String, Arc<StoreEntry>>,
    /// Filled on first use; `None` caches "nothing published".
    logs: Mutex<HashMap<String, Option<Arc<ReadyLog>>>>,
}

impl Snapshot {
    /// The store holding the token whose SHA-256 (hex) is `token_sha256`.
    pub fn store(&self, token_sha256: &str) -> Option<Arc<StoreEntry>> {
        self.by_token.get(token_sha256).cloned()
    }
}

/// The in-memory access state of one server.
#[derive(Debug, Default)]
pub struct Access {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Held while reloading, so a change is reloaded once, not by every
    /// request that notices it.
    reloading: tokio::sync::Mutex<()>,
    checks: Mutex<HashMap<String, Timestamp>>,
}

impl Access {
    /// The snapshot at the database's current generation, reloaded first
    /// if something changed.
    pub async fn current(&self, db: &Arc<dyn Db>) -> Result<Arc<Snapshot>, Error> {
        let generation = db.generation()?;
        let snap = self.read();
        if snap.generation == Some(generation) {
            return Ok(snap);
        }
        let _one = self.reloading.lock().await;
        let snap = self.read();
        if snap.generation.is_some_and(|g| g >= generation) {
            return Ok(snap);
        }
        let db = db.clone();
        // The generation is read before the rows: a change in between
        // makes the snapshot newer than its label, never older, and the
        // next request reloads again.
        let fresh = tokio::task::spawn_blocking(move || -> Result<Snapshot, Error> {
            let generation = db.generation()?;
            let by_token = db
                .store_access()?
                .into_iter()
                .map(|a| {
                    (
                        a.token_sha256,
                        Arc::new(StoreEntry {
                            store: a.store,
                            channels: a.channels,
                        }),
                    )
                })
                .collect();
            Ok(Snapshot {
                generation: Some(generation),
                by_token,
                logs: Mutex::default(),
            })
        })
        .await
        .map_err(|e| Error::Corrupt(format!("reloading the stores failed: {e}")))??;
        let fresh = Arc::new(fresh);
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    fn read(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The newest log of `channel` at `snap`'s generation.
    pub async fn log(
        &self,
        db: &Arc<dyn Db>,
        snap: &Snapshot,
        channel: &str,
    ) -> Result<Option<Arc<ReadyLog>>, Error> {
        if let Some(found) = lock(&snap.logs).get(channel) {
            return Ok(found.clone());
        }
        let (db, ch) = (db.clone(), channel.to_owned());
        let log = tokio::task::spawn_blocking(move || db.latest_log(&ch))
            .await
            .map_err(|e| Error::Corrupt(format!("reading the log failed: {e}")))??;
        let ready = log.map(ReadyLog::new).transpose()?.map(Arc::new);
        lock(&snap.logs).insert(channel.to_owned(), ready.clone());
        Ok(ready)
    }

    /// Notes that `store` fetched its log at `now` (written by [`Self::flush`]).
    pub fn note_check(&self, store: &str, now: Timestamp) {
        let mut checks = lock(&self.checks);
        match checks.get_mut(store) {
            Some(at) => *at = (*at).max(now),
            None => {
                checks.insert(store.to_owned(), now);
            }
        }
    }

    /// Writes the noted last-check times in one transaction. On failure
    /// they are kept for the next flush.
    pub fn flush(&self, db: &dyn Db) -> Result<usize, Error> {
        let pending: Vec<(String, Timestamp)> = lock(&self.checks).drain().collect();
        if pending.is_empty() {
            return Ok(0);
        }
        match db.record_checks(&pending) {
            Ok(()) => Ok(pending.len()),
            Err(e) => {
                for (store, at) in pending {
                    self.note_check(&store, at);
                }
                Err(e)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
