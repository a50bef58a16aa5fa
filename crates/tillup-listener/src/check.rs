//! Checking the server's version log: fetch, verify, compare (DESIGN §1).

use std::collections::BTreeMap;
use tillup_core::install::SignedLog;
use tillup_core::keys::{KeyChain, Trust};
use tillup_transfer::bundle::BundleHeader;

use base64::Engine;
use jiff::Timestamp;
use reqwest::StatusCode;
use serde::Serialize;
use tillup_core::Sha256Hex;
use tillup_core::api::SIGNATURE_HEADER;
use tillup_core::log::{
    Comparison, Installed, SeenLog, TerminalView, VersionLog, check_fresh, compare,
};

use crate::local_log::{LocalLog, TerminalRecord};
use crate::{Error, Listener};

/// The log as last downloaded, kept so a 304 can be answered from disk.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedLog {
    etag: Option<String>,
    body: String,
    signature: String,
    /// The server's key chain when the log was fetched.
    #[serde(default)]
    keys: KeyChain,
}

/// What the listener trusts to sign logs (`trust.json`): the root it was
/// configured with, and where following the server's key lists led.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TrustFile {
    /// The configuration's `public_key` this trust started from.
    pinned: String,
    trust: Trust,
}

/// Where a version log comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LogSource<'a> {
    /// The server, asked with the ETag of the log held.
    Server,
    /// A bundle (`tillup import`), with the key lists it carries.
    Bundle(&'a BundleHeader),
}

/// A verified, fresh log.
#[derive(Clone, Debug)]
pub struct VerifiedLog {
    pub log: VersionLog,
    pub digest: Sha256Hex,
    /// Its bytes and signature, for the agents to check on their own.
    pub signed: SignedLog,
}

/// What `tillup check` found.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub checked_at: Timestamp,
    pub sequence: u64,
    /// `up_to_date` or `update_available`.
    pub status: &'static str,
    /// The newest version some terminal will reach.
    pub target: Option<semver::Version>,
    pub critical: bool,
    /// A critical release some terminal here would install, which a staged
    /// rollout has not admitted this store to yet: the daemon checks more
    /// often until its wave comes (see [`crate::schedule::CRITICAL_CHECK`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical_on_the_way: Option<semver::Version>,
    pub comparison: Comparison,
    /// Terminals whose agent did not answer, with why.
    pub unreachable: Vec<(u32, String)>,
    /// Free bytes each reachable terminal reported, for the preflight.
    pub free_bytes: BTreeMap<u32, u64>,
}

impl Listener {
    /// Takes the log from `source` (from the server, a conditional GET),
    /// checks its signature with the configured key and its freshness
    /// against the last log accepted. A server address whose log is
    /// refused (a stale or tampered mirror) is left for the next one, each
    /// tried once.
    pub(crate) async fn fetch_log(
        &self,
        channel: &str,
        now: Timestamp,
        seen: Option<&SeenLog>,
        source: LogSource<'_>,
    ) -> Result<VerifiedLog, Error> {
        let addresses = match source {
            LogSource::Server => self.server.peer().addresses(),
            LogSource::Bundle(_) => 1,
        };
        let mut tried = 1;
        loop {
            match self.take_log(channel, now, seen, source).await {
                Err(
                    e @ (Error::LogRejected(_)
                    | Error::Stale(_)
                    | Error::Untrusted(_)
                    | Error::BadAnswer { .. }),
                ) if tried < addresses => {
                    self.server.peer().move_on(&e);
                    tried += 1;
                }
                other => return other,
            }
        }
    }

