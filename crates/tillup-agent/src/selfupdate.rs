//! The agent replacing its own executable (`POST /v1/self-update`), on
//! the host's word and the chain's signature (see
//! [`tillup_core::selfupdate`] and [`tillup_selfupdate`]).
//!
//! The host sends the release of tillup (its manifest and the agent's
//! file, as a pack) and then the signed log of tillup's channel. The agent
//! checks that log as it checks a POS release ([`check_release`], with its
//! own memory of the newest log seen), takes the file the manifest names,
//! swaps it in with the old executable kept, probes it, and restarts on
//! it, on trial. The host confirms it once the agent answers in the new
//! release with its main program untouched, or asks it to go back.
//!
//! The main program is never stopped for any of this: the restarted agent
//! adopts it.

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tillup_selfupdate::{Part, SelfUpdateError, self_check_probe};
use tokio::sync::OwnedMutexGuard;

use semver::Version;
use tillup_core::api::{SelfUpdateReport, SelfUpdateRequest};
use tillup_core::install::check_release;
use tillup_core::selfupdate::{Program, Trial, TrialPhase, platform};
use tillup_core::{Manifest, RelPath};

use crate::{Agent, AgentError};

/// How long after answering the agent restarts, so the answer gets out.
const RESTART_AFTER: Duration = Duration::from_millis(200);

impl Agent {
    /// The release of tillup-agent this process runs.
    pub fn self_version(&self) -> Version {
        self.self_version.clone()
    }

    /// Whether this process runs a release of tillup-agent not yet confirmed.
    pub(crate) fn self_on_trial(&self) -> bool {
        self.self_on_trial.load(Ordering::Relaxed)
    }

    /// `POST /v1/self-update`.
    pub async fn self_update(
        &self,
        req: SelfUpdateRequest,
    ) -> Result<SelfUpdateReport, AgentError> {
        // Held until the restart: no folder operation starts meanwhile.
        let op = Arc::clone(&self.folder_ops).lock_owned().await;
        let running = self.self_version();
        if req.version == running {
            return Ok(SelfUpdateReport {
                version: running,
                restarting: false,
                message: "this release of tillup-agent runs already".into(),
            });
        }
        let memory = self.memory();
        if memory.stopped_by_host.is_some() || memory.trial.is_some() {
            return Err(AgentError::Conflict(
                "the host stopped this terminal's program, or a new POS release is on trial here: update tillup-agent once that is done".into(),
            ));
        }
        if self
            .replacer
            .trial()
            .map_err(AgentError::internal)?
            .is_some()
        {
            return Err(AgentError::Conflict(
                "a release of tillup-agent is on trial already: confirm it or roll it back first"
                    .into(),
            ));
        }
        let signed = req.release.as_ref().ok_or_else(|| {
            AgentError::BadRequest(
                "a self-update needs the signed log of tillup's channel (`release`)".into(),
            )
        })?;
        let trust = self.trust(&memory);
        let accepted = check_release(
            &trust,
            signed,
            &self.config.self_channel,
            memory.self_seen_log.as_ref(),
            jiff::Timestamp::now(),
            &req.version,
            &platform(),
            Some(&running),
        )?;
        let manifest_bytes = self.store.read(&accepted.release.sha256).map_err(|_| {
            AgentError::BadRequest(format!(
                "the manifest of tillup {} ({}) was not sent: send it with the file (PUT {})",
                req.version,
                accepted.release.sha256,
                tillup_core::api::agent::PACK
            ))
        })?;
        let manifest = Manifest::parse(&manifest_bytes)
            .map_err(|e| AgentError::BadRequest(format!("the release's manifest: {e}")))?;
        let name = Program::Agent.file_name();
        let path = RelPath::new(&name).map_err(AgentError::internal)?;
        let entry = manifest.get(&path).cloned().ok_or_else(|| {
            AgentError::Unprocessable(format!(
                "tillup {} has no `{name}` for this terminal: nothing was changed",
                req.version
            ))
        })?;
        if !self.store.has(&entry.sha256) {
            return Err(AgentError::BadRequest(format!(
                "`{name}` of tillup {} ({}) was not sent: send it first (PUT {})",
                req.version,
                entry.sha256,
                tillup_core::api::agent::PACK
            )));
        }
        let config = self.config.source.clone().ok_or_else(|| {
            AgentError::Conflict(
                "this agent was not started from a configuration file, so a new executable cannot be checked against it".into(),
            )
        })?;
        let trial = Trial {
            program: Program::Agent,
            from: running.clone(),
            to: req.version.clone(),
            phase: TrialPhase::Swapped,
        };
        // Remembered first: from now on an older log of tillup's channel
        // is refused, whatever happens next.
        self.remember(|m| m.self_seen_log = Some(accepted.seen.clone()))?;
        let (replacer, blob) = (self.replacer.clone(), self.store.path(&entry.sha256));
        let probe_trial = trial.clone();
        tokio::task::spawn_blocking(move || {
            replacer.stage(replacer.exe(), &blob, &entry)?;
            let part = Part {
                exe: replacer.exe().to_owned(),
                probe: self_check_probe([OsString::from("--config"), config.into_os_string()]),
            };
            replacer.install(&probe_trial, &[part])
        })
        .await
        .map_err(AgentError::internal)?
        .map_err(|e| match e {
            e @ (SelfUpdateError::Probe { .. } | SelfUpdateError::Unsupported) => {
                AgentError::Unprocessable(e.to_string())
            }
            e @ SelfUpdateError::Fs(_) => AgentError::internal(e),
        })?;
        let noted = self.remember(|m| {
            m.notice(format!(
                "tillup-agent {} installed over {running}; restarting on it, on trial",
                req.version
            ));
        });
        if let Err(e) = noted {
            // Not restarting: the probed executable must not stay in place.
            self.replacer.go_back().map_err(AgentError::internal)?;
            return Err(e);
        }
        self.restart_soon(op);
        Ok(SelfUpdateReport {
            version: req.version,
            restarting: true,
            message: "restarting on the new release, on trial".into(),
        })
    }

