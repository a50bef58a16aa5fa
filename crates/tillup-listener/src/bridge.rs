//! What the window shows and what it may ask, in the words both processes
//! share: the resident tray (`tillup-tray`) owns the listener; the window
//! (`tillup-window`, a Tauri app in its own process) only draws a
//! [`Snapshot`] and sends [`Request`]s. One JSON object per line over the
//! window's stdin (to it) and stdout (from it).
//!
//! Everything the window draws is computed here, from the local log, the
//! configuration and the running upgrade ([`snapshot`]), so it is tested
//! without a display; the settings the window saves are checked here too
//! ([`Settings::apply`]).

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::log::Notes;
use tillup_core::upgrade::{Step, Upgrade};

use crate::config::{Config, Mode, Terminal};
use crate::local_log::{HistoryEntry, LocalLog};
use crate::schedule::Answer;
use crate::view::{Lang, TrayView, tray_view};

/// Which page the window shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Page {
    /// The small upgrade confirmation.
    Popup,
    /// The whole window: terminals, the running upgrade, history, settings.
    #[default]
    Window,
}

impl Page {
    /// Its name on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Page::Popup => "popup",
            Page::Window => "window",
        }
    }
}

/// Resident → window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWindow {
    /// Everything to draw; sent when the window says it is ready and after
    /// every change.
    Snapshot(Box<Snapshot>),
    /// The end of request `id`: `error` is a sentence for the store manager.
    Reply { id: u64, error: Option<String> },
    /// Come forward and show `page`.
    Show { page: Page },
}

/// Window → resident: request `id` (answered by [`ToWindow::Reply`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FromWindow {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Send a snapshot now.
    Ready,
    /// The answer to the upgrade prompt.
    Answer {
        answer: Answer,
    },
    CheckNow,
    /// Upgrade now, prompt or not (e.g. after a failed upgrade).
    UpgradeNow,
    SaveSettings {
        settings: Settings,
    },
}

/// The upgrade prompt's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub version: Version,
    pub date: Option<Timestamp>,
    /// Bytes of the release's files.
    pub size: Option<u64>,
    pub notes: Notes,
    pub critical: bool,
    /// The terminals it applies to.
    pub terminals: Vec<u32>,
    /// When "Upgrade tonight" runs: the maintenance window's start, `HH:MM`.
    pub tonight_at: String,
    /// "Upgrade tonight" was chosen already.
    pub tonight: bool,
    pub snoozed_until: Option<Timestamp>,
}

/// A terminal's state, as the window names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TerminalState {
    /// Not seen by any check yet.
    Unknown,
    UpToDate,
    UpdateAvailable {
        to: Version,
    },
    /// In the running upgrade, at `step` ([`step_name`]).
    Upgrading {
        step: String,
    },
    /// The last upgrade failed here and the old release runs.
    Failed {
        to: Version,
    },
}

/// One row of the terminals table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TerminalRow {
    pub number: u32,
    pub address: String,
    pub model: Option<String>,
    pub version: Option<Version>,
    #[serde(flatten)]
    pub state: TerminalState,
    pub last_report: Option<String>,
}

/// One terminal of the running upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressRow {
    pub number: u32,
    pub from: Version,
    pub to: Version,
    /// [`step_name`] of its step.
    pub step: String,
    pub failure: Option<String>,
}

/// The running upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    pub started: Timestamp,
    pub done: usize,
    pub total: usize,
    pub terminals: Vec<ProgressRow>,
    /// During a long transfer: bytes moved of bytes to move, time left.
    pub transfer: Option<crate::progress::TransferProgress>,
}

/// What the settings page edits: the part of the configuration a store
/// manager (or the chain's IT on the phone) may change, and autostart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: String,
    pub mode: Mode,
    /// The maintenance window, `HH:MM`.
    pub window_start: String,
    pub window_end: String,
    pub check_interval_minutes: u64,
    pub terminals: Vec<SettingsTerminal>,
    /// Start the tray at login.
    pub autostart: bool,
}

/// A terminal as the settings page edits it. Its token is write-only: the
/// page never receives one, and an empty one keeps the token configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingsTerminal {
    pub number: u32,
    pub address: String,
    /// A new token for the terminal's agent; empty keeps the one configured.
    #[serde(default)]
    pub token: String,
    /// Whether a token is configured (the page says "unchanged").
    #[serde(default)]
    pub token_set: bool,
}

impl Settings {
    pub fn of(config: &Config, autostart: bool) -> Self {
        Settings {
            server: config.server.clone(),
            mode: config.mode,
            window_start: config.window.start.clone(),
            window_end: config.window.end.clone(),
            check_interval_minutes: config.check.interval_minutes,
            terminals: config
                .terminals
                .iter()
                .map(|t| SettingsTerminal {
                    number: t.number,
                    address: t.address.clone(),
                    token: String::new(),
                    token_set: !t.token.is_empty(),
                })
                .collect(),
            autostart,
        }
    }

