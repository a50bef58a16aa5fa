//! Head office's dashboard in a real headless Chromium, against a real
//! server, one real store (listener and agent) and simulated stores that
//! speak the real protocol: people sign in with their roles, a release is
//! published from the page, a rollout runs in waves, advances on the
//! pilots' reports, and halts on a failed canary, saying where and why;
//! stores outside the wave never install.
//!
//! `TILLUP_SCREENSHOTS=DIR` also saves the README's screenshots of the
//! overview, a store and a running rollout, in English and Chinese
//! (`docs/screenshots.sh`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::json;
use tillup_e2e::sim_store::{SimStore, Upgrade};
use tillup_e2e::webdriver::{BROWSER_TOOLS, Driver, Session, missing};
use tillup_e2e::{ReleaseSpec, Store, build_release, text};

const WAIT: Duration = Duration::from_secs(60);
/// Rollouts move on the server's own clock: a look every 30 s, and one
/// after each report.
const ROLLOUT_WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "a long shop password";

/// Chromium and its driver, or why this machine cannot run these tests;
/// missing tools fail the test unless `TILLUP_SKIP_GUI_TESTS=1` says to
/// skip them knowingly (`scripts/setup` installs them).
fn browser_ready() -> Result<bool> {
    match missing(BROWSER_TOOLS) {
        None => Ok(true),
        Some(_) if std::env::var_os("TILLUP_SKIP_GUI_TESTS").is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED (TILLUP_SKIP_GUI_TESTS=1)");
            Ok(false)
        }
        Some(missing) => bail!(
            "{missing}; scripts/setup installs it, or set TILLUP_SKIP_GUI_TESTS=1 to skip the browser tests"
        ),
    }
}

/// The page's own view of the server, ready when `main` is rendered.
struct Page<'a> {
    session: Session,
    base: &'a str,
}

impl Page<'_> {
    /// Shows the page at `hash` (`#/stores`), as following a link would.
    fn go(&self, hash: &str) -> Result<()> {
        let here = self.session.execute("return location.href", json!([]))?;
        if here.as_str().is_some_and(|u| u.starts_with(self.base)) {
            self.session
                .execute("location.hash = arguments[0]", json!([hash]))?;
        } else {
            self.session
                .navigate(&format!("{}/admin/{hash}", self.base))?;
        }
        self.ready()
    }

    /// Waits until the page has rendered what its address asks for.
    fn ready(&self) -> Result<()> {
        self.session.wait("the page", WAIT, |s| {
            Ok(s.execute(
                "const m = document.querySelector('main[data-ready]'); return !!m && (m.dataset.hash === '' || m.dataset.hash === (location.hash || '#/'));",
                json!([]),
            )?
            .as_bool()
                == Some(true))
        })
        .with_context(|| {
            let seen = self.session.execute(
                "const m = document.querySelector('main'); return `${location.href}: main ${JSON.stringify(m && m.dataset)}: ${document.getElementById('flash').textContent} ${m && m.innerText.slice(0, 300)}`",
                json!([]),
            );
            format!("the page shows {seen:?}")
        })
    }

    /// Types `value` into each field of `form` named by its `name`.
    fn fill(&self, form: &str, fields: &[(&str, &str)]) -> Result<()> {
        for (name, value) in fields {
            self.session
                .type_into(&format!("{form} [name={name}]"), value)?;
        }
        Ok(())
    }

    /// Waits until the text of `css` satisfies `want`; on a timeout, says
    /// what the page's message line said.
    fn wait_text(
        &self,
        css: &str,
        within: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.session.wait_text(css, within, want).with_context(|| {
            let flash = self.session.execute(
                "return `${location.hash}: ${document.getElementById('flash').textContent} | ${document.querySelector('main').innerText.slice(0, 400)}`",
                json!([]),
            );
            format!("the page's message: {flash:?}")
        })
    }

    /// The text of `css` (read again if the page re-rendered meanwhile).
    fn text(&self, css: &str) -> Result<String> {
        self.session.wait_text(css, WAIT, |_| true)
    }

    fn sign_in(&self, name: &str) -> Result<()> {
        self.go("#/")?;
        if self.session.exists("#signout:not([hidden])")? {
            self.session.click("#signout")?;
            self.session
                .wait("the sign-in form", WAIT, |s| s.exists("form#signin"))?;
        }
        self.fill("form#signin", &[("name", name), ("password", PASSWORD)])?;
        self.session.click("form#signin button")?;
        self.session
            .wait_text("#who", WAIT, |t| t.starts_with(name))?;
        self.ready()
    }

    fn set_lang(&self, lang: &str) -> Result<()> {
        self.session.execute(
            "const s = document.getElementById('lang'); s.value = arguments[0]; s.dispatchEvent(new Event('change'));",
            json!([lang]),
        )?;
        self.ready()
    }

    /// A request from the page, as its script would send it (with the
    /// session's CSRF token); returns the HTTP status.
    fn fetch_status(&self, method: &str, path: &str) -> Result<u64> {
        let v = self.session.execute(
            "return fetch('/v1/admin/me').then(r => r.json()).then(me => fetch(arguments[1], {method: arguments[0], headers: {'X-CSRF-Token': me.csrf}, body: 'PK'})).then(r => r.status);",
            json!([method, path]),
        )?;
        v.as_u64().with_context(|| format!("no status: {v}"))
    }

    /// Screenshots for the README, when asked for.
    fn shot(&self, name: &str) -> Result<()> {
        let Some(dir) = std::env::var_os("TILLUP_SCREENSHOTS") else {
            return Ok(());
        };
        for lang in ["en", "zh-CN"] {
            self.set_lang(lang)?;
            self.session
                .screenshot(&PathBuf::from(&dir).join(format!("dashboard-{name}-{lang}.png")))?;
        }
        self.set_lang("en")
    }
}

