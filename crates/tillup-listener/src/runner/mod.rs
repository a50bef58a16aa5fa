//! Runs a store upgrade: the shell around the core's state machine.
//!
//! The state is written (atomically, durably) before any effect it asks for
//! is started, and after every outcome. A listener killed at any point
//! finds `current-upgrade.json` at its next start and runs `wanted()` again;
//! every effect is idempotent (agents swap by target version, transfers are
//! content-addressed), so repeating one is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures_util::stream::{FuturesUnordered, StreamExt};
use jiff::Timestamp;
use reqwest::Method;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::api::{
    self, Delivery, HealthReport, ProcessRequest, Snapshot, StageReport, StageRequest, StartReport,
    StopReport, StopRequest, SwapReport, SwapRequest, TerminalBackup, TerminalTarget, route,
};
use tillup_core::log::{Installed, Verdict};
use tillup_core::manifest::{Manifest, Preserve, merge_for_terminal};
use tillup_core::upgrade::{Effect, Event, Planned, Trigger, Upgrade};
use tillup_fs::BlobStore;

use crate::check::VerifiedLog;
use crate::http::{agent_routes, server_routes, store_route};
use crate::local_log::{HistoryEntry, LocalLog};
use crate::{Error, Listener};

/// What an upgrade needs beyond the core state, fixed when it is planned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Context {
    /// The host's backup folder: `backups/<time>_<version>/terminal-<n>/`.
    pub backup_dir: PathBuf,
    /// The target releases as the signed log described them.
    pub releases: BTreeMap<Version, SignedRelease>,
    /// Terminals left out at preflight, with why.
    pub left_out: Vec<(u32, String)>,
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

