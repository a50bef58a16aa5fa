//! The daemon's decisions: when to check, and what to do with an update
//! (prompt the store manager, or upgrade inside the maintenance window).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::api::MainState;
use tillup_core::log::Verdict;
use tillup_core::upgrade::Trigger;

use crate::config::Mode;
use crate::local_log::{LocalLog, PendingPrompt};
use crate::runner::{Observer, UpdateOutcome};
use crate::{Error, Listener};

/// What one daemon tick did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TickOutcome {
    UpToDate,
    /// Nothing to install yet, but a critical release is rolling out and
    /// this store's wave has not come: the daemon checks again sooner.
    AwaitingWave {
        version: Version,
    },
    /// Prompt mode: the store manager is asked (the tray app shows it).
    Prompted {
        version: Version,
        critical: bool,
    },
    /// "Remind me later" is still running.
    Snoozed {
        version: Version,
        until: Timestamp,
    },
    /// "Skip this version".
    Skipped {
        version: Version,
    },
    /// Scheduled mode (or "upgrade tonight"), outside the window.
    WaitingForWindow {
        version: Version,
    },
    Upgraded(UpdateOutcome),
}

/// The store manager's answer to the upgrade prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Upgrade now.
    Now,
    /// Upgrade in tonight's maintenance window.
    Tonight,
    /// Remind me later (in four hours).
    Later,
    /// Skip this version (not offered for critical releases).
    Skip,
}

/// How long "Remind me later" waits.
pub const SNOOZE: SignedDuration = SignedDuration::from_hours(4);

/// The delay before the next check: the interval plus a random jitter.
pub fn next_check_delay(
    interval_minutes: u64,
    jitter_minutes: u64,
    rng: &mut impl Rng,
) -> Duration {
    let jitter = if jitter_minutes == 0 {
        0
    } else {
        rng.random_range(0..jitter_minutes * 60)
    };
    Duration::from_secs(interval_minutes * 60 + jitter)
}

/// How often a store checks while a critical release rolls out and its
/// wave has not come (the usual interval, if that is shorter): a critical
/// release reaches each store within this long of its wave opening.
pub const CRITICAL_CHECK: Duration = Duration::from_secs(5 * 60);

/// When the daemon checks next: after the usual interval; when an update
/// waits for the maintenance window, as the window opens (plus a jitter
/// within its first half, so the stores of a chain do not all ask at the
/// same second); while a critical release waits for this store's wave,
/// within [`CRITICAL_CHECK`] (plus a jitter within it); whichever is
/// sooner.
pub fn next_wake(
    outcome: Option<&TickOutcome>,
    window: &crate::config::ParsedWindow,
    regular: Duration,
    now: Timestamp,
    rng: &mut impl Rng,
) -> Duration {
    match outcome {
        Some(TickOutcome::WaitingForWindow { .. }) => {
            let half = window.length().as_secs().max(2) as u64 / 2;
            let opens = window.next_start(now).duration_since(now).as_secs().max(0) as u64;
            let at_window = Duration::from_secs(opens + rng.random_range(0..half));
            regular.min(at_window)
        }
        Some(TickOutcome::AwaitingWave { .. }) => {
            let half = CRITICAL_CHECK.as_secs() / 2;
            regular.min(Duration::from_secs(half + rng.random_range(0..half)))
        }
        Some(
            TickOutcome::UpToDate
            | TickOutcome::Prompted { .. }
            | TickOutcome::Snoozed { .. }
            | TickOutcome::Skipped { .. }
            | TickOutcome::Upgraded(_),
        )
        | None => regular,
    }
}

impl Listener {
    /// The delay before the daemon's next tick, after `outcome`: the
    /// configured interval and jitter, shortened by [`next_wake`].
    pub fn next_delay(&self, outcome: Option<&TickOutcome>, now: Timestamp) -> Duration {
        let mut rng = rand::rng();
        let check = &self.config.check;
        let regular = next_check_delay(check.interval_minutes, check.jitter_minutes, &mut rng);
        match self.config.parsed_window() {
            Ok(window) => next_wake(outcome, &window, regular, now, &mut rng),
            // Refused when the configuration was loaded; never here.
            Err(_) => regular,
        }
    }

