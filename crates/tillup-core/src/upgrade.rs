//! The store upgrade as a state machine (DESIGN §3).
//!
//! [`Upgrade::step`] takes an event and the current time and returns the
//! new state; [`Upgrade::wanted`] says which effects the state needs run
//! now. The listener persists the state before running any effect, runs
//! the wanted effects, and feeds their outcomes back as events. Every
//! effect is safe to repeat, so after a crash the listener loads the state
//! and simply runs `wanted()` again.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

/// Where the store-wide part of the upgrade is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// While the main programs still run: the host downloads the release
    /// and every terminal receives and stages it (DESIGN §7: only what
    /// cannot happen while a program runs happens while it is stopped).
    Preparing,
    /// Stopping every terminal's main program.
    Stopping,
    /// Collecting every stopped terminal's folder into the host backup.
    Collecting,
    /// Uploading the backup to the server.
    Uploading,
    /// The server builds each terminal's new folder.
    Processing,
    /// Downloading and verifying the new files.
    Delivering,
    /// Staging, swapping, restarting, health-checking: canary first.
    Installing,
    /// Sending the store's report.
    Reporting,
    Done,
}

/// Where one terminal is. The order matters: everything from `Committed`
/// on means the folder holds the new release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Planned,
    /// The release is staged on the terminal; its program still runs.
    Prepared,
    Stopped,
    Collected,
    Staged,
    Committed,
    /// The new release was started; its health is being checked.
    Started,
    /// Upgraded and healthy.
    Upgraded,
    /// Something failed; the folder must be put back (if it was swapped)
    /// and the old main program started again.
    Restoring {
        committed: bool,
        rolled_back: bool,
    },
    /// Back on the old release and running.
    Restored,
    /// It could not even be put back and restarted (its agent does not
    /// answer): reported, so someone can look at that terminal.
    Abandoned {
        restart_error: String,
    },
}

/// What went wrong on a terminal, in the words of whoever failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub during: String,
    pub message: String,
    pub at: Timestamp,
    /// It failed because something else did (the canary, the store's
    /// transfer, a halt), not on its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub knock_on: bool,
}

/// One terminal's part of the upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalRun {
    pub number: u32,
    pub from: Version,
    pub to: Version,
    pub step: Step,
    pub stopped_at: Option<Timestamp>,
    pub restarted_at: Option<Timestamp>,
    pub failure: Option<Failure>,
}

impl TerminalRun {
    /// Still on the way to the new release.
    pub fn active(&self) -> bool {
        matches!(
            self.step,
            Step::Planned
                | Step::Prepared
                | Step::Stopped
                | Step::Collected
                | Step::Staged
                | Step::Committed
                | Step::Started
        )
    }

    /// Reached an end: upgraded, restored or abandoned.
    pub fn finished(&self) -> bool {
        matches!(
            self.step,
            Step::Upgraded | Step::Restored | Step::Abandoned { .. }
        )
    }

    /// How long the main program was stopped, once it runs again.
    pub fn stopped_for(&self) -> Option<jiff::SignedDuration> {
        Some(self.restarted_at?.duration_since(self.stopped_at?))
    }
}

/// Work the shell must do. Every effect is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "effect", content = "terminal", rename_all = "snake_case")]
pub enum Effect {
    /// Before any stop, the host gets and verifies what the terminals need
    /// to stage the target releases: the release files some terminal lacks
    /// (from a terminal that holds them, over the LAN; only those none
    /// holds from the server).
    Prefetch,
    /// Before any stop and while the terminals stage, the host gathers
    /// every terminal's folder as it is now (so the backup after the stop
    /// fetches only what changed since) and hands the server what it lacks
    /// of those folders.
    Gather,
    /// The terminal receives the release files it lacks and stages them.
    Prestage(u32),
    Stop(u32),
    Collect(u32),
    UploadBackup,
    Process,
    Deliver,
    Stage(u32),
    Commit(u32),
    Start(u32),
    CheckHealth(u32),
    Rollback(u32),
    SendReport,
}

