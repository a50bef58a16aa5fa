//! The effects the core's state machine asks for, each over the typed
//! clients. Every one is safe to repeat: transfers are content-addressed
//! and resume, swaps go by target version, reports replace by id.
//!
//! What keeps a till's stop short: everything that does not need its
//! program stopped happens before any stop. `Prefetch` gets what the
//! terminals need to stage (release files some terminal lacks: from a
//! terminal that holds them over the LAN, only the rest from the server);
//! then the terminals stage (`Prestage`) while `Gather` brings every
//! terminal's folder as it is now onto the host, and the server gets those
//! folders too.
//! After the stop, `Collect` fetches only what changed since, the backup
//! is the terminal's manifest over checked blobs (its folder of hard links
//! is made once the programs run again), and the upload carries only the
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tillup_core::install::SignedLog;

use futures_util::future::join_all;
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::api::{
    self, BackupChanges, DeliveryDigests, ProcessAnswer, ProcessRequest, Snapshot, StageChanges,
    StageRequest, TerminalBackup, TerminalChanges, TerminalTarget,
};
use tillup_core::manifest::{
    FileEntry, MAX_MANIFEST_BYTES, Manifest, ManifestChanges, Preserve, merge_for_terminal,
    remerge_for_terminal,
};
use tillup_core::upgrade::{Effect, Upgrade};
use tillup_fs::BlobStore;
use tillup_transfer::Size;

use super::{Context, Files, Gathered, StagePlan, read_json};
use crate::local_log::LocalLog;
use crate::progress::Moving;
use crate::{Error, Listener, blocking};

/// Hash → signed size of every file of `manifests`.
fn sizes<'m>(manifests: impl IntoIterator<Item = &'m Manifest>) -> BTreeMap<Sha256Hex, Size> {
    sizes_of(manifests.into_iter().flat_map(Manifest::files))
}

/// Hash → signed size of each of `files`.
fn sizes_of<'f>(files: impl IntoIterator<Item = &'f FileEntry>) -> BTreeMap<Sha256Hex, Size> {
    files
        .into_iter()
        .map(|f| (f.sha256, Size::Exactly(f.size)))
        .collect()
}

/// Of `wanted`, those `blobs` lacks.
fn lacking(wanted: &BTreeMap<Sha256Hex, Size>, blobs: &BlobStore) -> BTreeMap<Sha256Hex, Size> {
    wanted
        .iter()
        .filter(|(h, _)| !blobs.has(h))
        .map(|(h, s)| (*h, *s))
        .collect()
}

/// Which terminal sends the host which of the files it lacks (`has` says
/// what it holds): each file from one terminal, those only one terminal
/// holds first, then each shared one to whichever has the least to send
/// so far, so that the terminals send at once and about evenly.
fn plan_pulls(
    snapshots: &[(u32, Snapshot)],
    has: impl Fn(&Sha256Hex) -> bool,
) -> BTreeMap<u32, BTreeMap<Sha256Hex, Size>> {
    let mut holders: BTreeMap<Sha256Hex, (u64, BTreeSet<u32>)> = BTreeMap::new();
    for (n, snap) in snapshots {
        for f in snap.manifest.files() {
            holders
                .entry(f.sha256)
                .or_insert((f.size, BTreeSet::new()))
                .1
                .insert(*n);
        }
    }
    let mut order: Vec<_> = holders.into_iter().filter(|(h, _)| !has(h)).collect();
    order.sort_by_key(|(_, (size, who))| (who.len(), std::cmp::Reverse(*size)));
    let mut load: BTreeMap<u32, u64> = BTreeMap::new();
    let mut plan: BTreeMap<u32, BTreeMap<Sha256Hex, Size>> = BTreeMap::new();
    for (h, (size, who)) in order {
        let n = *who
            .iter()
            .min_by_key(|n| load.get(n).copied().unwrap_or(0))
            .expect("a holder");
        *load.entry(n).or_default() += size;
        plan.entry(n).or_default().insert(h, Size::Exactly(size));
    }
    plan
}