/// Where one upgrade's files live.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn context(&self) -> PathBuf {
        self.dir.join("context.json")
    }
    fn backup(&self, n: u32) -> PathBuf {
        self.dir.join(format!("backup-{n}.json"))
    }
    fn delivery(&self) -> PathBuf {
        self.dir.join("delivery.json")
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
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
    fn blobs(&self) -> Result<BlobStore, Error> {
        Ok(BlobStore::open(self.data_dir.join("blobs"))?)
    }

    fn current_path(&self) -> PathBuf {
        self.data_dir.join("current-upgrade.json")
    }

    fn files(&self, id: &str) -> Files {
        Files {
            dir: self.data_dir.join("upgrades").join(id),
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
            let Some(u) = self.plan(&verified, &report, trigger.clone(), now)? else {
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
    fn plan(
        &self,
        verified: &VerifiedLog,
        report: &crate::check::CheckReport,
        trigger: Trigger,
        now: Timestamp,
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
        let limit = self.config.parallel.max(1);
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
                    || (e.terminal().is_some() && terminal_effects >= limit)
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
                    let result = self.run_effect(&e, &snapshot, ctx, files, blobs).await;
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
        local.record_upgrade(entry.clone(), &installed);
        if !u.reported {
            local.queue_report(self.report_json(u, &ctx.left_out));
        }
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

    /// Keeps the host's disk from filling up over the years: the newest
    /// `keep_backups` backup folders stay, and the blob store keeps only
    /// what the terminals hold now (their next collect sends only changes).
    fn prune(&self, u: &Upgrade, ctx: &Context) -> Result<(), Error> {
        let files = self.files(&u.id);
        let mut live: BTreeSet<tillup_core::Sha256Hex> =
            ctx.releases.values().map(|r| r.sha256).collect();
        if let Ok(delivery) = read_json::<Delivery>(&files.delivery()) {
            for t in delivery.terminals.iter().filter(|t| {
                u.terminals
                    .get(&t.number)
                    .is_some_and(|r| r.step == tillup_core::upgrade::Step::Upgraded)
            }) {
                live.extend(t.manifest.hashes());
            }
        }
        for t in u
            .terminals
            .values()
            .filter(|t| t.step != tillup_core::upgrade::Step::Upgraded)
        {
            if let Ok(b) = read_json::<TerminalBackup>(&files.backup(t.number)) {
                live.extend(b.manifest.hashes());
            }
        }
        let blobs = self.blobs()?;
        let (count, bytes) = blobs.retain(&live)?;
        blobs.clear_tmp()?;
        let folders = backup_folders(&self.data_dir);
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

    fn report_json(&self, u: &Upgrade, left_out: &[(u32, String)]) -> serde_json::Value {
        serde_json::json!({
            "id": u.id,
            "kind": "upgrade",
            "store": self.config.store_id,
            "upgrade": HistoryEntry::of(u, left_out.to_vec()),
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
            let path = route(server_routes::REPORT, &[("store", &self.config.store_id)]);
            match self
                .server
                .send_json::<_, serde_json::Value>("receive a report", Method::POST, &path, &r)
                .await
            {
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

    async fn run_effect(
        &self,
        e: &Effect,
        u: &Upgrade,
        ctx: &Context,
        files: &Files,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let run = e.terminal().and_then(|n| u.terminals.get(&n));
        let server_path = |t: &str| store_route(t, &self.config.store_id, &u.id);
        match e {
            Effect::Stop(n) => {
                let r: StopReport = self
                    .agent(*n)?
                    .send_json(
                        "stop its main program",
                        Method::POST,
                        agent_routes::STOP,
                        &StopRequest::default(),
                    )
                    .await?;
                tracing::info!(
                    terminal = n,
                    forced = r.forced,
                    waited_busy_ms = r.waited_busy_ms,
                    "main program stopped"
                );
            }
            Effect::Collect(n) => {
                let run = run.expect("terminal effect");
                let agent = self.agent(*n)?;
                let snap: Snapshot = agent
                    .get_json("describe its program folder", agent_routes::SNAPSHOT)
                    .await?;
                if snap.version.as_ref() != Some(&run.from) {
                    return Err(Error::Other(format!(
                        "terminal {n} holds version {:?}, the plan expected {}",
                        snap.version.map(|v| v.to_string()),
                        run.from
                    )));
                }
                for f in snap.manifest.files() {
                    if !blobs.has(&f.sha256) {
                        agent
                            .download_blob(agent_routes::BLOB, &f.sha256, Some(f.size), blobs)
                            .await?;
                    }
                }
                let status: api::AgentStatus = agent
                    .get_json("report its status", agent_routes::STATUS)
                    .await?;
                let backup = TerminalBackup {
                    number: *n,
                    model: status.model,
                    version: run.from.clone(),
                    manifest: snap.manifest,
                };
                let dest = ctx.backup_dir.join(format!("terminal-{n}"));
                let (blobs2, backup2) = (blobs.clone(), backup.clone());
                tokio::task::spawn_blocking(move || {
                    write_backup_folder(&dest, &backup2.manifest, &blobs2)
                })
                .await
                .expect("no panic")?;
                tillup_fs::write_json_atomic(&files.backup(*n), &backup)?;
            }
            Effect::UploadBackup => {
                let backups = self.backups(u, files)?;
                let hashes: Vec<_> = backups
                    .iter()
                    .flat_map(|b| b.manifest.hashes())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for h in self
                    .server
                    .missing(server_routes::BLOBS_MISSING, hashes)
                    .await?
                {
                    self.server
                        .upload_blob(server_routes::BLOB, &h, blobs)
                        .await?;
                }
                let _: serde_json::Value = self
                    .server
                    .send_json(
                        "take the store's backup",
                        Method::PUT,
                        &server_path(server_routes::BACKUP),
                        &api::Backup { terminals: backups },
                    )
                    .await?;
            }
            Effect::Process => {
                let backups = self.backups(u, files)?;
                let targets = backups
                    .iter()
                    .map(|b| TerminalTarget {
                        number: b.number,
                        target: u.terminals[&b.number].to.clone(),
                    })
                    .collect();
                let req = ProcessRequest {
                    channel: self.config.channel.clone(),
                    terminals: targets,
                };
                let delivery: Delivery = self
                    .server
                    .send_json(
                        "build the terminals' new folders",
                        Method::POST,
                        &server_path(server_routes::PROCESS),
                        &req,
                    )
                    .await?;
                self.verify_delivery(u, &delivery, &backups, ctx, blobs)
                    .await?;
                tillup_fs::write_json_atomic(&files.delivery(), &delivery)?;
            }
            Effect::Deliver => {
                let delivery: Delivery = read_json(&files.delivery())?;
                for t in &delivery.terminals {
                    for f in t.manifest.files() {
                        self.server
                            .download_blob(server_routes::BLOB, &f.sha256, Some(f.size), blobs)
                            .await?;
                    }
                }
            }
            Effect::Prefetch => {
                for (version, signed) in &ctx.releases {
                    let release = self.release_manifest(version, ctx, blobs).await?;
                    for f in release.files() {
                        self.server
                            .download_blob(server_routes::BLOB, &f.sha256, Some(f.size), blobs)
                            .await?;
                    }
                    tracing::info!(%version, bytes = signed.size, "release downloaded and verified");
                }
            }
            Effect::Prestage(n) => {
                let run = run.expect("terminal effect");
                let release = self.release_manifest(&run.to, ctx, blobs).await?;
                self.push_and_stage(*n, &run.to, &release, blobs).await?;
            }
            Effect::Stage(n) => {
                let run = run.expect("terminal effect");
                let delivery: Delivery = read_json(&files.delivery())?;
                let result = delivery
                    .terminals
                    .iter()
                    .find(|t| t.number == *n)
                    .ok_or_else(|| {
                        Error::Other(format!("the delivery has no folder for terminal {n}"))
                    })?;
                self.push_and_stage(*n, &run.to, &result.manifest, blobs)
                    .await?;
            }
            Effect::Commit(n) => {
                let run = run.expect("terminal effect");
                let _: SwapReport = self
                    .agent(*n)?
                    .send_json(
                        "swap in the new folder",
                        Method::POST,
                        agent_routes::COMMIT,
                        &SwapRequest {
                            version: run.to.clone(),
                        },
                    )
                    .await?;
            }
            Effect::Start(n) => {
                let _: StartReport = self
                    .agent(*n)?
                    .send_json(
                        "start its main program",
                        Method::POST,
                        agent_routes::START,
                        &serde_json::json!({}),
                    )
                    .await?;
            }
            Effect::CheckHealth(n) => {
                let run = run.expect("terminal effect");
                let path = format!("{}?version={}", agent_routes::HEALTH, run.to);
                let h: HealthReport = self
                    .agent(*n)?
                    .get_json("check the main program's health", &path)
                    .await?;
                if !h.healthy {
                    let back = h
                        .rolled_back_to
                        .map(|v| format!(" (the terminal put {v} back by itself)"))
                        .unwrap_or_default();
                    return Err(Error::Other(format!(
                        "the main program is not healthy on {}: {}{back}",
                        run.to, h.message
                    )));
                }
            }
            Effect::Rollback(n) => {
                let run = run.expect("terminal effect");
                let _: SwapReport = self
                    .agent(*n)?
                    .send_json(
                        "put the old folder back",
                        Method::POST,
                        agent_routes::ROLLBACK,
                        &SwapRequest {
                            version: run.from.clone(),
                        },
                    )
                    .await?;
            }
            Effect::SendReport => {
                self.send_unsent_reports().await?;
                let path = route(server_routes::REPORT, &[("store", &self.config.store_id)]);
                let mut report = self.report_json(u, &ctx.left_out);
                report["agent_notices"] = self.agent_notices(u).await;
                let _: serde_json::Value = self
                    .server
                    .send_json("receive the store's report", Method::POST, &path, &report)
                    .await?;
            }
        }
        Ok(())
    }

    /// The manifest of a target release, checked against the signed log.
    async fn release_manifest(
        &self,
        version: &Version,
        ctx: &Context,
        blobs: &BlobStore,
    ) -> Result<Manifest, Error> {
        let signed = ctx.releases.get(version).ok_or_else(|| {
            Error::Untrusted(format!("release {version} is not one this upgrade planned"))
        })?;
        // The blob store admits it only if it hashes to the signed digest.
        self.server
            .download_blob(server_routes::BLOB, &signed.sha256, None, blobs)
            .await?;
        Manifest::parse(&blobs.read(&signed.sha256)?)
            .map_err(|e| Error::Untrusted(format!("release {version} manifest: {e}")))
    }

    /// Sends a terminal the files of `manifest` it lacks, then has it stage
    /// `manifest` (incrementally, beside its program folder).
    async fn push_and_stage(
        &self,
        n: u32,
        version: &Version,
        manifest: &Manifest,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let agent = self.agent(n)?;
        let hashes = manifest.hashes().into_iter().collect();
        for h in agent.missing(agent_routes::BLOBS_MISSING, hashes).await? {
            agent.upload_blob(agent_routes::BLOB, &h, blobs).await?;
        }
        let req = StageRequest {
            version: version.clone(),
            manifest: manifest.clone(),
        };
        let r: StageReport = agent
            .send_json(
                "stage the new folder",
                Method::POST,
                agent_routes::STAGE,
                &req,
            )
            .await?;
        tracing::info!(
            terminal = n,
            copied_locally = r.reused_bytes,
            received = r.received_bytes,
            "staged"
        );
        Ok(())
    }

    /// The collected backups of the terminals still on their way.
    fn backups(&self, u: &Upgrade, files: &Files) -> Result<Vec<TerminalBackup>, Error> {
        u.terminals
            .values()
            .filter(|t| t.active())
            .map(|t| read_json(&files.backup(t.number)))
            .collect()
    }

    /// Recomputes every terminal's folder from the signed release and the
    /// terminal's own backup; the server's answer must be exactly that.
    async fn verify_delivery(
        &self,
        u: &Upgrade,
        delivery: &Delivery,
        backups: &[TerminalBackup],
        ctx: &Context,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let numbers: Vec<u32> = delivery.terminals.iter().map(|t| t.number).collect();
        if numbers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Untrusted(format!(
                "the delivery is not in terminal order: {numbers:?}"
            )));
        }
        for b in backups {
            let Some(result) = delivery.terminals.iter().find(|t| t.number == b.number) else {
                return Err(Error::Untrusted(format!(
                    "the delivery has no folder for terminal {}",
                    b.number
                )));
            };
            let planned = u.terminals.get(&b.number).map(|t| &t.to);
            if planned != Some(&result.version) {
                return Err(Error::Untrusted(format!(
                    "terminal {} was given {}, the plan is {:?}",
                    b.number,
                    result.version,
                    planned.map(ToString::to_string)
                )));
            }
            let signed = &ctx.releases[&result.version];
            let release = self.release_manifest(&result.version, ctx, blobs).await?;
            let preserve =
                Preserve::new(&signed.preserve).map_err(|e| Error::Untrusted(e.to_string()))?;
            let expected = merge_for_terminal(&release, &b.manifest, &preserve)
                .map_err(|e| Error::Untrusted(e.to_string()))?;
            if expected != result.manifest {
                return Err(Error::Untrusted(format!(
                    "the server's folder for terminal {} differs from the signed release {} plus its preserved files",
                    b.number, result.version
                )));
            }
        }
        Ok(())
    }
}

/// The host's backup folders (`backups/<UTC time>_<version>`, one
/// `terminal-<n>` inside per terminal), oldest first: the names sort by time.
pub fn backup_folders(data_dir: &Path) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(data_dir.join("backups"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    folders
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

/// Writes a terminal's backup as a plain folder (what the store's staff can
/// copy back by hand), every file checked against its hash. A folder left
/// by an interrupted run is replaced.
fn write_backup_folder(dest: &Path, manifest: &Manifest, blobs: &BlobStore) -> Result<(), Error> {
    let marker = dest.with_extension("manifest.json");
    if dest.exists() {
        if std::fs::read(&marker)
            .ok()
            .and_then(|b| Manifest::parse(&b).ok())
            .as_ref()
            == Some(manifest)
        {
            return Ok(());
        }
        std::fs::remove_dir_all(dest).map_err(|e| tillup_fs::Error::Io {
            path: dest.to_owned(),
            source: e,
        })?;
    }
    std::fs::create_dir_all(dest.parent().expect("backup folders have a parent")).map_err(|e| {
        tillup_fs::Error::Io {
            path: dest.to_owned(),
            source: e,
        }
    })?;
    let tmp = dest.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| tillup_fs::Error::Io {
            path: tmp.clone(),
            source: e,
        })?;
    }
    tillup_fs::materialize(&tmp, manifest, &|f| Ok(blobs.path(&f.sha256)))?;
    tillup_fs::write_atomic(&marker, &manifest.to_bytes())?;
    std::fs::rename(&tmp, dest).map_err(|e| tillup_fs::Error::Io {
        path: dest.to_owned(),
        source: e,
    })?;
    tillup_fs::fsync_dir(dest.parent().expect("has a parent"))?;
    Ok(())
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
}
