//! The fleet at a glance, for head office: each store's terminals and the
//! version they run (from its newest upgrade report), how many stores and
//! tills run each version, upgrades running now, recent failures, and
//! stores that have not checked in for a while.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use tillup_core::report::{HistoryEntry, HistoryTerminal, Outcome};
use tillup_core::rollout::StoreFacts;

use crate::db::Db;
use crate::error::Error;

/// The fleet overview.
#[derive(Clone, Debug, Serialize)]
pub struct Fleet {
    /// Each version, with how many stores and tills run it (a store
    /// counts once per version its tills run).
    pub versions: BTreeMap<String, Count>,
    /// Each store.
    pub stores: Vec<StoreView>,
    /// Upgrades that failed at some terminal in the last day and week.
    pub failures_day: usize,
    /// See `failures_day`.
    pub failures_week: usize,
    /// Store upgrades whose backup arrived within [`RUNNING_WITHIN`] and
    /// whose report has not: running now. Newest first.
    pub upgrading: Vec<crate::db::UpgradeRow>,
}

/// How long after its backup an upgrade without a report counts as
/// running; one older was cut off, and its store's next check resumes and
/// reports it.
pub const RUNNING_WITHIN: SignedDuration = SignedDuration::from_hours(2);

/// Stores and tills.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    /// Stores with at least one till on it.
    pub stores: usize,
    /// Tills on it.
    pub tills: usize,
}

/// One store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreView {
    /// Its id.
    pub id: String,
    /// When it last fetched its log.
    pub last_check: Option<Timestamp>,
    /// When its token was revoked, if it was.
    pub revoked: Option<Timestamp>,
    /// Its labels (region, tags), which rollouts choose stores by.
    pub labels: BTreeSet<String>,
    /// It has not checked in for longer than asked (or never did).
    pub silent: bool,
    /// Each terminal's number and the version it runs, as its newest
    /// upgrade report says (none: no report yet).
    pub terminals: BTreeMap<u32, String>,
    /// When its newest upgrade report arrived.
    pub last_report: Option<Timestamp>,
    /// Why its newest upgrade failed at a terminal, if it did.
    pub last_failure: Option<String>,
}