impl Listener {
    pub(super) async fn run_effect(
        &self,
        e: &Effect,
        u: &Upgrade,
        ctx: &Context,
        files: &Files,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let run = e.terminal().and_then(|n| u.terminals.get(&n));
        match e {
            Effect::Prefetch => self.prefetch(u, ctx, blobs).await?,
            Effect::Gather => self.gather(u, ctx, files, blobs).await?,
            Effect::Prestage(n) => {
                let run = run.expect("terminal effect");
                let release = self.release_manifest(&run.to, ctx, blobs).await?;
                self.push_and_stage(*n, &run.to, &release, ctx, blobs)
                    .await?;
            }
            Effect::Stop(n) => {
                let r = self.agent(*n)?.stop().await?;
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
                let status = agent.status().await?;
                // The folder as `Gather` took it (the host holds its files,
                // checked): what changed since is what to fetch and what
                // the upload sends.
                let (path, parsed) = (files.gathered(*n), Arc::clone(&files.parsed));
                let gathered = blocking(move || Ok(parsed.read(&path).ok()))
                    .await?
                    .filter(|g| (&g.model, &g.version) == (&status.model, &run.from));
                let (version, manifest, changes) = match self
                    .changes_since_gathered(*n, gathered.clone(), files)
                    .await?
                {
                    Some((version, manifest, changes)) => (version, manifest, Some(changes)),
                    None => {
                        let snap = agent.snapshot().await?;
                        let manifest = snap.manifest;
                        let (manifest, changes) = blocking(move || {
                            let changes = gathered.map(|g| g.manifest.changes_to(&manifest));
                            Ok((manifest, changes))
                        })
                        .await?;
                        (snap.version, manifest, changes)
                    }
                };
                if version.as_ref() != Some(&run.from) {
                    return Err(Error::Other(format!(
                        "terminal {n} holds version {:?}, the plan expected {}",
                        version.map(|v| v.to_string()),
                        run.from
                    )));
                }
                let backup = TerminalBackup {
                    number: *n,
                    model: status.model,
                    version: run.from.clone(),
                    manifest,
                };
                let changed = match &changes {
                    Some(c) => sizes_of(&c.upsert),
                    None => sizes([&backup.manifest]),
                };
                let changed = lacking(&changed, blobs);
                let bytes = agent.fetch(&changed, blobs, &Arc::default()).await?;
                tracing::info!(terminal = n, files = changed.len(), bytes, "collected");
                // With its bytes in the blob store (checked), this manifest
                // is the terminal's backup, written as changes to the
                // gathered one; its folder view is made once the programs
                // run again (`finish`).
                let files = files.clone();
                blocking(move || files.keep_backup(Arc::new(backup), changes.as_ref())).await?;
            }
            Effect::UploadBackup if ctx.offline => {
                tracing::info!("upgrading from a bundle: the backup stays on the host");
            }
            Effect::UploadBackup => {
                if self.upload_changes(u, files, blobs).await? {
                    return Ok(());
                }
                let backups = self.backups(u, files).await?;
                let hashes: BTreeSet<Sha256Hex> =
                    backups.iter().flat_map(|b| b.manifest.hashes()).collect();
                let bytes = self
                    .server
                    .send(hashes.into_iter().collect(), blobs)
                    .await?;
                tracing::info!(bytes, "the server holds every terminal's folder");
                self.server
                    .put_backup(&u.id, &api::Backup { terminals: backups })
                    .await?;
            }
            Effect::Process if ctx.offline => {
                let backups = self.backups(u, files).await?;
                for plan in self.build_plans(u, &backups, ctx, blobs, files).await? {
                    tillup_fs::write_json_atomic(&files.plan(plan.0), &plan.1)?;
                }
            }
            Effect::Process => {
                let backups = self.backups(u, files).await?;
                let terminals = backups
                    .iter()
                    .map(|b| TerminalTarget {
                        number: b.number,
                        target: u.terminals[&b.number].to.clone(),
                    })
                    .collect();
                let req = ProcessRequest {
                    channel: self.config.channel.clone(),
                    terminals,
                    answer: ProcessAnswer::Digests,
                    ahead: false,
                };
                // The host's own build needs nothing from the server's:
                // both run at once.
                let (built, plans) = tokio::join!(
                    self.server.process(&u.id, &req),
                    self.build_plans(u, &backups, ctx, blobs, files)
                );
                for plan in check_delivery(&built?, &backups, plans?)? {
                    tillup_fs::write_json_atomic(&files.plan(plan.0), &plan.1)?;
                }
            }
            Effect::Deliver => {
                // Nearly always nothing: the terminals' files are on the host
                // already.
                let plans = self.plans(u, files)?;
                let wanted = sizes_of(plans.iter().flat_map(|p| &p.changes.upsert));
                self.server
                    .fetch(&lacking(&wanted, blobs), blobs, &Arc::default())
                    .await?;
            }
            Effect::Stage(n) => {
                let plan: StagePlan = read_json(&files.plan(*n))?;
                self.stage_plan(*n, &plan, ctx, blobs).await?;
            }
            Effect::Commit(n) => {
                let run = run.expect("terminal effect");
                self.agent(*n)?.commit(&run.to).await?;
            }
            Effect::Start(n) => {
                self.agent(*n)?.start().await?;
            }
            Effect::CheckHealth(n) => {
                let run = run.expect("terminal effect");
                let h = self.agent(*n)?.health(&run.to).await?;
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
                self.agent(*n)?.rollback(&run.from).await?;
            }
            Effect::SendReport => {
                let mut local = LocalLog::load(&self.data_dir)?;
                let mut report = self.report_json(u, &ctx.left_out, &local);
                report["agent_notices"] = self.agent_notices(u).await;
                if ctx.offline {
                    // Sent by the first check that reaches the server.
                    local.queue_report(report);
                    local.save(&self.data_dir)?;
                    tracing::info!("upgraded from a bundle: the report waits for the server");
                } else {
                    self.send_unsent_reports().await?;
                    self.server.report(&report).await?;
                }
            }
        }
        Ok(())
    }

