//! What the tray shows: one pure function of the local log and the running
//! upgrade, so that every state is unit-tested here and the tray shell only
//! draws what it is given.

use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::upgrade::Upgrade;

use crate::local_log::{LocalLog, Outcome};

/// The language of what the store manager reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lang {
    #[default]
    #[serde(rename = "en")]
    En,
    #[serde(rename = "zh-CN")]
    ZhCn,
}

impl Lang {
    /// From a locale name (`zh_CN.UTF-8`, `zh-Hans`, `en_US`): Chinese for
    /// any `zh`, English otherwise.
    /// Its name on the command line and in JSON: `en` or `zh-CN`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    pub fn from_locale(locale: &str) -> Self {
        if locale.to_ascii_lowercase().starts_with("zh") {
            Lang::ZhCn
        } else {
            Lang::En
        }
    }
}

/// The tray's state, most urgent first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TrayState {
    /// An upgrade is running: `done` of `total` terminals finished.
    Upgrading { done: usize, total: usize },
    /// The last upgrade left these terminals on their old release.
    Failed {
        version: Version,
        terminals: Vec<u32>,
    },
    /// An update waits for the store manager's answer.
    UpdateAvailable {
        version: Version,
        critical: bool,
        /// "Upgrade tonight" was chosen.
        tonight: bool,
    },
    /// Every terminal on the versions below (lowest, highest).
    UpToDate {
        versions: Option<(Version, Version)>,
    },
}

/// Which icon the tray draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Icon {
    Idle,
    Available,
    Busy,
    Error,
}

/// Everything the tray draws.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrayView {
    pub state: TrayState,
    pub icon: Icon,
    pub tooltip: String,
    /// Whether the menu offers "Upgrade now".
    pub upgrade_now: bool,
}

/// The tray's view of `log`, with `running` the upgrade in progress, if any.
pub fn tray_view(log: &LocalLog, running: Option<&Upgrade>, lang: Lang) -> TrayView {
    let state = state(log, running);
    let icon = match state {
        TrayState::Upgrading { .. } => Icon::Busy,
        TrayState::Failed { .. } => Icon::Error,
        TrayState::UpdateAvailable { .. } => Icon::Available,
        TrayState::UpToDate { .. } => Icon::Idle,
    };
    // A failed upgrade is tried again as soon as the manager asks.
    let upgrade_now = matches!(
        state,
        TrayState::UpdateAvailable { .. } | TrayState::Failed { .. }
    );
    TrayView {
        tooltip: tooltip(&state, lang),
        state,
        icon,
        upgrade_now,
    }
}

fn state(log: &LocalLog, running: Option<&Upgrade>) -> TrayState {
    if let Some(u) = running.filter(|u| !u.is_done()) {
        let (done, total) = u.progress();
        return TrayState::Upgrading { done, total };
    }
    if let Some(last) = log.history.last() {
        let failed: Vec<u32> = last
            .terminals
            .iter()
            .filter(|t| t.result != Outcome::Upgraded)
            .map(|t| t.number)
            .collect();
        if let Some(version) = last
            .terminals
            .iter()
            .filter(|t| failed.contains(&t.number))
            .map(|t| t.to.clone())
            .max()
        {
            return TrayState::Failed {
                version,
                terminals: failed,
            };
        }
    }
    if let Some(p) = log
        .pending
        .as_ref()
        .filter(|p| !log.skipped.contains(&p.version))
    {
        return TrayState::UpdateAvailable {
            version: p.version.clone(),
            critical: p.critical,
            tonight: p.tonight,
        };
    }
    let versions = log.terminals.values().map(|t| &t.installed.version);
    let low = versions.clone().min().cloned();
    let high = versions.max().cloned();
    TrayState::UpToDate {
        versions: low.zip(high),
    }
}

