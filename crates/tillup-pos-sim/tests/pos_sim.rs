//! Runs the real `pos-sim` binary in a temporary folder.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pos-sim");

fn folder(dir: &Path, version: &str, fail: Option<&str>) -> std::path::PathBuf {
    let f = dir.join("cupos");
    std::fs::create_dir_all(&f).unwrap();
    std::fs::write(f.join("VERSION"), format!("{version}\n")).unwrap();
    if let Some(text) = fail {
        std::fs::write(f.join("FAIL_HEALTH"), text).unwrap();
    }
    f
}

fn run(folder: &Path, state: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--folder"])
        .arg(folder)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn probe(state: &Path) -> Output {
    Command::new(BIN)
        .args(["probe", "--state"])
        .arg(state)
        .output()
        .unwrap()
}

/// Polls `probe` until it succeeds or 10 s pass.
fn probe_until_healthy(state: &Path) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = probe(state);
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "pos-sim did not exit within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[test]
fn healthy_probe_reports_the_version_and_sales_log_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (f, state) = (folder(dir.path(), "1.4.0", None), dir.path().join("state"));
    let mut child = run(&f, &state);
    let out = probe_until_healthy(&state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.4.0");
    let log = std::fs::read_to_string(f.join("data/sales.log")).unwrap();
    assert!(
        log.starts_with("opened ") && log.contains("version 1.4.0"),
        "{log}"
    );
    sigterm(&child);
    wait_exit(&mut child);
}

#[test]
fn fail_health_exits_3_and_probe_fails_with_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let (f, state) = (
        folder(
            dir.path(),
            "2.0.0",
            Some("database schema 7 is newer than this program\n"),
        ),
        dir.path().join("state"),
    );
    let mut child = run(&f, &state);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(3));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "fatal: database schema 7 is newer than this program"
    );
    let out = probe(&state);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("database schema 7 is newer"),
        "{:?}",
        out
    );
    assert!(
        !f.join("data").exists(),
        "a failing release must not touch the terminal's data"
    );
}

/// Reads the heartbeat the program wrote.
fn heartbeat(state: &Path) -> Option<tillup_pos_sim::Heartbeat> {
    serde_json::from_slice(&std::fs::read(state.join("heartbeat.json")).ok()?).ok()
}

#[test]
fn unhealthy_keeps_running_with_heartbeats_and_probe_fails_with_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let (f, state) = (folder(dir.path(), "2.1.0", None), dir.path().join("state"));
    std::fs::write(
        f.join(tillup_pos_sim::UNHEALTHY),
        "printer driver 4 is missing\n",
    )
    .unwrap();
    let mut child = run(&f, &state);
    // Two heartbeats from the same, still running process, both unhealthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(hb) = heartbeat(&state) {
            break hb;
        }
        assert!(Instant::now() < deadline, "no heartbeat within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let second = loop {
        let hb = heartbeat(&state).unwrap();
        if hb.updated > first.updated {
            break hb;
        }
        assert!(Instant::now() < deadline, "the heartbeat stopped");
        std::thread::sleep(Duration::from_millis(20));
    };
    for hb in [&first, &second] {
        assert!(!hb.healthy, "{hb:?}");
        assert_eq!(hb.message, "printer driver 4 is missing");
        assert_eq!((hb.pid, hb.version.as_str()), (child.id(), "2.1.0"));
    }
    assert!(child.try_wait().unwrap().is_none(), "it keeps running");
    let out = probe(&state);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "unhealthy: printer driver 4 is missing"
    );
    sigterm(&child);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn sigterm_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (f, state) = (folder(dir.path(), "1.0.0", None), dir.path().join("state"));
    let mut child = run(&f, &state);
    assert!(probe_until_healthy(&state).status.success());
    sigterm(&child);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    let out = probe(&state);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "unhealthy: stopped"
    );
}

#[test]
fn probe_without_heartbeat_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = probe(dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no heartbeat"));
}
