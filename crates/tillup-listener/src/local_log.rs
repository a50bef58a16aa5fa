//! The local log (DESIGN §1): what each terminal runs now and every upgrade
//! so far. One JSON file, replaced atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::log::{Installed, SeenLog, Warning};

use crate::Error;

/// What the host knows about one terminal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminalRecord {
    pub model: String,
    pub installed: Installed,
    /// The last upgrade result for it, in words.
    #[serde(default)]
    pub last_report: Option<String>,
}

pub use tillup_core::report::{HistoryEntry, HistoryTerminal, Outcome};

/// An update waiting for the store manager's answer (prompt mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingPrompt {
    pub version: Version,
    pub critical: bool,
    pub found: Timestamp,
    /// "Remind me later" until then.
    #[serde(default)]
    pub snoozed_until: Option<Timestamp>,
    /// "Upgrade tonight": run in the next maintenance window.
    #[serde(default)]
    pub tonight: bool,
    /// What the prompt shows of the release (from the signed log).
    #[serde(default)]
    pub date: Option<Timestamp>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub notes: tillup_core::log::Notes,
    /// The terminals it applies to.
    #[serde(default)]
    pub terminals: Vec<u32>,
}

impl PendingPrompt {
    /// `version` found at `found`, with no answer and no release details yet.
    pub fn new(version: Version, critical: bool, found: Timestamp) -> Self {
        PendingPrompt {
            version,
            critical,
            found,
            snoozed_until: None,
            tonight: false,
            date: None,
            size: None,
            notes: tillup_core::log::Notes::default(),
            terminals: Vec::new(),
        }
    }
}

/// The whole local log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalLog {
    /// The newest version log accepted (replay protection).
    pub seen: Option<SeenLog>,
    pub last_check: Option<Timestamp>,
    pub terminals: BTreeMap<u32, TerminalRecord>,
    pub history: Vec<HistoryEntry>,
    #[serde(default)]
    pub pending: Option<PendingPrompt>,
    /// "Skip this version".
    #[serde(default)]
    pub skipped: BTreeSet<Version>,
    /// Warnings of the last check, kept until the next one.
    #[serde(default)]
    pub warnings: Vec<Warning>,
    /// Store reports the server has not received yet.
    #[serde(default)]
    pub unsent_reports: Vec<serde_json::Value>,
}

impl LocalLog {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("local-log.json")
    }

    /// Loads the log; a missing file is an empty log, a damaged one an error
    /// (never silently replaced: it holds the replay protection).
    pub fn load(data_dir: &Path) -> Result<Self, Error> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Damaged {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(tillup_fs::Error::Io { path, source: e }.into()),
        }
    }

    /// Queues a report for the server; one with the same `id` is replaced.
    pub fn queue_report(&mut self, report: serde_json::Value) {
        self.unsent_reports
            .retain(|r| r.get("id") != report.get("id") || report.get("id").is_none());
        self.unsent_reports.push(report);
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), Error> {
        Ok(tillup_fs::write_json_atomic(&Self::path(data_dir), self)?)
    }

    /// Records a finished upgrade: new versions for the terminals that made
    /// it, a history entry for all. Safe to repeat for the same upgrade.
    pub fn record_upgrade(&mut self, entry: HistoryEntry, installed: &BTreeMap<u32, Installed>) {
        let terminals = &entry.terminals;
        for t in terminals {
            if let Some(rec) = self.terminals.get_mut(&t.number) {
                if t.result == Outcome::Upgraded
                    && let Some(inst) = installed.get(&t.number)
                {
                    rec.installed = inst.clone();
                }
                rec.last_report = Some(match &t.failure {
                    None => format!("{} → {}: {}", t.from, t.to, t.result),
                    Some(f) => format!("{} → {}: {} ({f})", t.from, t.to, t.result),
                });
            }
        }
        match self.history.iter_mut().find(|h| h.id == entry.id) {
            Some(h) => *h = entry,
            None => self.history.push(entry),
        }
        if self.terminals.values().all(|t| {
            self.pending
                .as_ref()
                .is_none_or(|p| t.installed.version >= p.version)
        }) {
            self.pending = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_queued_twice_is_sent_once() {
        let mut log = LocalLog::default();
        log.queue_report(serde_json::json!({"id": "u1", "try": 1}));
        log.queue_report(serde_json::json!({"id": "u2"}));
        log.queue_report(serde_json::json!({"id": "u1", "try": 2}));
        let ids: Vec<_> = log
            .unsent_reports
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["u2", "u1"]);
        assert_eq!(log.unsent_reports[1]["try"], 2);
    }

    #[test]
    fn outcomes_pad_in_tables() {
        assert_eq!(format!("[{:<10}]", Outcome::Upgraded), "[upgraded  ]");
    }
}