impl Effect {
    /// Its kind, without the terminal: `commit`, `check_health`, …
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Prefetch => "prefetch",
            Effect::Gather => "gather",
            Effect::Prestage(_) => "prestage",
            Effect::Stop(_) => "stop",
            Effect::Collect(_) => "collect",
            Effect::UploadBackup => "upload_backup",
            Effect::Process => "process",
            Effect::Deliver => "deliver",
            Effect::Stage(_) => "stage",
            Effect::Commit(_) => "commit",
            Effect::Start(_) => "start",
            Effect::CheckHealth(_) => "check_health",
            Effect::Rollback(_) => "rollback",
            Effect::SendReport => "send_report",
        }
    }

    /// The terminal a per-terminal effect acts on.
    pub fn terminal(&self) -> Option<u32> {
        match self {
            Effect::Prestage(n)
            | Effect::Stop(n)
            | Effect::Collect(n)
            | Effect::Stage(n)
            | Effect::Commit(n)
            | Effect::Start(n)
            | Effect::CheckHealth(n)
            | Effect::Rollback(n) => Some(*n),
            Effect::Prefetch
            | Effect::Gather
            | Effect::UploadBackup
            | Effect::Process
            | Effect::Deliver
            | Effect::SendReport => None,
        }
    }
}

/// The outcome of an effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Done { effect: Effect },
    Failed { effect: Effect, message: String },
}

/// What started the upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Trigger {
    /// Someone confirmed it (the store manager, or a CLI user).
    Person { name: String },
    /// The maintenance window, with nobody asked.
    Schedule,
}

/// A whole store upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    pub id: String,
    pub channel: String,
    pub started: Timestamp,
    /// When every terminal had finished (before the report is sent).
    pub finished: Option<Timestamp>,
    pub trigger: Trigger,
    pub phase: Phase,
    pub canary: u32,
    pub terminals: BTreeMap<u32, TerminalRun>,
    /// Set when the store-wide report reached the server.
    pub reported: bool,
    /// Set when the host holds every file of the target releases.
    #[serde(default)]
    pub prefetched: bool,
    /// Set when the host holds every terminal's folder as it was before
    /// the stop, and the server does too.
    #[serde(default)]
    pub gathered: bool,
    /// A store-wide failure (upload, processing, delivery), if any.
    pub failure: Option<Failure>,
    /// How the terminals after the canary are installed.
    #[serde(default)]
    pub policy: Policy,
    /// Set when the upgrade halted, saying why.
    #[serde(default)]
    pub halted: Option<Failure>,
}

/// How a store's terminals are installed after the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The canary, if it is to be another than the lowest terminal number.
    pub canary: Option<u32>,
    /// How many terminals are between their swap and their health check
    /// at once, after the canary.
    pub parallel: u32,
    /// Halt when more than this share (percent) of the terminals after the
    /// canary fail: those not swapped yet stay on the old release.
    pub halt_percent: u8,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            canary: None,
            parallel: u32::MAX,
            halt_percent: 100,
        }
    }
}

/// A terminal to upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub number: u32,
    pub from: Version,
    pub to: Version,
}

impl Upgrade {
    /// A new upgrade of `terminals`; the canary is `policy.canary` if it
    /// is one of them, else the lowest number.
    pub fn new(
        id: String,
        channel: String,
        started: Timestamp,
        trigger: Trigger,
        terminals: Vec<Planned>,
        policy: Policy,
    ) -> Self {
        let terminals: BTreeMap<u32, TerminalRun> = terminals
            .into_iter()
            .map(|p| {
                let run = TerminalRun {
                    number: p.number,
                    from: p.from,
                    to: p.to,
                    step: Step::Planned,
                    stopped_at: None,
                    restarted_at: None,
                    failure: None,
                };
                (p.number, run)
            })
            .collect();
        let canary = policy
            .canary
            .filter(|c| terminals.contains_key(c))
            .or_else(|| terminals.keys().next().copied())
            .unwrap_or(0);
        let mut u = Self {
            id,
            channel,
            started,
            finished: None,
            trigger,
            phase: Phase::Preparing,
            canary,
            terminals,
            reported: false,
            prefetched: false,
            gathered: false,
            failure: None,
            policy: Policy {
                canary: Some(canary),
                parallel: policy.parallel.max(1),
                halt_percent: policy.halt_percent.min(100),
            },
            halted: None,
        };
        u.advance(started);
        u
    }

    fn active(&self) -> impl Iterator<Item = &TerminalRun> {
        self.terminals.values().filter(|t| t.active())
    }