    /// `config` with these settings, checked as a configuration file is
    /// (`Config::validate`); the error names the field and what to write.
    pub fn apply(&self, config: &Config) -> Result<Config, String> {
        let mut new = config.clone();
        new.server = self.server.trim().to_owned();
        new.mode = self.mode;
        new.window.start = self.window_start.trim().to_owned();
        new.window.end = self.window_end.trim().to_owned();
        new.check.interval_minutes = self.check_interval_minutes;
        new.terminals = self
            .terminals
            .iter()
            .map(|t| {
                let old = config.terminals.iter().find(|old| old.number == t.number);
                Terminal {
                    number: t.number,
                    address: t.address.trim().to_owned(),
                    token: match t.token.trim() {
                        "" => old.map(|old| old.token.clone()).unwrap_or_default(),
                        new => new.to_owned(),
                    },
                    // Pairing is `tillup pair`'s: the page keeps what it finds.
                    cert_sha256: old.and_then(|old| old.cert_sha256.clone()),
                }
            })
            .collect();
        new.terminals.sort_by_key(|t| t.number);
        // A canary that is no longer a terminal falls back to the lowest.
        if new
            .canary
            .is_some_and(|c| !new.terminals.iter().any(|t| t.number == c))
        {
            new.canary = None;
        }
        new.validate()?;
        Ok(new)
    }
}

/// Everything the window draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub lang: Lang,
    pub view: TrayView,
    /// A check or an upgrade is running: actions wait.
    pub busy: bool,
    /// What went wrong last, in words.
    pub problem: Option<String>,
    pub last_check: Option<Timestamp>,
    pub prompt: Option<Prompt>,
    pub terminals: Vec<TerminalRow>,
    pub upgrade: Option<Progress>,
    /// Newest first.
    pub history: Vec<HistoryEntry>,
    pub skipped: Vec<Version>,
    pub settings: Settings,
}

/// The words the window's language table has for each step.
pub fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Planned => "planned",
        Step::Prepared => "prepared",
        Step::Stopped => "stopped",
        Step::Collected => "collected",
        Step::Staged => "staged",
        Step::Committed => "installed",
        Step::Started => "health_check",
        Step::Upgraded => "upgraded",
        Step::Restoring { .. } => "restoring",
        Step::Restored => "restored",
        Step::Abandoned { .. } => "abandoned",
    }
}

/// The inputs of a [`Snapshot`] that are not the local log.
pub struct Context<'a> {
    pub config: &'a Config,
    pub running: Option<&'a Upgrade>,
    pub lang: Lang,
    pub busy: bool,
    pub problem: Option<String>,
    pub autostart: bool,
    /// The running upgrade's transfer, if one moves bytes now.
    pub transfer: Option<crate::progress::TransferProgress>,
}