    /// [`Listener::fetch_log`] from one address.
    async fn take_log(
        &self,
        channel: &str,
        now: Timestamp,
        seen: Option<&SeenLog>,
        source: LogSource<'_>,
    ) -> Result<VerifiedLog, Error> {
        let cache_path = self.log_cache(channel);
        let cached: Option<CachedLog> = std::fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut fresh = match source {
            LogSource::Server => self.download_log(channel, cached).await?,
            LogSource::Bundle(b) if b.log.len() > tillup_core::log::MAX_LOG_BYTES => {
                return Err(Error::LogRejected(format!(
                    "the bundle's version log is {} bytes, over the {} a log may have: refused",
                    b.log.len(),
                    tillup_core::log::MAX_LOG_BYTES
                )));
            }
            LogSource::Bundle(b) => CachedLog {
                etag: None,
                body: b.log.clone(),
                signature: b.signature.clone(),
                keys: b.keys.clone(),
            },
        };
        let from_server = matches!(source, LogSource::Server);
        // The keys logs may be signed with: from the configured root,
        // along the server's key lists.
        let trust_path = self.data_dir.join("trust.json");
        let pinned = self.config.public_key.trim().to_owned();
        let trust = std::fs::read(&trust_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<TrustFile>(&b).ok())
            .filter(|t| t.pinned == pinned)
            .map_or_else(|| Trust::pinned(&pinned), |t| t.trust);
        let verified = |keys: &KeyChain| {
            let next = trust
                .follow(keys, now)
                .map_err(|e| Error::LogRejected(e.to_string()))?;
            next.verify_log(fresh.body.as_bytes(), &fresh.signature)
                .map_err(|e| Error::LogRejected(format!("the version log's signature does not verify with the configured public key or a key it lists ({e}); nothing was changed")))?;
            Ok::<_, Error>(next)
        };
        // The key lists known already, else the server's newest: they
        // change only when the chain rotates a key. A bundle brings its own.
        let trust = match verified(&fresh.keys) {
            Ok(next) => next,
            Err(first) if !from_server => return Err(first),
            Err(first) => match self.server.keys().await {
                Ok(keys) if keys != fresh.keys => {
                    let next = verified(&keys)?;
                    fresh.keys = keys;
                    next
                }
                Ok(_) => return Err(first),
                Err(e) => {
                    tracing::warn!("could not fetch the key lists: {e}");
                    return Err(first);
                }
            },
        };
        let log = VersionLog::parse(fresh.body.as_bytes())
            .map_err(|e| Error::LogRejected(format!("the signed version log is invalid: {e}")))?;
        let digest = Sha256Hex::of(fresh.body.as_bytes());
        check_fresh(&log, digest, channel, seen, now).map_err(Error::Stale)?;
        tillup_fs::write_json_atomic(&cache_path, &fresh)?;
        tillup_fs::write_json_atomic(&trust_path, &TrustFile { pinned, trust })?;
        Ok(VerifiedLog {
            log,
            digest,
            signed: SignedLog {
                log: fresh.body,
                signature: fresh.signature,
                keys: fresh.keys,
            },
        })
    }

