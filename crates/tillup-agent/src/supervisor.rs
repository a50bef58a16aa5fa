//! Process control of the main program: start, stop (waiting while busy,
//! SIGTERM, then SIGKILL), state, and health.
//!
//! The child is spawned with `kill_on_drop(false)` in its own process group,
//! so the agent can restart without taking the till down; a task owns the
//! child and reaps it. Its pid is written to `STATE/main.pid`. Signals go
//! to the whole process group, so the program's children stop with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use semver::Version;
use tillup_core::api::{HealthReport, MainState, StartReport, StopReport};
use tokio::sync::watch;

use crate::config::MainConfig;

/// How often busy and health are polled.
pub const POLL: Duration = Duration::from_millis(100);

/// A failure to control the main program.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The program could not be spawned.
    #[error("cannot start the main program `{program}`: {source}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Its log or pid file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A signal could not be delivered.
    #[error("cannot signal the main program (pid {pid}): {source}")]
    Signal {
        /// The main program.
        pid: u32,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The main program did not exit even after SIGKILL.
    #[error(
        "the main program (pid {pid}) is still running {waited:?} after SIGKILL; it is not stopped: check the terminal (a process stuck in the kernel cannot be killed)"
    )]
    StillRunning {
        /// The main program.
        pid: u32,
        /// How long it was waited for after SIGKILL.
        waited: Duration,
    },
}

/// `None` while running; `Some(code)` once it exited (`code` is `None` when killed by a signal).
type Exit = Option<Option<i32>>;

struct Proc {
    pid: u32,
    exit: watch::Receiver<Exit>,
}

/// Runs and watches the main program.
pub struct Supervisor {
    cfg: MainConfig,
    state_dir: PathBuf,
    current: Mutex<Option<Proc>>,
    /// How many times this supervisor started the main program: while it
    /// stays the same and the program is stopped, nothing but the agent
    /// has written to the folder since.
    starts: std::sync::atomic::AtomicU64,
    /// Serialises start and stop.
    ops: tokio::sync::Mutex<()>,
}

impl Supervisor {
    /// A supervisor writing `main.log` and `main.pid` into `state_dir`.
    /// A main program left running by an earlier agent (its pid in
    /// `main.pid`, still alive and running the configured program) is adopted.
    pub fn new(cfg: MainConfig, state_dir: &Path) -> Self {
        let s = Self {
            cfg,
            state_dir: state_dir.to_owned(),
            current: Mutex::new(None),
            starts: 0.into(),
            ops: tokio::sync::Mutex::new(()),
        };
        let left = std::fs::read_to_string(s.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pid) = left.filter(|pid| alive(*pid) && runs(*pid, &s.cfg.command[0])) {
            tracing::info!(
                pid,
                "adopting the main program left running by an earlier agent"
            );
            let (tx, rx) = watch::channel(None);
            tokio::spawn(async move {
                while !ended(pid) {
                    tokio::time::sleep(POLL).await;
                }
                let _ = tx.send(Some(None));
            });
            *s.current.lock().expect("not poisoned") = Some(Proc { pid, exit: rx });
        }
        s
    }

    fn pid_file(&self) -> PathBuf {
        self.state_dir.join("main.pid")
    }

