//! What a store tells head office about an upgrade: the history line the
//! host keeps in its local log, which is also the `upgrade` of the report
//! it sends the server ([`HistoryEntry`]). Head office reads a store's
//! result for a release from it ([`HistoryEntry::result_for`]).

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::upgrade::{Step, Trigger, Upgrade};

/// How a terminal's part of an upgrade ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// On the new release, healthy.
    Upgraded,
    /// Back on the old release, running.
    Restored,
    /// Could not be put back and restarted: someone must look at it.
    Abandoned,
    InProgress,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Outcome::Upgraded => "upgraded",
            Outcome::Restored => "restored",
            Outcome::Abandoned => "abandoned",
            Outcome::InProgress => "in progress",
        })
    }
}

/// One terminal's line in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryTerminal {
    pub number: u32,
    pub from: Version,
    pub to: Version,
    pub result: Outcome,
    pub stopped_ms: Option<i64>,
    pub failure: Option<String>,
    /// When it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
    /// Its model, as its agent reports it (the listener fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// One upgrade in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: String,
    pub started: Timestamp,
    pub finished: Option<Timestamp>,
    pub trigger: Trigger,
    pub terminals: Vec<HistoryTerminal>,
    /// Terminals that could not be reached and were left out.
    #[serde(default)]
    pub left_out: Vec<(u32, String)>,
    /// Why the upgrade halted before every terminal was installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    pub reported: bool,
}

impl HistoryEntry {
    /// The history line (and the store report) of an upgrade.
    pub fn of(u: &Upgrade, left_out: Vec<(u32, String)>) -> Self {
        let terminals = u
            .terminals
            .values()
            .map(|t| HistoryTerminal {
                number: t.number,
                from: t.from.clone(),
                to: t.to.clone(),
                result: match &t.step {
                    Step::Upgraded => Outcome::Upgraded,
                    Step::Restored => Outcome::Restored,
                    Step::Abandoned { .. } => Outcome::Abandoned,
                    _ => Outcome::InProgress,
                },
                stopped_ms: t.stopped_for().map(|d| d.as_millis() as i64),
                failure: t.failure.as_ref().map(|f| match &t.step {
                    Step::Abandoned { restart_error } => format!(
                        "{}: {}; restart failed: {restart_error}",
                        f.during, f.message
                    ),
                    _ => format!("{}: {}", f.during, f.message),
                }),
                failed_at: t.failure.as_ref().map(|f| f.at),
                model: None,
            })
            .collect();
        HistoryEntry {
            id: u.id.clone(),
            started: u.started,
            finished: u.finished,
            trigger: u.trigger.clone(),
            terminals,
            left_out,
            halted: u.halted.as_ref().map(|h| h.message.clone()),
            reported: u.reported,
        }
    }
}

/// How a store's upgrade to a release went, as head office counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Every terminal it took to the release runs it, healthy.
    Succeeded,
    /// It failed (a failed canary included), with why.
    Failed(String),
    /// Not over yet.
    Running,
}

impl HistoryEntry {
    /// The store's outcome for `version`, if this upgrade took any
    /// terminal to it. (A report is made as the upgrade ends, before it is
    /// marked finished: every terminal's result says whether it is over.)
    pub fn result_for(&self, version: &Version) -> Option<StoreOutcome> {
        let mine: Vec<&HistoryTerminal> =
            self.terminals.iter().filter(|t| &t.to == version).collect();
        if mine.is_empty() {
            return None;
        }
        let failed: Vec<String> = mine
            .iter()
            .filter(|t| matches!(t.result, Outcome::Restored | Outcome::Abandoned))
            .map(|t| {
                format!(
                    "terminal {} {}: {}",
                    t.number,
                    t.result,
                    t.failure.as_deref().unwrap_or("no reason given")
                )
            })
            .collect();
        Some(if !failed.is_empty() {
            StoreOutcome::Failed(failed.join("; "))
        } else if let Some(why) = &self.halted {
            StoreOutcome::Failed(why.clone())
        } else if mine.iter().all(|t| t.result == Outcome::Upgraded) {
            StoreOutcome::Succeeded
        } else {
            StoreOutcome::Running
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(n: u32, to: &str, result: Outcome, failure: Option<&str>) -> HistoryTerminal {
        HistoryTerminal {
            number: n,
            from: "1.0.0".parse().unwrap(),
            to: to.parse().unwrap(),
            result,
            stopped_ms: None,
            failure: failure.map(str::to_owned),
            failed_at: None,
            model: None,
        }
    }

    fn entry(terminals: Vec<HistoryTerminal>, finished: bool) -> HistoryEntry {
        HistoryEntry {
            id: "u1".into(),
            started: "2026-12-02T03:00:00Z".parse().unwrap(),
            finished: finished.then(|| "2026-12-02T03:10:00Z".parse().unwrap()),
            trigger: Trigger::Schedule,
            terminals,
            left_out: vec![],
            halted: None,
            reported: false,
        }
    }

    #[test]
    fn a_store_succeeds_only_when_every_terminal_runs_the_release() {
        let v: Version = "1.1.0".parse().unwrap();
        let ok = entry(
            vec![
                terminal(1, "1.1.0", Outcome::Upgraded, None),
                terminal(2, "1.1.0", Outcome::Upgraded, None),
            ],
            true,
        );
        assert_eq!(ok.result_for(&v), Some(StoreOutcome::Succeeded));
        assert_eq!(ok.result_for(&"1.2.0".parse().unwrap()), None);
        let running = entry(
            vec![
                terminal(1, "1.1.0", Outcome::Upgraded, None),
                terminal(2, "1.1.0", Outcome::InProgress, None),
            ],
            false,
        );
        assert_eq!(running.result_for(&v), Some(StoreOutcome::Running));
        let canary = entry(
            vec![
                terminal(1, "1.1.0", Outcome::Restored, Some("health: not ready")),
                terminal(2, "1.1.0", Outcome::InProgress, None),
            ],
            true,
        );
        let Some(StoreOutcome::Failed(why)) = canary.result_for(&v) else {
            panic!("a failed canary fails the store");
        };
        assert!(
            why.contains("terminal 1 restored: health: not ready"),
            "{why}"
        );
    }
}