    /// The effects the current state needs. The shell runs those it is not
    /// already running.
    pub fn wanted(&self) -> BTreeSet<Effect> {
        let mut out = BTreeSet::new();
        // Restoring a terminal never waits for the rest of the store.
        for t in self.terminals.values() {
            if let Step::Restoring {
                committed,
                rolled_back,
            } = t.step
            {
                out.insert(if committed && !rolled_back {
                    Effect::Rollback(t.number)
                } else {
                    Effect::Start(t.number)
                });
            }
        }
        match self.phase {
            Phase::Preparing if !self.prefetched => {
                out.insert(Effect::Prefetch);
            }
            Phase::Preparing => {
                if !self.gathered {
                    out.insert(Effect::Gather);
                }
                out.extend(
                    self.active()
                        .filter(|t| t.step == Step::Planned)
                        .map(|t| Effect::Prestage(t.number)),
                );
            }
            Phase::Stopping => out.extend(
                self.active()
                    .filter(|t| t.step == Step::Prepared)
                    .map(|t| Effect::Stop(t.number)),
            ),
            Phase::Collecting => out.extend(
                self.active()
                    .filter(|t| t.step == Step::Stopped)
                    .map(|t| Effect::Collect(t.number)),
            ),
            Phase::Uploading => {
                out.insert(Effect::UploadBackup);
            }
            Phase::Processing => {
                out.insert(Effect::Process);
            }
            Phase::Delivering => {
                out.insert(Effect::Deliver);
            }
            Phase::Installing => {
                // The rest swap only once the canary runs the new release healthily.
                let canary_ok = self
                    .terminals
                    .get(&self.canary)
                    .is_some_and(|c| c.step == Step::Upgraded);
                // At most `parallel` terminals between swap and health check.
                let installing = self
                    .active()
                    .filter(|t| matches!(t.step, Step::Committed | Step::Started))
                    .count();
                let mut room = (self.policy.parallel as usize).saturating_sub(installing);
                for t in self.active() {
                    let may_swap = t.number == self.canary || canary_ok;
                    match t.step {
                        Step::Collected => {
                            out.insert(Effect::Stage(t.number));
                        }
                        Step::Staged if may_swap && room > 0 => {
                            room -= 1;
                            out.insert(Effect::Commit(t.number));
                        }
                        Step::Committed => {
                            out.insert(Effect::Start(t.number));
                        }
                        Step::Started => {
                            out.insert(Effect::CheckHealth(t.number));
                        }
                        // Waiting for the canary or for room, or not
                        // this phase's to move.
                        Step::Staged
                        | Step::Planned
                        | Step::Prepared
                        | Step::Stopped
                        | Step::Upgraded
                        | Step::Restoring { .. }
                        | Step::Restored
                        | Step::Abandoned { .. } => {}
                    }
                }
            }
            Phase::Reporting => {
                if self.terminals.values().all(TerminalRun::finished) {
                    out.insert(Effect::SendReport);
                }
            }
            Phase::Done => {}
        }
        out
    }

    /// Applies the outcome of an effect.
    pub fn step(mut self, event: Event, now: Timestamp) -> Self {
        match event {
            Event::Done { effect } => self.on_done(effect, now),
            Event::Failed { effect, message } => self.on_failed(effect, message, now),
        }
        self.advance(now);
        self
    }

    fn terminal(&mut self, n: u32) -> Option<&mut TerminalRun> {
        self.terminals.get_mut(&n)
    }