    /// The log from the server: a conditional GET answered from `cached`
    /// on a 304.
    async fn download_log(
        &self,
        channel: &str,
        cached: Option<CachedLog>,
    ) -> Result<CachedLog, Error> {
        let resp = self
            .server
            .log(channel, cached.as_ref().and_then(|c| c.etag.as_deref()))
            .await?;
        let fresh = if resp.status() == StatusCode::NOT_MODIFIED {
            cached.ok_or_else(|| Error::BadAnswer {
                peer: "server".into(),
                what: "fetch the version log".into(),
                message: "304 Not Modified to a request without a cached log".into(),
            })?
        } else {
            let etag = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let sig_b64 = resp
                .headers()
                .get(SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = self
                .server
                .peer()
                .read_limited(
                    "fetch the version log",
                    resp,
                    tillup_core::log::MAX_LOG_BYTES,
                )
                .await?;
            let signature = base64::engine::general_purpose::STANDARD
                .decode(sig_b64.as_bytes())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    Error::LogRejected("the version log came without a signature: refused".into())
                })?;
            let body = String::from_utf8(body.to_vec())
                .map_err(|_| Error::LogRejected("the version log is not UTF-8: refused".into()))?;
            CachedLog {
                etag,
                body,
                signature,
                // Asked for only when the log needs them (below).
                keys: cached.map(|c| c.keys).unwrap_or_default(),
            }
        };
        Ok(fresh)
    }

    /// Where the log of `channel` last downloaded is kept: the store's
    /// channel in `log-cache.json`, another (tillup's own) beside it.
    fn log_cache(&self, channel: &str) -> std::path::PathBuf {
        if channel == self.config.channel {
            self.data_dir.join("log-cache.json")
        } else {
            self.data_dir.join(format!("log-cache-{channel}.json"))
        }
    }

    /// The log last fetched and verified, exactly as signed.
    pub(crate) fn last_verified_log(&self) -> Result<SignedLog, Error> {
        let path = self.log_cache(&self.config.channel);
        let cached: CachedLog =
            serde_json::from_slice(&std::fs::read(&path).map_err(|e| tillup_fs::Error::Io {
                path: path.clone(),
                source: e,
            })?)
            .map_err(|e| Error::Damaged {
                path,
                message: e.to_string(),
            })?;
        Ok(SignedLog {
            log: cached.body,
            signature: cached.signature,
            keys: cached.keys,
        })
    }

    /// The whole check: verified log, each terminal's state, the compare
    /// rule. Records the accepted log and the findings in the local log.
    pub async fn check(&self, now: Timestamp) -> Result<(VerifiedLog, CheckReport), Error> {
        let _lock = self.exclusive()?;
        self.check_locked(now).await
    }

    pub(crate) async fn check_locked(
        &self,
        now: Timestamp,
    ) -> Result<(VerifiedLog, CheckReport), Error> {
        self.check_from(now, LogSource::Server).await
    }

    /// The whole check, with the log from `source`.
    pub(crate) async fn check_from(
        &self,
        now: Timestamp,
        source: LogSource<'_>,
    ) -> Result<(VerifiedLog, CheckReport), Error> {
        let mut local = LocalLog::load(&self.data_dir)?;
        let verified = self
            .fetch_log(&self.config.channel, now, local.seen.as_ref(), source)
            .await?;
        let statuses = self.agent_statuses().await;
        let mut unreachable = Vec::new();
        // The agents tell what really runs; the local log learns it.
        for (n, status) in &statuses {
            match status {
                Ok(s) => {
                    let Some(version) = s.version.clone() else {
                        unreachable.push((
                            *n,
                            "its agent cannot read the program folder's version".to_owned(),
                        ));
                        continue;
                    };
                    let known = local
                        .terminals
                        .get(n)
                        .filter(|r| r.installed.version == version)
                        .map(|r| r.installed.clone());
                    let installed =
                        known.unwrap_or_else(|| installed_from_log(&verified.log, version));
                    local.terminals.insert(
                        *n,
                        TerminalRecord {
                            model: s.model.clone(),
                            installed,
                            last_report: local.terminals.get(n).and_then(|r| r.last_report.clone()),
                        },
                    );
                }
                Err(e) => unreachable.push((*n, e.to_string())),
            }
        }
        let views: Vec<TerminalView<'_>> = local
            .terminals
            .iter()
            .filter(|(n, _)| {
                statuses.get(n).is_some_and(|s| s.is_ok())
                    && !unreachable.iter().any(|(u, _)| u == *n)
            })
            .map(|(n, r)| TerminalView {
                number: *n,
                model: &r.model,
                installed: &r.installed,
            })
            .collect();
        // A release a staged rollout has not admitted this store to yet
        // is, for this store, not there (the admission is signed).
        let comparison = compare(&verified.log.for_store(&self.config.store_id), &views);
        // Only with nothing to install here: is a critical release on its
        // way to this store through a rollout?
        let critical_on_the_way = if comparison.update_target().is_none() {
            let whole = compare(&verified.log, &views);
            whole
                .update_target()
                .filter(|_| whole.is_critical())
                .cloned()
        } else {
            None
        };
        let report = CheckReport {
            checked_at: now,
            sequence: verified.log.sequence,
            status: if comparison.update_target().is_some() {
                "update_available"
            } else {
                "up_to_date"
            },
            target: comparison.update_target().cloned(),
            critical: comparison.is_critical(),
            critical_on_the_way,
            comparison,
            unreachable,
            free_bytes: statuses
                .iter()
                .filter_map(|(n, s)| Some((*n, s.as_ref().ok()?.free_bytes)))
                .collect(),
        };
        local.seen = Some(SeenLog {
            sequence: verified.log.sequence,
            digest: verified.digest,
        });
        local.last_check = Some(now);
        // A new finding is reported to the chain's IT, once.
        let new_warnings =
            !report.comparison.warnings.is_empty() && report.comparison.warnings != local.warnings;
        if new_warnings {
            local.queue_report(serde_json::json!({
                "id": format!("warnings-{}", verified.log.sequence),
                "kind": "warnings",
                "store": self.config.store_id,
                "checked_at": now,
                "warnings": report.comparison.warnings,
                "messages": report.comparison.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
        local.warnings = report.comparison.warnings.clone();
        local.save(&self.data_dir)?;
        // The server answered: what waits for it goes now (reports of an
        // upgrade from a bundle, new warnings).
        if matches!(source, LogSource::Server)
            && !local.unsent_reports.is_empty()
            && let Err(e) = self.send_unsent_reports().await
        {
            tracing::warn!("the reports stay queued for the server: {e}");
        }
        for w in &report.comparison.warnings {
            tracing::warn!("{w}");
        }
        Ok((verified, report))
    }
}

/// What the local log records for a version first seen on a terminal.
fn installed_from_log(log: &VersionLog, version: semver::Version) -> Installed {
    match log.release(&version) {
        Some(r) => Installed {
            version,
            date: Some(r.date),
            size: Some(r.size),
            sha256: Some(r.sha256),
        },
        None => Installed {
            version,
            date: None,
            size: None,
            sha256: None,
        },
    }
}
