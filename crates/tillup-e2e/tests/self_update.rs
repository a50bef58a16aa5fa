//! tillup updating itself: a release of tillup's own programs, published on
//! its own channel, reaches the terminals' agents (canary first, health
//! checked with the POS program untouched, then kept or rolled back) and
//! the listener (swapped, probed, kept at its next start or put back).
//! Real server, agents and `tillup` on loopback, each running from a
//! private copy of its executable that the update replaces.
//!
//! A "new build" is the workspace's executable with bytes appended (an
//! ELF file runs the same with a tail): its own file, by hash, yet a
//! program that really runs; a broken build is a script that fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tillup_e2e::{ReleaseSpec, Store, bin, text, without_sales};

/// tillup's channel in these tests, as the listener's config names it.
const CHANNEL: &str = "tillup";

fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// A private copy of the workspace's `name` at `to`.
fn private_copy(name: &str, to: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(bin(name)?)?;
    fs::create_dir_all(to.parent().context("a folder")?)?;
    fs::write(to, &bytes)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    Ok(bytes)
}

/// The listener runs from a private copy (returned with its bytes) and
/// follows tillup's channel.
fn private_listener(store: &mut Store) -> Result<(PathBuf, Vec<u8>)> {
    let exe = store.root.join("host/bin/tillup");
    let bytes = private_copy("tillup", &exe)?;
    store.listener_program = Some(exe.clone());
    store.write_listener_config("prompt", &[&format!("self_channel = {CHANNEL:?}")])?;
    Ok((exe, bytes))
}

/// Every agent restarts from a private copy; returns its bytes.
fn private_agents(store: &mut Store) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for t in store.terminals.values_mut() {
        let exe = t.root.join("bin/tillup-agent");
        bytes = private_copy("tillup-agent", &exe)?;
        t.agent_program = Some(exe);
        t.start_agent()?;
    }
    Ok(bytes)
}

/// The workspace's `name` as another build: the same program, other bytes.
fn rebuilt(name: &str, tag: &str) -> Result<Vec<u8>> {
    let mut bytes = fs::read(bin(name)?)?;
    bytes.extend_from_slice(format!("\ntillup test build {tag}\n").as_bytes());
    Ok(bytes)
}

/// A build that fails whatever it is asked.
fn broken(name: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho '{name}: this build is broken' >&2\nexit 1\n").into_bytes()
}