    fn on_done(&mut self, effect: Effect, now: Timestamp) {
        let set = |t: &mut TerminalRun, from: Step, to: Step| {
            if t.step == from {
                t.step = to;
            }
        };
        match effect {
            Effect::Prefetch => self.prefetched = true,
            Effect::Gather => self.gathered = true,
            Effect::Prestage(n) => self
                .terminal(n)
                .into_iter()
                .for_each(|t| set(t, Step::Planned, Step::Prepared)),
            Effect::Stop(n) => {
                if let Some(t) = self.terminal(n)
                    && t.step == Step::Prepared
                {
                    t.step = Step::Stopped;
                    t.stopped_at = Some(now);
                }
            }
            Effect::Collect(n) => self
                .terminal(n)
                .into_iter()
                .for_each(|t| set(t, Step::Stopped, Step::Collected)),
            Effect::Stage(n) => self
                .terminal(n)
                .into_iter()
                .for_each(|t| set(t, Step::Collected, Step::Staged)),
            Effect::Commit(n) => self
                .terminal(n)
                .into_iter()
                .for_each(|t| set(t, Step::Staged, Step::Committed)),
            Effect::Start(n) => {
                if let Some(t) = self.terminal(n) {
                    match t.step {
                        Step::Committed => {
                            t.step = Step::Started;
                            t.restarted_at = Some(now);
                        }
                        Step::Restoring {
                            committed,
                            rolled_back,
                        } if !committed || rolled_back => {
                            t.step = Step::Restored;
                            t.restarted_at = Some(now);
                        }
                        // A start repeated, or not one this step asked for.
                        Step::Restoring { .. }
                        | Step::Planned
                        | Step::Prepared
                        | Step::Stopped
                        | Step::Collected
                        | Step::Staged
                        | Step::Started
                        | Step::Upgraded
                        | Step::Restored
                        | Step::Abandoned { .. } => {}
                    }
                }
            }
            Effect::CheckHealth(n) => self
                .terminal(n)
                .into_iter()
                .for_each(|t| set(t, Step::Started, Step::Upgraded)),
            Effect::Rollback(n) => {
                if let Some(t) = self.terminal(n)
                    && let Step::Restoring {
                        committed: true, ..
                    } = t.step
                {
                    t.step = Step::Restoring {
                        committed: true,
                        rolled_back: true,
                    };
                }
            }
            Effect::UploadBackup if self.phase == Phase::Uploading => {
                self.phase = Phase::Processing
            }
            Effect::Process if self.phase == Phase::Processing => self.phase = Phase::Delivering,
            Effect::Deliver if self.phase == Phase::Delivering => self.phase = Phase::Installing,
            Effect::SendReport => self.reported = true,
            Effect::UploadBackup | Effect::Process | Effect::Deliver => {}
        }
    }

    fn fail_terminal(t: &mut TerminalRun, during: &str, message: String, now: Timestamp) {
        Self::fail(t, during, message, now, false);
    }

    /// Fails `t` because something else failed.
    fn hold_back(t: &mut TerminalRun, during: &str, message: String, now: Timestamp) {
        Self::fail(t, during, message, now, true);
    }

    fn fail(t: &mut TerminalRun, during: &str, message: String, now: Timestamp, knock_on: bool) {
        if !t.active() {
            return;
        }
        let committed = matches!(t.step, Step::Committed | Step::Started);
        t.failure.get_or_insert(Failure {
            during: during.to_owned(),
            message,
            at: now,
            knock_on,
        });
        t.step = Step::Restoring {
            committed,
            rolled_back: false,
        };
    }

    fn on_failed(&mut self, effect: Effect, message: String, now: Timestamp) {
        let during = effect_name(&effect);
        match effect {
            Effect::Prestage(n)
            | Effect::Stop(n)
            | Effect::Collect(n)
            | Effect::Stage(n)
            | Effect::CheckHealth(n) => {
                if let Some(t) = self.terminal(n) {
                    Self::fail_terminal(t, during, message, now);
                }
            }
            Effect::Commit(n) => {
                if let Some(t) = self.terminal(n) {
                    Self::fail_terminal(t, during, message, now);
                    // A swap whose answer was lost may have happened: roll
                    // back, which does nothing if the folder is still old.
                    if let Step::Restoring { committed, .. } = &mut t.step {
                        *committed = true;
                    }
                }
            }
            Effect::Start(n) => {
                if let Some(t) = self.terminal(n) {
                    match t.step {
                        // The new release would not start: put the old one back.
                        Step::Committed => Self::fail_terminal(t, during, message, now),
                        Step::Restoring {
                            committed,
                            rolled_back,
                        } if !committed || rolled_back => {
                            t.step = Step::Abandoned {
                                restart_error: message,
                            };
                        }
                        // A failed start of a till that is not starting.
                        Step::Restoring { .. }
                        | Step::Planned
                        | Step::Prepared
                        | Step::Stopped
                        | Step::Collected
                        | Step::Staged
                        | Step::Started
                        | Step::Upgraded
                        | Step::Restored
                        | Step::Abandoned { .. } => {}
                    }
                }
            }
            Effect::Rollback(n) => {
                if let Some(t) = self.terminal(n)
                    && matches!(
                        t.step,
                        Step::Restoring {
                            committed: true,
                            rolled_back: false
                        }
                    )
                {
                    t.step = Step::Abandoned {
                        restart_error: format!("rollback failed: {message}"),
                    };
                }
            }
            Effect::Prefetch
            | Effect::Gather
            | Effect::UploadBackup
            | Effect::Process
            | Effect::Deliver => {
                self.failure.get_or_insert(Failure {
                    during: during.to_owned(),
                    message: message.clone(),
                    at: now,
                    knock_on: false,
                });
                for t in self.terminals.values_mut() {
                    Self::hold_back(
                        t,
                        during,
                        format!("the store's {during} failed: {message}"),
                        now,
                    );
                }
            }
            Effect::SendReport => {
                // Kept unreported; the listener sends it again later.
                self.reported = false;
                self.phase = Phase::Done;
                self.finished.get_or_insert(now);
            }
        }
        // The canary failed: nothing else is touched.
        if self
            .terminals
            .get(&self.canary)
            .is_some_and(|c| !c.active() && c.step != Step::Upgraded)
        {
            let canary = self.canary;
            for t in self.terminals.values_mut().filter(|t| t.number != canary) {
                // Whatever their step, those not swapped yet are not touched
                // further (none can have swapped: they wait for the canary).
                if t.active() && !matches!(t.step, Step::Committed | Step::Started) {
                    Self::hold_back(
                        t,
                        "canary",
                        format!("not installed: the canary terminal {canary} failed"),
                        now,
                    );
                }
            }
        }
        self.halt_if_too_many_failed(now);
    }