    /// One scheduled check, and whatever it leads to.
    pub async fn tick(
        &self,
        now: Timestamp,
        observer: &mut Observer<'_>,
    ) -> Result<TickOutcome, Error> {
        let _lock = self.exclusive()?;
        // An interrupted upgrade never waits (its terminals may be stopped),
        // but finishing it starts nothing new: that is for the window or the
        // store manager to decide.
        if let Some(entry) = self.resume_locked(observer).await? {
            let note = Some("an interrupted upgrade was finished".to_owned());
            return Ok(TickOutcome::Upgraded(UpdateOutcome {
                upgrades: vec![entry],
                note,
            }));
        }
        let _ = self.send_unsent_reports().await;
        let (verified, report) = self.check_locked(now).await?;
        let mut local = LocalLog::load(&self.data_dir)?;
        let Some(version) = report.target.clone() else {
            if local.pending.take().is_some() {
                local.save(&self.data_dir)?;
            }
            return Ok(match report.critical_on_the_way {
                Some(version) => TickOutcome::AwaitingWave { version },
                None => TickOutcome::UpToDate,
            });
        };
        let in_window = self
            .config
            .parsed_window()
            .map_err(Error::Other)?
            .contains(now);
        match self.config.mode {
            Mode::Scheduled if in_window => Ok(TickOutcome::Upgraded(
                self.update_locked(Trigger::Schedule, now, observer).await?,
            )),
            Mode::Scheduled => Ok(TickOutcome::WaitingForWindow { version }),
            Mode::Prompt => {
                if local.skipped.contains(&version) && !report.critical {
                    return Ok(TickOutcome::Skipped { version });
                }
                let mut pending = match local.pending.take() {
                    Some(p) if p.version == version => p,
                    _ => PendingPrompt::new(version.clone(), report.critical, now),
                };
                // What the prompt shows, from the log just verified.
                if let Some(release) = verified.log.release(&version) {
                    pending.date = Some(release.date);
                    pending.size = Some(release.size);
                    pending.notes = release.notes.clone();
                }
                pending.terminals = report
                    .comparison
                    .terminals
                    .iter()
                    .filter(|(_, v)| matches!(v, Verdict::Update { .. }))
                    .map(|(n, _)| *n)
                    .collect();
                let outcome = if pending.tonight && in_window {
                    None
                } else if pending.tonight {
                    Some(TickOutcome::WaitingForWindow {
                        version: version.clone(),
                    })
                } else if let Some(until) = pending.snoozed_until.filter(|u| *u > now) {
                    Some(TickOutcome::Snoozed {
                        version: version.clone(),
                        until,
                    })
                } else {
                    Some(TickOutcome::Prompted {
                        version: version.clone(),
                        critical: pending.critical,
                    })
                };
                local.pending = Some(pending);
                local.save(&self.data_dir)?;
                match outcome {
                    Some(o) => Ok(o),
                    None => {
                        let who = Trigger::Person {
                            name: "store manager (upgrade tonight)".into(),
                        };
                        Ok(TickOutcome::Upgraded(
                            self.update_locked(who, now, observer).await?,
                        ))
                    }
                }
            }
        }
    }

    /// Records the store manager's answer to the pending prompt; `Now`
    /// runs the upgrade at once.
    pub async fn answer(
        &self,
        answer: Answer,
        who: &str,
        now: Timestamp,
        observer: &mut Observer<'_>,
    ) -> Result<Option<UpdateOutcome>, Error> {
        let _lock = self.exclusive()?;
        let mut local = LocalLog::load(&self.data_dir)?;
        let Some(mut pending) = local.pending.clone() else {
            return Err(Error::Other(
                "no update is waiting for an answer; run `tillup check` first".into(),
            ));
        };
        match answer {
            Answer::Now => {
                local.pending = None;
                local.save(&self.data_dir)?;
                return Ok(Some(
                    self.update_locked(
                        Trigger::Person {
                            name: who.to_owned(),
                        },
                        now,
                        observer,
                    )
                    .await?,
                ));
            }
            Answer::Tonight => pending.tonight = true,
            Answer::Later => pending.snoozed_until = Some(now + SNOOZE),
            Answer::Skip if pending.critical => {
                return Err(Error::Other(format!(
                    "{} is a critical release and cannot be skipped",
                    pending.version
                )));
            }
            Answer::Skip => {
                local.skipped.insert(pending.version.clone());
                local.pending = None;
                local.save(&self.data_dir)?;
                return Ok(None);
            }
        }
        local.pending = Some(pending);
        local.save(&self.data_dir)?;
        Ok(None)
    }