fn list(numbers: &[u32], sep: &str) -> String {
    numbers
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn tooltip(state: &TrayState, lang: Lang) -> String {
    let range = |v: &Option<(Version, Version)>| match v {
        Some((lo, hi)) if lo == hi => lo.to_string(),
        Some((lo, hi)) => format!("{lo}–{hi}"),
        None => String::new(),
    };
    match (lang, state) {
        (Lang::En, TrayState::Upgrading { done, total }) => {
            format!("tillup: upgrading ({} of {total})", (done + 1).min(*total))
        }
        (Lang::ZhCn, TrayState::Upgrading { done, total }) => {
            format!(
                "tillup：正在升级（第 {} 台，共 {total} 台）",
                (done + 1).min(*total)
            )
        }
        (Lang::En, TrayState::Failed { version, terminals }) => format!(
            "tillup: the upgrade to {version} failed on terminal {}",
            list(terminals, ", ")
        ),
        (Lang::ZhCn, TrayState::Failed { version, terminals }) => format!(
            "tillup：升级到 {version} 失败（终端 {}）",
            list(terminals, "、")
        ),
        (
            Lang::En,
            TrayState::UpdateAvailable {
                version,
                critical,
                tonight,
            },
        ) => format!(
            "tillup: {}update {version} available{}",
            if *critical { "critical " } else { "" },
            if *tonight { ", upgrading tonight" } else { "" }
        ),
        (
            Lang::ZhCn,
            TrayState::UpdateAvailable {
                version,
                critical,
                tonight,
            },
        ) => format!(
            "tillup：有{}更新 {version}{}",
            if *critical { "重要" } else { "" },
            if *tonight { "，今晚升级" } else { "" }
        ),
        (Lang::En, TrayState::UpToDate { versions }) => match versions {
            Some(_) => format!("tillup: up to date ({})", range(versions)),
            None => "tillup: up to date".to_owned(),
        },
        (Lang::ZhCn, TrayState::UpToDate { versions }) => match versions {
            Some(_) => format!("tillup：已是最新版本（{}）", range(versions)),
            None => "tillup：已是最新版本".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use tillup_core::log::Installed;
    use tillup_core::upgrade::{Effect, Event, Planned, Policy, Trigger};

    use super::*;
    use crate::local_log::{HistoryEntry, HistoryTerminal, PendingPrompt, TerminalRecord};

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn store(versions: &[&str]) -> LocalLog {
        let mut log = LocalLog::default();
        for (i, ver) in versions.iter().enumerate() {
            log.terminals.insert(
                i as u32 + 1,
                TerminalRecord {
                    model: "CP-500".into(),
                    installed: Installed {
                        version: v(ver),
                        date: None,
                        size: None,
                        sha256: None,
                    },
                    last_report: None,
                },
            );
        }
        log
    }

    fn pending(version: &str, critical: bool) -> PendingPrompt {
        PendingPrompt::new(v(version), critical, Timestamp::UNIX_EPOCH)
    }

    fn history(results: &[Outcome]) -> HistoryEntry {
        HistoryEntry {
            id: "u".into(),
            started: Timestamp::UNIX_EPOCH,
            finished: Some(Timestamp::UNIX_EPOCH),
            trigger: Trigger::Schedule,
            terminals: results
                .iter()
                .enumerate()
                .map(|(i, r)| HistoryTerminal {
                    number: i as u32 + 1,
                    from: v("1.0.0"),
                    to: v("1.1.0"),
                    result: *r,
                    stopped_ms: None,
                    failure: None,
                    failed_at: None,
                    model: None,
                })
                .collect(),
            left_out: vec![],
            halted: None,
            reported: true,
        }
    }

    fn running(n: u32) -> Upgrade {
        Upgrade::new(
            "u".into(),
            "stable".into(),
            Timestamp::UNIX_EPOCH,
            Trigger::Schedule,
            (1..=n)
                .map(|number| Planned {
                    number,
                    from: v("1.0.0"),
                    to: v("1.1.0"),
                })
                .collect(),
            Policy::default(),
        )
    }

    #[test]
    fn up_to_date_names_the_versions() {
        let view = tray_view(&store(&["1.1.0", "1.1.0"]), None, Lang::En);
        assert_eq!(view.icon, Icon::Idle);
        assert_eq!(view.tooltip, "tillup: up to date (1.1.0)");
        assert!(!view.upgrade_now);
        let mixed = tray_view(&store(&["1.0.0", "1.1.0"]), None, Lang::ZhCn);
        assert_eq!(mixed.tooltip, "tillup：已是最新版本（1.0.0–1.1.0）");
        let empty = tray_view(&LocalLog::default(), None, Lang::En);
        assert_eq!(empty.tooltip, "tillup: up to date");
    }

    #[test]
    fn an_update_waiting_for_an_answer_offers_upgrade_now() {
        let mut log = store(&["1.0.0"]);
        log.pending = Some(pending("1.1.0", true));
        let view = tray_view(&log, None, Lang::En);
        assert_eq!(view.icon, Icon::Available);
        assert!(view.upgrade_now);
        assert_eq!(view.tooltip, "tillup: critical update 1.1.0 available");
        log.pending.as_mut().unwrap().tonight = true;
        log.pending.as_mut().unwrap().critical = false;
        assert_eq!(
            tray_view(&log, None, Lang::ZhCn).tooltip,
            "tillup：有更新 1.1.0，今晚升级"
        );
        // A skipped version is not offered again.
        log.skipped.insert(v("1.1.0"));
        assert_eq!(tray_view(&log, None, Lang::En).icon, Icon::Idle);
    }

    #[test]
    fn a_running_upgrade_shows_n_of_m_above_everything() {
        let mut log = store(&["1.0.0", "1.0.0", "1.0.0"]);
        log.pending = Some(pending("1.1.0", false));
        log.history.push(history(&[Outcome::Restored]));
        let mut u = running(3);
        let view = tray_view(&log, Some(&u), Lang::En);
        assert_eq!(view.state, TrayState::Upgrading { done: 0, total: 3 });
        assert_eq!(view.icon, Icon::Busy);
        assert!(!view.upgrade_now);
        assert_eq!(view.tooltip, "tillup: upgrading (1 of 3)");
        // Terminal 1 cannot take the release and is put back: 1 done.
        let failed = Event::Failed {
            effect: Effect::Prestage(1),
            message: "disk full".into(),
        };
        u = u.step(failed, Timestamp::UNIX_EPOCH);
        let restarted = Event::Done {
            effect: Effect::Start(1),
        };
        u = u.step(restarted, Timestamp::UNIX_EPOCH);
        let view = tray_view(&log, Some(&u), Lang::ZhCn);
        assert_eq!(view.state, TrayState::Upgrading { done: 1, total: 3 });
        assert_eq!(view.tooltip, "tillup：正在升级（第 2 台，共 3 台）");
    }

    #[test]
    fn a_failed_upgrade_names_its_terminals_until_one_succeeds() {
        let mut log = store(&["1.1.0", "1.0.0", "1.0.0"]);
        log.history.push(history(&[
            Outcome::Upgraded,
            Outcome::Restored,
            Outcome::Abandoned,
        ]));
        let view = tray_view(&log, None, Lang::En);
        assert_eq!(view.icon, Icon::Error);
        assert!(view.upgrade_now);
        assert_eq!(
            view.tooltip,
            "tillup: the upgrade to 1.1.0 failed on terminal 2, 3"
        );
        assert_eq!(
            tray_view(&log, None, Lang::ZhCn).tooltip,
            "tillup：升级到 1.1.0 失败（终端 2、3）"
        );
        log.history.push(history(&[Outcome::Upgraded; 3]));
        assert_eq!(tray_view(&log, None, Lang::En).icon, Icon::Idle);
    }

    #[test]
    fn locales() {
        for (l, want) in [
            ("zh_CN.UTF-8", Lang::ZhCn),
            ("zh-Hans", Lang::ZhCn),
            ("ZH_tw", Lang::ZhCn),
            ("en_US.UTF-8", Lang::En),
            ("C", Lang::En),
            ("", Lang::En),
        ] {
            assert_eq!(Lang::from_locale(l), want, "{l}");
        }
    }
}