/// A `.zip` of a release folder's content, as IT would upload it.
fn zip_folder(folder: &Path, to: &Path) -> Result<()> {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(to)?);
    let mut stack = vec![folder.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(folder)?.to_string_lossy().into_owned();
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path)?.permissions());
            zip.start_file(
                name,
                zip::write::SimpleFileOptions::default().unix_permissions(mode),
            )?;
            zip.write_all(&std::fs::read(&path)?)?;
        }
    }
    zip.finish()?;
    Ok(())
}

#[test]
fn it_runs_a_release_night_from_the_page() -> Result<()> {
    if !browser_ready()? {
        return Ok(());
    }
    // One real store (listener, agent, a till on 1.0.0) and six simulated ones.
    let store = Store::one_till()?;
    let server = &store.server;
    let real = store.store_id.clone();
    let mut sims = (1..=6)
        .map(|i| SimStore::add(server, &format!("shop-{i:02}"), "1.0.0"))
        .collect::<Result<Vec<_>>>()?;
    server.cli(&["store", "label", &real, "region=north", "mall"])?;
    for (name, role) in [("vic", "viewer"), ("rui", "releaser"), ("ada", "admin")] {
        server.add_person(name, role, PASSWORD)?;
    }

    let work = tempfile::tempdir()?;
    let release = work.path().join("1.1.0");
    build_release(&release, &ReleaseSpec::new("1.1.0"))?;
    let zip = work.path().join("cupos-1.1.0.zip");
    zip_folder(&release, &zip)?;

    let driver = Driver::chromium(&work.path().join("chromedriver.log"))?;
    let page = Page {
        session: driver.browser("en-US", &work.path().join("profile"))?,
        base: server.url(),
    };
    page.session.resize(1280, 1000)?;

    // A viewer sees the fleet but no publish form, and the server refuses
    // a publish sent with their session anyway.
    page.sign_in("vic")?;
    page.wait_text("main h1", WAIT, |t| t.contains("fleet"))?;
    page.go("#/releases")?;
    ensure!(
        !page.session.exists("form#publish")?,
        "a viewer is offered the publish form"
    );
    let status = page.fetch_status("POST", "/v1/admin/releases?channel=stable&version=9.9.9")?;
    ensure!(status == 403, "a viewer's publish got {status}");
    ensure!(
        page.fetch_status("POST", "/v1/admin/stores/shop-01/revoke")? == 403,
        "a viewer may not revoke a store"
    );

    // A releaser publishes 1.1.0 from the page, held back for a rollout.
    page.sign_in("rui")?;
    page.go("#/releases")?;
    page.session
        .choose_file("form#publish input[name=zip]", &zip)?;
    page.fill(
        "form#publish",
        &[
            ("version", "1.1.0"),
            ("notes_en", "Faster checkout."),
            ("notes_zh", "结账更快。"),
        ],
    )?;
    page.session.click("form#publish input[name=held]")?;
    page.session.click("form#publish button")?;
    page.wait_text("main[data-ready] h1", WAIT, |t| t.contains("stable 1.1.0"))?;
    let shown = page.text("main")?;
    ensure!(
        shown.contains("none yet") && shown.contains("结账更快"),
        "the release page: {shown}"
    );
    let published = server.cli(&["audit"])?;
    ensure!(published.contains("stable/1.1.0"), "{published}");

    // Nobody may install it yet: not the simulated stores, not the real one.
    for sim in &sims {
        ensure!(
            sim.offered()?.is_none(),
            "{} is offered 1.1.0 early",
            sim.id
        );
    }
    let check = store.tillup_json(&["check"])?;
    ensure!(check["status"] == "up_to_date", "{check}");

    // A rollout: pilots (the real store and shop-01), then 50 %, then all.
    page.go("#/rollouts")?;
    page.fill(
        "form#start-rollout",
        &[
            ("pilots", &format!("{real}, shop-01")),
            ("shares", "50, 100"),
            ("success", "100"),
            ("error", "0"),
            ("soak", "0"),
        ],
    )?;
    page.session.click("form#start-rollout button")?;
    page.wait_text("#phase", WAIT, |t| {
        t.contains("running") && t.contains("wave 1")
    })?;
    let waves = |page: &Page, wave: usize| -> Result<Vec<String>> {
        let v = page.session.execute(
            "return [...document.querySelectorAll(`section[data-wave='${arguments[0]}'] tr[data-store]`)].map(r => r.dataset.store);",
            json!([wave]),
        )?;
        Ok(serde_json::from_value(v)?)
    };
    let pilots = waves(&page, 0)?;
    ensure!(pilots.len() == 2 && pilots.contains(&real), "{pilots:?}");
    let second = waves(&page, 1)?;
    ensure!(
        !second.is_empty() && !second.iter().any(|s| pilots.contains(s)),
        "{second:?}"
    );

    // The pilots install and report; everyone else is still not offered it.
    for sim in sims.iter_mut() {
        if pilots.contains(&sim.id) {
            ensure!(
                sim.check_and_upgrade(4, &Upgrade::Healthy)?.is_some(),
                "{}",
                sim.id
            );
        } else {
            ensure!(
                sim.offered()?.is_none(),
                "{} is offered 1.1.0 outside its wave",
                sim.id
            );
        }
    }
    let out = store.tillup(&["update"])?;
    ensure!(out.status.success(), "{}", text(&out));
    store.terminals[&1].wait_running("1.1.0")?;

    // The page shows the rollout advance by itself to the second wave.
    page.wait_text("#phase", ROLLOUT_WAIT, |t| t.contains("wave 2"))?;
    ensure!(
        page.session.exists("section.wave.passed[data-wave='0']")?,
        "the pilot wave is not shown as passed"
    );
    page.shot("rollout")?;

    // In the second wave, one store starts its upgrade (its backup is on
    // the server) and another's canary fails: the rollout halts and says
    // where and why; the third wave is never admitted.
    let upgrading = second.get(1).context("a second store in wave 2")?.clone();
    for sim in sims.iter().filter(|s| s.id == upgrading) {
        ensure!(
            sim.begin_upgrade(4)?.is_some(),
            "{upgrading} is not offered 1.1.0"
        );
    }
    let failing = second[0].clone();
    for sim in sims.iter_mut().filter(|s| s.id == failing) {
        sim.check_and_upgrade(
            4,
            &Upgrade::CanaryFails("health check: the tax table is missing".into()),
        )?;
    }
    let why = page.wait_text("#halted-why", ROLLOUT_WAIT, |t| t.contains(&failing))?;
    ensure!(why.contains("tax table is missing"), "{why}");
    ensure!(
        page.text("#phase")?.contains("halted"),
        "the phase is not shown as halted"
    );
    for sim in &sims {
        if !pilots.contains(&sim.id) {
            ensure!(
                sim.offered()?.is_none(),
                "{} is offered 1.1.0 after the halt",
                sim.id
            );
        }
    }

    // The overview and the real store's page show what happened.
    page.go("#/")?;
    let chart = page.session.execute(
        "return document.querySelector('svg.chart').textContent",
        json!([]),
    )?;
    let chart = chart.as_str().unwrap_or_default();
    ensure!(
        chart.contains("1.1.0") && chart.contains("1.0.0"),
        "the overview's chart: {chart}"
    );
    ensure!(
        page.session
            .exists(&format!("#upgrading tr[data-store='{upgrading}']"))?,
        "the overview does not show {upgrading} upgrading now"
    );
    page.shot("overview")?;
    page.go(&format!("#/stores/{real}"))?;
    let store_page = page.text("main")?;
    ensure!(
        store_page.contains("1.0.0 → 1.1.0")
            && store_page.contains("upgraded")
            && store_page.contains("region=north")
            && store_page.contains(&store.terminals[&1].model),
        "the store page: {store_page}"
    );
    page.shot("store")?;

    // Hundreds of stores: the list narrows to what is typed.
    page.go("#/stores")?;
    page.session.type_into("#store-filter", "region=NORTH")?;
    let count = page.wait_text("#store-count", WAIT, |t| t.starts_with("1 of"))?;
    let shown = page.session.execute(
        "return [...document.querySelectorAll('tr[data-store]:not([hidden])')].map((r) => r.dataset.store)",
        json!([]),
    )?;
    ensure!(shown == json!([real]), "{count}: {shown}");

    // An admin rotates a store's token from its page; the audit trail
    // shows every person's action.
    page.sign_in("ada")?;
    page.go("#/stores/shop-06")?;
    page.session.click("#rotate")?;
    page.session.accept_dialog()?;
    page.wait_text("#newtoken", WAIT, |t| t.len() == 64)?;
    // …and labels it, which the next rollouts can choose it by.
    page.session
        .type_into("#labels input", "region=south  mall")?;
    page.session.click("#labels button")?;
    page.wait_text("#flash", WAIT, |t| t.contains("Save labels"))?;
    let labelled = page.session.execute(
        "return document.querySelector('#labels input').value",
        json!([]),
    )?;
    ensure!(
        labelled == "mall region=south",
        "the labels after saving: {labelled}"
    );
    page.go("#/audit")?;
    let audit = page.text("main")?;
    for (who, what) in [
        ("rui", "publish"),
        ("rui", "rollout.start"),
        ("ada", "store.rotate"),
        ("ada", "store.label"),
    ] {
        ensure!(
            audit.lines().any(|l| l.contains(who) && l.contains(what)),
            "the audit trail lacks {who} {what}: {audit}"
        );
    }
    page.session.end();
    drop(sims);
    Ok(())
}