    /// The store at a glance: every terminal as its agent and the local log
    /// see it.
    pub async fn status(&self) -> Result<StoreStatus, Error> {
        let local = LocalLog::load(&self.data_dir)?;
        let statuses = self.agent_statuses().await;
        let terminals = self
            .config
            .terminals
            .iter()
            .map(|t| {
                let rec = local.terminals.get(&t.number);
                let (agent, error) = match statuses.get(&t.number) {
                    Some(Ok(s)) => (Some(s.clone()), None),
                    Some(Err(e)) => (None, Some(e.to_string())),
                    None => (None, None),
                };
                TerminalStatus {
                    number: t.number,
                    address: t.address.clone(),
                    model: agent
                        .as_ref()
                        .map(|a| a.model.clone())
                        .or_else(|| rec.map(|r| r.model.clone())),
                    version: agent.as_ref().and_then(|a| a.version.clone()),
                    recorded_version: rec.map(|r| r.installed.version.clone()),
                    main: agent.as_ref().map(|a| a.main.clone()),
                    busy: agent.as_ref().is_some_and(|a| a.busy),
                    error,
                    last_report: rec.and_then(|r| r.last_report.clone()),
                }
            })
            .collect();
        Ok(StoreStatus {
            store: self.config.store_id.clone(),
            mode: self.config.mode,
            last_check: local.last_check,
            pending: local.pending.clone(),
            unfinished_upgrade: self.unfinished()?.map(|u| u.id),
            warnings: local.warnings.iter().map(ToString::to_string).collect(),
            terminals,
        })
    }
}

/// `tillup status`.
#[derive(Clone, Debug, Serialize)]
pub struct StoreStatus {
    pub store: String,
    pub mode: Mode,
    pub last_check: Option<Timestamp>,
    pub pending: Option<PendingPrompt>,
    pub unfinished_upgrade: Option<String>,
    pub warnings: Vec<String>,
    pub terminals: Vec<TerminalStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TerminalStatus {
    pub number: u32,
    pub address: String,
    pub model: Option<String>,
    /// What the agent reports now.
    pub version: Option<Version>,
    /// What the local log records.
    pub recorded_version: Option<Version>,
    pub main: Option<MainState>,
    pub busy: bool,
    pub error: Option<String>,
    pub last_report: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The maintenance window of a config ending in `tail`.
    fn window(tail: &str) -> crate::config::ParsedWindow {
        let key = tillup_core::sign::generate_keys().unwrap().public_line;
        let cfg: crate::Config = toml::from_str(&format!(
            "server = \"http://x\"\npublic_key = \"{key}\"\nstore_id = \"s\"\nstore_token = \"t\"\n{tail}"
        ))
        .unwrap();
        cfg.parsed_window().unwrap()
    }

    #[test]
    fn an_update_waiting_for_the_window_wakes_the_daemon_inside_it() {
        let window =
            window("[window]\nstart = \"03:00\"\nend = \"03:30\"\ntime_zone = \"Asia/Shanghai\"\n");
        let now: Timestamp = "2026-11-21T02:10:00+08:00[Asia/Shanghai]"
            .parse::<jiff::Zoned>()
            .unwrap()
            .timestamp();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let waiting = TickOutcome::WaitingForWindow {
            version: "1.1.0".parse().unwrap(),
        };
        let hour = Duration::from_secs(3600);
        for _ in 0..100 {
            let wake = now
                + jiff::SignedDuration::try_from(next_wake(
                    Some(&waiting),
                    &window,
                    hour,
                    now,
                    &mut rng,
                ))
                .unwrap();
            assert!(
                window.contains(wake),
                "woke at {wake}, outside the 30-minute window"
            );
        }
        assert_eq!(
            next_wake(Some(&TickOutcome::UpToDate), &window, hour, now, &mut rng),
            hour
        );
    }

    #[test]
    fn a_critical_release_on_the_way_shortens_the_wait_for_its_wave() {
        let window = window("");
        let now = Timestamp::UNIX_EPOCH;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let awaiting = TickOutcome::AwaitingWave {
            version: "1.1.1".parse().unwrap(),
        };
        let hour = Duration::from_secs(3600);
        for _ in 0..100 {
            let d = next_wake(Some(&awaiting), &window, hour, now, &mut rng);
            assert!(d >= CRITICAL_CHECK / 2 && d < CRITICAL_CHECK, "{d:?}");
        }
        let minute = Duration::from_secs(60);
        assert_eq!(
            next_wake(Some(&awaiting), &window, minute, now, &mut rng),
            minute,
            "a shorter usual interval stays"
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let d = next_check_delay(60, 10, &mut rng).as_secs();
            assert!((3600..4200).contains(&d), "{d}");
        }
        assert_eq!(next_check_delay(5, 0, &mut rng), Duration::from_secs(300));
    }
}