    /// Every active terminal's snapshot, taken now. A terminal that cannot
    /// answer is left out (with a warning): its files come from another
    /// terminal or the server, and its own at `Collect`.
    async fn snapshots(&self, u: &Upgrade) -> Vec<(u32, Snapshot)> {
        let numbers: Vec<u32> = u
            .terminals
            .values()
            .filter(|t| t.active())
            .map(|t| t.number)
            .collect();
        join_all(numbers.iter().map(|n| async move {
            let snap = match self.agent(*n) {
                Ok(agent) => agent.snapshot().await,
                Err(e) => Err(e),
            };
            (*n, snap)
        }))
        .await
        .into_iter()
        .filter_map(|(n, snap)| match snap {
            Ok(s) => Some((n, s)),
            Err(e) => {
                tracing::warn!(terminal = n, "its files will come later: {e}");
                None
            }
        })
        .collect()
    }

    /// Pulls `plan` from the terminals over the LAN and `from_server` from
    /// the server, at once, counting both as moving to the host. A terminal
    /// that cannot hand its files over now is not fatal (see `snapshots`).
    /// Returns the bytes that came from the server.
    async fn pull(
        &self,
        plan: &BTreeMap<u32, BTreeMap<Sha256Hex, Size>>,
        from_server: &BTreeMap<Sha256Hex, Size>,
        blobs: &BlobStore,
    ) -> Result<u64, Error> {
        let total: u64 = plan
            .values()
            .chain([from_server])
            .flat_map(|w| w.values())
            .map(|s| s.bound())
            .sum();
        self.transfers.begin(Moving::ToHost, total);
        let moved = self.transfers.counter(Moving::ToHost);
        let pulls = plan.iter().map(|(n, wanted)| async move {
            let result = match self.agent(*n) {
                Ok(agent) => agent.fetch(wanted, blobs, moved).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(terminal = n, "could not hand over its files now: {e}");
            }
        });
        let (_, downloaded) = futures_util::join!(
            join_all(pulls),
            self.server.fetch(from_server, blobs, moved)
        );
        downloaded
    }