    /// `STATE/main.log`: the main program's stdout and stderr.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("main.log")
    }

    /// Running, stopped (by the agent, or never started), or exited on its own.
    pub fn state(&self) -> MainState {
        match &*self.current.lock().expect("not poisoned") {
            None => MainState::Stopped,
            Some(p) => match *p.exit.borrow() {
                None => MainState::Running { pid: p.pid },
                Some(code) => MainState::Exited { code },
            },
        }
    }

    /// Whether the main program is running now.
    pub fn is_running(&self) -> bool {
        matches!(self.state(), MainState::Running { .. })
    }

    /// How many times the main program was started by this supervisor.
    pub fn starts(&self) -> u64 {
        self.starts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the main program is stopped and was not started since
    /// [`Supervisor::starts`] read `starts`.
    pub fn stopped_since(&self, starts: u64) -> bool {
        !self.is_running() && self.starts() == starts
    }

    /// Whether a sale is in progress, by the configured busy check.
    pub async fn is_busy(&self) -> bool {
        if let Some(f) = &self.cfg.busy_file {
            return f.exists();
        }
        let Some(cmd) = &self.cfg.busy_command else {
            return false;
        };
        let mut c = tokio::process::Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(10), c.status()).await {
            Ok(Ok(s)) => s.success(),
            Ok(Err(e)) => {
                tracing::warn!("busy_command failed to run, taking the terminal as not busy: {e}");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "busy_command took longer than 10 s, taking the terminal as not busy"
                );
                false
            }
        }
    }

    /// Starts the main program unless it runs already.
    pub async fn start(&self) -> Result<StartReport, SupervisorError> {
        let _op = self.ops.lock().await;
        if let MainState::Running { pid } = self.state() {
            return Ok(StartReport {
                started_at: Timestamp::now(),
                pid,
                was_running: true,
            });
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|source| SupervisorError::Io {
            path: self.state_dir.clone(),
            source,
        })?;
        let log_path = self.log_file();
        let io_err = |source| SupervisorError::Io {
            path: log_path.clone(),
            source,
        };
        let mut log = std::fs::OpenOptions::new();
        log.create(true).append(true);
        // What the program prints may be its sales: for this user only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut log, 0o600);
        let log = log.open(&log_path).map_err(io_err)?;
        let log2 = log.try_clone().map_err(io_err)?;
        let program = self.cfg.command[0].clone();
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&self.cfg.command[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        #[cfg(unix)]
        cmd.process_group(0);
        // Counted before it can write anything.
        self.starts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut child = cmd
            .spawn()
            .map_err(|source| SupervisorError::Spawn { program, source })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            tracing::info!(pid, ?code, "the main program exited");
            let _ = tx.send(Some(code));
        });
        *self.current.lock().expect("not poisoned") = Some(Proc { pid, exit: rx });
        if let Err(e) = tillup_fs::write_atomic(&self.pid_file(), format!("{pid}\n").as_bytes()) {
            tracing::warn!("cannot record the main program's pid: {e}");
        }
        tracing::info!(pid, "started the main program");
        Ok(StartReport {
            started_at: Timestamp::now(),
            pid,
            was_running: false,
        })
    }

    /// Stops the main program: waits while busy (up to `busy_timeout`, or
    /// the configured one), then SIGTERM to its process group, then SIGKILL
    /// to the group after `stop_timeout_secs`. `forced` is true when it was
    /// stopped while still busy or something had to be killed;
    /// `waited_busy_ms` is 0 when it was not busy. Fails, leaving it
    /// counted as running, when it is still alive `stop_timeout_secs` after
    /// SIGKILL.
    pub async fn stop(
        &self,
        busy_timeout: Option<Duration>,
    ) -> Result<StopReport, SupervisorError> {
        let _op = self.ops.lock().await;
        let proc = self
            .current
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|p| (p.pid, p.exit.clone()));
        let Some((pid, mut exit)) = proc.filter(|(_, e)| e.borrow().is_none()) else {
            self.forget();
            return Ok(StopReport {
                stopped_at: Timestamp::now(),
                waited_busy_ms: 0,
                forced: false,
                was_running: false,
            });
        };
        let busy_timeout = busy_timeout.unwrap_or(Duration::from_secs(self.cfg.busy_timeout_secs));
        let began = Instant::now();
        let (mut still_busy, mut waited) = (false, false);
        while exit.borrow().is_none() && self.is_busy().await {
            if !waited {
                tracing::info!(
                    pid,
                    "a sale is in progress: waiting up to {busy_timeout:?} before stopping"
                );
            }
            waited = true;
            if began.elapsed() >= busy_timeout {
                still_busy = true;
                tracing::warn!(pid, "still busy after {busy_timeout:?}: stopping anyway");
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let waited_busy_ms = if waited {
            began.elapsed().as_millis() as u64
        } else {
            0
        };
        // The program runs in its own process group (pgid = pid): every
        // signal goes to the whole group, so its children stop with it.
        let term = Duration::from_secs(self.cfg.stop_timeout_secs);
        let deadline = Instant::now() + term;
        let mut killed = false;
        if exit.borrow().is_none() {
            signal_group(pid, rustix::process::Signal::TERM)?;
            if tokio::time::timeout(term, exit.wait_for(|e| e.is_some()))
                .await
                .is_err()
            {
                tracing::warn!(pid, "no exit {term:?} after SIGTERM: killing it");
                signal_group(pid, rustix::process::Signal::KILL)?;
                killed = true;
                if tokio::time::timeout(term, exit.wait_for(|e| e.is_some()))
                    .await
                    .is_err()
                {
                    tracing::error!(pid, "still running {term:?} after SIGKILL");
                    return Err(SupervisorError::StillRunning { pid, waited: term });
                }
            }
        }
        // Children that outlive the program had the same SIGTERM: give them
        // what is left of the stop timeout, then kill what remains.
        while group_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        if group_alive(pid) {
            tracing::warn!(pid, "the main program's children outlived it: killing them");
            signal_group(pid, rustix::process::Signal::KILL)?;
            killed = true;
        }
        self.forget();
        tracing::info!(pid, waited_busy_ms, killed, "stopped the main program");
        Ok(StopReport {
            stopped_at: Timestamp::now(),
            waited_busy_ms,
            forced: still_busy || killed,
            was_running: true,
        })
    }

    fn forget(&self) {
        *self.current.lock().expect("not poisoned") = None;
        let _ = std::fs::remove_file(self.pid_file());
    }

    /// Polls until the running main program reports `version` through the
    /// health command, it exits, or `timeout` passes.
    pub async fn health(&self, version: &Version, timeout: Duration) -> HealthReport {
        let deadline = Instant::now() + timeout;
        let unhealthy = |version: Option<Version>, message: String| HealthReport {
            healthy: false,
            version,
            message,
            rolled_back_to: None,
        };
        loop {
            match self.state() {
                MainState::Stopped => {
                    return unhealthy(
                        None,
                        "the main program is not running; start it first".into(),
                    );
                }
                MainState::Exited { code } => {
                    let code = code.map_or_else(
                        || "killed by a signal".to_owned(),
                        |c| format!("exited with code {c}"),
                    );
                    return unhealthy(
                        None,
                        format!(
                            "the main program {code}; its last words: {}",
                            self.log_tail(10)
                        ),
                    );
                }
                MainState::Running { .. } => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match self.probe(left.max(Duration::from_millis(500))).await {
                Ok(v) if &v == version => {
                    return HealthReport {
                        healthy: true,
                        version: Some(v),
                        message: String::new(),
                        rolled_back_to: None,
                    };
                }
                Ok(v) => {
                    return unhealthy(
                        Some(v.clone()),
                        format!("the main program runs version {v}, not {version}"),
                    );
                }
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return unhealthy(
                    None,
                    format!("not healthy after {} s: {why}", timeout.as_secs()),
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs the health command once: the version on its first stdout line, or why not.
    async fn probe(&self, timeout: Duration) -> Result<Version, String> {
        let cmd = &self.cfg.health_command;
        let mut c = tokio::process::Command::new(&cmd[0]);
        c.args(&cmd[1..]).stdin(Stdio::null()).kill_on_drop(true);
        let out = match tokio::time::timeout(timeout, c.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(format!(
                    "the health command `{}` could not run: {e}",
                    cmd[0]
                ));
            }
            Err(_) => return Err("the health command did not answer in time".into()),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first = stdout.lines().next().unwrap_or("").trim();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{} {}", stdout.trim(), stderr.trim())
                .trim()
                .to_owned());
        }
        Version::parse(first)
            .map_err(|_| format!("the health command printed `{first}`, not a version"))
    }

    /// The last `n` lines of `main.log`, joined with " | ".
    pub fn log_tail(&self, n: usize) -> String {
        let bytes = std::fs::read(self.log_file()).unwrap_or_default();
        let tail = &bytes[bytes.len().saturating_sub(16 * 1024)..];
        let text = String::from_utf8_lossy(tail);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }
}

fn to_pid(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
}

fn alive(pid: u32) -> bool {
    to_pid(pid).is_some_and(|p| {
        !matches!(
            rustix::process::test_kill_process(p),
            Err(rustix::io::Errno::SRCH)
        )
    })
}

/// Whether the adopted `pid` has ended. After the agent restarted itself
/// in place (`exec`, see `tillup_selfupdate::restart`) the main program is
/// still its child: it is reaped here, or it would linger as a zombie that
/// [`alive`] takes for running.
fn ended(pid: u32) -> bool {
    if let Some(p) = to_pid(pid)
        && let Ok(Some(_)) = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG)
    {
        return true;
    }
    !alive(pid)
}

/// Whether `pid` runs `program` (checked on Linux, assumed elsewhere), so a
/// reused pid is not taken for the main program.
fn runs(pid: u32, program: &str) -> bool {
    if cfg!(target_os = "linux") {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|arg0| arg0 == program.as_bytes())
    } else {
        true
    }
}

/// Whether a live (not zombie) process is left in the process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    #[cfg(target_os = "linux")]
    if let Ok(entries) = std::fs::read_dir("/proc") {
        return entries.flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
            let mut rest = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_ascii_whitespace();
            let state = rest.next();
            let pgrp = rest.nth(1).and_then(|g| g.parse::<u32>().ok());
            pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
        });
    }
    to_pid(pgid).is_some_and(|p| {
        !matches!(
            rustix::process::test_kill_process_group(p),
            Err(rustix::io::Errno::SRCH)
        )
    })
}