/// Publishes a release of tillup holding `files` on tillup's channel.
fn publish_tillup(store: &Store, version: &str, files: &[(&str, Vec<u8>)]) -> Result<PathBuf> {
    let dir = store.root.join("tillup-releases").join(version);
    fs::create_dir_all(&dir)?;
    for (name, bytes) in files {
        let path = dir.join(name);
        fs::write(&path, bytes)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    let platform = platform();
    store.server.publish(
        &dir,
        version,
        &["--channel", CHANNEL, "--model", platform.as_str()],
    )?;
    Ok(dir)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `tillup self-update --json`: its exit code and its outcome.
fn self_update(store: &Store) -> Result<(Option<i32>, serde_json::Value)> {
    let out = store.tillup(&["self-update", "--json"])?;
    let outcome: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    Ok((out.status.code(), outcome))
}

fn main_pid(store: &Store, n: u32) -> Result<String> {
    let t = &store.terminals[&n];
    Ok(fs::read_to_string(t.root.join("agent-state/main.pid"))?
        .trim()
        .to_owned())
}

#[test]
fn the_listener_updates_itself_and_a_build_that_does_not_start_leaves_the_previous_one()
-> Result<()> {
    let mut store = Store::one_till()?;
    let (exe, a) = private_listener(&mut store)?;

    // A → B: swapped in and probed, the previous build kept beside it.
    let b = rebuilt("tillup", "B")?;
    publish_tillup(&store, "0.2.0", &[("tillup", b.clone())])?;
    let (code, outcome) = self_update(&store)?;
    ensure!(code == Some(0), "{outcome}");
    ensure!(
        outcome["listener"]["result"] == "updated" && outcome["listener"]["to"] == "0.2.0",
        "{outcome}"
    );
    ensure!(outcome["restart"] == true, "{outcome}");
    ensure!(fs::read(&exe)? == b, "the listener's executable is B");
    ensure!(fs::read(with_suffix(&exe, ".previous"))? == a, "A is kept");

    // Its next start runs B, which keeps itself: A is let go.
    let out = store.tillup(&["status"])?;
    ensure!(out.status.success(), "B runs: {}", text(&out));
    ensure!(!with_suffix(&exe, ".previous").exists(), "B was kept");
    let (code, outcome) = self_update(&store)?;
    ensure!(code == Some(0), "{outcome}");
    ensure!(
        outcome["listener"] == serde_json::json!({"result": "current", "version": "0.2.0"}),
        "{outcome}"
    );

    // B → C, where C does not start: B stays, saying why.
    publish_tillup(&store, "0.3.0", &[("tillup", broken("tillup"))])?;
    let (code, outcome) = self_update(&store)?;
    ensure!(code == Some(2), "a failed self-update says so: {outcome}");
    let why = outcome["listener"]["why"].as_str().unwrap_or_default();
    ensure!(
        outcome["listener"]["result"] == "failed"
            && why.contains("did not pass its self-check")
            && why.contains("this build is broken")
            && why.contains("previous executable was put back"),
        "{outcome}"
    );
    ensure!(outcome["restart"] == false, "{outcome}");
    ensure!(fs::read(&exe)? == b, "back to B, byte for byte");
    ensure!(!with_suffix(&exe, ".previous").exists());
    let out = store.tillup(&["status"])?;
    ensure!(out.status.success(), "B still runs: {}", text(&out));
    Ok(())
}

#[test]
fn agents_update_canary_first_and_a_failing_canary_is_rolled_back_with_the_pos_untouched()
-> Result<()> {
    let mut store = Store::two_tills()?;
    let a = private_agents(&mut store)?;
    store.write_listener_config("prompt", &[&format!("self_channel = {CHANNEL:?}")])?;
    let folders = store.folders();
    let pids = [main_pid(&store, 1)?, main_pid(&store, 2)?];

    // A broken tillup-agent: the canary (terminal 1) refuses it and keeps
    // its own; terminal 2 is not asked.
    publish_tillup(&store, "0.2.0", &[("tillup-agent", broken("tillup-agent"))])?;
    let (code, outcome) = self_update(&store)?;
    ensure!(code == Some(2), "{outcome}");
    let canary = &outcome["agents"]["1"];
    let why = canary["why"].as_str().unwrap_or_default();
    ensure!(
        canary["result"] == "failed"
            && why.contains("did not pass its self-check")
            && why.contains("this build is broken"),
        "{outcome}"
    );
    ensure!(outcome["agents"]["2"]["result"] == "skipped", "{outcome}");
    ensure!(
        outcome["agents"]["2"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("canary terminal 1")),
        "{outcome}"
    );
    for t in store.terminals.values() {
        let exe = t.agent_program.as_ref().context("a private agent")?;
        ensure!(
            fs::read(exe)? == a,
            "terminal {}'s agent is as it was",
            t.number
        );
        ensure!(!with_suffix(exe, ".previous").exists());
        let status = t.agent_status()?;
        ensure!(
            status["agent_version"] == env!("CARGO_PKG_VERSION")
                && status["agent_on_trial"] == false,
            "{status}"
        );
    }
    // The POS program was never touched: same processes, same folders.
    ensure!(pids == [main_pid(&store, 1)?, main_pid(&store, 2)?]);
    ensure!(
        store
            .folders()
            .iter()
            .map(without_sales)
            .collect::<Vec<_>>()
            == folders.iter().map(without_sales).collect::<Vec<_>>()
    );
    for t in store.terminals.values() {
        ensure!(t.running_version().as_deref() == Some("1.0.0"));
    }

    // A good build: canary first, then the other; each restarts in place
    // and adopts its running POS program, which keeps selling.
    let good = rebuilt("tillup-agent", "0.3.0")?;
    publish_tillup(&store, "0.3.0", &[("tillup-agent", good.clone())])?;
    let (code, outcome) = self_update(&store)?;
    ensure!(code == Some(0), "{outcome}");
    for n in ["1", "2"] {
        ensure!(
            outcome["agents"][n]
                == serde_json::json!({"result": "updated", "from": env!("CARGO_PKG_VERSION"), "to": "0.3.0"}),
            "{outcome}"
        );
    }
    for t in store.terminals.values() {
        let exe = t.agent_program.as_ref().context("a private agent")?;
        ensure!(
            fs::read(exe)? == good,
            "terminal {}'s agent is the new build",
            t.number
        );
        ensure!(
            !with_suffix(exe, ".previous").exists(),
            "kept: the old one is let go"
        );
    }
    ensure!(
        pids == [main_pid(&store, 1)?, main_pid(&store, 2)?],
        "the POS never stopped"
    );

    // The restarted agents still run the POS upgrade: stop, swap, start.
    let rel = store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "update: {}", text(&out));
    store.assert_upgraded(&rel, &folders, "1.1.0")?;
    Ok(())
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_restarts_itself_on_its_new_build_and_keeps_it() -> Result<()> {
    let mut store = Store::one_till()?;
    let (exe, _) = private_listener(&mut store)?;
    let b = rebuilt("tillup", "B")?;
    publish_tillup(&store, "0.2.0", &[("tillup", b.clone())])?;

    let log = fs::File::create(store.root.join("daemon.log"))?;
    let mut daemon = Killed(
        Command::new(&exe)
            .arg("--config")
            .arg(&store.listener_config)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let pid = daemon.0.id();
    let release = store.listener_data.join("self-release.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    // It checks, swaps B in, restarts in place on it, and B keeps itself.
    while !fs::read_to_string(&release).is_ok_and(|s| s.contains("0.2.0"))
        || with_suffix(&exe, ".previous").exists()
    {
        ensure!(
            daemon.0.try_wait()?.is_none(),
            "the daemon exited: {}",
            fs::read_to_string(store.root.join("daemon.log"))?
        );
        ensure!(
            Instant::now() < deadline,
            "the daemon did not keep B: {}",
            fs::read_to_string(store.root.join("daemon.log"))?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(fs::read(&exe)? == b);
    // The same process, now running B's file (not a deleted one).
    let running = fs::read_link(format!("/proc/{pid}/exe"))?;
    ensure!(
        running == exe.canonicalize()?,
        "it runs {}",
        running.display()
    );
    ensure!(daemon.0.try_wait()?.is_none(), "the daemon runs on");
    Ok(())
}

#[test]
fn a_listener_killed_between_its_swap_and_its_probe_goes_back_at_its_next_start() -> Result<()> {
    let mut store = Store::one_till()?;
    let (exe, a) = private_listener(&mut store)?;
    let b = rebuilt("tillup", "B")?;
    publish_tillup(&store, "0.2.0", &[("tillup", b.clone())])?;

    let out = store.tillup_with(
        &["self-update"],
        &[("TILLUP_CRASH_AT", "selfupdate.swapped")],
    )?;
    ensure!(out.status.code().is_none(), "killed: {}", text(&out));
    ensure!(fs::read(&exe)? == b, "B was swapped in, not yet probed");

    // The next start (B's) finds a swap its probe never passed: back to A,
    // which then does what it was asked.
    let out = store.tillup(&["status"])?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(fs::read(&exe)? == a, "A is back, byte for byte");
    ensure!(!with_suffix(&exe, ".previous").exists());

    // And the update, asked again, completes.
    let (code, outcome) = self_update(&store)?;
    ensure!(
        code == Some(0) && outcome["listener"]["result"] == "updated",
        "{outcome}"
    );
    ensure!(fs::read(&exe)? == b);
    Ok(())
}

#[test]
fn an_agent_that_dies_on_its_new_build_goes_back_and_the_canary_fails() -> Result<()> {
    let mut store = Store::two_tills()?;
    let a = private_agents(&mut store)?;
    // Terminal 1's agent dies as soon as it starts on a new build, before
    // it serves; its service manager (played by the harness) starts it
    // again, without the fault.
    if let Some(t) = store.terminals.get_mut(&1) {
        t.start_agent_with(&[("TILLUP_CRASH_AT", "agent.self.on_trial")])?;
    }
    store.write_listener_config("prompt", &[&format!("self_channel = {CHANNEL:?}")])?;
    let pids = [main_pid(&store, 1)?, main_pid(&store, 2)?];
    publish_tillup(
        &store,
        "0.2.0",
        &[("tillup-agent", rebuilt("tillup-agent", "B")?)],
    )?;

    let (out, restarts) = store.tillup_supervised(&["self-update", "--json"])?;
    let outcome: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    ensure!(restarts == 1, "one restart: {outcome}");
    ensure!(out.status.code() == Some(2), "{outcome}");
    let why = outcome["agents"]["1"]["why"].as_str().unwrap_or_default();
    ensure!(
        outcome["agents"]["1"]["result"] == "failed"
            && why.contains("started without being confirmed healthy"),
        "{outcome}"
    );
    ensure!(outcome["agents"]["2"]["result"] == "skipped", "{outcome}");
    for t in store.terminals.values() {
        let exe = t.agent_program.as_ref().context("a private agent")?;
        ensure!(
            fs::read(exe)? == a,
            "terminal {}'s agent is A again",
            t.number
        );
    }
    ensure!(
        pids == [main_pid(&store, 1)?, main_pid(&store, 2)?],
        "the POS ran throughout"
    );
    Ok(())
}

#[test]
fn an_agent_left_on_trial_by_a_vanished_host_goes_back_on_its_own() -> Result<()> {
    let mut store = Store::one_till()?;
    if let Some(t) = store.terminals.get_mut(&1) {
        t.watchdog_secs = 3;
    }
    let a = private_agents(&mut store)?;
    store.write_listener_config("prompt", &[&format!("self_channel = {CHANNEL:?}")])?;
    let pid = main_pid(&store, 1)?;
    publish_tillup(
        &store,
        "0.2.0",
        &[("tillup-agent", rebuilt("tillup-agent", "B")?)],
    )?;

    // The host dies (kill -9) right after the agent said it restarts on B.
    let out = store.tillup_with(
        &["self-update"],
        &[("TILLUP_CRASH_AT", "listener.self.agent_restarting")],
    )?;
    ensure!(out.status.code().is_none(), "killed: {}", text(&out));

    // Nobody confirms B: the agent's watchdog puts A back and restarts on it.
    let t = &store.terminals[&1];
    let exe = t.agent_program.as_ref().context("a private agent")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = t.agent_status().ok();
        // The notice, then the restart on A.
        if let Some(s) = status.filter(|s| {
            s["notices"]
                .to_string()
                .contains("was on trial: went back to")
                && s["agent_version"] == env!("CARGO_PKG_VERSION")
        }) {
            break s;
        }
        ensure!(Instant::now() < deadline, "the agent did not go back");
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(fs::read(exe)? == a, "A is back, byte for byte");
    ensure!(
        status["agent_version"] == env!("CARGO_PKG_VERSION") && status["agent_on_trial"] == false,
        "{status}"
    );
    ensure!(main_pid(&store, 1)? == pid, "the POS ran throughout");

    // The host, back, updates it.
    let (code, outcome) = self_update(&store)?;
    ensure!(
        code == Some(0) && outcome["agents"]["1"]["result"] == "updated",
        "{outcome}"
    );
    Ok(())
}

#[test]
fn a_host_cut_short_finds_its_agent_on_trial_and_finishes_the_job() -> Result<()> {
    let mut store = Store::one_till()?;
    let _ = private_agents(&mut store)?;
    store.write_listener_config("prompt", &[&format!("self_channel = {CHANNEL:?}")])?;
    let b = rebuilt("tillup-agent", "B")?;
    publish_tillup(&store, "0.2.0", &[("tillup-agent", b.clone())])?;
    let out = store.tillup_with(
        &["self-update"],
        &[("TILLUP_CRASH_AT", "listener.self.agent_restarting")],
    )?;
    ensure!(out.status.code().is_none(), "killed: {}", text(&out));

    // The next run finds the agent on trial in 0.2.0: it checks it and
    // keeps it, without sending anything again.
    let (code, outcome) = self_update(&store)?;
    ensure!(
        code == Some(0) && outcome["agents"]["1"]["result"] == "updated",
        "{outcome}"
    );
    let t = &store.terminals[&1];
    let exe = t.agent_program.as_ref().context("a private agent")?;
    ensure!(fs::read(exe)? == b);
    ensure!(!with_suffix(exe, ".previous").exists(), "kept");
    Ok(())
}

#[test]
fn a_canary_that_does_not_answer_holds_every_other_terminal() -> Result<()> {
    let mut store = Store::two_tills()?;
    let a = private_agents(&mut store)?;
    store.write_listener_config("prompt", &[&format!("self_channel = {CHANNEL:?}")])?;
    if let Some(t) = store.terminals.get_mut(&1) {
        t.stop();
    }
    publish_tillup(
        &store,
        "0.2.0",
        &[("tillup-agent", rebuilt("tillup-agent", "B")?)],
    )?;
    let (code, outcome) = self_update(&store)?;
    ensure!(
        code == Some(0),
        "nothing failed, nothing was done: {outcome}"
    );
    ensure!(outcome["agents"]["1"]["result"] == "skipped", "{outcome}");
    ensure!(
        outcome["agents"]["2"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("canary terminal 1 did not take")),
        "{outcome}"
    );
    ensure!(outcome["listener"]["result"] == "skipped", "{outcome}");
    let exe = store.terminals[&2]
        .agent_program
        .clone()
        .context("a private agent")?;
    ensure!(fs::read(exe)? == a, "terminal 2's agent is untouched");
    Ok(())
}

/// Whether this machine can show the tray (a virtual display and a
/// session bus), or why not. Missing tools fail the test unless
/// `TILLUP_SKIP_GUI_TESTS=1` says to skip it knowingly.
fn display_ready() -> Result<bool> {
    let missing: Vec<&str> = ["xvfb-run", "xauth", "dbus-run-session"]
        .into_iter()
        .filter(|tool| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        })
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    ensure!(
        std::env::var_os("TILLUP_SKIP_GUI_TESTS").is_some_and(|v| v == "1"),
        "{} missing (apt-get install xvfb xauth dbus-daemon; scripts/setup installs them), or set TILLUP_SKIP_GUI_TESTS=1 to skip this test",
        missing.join(", ")
    );
    eprintln!("SKIPPED (TILLUP_SKIP_GUI_TESTS=1)");
    Ok(false)
}

/// A process group (a session bus, a display and the tray) killed when dropped.
struct KilledGroup(Child);

impl Drop for KilledGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn the_tray_updates_the_hosts_programs_together_and_restarts_on_its_new_build() -> Result<()> {
    if !display_ready()? {
        return Ok(());
    }
    let mut store = Store::one_till()?;
    let (listener, _) = private_listener(&mut store)?;
    let dir = listener.parent().context("a folder")?.to_owned();
    let (tray, window) = (dir.join("tillup-tray"), dir.join("tillup-window"));
    private_copy("tillup-tray", &tray)?;
    private_copy("tillup-window", &window)?;

    // B of every host program; the tray, resident on this desktop host,
    // takes it at its first check and restarts on it in place.
    let b: Vec<(&str, Vec<u8>)> = ["tillup", "tillup-tray", "tillup-window"]
        .into_iter()
        .map(|name| Ok((name, rebuilt(name, "B")?)))
        .collect::<Result<_>>()?;
    publish_tillup(&store, "0.2.0", &b)?;
    let log = store.root.join("tray.log");
    let mut session = KilledGroup(
        Command::new("dbus-run-session")
            .args(["--", "xvfb-run", "-a"])
            .arg(&tray)
            .arg("--config")
            .arg(&store.listener_config)
            .env("TILLUP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .process_group(0)
            .spawn()?,
    );
    let said = || fs::read_to_string(&log).unwrap_or_default();
    let release = store.listener_data.join("self-release.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    let kept_b = || {
        fs::read_to_string(&release).is_ok_and(|s| s.contains("0.2.0"))
            && [&listener, &tray, &window]
                .iter()
                .all(|exe| !with_suffix(exe, ".previous").exists())
    };
    while !kept_b() {
        ensure!(
            session.0.try_wait()?.is_none(),
            "the tray's session ended: {}",
            said()
        );
        ensure!(
            Instant::now() < deadline,
            "the tray did not keep B: {}",
            said()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for ((name, bytes), exe) in b.iter().zip([&listener, &tray, &window]) {
        ensure!(fs::read(exe)? == *bytes, "{name} is B");
    }
    // The same tray process, now running B's file (not a deleted one).
    let pid = fs::read_to_string(store.listener_data.join("tray.lock"))?;
    let running = fs::read_link(format!("/proc/{}/exe", pid.trim()))?;
    ensure!(
        running == tray.canonicalize()?,
        "the tray runs {}: {}",
        running.display(),
        said()
    );
    ensure!(
        said().contains("restarting on its new build"),
        "the tray said why it restarted: {}",
        said()
    );

    // C, whose window does not start: `tillup self-update` on this host
    // swaps the three together, and puts the three back together.
    let c = vec![
        ("tillup", rebuilt("tillup", "C")?),
        ("tillup-tray", rebuilt("tillup-tray", "C")?),
        ("tillup-window", broken("tillup-window")),
    ];
    publish_tillup(&store, "0.3.0", &c)?;
    let (code, outcome) = self_update(&store)?;
    ensure!(code == Some(2), "{outcome}");
    let why = outcome["listener"]["why"].as_str().unwrap_or_default();
    ensure!(
        why.contains("tillup-window") && why.contains("this build is broken"),
        "{outcome}"
    );
    for ((name, bytes), exe) in b.iter().zip([&listener, &tray, &window]) {
        ensure!(
            fs::read(exe)? == *bytes,
            "{name} is back to B, byte for byte"
        );
        ensure!(!with_suffix(exe, ".previous").exists());
    }
    ensure!(
        session.0.try_wait()?.is_none(),
        "the tray runs on: {}",
        said()
    );
    Ok(())
}
