//! The tray's pure decisions: the language, the menu's words, the icons,
//! the status line, what "Upgrade now" does and when to notify. Everything
//! here is unit-tested; the GTK and tokio shells only carry it out.

use semver::Version;
use tillup_listener::config::Mode;
use tillup_listener::local_log::{LocalLog, Outcome};
use tillup_listener::runner::UpdateOutcome;
use tillup_listener::schedule::TickOutcome;
use tillup_listener::view::{Icon, Lang};

use crate::window::OpenError;

/// `--lang` if given, else the locale: `LC_ALL`, then `LC_MESSAGES`, then
/// `LANG`, the first one set and not empty (as POSIX orders them).
pub fn lang(
    flag: Option<Lang>,
    lc_all: Option<&str>,
    lc_messages: Option<&str>,
    lang: Option<&str>,
) -> Lang {
    flag.unwrap_or_else(|| {
        let locale = [lc_all, lc_messages, lang]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
            .unwrap_or("");
        Lang::from_locale(locale)
    })
}

/// `--lang`'s parser: `en` or `zh-CN`.
pub fn parse_lang(s: &str) -> Result<Lang, String> {
    match s {
        "en" => Ok(Lang::En),
        "zh-CN" => Ok(Lang::ZhCn),
        _ => Err(format!("`{s}`: say en or zh-CN")),
    }
}

/// The menu's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Labels {
    pub open: &'static str,
    pub check: &'static str,
    pub upgrade: &'static str,
    pub quit: &'static str,
}

pub fn labels(lang: Lang) -> Labels {
    match lang {
        Lang::En => Labels {
            open: "Open",
            check: "Check now",
            upgrade: "Upgrade now",
            quit: "Quit",
        },
        Lang::ZhCn => Labels {
            open: "打开",
            check: "立即检查",
            upgrade: "立即升级",
            quit: "退出",
        },
    }
}

/// The PNG the tray draws for `icon` (`icons/` at the repository root,
/// drawn by `icons/make.py`).
pub fn icon_png(icon: Icon) -> &'static [u8] {
    match icon {
        Icon::Idle => include_bytes!("../../../icons/tray-idle.png"),
        Icon::Available => include_bytes!("../../../icons/tray-available.png"),
        Icon::Busy => include_bytes!("../../../icons/tray-busy.png"),
        Icon::Error => include_bytes!("../../../icons/tray-error.png"),
    }
}

/// Decodes one of our PNGs to RGBA, as `tray_icon::Icon::from_rgba` wants it.
pub fn decode_rgba(png_bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("PNG too large")?];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if info.color_type != png::ColorType::Rgba {
        return Err(format!("expected RGBA, got {:?}", info.color_type));
    }
    buf.truncate(info.buffer_size());
    Ok((buf, info.width, info.height))
}

/// The longest problem the status line shows; the log has all of it.
pub const PROBLEM_CHARS: usize = 80;

/// The disabled first menu item: the view's tooltip (appindicator ignores
/// tooltips), then what went wrong last, if anything, cut to
/// [`PROBLEM_CHARS`] so the menu stays readable.
pub fn status_line(tooltip: &str, problem: Option<&str>) -> String {
    match problem {
        Some(p) if p.chars().count() > PROBLEM_CHARS => {
            let cut: String = p.chars().take(PROBLEM_CHARS - 1).collect();
            format!("{tooltip} — {}…", cut.trim_end())
        }
        Some(p) => format!("{tooltip} — {p}"),
        None => tooltip.to_owned(),
    }
}

/// The status line's problem when "Open" showed no window.
pub fn window_problem(e: &OpenError, lang: Lang) -> String {
    match (e, lang) {
        (OpenError::Missing(path), Lang::En) => format!(
            "the window program is not installed ({} is missing)",
            path.display()
        ),
        (OpenError::Missing(path), Lang::ZhCn) => {
            format!("窗口程序未安装（缺少 {}）", path.display())
        }
        (OpenError::Spawn(message), _) => message.clone(),
    }
}

/// The status line after Quit while a check or an upgrade runs.
pub fn quit_later(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "quitting when the running check or upgrade ends (Quit again to stop it now)",
        Lang::ZhCn => "检查或升级结束后退出（再次点击“退出”立即退出）",
    }
}

/// The refusal of a request while a check or an upgrade runs.
pub fn busy(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "a check or an upgrade is running; try again when it is done",
        Lang::ZhCn => "正在检查或升级，请在完成后再试",
    }
}

/// What "Upgrade now" runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeNow {
    /// Answer the pending prompt with "now" (`Listener::answer`).
    Answer,
    /// No prompt is pending (a failed upgrade, scheduled mode): `Listener::update`.
    Update,
}

pub fn upgrade_now(log: &LocalLog) -> UpgradeNow {
    if log.pending.is_some() {
        UpgradeNow::Answer
    } else {
        UpgradeNow::Update
    }
}

