//! The store manager's tray app end to end: the real `tillup-tray` and its
//! `tillup-window` on a virtual display, driven through WebDriver
//! (`tauri-driver` + Debian's `WebKitWebDriver`), against a real server and
//! real agents on loopback.
//!
//! `TILLUP_SCREENSHOTS=DIR` saves the popup, the window during the upgrade
//! and the history as `DIR/{popup,upgrading,history}-LANG.png`, with
//! `TILLUP_SCREENSHOT_LANG` (`en` or `zh-CN`, default `en`) as the language
//! (`docs/screenshots.sh` makes the README's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use tillup_e2e::webdriver::{Driver, Session, missing_tool};
use tillup_e2e::{ReleaseSpec, Store, StoreSpec, bin};

const WAIT: Duration = Duration::from_secs(60);

/// The display tools, or why this machine cannot run these tests. Missing
/// tools fail the test unless `TILLUP_SKIP_GUI_TESTS=1` says to skip them
/// knowingly (`scripts/setup` installs them).
fn gui_ready() -> Result<bool> {
    match missing_tool() {
        None => Ok(true),
        Some(_) if std::env::var_os("TILLUP_SKIP_GUI_TESTS").is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED (TILLUP_SKIP_GUI_TESTS=1)");
            Ok(false)
        }
        Some(missing) => anyhow::bail!(
            "{missing}; scripts/setup installs it, or set TILLUP_SKIP_GUI_TESTS=1 to skip the window tests"
        ),
    }
}

fn lang() -> String {
    std::env::var("TILLUP_SCREENSHOT_LANG").unwrap_or_else(|_| "en".into())
}

fn shot(session: &Session, name: &str) -> Result<()> {
    if let Some(dir) = std::env::var_os("TILLUP_SCREENSHOTS") {
        // Let the last change render before the picture.
        std::thread::sleep(Duration::from_millis(400));
        session.screenshot(&PathBuf::from(dir).join(format!("{name}-{}.png", lang())))?;
    }
    Ok(())
}

fn driver(store: &Store) -> Result<Driver> {
    let home = store.root.join("home");
    std::fs::create_dir_all(&home)?;
    Driver::start(
        &store.root.join("tauri-driver.log"),
        &[("HOME", &home), ("XDG_RUNTIME_DIR", &home)],
    )
}

fn tray_args(store: &Store, lang: &str) -> Vec<String> {
    vec![
        "--config".into(),
        store.listener_config.display().to_string(),
        "--lang".into(),
        lang.into(),
        "-v".into(),
    ]
}

fn session(driver: &Driver, store: &Store, lang: &str) -> Result<Session> {
    let args = tray_args(store, lang);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    driver.session(&bin("tillup-tray")?, &args)
}

fn version_cell(n: u32) -> String {
    format!("#terminals tr[data-terminal=\"{n}\"] .version")
}

#[test]
fn the_popup_asks_and_upgrade_now_brings_every_terminal_to_the_new_version() -> Result<()> {
    if !gui_ready()? {
        return Ok(());
    }
    let store = Store::new(None, StoreSpec::default())?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let driver = driver(&store)?;
    let lang = lang();

    // The tray's first check finds 1.1.0 and opens the popup: the session
    // exists only once a window does.
    let s = session(&driver, &store, &lang)?;
    s.wait_text("#popup-version", WAIT, |t| t.contains("1.1.0"))?;
    ensure!(s.displayed("#popup")?, "the popup page is shown");
    let terminals = s.text("#popup-terminals")?;
    for n in store.terminals.keys() {
        ensure!(
            terminals.contains(&n.to_string()),
            "terminal {n} in {terminals:?}"
        );
    }
    ensure!(
        s.exists("#btn-skip")?,
        "a release that is not critical can be skipped"
    );
    ensure!(
        s.text("#btn-tonight")?.contains("03:00"),
        "tonight = the window's start"
    );
    shot(&s, "popup")?;

    s.click("#btn-now")?;
    // The same window follows the upgrade.
    s.wait("the upgrade's progress", WAIT, |s| s.displayed("#progress"))?;
    // The picture: mid-way if the upgrade lets us (the canary done, the
    // rest under way), else as it started.
    let (mut started, mut midway) = (false, false);
    s.wait("the upgrade to end", WAIT, |s| {
        if !started && s.exists("#progress tr[data-terminal]")? {
            shot(s, "upgrading")?;
            started = true;
        }
        if !midway
            && s.exists("#progress-running:not([hidden]) tr[data-terminal]:not(.step-planned)")?
        {
            shot(s, "upgrading")?;
            midway = true;
        }
        let log = store.local_log();
        Ok(log["history"]
            .as_array()
            .is_some_and(|h| h.last().is_some_and(|e| !e["finished"].is_null())))
    })?;

    s.click("#tab-terminals")?;
    for n in store.terminals.keys() {
        s.wait_text(&version_cell(*n), WAIT, |t| t.contains("1.1.0"))?;
    }
    for t in store.terminals.values() {
        t.wait_running("1.1.0")?;
    }
    s.click("#tab-history")?;
    s.wait_text("#history", WAIT, |t| t.contains("1.1.0"))?;
    shot(&s, "history")?;
    s.end();
    Ok(())
}

