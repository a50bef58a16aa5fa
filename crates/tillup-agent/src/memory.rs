//! What the agent must remember across its own restarts (`STATE/agent.json`),
//! written atomically before the agent acts on it.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::api::Notice;

/// How many notices the status keeps.
const NOTICES: usize = 20;

/// The agent's persisted state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// When the host stopped the main program; cleared once it runs again.
    /// The watchdog starts it again if the host goes silent meanwhile, and
    /// an agent restarting in this state does not autostart it under the
    /// host's feet.
    #[serde(default)]
    pub stopped_by_host: Option<Timestamp>,
    /// When the watchdog last started the main program, until the host
    /// stops it again: a host resuming an upgrade learns why its program
    /// runs and that its collected folder is out of date.
    #[serde(default)]
    pub watchdog_started: Option<Timestamp>,
    /// A release swapped in and not yet found healthy.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// What the agent did on its own, newest last.
    #[serde(default)]
    pub notices: Vec<Notice>,
    /// The newest signed log a commit was checked against: an older one
    /// is refused from then on.
    #[serde(default)]
    pub seen_log: Option<tillup_core::log::SeenLog>,
    /// The root and key list accepted with it; none yet: the configured
    /// `trust_key` alone.
    #[serde(default)]
    pub trust: Option<tillup_core::keys::Trust>,
    /// The `trust_key` that trust started from: a new one in the config
    /// starts afresh.
    #[serde(default)]
    pub trust_pinned: Option<String>,
    /// The release of tillup-agent the host confirmed healthy on this
    /// executable (none: the build's own version).
    #[serde(default)]
    pub self_release: Option<tillup_selfupdate::Kept>,
    /// The newest signed log of tillup's channel a self-update was checked
    /// against: an older one is refused from then on.
    #[serde(default)]
    pub self_seen_log: Option<tillup_core::log::SeenLog>,
}

/// A release on trial: if it is not healthy, `previous` goes back in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The release swapped in.
    pub version: Version,
    /// The release it replaced.
    pub previous: Version,
}

impl Memory {
    /// `STATE/agent.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("agent.json")
    }

    /// The remembered state; a missing file is a fresh agent. An unreadable
    /// one (only a hand edit can make one) is set aside, with a warning.
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                let aside = path.with_extension("json.unreadable");
                tracing::error!(
                    "{} is not valid ({e}); moved to {} and starting afresh",
                    path.display(),
                    aside.display()
                );
                let _ = std::fs::rename(path, &aside);
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Writes it atomically (temp + fsync + rename + fsync of the folder).
    pub fn save(&self, path: &Path) -> Result<(), tillup_fs::Error> {
        tillup_fs::write_json_atomic(path, self)
    }

    /// Records something the agent did on its own, and logs it.
    pub fn notice(&mut self, message: String) {
        tracing::warn!("{message}");
        self.notices.push(Notice {
            at: Timestamp::now(),
            message,
        });
        let over = self.notices.len().saturating_sub(NOTICES);
        self.notices.drain(..over);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_the_newest_notices() {
        let dir = tempfile::tempdir().unwrap();
        let path = Memory::path(dir.path());
        assert_eq!(Memory::load(&path), Memory::default());
        let mut m = Memory {
            stopped_by_host: Some(Timestamp::UNIX_EPOCH),
            watchdog_started: None,
            trial: Some(Trial {
                version: Version::new(2, 0, 0),
                previous: Version::new(1, 0, 0),
            }),
            notices: vec![],
            seen_log: None,
            trust: None,
            trust_pinned: None,
            self_release: None,
            self_seen_log: None,
        };
        for i in 0..NOTICES + 5 {
            m.notice(format!("n{i}"));
        }
        m.save(&path).unwrap();
        let back = Memory::load(&path);
        assert_eq!(back, m);
        assert_eq!(back.notices.len(), NOTICES);
        assert_eq!(back.notices[0].message, "n5");
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(Memory::load(&path), Memory::default());
        assert!(path.with_extension("json.unreadable").exists());
    }
}
