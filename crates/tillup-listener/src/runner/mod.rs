//! Runs a store upgrade: the shell around the core's state machine.
//!
//! The state is written (atomically, durably) before any effect it asks for
//! is started, and after every outcome. A listener killed at any point
//! finds `current-upgrade.json` at its next start and runs `wanted()` again;
//! every effect is idempotent (agents swap by target version, transfers are
//! content-addressed), so repeating one is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::api::TerminalBackup;
use tillup_core::log::{Installed, Verdict};
use tillup_core::manifest::{Manifest, ManifestChanges};
use tillup_core::upgrade::{Effect, Event, Planned, Trigger, Upgrade};
use tillup_fs::BlobStore;

use crate::check::VerifiedLog;
use crate::local_log::{HistoryEntry, LocalLog};
use crate::{Error, Listener};

pub mod backup;
mod effects;
mod import;

/// What an upgrade needs beyond the core state, fixed when it is planned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Context {
    /// The host's backup folder: `backups/<time>_<version>/terminal-<n>/`.
    pub backup_dir: PathBuf,
    /// The target releases as the signed log described them.
    pub releases: BTreeMap<Version, SignedRelease>,
    /// Terminals left out at preflight, with why.
    pub left_out: Vec<(u32, String)>,
    /// The signed log the upgrade was planned on, for the agents to check
    /// what they stage. `None` in an upgrade planned by an older listener:
    /// the last verified log is used.
    #[serde(default)]
    pub signed_log: Option<tillup_core::install::SignedLog>,
    /// The release came in a bundle (`tillup import`): the server is not
    /// asked for anything. The host builds the folders itself (as it does
    /// to check the server's), the backup stays on the host, and the
    /// report is queued for the first check that reaches the server.
    #[serde(default)]
    pub offline: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedRelease {
    pub sha256: tillup_core::Sha256Hex,
    pub size: u64,
    pub date: Timestamp,
    pub preserve: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Current {
    id: String,
}

/// How many terminals the host works with at once (transfers, stops,
/// collects, staging). Each till does its own work on its own machine, so
/// a store's tills all go together: in a store of more tills than this the
/// later ones wait, stopped. How many swap at once is the upgrade policy's
/// `parallel`, which the core's state machine applies.
const TERMINALS_AT_ONCE: usize = 32;

/// Where one upgrade's files live, and what the run keeps of them in
/// memory (shared by its clones).
#[derive(Clone)]
struct Files {
    dir: PathBuf,
    /// The terminal backups this run wrote or read.
    parsed: Arc<Parsed>,
    /// By terminal, the agent's digest of the snapshot its `gathered`
    /// backup holds, when this run took it: `Collect` then asks for the
    /// changes since. (After a restart of the host, a whole snapshot.)
    gathered_snapshots: Arc<std::sync::Mutex<BTreeMap<u32, tillup_core::Sha256Hex>>>,
    /// By terminal, its new folder as built before the stop from its
    /// gathered backup: `Process` builds the one after the stop from it
    /// and the changes since, not from the whole folder again.
    built_ahead: Arc<std::sync::Mutex<BTreeMap<u32, Ahead>>>,
}

/// A terminal's new folder built from its gathered backup.
struct Ahead {
    gathered: Arc<TerminalBackup>,
    version: Version,
    folder: Arc<Manifest>,
}

/// Terminal backups (`backup` and `gathered` files) as parsed, by file.
/// Each is a whole folder's manifest, which several steps read again
/// while the tills are stopped; the runner is the only writer of its
/// upgrade's files, so what it wrote is what is there. All blocking.
#[derive(Default)]
struct Parsed(std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<TerminalBackup>>>);

impl Parsed {
    /// The terminal backup at `path`, parsed once in this run.
    fn read(&self, path: &Path) -> Result<Arc<TerminalBackup>, Error> {
        if let Some(b) = self.kept().get(path) {
            return Ok(Arc::clone(b));
        }
        let b = Arc::new(read_json::<TerminalBackup>(path)?);
        // A write since this read began wins.
        Ok(Arc::clone(self.kept().entry(path.to_owned()).or_insert(b)))
    }

    /// Writes `backup` to `path` (atomically), and keeps it.
    fn write(&self, path: &Path, backup: Arc<TerminalBackup>) -> Result<(), Error> {
        self.kept().remove(path);
        tillup_fs::write_json_atomic(path, &*backup)?;
        self.kept().insert(path.to_owned(), backup);
        Ok(())
    }

    /// Keeps `backup` as what `path` holds, without writing it: for a
    /// backup kept on disk another way (see [`Files::read_backup`]).
    fn keep(&self, path: &Path, backup: Arc<TerminalBackup>) {
        self.kept().insert(path.to_owned(), backup);
    }

    /// Removes the terminal backup at `path`, if there is one.
    fn remove(&self, path: &Path) -> Result<(), Error> {
        self.kept().remove(path);
        Ok(tillup_fs::remove_file_if_exists(path)?)
    }

    fn kept(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, Arc<TerminalBackup>>> {
        self.0.lock().expect("not poisoned")
    }
}

impl Files {
    /// Keeps terminal `backup.number`'s backup as `Gather` took it, from
    /// the agent's snapshot of digest `snapshot`.
    fn keep_gathered(
        &self,
        backup: Arc<TerminalBackup>,
        snapshot: Option<tillup_core::Sha256Hex>,
    ) -> Result<(), Error> {
        let n = backup.number;
        // Named only once the file holds it: a failed write leaves none.
        self.snapshots().remove(&n);
        self.parsed.write(&self.gathered(n), backup)?;
        if let Some(d) = snapshot {
            self.snapshots().insert(n, d);
        }
        Ok(())
    }

    /// Forgets terminal `n`'s gathered backup: its backup goes whole.
    fn drop_gathered(&self, n: u32) -> Result<(), Error> {
        self.snapshots().remove(&n);
        self.parsed.remove(&self.gathered(n))
    }

    /// Keeps terminal `backup.number`'s collected backup: as `changes` to
    /// its gathered backup when there are (a file the size of what changed
    /// while its till is stopped), else whole. Either replaces the other.
    fn keep_backup(
        &self,
        backup: Arc<TerminalBackup>,
        changes: Option<&ManifestChanges>,
    ) -> Result<(), Error> {
        let n = backup.number;
        match changes {
            Some(c) => {
                tillup_fs::remove_file_if_exists(&self.backup(n))?;
                tillup_fs::write_json_atomic(&self.changes(n), c)?;
                self.parsed.keep(&self.backup(n), backup);
            }
            None => {
                tillup_fs::remove_file_if_exists(&self.changes(n))?;
                self.parsed.write(&self.backup(n), backup)?;
            }
        }
        Ok(())
    }

    /// Terminal `n`'s collected backup, if it was collected (see
    /// [`Files::keep_backup`]).
    fn read_backup(&self, n: u32) -> Result<Option<Arc<TerminalBackup>>, Error> {
        let path = self.backup(n);
        if let Some(b) = self.parsed.kept().get(&path) {
            return Ok(Some(Arc::clone(b)));
        }
        if self.changes(n).exists() {
            let gathered = self.parsed.read(&self.gathered(n))?;
            let changes: ManifestChanges = read_json(&self.changes(n))?;
            let manifest = gathered.manifest.with_changes(&changes).map_err(|e| {
                Error::Other(format!(
                    "terminal {n}'s backup as changes to the gathered one: {e}"
                ))
            })?;
            let backup = Arc::new(TerminalBackup {
                manifest,
                ..(*gathered).clone()
            });
            self.parsed.keep(&path, Arc::clone(&backup));
            return Ok(Some(backup));
        }
        if !path.exists() {
            return Ok(None);
        }
        self.parsed.read(&path).map(Some)
    }

    /// The agent's digest of the snapshot terminal `n`'s gathered backup
    /// holds, if this run gathered it.
    fn gathered_snapshot(&self, n: u32) -> Option<tillup_core::Sha256Hex> {
        self.snapshots().get(&n).copied()
    }

    /// Keeps `folder` as terminal `gathered.number`'s new folder on
    /// `version`, built from `gathered`.
    fn keep_built_ahead(&self, gathered: Arc<TerminalBackup>, version: Version, folder: Manifest) {
        let ahead = Ahead {
            gathered,
            version,
            folder: Arc::new(folder),
        };
        self.built_ahead
            .lock()
            .expect("not poisoned")
            .insert(ahead.gathered.number, ahead);
    }

    /// Terminal `n`'s new folder on `version` as built before the stop,
    /// with the terminal's changes since: only if it was built from the
    /// gathered backup those changes were collected against. All blocking.
    fn built_ahead(&self, n: u32, version: &Version) -> Option<(Arc<Manifest>, ManifestChanges)> {
        let (gathered, folder) = {
            let kept = self.built_ahead.lock().expect("not poisoned");
            let a = kept.get(&n).filter(|a| &a.version == version)?;
            (Arc::clone(&a.gathered), Arc::clone(&a.folder))
        };
        let now = self.parsed.read(&self.gathered(n)).ok()?;
        if !Arc::ptr_eq(&now, &gathered) {
            return None;
        }
        let changes = read_json(&self.changes(n)).ok()?;
        Some((folder, changes))
    }

    fn snapshots(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, tillup_core::Sha256Hex>> {
        self.gathered_snapshots.lock().expect("not poisoned")
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn context(&self) -> PathBuf {
        self.dir.join("context.json")
    }
    fn backup(&self, n: u32) -> PathBuf {
        self.dir.join(format!("backup-{n}.json"))
    }
    /// Terminal `n`'s backup as `Gather` took it, while its program ran.
    fn gathered(&self, n: u32) -> PathBuf {
        self.dir.join(format!("gathered-{n}.json"))
    }
    /// [`Gathered`]: the server holds the gathered backups.
    fn gathered_on_server(&self) -> PathBuf {
        self.dir.join("gathered.json")
    }
    /// Terminal `n`'s collected backup, as changes to its gathered one.
    fn changes(&self, n: u32) -> PathBuf {
        self.dir.join(format!("changes-{n}.json"))
    }
    /// Terminal `n`'s [`StagePlan`].
    fn plan(&self, n: u32) -> PathBuf {
        self.dir.join(format!("plan-{n}.json"))
    }
}

/// The backup the server holds from before the stop: the upload after the
/// stop sends changes to it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Gathered {
    /// Its [`tillup_core::api::Backup::digest`].
    digest: tillup_core::Sha256Hex,
    /// Its terminals.
    numbers: Vec<u32>,
}

/// Terminal `n`'s new folder, as the server built it and the host checked
/// it, written as changes to the release the terminal staged before the
/// stop: small whatever the folder's size, so staging after the stop moves
/// only what changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StagePlan {
    version: Version,
    /// The digest of the release's manifest, staged before the stop.
    base: tillup_core::Sha256Hex,
    changes: tillup_core::manifest::ManifestChanges,
    /// The digest of the new folder's manifest.
    result: tillup_core::Sha256Hex,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(|e| tillup_fs::Error::Io {
        path: path.to_owned(),
        source: e,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Damaged {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The result of `tillup update`.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateOutcome {
    /// Every upgrade run, in order (more than one through intermediate releases).
    pub upgrades: Vec<HistoryEntry>,
    /// The check that found nothing more to do, or the first refusal.
    pub note: Option<String>,
}

/// Progress callback: the state after each outcome, and the outcome.
pub type Observer<'a> = dyn FnMut(&Upgrade, Option<&Event>) + Send + 'a;

impl Listener {
    pub(crate) fn blobs(&self) -> Result<BlobStore, Error> {
        Ok(BlobStore::open(self.data_dir.join("blobs"))?)
    }

    fn current_path(&self) -> PathBuf {
        self.data_dir.join("current-upgrade.json")
    }

    fn files(&self, id: &str) -> Files {
        Files {
            dir: self.data_dir.join("upgrades").join(id),
            parsed: Arc::default(),
            gathered_snapshots: Default::default(),
            built_ahead: Default::default(),
        }
    }

    /// The unfinished upgrade, if a previous run was interrupted.
    pub fn unfinished(&self) -> Result<Option<Upgrade>, Error> {
        if !self.current_path().exists() {
            return Ok(None);
        }
        let cur: Current = read_json(&self.current_path())?;
        Ok(Some(read_json(&self.files(&cur.id).state())?))
    }

    /// Resumes an interrupted upgrade, then upgrades every terminal that
    /// has an update, going through intermediate releases one at a time.
    pub async fn update(
        &self,
        trigger: Trigger,
        now: Timestamp,
        observer: &mut Observer<'_>,
    ) -> Result<UpdateOutcome, Error> {
        let _lock = self.exclusive()?;
        self.update_locked(trigger, now, observer).await
    }

    /// Finishes an interrupted upgrade, if there is one, and nothing more.
    pub(crate) async fn resume_locked(
        &self,
        observer: &mut Observer<'_>,
    ) -> Result<Option<HistoryEntry>, Error> {
        match self.unfinished()? {
            Some(u) => {
                tracing::info!("resuming upgrade {}", u.id);
                Ok(Some(self.drive(u, observer).await?))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn update_locked(
        &self,
        trigger: Trigger,
        now: Timestamp,
        observer: &mut Observer<'_>,
    ) -> Result<UpdateOutcome, Error> {
        let mut out = UpdateOutcome {
            upgrades: Vec::new(),
            note: None,
        };
        out.upgrades.extend(self.resume_locked(observer).await?);
        let started_at = std::time::Instant::now();
        for _hop in 0..8 {
            // The injected clock moves with real time.
            let now =
                now + jiff::SignedDuration::try_from(started_at.elapsed()).unwrap_or_default();
            let (verified, report) = self.check_locked(now).await?;
            let Some(u) = self.plan(&verified, &report, trigger.clone(), now, None)? else {
                out.note = Some(match report.target {
                    None => "every reachable terminal is up to date".to_owned(),
                    Some(v) => format!("an update to {v} exists but no terminal could take it now"),
                });
                break;
            };
            let entry = self.drive(u, observer).await?;
            let all_ok = entry
                .terminals
                .iter()
                .all(|t| t.result == crate::local_log::Outcome::Upgraded);
            out.upgrades.push(entry);
            if !all_ok {
                break;
            }
        }
        Ok(out)
    }

    /// Preflight (DESIGN §3.1) and a persisted plan; `None` if nothing to do.
    /// With `bundle`, the release a bundle carries: every terminal must go
    /// to it, and the upgrade asks nothing of the server.
    fn plan(
        &self,
        verified: &VerifiedLog,
        report: &crate::check::CheckReport,
        trigger: Trigger,
        now: Timestamp,
        bundle: Option<&Version>,
    ) -> Result<Option<Upgrade>, Error> {
        let mut left_out: Vec<(u32, String)> = report.unreachable.clone();
        let mut planned = Vec::new();
        let mut releases = BTreeMap::new();
        for (n, verdict) in &report.comparison.terminals {
            let Verdict::Update { from, next, .. } = verdict else {
                continue;
            };
            let release = verified
                .log
                .release(next)
                .expect("the compare rule picks releases of the log");
            let free = report.free_bytes.get(n).copied().unwrap_or(0);
            if free < release.size.saturating_mul(2) {
                let need = release.size.saturating_mul(2);
                let why = format!(
                    "only {free} bytes free on the terminal, {need} needed to stage {next}"
                );
                left_out.push((*n, why));
                continue;
            }
            releases.insert(
                next.clone(),
                SignedRelease {
                    sha256: release.sha256,
                    size: release.size,
                    date: release.date,
                    preserve: release.preserve.clone(),
                },
            );
            planned.push(Planned {
                number: *n,
                from: from.clone(),
                to: next.clone(),
            });
        }
        if planned.is_empty() {
            return Ok(None);
        }
        if let Some(carried) = bundle
            && let Some(p) = planned.iter().find(|p| &p.to != carried)
        {
            return Err(Error::Other(format!(
                "terminal {} must go to {} first (it runs {}), and the bundle holds only {carried}: export {} too and import it first; nothing was changed",
                p.number, p.to, p.from, p.to
            )));
        }
        let need: u64 = releases.values().map(|r| r.size).sum::<u64>() * 2
            + planned.len() as u64 * releases.values().map(|r| r.size).max().unwrap_or(0);
        let free = tillup_fs::free_space(&self.data_dir)?;
        if free < need {
            return Err(Error::NoSpace(format!(
                "{} has {free} bytes free, the backup and staging need about {need}; free some space and try again",
                self.data_dir.display()
            )));
        }
        let stamp = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let top = releases.keys().max().expect("planned is not empty").clone();
        let id = upgrade_id(&stamp, &top);
        let ctx = Context {
            backup_dir: self.data_dir.join("backups").join(format!("{stamp}_{top}")),
            releases,
            left_out,
            signed_log: Some(verified.signed.clone()),
            offline: bundle.is_some(),
        };
        let u = Upgrade::new(
            id.clone(),
            self.config.channel.clone(),
            now,
            trigger,
            planned,
            tillup_core::upgrade::Policy {
                canary: self.config.canary,
                parallel: u32::try_from(self.config.parallel).unwrap_or(u32::MAX),
                halt_percent: self.config.halt_percent,
            },
        );
        let files = self.files(&id);
        tillup_fs::write_json_atomic(&files.context(), &ctx)?;
        tillup_fs::write_json_atomic(&files.state(), &u)?;
        tillup_fs::write_json_atomic(&self.current_path(), &Current { id })?;
        Ok(Some(u))
    }

    /// Runs an upgrade to its end, persisting every state before acting.
    async fn drive(
        &self,
        mut u: Upgrade,
        observer: &mut Observer<'_>,
    ) -> Result<HistoryEntry, Error> {
        let files = self.files(&u.id);
        let ctx: Context = read_json(&files.context())?;
        let blobs = self.blobs()?;
        blobs.clean_tmp()?;
        observer(&u, None);
        let mut in_flight: BTreeSet<Effect> = BTreeSet::new();
        let mut running = FuturesUnordered::new();
        loop {
            for e in u.wanted() {
                let terminal_busy = e
                    .terminal()
                    .is_some_and(|n| in_flight.iter().any(|f| f.terminal() == Some(n)));
                let terminal_effects = in_flight.iter().filter(|f| f.terminal().is_some()).count();
                if in_flight.contains(&e)
                    || terminal_busy
                    || (e.terminal().is_some() && terminal_effects >= TERMINALS_AT_ONCE)
                {
                    continue;
                }
                in_flight.insert(e.clone());
                // The state that asks for it is on disk: a crash from here
                // on resumes by running it again.
                tillup_fs::fault::crash_point(&format!("listener.before.{}", e.kind()));
                let (ctx, files, blobs) = (&ctx, &files, &blobs);
                // The effect works from the state that asked for it.
                let snapshot = u.clone();
                running.push(async move {
                    let began = std::time::Instant::now();
                    let result = self.run_effect(&e, &snapshot, ctx, files, blobs).await;
                    tracing::debug!(
                        effect = e.kind(),
                        terminal = e.terminal(),
                        ms = began.elapsed().as_millis() as u64,
                        ok = result.is_ok(),
                        "effect ran"
                    );
                    (e, result)
                });
            }
            let Some((effect, result)) = running.next().await else {
                break;
            };
            in_flight.remove(&effect);
            // Done but not recorded: a crash here runs it again on resume.
            tillup_fs::fault::crash_point(&format!("listener.after.{}", effect.kind()));
            let event = match result {
                Ok(()) => Event::Done { effect },
                Err(e) => Event::Failed {
                    effect,
                    message: e.to_string(),
                },
            };
            u = u.step(event.clone(), Timestamp::now());
            if u.phase != tillup_core::upgrade::Phase::Preparing {
                // The long transfers are over.
                self.transfers.end();
            }
            tillup_fs::write_json_atomic(&files.state(), &u)?;
            observer(&u, Some(&event));
        }
        if !u.is_done() {
            // Nothing runnable yet not done: never record it as finished,
            // keep it to be resumed.
            return Err(Error::Other(format!(
                "upgrade {} stalled in phase {:?}; it is kept and resumes at the next run",
                u.id, u.phase
            )));
        }
        self.finish(&u, &ctx)
    }

    /// Writes the outcome into the local log. Idempotent.
    fn finish(&self, u: &Upgrade, ctx: &Context) -> Result<HistoryEntry, Error> {
        // The by-number backup folders, made once every program runs again:
        // the backup itself (each terminal's manifest, its bytes in the blob
        // store, all checked) was complete before any folder was touched.
        self.write_backup_folders(u, ctx)?;
        let entry = HistoryEntry::of(u, ctx.left_out.clone());
        let installed: BTreeMap<u32, Installed> = u
            .terminals
            .values()
            .filter_map(|t| {
                let r = ctx.releases.get(&t.to)?;
                Some((
                    t.number,
                    Installed {
                        version: t.to.clone(),
                        date: Some(r.date),
                        size: Some(r.size),
                        sha256: Some(r.sha256),
                    },
                ))
            })
            .collect();
        let mut local = LocalLog::load(&self.data_dir)?;
        if !u.reported {
            local.queue_report(self.report_json(u, &ctx.left_out, &local));
        }
        local.record_upgrade(entry.clone(), &installed);
        local.save(&self.data_dir)?;
        if let Err(e) = self.prune(u, ctx) {
            tracing::warn!("could not free disk space after the upgrade: {e}");
        }
        std::fs::remove_file(self.current_path())
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| tillup_fs::Error::Io {
                path: self.current_path(),
                source: e,
            })?;
        Ok(entry)
    }

    /// Writes `backups/<time>_<version>/terminal-<n>/` for every terminal
    /// collected, as links to the blobs. Idempotent.
    fn write_backup_folders(&self, u: &Upgrade, ctx: &Context) -> Result<(), Error> {
        let files = self.files(&u.id);
        let blobs = self.blobs()?;
        for n in u.terminals.keys() {
            let Some(b) = files.read_backup(*n)? else {
                continue;
            };
            let dest = ctx.backup_dir.join(format!("terminal-{n}"));
            backup::write_folder(&dest, &b.manifest, &blobs)?;
        }
        Ok(())
    }

    /// Keeps the host's disk from filling up over the years: the newest
    /// `keep_backups` backup folders stay, and the blob store keeps only
    /// what the terminals hold now (their next collect sends only changes).
    fn prune(&self, u: &Upgrade, ctx: &Context) -> Result<(), Error> {
        let files = self.files(&u.id);
        let mut live: BTreeSet<tillup_core::Sha256Hex> =
            ctx.releases.values().map(|r| r.sha256).collect();
        let blobs = self.blobs()?;
        // What an upgraded terminal holds now: its release and its plan's
        // changes (each release read once).
        let upgraded: Vec<&tillup_core::upgrade::TerminalRun> = u
            .terminals
            .values()
            .filter(|t| t.step == tillup_core::upgrade::Step::Upgraded)
            .collect();
        let versions: BTreeSet<&Version> = upgraded.iter().map(|t| &t.to).collect();
        for release in versions.into_iter().filter_map(|v| ctx.releases.get(v)) {
            if let Ok(bytes) = blobs.read(&release.sha256)
                && let Ok(m) = Manifest::parse(&bytes)
            {
                live.extend(m.hashes());
            }
        }
        for t in upgraded {
            if let Ok(plan) = read_json::<StagePlan>(&files.plan(t.number)) {
                live.extend(plan.changes.upsert.iter().map(|f| f.sha256));
            }
        }
        for t in u
            .terminals
            .values()
            .filter(|t| t.step != tillup_core::upgrade::Step::Upgraded)
        {
            if let Ok(Some(b)) = files.read_backup(t.number) {
                live.extend(b.manifest.hashes());
            }
        }
        let (count, bytes) = blobs.retain(&live)?;
        blobs.clear_tmp()?;
        let folders = backup::folders(&self.data_dir);
        let old = folders.len().saturating_sub(self.config.keep_backups);
        for f in folders
            .into_iter()
            .take(old)
            .filter(|f| *f != ctx.backup_dir)
        {
            std::fs::remove_dir_all(&f).map_err(|e| tillup_fs::Error::Io {
                path: f.clone(),
                source: e,
            })?;
        }
        tracing::info!(
            blobs = count,
            bytes,
            backups_removed = old,
            "freed disk space"
        );
        Ok(())
    }

    /// What the agents did on their own during `u` (finished a cut swap,
    /// restarted a program the host left stopped, rolled back a release),
    /// by terminal. Best effort: a terminal that does not answer adds nothing.
    async fn agent_notices(&self, u: &Upgrade) -> serde_json::Value {
        let reachable = u
            .terminals
            .values()
            .filter(|t| !matches!(t.step, tillup_core::upgrade::Step::Abandoned { .. }))
            .map(|t| t.number);
        let mut out = serde_json::Map::new();
        for (n, status) in self.statuses_of(reachable).await {
            let notices: Vec<_> = status
                .map(|s| s.notices)
                .unwrap_or_default()
                .into_iter()
                .filter(|notice| notice.at >= u.started)
                .collect();
            if !notices.is_empty() {
                out.insert(n.to_string(), serde_json::json!(notices));
            }
        }
        out.into()
    }

    /// The upgrade's report for head office, with each till's model as
    /// the local log knows it.
    fn report_json(
        &self,
        u: &Upgrade,
        left_out: &[(u32, String)],
        local: &LocalLog,
    ) -> serde_json::Value {
        let mut entry = HistoryEntry::of(u, left_out.to_vec());
        for t in &mut entry.terminals {
            t.model = local.terminals.get(&t.number).map(|r| r.model.clone());
        }
        serde_json::json!({
            "id": u.id,
            "kind": "upgrade",
            "store": self.config.store_id,
            "upgrade": entry,
            "failure": u.failure,
        })
    }

    /// Sends the reports not delivered yet, oldest first. A report the
    /// server refuses as malformed is dropped (with a warning) rather than
    /// blocking every later one; one it cannot take now stays queued.
    pub async fn send_unsent_reports(&self) -> Result<usize, Error> {
        let mut local = LocalLog::load(&self.data_dir)?;
        let mut sent = 0;
        while let Some(r) = local.unsent_reports.first().cloned() {
            match self.server.report(&r).await {
                Ok(_) => sent += 1,
                Err(Error::Refused {
                    status, message, ..
                }) if (400..500).contains(&status) && status != 401 && status != 403 => {
                    tracing::warn!(report = %r["id"], "the server refused a report, dropped: {message}");
                }
                Err(e) => return Err(e),
            }
            local.unsent_reports.remove(0);
            local.save(&self.data_dir)?;
        }
        Ok(sent)
    }
}

/// An upgrade's id: its start and target, within what the server accepts
/// in a path (`[A-Za-z0-9._-]`, at most 64 characters).
fn upgrade_id(stamp: &str, target: &Version) -> String {
    let raw = format!("{stamp}-{target}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_ids_fit_the_servers_path_rules() {
        let v: Version = "2.0.0-rc.1+build.5".parse().unwrap();
        let id = upgrade_id("20261121T030000Z", &v);
        assert_eq!(id, "20261121T030000Z-2.0.0-rc.1-build.5");
        let long: Version = format!("1.0.0-{}", "x".repeat(100)).parse().unwrap();
        assert_eq!(upgrade_id("20261121T030000Z", &long).len(), 64);
    }

    fn files_in(dir: &Path) -> Files {
        Files {
            dir: dir.to_owned(),
            parsed: Arc::default(),
            gathered_snapshots: Default::default(),
            built_ahead: Default::default(),
        }
    }

    fn backup(files: &[(&str, &[u8])]) -> Arc<TerminalBackup> {
        let entries = files
            .iter()
            .map(|(p, c)| tillup_core::FileEntry {
                path: tillup_core::path::RelPath::new(p).unwrap(),
                size: c.len() as u64,
                sha256: tillup_core::Sha256Hex::of(c),
                exec: false,
            })
            .collect();
        Arc::new(TerminalBackup {
            number: 3,
            model: "till".into(),
            version: "1.0.0".parse().unwrap(),
            manifest: Manifest::new(entries).unwrap(),
        })
    }

    #[test]
    fn a_backup_kept_as_changes_reads_back_whole_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path());
        assert!(files.read_backup(3).unwrap().is_none(), "not collected yet");
        let gathered = backup(&[("app.exe", b"1"), ("data/journal", b"a")]);
        files.keep_gathered(Arc::clone(&gathered), None).unwrap();
        let after = backup(&[
            ("app.exe", b"1"),
            ("data/journal", b"ab"),
            ("data/new", b"x"),
        ]);
        let changes = gathered.manifest.changes_to(&after.manifest);
        files
            .keep_backup(Arc::clone(&after), Some(&changes))
            .unwrap();
        assert!(!files.backup(3).exists(), "only the changes are written");
        // A restarted host has nothing in memory: it reads the gathered
        // backup and the changes.
        let again = files_in(dir.path()).read_backup(3).unwrap().unwrap();
        assert_eq!(*again, *after);
        // Collected again whole (its gathered snapshot was lost): the
        // changes no longer count.
        let whole = backup(&[("app.exe", b"1")]);
        files.keep_backup(Arc::clone(&whole), None).unwrap();
        assert!(!files.changes(3).exists());
        let again = files_in(dir.path()).read_backup(3).unwrap().unwrap();
        assert_eq!(*again, *whole);
    }
}
