//! What the agent agrees to install, decided on the terminal (see
//! [`tillup_core::install`]): holding the agent's token lets the host move
//! files and stop and start the program, never install anything the
//! chain's key did not sign.
//!
//! A stage request carries the signed log; the agent checks it
//! ([`tillup_core::install::check_release`]) before it touches the staging
//! folder, and keeps it beside that folder (`STATE/staged-release.json`).
//! A commit checks it again and checks the staging folder against the
//! release's manifest and the terminal's folder as it is at that moment
//! ([`tillup_core::install::check_folder`]); only then does the swap start.

use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use tillup_core::install::{Accepted, ReleaseFiles, SignedLog, check_folder, check_release};
use tillup_core::keys::Trust;
use tillup_core::log::Release;
use tillup_core::log::SeenLog;

use crate::memory::Memory;
use crate::{Agent, AgentError};

/// The signed log the staging folder was staged with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StagedRelease {
    pub version: Version,
    pub release: SignedLog,
}

impl StagedRelease {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("staged-release.json")
    }
}

impl Agent {
    /// Checks that `signed` names `version` for this terminal and is not
    /// older than what it accepted, and that the release's manifest (named
    /// there) was received.
    pub(crate) fn accept_release(
        &self,
        version: &Version,
        signed: &SignedLog,
    ) -> Result<Accepted, AgentError> {
        let memory = self.memory();
        let trust = self.trust(&memory);
        let seen = memory.seen_log;
        let running = self.layout.version_of(&self.layout.folder);
        let accepted = check_release(
            &trust,
            signed,
            &self.config.channel,
            seen.as_ref(),
            jiff::Timestamp::now(),
            version,
            &self.config.model,
            running.as_ref(),
        )?;
        if !self.store.has(&accepted.release.sha256) {
            return Err(AgentError::BadRequest(format!(
                "the manifest of release {version} ({}) was not sent: send it with the files (PUT {})",
                accepted.release.sha256,
                tillup_core::api::agent::PACK
            )));
        }
        Ok(accepted)
    }

    /// What signs logs, as far as this agent followed the key lists from
    /// its configured `trust_key` (that key alone when it changed).
    pub(crate) fn trust(&self, memory: &Memory) -> Trust {
        let pinned = self.config.trust_key.trim();
        memory
            .trust
            .clone()
            .filter(|_| memory.trust_pinned.as_deref() == Some(pinned))
            .unwrap_or_else(|| Trust::pinned(pinned))
    }

    /// Remembers the signed log the staging folder now holds a release of.
    pub(crate) fn keep_staged_release(
        &self,
        version: &Version,
        signed: &SignedLog,
    ) -> Result<(), AgentError> {
        tillup_fs::write_json_atomic(
            &StagedRelease::path(&self.state_dir),
            &StagedRelease {
                version: version.clone(),
                release: signed.clone(),
            },
        )
        .map_err(AgentError::from)
    }

    /// Checks, right before a commit of `version`, that the staging folder
    /// is exactly the signed release with this terminal's own files as they
    /// are now. Returns the log and keys to remember once it is accepted.
    pub(crate) async fn check_commit(
        &self,
        version: &Version,
    ) -> Result<(SeenLog, Trust), AgentError> {
        let staged_release: StagedRelease =
            match std::fs::read(StagedRelease::path(&self.state_dir)) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(AgentError::internal)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(AgentError::Conflict(format!(
                        "no signed release is staged for {version}: stage it first (POST {})",
                        tillup_core::api::agent::STAGE
                    )));
                }
                Err(e) => return Err(AgentError::internal(e)),
            };
        if staged_release.version != *version {
            return Err(AgentError::Conflict(format!(
                "the staging folder holds release {}, not {version}: stage {version} first",
                staged_release.version
            )));
        }
        let accepted = self.accept_release(version, &staged_release.release)?;
        let files = self.release_files(&accepted.release).await?;
        // The folder as it is now (the program is stopped): its own files
        // are the ones to keep.
        let current = self.folder_now().await?;
        let layout = self.layout.clone();
        let release = accepted.release.clone();
        tokio::task::spawn_blocking(move || {
            let staged = layout.staged().ok_or_else(|| {
                AgentError::Conflict(
                    "the staging folder is incomplete: stage the release again".into(),
                )
            })?;
            check_folder(&release, &files, &current, &staged)?;
            Ok::<_, AgentError>(())
        })
        .await
        .map_err(AgentError::internal)??;
        Ok((accepted.seen, accepted.trust))
    }

    /// The manifest of `release`, received, checked against its signed
    /// digest and parsed: once per release, at its first stage (before
    /// the stop), not again at the commit.
    pub(crate) async fn release_files(
        &self,
        release: &Release,
    ) -> Result<Arc<ReleaseFiles>, AgentError> {
        let kept = self.release_files.lock().expect("not poisoned").clone();
        if let Some(f) = kept.filter(|f| f.sha256() == release.sha256) {
            return Ok(f);
        }
        let (store, release) = (self.store.clone(), release.clone());
        let files = tokio::task::spawn_blocking(move || {
            let bytes = store.read(&release.sha256)?;
            Ok::<_, AgentError>(Arc::new(ReleaseFiles::check(&release, &bytes)?))
        })
        .await
        .map_err(AgentError::internal)??;
        *self.release_files.lock().expect("not poisoned") = Some(Arc::clone(&files));
        Ok(files)
    }
}
