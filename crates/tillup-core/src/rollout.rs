//! Staged rollouts of a release across a chain's stores: the rules, as
//! pure functions with time passed in (the head office's shell keeps the
//! state and asks these what to do).
//!
//! A rollout runs in waves ([`Plan`]): named pilot stores, then shares of
//! the remaining eligible stores (10 %, 50 %, 100 %: cumulative). Which
//! store falls in which wave is fixed when the rollout starts
//! ([`assign`]), by a hash of the rollout's id and the store's, so it
//! does not move as stores report. A wave advances by itself once enough
//! of its stores reported success and it soaked long enough; the rollout
//! halts by itself once too many failed (a failed canary at a store is a
//! failure). People may approve (a second person, when the plan asks),
//! pause, resume, advance by hand, or abort ([`Rollout::step`]). A store
//! may install only once its wave is reached ([`Rollout::admits`]).

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The waves of a rollout, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub waves: Vec<WaveSpec>,
    /// A second person must approve before the first wave starts.
    pub requires_approval: bool,
    /// Which of the channel's stores the rollout is for (all by default).
    #[serde(default)]
    pub filter: StoreFilter,
}

/// Which stores a rollout is for, beyond reading its channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFilter {
    /// Labels a store must all carry (`region=north`, `mall`: whatever IT
    /// labelled its stores with).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub labels: BTreeSet<String>,
    /// Versions a store's tills must all run now, by its newest report
    /// (none: any); a store that never reported is then left out.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub running: BTreeSet<semver::Version>,
    /// Terminal models a store must have at least one till of, by its
    /// newest report (none: any); a store that never reported is then left
    /// out.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub models: BTreeSet<String>,
}

/// What head office knows of a store, for a [`StoreFilter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreFacts {
    pub labels: BTreeSet<String>,
    /// The versions its tills run, by its newest upgrade report.
    pub running: BTreeSet<semver::Version>,
    /// Its tills' models, by the same report.
    pub models: BTreeSet<String>,
}

impl StoreFilter {
    /// Whether the store `facts` describe is chosen.
    pub fn admits(&self, facts: &StoreFacts) -> bool {
        self.labels.is_subset(&facts.labels)
            && (self.running.is_empty()
                || (!facts.running.is_empty() && facts.running.is_subset(&self.running)))
            && (self.models.is_empty() || !self.models.is_disjoint(&facts.models))
    }

    /// Whether choosing a store needs its reports (versions or models).
    pub fn needs_reports(&self) -> bool {
        !self.running.is_empty() || !self.models.is_empty()
    }
}

/// One wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSpec {
    pub name: String,
    pub stores: WaveStores,
    /// The share of the wave's stores that must have succeeded (percent)
    /// before the next wave starts.
    pub success_percent: u8,
    /// The share of the wave's stores whose failure halts the rollout
    /// (percent): more than this many halt it.
    pub error_percent: u8,
    /// How long the wave runs at least before the next one starts.
    pub soak_secs: u64,
}

/// Which stores a wave holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveStores {
    /// These stores (the pilots), if eligible.
    Named(BTreeSet<String>),
    /// Up to this share (percent, cumulative over the share waves) of the
    /// eligible stores no wave names.
    Share(u8),
}

/// Why a plan, or a person's action, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("the plan is invalid: {0}")]
    Plan(String),
    #[error("{action} is not possible while the rollout is {phase}")]
    NotNow { action: &'static str, phase: String },
    #[error(
        "{by} created this rollout and cannot approve it too: another person with the releaser or admin role must"
    )]
    SamePerson { by: String },
}

impl Plan {
    /// Checks the plan: at least one wave, percentages at most 100, share
    /// waves growing and the last of them at 100 % (every eligible store
    /// is reached in the end).
    pub fn validate(&self) -> Result<(), RolloutError> {
        let bad = |m: String| Err(RolloutError::Plan(m));
        if self.waves.is_empty() {
            return bad("a rollout needs at least one wave".into());
        }
        let mut last_share = 0;
        for w in &self.waves {
            if w.success_percent > 100 || w.error_percent > 100 {
                return bad(format!("wave `{}`: percentages go up to 100", w.name));
            }
            match &w.stores {
                WaveStores::Named(s) if s.is_empty() => {
                    return bad(format!("wave `{}` names no store", w.name));
                }
                WaveStores::Named(_) => {}
                WaveStores::Share(p) if *p <= last_share || *p > 100 => {
                    return bad(format!(
                        "wave `{}`: shares must grow from one wave to the next, up to 100 % ({p} % after {last_share} %)",
                        w.name
                    ));
                }
                WaveStores::Share(p) => last_share = *p,
            }
        }
        if last_share != 100 {
            return bad(format!(
                "the last share wave reaches {last_share} % of the stores: end with a 100 % wave so every store gets the release"
            ));
        }
        Ok(())
    }
}