    /// Halts the upgrade once more than `halt_percent` percent of the
    /// terminals after the canary failed on their own: those not swapped
    /// yet stay on the old release (and are restarted on it).
    fn halt_if_too_many_failed(&mut self, now: Timestamp) {
        if self.halted.is_some() {
            return;
        }
        let rest: Vec<&TerminalRun> = self
            .terminals
            .values()
            .filter(|t| t.number != self.canary)
            .collect();
        let failed: Vec<u32> = rest
            .iter()
            .filter(|t| t.failure.as_ref().is_some_and(|f| !f.knock_on))
            .map(|t| t.number)
            .collect();
        if rest.is_empty()
            || failed.len() * 100 <= usize::from(self.policy.halt_percent) * rest.len()
        {
            return;
        }
        let list = failed
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let why = format!(
            "{} of the {} terminals after the canary failed ({list}), more than the {}% allowed",
            failed.len(),
            rest.len(),
            self.policy.halt_percent
        );
        for t in self
            .terminals
            .values_mut()
            .filter(|t| t.number != self.canary)
        {
            if t.active() && !matches!(t.step, Step::Committed | Step::Started) {
                Self::hold_back(
                    t,
                    "halt",
                    format!("not installed: the upgrade halted: {why}"),
                    now,
                );
            }
        }
        self.halted = Some(Failure {
            during: "halt".into(),
            message: format!("the upgrade halted: {why}"),
            at: now,
            knock_on: false,
        });
    }

    /// Moves the store-wide phase on once no active terminal is behind it.
    fn advance(&mut self, now: Timestamp) {
        loop {
            let before = self.phase;
            let behind = |step: &Step| self.active().any(|t| t.step == *step);
            let none_active = self.active().next().is_none();
            self.phase = match self.phase {
                _ if none_active && self.phase < Phase::Reporting => Phase::Reporting,
                Phase::Preparing if self.prefetched && self.gathered && !behind(&Step::Planned) => {
                    Phase::Stopping
                }
                Phase::Stopping if !behind(&Step::Prepared) => Phase::Collecting,
                Phase::Collecting if !behind(&Step::Stopped) => Phase::Uploading,
                Phase::Reporting if self.reported => Phase::Done,
                p => p,
            };
            // Finished once every terminal is: the report that follows
            // carries when, so head office sees how long the store took.
            if matches!(self.phase, Phase::Reporting | Phase::Done) {
                self.finished.get_or_insert(now);
            }
            if self.phase == before {
                break;
            }
        }
    }

    /// True when nothing more is to be done.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// `(done, total)` terminals, for progress displays.
    pub fn progress(&self) -> (usize, usize) {
        (
            self.terminals.values().filter(|t| t.finished()).count(),
            self.terminals.len(),
        )
    }
}