/// A desktop notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub summary: String,
    pub body: String,
}

/// What to notify after a tick (or an upgrade the menu started, wrapped in
/// `TickOutcome::Upgraded`): an update found in prompt mode, once per
/// version (`announced` is the last version announced), and an upgrade's
/// end, done or failed, in scheduled mode.
pub fn notification(
    mode: Mode,
    outcome: &TickOutcome,
    announced: Option<&Version>,
    lang: Lang,
) -> Option<Note> {
    match (mode, outcome) {
        (Mode::Prompt, TickOutcome::Prompted { version, critical })
            if announced != Some(version) =>
        {
            Some(match lang {
                Lang::En => Note {
                    summary: if *critical {
                        format!("Critical update {version} available")
                    } else {
                        format!("Update {version} available")
                    },
                    body: "Open tillup from the tray to upgrade now, tonight or later.".into(),
                },
                Lang::ZhCn => Note {
                    summary: format!("有{}更新 {version}", if *critical { "重要" } else { "" }),
                    body: "请从托盘打开 tillup，选择立即、今晚或稍后升级。".into(),
                },
            })
        }
        (Mode::Scheduled, TickOutcome::Upgraded(outcome)) => upgrade_ended(outcome, lang),
        _ => None,
    }
}

fn upgrade_ended(outcome: &UpdateOutcome, lang: Lang) -> Option<Note> {
    let last = outcome.upgrades.last()?;
    let to = last.terminals.iter().map(|t| &t.to).max()?;
    let mut failed: Vec<u32> = outcome
        .upgrades
        .iter()
        .flat_map(|u| &u.terminals)
        .filter(|t| t.result != Outcome::Upgraded)
        .map(|t| t.number)
        .collect();
    failed.sort_unstable();
    failed.dedup();
    let list = |sep: &str| {
        failed
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    };
    Some(match (lang, failed.is_empty()) {
        (Lang::En, true) => Note {
            summary: format!("Upgraded to {to}"),
            body: format!("All {} terminals run {to}.", last.terminals.len()),
        },
        (Lang::En, false) => Note {
            summary: format!("The upgrade to {to} failed"),
            body: format!(
                "Terminal {} kept the old release. Open tillup for details.",
                list(", ")
            ),
        },
        (Lang::ZhCn, true) => Note {
            summary: format!("已升级到 {to}"),
            body: format!("全部 {} 台终端已运行 {to}。", last.terminals.len()),
        },
        (Lang::ZhCn, false) => Note {
            summary: format!("升级到 {to} 失败"),
            body: format!("终端 {} 仍在旧版本。请打开 tillup 查看详情。", list("、")),
        },
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use tillup_core::upgrade::Trigger;
    use tillup_listener::local_log::{HistoryEntry, HistoryTerminal, PendingPrompt};

    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn upgraded(results: &[Outcome]) -> TickOutcome {
        let entry = HistoryEntry {
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
        };
        TickOutcome::Upgraded(UpdateOutcome {
            upgrades: vec![entry],
            note: None,
        })
    }

    #[test]
    fn the_flag_beats_the_locale_and_lc_all_beats_lang() {
        assert_eq!(
            lang(Some(Lang::En), Some("zh_CN.UTF-8"), None, None),
            Lang::En
        );
        assert_eq!(
            lang(None, Some("zh_CN.UTF-8"), None, Some("en_US")),
            Lang::ZhCn
        );
        assert_eq!(lang(None, Some(""), Some("en_GB"), Some("zh_CN")), Lang::En);
        assert_eq!(lang(None, None, None, Some("zh_CN.UTF-8")), Lang::ZhCn);
        assert_eq!(lang(None, None, None, None), Lang::En);
        assert_eq!(parse_lang("zh-CN"), Ok(Lang::ZhCn));
        assert_eq!(parse_lang("en"), Ok(Lang::En));
        assert!(parse_lang("fr").unwrap_err().contains("zh-CN"));
    }

    #[test]
    fn menu_labels_in_both_languages() {
        assert_eq!(labels(Lang::En).upgrade, "Upgrade now");
        assert_eq!(labels(Lang::ZhCn).quit, "退出");
        let (en, zh) = (labels(Lang::En), labels(Lang::ZhCn));
        for (a, b) in [
            (en.open, zh.open),
            (en.check, zh.check),
            (en.upgrade, zh.upgrade),
            (en.quit, zh.quit),
        ] {
            assert_ne!(a, b);
            assert!(!b.is_ascii(), "{b} is not translated");
        }
    }

    #[test]
    fn every_icon_is_a_distinct_32px_rgba_png() {
        let all = [Icon::Idle, Icon::Available, Icon::Busy, Icon::Error];
        let mut seen = Vec::new();
        for icon in all {
            let (rgba, w, h) = decode_rgba(icon_png(icon)).unwrap();
            assert_eq!((w, h), (32, 32), "{icon:?}");
            assert_eq!(rgba.len(), 32 * 32 * 4);
            assert!(!seen.contains(&rgba), "{icon:?} looks like another icon");
            seen.push(rgba);
        }
        assert!(decode_rgba(b"not a png").is_err());
    }

    #[test]
    fn the_status_line_adds_the_last_problem() {
        assert_eq!(
            status_line("tillup: up to date", None),
            "tillup: up to date"
        );
        assert_eq!(
            status_line("tillup: up to date", Some("tillup-window is not installed")),
            "tillup: up to date — tillup-window is not installed"
        );
        let long = "cannot reach the server to fetch the version log: ".repeat(4);
        let line = status_line("tillup：已是最新版本", Some(&long));
        assert!(line.ends_with('…'), "{line}");
        assert!(line.chars().count() <= "tillup：已是最新版本 — ".chars().count() + PROBLEM_CHARS);
        let chinese = "无法连接服务器".repeat(20);
        let line = status_line("t", Some(&chinese));
        assert_eq!(
            line.chars().count(),
            "t — ".chars().count() + PROBLEM_CHARS,
            "{line}"
        );
    }

    #[test]
    fn a_missing_window_program_is_named() {
        let missing = OpenError::Missing("/opt/tillup/tillup-window".into());
        assert_eq!(
            window_problem(&missing, Lang::En),
            "the window program is not installed (/opt/tillup/tillup-window is missing)"
        );
        assert!(window_problem(&missing, Lang::ZhCn).contains("/opt/tillup/tillup-window"));
    }

    #[test]
    fn quitting_later_says_how_to_quit_now() {
        assert!(quit_later(Lang::En).contains(labels(Lang::En).quit));
        assert!(quit_later(Lang::ZhCn).contains(labels(Lang::ZhCn).quit));
    }

    #[test]
    fn upgrade_now_answers_a_pending_prompt_else_updates() {
        let mut log = LocalLog::default();
        assert_eq!(upgrade_now(&log), UpgradeNow::Update);
        log.pending = Some(PendingPrompt {
            tonight: true,
            ..PendingPrompt::new(v("1.1.0"), false, Timestamp::UNIX_EPOCH)
        });
        assert_eq!(upgrade_now(&log), UpgradeNow::Answer);
    }

    #[test]
    fn a_prompt_is_announced_once_per_version_and_only_in_prompt_mode() {
        let found = TickOutcome::Prompted {
            version: v("1.1.0"),
            critical: true,
        };
        let note = notification(Mode::Prompt, &found, None, Lang::En).unwrap();
        assert_eq!(note.summary, "Critical update 1.1.0 available");
        assert_eq!(
            notification(Mode::Prompt, &found, Some(&v("1.1.0")), Lang::En),
            None
        );
        let zh = notification(Mode::Prompt, &found, Some(&v("1.0.5")), Lang::ZhCn).unwrap();
        assert_eq!(zh.summary, "有重要更新 1.1.0");
        assert_eq!(notification(Mode::Scheduled, &found, None, Lang::En), None);
        for quiet in [
            TickOutcome::UpToDate,
            TickOutcome::WaitingForWindow {
                version: v("1.1.0"),
            },
            TickOutcome::Skipped {
                version: v("1.1.0"),
            },
        ] {
            assert_eq!(notification(Mode::Prompt, &quiet, None, Lang::En), None);
            assert_eq!(notification(Mode::Scheduled, &quiet, None, Lang::En), None);
        }
    }

    #[test]
    fn a_scheduled_upgrade_says_how_it_ended() {
        let done = upgraded(&[Outcome::Upgraded, Outcome::Upgraded]);
        let note = notification(Mode::Scheduled, &done, None, Lang::En).unwrap();
        assert_eq!(note.summary, "Upgraded to 1.1.0");
        assert_eq!(note.body, "All 2 terminals run 1.1.0.");
        let failed = upgraded(&[Outcome::Upgraded, Outcome::Restored, Outcome::Abandoned]);
        let note = notification(Mode::Scheduled, &failed, None, Lang::En).unwrap();
        assert_eq!(note.summary, "The upgrade to 1.1.0 failed");
        assert!(note.body.starts_with("Terminal 2, 3 kept"), "{}", note.body);
        let zh = notification(Mode::Scheduled, &failed, None, Lang::ZhCn).unwrap();
        assert!(zh.body.starts_with("终端 2、3"), "{}", zh.body);
        // In prompt mode the manager started it and watches the tray.
        assert_eq!(notification(Mode::Prompt, &done, None, Lang::En), None);
        // Nothing to do is nothing to say.
        let nothing = TickOutcome::Upgraded(UpdateOutcome {
            upgrades: vec![],
            note: Some("up to date".into()),
        });
        assert_eq!(
            notification(Mode::Scheduled, &nothing, None, Lang::En),
            None
        );
    }
}