/// The stores of each wave (disjoint), out of `eligible` (the stores the
/// rollout's filter chose), fixed by `seed` (the rollout's id).
pub fn assign(plan: &Plan, eligible: &BTreeSet<String>, seed: &str) -> Vec<BTreeSet<String>> {
    let named: BTreeSet<&String> = plan
        .waves
        .iter()
        .filter_map(|w| match &w.stores {
            WaveStores::Named(s) => Some(s),
            WaveStores::Share(_) => None,
        })
        .flatten()
        .collect();
    let mut rest: Vec<&String> = eligible.iter().filter(|s| !named.contains(s)).collect();
    rest.sort_by_key(|s| Sha256::digest(format!("{seed}\0{s}")));
    let mut taken = 0;
    plan.waves
        .iter()
        .map(|w| match &w.stores {
            WaveStores::Named(s) => s.intersection(eligible).cloned().collect(),
            WaveStores::Share(p) => {
                let upto = (rest.len() * usize::from(*p)).div_ceil(100);
                let wave = rest[taken..upto].iter().map(|s| (*s).clone()).collect();
                taken = upto;
                wave
            }
        })
        .collect()
}

/// What a store reported for the rollout's release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum StoreResult {
    Succeeded,
    /// Its upgrade failed (a failed canary included), with why.
    Failed {
        why: String,
    },
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Waiting for a second person.
    AwaitingApproval,
    /// Wave `wave` runs since `since`.
    Running { wave: usize, since: Timestamp },
    /// Wave `wave` (started at `since`) holds: no wave starts by itself;
    /// the stores already in reach may still install.
    Paused { wave: usize, since: Timestamp },
    /// Stopped by itself at wave `wave`: no store installs.
    Halted { wave: usize, why: String },
    /// Stopped by a person: no store installs.
    Aborted { by: String },
    /// Every wave passed: every eligible store may install.
    Done,
}

/// What moves a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed, or a store reported: look at the current wave.
    Look,
    Approve {
        by: String,
    },
    Pause {
        by: String,
    },
    Resume {
        by: String,
    },
    /// Start the next wave now, whatever the current one's results.
    Advance {
        by: String,
    },
    Abort {
        by: String,
    },
}

/// A rollout's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub created_by: String,
    pub phase: Phase,
}

impl Rollout {
    /// A new rollout: waiting for approval if the plan asks, else running
    /// its first wave from `now`.
    pub fn new(plan: &Plan, created_by: &str, now: Timestamp) -> Self {
        let phase = if plan.requires_approval {
            Phase::AwaitingApproval
        } else {
            Phase::Running {
                wave: 0,
                since: now,
            }
        };
        Self {
            created_by: created_by.to_owned(),
            phase,
        }
    }