/// The pid the running tray wrote into its lock.
fn tray_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("tray.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the tray `pid` has a window child.
fn window_of(pid: u32) -> bool {
    std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-x", "tillup-window"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn skip_is_remembered_across_a_restart_and_settings_refuse_a_bad_server_url() -> Result<()> {
    if !gui_ready()? {
        return Ok(());
    }
    let store = Store::new(None, StoreSpec::default())?;
    store.publish(&ReleaseSpec::new("1.1.0"), &[])?;
    let driver = driver(&store)?;

    let s = session(&driver, &store, "en")?;
    s.wait_text("#popup-version", WAIT, |t| t.contains("1.1.0"))?;
    let first = tray_pid(&store.listener_data).context("the tray holds tray.lock")?;
    s.click("#btn-skip")?;
    // Skip is written to the local log and closes the popup; the tray stays.
    let deadline = std::time::Instant::now() + WAIT;
    while store.local_log()["skipped"] != serde_json::json!(["1.1.0"]) {
        ensure!(
            std::time::Instant::now() < deadline,
            "skip was not recorded: {}",
            store.local_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while window_of(first) {
        ensure!(
            std::time::Instant::now() < deadline,
            "the popup did not close"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(alive(first), "the tray stays when its popup closes");
    // Restart the tray: quit it as the session would, then start anew.
    std::process::Command::new("kill")
        .args(["-TERM", &first.to_string()])
        .status()?;
    while alive(first) {
        ensure!(
            std::time::Instant::now() < deadline,
            "the tray did not quit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.end();
    let checked_before = store.local_log()["last_check"].clone();

    // Restart: the check finds 1.1.0 again and asks nothing. The session
    // waits for a window, so open it as a second start would (SIGUSR1).
    let data = store.listener_data.clone();
    let opener = std::thread::spawn(move || -> Result<()> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let log: serde_json::Value = std::fs::read(data.join("local-log.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if let Some(pid) = tray_pid(&data).filter(|p| *p != first && alive(*p))
                && log["last_check"] != checked_before
            {
                std::process::Command::new("kill")
                    .args(["-USR1", &pid.to_string()])
                    .status()?;
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the restarted tray never checked"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let s = session(&driver, &store, "en")?;
    opener.join().expect("the opener thread")?;
    s.wait("the window page", WAIT, |s| s.displayed("#window"))?;
    ensure!(!s.displayed("#popup")?, "no popup for a skipped version");
    ensure!(
        store.local_log()["pending"].is_null(),
        "nothing waits for an answer: {}",
        store.local_log()["pending"]
    );
    for n in store.terminals.keys() {
        s.wait_text(&version_cell(*n), WAIT, |t| t.contains("1.0.0"))?;
    }

    // Settings: a server address without a scheme is refused, visibly, and
    // the file is not touched; a good change is saved.
    let config_before = std::fs::read_to_string(&store.listener_config)?;
    s.click("#tab-settings")?;
    s.wait("the settings form", WAIT, |s| s.displayed("#set-server"))?;
    s.type_into("#set-server", "updates.example.com")?;
    s.click("#btn-save")?;
    s.wait("the settings error", WAIT, |s| {
        s.displayed("#settings-error")
    })?;
    let error = s.text("#settings-error")?;
    ensure!(
        error.contains("server"),
        "the message names the field: {error:?}"
    );
    ensure!(
        std::fs::read_to_string(&store.listener_config)? == config_before,
        "a refused setting changes nothing on disk"
    );
    // The page takes the manager to the field to fix (with the fonts of a
    // new machine the form is taller than the window and scrolls).
    ensure!(s.focused("#set-server")?, "the refused field has the focus");
    s.type_into("#set-server", store.server.url())?;
    s.type_into("#set-interval", "30")?;
    s.click("#set-autostart")?;
    s.click("#btn-save")?;
    s.wait("the saved settings", WAIT, |s| {
        let text = std::fs::read_to_string(&store.listener_config)?;
        Ok(text.contains("interval_minutes = 30") && s.displayed("#settings-saved")?)
    })?;
    let saved = tillup_listener::Config::load(&store.listener_config)?;
    ensure!(saved.server == store.server.url(), "{}", saved.server);
    ensure!(saved.terminals.len() == store.terminals.len());
    // "Start tillup when I log in": an XDG autostart entry that starts this tray.
    let entry = std::fs::read_to_string(store.root.join("home/.config/autostart/tillup.desktop"))
        .context("the autostart entry")?;
    ensure!(
        entry.contains("tillup-tray") && entry.contains("--config"),
        "{entry}"
    );
    s.end();
    Ok(())
}