/// The window's whole view: a pure function of the local log, the
/// configuration and the running upgrade.
pub fn snapshot(log: &LocalLog, cx: Context<'_>) -> Snapshot {
    let running = cx.running.filter(|u| !u.is_done());
    let view = tray_view(log, running, cx.lang);
    let last = log.history.last();
    let prompt = log
        .pending
        .as_ref()
        .filter(|p| !log.skipped.contains(&p.version) || p.critical)
        .map(|p| Prompt {
            version: p.version.clone(),
            date: p.date,
            size: p.size,
            notes: p.notes.clone(),
            critical: p.critical,
            terminals: p.terminals.clone(),
            tonight_at: cx.config.window.start.clone(),
            tonight: p.tonight,
            snoozed_until: p.snoozed_until,
        });
    let terminals = cx
        .config
        .terminals
        .iter()
        .map(|t| {
            let record = log.terminals.get(&t.number);
            let version = record.map(|r| r.installed.version.clone());
            let in_run = running.and_then(|u| u.terminals.get(&t.number));
            let failed = last.and_then(|h| {
                h.terminals
                    .iter()
                    .find(|x| {
                        x.number == t.number && x.result != crate::local_log::Outcome::Upgraded
                    })
                    .filter(|x| version.as_ref() != Some(&x.to))
                    .map(|x| x.to.clone())
            });
            let state = if let Some(run) = in_run {
                TerminalState::Upgrading {
                    step: step_name(&run.step).to_owned(),
                }
            } else if let Some(to) = failed {
                TerminalState::Failed { to }
            } else if let Some(p) = prompt.as_ref().filter(|p| p.terminals.contains(&t.number)) {
                TerminalState::UpdateAvailable {
                    to: p.version.clone(),
                }
            } else if version.is_some() {
                TerminalState::UpToDate
            } else {
                TerminalState::Unknown
            };
            TerminalRow {
                number: t.number,
                address: t.address.clone(),
                model: record.map(|r| r.model.clone()),
                version,
                state,
                last_report: record.and_then(|r| r.last_report.clone()),
            }
        })
        .collect();
    let upgrade = running.map(|u| {
        let (done, total) = u.progress();
        Progress {
            id: u.id.clone(),
            started: u.started,
            done,
            total,
            transfer: cx.transfer.clone(),
            terminals: u
                .terminals
                .values()
                .map(|t| ProgressRow {
                    number: t.number,
                    from: t.from.clone(),
                    to: t.to.clone(),
                    step: step_name(&t.step).to_owned(),
                    failure: t.failure.as_ref().map(|f| f.message.clone()),
                })
                .collect(),
        }
    });
    Snapshot {
        lang: cx.lang,
        view,
        busy: cx.busy,
        problem: cx.problem,
        last_check: log.last_check,
        prompt,
        terminals,
        upgrade,
        history: log.history.iter().rev().cloned().collect(),
        skipped: log.skipped.iter().cloned().collect(),
        settings: Settings::of(cx.config, cx.autostart),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tillup_core::log::Installed;
    use tillup_core::upgrade::Trigger;

    use super::*;
    use crate::local_log::{HistoryTerminal, Outcome, PendingPrompt, TerminalRecord};

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn config() -> Config {
        let key = tillup_core::sign::generate_keys().unwrap().public_line;
        Config::parse(&format!(
            r#"server = "http://127.0.0.1:9"
public_key = "{key}"
store_id = "s1"
store_token = "t"
canary = 2
[window]
start = "02:30"
end = "04:00"
[[terminals]]
number = 1
address = "https://10.0.0.1:8710"
token = "a"
[[terminals]]
number = 2
address = "https://10.0.0.2:8710"
token = "b"
[[terminals]]
number = 3
address = "https://10.0.0.3:8710"
token = "c"
"#
        ))
        .unwrap()
    }

    fn record(version: &str) -> TerminalRecord {
        TerminalRecord {
            model: "T1".into(),
            installed: Installed {
                version: v(version),
                date: None,
                size: None,
                sha256: None,
            },
            last_report: Some("upgraded".into()),
        }
    }

    fn cx(config: &Config) -> Context<'_> {
        Context {
            config,
            running: None,
            lang: Lang::ZhCn,
            busy: false,
            problem: None,
            autostart: true,
            transfer: None,
        }
    }

    fn pending(version: &str, critical: bool) -> PendingPrompt {
        PendingPrompt {
            date: Some(Timestamp::UNIX_EPOCH),
            size: Some(1234),
            notes: Notes {
                en: "faster receipts".into(),
                zh_cn: "更快的小票".into(),
            },
            terminals: vec![1, 3],
            ..PendingPrompt::new(v(version), critical, Timestamp::UNIX_EPOCH)
        }
    }

    #[test]
    fn a_prompt_carries_the_release_and_the_window_start() {
        let config = config();
        let mut log = LocalLog {
            terminals: BTreeMap::from([
                (1, record("1.0.0")),
                (2, record("1.1.0")),
                (3, record("1.0.0")),
            ]),
            pending: Some(pending("1.1.0", false)),
            ..LocalLog::default()
        };
        let s = snapshot(&log, cx(&config));
        let p = s.prompt.as_ref().unwrap();
        assert_eq!(p.version, v("1.1.0"));
        assert_eq!(p.tonight_at, "02:30");
        assert_eq!(p.terminals, [1, 3]);
        assert_eq!(p.notes.zh_cn, "更快的小票");
        let states: Vec<_> = s.terminals.iter().map(|t| t.state.clone()).collect();
        assert_eq!(
            states,
            [
                TerminalState::UpdateAvailable { to: v("1.1.0") },
                TerminalState::UpToDate,
                TerminalState::UpdateAvailable { to: v("1.1.0") },
            ]
        );
        assert_eq!(s.lang, Lang::ZhCn);
        assert!(s.settings.autostart);
        // Skipped: no prompt, unless it is critical.
        log.skipped.insert(v("1.1.0"));
        assert!(snapshot(&log, cx(&config)).prompt.is_none());
        log.pending = Some(pending("1.1.0", true));
        assert!(snapshot(&log, cx(&config)).prompt.is_some());
    }

    #[test]
    fn a_terminal_left_on_the_old_release_shows_failed_until_it_is_upgraded() {
        let config = config();
        let history = |result| HistoryEntry {
            id: "u1".into(),
            started: Timestamp::UNIX_EPOCH,
            finished: Some(Timestamp::UNIX_EPOCH),
            trigger: Trigger::Schedule,
            terminals: vec![HistoryTerminal {
                number: 3,
                from: v("1.0.0"),
                to: v("1.1.0"),
                result,
                stopped_ms: Some(300),
                failure: Some("health: no answer".into()),
                failed_at: None,
                model: None,
            }],
            left_out: vec![],
            halted: None,
            reported: true,
        };
        let mut log = LocalLog {
            terminals: BTreeMap::from([(3, record("1.0.0"))]),
            history: vec![history(Outcome::Restored)],
            ..LocalLog::default()
        };
        let s = snapshot(&log, cx(&config));
        assert_eq!(
            s.terminals[2].state,
            TerminalState::Failed { to: v("1.1.0") }
        );
        assert_eq!(s.terminals[0].state, TerminalState::Unknown);
        assert_eq!(s.history.len(), 1);
        // Upgraded by hand since: no longer failed.
        log.terminals.insert(3, record("1.1.0"));
        assert_eq!(
            snapshot(&log, cx(&config)).terminals[2].state,
            TerminalState::UpToDate
        );
    }

    #[test]
    fn a_running_transfer_shows_its_bytes_and_time_left() {
        use crate::progress::{Moving, TransferProgress};
        use tillup_core::upgrade::{Planned, Policy, Trigger, Upgrade};
        let config = config();
        let u = Upgrade::new(
            "u1".into(),
            "stable".into(),
            Timestamp::UNIX_EPOCH,
            Trigger::Schedule,
            vec![Planned {
                number: 1,
                from: v("1.0.0"),
                to: v("1.1.0"),
            }],
            Policy::default(),
        );
        let moving = TransferProgress {
            moving: Moving::ToHost,
            done: 120_000_000,
            total: 218_000_000,
            eta_secs: Some(3),
        };
        let snap = snapshot(
            &LocalLog::default(),
            Context {
                running: Some(&u),
                transfer: Some(moving.clone()),
                ..cx(&config)
            },
        );
        assert_eq!(snap.upgrade.unwrap().transfer, Some(moving));
        let idle = snapshot(&LocalLog::default(), cx(&config));
        assert!(idle.upgrade.is_none());
    }

    #[test]
    fn settings_are_checked_before_they_replace_the_configuration() {
        let config = config();
        let mut s = Settings::of(&config, false);
        assert_eq!(s.apply(&config).unwrap().server, config.server);
        s.server = "updates.example.com".into();
        let e = s.apply(&config).unwrap_err();
        assert!(e.starts_with("server"), "{e}");
        s.server = " https://updates.example.com ".into();
        s.window_start = "25:00".into();
        assert!(s.apply(&config).unwrap_err().contains("HH:MM"));
        s.window_start = "01:00".into();
        s.check_interval_minutes = 0;
        assert!(s.apply(&config).unwrap_err().contains("interval"));
        s.check_interval_minutes = 30;
        // Dropping the canary terminal lets the lowest be the canary.
        s.terminals.retain(|t| t.number != 2);
        let new = s.apply(&config).unwrap();
        assert_eq!(new.server, "https://updates.example.com");
        assert_eq!(new.canary, None);
        assert_eq!(new.check.interval_minutes, 30);
        assert_eq!(new.store_token, config.store_token, "untouched fields stay");
        s.terminals.push(s.terminals[0].clone());
        assert!(s.apply(&config).unwrap_err().contains("twice"));
        s.terminals.pop();
        // Tokens are write-only: none reaches the page, an empty one keeps
        // the configured one, a new one replaces it, a new terminal needs one.
        let shown = Settings::of(&config, false);
        assert!(
            shown
                .terminals
                .iter()
                .all(|t| t.token.is_empty() && t.token_set),
            "{shown:?}"
        );
        let kept = s.apply(&config).unwrap();
        assert_eq!(kept.terminals[0].token, config.terminals[0].token);
        s.terminals[0].token = " fresh ".into();
        assert_eq!(s.apply(&config).unwrap().terminals[0].token, "fresh");
        s.terminals.push(SettingsTerminal {
            number: 9,
            address: "http://127.0.0.1:9".into(),
            token: String::new(),
            token_set: false,
        });
        assert!(s.apply(&config).unwrap_err().contains("token"));
    }

    #[test]
    fn the_protocol_is_one_json_object_per_request() {
        let line = r#"{"id":7,"kind":"answer","answer":"skip"}"#;
        let req: FromWindow = serde_json::from_str(line).unwrap();
        assert_eq!(
            req,
            FromWindow {
                id: 7,
                request: Request::Answer {
                    answer: Answer::Skip
                }
            }
        );
        assert_eq!(serde_json::to_string(&req).unwrap(), line);
        let reply = ToWindow::Reply {
            id: 7,
            error: Some("no".into()),
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"type":"reply","id":7,"error":"no"}"#
        );
        assert!(serde_json::from_str::<FromWindow>(r#"{"id":1,"kind":"format_disk"}"#).is_err());
    }
}