    /// [`Effect::Prefetch`]: what the terminals need from the host to stage
    /// their release: its files some terminal lacks, from a terminal that
    /// holds them, over the LAN, and only those none holds from the server.
    async fn prefetch(&self, u: &Upgrade, ctx: &Context, blobs: &BlobStore) -> Result<(), Error> {
        let snapshots = self.snapshots(u).await;
        let mut releases: BTreeMap<&Version, BTreeMap<Sha256Hex, Size>> = BTreeMap::new();
        let mut needed: BTreeMap<Sha256Hex, Size> = BTreeMap::new();
        for t in u.terminals.values().filter(|t| t.active()) {
            if !releases.contains_key(&t.to) {
                let m = self.release_manifest(&t.to, ctx, blobs).await?;
                releases.insert(&t.to, sizes([&m]));
            }
            let held = snapshots
                .iter()
                .find(|(n, _)| *n == t.number)
                .map(|(_, s)| s.manifest.hashes());
            // A terminal that did not answer may lack any of them.
            needed.extend(
                releases[&t.to]
                    .iter()
                    .filter(|(h, _)| held.as_ref().is_none_or(|held| !held.contains(*h)))
                    .map(|(h, s)| (*h, *s)),
            );
        }
        let needed = lacking(&needed, blobs);
        let plan = plan_pulls(&snapshots, |h| !needed.contains_key(h) || blobs.has(h));
        let only_on_server: BTreeMap<Sha256Hex, Size> = needed
            .iter()
            .filter(|(h, _)| !plan.values().any(|w| w.contains_key(h)))
            .map(|(h, s)| (*h, *s))
            .collect();
        let downloaded = self.pull(&plan, &only_on_server, blobs).await?
            // Whatever a terminal could not hand over after all.
            + self
                .server
                .fetch(
                    &lacking(&needed, blobs),
                    blobs,
                    self.transfers.counter(Moving::ToHost),
                )
                .await?;
        tracing::info!(
            files = needed.len(),
            from_server = downloaded,
            "the host holds what the terminals need to stage, verified"
        );
        Ok(())
    }

