//! Just enough W3C WebDriver for our two pages: the real tillup window
//! through `tauri-driver` (which starts Debian's `WebKitWebDriver`) on a
//! virtual display with its own session bus, and head office's dashboard
//! in Debian's headless Chromium through `chromedriver`. Sessions,
//! elements, clicks, typing, dialogs and screenshots.
//!
//! The window's session application is `tillup-tray`, the resident: the
//! window is its child process, and inherits the automation settings
//! WebKitWebDriver gives the resident, so creating a session waits until
//! the tray has opened a window (the popup, or the window after SIGUSR1).

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The programs the window's tests need, and how to install them.
pub const TOOLS: &[(&str, &str)] = &[
    (
        "tauri-driver",
        "cargo install tauri-driver --version ^2 --locked",
    ),
    ("WebKitWebDriver", "apt-get install webkit2gtk-driver"),
    ("xvfb-run", "apt-get install xvfb xauth"),
    ("dbus-run-session", "apt-get install dbus-daemon"),
];

/// The programs the dashboard's tests need, and how to install them.
pub const BROWSER_TOOLS: &[(&str, &str)] = &[
    ("chromium", "apt-get install chromium"),
    ("chromedriver", "apt-get install chromium-driver"),
];

/// The first of the window's tools that is missing, with how to install it.
pub fn missing_tool() -> Option<String> {
    missing(TOOLS)
}

/// The first of `tools` that is missing, with how to install it.
pub fn missing(tools: &[(&str, &str)]) -> Option<String> {
    tools.iter().find_map(|(tool, install)| {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
        (!found).then(|| format!("{tool} is not installed ({install})"))
    })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `tauri-driver` on Xvfb, killed with everything it started when dropped.
pub struct Driver {
    child: Child,
    base: String,
    http: reqwest::blocking::Client,
    pub log: PathBuf,
}

impl Driver {
    /// Starts the driver; the application inherits `env` (give it its own
    /// `HOME`, so the webview's storage and autostart entries stay in the test).
    pub fn start(log: &Path, env: &[(&str, &Path)]) -> Result<Self> {
        if let Some(missing) = missing_tool() {
            bail!("{missing}");
        }
        let (port, native) = (free_port()?, free_port()?);
        let mut cmd = Command::new("dbus-run-session");
        cmd.args(["--", "xvfb-run", "-a", "-s", "-screen 0 1280x900x24"])
            .arg("tauri-driver")
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err.log"))?)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("cannot start tauri-driver")?;
        Self::listening(child, port, log)
    }

    /// Starts `chromedriver` for headless Chromium sessions
    /// ([`Driver::browser`]).
    pub fn chromium(log: &Path) -> Result<Self> {
        if let Some(missing) = missing(BROWSER_TOOLS) {
            bail!("{missing}");
        }
        let port = free_port()?;
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log.with_extension("err.log"))?)
            .process_group(0)
            .spawn()
            .context("cannot start chromedriver")?;
        Self::listening(child, port, log)
    }

    /// The driver `child`, once it answers on `port`.
    fn listening(child: Child, port: u16, log: &Path) -> Result<Self> {
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while driver
            .http
            .get(format!("{}/status", driver.base))
            .send()
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "the WebDriver server did not listen within 30 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(driver)
    }

    /// A headless Chromium session whose preferred language is `lang`, with
    /// its own profile folder under `profile`.
    pub fn browser(&self, lang: &str, profile: &Path) -> Result<Session> {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,1000".to_owned(),
            format!("--lang={lang}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        self.open(json!({"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": args,
            "prefs": {"intl.accept_languages": lang},
        }}))
    }

    /// A session whose application is `app`; returns once it has a window.
    pub fn session(&self, app: &Path, args: &[&str]) -> Result<Session> {
        self.open(json!({"tauri:options": {"application": app, "args": args}}))
            .context("no window appeared for the WebDriver session")
    }

    fn open(&self, capabilities: Value) -> Result<Session> {
        let body = json!({"capabilities": {"alwaysMatch": capabilities}});
        let v: Value = self
            .http
            .post(format!("{}/session", self.base))
            .json(&body)
            .send()?
            .json()?;
        let id = v["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {v}"))?;
        Ok(Session {
            url: format!("{}/session/{id}", self.base),
            http: self.http.clone(),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: dbus, Xvfb, the drivers and the app (or the
        // browser).
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// One WebDriver session: one window of the app.
pub struct Session {
    url: String,
    http: reqwest::blocking::Client,
}

impl Session {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send()?.json()?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("WebDriver {path}: {e}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    fn find(&self, css: &str) -> Result<String> {
        let v = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element {css}"))
    }

    /// Whether `css` matches an element.
    pub fn exists(&self, css: &str) -> Result<bool> {
        let v = self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(v.as_array().is_some_and(|a| !a.is_empty()))
    }

    pub fn text(&self, css: &str) -> Result<String> {
        let id = self.find(css)?;
        let v = self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    pub fn displayed(&self, css: &str) -> Result<bool> {
        if !self.exists(css)? {
            return Ok(false);
        }
        let id = self.find(css)?;
        let v = self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/displayed"),
            None,
        )?;
        Ok(v.as_bool().unwrap_or(false))
    }

    /// Whether `css` is the element that has the keyboard focus.
    pub fn focused(&self, css: &str) -> Result<bool> {
        let active = self.call(reqwest::Method::GET, "/element/active", None)?;
        Ok(active[ELEMENT].as_str() == Some(self.find(css)?.as_str()))
    }

    pub fn click(&self, css: &str) -> Result<()> {
        let id = self.find(css)?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )?;
        Ok(())
    }

    /// Replaces the value of an input.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.find(css)?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )?;
        Ok(())
    }

    /// Gives a file input the file at `path`.
    pub fn choose_file(&self, css: &str, path: &Path) -> Result<()> {
        let id = self.find(css)?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": path.display().to_string()})),
        )?;
        Ok(())
    }

    /// Polls `check` until it holds, for at most `within`.
    pub fn wait(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what} (last error: {last:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` satisfies `want`.
    pub fn wait_text(
        &self,
        css: &str,
        within: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let mut seen = String::new();
        self.wait(&format!("the text of {css}"), within, |s| {
            seen = s.text(css)?;
            Ok(want(&seen))
        })
        .with_context(|| format!("{css} says {seen:?}"))?;
        Ok(seen)
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, to: &Path) -> Result<()> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None)?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(to, png)?;
        Ok(())
    }

    /// Opens `url` in the browser.
    pub fn navigate(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Accepts the `confirm()` dialog the page shows.
    pub fn accept_dialog(&self) -> Result<()> {
        self.call(reqwest::Method::POST, "/alert/accept", Some(json!({})))?;
        Ok(())
    }

    /// Sizes the window (and so the screenshots).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )?;
        Ok(())
    }

    /// Ends the session (and with it the app).
    pub fn end(self) {
        let _ = self.http.delete(&self.url).send();
    }
}
