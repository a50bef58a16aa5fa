//! Staged rollouts at head office: the shell around
//! [`tillup_core::rollout`]'s rules. It keeps each rollout in the
//! database, feeds the rules the stores' reports and people's actions,
//! and turns where a rollout is into the release's signed admission
//! ([`tillup_core::log::Release::stores`]): the only thing a store acts on.
//! Every step is safe to repeat: the admission is computed from the
//! stored state, and a state is saved only over the one it was computed
//! from.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use tillup_core::report::StoreOutcome;
use tillup_core::rollout::{
    Event, Phase, Plan, Rollout, RolloutError, StoreFacts, StoreResult, assign,
};

use crate::data::KeySource;
use crate::db::{Db, RolloutRow};
use crate::error::{Error, check_id};

/// How long the log a rollout's step signs stays valid.
pub const LOG_VALIDITY: SignedDuration = SignedDuration::from_hours(7 * 24);

/// How often the server looks at running rollouts (and after each report).
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts a rollout of `version` on `channel` over the stores reading the
/// channel now, by `by`; admits its first wave (unless it awaits approval).
pub fn start(
    db: &dyn Db,
    key: &KeySource,
    channel: &str,
    version: &Version,
    plan: Plan,
    by: &str,
    now: Timestamp,
) -> Result<RolloutRow, Error> {
    check_id("channel", channel)?;
    plan.validate().map_err(rules)?;
    key.load()?;
    if db.release(channel, version)?.is_none() {
        return Err(Error::UnknownRelease {
            channel: channel.to_owned(),
            version: version.clone(),
        });
    }
    if let Some(open) = db
        .rollouts()?
        .into_iter()
        .find(|r| r.channel == channel && r.version == *version && !finished(&r.state.phase))
    {
        return Err(Error::Rollout(format!(
            "rollout {} of {channel} {version} is not finished: abort it first",
            open.id
        )));
    }
    let labels = db.store_labels()?;
    let mut eligible = BTreeSet::new();
    for store in db.store_access()? {
        if !store.channels.iter().any(|c| c == channel) {
            continue;
        }
        let labelled = labels.get(&store.store).cloned().unwrap_or_default();
        let facts = if plan.filter.needs_reports() {
            crate::fleet::facts(db, &store.store, labelled)?
        } else {
            StoreFacts {
                labels: labelled,
                ..StoreFacts::default()
            }
        };
        if plan.filter.admits(&facts) {
            eligible.insert(store.store);
        }
    }
    let id = format!("r-{}", &crate::ops::new_token()[..12]);
    let row = RolloutRow {
        waves: assign(&plan, &eligible, &id),
        state: Rollout::new(&plan, by, now),
        id,
        channel: channel.to_owned(),
        version: version.clone(),
        plan,
        created: now,
    };
    db.add_rollout(&row)?;
    admit(db, key, &row, now)?;
    Ok(row)
}

/// Moves rollout `id` by `event` (a person's action, or [`Event::Look`])
/// and signs the admission it leads to.
pub fn act(
    db: &dyn Db,
    key: &KeySource,
    id: &str,
    event: &Event,
    now: Timestamp,
) -> Result<RolloutRow, Error> {
    let mut row = db
        .rollout(id)?
        .ok_or_else(|| Error::UnknownRollout(id.to_owned()))?;
    let results = results(db, &row)?;
    let next = row
        .state
        .step(&row.plan, &row.waves, &results, event, now)
        .map_err(rules)?;
    if next != row.state {
        if !db.save_rollout(id, &row.state, &next)? {
            return Err(Error::Rollout(format!(
                "rollout {id} moved meanwhile (another person or server): look at it again"
            )));
        }
        row.state = next;
    }
    admit(db, key, &row, now)?;
    Ok(row)
}

/// Looks at every running rollout: a wave whose stores reported advances,
/// one with too many failures halts. Returns those that moved.
pub fn look_all(db: &dyn Db, key: &KeySource, now: Timestamp) -> Result<Vec<RolloutRow>, Error> {
    let mut moved = Vec::new();
    for row in db.rollouts()? {
        if !matches!(row.state.phase, Phase::Running { .. }) {
            continue;
        }
        let after = act(db, key, &row.id, &Event::Look, now)?;
        if after.state != row.state {
            moved.push(after);
        }
    }
    Ok(moved)
}

/// What each store of the rollout reported for its release, from its
/// newest report that took a terminal to it.
pub fn results(db: &dyn Db, row: &RolloutRow) -> Result<BTreeMap<String, StoreResult>, Error> {
    let mut out = BTreeMap::new();
    for store in row.waves.iter().flatten() {
        let newest = db
            .reports(store)?
            .into_iter()
            .rev()
            .filter(|r| r.received >= row.created)
            .find_map(|r| r.upgrade()?.result_for(&row.version));
        match newest {
            Some(StoreOutcome::Succeeded) => {
                out.insert(store.clone(), StoreResult::Succeeded);
            }
            Some(StoreOutcome::Failed(why)) => {
                out.insert(store.clone(), StoreResult::Failed { why });
            }
            Some(StoreOutcome::Running) | None => {}
        }
    }
    Ok(out)
}

/// Signs the release's admission as the rollout's state says, if it is
/// not that already: its waves reached so far; every store once done.
fn admit(db: &dyn Db, key: &KeySource, row: &RolloutRow, now: Timestamp) -> Result<(), Error> {
    let wanted: Option<Vec<String>> = match row.state.phase {
        Phase::Done => None,
        Phase::AwaitingApproval
        | Phase::Running { .. }
        | Phase::Paused { .. }
        | Phase::Halted { .. }
        | Phase::Aborted { .. } => Some(
            row.waves
                .iter()
                .flatten()
                .filter(|s| row.state.admits(&row.waves, s))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        ),
    };
    let release = db
        .release(&row.channel, &row.version)?
        .ok_or_else(|| Error::UnknownRelease {
            channel: row.channel.clone(),
            version: row.version.clone(),
        })?;
    if release.stores == wanted {
        return Ok(());
    }
    crate::ops::admit(
        db,
        key,
        &row.channel,
        &row.version,
        wanted,
        LOG_VALIDITY,
        now,
    )?;
    Ok(())
}

fn finished(phase: &Phase) -> bool {
    match phase {
        Phase::Aborted { .. } | Phase::Done => true,
        Phase::AwaitingApproval
        | Phase::Running { .. }
        | Phase::Paused { .. }
        | Phase::Halted { .. } => false,
    }
}

fn rules(e: RolloutError) -> Error {
    Error::Rollout(e.to_string())
}