    /// `POST /v1/self-update/confirm`: keeps the release on trial. Safe to repeat.
    pub async fn self_confirm(
        &self,
        req: SelfUpdateRequest,
    ) -> Result<SelfUpdateReport, AgentError> {
        let _op = self.folder_ops.lock().await;
        let running = self.self_version();
        if running != req.version {
            return Err(AgentError::Conflict(format!(
                "this agent runs tillup-agent {running}, not {}: nothing to confirm",
                req.version
            )));
        }
        if self.self_on_trial() {
            let kept = self
                .replacer
                .kept_as(running.clone())
                .map_err(AgentError::internal)?;
            self.remember(|m| m.self_release = Some(kept))?;
            self.replacer.confirm().map_err(AgentError::internal)?;
            self.self_on_trial.store(false, Ordering::Relaxed);
        }
        Ok(SelfUpdateReport {
            version: running,
            restarting: false,
            message: "kept".into(),
        })
    }

    /// `POST /v1/self-update/rollback`: puts the kept executable back and
    /// restarts on it. Safe to repeat.
    pub async fn self_rollback(
        &self,
        req: SelfUpdateRequest,
    ) -> Result<SelfUpdateReport, AgentError> {
        let op = Arc::clone(&self.folder_ops).lock_owned().await;
        let running = self.self_version();
        let trial = self.replacer.trial().map_err(AgentError::internal)?;
        match trial {
            Some(t) if t.to == req.version && running == req.version => {
                self.replacer.go_back().map_err(AgentError::internal)?;
                self.remember(|m| {
                    m.notice(format!(
                        "tillup-agent {} rolled back to {} at the host's request",
                        t.to, t.from
                    ));
                })?;
                self.restart_soon(op);
                Ok(SelfUpdateReport {
                    version: t.from,
                    restarting: true,
                    message: "restarting on the previous release".into(),
                })
            }
            _ if running != req.version => Ok(SelfUpdateReport {
                version: running,
                restarting: false,
                message: format!("tillup-agent {} does not run here", req.version),
            }),
            _ => Err(AgentError::Conflict(format!(
                "tillup-agent {running} is confirmed already: install an older release by hand if you must"
            ))),
        }
    }

    /// The watchdog found the host silent for `silent`: a release of
    /// tillup-agent still on trial was never confirmed, so the previous
    /// one goes back in and the agent restarts on it.
    pub(crate) fn self_trial_unconfirmed(
        &self,
        silent: Duration,
        op: OwnedMutexGuard<()>,
    ) -> Result<(), AgentError> {
        if !self.self_on_trial() {
            return Ok(());
        }
        let Some(trial) = self.replacer.trial().map_err(AgentError::internal)? else {
            return Ok(());
        };
        self.replacer.go_back().map_err(AgentError::internal)?;
        self.remember(|m| {
            m.notice(format!(
                "the host was silent for {} s while tillup-agent {} was on trial: {} {}",
                silent.as_secs(),
                trial.to,
                tillup_core::selfupdate::WENT_BACK,
                trial.from
            ))
        })?;
        self.restart_soon(op);
        Ok(())
    }

    /// Restarts the agent in place on its executable, once the answer is
    /// out, holding `op` (the folder operations' lock) until then.
    fn restart_soon(&self, op: OwnedMutexGuard<()>) {
        let exe = self.replacer.exe().to_owned();
        tokio::spawn(async move {
            let _op = op;
            tokio::time::sleep(RESTART_AFTER).await;
            let e = tillup_selfupdate::restart(&exe);
            tracing::error!("could not restart on {}: {e}", exe.display());
            std::process::exit(1);
        });
    }
}