    /// [`Effect::Gather`]: every terminal's folder as it is now onto the
    /// host, from the terminals over the LAN, while they stage; then the
    /// server gets what it lacks of them, so that the backup upload after
    /// the stop carries only what changed since.
    async fn gather(
        &self,
        u: &Upgrade,
        ctx: &Context,
        files: &Files,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let snapshots = self.snapshots(u).await;
        let plan = plan_pulls(&snapshots, |h| blobs.has(h));
        let before = self.transfers.counter(Moving::ToHost).load(Relaxed);
        self.pull(&plan, &BTreeMap::new(), blobs).await?;
        tracing::info!(
            bytes = self.transfers.counter(Moving::ToHost).load(Relaxed) - before,
            "the host holds the terminals' folders as they are now, verified"
        );
        if ctx.offline {
            // From a bundle: the backup stays on the host (`Collect`).
            return Ok(());
        }
        let held: Vec<Sha256Hex> = snapshots
            .iter()
            .flat_map(|(_, s)| s.manifest.hashes())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|h| blobs.has(h))
            .collect();
        let sent = self.server.send(held, blobs).await?;
        tracing::info!(
            bytes = sent,
            "the server holds the terminals' folders as they are now"
        );
        // And their backup as it is now: the one after the stop goes as
        // changes to it.
        let (mut gathered, mut kept) = (Vec::new(), Vec::new());
        for (n, snap) in snapshots {
            let Some(run) = u.terminals.get(&n) else {
                continue;
            };
            if snap.version.as_ref() != Some(&run.from)
                || !lacking(&sizes([&snap.manifest]), blobs).is_empty()
            {
                files.drop_gathered(n)?;
                continue;
            }
            let status = match self.agent(n) {
                Ok(agent) => agent.status().await,
                Err(e) => Err(e),
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    // Its whole backup goes after the stop instead.
                    tracing::warn!(terminal = n, "its backup will go whole: {e}");
                    files.drop_gathered(n)?;
                    continue;
                }
            };
            let backup = TerminalBackup {
                number: n,
                model: status.model,
                version: run.from.clone(),
                manifest: snap.manifest,
            };
            // The agent's name for this snapshot, which `Collect` asks for
            // changes since: only if it is this manifest's.
            let named = snap.digest;
            let (backup, digest) = blocking(move || {
                let digest = named.filter(|d| *d == backup.manifest.digest());
                Ok((Arc::new(backup), digest))
            })
            .await?;
            files.keep_gathered(Arc::clone(&backup), digest)?;
            gathered.push((*backup).clone());
            kept.push(backup);
        }
        let backup = api::Backup {
            terminals: gathered,
        };
        // Only a shortcut for the upload after the stop: without it, the
        // whole backup goes then.
        if let Err(e) = self.server.put_backup(&u.id, &backup).await {
            tracing::warn!("the backup will go whole after the stop: {e}");
            tillup_fs::remove_file_if_exists(&files.gathered_on_server())?;
            return Ok(());
        }
        tillup_fs::write_json_atomic(
            &files.gathered_on_server(),
            &Gathered {
                digest: backup.digest(),
                numbers: backup.terminals.iter().map(|t| t.number).collect(),
            },
        )?;
        self.build_ahead(u, kept, ctx, blobs, files).await;
        Ok(())
    }

    /// The manifest of a target release, checked against the signed log.
    pub(super) async fn release_manifest(
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
            .fetch_one(&signed.sha256, MAX_MANIFEST_BYTES as u64, blobs)
            .await?;
        Manifest::parse(&blobs.read(&signed.sha256)?)
            .map_err(|e| Error::Untrusted(format!("release {version} manifest: {e}")))
    }

    /// What a terminal checks what it stages with: the signed log, and the
    /// release manifest's digest (which it must hold, as one of the files).
    fn proof(&self, version: &Version, ctx: &Context) -> Result<(SignedLog, Sha256Hex), Error> {
        let signed = ctx.releases.get(version).ok_or_else(|| {
            Error::Untrusted(format!("release {version} is not one this upgrade planned"))
        })?;
        let log = match &ctx.signed_log {
            Some(log) => log.clone(),
            None => self.last_verified_log()?,
        };
        Ok((log, signed.sha256))
    }

    /// Sends a terminal the files of `manifest` it lacks, with the release's
    /// manifest, then has it stage `manifest` (incrementally, beside its
    /// program folder).
    async fn push_and_stage(
        &self,
        n: u32,
        version: &Version,
        manifest: &Manifest,
        ctx: &Context,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let agent = self.agent(n)?;
        let (release, release_manifest) = self.proof(version, ctx)?;
        let mut hashes = manifest.hashes();
        hashes.insert(release_manifest);
        agent
            .send(hashes.into_iter().collect(), blobs, &self.transfers)
            .await?;
        let r = agent
            .stage(&StageRequest {
                version: version.clone(),
                manifest: manifest.clone(),
                release,
            })
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
    pub(super) async fn backups(
        &self,
        u: &Upgrade,
        files: &Files,
    ) -> Result<Vec<TerminalBackup>, Error> {
        // Each a whole folder's manifest: read side by side.
        join_all(u.terminals.values().filter(|t| t.active()).map(|t| {
            let (n, files) = (t.number, files.clone());
            blocking(move || match files.read_backup(n)? {
                Some(b) => Ok(Arc::unwrap_or_clone(b)),
                None => Err(Error::Other(format!(
                    "terminal {n} was not backed up: upgrade it again"
                ))),
            })
        }))
        .await
        .into_iter()
        .collect()
    }

    /// Terminal `n`'s folder now, with its changes since `gathered`, from
    /// the agent as those changes: `None` when this run did not take the
    /// gathered snapshot or the agent no longer holds it (a whole
    /// snapshot then).
    async fn changes_since_gathered(
        &self,
        n: u32,
        gathered: Option<Arc<TerminalBackup>>,
        files: &Files,
    ) -> Result<Option<(Option<Version>, Manifest, ManifestChanges)>, Error> {
        let (Some(gathered), Some(since)) = (gathered, files.gathered_snapshot(n)) else {
            return Ok(None);
        };
        let now = match self.agent(n)?.snapshot_changes(&since).await {
            Ok(now) if now.since == since => now,
            Ok(_) => return Ok(None),
            // It restarted since, or it is an agent from before this call.
            Err(Error::Refused {
                status: 404 | 409, ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let changes = now.changes;
        blocking(move || match gathered.manifest.with_changes(&changes) {
            Ok(manifest) => Ok(Some((now.version, manifest, changes))),
            Err(e) => {
                tracing::warn!(
                    terminal = n,
                    "its changes since the gathered snapshot do not apply ({e}); taking a whole one"
                );
                Ok(None)
            }
        })
        .await
    }

    /// Uploads the store's backup as changes to the one `Gather` uploaded,
    /// if the server holds that one and every terminal still on its way is
    /// in it. Returns false when the whole backup must go instead.
    async fn upload_changes(
        &self,
        u: &Upgrade,
        files: &Files,
        blobs: &BlobStore,
    ) -> Result<bool, Error> {
        let Ok(gathered) = read_json::<Gathered>(&files.gathered_on_server()) else {
            return Ok(false);
        };
        let mut terminals = Vec::new();
        for t in u.terminals.values().filter(|t| t.active()) {
            match read_json::<ManifestChanges>(&files.changes(t.number)) {
                Ok(changes) if gathered.numbers.contains(&t.number) => {
                    terminals.push(TerminalChanges {
                        number: t.number,
                        changes,
                    });
                }
                _ => return Ok(false),
            }
        }
        let added: BTreeSet<Sha256Hex> = terminals
            .iter()
            .flat_map(|t| t.changes.upsert.iter().map(|f| f.sha256))
            .collect();
        let bytes = self.server.send(added.into_iter().collect(), blobs).await?;
        let changes = BackupChanges {
            base: gathered.digest,
            terminals,
        };
        match self.server.patch_backup(&u.id, &changes).await {
            Ok(()) => {
                tracing::info!(bytes, "the server holds every terminal's folder");
                Ok(true)
            }
            // It holds another backup (a changed one sent before a crash).
            // 405 and 501: a server from before backups could change.
            Err(Error::Refused {
                status: status @ (404 | 405 | 409 | 501),
                ..
            }) => {
                tracing::info!(
                    status,
                    "the server holds another backup than the one the changes apply to; sending the whole backup"
                );
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The stage plans of the terminals still on their way.
    fn plans(&self, u: &Upgrade, files: &Files) -> Result<Vec<StagePlan>, Error> {
        u.terminals
            .values()
            .filter(|t| t.active())
            .map(|t| read_json(&files.plan(t.number)))
            .collect()
    }

    /// Stages terminal `n`'s new folder: as changes to the release it
    /// staged before the stop, or, if its staging folder holds something
    /// else by now, the whole folder.
    async fn stage_plan(
        &self,
        n: u32,
        plan: &StagePlan,
        ctx: &Context,
        blobs: &BlobStore,
    ) -> Result<(), Error> {
        let agent = self.agent(n)?;
        let (release, release_manifest) = self.proof(&plan.version, ctx)?;
        let upserts = plan.changes.upsert.iter().map(|f| f.sha256);
        agent
            .send(
                upserts.chain([release_manifest]).collect(),
                blobs,
                &self.transfers,
            )
            .await?;
        let req = StageChanges {
            version: plan.version.clone(),
            base: plan.base,
            changes: plan.changes.clone(),
            result: plan.result,
            release,
        };
        match agent.stage_changes(&req).await {
            Ok(r) => {
                tracing::info!(
                    terminal = n,
                    changes = plan.changes.upsert.len() + plan.changes.remove.len(),
                    copied_locally = r.reused_bytes,
                    received = r.received_bytes,
                    "staged"
                );
                Ok(())
            }
            // 409: its staging folder holds another folder, or lacks files;
            // 404, 405: an agent from before staging by changes.
            Err(Error::Refused {
                status: status @ (404 | 405 | 409),
                ..
            }) => {
                tracing::warn!(
                    terminal = n,
                    status,
                    "it cannot stage the changes; staging the whole folder"
                );
                let release = self.release_manifest(&plan.version, ctx, blobs).await?;
                let folder = release
                    .with_changes(&plan.changes)
                    .map_err(|e| Error::Other(format!("terminal {n}'s new folder: {e}")))?;
                if folder.digest() != plan.result {
                    return Err(Error::Other(format!(
                        "terminal {n}'s new folder does not match its plan; upgrade it again"
                    )));
                }
                self.server
                    .fetch(&lacking(&sizes([&folder]), blobs), blobs, &Arc::default())
                    .await?;
                self.push_and_stage(n, &plan.version, &folder, ctx, blobs)
                    .await
            }
            Err(e) => Err(e),
        }
    }

    /// Each backed-up terminal's new folder, built on the host from the
    /// signed release and the terminal's preserved files, as a stage plan:
    /// what the server's build must equal, and the whole build of an
    /// upgrade from a bundle. A folder built ahead of the stop (see
    /// [`Listener::build_ahead`]) is the start of the one after it.
    async fn build_plans(
        &self,
        u: &Upgrade,
        backups: &[TerminalBackup],
        ctx: &Context,
        blobs: &BlobStore,
        files: &Files,
    ) -> Result<Vec<(u32, StagePlan)>, Error> {
        let mut work = Vec::new();
        let numbers = backups.iter().map(|b| b.number);
        let releases = self.target_releases(u, numbers, ctx, blobs).await?;
        for (b, release) in backups.iter().zip(releases) {
            let (number, own) = (b.number, b.manifest.clone());
            let (version, files) = (release.version.clone(), files.clone());
            // Each terminal's folder on its own worker (reading what was
            // built ahead, and its changes, there too).
            work.push(blocking(move || {
                let expected = match files.built_ahead(number, &version) {
                    Some((folder, changes)) => {
                        tracing::debug!(
                            terminal = number,
                            changes = changes.upsert.len() + changes.remove.len(),
                            "built from its folder built ahead of the stop"
                        );
                        remerge_for_terminal(
                            &folder,
                            &release.manifest,
                            &changes,
                            &release.preserve,
                        )
                    }
                    None => merge_for_terminal(&release.manifest, &own, &release.preserve),
                }
                .map_err(|e| Error::Untrusted(e.to_string()))?;
                Ok((
                    number,
                    StagePlan {
                        version,
                        base: release.digest,
                        changes: release.manifest.changes_to(&expected),
                        result: expected.digest(),
                    },
                ))
            }));
        }
        join_all(work).await.into_iter().collect()
    }

    /// Builds each gathered terminal's new folder before the stop, on the
    /// host and on the server at once, so that both builds after the stop
    /// follow only what changed since. Neither is needed: a folder not
    /// built ahead is built whole after the stop.
    async fn build_ahead(
        &self,
        u: &Upgrade,
        gathered: Vec<Arc<TerminalBackup>>,
        ctx: &Context,
        blobs: &BlobStore,
        files: &Files,
    ) {
        let req = ProcessRequest {
            channel: self.config.channel.clone(),
            terminals: gathered
                .iter()
                .map(|b| TerminalTarget {
                    number: b.number,
                    target: u.terminals[&b.number].to.clone(),
                })
                .collect(),
            answer: ProcessAnswer::Digests,
            ahead: true,
        };
        let on_host = async {
            let numbers = gathered.iter().map(|b| b.number);
            let releases = self.target_releases(u, numbers, ctx, blobs).await?;
            let mut work = Vec::new();
            for (b, release) in gathered.into_iter().zip(releases) {
                work.push(blocking(move || {
                    let folder =
                        merge_for_terminal(&release.manifest, &b.manifest, &release.preserve)
                            .map_err(|e| Error::Untrusted(e.to_string()))?;
                    Ok((b, release.version.clone(), folder))
                }));
            }
            for built in join_all(work).await {
                let (b, version, folder) = built?;
                files.keep_built_ahead(b, version, folder);
            }
            Ok::<_, Error>(())
        };
        let (server, host) = tokio::join!(self.server.process(&u.id, &req), on_host);
        if let Err(e) = server {
            tracing::warn!("the server did not build the folders ahead of the stop: {e}");
        }
        if let Err(e) = host {
            tracing::warn!("the host did not build the folders ahead of the stop: {e}");
        }
    }

    /// The release each of terminals `numbers` goes to, each release's
    /// manifest read and checked once.
    async fn target_releases(
        &self,
        u: &Upgrade,
        numbers: impl Iterator<Item = u32>,
        ctx: &Context,
        blobs: &BlobStore,
    ) -> Result<Vec<Arc<TargetRelease>>, Error> {
        let mut releases: BTreeMap<&Version, Arc<TargetRelease>> = BTreeMap::new();
        let mut out = Vec::new();
        for n in numbers {
            let Some(version) = u.terminals.get(&n).map(|t| &t.to) else {
                return Err(Error::Other(format!(
                    "terminal {n} was backed up but is not in the plan"
                )));
            };
            if !releases.contains_key(version) {
                let manifest = self.release_manifest(version, ctx, blobs).await?;
                let preserve = Preserve::new(&ctx.releases[version].preserve)
                    .map_err(|e| Error::Untrusted(e.to_string()))?;
                let target = TargetRelease {
                    version: version.clone(),
                    digest: manifest.digest(),
                    manifest,
                    preserve,
                };
                releases.insert(version, Arc::new(target));
            }
            out.push(Arc::clone(&releases[version]));
        }
        Ok(out)
    }
}

/// A release terminals go to, with what building their folders needs.
struct TargetRelease {
    version: Version,
    manifest: Manifest,
    digest: Sha256Hex,
    preserve: Preserve,
}

/// The server's folders (by digest) must be exactly the host's `plans`
/// (see [`Listener::build_plans`]) and name exactly the terminals backed
/// up. Returns the plans.
fn check_delivery(
    built: &DeliveryDigests,
    backups: &[TerminalBackup],
    plans: Vec<(u32, StagePlan)>,
) -> Result<Vec<(u32, StagePlan)>, Error> {
    let numbers: Vec<u32> = built.terminals.iter().map(|t| t.number).collect();
    if numbers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Untrusted(format!(
            "the delivery is not in terminal order: {numbers:?}"
        )));
    }
    let backed_up: Vec<u32> = backups.iter().map(|b| b.number).collect();
    if let Some(n) = numbers.iter().find(|n| !backed_up.contains(n)) {
        return Err(Error::Untrusted(format!(
            "the delivery has a folder for terminal {n}, which was not backed up"
        )));
    }
    for (n, plan) in &plans {
        let Some(result) = built.terminals.iter().find(|t| t.number == *n) else {
            return Err(Error::Untrusted(format!(
                "the delivery has no folder for terminal {n}"
            )));
        };
        if result.version != plan.version {
            return Err(Error::Untrusted(format!(
                "terminal {n} was given {}, the plan is {}",
                result.version, plan.version
            )));
        }
        if result.manifest != plan.result {
            return Err(Error::Untrusted(format!(
                "the server's folder for terminal {n} differs from the signed release {} plus its preserved files",
                plan.version
            )));
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_core::manifest::FileEntry;

    fn snapshot(files: &[(&str, &[u8])]) -> Snapshot {
        let entries = files
            .iter()
            .map(|(path, bytes)| FileEntry {
                path: tillup_core::RelPath::new(path).unwrap(),
                size: bytes.len() as u64,
                sha256: Sha256Hex::of(bytes),
                exec: false,
            })
            .collect();
        Snapshot {
            version: None,
            manifest: Manifest::new(entries).unwrap(),
            digest: None,
        }
    }

    #[test]
    fn each_file_comes_from_one_terminal_spread_evenly() {
        let shared: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100]).collect();
        let files = |own: &'static [u8]| -> Vec<(&str, Vec<u8>)> {
            let mut v: Vec<(&str, Vec<u8>)> = ["a", "b", "c", "d"]
                .into_iter()
                .zip(shared.iter().cloned())
                .collect();
            v.push(("data/own.db", own.to_vec()));
            v
        };
        let snap = |own| {
            let f = files(own);
            let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, b)| (*p, b.as_slice())).collect();
            snapshot(&refs)
        };
        let held_already = Sha256Hex::of(&shared[3]);
        let plan = plan_pulls(&[(1, snap(b"one")), (2, snap(b"two"))], |h| {
            *h == held_already
        });
        // Each terminal sends its own file, and half of the shared ones.
        assert_eq!(plan[&1].len() + plan[&2].len(), 2 + 3);
        assert!(plan[&1].contains_key(&Sha256Hex::of(b"one")));
        assert!(plan[&2].contains_key(&Sha256Hex::of(b"two")));
        assert!(!plan.values().any(|w| w.contains_key(&held_already)));
        let shared_from = |n: u32| plan[&n].len() - 1;
        assert!(shared_from(1).abs_diff(shared_from(2)) <= 1, "{plan:?}");
    }
}