/// Sends `sig` to the process group `pgid`; an empty group is not an error.
fn signal_group(pgid: u32, sig: rustix::process::Signal) -> Result<(), SupervisorError> {
    let Some(p) = to_pid(pgid) else { return Ok(()) };
    match rustix::process::kill_process_group(p, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(SupervisorError::Signal {
            pid: pgid,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(command: &[&str], busy_file: Option<PathBuf>) -> MainConfig {
        MainConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            stop_timeout_secs: 1,
            busy_file,
            busy_command: None,
            busy_timeout_secs: 1,
            health_command: vec!["sh".into(), "-c".into(), "echo 1.2.3".into()],
            health_timeout_secs: 5,
            autostart: false,
        }
    }

    #[tokio::test]
    async fn start_stop_are_idempotent_and_reap() {
        let dir = tempfile::tempdir().unwrap();
        let s = Supervisor::new(cfg(&["sleep", "60"], None), dir.path());
        assert_eq!(s.state(), MainState::Stopped);
        let first = s.start().await.unwrap();
        assert!(!first.was_running);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("main.pid"))
                .unwrap()
                .trim(),
            first.pid.to_string()
        );
        assert!(s.start().await.unwrap().was_running);
        let stop = s.stop(None).await.unwrap();
        assert!(stop.was_running && !stop.forced);
        assert_eq!(s.state(), MainState::Stopped);
        assert!(!dir.path().join("main.pid").exists());
        assert!(!s.stop(None).await.unwrap().was_running);
        assert!(!alive(first.pid), "the child was reaped, not left a zombie");
    }

    #[tokio::test]
    async fn a_program_ignoring_sigterm_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Supervisor::new(
            cfg(
                &[
                    "sh",
                    "-c",
                    "trap '' TERM; echo ready; while true; do sleep 0.05; done",
                ],
                None,
            ),
            dir.path(),
        );
        s.start().await.unwrap();
        // Let the shell install its trap before signalling it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(s.log_file())
            .unwrap_or_default()
            .contains("ready")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stop = s.stop(Some(Duration::ZERO)).await.unwrap();
        assert!(stop.forced);
    }

    /// Whether `pid` is gone or only a zombie waiting for its new parent to reap it.
    fn dead(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    }

    /// Regression: only the main program got SIGTERM, so its children kept running.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn stop_stops_the_programs_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let child_pid = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", child_pid.to_str().unwrap());
        let s = Supervisor::new(cfg(&["sh", "-c", &script], None), dir.path());
        s.start().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let child: u32 = loop {
            let text = std::fs::read_to_string(&child_pid).unwrap_or_default();
            if let Ok(pid) = text.trim().parse() {
                break pid;
            }
            assert!(Instant::now() < deadline, "the child was not started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!dead(child));
        let stop = s.stop(Some(Duration::ZERO)).await.unwrap();
        assert!(stop.was_running, "{stop:?}");
        assert_eq!(s.state(), MainState::Stopped);
        // SIGTERM reached the child with its parent; allow it a bounded moment to die.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dead(child) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dead(child), "the main program's child {child} still runs");
    }

    /// Adoption checks the program by its command line: waits for `pid`'s exec of `sleep`.
    async fn wait_until_it_runs_sleep(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !runs(pid, "sleep") {
            assert!(Instant::now() < deadline, "sleep did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Regression: a program still alive after SIGKILL was reported stopped.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_program_alive_after_sigkill_is_not_reported_stopped() {
        let dir = tempfile::tempdir().unwrap();
        // A program whose parent never reaps it: once killed it stays a
        // zombie, which a signal test takes for alive, as it would a
        // process stuck in the kernel. It is not the agent's child (an
        // agent reaps its own), and leads its own process group, as a main
        // program does. The supervisor adopts it by its pid.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 60 & echo $!; exec sleep 600"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let zombie: u32 = line.trim().parse().unwrap();
        wait_until_it_runs_sleep(zombie).await;
        std::fs::write(dir.path().join("main.pid"), format!("{zombie}\n")).unwrap();
        let s = Supervisor::new(cfg(&["sleep", "60"], None), dir.path());
        assert_eq!(s.state(), MainState::Running { pid: zombie });
        let err = s.stop(Some(Duration::ZERO)).await.unwrap_err();
        assert!(
            matches!(err, SupervisorError::StillRunning { pid, .. } if pid == zombie),
            "{err}"
        );
        assert!(err.to_string().contains("after SIGKILL"), "{err}");
        assert!(s.is_running(), "it is still counted as running");
        assert!(dir.path().join("main.pid").exists());
        parent.kill().unwrap();
        parent.wait().unwrap();
    }

    /// After the agent restarted in place (exec), the main program it
    /// adopts is still its child: when it ends it is reaped and counted
    /// ended, not left a zombie taken for running.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_adopted_program_that_is_our_child_is_reaped_when_it_ends() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        wait_until_it_runs_sleep(pid).await;
        std::fs::write(dir.path().join("main.pid"), format!("{pid}\n")).unwrap();
        let s = Supervisor::new(cfg(&["sleep", "60"], None), dir.path());
        assert_eq!(s.state(), MainState::Running { pid });
        s.stop(Some(Duration::ZERO)).await.unwrap();
        assert!(!s.is_running());
        assert!(!alive(pid), "reaped, not a zombie");
        drop(child);
    }

    #[tokio::test]
    async fn stop_waits_while_busy_then_stops_anyway() {
        let dir = tempfile::tempdir().unwrap();
        let busy = dir.path().join("busy");
        std::fs::write(&busy, "").unwrap();
        let s = Supervisor::new(cfg(&["sleep", "60"], Some(busy)), dir.path());
        s.start().await.unwrap();
        assert!(s.is_busy().await);
        let stop = s.stop(Some(Duration::from_millis(300))).await.unwrap();
        assert!(stop.forced && stop.waited_busy_ms > 0, "{stop:?}");
    }

    #[tokio::test]
    async fn health_reports_exit_code_and_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(
            &[
                "sh",
                "-c",
                "echo 'fatal: no database' >&2; sleep 0.3; exit 3",
            ],
            None,
        );
        c.health_command = vec![
            "sh".into(),
            "-c".into(),
            "echo 'unhealthy: no database'; exit 1".into(),
        ];
        let s = Supervisor::new(c, dir.path());
        s.start().await.unwrap();
        let h = s
            .health(&Version::new(9, 9, 9), Duration::from_secs(5))
            .await;
        assert!(!h.healthy);
        assert!(
            h.message.contains("code 3") && h.message.contains("fatal: no database"),
            "{h:?}"
        );
        assert_eq!(s.state(), MainState::Exited { code: Some(3) });
    }

    #[tokio::test]
    async fn health_is_healthy_on_the_right_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = Supervisor::new(cfg(&["sleep", "60"], None), dir.path());
        assert!(
            s.health(&Version::new(1, 2, 3), Duration::from_secs(1))
                .await
                .message
                .contains("not running")
        );
        s.start().await.unwrap();
        let h = s
            .health(&Version::new(1, 2, 3), Duration::from_secs(5))
            .await;
        assert!(h.healthy, "{h:?}");
        let h = s
            .health(&Version::new(2, 0, 0), Duration::from_secs(5))
            .await;
        assert!(!h.healthy && h.message.contains("1.2.3"), "{h:?}");
        s.stop(None).await.unwrap();
    }
}
