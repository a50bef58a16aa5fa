//! The effects the core's state machine asks for, each over the typed
//! clients. Every one is safe to repeat: transfers are content-addressed
//! and resume, swaps go by target version, reports replace by id.
//!
//! What keeps a till's stop short: everything that does not need its
//! program stopped happens in `Prefetch`, before any stop. The host then
//! holds the target releases (files the terminals hold already come from
//! them over the LAN, only the rest from the server) and every terminal's
//! folder as it was a moment before; the server holds those folders too.
//! After the stop, `Collect` fetches only what changed since, the backup
//! is the terminal's manifest over checked blobs (its folder of hard links
//! is made once the programs run again), and the upload carries only the
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::future::join_all;
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::api::{
    self, Delivery, ProcessRequest, Snapshot, StageRequest, TerminalBackup, TerminalResult,
    TerminalTarget,
};
use tillup_core::manifest::{MAX_MANIFEST_BYTES, Manifest, Preserve, merge_for_terminal};
use tillup_core::upgrade::{Effect, Upgrade};
use tillup_fs::BlobStore;
use tillup_transfer::Size;

use super::{Context, Files, read_json};
use crate::progress::Moving;
use crate::{Error, Listener};

/// Hash → signed size of every file of `manifests`.
fn sizes<'m>(manifests: impl IntoIterator<Item = &'m Manifest>) -> BTreeMap<Sha256Hex, Size> {
    manifests
        .into_iter()
        .flat_map(Manifest::files)
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
            Effect::Prestage(n) => {
                let run = run.expect("terminal effect");
                let release = self.release_manifest(&run.to, ctx, blobs).await?;
                self.push_and_stage(*n, &run.to, &release, blobs).await?;
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
                let snap = agent.snapshot().await?;
                if snap.version.as_ref() != Some(&run.from) {
                    return Err(Error::Other(format!(
                        "terminal {n} holds version {:?}, the plan expected {}",
                        snap.version.map(|v| v.to_string()),
                        run.from
                    )));
                }
                // Only what changed since `Prefetch` collected the folder.
                let changed = lacking(&sizes([&snap.manifest]), blobs);
                let bytes = agent.fetch(&changed, blobs, &Arc::default()).await?;
                tracing::info!(terminal = n, files = changed.len(), bytes, "collected");
                let status = agent.status().await?;
                let backup = TerminalBackup {
                    number: *n,
                    model: status.model,
                    version: run.from.clone(),
                    manifest: snap.manifest,
                };
                // With its bytes in the blob store (checked), this manifest
                // is the terminal's backup; its folder view is made once
                // the programs run again (`finish`).
                tillup_fs::write_json_atomic(&files.backup(*n), &backup)?;
            }
            Effect::UploadBackup => {
                let backups = self.backups(u, files)?;
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
            Effect::Process => {
                let backups = self.backups(u, files)?;
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
                };
                let delivery = self.server.process(&u.id, &req).await?;
                self.verify_delivery(u, &delivery, &backups, ctx, blobs)
                    .await?;
                for t in &delivery.terminals {
                    tillup_fs::write_json_atomic(&files.result(t.number), t)?;
                }
            }
            Effect::Deliver => {
                let results = self.results(u, files)?;
                // Nearly always nothing: the release and the terminals'
                // files are on the host already.
                let wanted = lacking(&sizes(results.iter().map(|t| &t.manifest)), blobs);
                self.server.fetch(&wanted, blobs, &Arc::default()).await?;
            }
            Effect::Stage(n) => {
                let run = run.expect("terminal effect");
                let result: TerminalResult = read_json(&files.result(*n))?;
                self.push_and_stage(*n, &run.to, &result.manifest, blobs)
                    .await?;
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
                self.send_unsent_reports().await?;
                let mut report = self.report_json(u, &ctx.left_out);
                report["agent_notices"] = self.agent_notices(u).await;
                self.server.report(&report).await?;
            }
        }
        Ok(())
    }

    /// [`Effect::Prefetch`]; see the module doc. A terminal that cannot
    /// hand over its files now is not fatal: its files come from another
    /// terminal or the server, and its own at `Collect`.
    async fn prefetch(&self, u: &Upgrade, ctx: &Context, blobs: &BlobStore) -> Result<(), Error> {
        let mut releases = Vec::new();
        for version in ctx.releases.keys() {
            releases.push(self.release_manifest(version, ctx, blobs).await?);
        }
        let release_files = sizes(&releases);
        let numbers: Vec<u32> = u
            .terminals
            .values()
            .filter(|t| t.active())
            .map(|t| t.number)
            .collect();
        let snapshots: Vec<(u32, Snapshot)> = join_all(numbers.iter().map(|n| async move {
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
        .collect();

        // From the terminals, over the LAN: every file of theirs the host
        // lacks (the release's they hold, and their own for the backup).
        let plan = plan_pulls(&snapshots, |h| blobs.has(h));
        let from_terminals: u64 = plan
            .values()
            .flat_map(|w| w.values())
            .map(|s| s.bound())
            .sum();
        // And from the server only the release's files no terminal holds.
        let only_on_server: BTreeMap<Sha256Hex, Size> = lacking(&release_files, blobs)
            .into_iter()
            .filter(|(h, _)| !plan.values().any(|w| w.contains_key(h)))
            .collect();
        let release_only: u64 = only_on_server.values().map(|s| s.bound()).sum();
        self.transfers
            .begin(Moving::ToHost, from_terminals + release_only);
        let moved = self.transfers.counter();
        let before = moved.load(std::sync::atomic::Ordering::Relaxed);
        let pulls = plan.iter().map(|(n, wanted)| async move {
            let result = match self.agent(*n) {
                Ok(agent) => agent.fetch(wanted, blobs, moved).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(terminal = n, "could not hand over its files now: {e}");
            }
        });
        // From the server, at the same time: only what no terminal holds;
        // then whatever a terminal could not hand over after all.
        let (_, downloaded) = futures_util::join!(
            join_all(pulls),
            self.server.fetch(&only_on_server, blobs, moved)
        );
        let downloaded = downloaded?
            + self
                .server
                .fetch(&lacking(&release_files, blobs), blobs, moved)
                .await?;
        tracing::info!(
            from_terminals = moved.load(std::sync::atomic::Ordering::Relaxed) - before - downloaded,
            from_server = downloaded,
            "the releases are on the host, verified"
        );

        // The server gets the terminals' folders now, while they sell: the
        // upload after the stop carries only what changed since.
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
        agent
            .send(
                manifest.hashes().into_iter().collect(),
                blobs,
                &self.transfers,
            )
            .await?;
        let r = agent
            .stage(&StageRequest {
                version: version.clone(),
                manifest: manifest.clone(),
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
    pub(super) fn backups(&self, u: &Upgrade, files: &Files) -> Result<Vec<TerminalBackup>, Error> {
        u.terminals
            .values()
            .filter(|t| t.active())
            .map(|t| read_json(&files.backup(t.number)))
            .collect()
    }

    /// The verified new folders of the terminals still on their way.
    fn results(&self, u: &Upgrade, files: &Files) -> Result<Vec<TerminalResult>, Error> {
        u.terminals
            .values()
            .filter(|t| t.active())
            .map(|t| read_json(&files.result(t.number)))
            .collect()
    }

    /// Recomputes every terminal's folder from the signed release and the
    /// terminal's own backup; the server's answer must be exactly that, and
    /// name exactly the terminals backed up.
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
        let backed_up: Vec<u32> = backups.iter().map(|b| b.number).collect();
        if let Some(n) = numbers.iter().find(|n| !backed_up.contains(n)) {
            return Err(Error::Untrusted(format!(
                "the delivery has a folder for terminal {n}, which was not backed up"
            )));
        }
        let mut releases: BTreeMap<&Version, Manifest> = BTreeMap::new();
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
            if !releases.contains_key(&result.version) {
                let m = self.release_manifest(&result.version, ctx, blobs).await?;
                releases.insert(&result.version, m);
            }
            let release = &releases[&result.version];
            let preserve =
                Preserve::new(&signed.preserve).map_err(|e| Error::Untrusted(e.to_string()))?;
            let expected = merge_for_terminal(release, &b.manifest, &preserve)
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
