//! tillup updating itself: its programs are a second product, released on
//! a channel of their own ([`SELF_CHANNEL`] by default) through the same
//! signed log, with one file per program at the top of the release
//! ([`Program::file_name`]) and the platform as the release's model
//! ([`platform`]).
//!
//! A program replaces its own executable in three steps, each recorded in
//! a [`Trial`] written before the step is taken: the new executable is
//! renamed over the running one with the old one kept beside it
//! ([`TrialPhase::Swapped`]); it is started once as a probe, which must
//! pass the program's self-check ([`TrialPhase::Probed`]); the program then
//! restarts on it ([`TrialPhase::Started`]) and confirms it once healthy,
//! which removes the trial. [`on_start`] is what a program decides when it
//! starts and finds a trial: a trial that never got past the probe, or a
//! second start that was never confirmed (the new executable died), goes
//! back to the old executable.

use semver::Version;
use serde::{Deserialize, Serialize};

/// The channel tillup's own releases are published on, unless configured.
pub const SELF_CHANNEL: &str = "tillup";

/// The argument that asks a program for its self-check: it loads its
/// configuration and state as it would to run, prints what it is, and
/// exits 0 only if it could run.
pub const SELF_CHECK: &str = "self-check";

/// What the notice of a program that went back to its kept executable
/// says, for the host that waits for the new one to answer.
pub const WENT_BACK: &str = "went back to";

/// The platform a release of tillup's programs is built for, as the
/// release's model names it: `linux-x86_64`, `windows-x86_64`, …
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// A program of tillup that updates itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Program {
    /// The store host's listener (`tillup`).
    Listener,
    /// The agent on a terminal (`tillup-agent`).
    Agent,
    /// The store manager's tray icon on the host (`tillup-tray`), which
    /// runs the listener's library in its own process.
    Tray,
    /// The store manager's window, started by the tray (`tillup-window`).
    Window,
}

impl Program {
    /// Every program a release of tillup may hold.
    pub const ALL: [Program; 4] = [
        Program::Listener,
        Program::Agent,
        Program::Tray,
        Program::Window,
    ];

    /// The programs of a store's host, replaced together as one (a tray
    /// runs the listener's code, and starts the window): whichever of
    /// them updates the host swaps, keeps and puts back all of those
    /// installed beside it.
    pub const HOST: [Program; 3] = [Program::Listener, Program::Tray, Program::Window];

    /// Its file in a release of tillup (and its executable's name).
    pub fn file_name(self) -> String {
        let stem = match self {
            Self::Listener => "tillup",
            Self::Agent => "tillup-agent",
            Self::Tray => "tillup-tray",
            Self::Window => "tillup-window",
        };
        format!("{stem}{}", std::env::consts::EXE_SUFFIX)
    }
}

/// A new executable on trial (`self-update.json` in the program's state
/// folder); none when the running executable is settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub program: Program,
    /// The release the kept executable is.
    pub from: Version,
    /// The release on trial.
    pub to: Version,
    pub phase: TrialPhase,
}

/// How far a [`Trial`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialPhase {
    /// The new executable is (or is about to be) in place; its probe has
    /// not passed.
    Swapped,
    /// Its probe passed; the program is about to restart on it.
    Probed,
    /// The program started on it once and has not confirmed it yet.
    Started,
}

/// What a program does when it starts and finds `trial`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnStart {
    /// Nothing is on trial: run.
    Run,
    /// Run on the new executable, on trial: remember `Trial` (now
    /// [`TrialPhase::Started`]) first, and confirm once healthy.
    RunOnTrial(Trial),
    /// Put the kept executable back, forget the trial, and restart on it.
    GoBack(Trial),
}

/// The decision at start-up (see the module's documentation).
pub fn on_start(trial: Option<&Trial>) -> OnStart {
    let Some(trial) = trial else {
        return OnStart::Run;
    };
    match trial.phase {
        // Cut before its probe passed: nothing says the new one runs.
        TrialPhase::Swapped => OnStart::GoBack(trial.clone()),
        TrialPhase::Probed => OnStart::RunOnTrial(Trial {
            phase: TrialPhase::Started,
            ..trial.clone()
        }),
        // It started before and died before it was confirmed.
        TrialPhase::Started => OnStart::GoBack(trial.clone()),
    }
}

/// Whether a program running `running` should take release `offered`.
pub fn wanted(running: &Version, offered: &Version) -> bool {
    offered > running
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trial(phase: TrialPhase) -> Trial {
        Trial {
            program: Program::Listener,
            from: Version::new(0, 1, 0),
            to: Version::new(0, 2, 0),
            phase,
        }
    }

    #[test]
    fn nothing_on_trial_runs() {
        assert_eq!(on_start(None), OnStart::Run);
    }

    #[test]
    fn a_probed_executable_runs_on_trial_once() {
        let OnStart::RunOnTrial(next) = on_start(Some(&trial(TrialPhase::Probed))) else {
            panic!("a probed executable runs");
        };
        assert_eq!(next.phase, TrialPhase::Started);
        // The next start without a confirmation goes back.
        assert!(matches!(on_start(Some(&next)), OnStart::GoBack(_)));
    }

    #[test]
    fn a_swap_cut_before_its_probe_passed_goes_back() {
        assert!(matches!(
            on_start(Some(&trial(TrialPhase::Swapped))),
            OnStart::GoBack(t) if t.from == Version::new(0, 1, 0)
        ));
    }

    #[test]
    fn file_names_are_the_programs() {
        assert!(Program::Listener.file_name().starts_with("tillup"));
        assert!(Program::Agent.file_name().starts_with("tillup-agent"));
        assert!(platform().contains('-'));
    }

    fn any_phase() -> impl Strategy<Value = TrialPhase> {
        prop_oneof![
            Just(TrialPhase::Swapped),
            Just(TrialPhase::Probed),
            Just(TrialPhase::Started),
        ]
    }

    proptest! {
        /// Whatever the phase a crash left, at most one more start runs the
        /// new executable unconfirmed: starting again without a confirmation
        /// always ends on the kept one.
        #[test]
        fn unconfirmed_trials_end_on_the_kept_executable(phase in any_phase(), starts in 1usize..5) {
            let mut current = Some(trial(phase));
            let mut ran_new = 0;
            for _ in 0..starts {
                match on_start(current.as_ref()) {
                    OnStart::Run => break,
                    OnStart::RunOnTrial(next) => { ran_new += 1; current = Some(next); }
                    OnStart::GoBack(_) => current = None,
                }
            }
            prop_assert!(ran_new <= 1);
            if starts >= 2 {
                prop_assert!(current.is_none());
            }
        }
    }
}
