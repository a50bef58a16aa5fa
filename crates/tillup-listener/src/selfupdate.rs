//! tillup keeping itself current ([`Listener::self_update`]): the newest
//! release of tillup's own channel (`self_channel`), verified as the POS
//! program's log is, goes to the terminals' agents first (the canary
//! terminal, then the rest, each restarted in place, health-checked with
//! its main program untouched, then confirmed or rolled back), then to the
//! host's programs: the running one (`tillup`, or `tillup-tray` on a
//! desktop host) and those installed beside it, swapped together, probed,
//! and restarted on trial (see [`tillup_selfupdate`]). Never while a POS upgrade is in progress: the
//! data folder's lock and the unfinished upgrade keep them apart.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::api::{AgentStatus, MainState, SelfUpdateRequest};
use tillup_core::log::{Release, SeenLog};
use tillup_core::selfupdate::{OnStart, Program, Trial, TrialPhase, WENT_BACK, platform, wanted};
use tillup_core::{FileEntry, Manifest, RelPath, Sha256Hex};
use tillup_selfupdate::{Part, Replacer, self_check_probe};
use tillup_transfer::Size;

use crate::check::{LogSource, VerifiedLog};
use crate::clients::AgentClient;
use crate::{Config, Error, Listener};

/// How long a restarted agent has to answer in its new release.
pub const AGENT_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a restarting agent is asked its status.
const AGENT_POLL: Duration = Duration::from_millis(250);

/// What the listener remembers of tillup's own releases
/// (`self-release.json` beside the local log).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SelfState {
    /// The release of tillup kept on this listener's executable (none:
    /// the build's own version).
    kept: Option<tillup_selfupdate::Kept>,
    /// The newest log of tillup's channel accepted: an older one is refused.
    seen: Option<SeenLog>,
    /// A release that failed on a terminal: the daemon does not try it
    /// again (a newer release, or `tillup self-update` by hand, does).
    #[serde(default)]
    failed: Option<Version>,
}

/// What [`Listener::self_update`] did.
#[derive(Clone, Debug, Serialize)]
pub struct SelfUpdateOutcome {
    /// The newest release of tillup for this platform, if the channel has one.
    pub release: Option<Version>,
    /// Each terminal's agent.
    pub agents: BTreeMap<u32, Step>,
    /// This listener.
    pub listener: Step,
    /// Whether the listener must now restart on its new executable (the
    /// daemon does it; a command line's next run finds it).
    pub restart: bool,
}

/// What happened to one program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Step {
    /// It runs that release or a newer one.
    Current { version: String },
    /// It was updated (an agent: restarted, healthy and confirmed; the
    /// listener: swapped in and probed, restarting on trial).
    Updated { from: String, to: String },
    /// It could not be updated and runs what it ran.
    Failed { why: String },
    /// It was left alone.
    Skipped { why: String },
}

impl Listener {
    fn self_state_path(&self) -> std::path::PathBuf {
        self.data_dir.join("self-release.json")
    }

    fn self_state(&self) -> Result<SelfState, Error> {
        let path = self.self_state_path();
        if !path.exists() {
            return Ok(SelfState::default());
        }
        crate::runner::read_json(&path)
    }

    /// This process's executable (`tillup` or `tillup-tray`), replaced
    /// together with the host's other programs beside it.
    fn replacer(&self) -> Result<Replacer, Error> {
        Ok(Replacer::this_process(&self.data_dir)?.with_companions(&Program::HOST))
    }

    /// The release of tillup this process runs, as it was when first asked
    /// (at start-up: [`Listener::settle_self`]): a file replaced since by
    /// another tillup does not change the code running here.
    pub fn self_version(&self) -> Version {
        self.running_release
            .get_or_init(|| {
                let kept = self.self_state().ok().and_then(|s| s.kept);
                match self.replacer() {
                    Ok(r) => r.running(kept.as_ref(), &tillup_selfupdate::build_version()),
                    Err(_) => tillup_selfupdate::build_version(),
                }
            })
            .clone()
    }