    /// The next state after `event` at `now`, given each wave's stores
    /// ([`assign`]) and what stores reported.
    pub fn step(
        &self,
        plan: &Plan,
        waves: &[BTreeSet<String>],
        results: &BTreeMap<String, StoreResult>,
        event: &Event,
        now: Timestamp,
    ) -> Result<Rollout, RolloutError> {
        let next = |phase| {
            Ok(Rollout {
                phase,
                ..self.clone()
            })
        };
        let not_now = |action| {
            Err(RolloutError::NotNow {
                action,
                phase: phase_name(&self.phase).into(),
            })
        };
        let start = |wave: usize| {
            if wave >= plan.waves.len() {
                Phase::Done
            } else {
                Phase::Running { wave, since: now }
            }
        };
        match (event, &self.phase) {
            (Event::Look, Phase::Running { wave, since }) => {
                let (w, stores) = (&plan.waves[*wave], &waves[*wave]);
                let total = stores.len();
                let failed: Vec<&String> = stores
                    .iter()
                    .filter(|s| matches!(results.get(*s), Some(StoreResult::Failed { .. })))
                    .collect();
                let succeeded = stores
                    .iter()
                    .filter(|s| results.get(*s) == Some(&StoreResult::Succeeded))
                    .count();
                if failed.len() * 100 > usize::from(w.error_percent) * total {
                    let why = failed
                        .iter()
                        .map(|s| match results.get(*s) {
                            Some(StoreResult::Failed { why }) => format!("{s}: {why}"),
                            Some(StoreResult::Succeeded) | None => (*s).clone(),
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    return next(Phase::Halted {
                        wave: *wave,
                        why: format!(
                            "wave `{}`: {} of {total} stores failed, over its {} %: {why}",
                            w.name,
                            failed.len(),
                            w.error_percent
                        ),
                    });
                }
                let soaked = now.duration_since(*since)
                    >= SignedDuration::from_secs(i64::try_from(w.soak_secs).unwrap_or(i64::MAX));
                // A wave with no store (pilots not eligible, a share of
                // too few stores) has nothing to wait for.
                if (soaked || total == 0)
                    && succeeded * 100 >= usize::from(w.success_percent) * total
                {
                    return next(start(wave + 1));
                }
                next(self.phase.clone())
            }
            (Event::Look, _) => next(self.phase.clone()),
            (Event::Approve { by }, Phase::AwaitingApproval) if *by == self.created_by => {
                Err(RolloutError::SamePerson { by: by.clone() })
            }
            (Event::Approve { .. }, Phase::AwaitingApproval) => next(start(0)),
            (Event::Approve { .. }, _) => not_now("approving"),
            (Event::Pause { .. }, Phase::Running { wave, since }) => next(Phase::Paused {
                wave: *wave,
                since: *since,
            }),
            (Event::Pause { .. }, _) => not_now("pausing"),
            (Event::Resume { .. }, Phase::Paused { wave, since }) => next(Phase::Running {
                wave: *wave,
                since: *since,
            }),
            (Event::Resume { .. }, _) => not_now("resuming"),
            (
                Event::Advance { .. },
                Phase::Running { wave, .. }
                | Phase::Paused { wave, .. }
                | Phase::Halted { wave, .. },
            ) => next(start(wave + 1)),
            (Event::Advance { .. }, _) => not_now("advancing"),
            (
                Event::Abort { by },
                Phase::AwaitingApproval
                | Phase::Running { .. }
                | Phase::Paused { .. }
                | Phase::Halted { .. },
            ) => next(Phase::Aborted { by: by.clone() }),
            (Event::Abort { .. }, Phase::Aborted { .. } | Phase::Done) => not_now("aborting"),
        }
    }

    /// Whether `store` may install the rollout's release now.
    pub fn admits(&self, waves: &[BTreeSet<String>], store: &str) -> bool {
        let reached = |upto: usize| waves.iter().take(upto + 1).any(|w| w.contains(store));
        match &self.phase {
            Phase::Running { wave, .. } | Phase::Paused { wave, .. } => reached(*wave),
            Phase::Done => waves.iter().any(|w| w.contains(store)),
            Phase::AwaitingApproval | Phase::Halted { .. } | Phase::Aborted { .. } => false,
        }
    }
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::AwaitingApproval => "awaiting approval",
        Phase::Running { .. } => "running",
        Phase::Paused { .. } => "paused",
        Phase::Halted { .. } => "halted",
        Phase::Aborted { .. } => "aborted",
        Phase::Done => "done",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn stores(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("store-{i:03}")).collect()
    }

    fn wave(name: &str, stores: WaveStores) -> WaveSpec {
        WaveSpec {
            name: name.into(),
            stores,
            success_percent: 80,
            error_percent: 10,
            soak_secs: 3600,
        }
    }

    /// Pilots 000 and 001, then 50 %, then 100 %.
    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn versions(items: &[&str]) -> BTreeSet<semver::Version> {
        items.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn facts(labels: &[&str], running: &[&str], models: &[&str]) -> StoreFacts {
        StoreFacts {
            labels: set(labels),
            running: versions(running),
            models: set(models),
        }
    }

    #[test]
    fn a_filter_chooses_stores_by_every_label_what_all_their_tills_run_and_a_model() {
        let f = StoreFilter {
            labels: set(&["region=north", "mall"]),
            running: versions(&["1.0.0", "1.0.1"]),
            models: set(&["CP-500", "CP-700"]),
        };
        let north_mall = &["region=north", "mall", "flagship"][..];
        assert!(f.admits(&facts(north_mall, &["1.0.0"], &["CP-500"])));
        assert!(f.admits(&facts(
            north_mall,
            &["1.0.0", "1.0.1"],
            &["CP-700", "OLD-1"]
        )));
        // One till on another version, a label missing, no till of the
        // models, or no report yet.
        assert!(!f.admits(&facts(north_mall, &["1.0.0", "0.9.0"], &["CP-500"])));
        assert!(!f.admits(&facts(&["region=north"], &["1.0.0"], &["CP-500"])));
        assert!(!f.admits(&facts(north_mall, &["1.0.0"], &["OLD-1"])));
        assert!(!f.admits(&facts(north_mall, &[], &[])));
        assert!(f.needs_reports());
        // No filter: every store, reported or not.
        assert!(StoreFilter::default().admits(&StoreFacts::default()));
        assert!(!StoreFilter::default().needs_reports());
    }

    fn plan(approval: bool) -> Plan {
        Plan {
            waves: vec![
                wave(
                    "pilot",
                    WaveStores::Named(["store-000".into(), "store-001".into()].into()),
                ),
                wave("half", WaveStores::Share(50)),
                wave("all", WaveStores::Share(100)),
            ],
            requires_approval: approval,
            filter: StoreFilter::default(),
        }
    }

    fn ok(results: &mut BTreeMap<String, StoreResult>, wave: &BTreeSet<String>) {
        for s in wave {
            results.insert(s.clone(), StoreResult::Succeeded);
        }
    }

    #[test]
    fn waves_are_disjoint_cover_every_eligible_store_and_do_not_move() {
        let eligible = stores(40);
        let waves = assign(&plan(false), &eligible, "r1");
        assert_eq!(waves[0].len(), 2);
        assert_eq!(waves[1].len(), 19, "half of the 38 others");
        assert_eq!(waves[2].len(), 19);
        let all: BTreeSet<String> = waves.iter().flatten().cloned().collect();
        assert_eq!(all, eligible);
        assert_eq!(
            waves,
            assign(&plan(false), &eligible, "r1"),
            "fixed by the seed"
        );
        assert_ne!(waves[1], assign(&plan(false), &eligible, "r2")[1]);
    }

    #[test]
    fn a_wave_advances_once_it_succeeded_and_soaked() {
        let p = plan(false);
        let waves = assign(&p, &stores(40), "r");
        let mut results = BTreeMap::new();
        let r = Rollout::new(&p, "ana", t(0));
        assert!(r.admits(&waves, "store-000"));
        let outsider = waves[1].iter().next().unwrap();
        assert!(!r.admits(&waves, outsider), "outside the wave: no install");
        ok(&mut results, &waves[0]);
        // Succeeded but not soaked.
        let r = r.step(&p, &waves, &results, &Event::Look, t(60)).unwrap();
        assert!(matches!(r.phase, Phase::Running { wave: 0, .. }));
        let r = r.step(&p, &waves, &results, &Event::Look, t(3600)).unwrap();
        assert_eq!(
            r.phase,
            Phase::Running {
                wave: 1,
                since: t(3600)
            }
        );
        assert!(r.admits(&waves, outsider));
        ok(&mut results, &waves[1]);
        let r = r.step(&p, &waves, &results, &Event::Look, t(7200)).unwrap();
        ok(&mut results, &waves[2]);
        let r = r
            .step(&p, &waves, &results, &Event::Look, t(10800))
            .unwrap();
        assert_eq!(r.phase, Phase::Done);
    }

    #[test]
    fn failures_over_the_error_threshold_halt_it_saying_where_and_why() {
        let p = plan(false);
        let waves = assign(&p, &stores(40), "r");
        let mut results = BTreeMap::new();
        ok(&mut results, &waves[0]);
        let r = Rollout::new(&p, "ana", t(0))
            .step(&p, &waves, &results, &Event::Look, t(3600))
            .unwrap();
        let half: Vec<&String> = waves[1].iter().collect();
        // One failure in 19 is within 10 %; two are over it.
        results.insert(
            half[0].clone(),
            StoreResult::Failed {
                why: "terminal 1: the canary failed its health check".into(),
            },
        );
        let r = r.step(&p, &waves, &results, &Event::Look, t(3700)).unwrap();
        assert!(matches!(r.phase, Phase::Running { wave: 1, .. }));
        results.insert(
            half[1].clone(),
            StoreResult::Failed {
                why: "disk full".into(),
            },
        );
        let r = r.step(&p, &waves, &results, &Event::Look, t(3800)).unwrap();
        let Phase::Halted { wave: 1, why } = &r.phase else {
            panic!("{:?}", r.phase);
        };
        assert!(why.contains("wave `half`: 2 of 19 stores failed"), "{why}");
        assert!(why.contains("the canary failed its health check"), "{why}");
        assert!(
            !r.admits(&waves, "store-000"),
            "a halted rollout admits nobody"
        );
    }

    #[test]
    fn approval_needs_a_second_person() {
        let p = plan(true);
        let waves = assign(&p, &stores(10), "r");
        let r = Rollout::new(&p, "ana", t(0));
        assert!(!r.admits(&waves, "store-000"));
        let none = BTreeMap::new();
        let err = r
            .step(
                &p,
                &waves,
                &none,
                &Event::Approve { by: "ana".into() },
                t(1),
            )
            .unwrap_err();
        assert!(matches!(err, RolloutError::SamePerson { .. }), "{err}");
        let r = r
            .step(&p, &waves, &none, &Event::Approve { by: "bo".into() }, t(2))
            .unwrap();
        assert_eq!(
            r.phase,
            Phase::Running {
                wave: 0,
                since: t(2)
            }
        );
    }

    #[test]
    fn people_pause_resume_advance_and_abort() {
        let p = plan(false);
        let waves = assign(&p, &stores(10), "r");
        let mut results = BTreeMap::new();
        ok(&mut results, &waves[0]);
        let by = || "it".to_owned();
        let r = Rollout::new(&p, "ana", t(0));
        let r = r
            .step(&p, &waves, &results, &Event::Pause { by: by() }, t(1))
            .unwrap();
        // Paused: soaked and succeeded, it still holds.
        let r = r.step(&p, &waves, &results, &Event::Look, t(9999)).unwrap();
        assert!(matches!(r.phase, Phase::Paused { wave: 0, .. }));
        let r = r
            .step(&p, &waves, &results, &Event::Resume { by: by() }, t(10_000))
            .unwrap();
        let r = r
            .step(
                &p,
                &waves,
                &results,
                &Event::Advance { by: by() },
                t(10_001),
            )
            .unwrap();
        assert_eq!(
            r.phase,
            Phase::Running {
                wave: 1,
                since: t(10_001)
            }
        );
        let r = r
            .step(&p, &waves, &results, &Event::Abort { by: by() }, t(10_002))
            .unwrap();
        assert!(
            !waves.iter().flatten().any(|s| r.admits(&waves, s)),
            "an abort stops every new install"
        );
        assert!(
            r.step(&p, &waves, &results, &Event::Resume { by: by() }, t(10_003))
                .is_err()
        );
    }

    #[test]
    fn a_wave_without_stores_is_passed_at_once() {
        let p = plan(false);
        // Neither pilot is eligible.
        let eligible: BTreeSet<String> = ["store-100".into(), "store-101".into()].into();
        let waves = assign(&p, &eligible, "r");
        assert!(waves[0].is_empty());
        let r = Rollout::new(&p, "ana", t(0));
        let r = r
            .step(&p, &waves, &BTreeMap::new(), &Event::Look, t(1))
            .unwrap();
        assert_eq!(
            r.phase,
            Phase::Running {
                wave: 1,
                since: t(1)
            }
        );
    }

    #[test]
    fn plans_that_would_leave_stores_out_are_refused() {
        let mut p = plan(false);
        p.waves.pop();
        assert!(p.validate().is_err(), "no 100 % wave");
        let mut p = plan(false);
        p.waves.swap(1, 2);
        assert!(p.validate().is_err(), "shares must grow");
        assert!(plan(false).validate().is_ok());
    }

    proptest! {
        /// Whatever the stores report and whenever it is looked at, no store
        /// outside the waves reached so far is admitted, and an admitted
        /// store stays admitted until a halt or an abort.
        #[test]
        fn no_store_installs_before_its_wave(
            n in 1usize..60,
            failures in proptest::collection::vec(any::<bool>(), 60),
            looks in proptest::collection::vec(0i64..20_000, 1..12),
        ) {
            let p = plan(false);
            let eligible = stores(n);
            let waves = assign(&p, &eligible, "seed");
            let results: BTreeMap<String, StoreResult> = eligible
                .iter()
                .zip(&failures)
                .map(|(s, f)| (s.clone(), if *f { StoreResult::Failed { why: "x".into() } } else { StoreResult::Succeeded }))
                .collect();
            let mut r = Rollout::new(&p, "ana", t(0));
            let mut now = 0;
            let mut admitted: BTreeSet<String> = BTreeSet::new();
            for dt in looks {
                now += dt;
                r = r.step(&p, &waves, &results, &Event::Look, t(now)).unwrap();
                let upto = match &r.phase {
                    Phase::Running { wave, .. } | Phase::Paused { wave, .. } => Some(*wave),
                    Phase::Done => Some(waves.len() - 1),
                    Phase::AwaitingApproval | Phase::Halted { .. } | Phase::Aborted { .. } => None,
                };
                for s in &eligible {
                    let in_reach = upto.is_some_and(|u| waves.iter().take(u + 1).any(|w| w.contains(s)));
                    prop_assert_eq!(r.admits(&waves, s), in_reach);
                    if upto.is_some() && admitted.contains(s) {
                        prop_assert!(r.admits(&waves, s));
                    }
                    if in_reach { admitted.insert(s.clone()); }
                }
            }
        }
    }
}
