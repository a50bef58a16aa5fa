//! A simulated POS main program, real enough to exercise every path of the
//! agent: it reads its version from the folder, writes a terminal-local file,
//! keeps a heartbeat, stops cleanly on SIGTERM, and can be built to fail its
//! health check: a `FAIL_HEALTH` file in the folder makes it exit at once,
//! an `UNHEALTHY` file makes it keep running but report itself unhealthy.
//! A terminal-local `config/local/fail-on-VERSION` does what `FAIL_HEALTH`
//! does, on that version of that terminal only (a release that breaks on
//! some terminals' hardware). A terminal-local `config/local/journal-on-close`
//! makes it append a line to its sales log as it stops, as a POS flushing
//! its journal does: the folder changes while the program stops.
//!
//! **Architecture invariant:** nothing here knows about the agent; the agent
//! only sees the heartbeat through `pos-sim probe` and the exit code.

#![warn(missing_docs)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// How often the heartbeat is written.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// The exit code of a release built to fail (`FAIL_HEALTH`).
pub const FAIL_EXIT_CODE: u8 = 3;

/// The file that makes a running release report itself unhealthy with its text.
pub const UNHEALTHY: &str = "UNHEALTHY";

/// The terminal-local file that makes the program write its sales log as
/// it stops (see the crate's documentation).
pub const JOURNAL_ON_CLOSE: &str = "config/local/journal-on-close";

/// `STATE/heartbeat.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The program's process id.
    pub pid: u32,
    /// The version it runs (the folder's `VERSION`).
    pub version: String,
    /// False when it failed or stopped; `message` says why.
    pub healthy: bool,
    /// Whether a sale is in progress (`STATE/busy` exists).
    #[serde(default)]
    pub busy: bool,
    /// When the program started.
    pub started: Timestamp,
    /// When this heartbeat was written.
    pub updated: Timestamp,
    /// The program's own words when it is not healthy.
    pub message: String,
}

fn heartbeat_path(state: &Path) -> std::path::PathBuf {
    state.join("heartbeat.json")
}

/// Runs the program until SIGTERM or SIGINT. Returns the process exit code.
pub fn run(folder: &Path, state: &Path) -> anyhow::Result<ExitCode> {
    let version_path = folder.join("VERSION");
    let version = fs::read_to_string(&version_path)
        .with_context(|| format!("cannot read the version from {}", version_path.display()))?
        .trim()
        .to_owned();
    fs::create_dir_all(state)
        .with_context(|| format!("cannot create the state folder {}", state.display()))?;
    let started = Timestamp::now();
    let beat = |healthy: bool, message: &str| -> anyhow::Result<()> {
        let hb = Heartbeat {
            pid: std::process::id(),
            version: version.clone(),
            healthy,
            busy: state.join("busy").exists(),
            started,
            updated: Timestamp::now(),
            message: message.to_owned(),
        };
        tillup_fs::write_json_atomic(&heartbeat_path(state), &hb)
            .context("cannot write the heartbeat")
    };

    let local_fail = folder.join(format!("config/local/fail-on-{version}"));
    let fail = if local_fail.exists() {
        local_fail
    } else {
        folder.join("FAIL_HEALTH")
    };
    if fail.exists() {
        let text = fs::read_to_string(&fail)
            .unwrap_or_default()
            .trim()
            .to_owned();
        beat(false, &text)?;
        eprintln!("fatal: {text}");
        std::thread::sleep(Duration::from_millis(300));
        return Ok(ExitCode::from(FAIL_EXIT_CODE));
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }

    let data = folder.join("data");
    fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let log = data.join("sales.log");
    journal(&log, "opened", &version)?;
    println!("pos-sim {version} running");

    // A release that starts and keeps running, yet is broken: read at every
    // beat, so the file's words are what the heartbeat says.
    let unhealthy = folder.join(UNHEALTHY);
    while !stop.load(Ordering::Relaxed) {
        match fs::read_to_string(&unhealthy) {
            Ok(text) => beat(false, text.trim())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => beat(true, "")?,
            Err(e) => beat(false, &format!("cannot read {}: {e}", unhealthy.display()))?,
        }
        let mut slept = Duration::ZERO;
        while slept < HEARTBEAT_INTERVAL && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            slept += Duration::from_millis(20);
        }
    }
    if folder.join(JOURNAL_ON_CLOSE).exists() {
        journal(&log, "closed", &version)?;
    }
    beat(false, "stopped")?;
    println!("pos-sim {version} stopped");
    Ok(ExitCode::SUCCESS)
}

/// Appends `what` (with the time, the version and the process) to the sales log.
fn journal(log: &Path, what: &str, version: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    writeln!(
        f,
        "{what} {} version {version} pid {}",
        Timestamp::now(),
        std::process::id()
    )
    .with_context(|| format!("cannot write {}", log.display()))
}

/// Checks the heartbeat: prints the version and returns success when it is
/// healthy, fresh and its process is alive; else prints why and fails.
pub fn probe(state: &Path, max_age_ms: u64) -> ExitCode {
    match check(state, max_age_ms, Timestamp::now()) {
        Ok(version) => {
            println!("{version}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("{reason}");
            ExitCode::FAILURE
        }
    }
}

/// The version if the heartbeat in `state` says the program is healthy at `now`, else why not.
pub fn check(state: &Path, max_age_ms: u64, now: Timestamp) -> Result<String, String> {
    let path = heartbeat_path(state);
    let bytes = fs::read(&path).map_err(|e| format!("no heartbeat at {}: {e}", path.display()))?;
    let hb: Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|e| format!("unreadable heartbeat at {}: {e}", path.display()))?;
    if !hb.healthy {
        return Err(format!("unhealthy: {}", hb.message));
    }
    let age_ms = now.duration_since(hb.updated).as_millis();
    if age_ms > i128::from(max_age_ms) {
        return Err(format!(
            "stale heartbeat: last updated {age_ms} ms ago (pid {})",
            hb.pid
        ));
    }
    if !pid_alive(hb.pid) {
        return Err(format!(
            "the program (pid {}) is gone without a final heartbeat",
            hb.pid
        ));
    }
    Ok(hb.version)
}

fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    // EPERM means it exists but belongs to someone else.
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(state: &Path, hb: &Heartbeat) {
        tillup_fs::write_json_atomic(&heartbeat_path(state), hb).unwrap();
    }

    #[test]
    fn check_reports_each_reason() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        assert!(
            check(dir.path(), 3000, now)
                .unwrap_err()
                .contains("no heartbeat")
        );
        let mut hb = Heartbeat {
            pid: std::process::id(),
            version: "1.2.3".into(),
            healthy: true,
            busy: false,
            started: now,
            updated: now,
            message: String::new(),
        };
        write(dir.path(), &hb);
        assert_eq!(check(dir.path(), 3000, now).unwrap(), "1.2.3");
        let later = now + jiff::SignedDuration::from_secs(10);
        assert!(
            check(dir.path(), 3000, later)
                .unwrap_err()
                .contains("stale")
        );
        hb.healthy = false;
        hb.message = "disk full".into();
        write(dir.path(), &hb);
        assert_eq!(
            check(dir.path(), 3000, now).unwrap_err(),
            "unhealthy: disk full"
        );
        hb.healthy = true;
        hb.pid = i32::MAX as u32;
        write(dir.path(), &hb);
        assert!(check(dir.path(), 3000, now).unwrap_err().contains("gone"));
    }
}