/// A short name for an effect, used in reports.
pub fn effect_name(e: &Effect) -> &'static str {
    match e {
        Effect::Prefetch => "release download",
        Effect::Gather => "gathering of the folders",
        Effect::Prestage(_) => "prestage",
        Effect::Stop(_) => "stop",
        Effect::Collect(_) => "collect",
        Effect::UploadBackup => "backup upload",
        Effect::Process => "processing",
        Effect::Deliver => "delivery",
        Effect::Stage(_) => "stage",
        Effect::Commit(_) => "swap",
        Effect::Start(_) => "start",
        Effect::CheckHealth(_) => "health check",
        Effect::Rollback(_) => "rollback",
        Effect::SendReport => "report",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-11-21T03:00:00Z".parse().unwrap()
    }

    fn new(n: &[u32]) -> Upgrade {
        with(n, Policy::default())
    }

    fn with(n: &[u32], policy: Policy) -> Upgrade {
        let v = |s: &str| s.parse::<Version>().unwrap();
        let planned = n
            .iter()
            .map(|&number| Planned {
                number,
                from: v("1.0.0"),
                to: v("1.1.0"),
            })
            .collect();
        Upgrade::new(
            "u1".into(),
            "stable".into(),
            t0(),
            Trigger::Schedule,
            planned,
            policy,
        )
    }

    fn done(u: Upgrade, e: Effect) -> Upgrade {
        u.step(Event::Done { effect: e }, t0())
    }

    fn fail(u: Upgrade, e: Effect) -> Upgrade {
        u.step(
            Event::Failed {
                effect: e,
                message: "boom".into(),
            },
            t0(),
        )
    }

    /// Runs every wanted effect successfully except those `fails` picks,
    /// until nothing is wanted.
    fn run(u: Upgrade, fails: impl Fn(&Effect) -> bool) -> Upgrade {
        trace(u, fails).0
    }

    #[test]
    fn happy_path_goes_through_every_phase_canary_first() {
        let mut u = new(&[3, 1, 2]);
        assert_eq!(u.canary, 1);
        // Everything that can happen while the programs run comes first.
        assert_eq!(u.wanted(), [Effect::Prefetch].into());
        u = done(u, Effect::Prefetch);
        // The folders are gathered while the terminals stage.
        assert_eq!(
            u.wanted(),
            [
                Effect::Gather,
                Effect::Prestage(1),
                Effect::Prestage(2),
                Effect::Prestage(3)
            ]
            .into()
        );
        for n in [1, 2, 3] {
            assert_eq!(u.phase, Phase::Preparing);
            u = done(u, Effect::Prestage(n));
        }
        // No stop before the folders are gathered.
        assert_eq!(u.phase, Phase::Preparing);
        assert_eq!(u.wanted(), [Effect::Gather].into());
        u = done(u, Effect::Gather);
        assert_eq!(
            u.wanted(),
            [Effect::Stop(1), Effect::Stop(2), Effect::Stop(3)].into()
        );
        for n in [1, 2, 3] {
            u = done(u, Effect::Stop(n));
        }
        assert_eq!(u.phase, Phase::Collecting);
        for n in [1, 2, 3] {
            u = done(u, Effect::Collect(n));
        }
        assert_eq!(u.wanted(), [Effect::UploadBackup].into());
        u = done(
            done(done(u, Effect::UploadBackup), Effect::Process),
            Effect::Deliver,
        );
        assert_eq!(u.phase, Phase::Installing);
        for n in [1, 2, 3] {
            u = done(u, Effect::Stage(n));
        }
        // Only the canary may swap before it is healthy.
        assert_eq!(u.wanted(), [Effect::Commit(1)].into());
        u = done(
            done(done(u, Effect::Commit(1)), Effect::Start(1)),
            Effect::CheckHealth(1),
        );
        assert_eq!(u.wanted(), [Effect::Commit(2), Effect::Commit(3)].into());
        let u = run(u, |_| false);
        assert!(u.is_done() && u.reported);
        assert!(
            u.terminals
                .values()
                .all(|t| t.step == Step::Upgraded && t.stopped_for().is_some())
        );
    }

    /// Every effect a run asked for, in order.
    fn trace(mut u: Upgrade, fails: impl Fn(&Effect) -> bool) -> (Upgrade, Vec<Effect>) {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let wanted = u.wanted();
            if wanted.is_empty() {
                return (u, seen);
            }
            for e in wanted {
                seen.push(e.clone());
                u = if fails(&e) { fail(u, e) } else { done(u, e) };
            }
        }
        panic!("did not settle: {u:?}");
    }

    #[test]
    fn a_failed_download_or_prestage_never_stops_a_terminal() {
        let (u, seen) = trace(new(&[1, 2]), |e| *e == Effect::Prefetch);
        assert!(
            !seen.iter().any(|e| matches!(e, Effect::Stop(_))),
            "{seen:?}"
        );
        assert!(
            u.terminals
                .values()
                .all(|t| t.step == Step::Restored && t.stopped_at.is_none())
        );
        assert_eq!(u.failure.as_ref().unwrap().during, "release download");

        let (u, seen) = trace(new(&[1, 2]), |e| *e == Effect::Gather);
        assert!(
            !seen.iter().any(|e| matches!(e, Effect::Stop(_))),
            "{seen:?}"
        );
        assert!(u.terminals.values().all(|t| t.step == Step::Restored));
        assert_eq!(
            u.failure.as_ref().unwrap().during,
            "gathering of the folders"
        );

        let (u, seen) = trace(new(&[1, 2]), |e| *e == Effect::Prestage(2));
        assert!(!seen.contains(&Effect::Stop(2)), "{seen:?}");
        assert_eq!(u.terminals[&1].step, Step::Upgraded);
        assert_eq!(u.terminals[&2].step, Step::Restored);
    }

    #[test]
    fn a_swap_whose_answer_is_lost_is_rolled_back_before_restart() {
        let (u, seen) = trace(new(&[1]), |e| *e == Effect::Commit(1));
        let tail: Vec<&Effect> = seen.iter().rev().take(3).collect();
        assert_eq!(
            tail,
            [&Effect::SendReport, &Effect::Start(1), &Effect::Rollback(1)]
        );
        assert_eq!(u.terminals[&1].step, Step::Restored);
    }

    #[test]
    fn a_canary_that_fails_early_still_halts_the_rest() {
        for early in [Effect::Prestage(1), Effect::Stop(1), Effect::Collect(1)] {
            let (u, seen) = trace(new(&[1, 2, 3]), |e| *e == early);
            assert!(
                !seen.iter().any(|e| matches!(e, Effect::Commit(_))),
                "{early:?}: {seen:?}"
            );
            assert!(
                u.terminals.values().all(|t| t.step == Step::Restored),
                "{early:?}: {u:?}"
            );
        }
    }

    #[test]
    fn a_failed_canary_touches_nothing_else() {
        let u = run(new(&[1, 2, 3]), |e| *e == Effect::CheckHealth(1));
        assert_eq!(u.terminals[&1].step, Step::Restored);
        assert_eq!(
            u.terminals[&1].failure.as_ref().unwrap().during,
            "health check"
        );
        for n in [2, 3] {
            assert_eq!(u.terminals[&n].step, Step::Restored, "{n}");
            assert_eq!(u.terminals[&n].failure.as_ref().unwrap().during, "canary");
        }
        assert!(u.is_done());
    }

    #[test]
    fn a_committed_terminal_is_rolled_back_before_restart() {
        let mut u = new(&[1]);
        let mut trace = Vec::new();
        for _ in 0..50 {
            for e in u.wanted() {
                trace.push(e.clone());
                u = if e == Effect::CheckHealth(1) {
                    fail(u, e)
                } else {
                    done(u, e)
                };
            }
        }
        let tail: Vec<Effect> = trace.into_iter().rev().take(3).collect();
        assert_eq!(
            tail,
            [Effect::SendReport, Effect::Start(1), Effect::Rollback(1)]
        );
        assert_eq!(u.terminals[&1].step, Step::Restored);
    }

    #[test]
    fn an_unreachable_terminal_is_left_out_and_the_rest_goes_on() {
        let u = run(new(&[1, 2]), |e| {
            matches!(e, Effect::Stop(2) | Effect::Start(2))
        });
        assert_eq!(u.terminals[&1].step, Step::Upgraded);
        assert!(matches!(u.terminals[&2].step, Step::Abandoned { .. }));
        assert!(u.is_done());
    }

    #[test]
    fn a_store_wide_failure_restores_everyone() {
        let u = run(new(&[1, 2]), |e| *e == Effect::Deliver);
        assert!(u.terminals.values().all(|t| t.step == Step::Restored));
        assert_eq!(u.failure.as_ref().unwrap().during, "delivery");
    }

    #[test]
    fn repeating_an_event_changes_nothing() {
        let u = done(new(&[1]), Effect::Stop(1));
        let again = done(u.clone(), Effect::Stop(1));
        assert_eq!(u, again);
    }

    #[test]
    fn the_report_says_when_the_upgrade_finished() {
        let mut u = new(&[1]);
        while !u.wanted().contains(&Effect::SendReport) {
            let e = u
                .wanted()
                .into_iter()
                .next()
                .expect("settles at the report");
            u = done(u, e);
        }
        let finished = u.finished.expect("finished before its report is sent");
        assert!(finished >= u.started);
        let report = crate::report::HistoryEntry::of(&u, vec![]);
        assert_eq!(report.finished, Some(finished));
    }

    #[test]
    fn a_report_that_fails_still_finishes_and_is_kept_unsent() {
        let u = run(new(&[1]), |e| *e == Effect::SendReport);
        assert!(u.is_done() && !u.reported);
    }

    /// Runs one wanted effect at a time, as a listener with `parallel = 1`.
    fn serial(mut u: Upgrade, fails: impl Fn(&Effect) -> bool) -> (Upgrade, Vec<Effect>) {
        let mut seen = Vec::new();
        for _ in 0..500 {
            let Some(e) = u.wanted().into_iter().next() else {
                return (u, seen);
            };
            seen.push(e.clone());
            u = if fails(&e) { fail(u, e) } else { done(u, e) };
        }
        panic!("did not settle: {u:?}");
    }

    fn with_policy(n: &[u32], parallel: u32, halt_percent: u8) -> Upgrade {
        with(
            n,
            Policy {
                canary: Some(3),
                parallel,
                halt_percent,
            },
        )
    }

    #[test]
    fn at_most_parallel_terminals_install_at_once() {
        let u = with_policy(&[1, 2, 3, 4, 5], 2, 100);
        assert_eq!(u.canary, 3);
        let (u, seen) = trace(u, |_| false);
        assert!(u.terminals.values().all(|t| t.step == Step::Upgraded));
        let commits: Vec<_> = seen
            .iter()
            .filter(|e| matches!(e, Effect::Commit(_)))
            .collect();
        assert_eq!(commits[0], &Effect::Commit(3), "the canary first");
        // Replayed with the state: never more than 2 between swap and health.
        let mut u = with_policy(&[1, 2, 3, 4, 5], 2, 100);
        for e in seen {
            u = done(u, e);
            let installing = u
                .terminals
                .values()
                .filter(|t| matches!(t.step, Step::Committed | Step::Started))
                .count();
            assert!(installing <= 2, "{u:?}");
        }
    }

    #[test]
    fn too_many_failures_halt_the_rest_on_the_old_release() {
        // Canary 3 passes; 1 and 2 fail their health check; 4 and 5 are
        // not swapped: 2 of 4 is more than 25 %.
        let u = with_policy(&[1, 2, 3, 4, 5], 1, 25);
        let (u, seen) = serial(u, |e| matches!(e, Effect::CheckHealth(1 | 2)));
        assert_eq!(u.terminals[&3].step, Step::Upgraded);
        for n in [1, 2] {
            let t = &u.terminals[&n];
            assert_eq!(t.step, Step::Restored, "{n}");
            assert!(!t.failure.as_ref().unwrap().knock_on);
        }
        for n in [4, 5] {
            let t = &u.terminals[&n];
            assert_eq!(t.step, Step::Restored, "{n}");
            assert!(!seen.contains(&Effect::Commit(n)), "{n} was swapped");
            let f = t.failure.as_ref().unwrap();
            assert!(f.knock_on && f.during == "halt", "{f:?}");
        }
        let halted = u.halted.as_ref().expect("halted");
        assert!(
            halted
                .message
                .contains("2 of the 4 terminals after the canary failed (1, 2)")
                && halted.message.contains("25%"),
            "{}",
            halted.message
        );
        assert!(u.is_done());

        // One failure of four is within 25 %: the rest go on.
        let u = with_policy(&[1, 2, 3, 4, 5], 1, 25);
        let (u, _) = serial(u, |e| *e == Effect::CheckHealth(1));
        assert!(u.halted.is_none());
        assert_eq!(u.terminals[&1].step, Step::Restored);
        assert!(
            [2, 4, 5]
                .iter()
                .all(|n| u.terminals[n].step == Step::Upgraded)
        );
    }

    #[test]
    fn an_effect_kind_is_its_serialized_name() {
        for e in [
            Effect::Prefetch,
            Effect::Prestage(1),
            Effect::Stop(1),
            Effect::Collect(1),
            Effect::UploadBackup,
            Effect::Process,
            Effect::Deliver,
            Effect::Stage(1),
            Effect::Commit(1),
            Effect::Start(1),
            Effect::CheckHealth(1),
            Effect::Rollback(1),
            Effect::SendReport,
        ] {
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(json["effect"], e.kind(), "{e:?}");
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let u = done(new(&[1, 2]), Effect::Stop(1));
        let back: Upgrade = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(u, back);
    }
}