/// The overview at `now`; a store is silent after `silent_after` without a check.
pub fn overview(db: &dyn Db, now: Timestamp, silent_after: SignedDuration) -> Result<Fleet, Error> {
    let (day, week) = (
        SignedDuration::from_hours(24),
        SignedDuration::from_hours(24 * 7),
    );
    let mut fleet = Fleet {
        versions: BTreeMap::new(),
        stores: Vec::new(),
        failures_day: 0,
        failures_week: 0,
        upgrading: db.unreported_upgrades(now - RUNNING_WITHIN)?,
    };
    let mut labels = db.store_labels()?;
    for store in db.stores()? {
        let mut view = StoreView {
            labels: labels.remove(&store.id).unwrap_or_default(),
            silent: store.revoked.is_none()
                && store
                    .last_check
                    .is_none_or(|t| now.duration_since(t) > silent_after),
            id: store.id,
            last_check: store.last_check,
            revoked: store.revoked,
            terminals: BTreeMap::new(),
            last_report: None,
            last_failure: None,
        };
        let upgrades: Vec<(Timestamp, HistoryEntry)> = db
            .reports(&view.id)?
            .into_iter()
            .filter_map(|r| Some((r.received, r.upgrade()?)))
            .collect();
        for (received, entry) in &upgrades {
            let failed = entry.halted.is_some()
                || entry
                    .terminals
                    .iter()
                    .any(|t| matches!(t.result, Outcome::Restored | Outcome::Abandoned));
            let age = now.duration_since(*received);
            fleet.failures_day += usize::from(failed && age <= day);
            fleet.failures_week += usize::from(failed && age <= week);
        }
        if let Some((received, newest)) = upgrades.last() {
            view.last_report = Some(*received);
            for t in &newest.terminals {
                view.terminals.insert(t.number, runs(t).to_string());
            }
            view.last_failure = newest
                .terminals
                .iter()
                .filter_map(|t| {
                    t.failure
                        .as_ref()
                        .map(|f| format!("terminal {}: {f}", t.number))
                })
                .chain(newest.halted.clone())
                .reduce(|a, b| format!("{a}; {b}"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for version in view.terminals.values() {
            let count = fleet.versions.entry(version.clone()).or_default();
            count.tills += 1;
            if seen.insert(version.clone()) {
                count.stores += 1;
            }
        }
        fleet.stores.push(view);
    }
    Ok(fleet)
}

/// What a rollout's filter asks of store `store`: its `labels`, and the
/// versions and models of its tills by its newest upgrade report (none: it
/// never reported one).
pub fn facts(db: &dyn Db, store: &str, labels: BTreeSet<String>) -> Result<StoreFacts, Error> {
    let newest = db.reports(store)?.iter().rev().find_map(|r| r.upgrade());
    let terminals = newest.map(|n| n.terminals).unwrap_or_default();
    Ok(StoreFacts {
        labels,
        running: terminals.iter().map(|t| runs(t).clone()).collect(),
        models: terminals.iter().filter_map(|t| t.model.clone()).collect(),
    })
}

/// The version a terminal runs after an upgrade it took part in.
fn runs(t: &HistoryTerminal) -> &semver::Version {
    match t.result {
        Outcome::Upgraded => &t.to,
        Outcome::Restored | Outcome::Abandoned | Outcome::InProgress => &t.from,
    }
}

/// The most upgrades a store page lists.
pub const STORE_HISTORY: usize = 50;

/// One store, as its page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct StorePage {
    /// Its id, check-in and token state.
    pub store: crate::db::StoreRow,
    /// The channels its token reads.
    pub channels: Vec<String>,
    /// Its labels.
    pub labels: BTreeSet<String>,
    /// Each terminal as the store's reports last mention it.
    pub terminals: Vec<TerminalView>,
    /// Its upgrades with per-till results and timings, newest first.
    pub history: Vec<HistoryEntry>,
}

/// One terminal of a store.
#[derive(Clone, Debug, Serialize)]
pub struct TerminalView {
    /// Its number.
    pub number: u32,
    /// Its model, if its store's listener reported it.
    pub model: Option<String>,
    /// The version it runs.
    pub version: semver::Version,
    /// How its last upgrade ended for it.
    pub state: Outcome,
    /// Why, when it failed.
    pub failure: Option<String>,
    /// When the report that mentions it last arrived.
    pub last_report: Timestamp,
    /// What its agent did on its own during that upgrade.
    pub notices: serde_json::Value,
}

/// Store `id`'s page; `None` if there is no such store.
pub fn store_page(db: &dyn Db, id: &str) -> Result<Option<StorePage>, Error> {
    let Some(store) = db.stores()?.into_iter().find(|s| s.id == id) else {
        return Ok(None);
    };
    let reports = db.reports(id)?;
    let mut terminals = BTreeMap::new();
    let mut history = Vec::new();
    for report in &reports {
        let Some(entry) = report.upgrade() else {
            continue;
        };
        for t in &entry.terminals {
            let notices = report.report["agent_notices"]
                .get(t.number.to_string())
                .cloned()
                .unwrap_or_default();
            terminals.insert(
                t.number,
                TerminalView {
                    number: t.number,
                    model: t.model.clone(),
                    version: runs(t).clone(),
                    state: t.result,
                    failure: t.failure.clone(),
                    last_report: report.received,
                    notices,
                },
            );
        }
        history.push(entry);
    }
    history.reverse();
    history.truncate(STORE_HISTORY);
    Ok(Some(StorePage {
        channels: db.store_channels(id)?,
        labels: db.store_labels()?.remove(id).unwrap_or_default(),
        store,
        terminals: terminals.into_values().collect(),
        history,
    }))
}