    /// At start-up (not in a self-check): a new executable on trial that
    /// got this far (its configuration and data folder are usable) is
    /// kept; one that started before without being kept, or whose swap was
    /// cut before its probe passed, goes back. `Some(exe)`: the kept
    /// executable is back at `exe` and the process must restart on it
    /// ([`tillup_selfupdate::restart`]). Only the tillup holding the data
    /// folder decides: while another holds it (it may be swapping), this
    /// one runs as it is and decides nothing.
    pub fn settle_self(&self) -> Result<Option<std::path::PathBuf>, Error> {
        let _lock = match self.exclusive() {
            Ok(lock) => lock,
            Err(Error::Busy(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let replacer = self.replacer()?;
        let settled = match replacer.at_start()? {
            OnStart::Run => None,
            OnStart::GoBack(_) => Some(replacer.exe().to_owned()),
            OnStart::RunOnTrial(t) => {
                let mut state = self.self_state()?;
                state.kept = Some(replacer.kept_as(t.to.clone())?);
                tillup_fs::write_json_atomic(&self.self_state_path(), &state)?;
                replacer.confirm()?;
                tracing::info!("tillup {} kept (it replaced {})", t.to, t.from);
                None
            }
        };
        if settled.is_none() {
            self.self_version();
        }
        Ok(settled)
    }

    /// Brings the agents and this listener to the newest release of
    /// tillup's channel (see the module's documentation). A release that
    /// failed before is tried again only when `again` (a person asked).
    pub async fn self_update(
        &self,
        now: Timestamp,
        again: bool,
    ) -> Result<SelfUpdateOutcome, Error> {
        let channel = self.config.self_channel.clone().ok_or_else(|| {
            Error::Other(
                "tillup does not update itself here: set self_channel in the configuration to the channel its releases are published on".into(),
            )
        })?;
        let _lock = self.exclusive()?;
        if self.unfinished()?.is_some() {
            return Err(Error::Other(
                "a POS upgrade is in progress: tillup updates itself once it is done".into(),
            ));
        }
        let mut state = self.self_state()?;
        let verified = self
            .fetch_log(&channel, now, state.seen.as_ref(), LogSource::Server)
            .await?;
        state.seen = Some(SeenLog {
            sequence: verified.log.sequence,
            digest: verified.digest,
        });
        tillup_fs::write_json_atomic(&self.self_state_path(), &state)?;
        let mut outcome = SelfUpdateOutcome {
            release: None,
            agents: BTreeMap::new(),
            listener: Step::Current {
                version: self.self_version().to_string(),
            },
            restart: false,
        };
        let Some(release) = newest_for(&verified, &platform()) else {
            outcome.listener = Step::Skipped {
                why: format!(
                    "tillup's channel `{channel}` has no release for {}",
                    platform()
                ),
            };
            return Ok(outcome);
        };
        outcome.release = Some(release.version.clone());
        if state.failed.as_ref() == Some(&release.version) && !again {
            outcome.listener = Step::Skipped {
                why: format!(
                    "tillup {} failed here before: publish a newer release, or run `tillup self-update` to try it again",
                    release.version
                ),
            };
            return Ok(outcome);
        }
        let manifest = self.fetch_self_release(&release).await?;
        let canary_took_it = self
            .update_agents(&verified, &release, &manifest, &mut outcome)
            .await?;
        let failed = outcome
            .agents
            .values()
            .any(|s| matches!(s, Step::Failed { .. }));
        outcome.listener = if failed || !canary_took_it {
            Step::Skipped {
                why: "the canary terminal's agent did not take this release, or an agent failed to: the listener stays as it is".into(),
            }
        } else {
            self.update_host(&release, &manifest)?
        };
        let failed = outcome
            .agents
            .values()
            .chain([&outcome.listener])
            .any(|s| matches!(s, Step::Failed { .. }));
        state.failed = failed.then(|| release.version.clone());
        tillup_fs::write_json_atomic(&self.self_state_path(), &state)?;
        outcome.restart = matches!(outcome.listener, Step::Updated { .. });
        Ok(outcome)
    }

    /// Fetches the release's manifest (checked against the signed digest)
    /// and the files of the programs this host updates.
    async fn fetch_self_release(&self, release: &Release) -> Result<Manifest, Error> {
        let store = self.blobs()?;
        self.server
            .fetch_one(
                &release.sha256,
                tillup_core::manifest::MAX_MANIFEST_BYTES as u64,
                &store,
            )
            .await?;
        let manifest = Manifest::parse(&store.read(&release.sha256)?).map_err(|e| {
            Error::Untrusted(format!("the manifest of tillup {}: {e}", release.version))
        })?;
        let wanted: BTreeMap<Sha256Hex, Size> = Program::ALL
            .into_iter()
            .filter_map(|p| entry(&manifest, p))
            .filter(|e| !store.has(&e.sha256))
            .map(|e| (e.sha256, Size::Exactly(e.size)))
            .collect();
        self.server
            .fetch(&wanted, &store, &std::sync::Arc::default())
            .await?;
        Ok(manifest)
    }

    /// The canary terminal's agent first; the others only once it runs
    /// the new release, healthy. Returns whether the canary did (true
    /// when there is nothing for agents).
    async fn update_agents(
        &self,
        verified: &VerifiedLog,
        release: &Release,
        manifest: &Manifest,
        outcome: &mut SelfUpdateOutcome,
    ) -> Result<bool, Error> {
        let Some(file) = entry(manifest, Program::Agent) else {
            return Ok(true);
        };
        let mut order: Vec<u32> = self.agents.keys().copied().collect();
        let Some(canary) = self.config.canary.or_else(|| order.first().copied()) else {
            return Ok(true);
        };
        order.sort_by_key(|n| (*n != canary, *n));
        let store = self.blobs()?;
        let mut canary_took_it = true;
        for n in order {
            let step = if canary_took_it {
                let agent = self.agent(n)?;
                self.update_agent(agent, verified, release, manifest, &file, &store)
                    .await
            } else {
                Step::Skipped {
                    why: format!("the canary terminal {canary} did not take this release"),
                }
            };
            tracing::info!("terminal {n}'s agent: {step:?}");
            if n == canary {
                canary_took_it = matches!(step, Step::Updated { .. } | Step::Current { .. });
            }
            outcome.agents.insert(n, step);
        }
        Ok(canary_took_it)
    }

    async fn update_agent(
        &self,
        agent: &AgentClient,
        verified: &VerifiedLog,
        release: &Release,
        manifest: &Manifest,
        file: &FileEntry,
        store: &tillup_fs::BlobStore,
    ) -> Step {
        let version = &release.version;
        let before = match agent.status().await {
            Ok(s) => s,
            Err(e) => return Step::Skipped { why: e.to_string() },
        };
        let running = Version::parse(&before.agent_version).ok();
        let on_trial = before.agent_on_trial && running.as_ref() == Some(version);
        if !on_trial && let Some(running) = running.filter(|r| !wanted(r, version)) {
            return Step::Current {
                version: running.to_string(),
            };
        }
        // A host cut short before may have left it on trial in this
        // release: then only the health check and the confirmation are left.
        let check = if on_trial {
            Some(None)
        } else {
            let req = SelfUpdateRequest {
                version: version.clone(),
                release: Some(verified.signed.clone()),
            };
            let answer = match agent
                .send(vec![manifest.digest(), file.sha256], store, &self.transfers)
                .await
            {
                Ok(_) => agent.self_update(&req).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(report) => report.restarting.then_some(None),
                Err(Error::Refused { status: 404, .. }) => {
                    return Step::Skipped {
                        why: format!(
                            "tillup-agent {} cannot update itself: install tillup-agent {version} on this terminal by hand (its package)",
                            before.agent_version
                        ),
                    };
                }
                Err(e @ (Error::Refused { .. } | Error::BadAnswer { .. })) => {
                    return Step::Failed { why: e.to_string() };
                }
                // Cut: its restart may have cut the answer. Its status says.
                Err(e) => Some(Some(e)),
            }
        };
        if let Some(cut) = check {
            tillup_fs::fault::crash_point("listener.self.agent_restarting");
            if let Err(why) = self.agent_back_healthy(agent, version, &before).await {
                let _ = agent.self_rollback(version).await;
                return Step::Failed {
                    why: cut.map_or(why.clone(), |e| format!("{e}; then {why}")),
                };
            }
        }
        match agent.self_confirm(version).await {
            Ok(_) => Step::Updated {
                from: before.agent_version,
                to: version.to_string(),
            },
            Err(e) => {
                let _ = agent.self_rollback(version).await;
                Step::Failed { why: e.to_string() }
            }
        }
    }

    /// Waits for a restarted agent to answer in `version`, with its main
    /// program as it was (`before`) and healthy if it ran.
    async fn agent_back_healthy(
        &self,
        agent: &AgentClient,
        version: &Version,
        before: &AgentStatus,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + AGENT_RESTART_TIMEOUT;
        let now = loop {
            tokio::time::sleep(AGENT_POLL).await;
            match agent.status().await {
                Ok(s) if s.agent_version == version.to_string() => break s,
                Ok(s)
                    if s.notices.last() != before.notices.last()
                        && s.notices
                            .last()
                            .is_some_and(|n| n.message.contains(WENT_BACK)) =>
                {
                    let said = s
                        .notices
                        .last()
                        .map(|n| n.message.clone())
                        .unwrap_or_default();
                    return Err(format!("it runs {} again: {said}", s.agent_version));
                }
                _ if tokio::time::Instant::now() < deadline => {}
                Ok(s) => {
                    return Err(format!(
                        "it did not come back in {version} within {AGENT_RESTART_TIMEOUT:?} (it runs {})",
                        s.agent_version
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "it did not come back within {AGENT_RESTART_TIMEOUT:?}: {e}"
                    ));
                }
            }
        };
        if let MainState::Running { pid } = before.main {
            if now.main != before.main {
                return Err(format!(
                    "its main program (pid {pid}) does not run as it did: {:?}",
                    now.main
                ));
            }
            if let Some(pos) = &now.version {
                let health = agent.health(pos).await.map_err(|e| e.to_string())?;
                if !health.healthy {
                    return Err(format!(
                        "its main program is not healthy: {}",
                        health.message
                    ));
                }
            }
        }
        Ok(())
    }

    /// Swaps the host's programs installed beside this process's
    /// executable (`tillup`, `tillup-tray`, `tillup-window`) for the
    /// release's, together, and probes them: `tillup` with its self-check,
    /// the others with `--version`.
    fn update_host(&self, release: &Release, manifest: &Manifest) -> Result<Step, Error> {
        let running = self.self_version();
        if !wanted(&running, &release.version) {
            return Ok(Step::Current {
                version: running.to_string(),
            });
        }
        let Some(config) = self.config.source.clone() else {
            return Ok(Step::Skipped {
                why: "this listener was not started from a configuration file".into(),
            });
        };
        let replacer = self.replacer()?;
        let host: Vec<String> = Program::HOST.map(Program::file_name).into();
        let own = replacer
            .exe()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        if !own.as_ref().is_some_and(|n| host.contains(n)) {
            return Ok(Step::Skipped {
                why: format!(
                    "this process is {}, not one of {}: run `tillup self-update`, `tillup daemon` or `tillup-tray`",
                    replacer.exe().display(),
                    host.join(", ")
                ),
            });
        }
        let folder = replacer.exe().parent().unwrap_or(std::path::Path::new("."));
        let parts: Vec<(Program, std::path::PathBuf, FileEntry)> = Program::HOST
            .into_iter()
            .map(|p| (p, folder.join(p.file_name())))
            .filter(|(_, exe)| exe.is_file())
            .filter_map(|(p, exe)| entry(manifest, p).map(|e| (p, exe, e)))
            .collect();
        // The program this process runs must be in the release: it is the
        // one restarted on trial.
        if !parts.iter().any(|(_, exe, _)| exe == replacer.exe()) {
            return Ok(Step::Skipped {
                why: format!(
                    "tillup {} has no `{}` for {}",
                    release.version,
                    own.unwrap_or_default(),
                    platform()
                ),
            });
        }
        let store = self.blobs()?;
        let trial = Trial {
            program: Program::Listener,
            from: running.clone(),
            to: release.version.clone(),
            phase: TrialPhase::Swapped,
        };
        let installed = parts
            .iter()
            .try_for_each(|(_, exe, file)| replacer.stage(exe, &store.path(&file.sha256), file))
            .and_then(|()| {
                let parts: Vec<Part> = parts
                    .iter()
                    .map(|(program, exe, _)| Part {
                        exe: exe.clone(),
                        probe: match program {
                            Program::Listener => self_check_probe([
                                OsString::from("--config"),
                                config.clone().into_os_string(),
                            ]),
                            Program::Tray | Program::Window | Program::Agent => {
                                vec![OsString::from("--version")]
                            }
                        },
                    })
                    .collect();
                replacer.install(&trial, &parts)
            });
        Ok(match installed {
            Ok(()) => Step::Updated {
                from: running.to_string(),
                to: release.version.to_string(),
            },
            Err(e) => Step::Failed { why: e.to_string() },
        })
    }
}

/// `tillup self-check`: the configuration loads, the data folder and the
/// local log are usable. A self-update keeps a new executable only if
/// this passes.
pub fn self_check(config: Config) -> Result<serde_json::Value, Error> {
    let listener = Listener::new(config)?;
    crate::local_log::LocalLog::load(&listener.data_dir)?;
    Ok(serde_json::json!({
        "program": "tillup",
        "build": env!("CARGO_PKG_VERSION"),
        "kept_release": listener.self_state()?.kept.map(|k| k.version),
    }))
}

/// The newest release in `log` for `platform`.
fn newest_for(log: &VerifiedLog, platform: &str) -> Option<Release> {
    log.log
        .releases
        .iter()
        .filter(|r| r.supports(platform))
        .max_by(|a, b| a.version.cmp(&b.version))
        .cloned()
}

fn entry(manifest: &Manifest, program: Program) -> Option<FileEntry> {
    RelPath::new(&program.file_name())
        .ok()
        .and_then(|p| manifest.get(&p).cloned())
}
