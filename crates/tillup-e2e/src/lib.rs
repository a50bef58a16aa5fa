//! A whole store on one machine, with real processes: `tillup-server`,
//! one `tillup-agent` (and its `pos-sim` main program) per terminal, and
//! the `tillup` CLI. Used by the demo and the end-to-end tests.
//!
//! Binaries are found next to the running executable (`target/debug` or
//! `target/release`), or in `TILLUP_BIN_DIR`. Build them first with
//! `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tillup_core::manifest::{Manifest, Preserve, merge_for_terminal};
use tillup_fs::{HashCache, scan_folder};

pub mod balancer;
pub mod proxy;
pub mod realistic;
pub mod sim_store;
pub mod wan;
pub mod webdriver;

/// The preserve patterns of the demo releases: terminal-local config, data and logs.
pub const PRESERVE: &[&str] = &["config/local/**", "data/**", "logs/**"];

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TILLUP_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("the current executable has a path");
    let dir = exe.parent().expect("executables live in a folder");
    // Test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_owned()
    } else {
        dir.to_owned()
    }
}

/// The path of a workspace binary, or a clear error.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !p.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first (or set TILLUP_BIN_DIR)",
            p.display()
        );
    }
    Ok(p)
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Proc {
    /// Whether it has exited (crashed, or killed).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("a URL with a port")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, waits (bounded) for `listening on URL` on its first
/// stdout line, and keeps draining its output into `log` (appended to,
/// so that a service's restarts share one log).
pub fn spawn_listening(mut cmd: Command, log: &Path) -> Result<Proc> {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| log.display().to_string())?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let err = fs::read_to_string(log).unwrap_or_default();
            bail!("{cmd:?} did not say where it listens ({other:?}); its log:\n{err}");
        }
    };
    let url = line
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected first line `{line}`"))?
        .trim()
        .to_owned();
    Ok(Proc { child, url })
}

/// Runs a command to its end (bounded), returning its output.
pub fn run(cmd: Command, timeout: Duration) -> Result<Output> {
    run_with(cmd, timeout, || Ok(()))
}

/// Runs a command to its end (bounded), calling `tick` every 20 ms while
/// it runs (to play systemd and restart crashed services, say).
pub fn run_with(
    cmd: Command,
    timeout: Duration,
    mut tick: impl FnMut() -> Result<()>,
) -> Result<Output> {
    run_watched(cmd, timeout, |_| tick())
}

/// Runs a command to its end (bounded), returning its output and the most
/// memory it held (its peak resident set, in bytes, as Linux's `VmHWM`
/// last showed it; 0 where there is no `/proc`).
pub fn run_peak_memory(cmd: Command, timeout: Duration) -> Result<(Output, u64)> {
    let mut peak = 0;
    let out = run_watched(cmd, timeout, |pid| {
        if let Some(kib) = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        {
            peak = peak.max(kib * 1024);
        }
        Ok(())
    })?;
    Ok((out, peak))
}

/// [`run_with`], its `tick` given the child's process id.
fn run_watched(
    mut cmd: Command,
    timeout: Duration,
    mut tick: impl FnMut(u32) -> Result<()>,
) -> Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} took longer than {timeout:?}");
        }
        tick(child.id())?;
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Output as text, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes a file, creating its folder.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().expect("has a parent")).expect("create folder");
    fs::write(path, bytes).expect("write file");
}

/// Deterministic pseudo-random bytes (xorshift), for large files.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What goes into a demo release.
#[derive(Clone, Debug)]
pub struct ReleaseSpec {
    pub version: String,
    /// Size of `assets/catalog.bin`, the large file.
    pub large_bytes: usize,
    /// Make the main program fail its health check.
    pub fail_health: Option<String>,
    /// Make the main program run but report itself unhealthy.
    pub unhealthy: Option<String>,
}

impl ReleaseSpec {
    pub fn new(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            large_bytes: 256 * 1024,
            fail_health: None,
            unhealthy: None,
        }
    }
}

/// Builds a release folder of the simulated POS program. Successive
/// versions change, add and remove files, one has a Chinese name.
pub fn build_release(dir: &Path, spec: &ReleaseSpec) -> Result<()> {
    let v: semver::Version = spec.version.parse()?;
    fs::create_dir_all(dir)?;
    write(&dir.join("VERSION"), format!("{v}\n"));
    let pos = dir.join("bin/pos-sim");
    fs::create_dir_all(pos.parent().expect("has a parent"))?;
    fs::copy(bin("pos-sim")?, &pos)?;
    write(
        &dir.join("config/app.ini"),
        format!("[app]\nversion = {v}\nreceipt_footer = Thank you\n"),
    );
    write(
        &dir.join("lib/payments.dll"),
        format!("payments module {v}\n").repeat(100),
    );
    write(
        &dir.join("商品/价格表.csv"),
        format!("商品,价格\n苹果,{}.50\n香蕉,3.20\n", v.minor + 5),
    );
    write(
        &dir.join("assets/catalog.bin"),
        noise(v.major * 1000 + v.minor + 1, spec.large_bytes),
    );
    // Present in 1.0 only: 1.1 removes it.
    if v.minor == 0 {
        write(
            &dir.join("docs/legacy-readme.txt"),
            "this file is removed in 1.1\n",
        );
    }
    // Added in 1.1.
    if v.minor >= 1 {
        write(
            &dir.join("lib/loyalty.dll"),
            format!("loyalty module {v}\n"),
        );
    }
    if let Some(reason) = &spec.fail_health {
        write(&dir.join("FAIL_HEALTH"), reason);
    }
    if let Some(reason) = &spec.unhealthy {
        write(&dir.join("UNHEALTHY"), reason);
    }
    Ok(())
}

/// The manifest of a folder.
pub fn manifest_of(dir: &Path) -> Manifest {
    scan_folder(dir, &mut HashCache::default()).expect("scan folder")
}

/// What a terminal's folder must be after an upgrade from `old` to `release`.
pub fn expected_after(release: &Manifest, old: &Manifest) -> Manifest {
    merge_for_terminal(release, old, &Preserve::new(PRESERVE).expect("valid")).expect("merge")
}

/// The sales log pos-sim appends to at every start: the one file of a
/// terminal's folder that changes without an upgrade.
pub const SALES: &str = "data/sales.log";

/// `m` without [`SALES`], to compare folders across restarts.
pub fn without_sales(m: &Manifest) -> Manifest {
    Manifest::new(
        m.files()
            .iter()
            .filter(|f| f.path.as_str() != SALES)
            .cloned()
            .collect(),
    )
    .expect("a subset of a valid manifest is valid")
}

/// Where a server keeps its state: the embedded default (SQLite and a
/// folder inside its data folder), or what `args` (`--database`,
/// `--blobs`) and `env` (the object store's endpoint and keys) name, which
/// several servers can share.
#[derive(Clone, Debug, Default)]
pub struct Backend {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A running `tillup-server` with its data folder.
pub struct Server {
    pub data: PathBuf,
    pub public_key: String,
    pub proc: Option<Proc>,
    pub backend: Backend,
}

impl Server {
    /// `keygen`, then `serve` on 127.0.0.1:0, on the embedded default.
    pub fn start(data: &Path) -> Result<Self> {
        Self::start_on(data, Backend::default())
    }

    /// `keygen`, then `serve` on 127.0.0.1:0, keeping its state in `backend`.
    pub fn start_on(data: &Path, backend: Backend) -> Result<Self> {
        fs::create_dir_all(data)?;
        let mut s = Self {
            data: data.to_owned(),
            public_key: String::new(),
            proc: None,
            backend,
        };
        let out = run(s.command(&["keygen"])?, Duration::from_secs(60))?;
        if !out.status.success() {
            bail!("keygen failed: {}", text(&out));
        }
        s.public_key = String::from_utf8(out.stdout)?
            .lines()
            .next()
            .context("keygen printed nothing")?
            .trim()
            .to_owned();
        s.serve()?;
        Ok(s)
    }

    /// Another server over the same backend as `first`, with its own data
    /// folder and a copy of `first`'s signing key (as the chain's IT would
    /// install a second head-office machine), serving on 127.0.0.1:0.
    pub fn join(data: &Path, first: &Server) -> Result<Self> {
        copy_dir(&first.data.join("keys"), &data.join("keys"))?;
        let mut s = Self {
            data: data.to_owned(),
            public_key: first.public_key.clone(),
            proc: None,
            backend: first.backend.clone(),
        };
        s.serve()?;
        Ok(s)
    }

    fn command(&self, args: &[&str]) -> Result<Command> {
        let mut c = Command::new(bin("tillup-server")?);
        c.arg("--data")
            .arg(&self.data)
            .args(&self.backend.args)
            .args(args)
            .envs(self.backend.env.iter().map(|(k, v)| (k, v)));
        Ok(c)
    }

    pub fn serve(&mut self) -> Result<()> {
        self.serve_with(0, &[])
    }

    /// Serves on 127.0.0.1:`port` (0: any) with extra environment.
    pub fn serve_with(&mut self, port: u16, env: &[(&str, &str)]) -> Result<()> {
        self.proc = None;
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = self.command(&["serve", "--listen", &listen])?;
        cmd.envs(env.iter().copied());
        self.proc = Some(spawn_listening(cmd, &self.data.join("serve.log"))?);
        Ok(())
    }

    /// Starts it again on the port it had (after a crash), without the
    /// fault environment.
    pub fn restart(&mut self) -> Result<()> {
        let port = self.proc.as_ref().expect("served once").port();
        self.serve_with(port, &[])
    }

    pub fn url(&self) -> &str {
        &self.proc.as_ref().expect("server running").url
    }

    /// Runs a `tillup-server` subcommand; fails unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = run(self.command(args)?, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("tillup-server {args:?} failed: {}", text(&out));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs a `tillup-server` subcommand, returning its raw output.
    pub fn cli_output(&self, args: &[&str]) -> Result<Output> {
        run(self.command(args)?, Duration::from_secs(120))
    }

    /// Adds a person with `tillup-server user add`, the password given on
    /// standard input as a script would.
    pub fn add_person(&self, name: &str, role: &str, password: &str) -> Result<()> {
        use std::io::Write as _;
        let mut child = self
            .command(&["user", "add", name, "--role", role])?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{password}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("user add {name} took longer than 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "user add {name}: {}", text(&out));
        Ok(())
    }

    /// Registers a store; returns its token.
    pub fn add_store(&self, id: &str) -> Result<String> {
        Ok(self
            .cli(&["store", "add", id])?
            .lines()
            .next()
            .context("no token printed")?
            .trim()
            .to_owned())
    }

    /// Publishes a release folder with the demo's preserve patterns.
    pub fn publish(&self, dir: &Path, version: &str, extra: &[&str]) -> Result<String> {
        let mut args: Vec<String> = vec![
            "publish".into(),
            dir.display().to_string(),
            "--version".into(),
            version.into(),
        ];
        args.extend([
            "--notes-en".into(),
            format!("Release {version}: faster checkout, loyalty points."),
            "--notes-zh".into(),
            format!("版本 {version}：结账更快，新增会员积分。"),
        ]);
        for p in PRESERVE {
            args.extend(["--preserve".into(), (*p).into()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// One POS terminal: its folder, its agent, its main program.
pub struct Terminal {
    pub number: u32,
    pub model: String,
    pub root: PathBuf,
    pub folder: PathBuf,
    pub pos_state: PathBuf,
    pub token: String,
    /// The chain's public key the agent pins.
    pub trust_key: String,
    pub config: PathBuf,
    pub agent: Option<Proc>,
    /// How long the agent waits for a sale to end before stopping anyway.
    pub busy_timeout_secs: u64,
    /// How long the agent waits for the main program to report healthy.
    pub health_timeout_secs: u64,
    /// The agent's watchdog bound.
    pub watchdog_secs: u64,
    /// The port the agent listens on; 0 until it first started (then it
    /// keeps it across restarts, as the host's config names it).
    pub port: u16,
    /// The address the listener's config gives for this agent instead of
    /// its own, e.g. a [`proxy::Proxy`] in front of it.
    pub listener_address: Option<String>,
    /// The agent's executable when not the workspace's (a private copy a
    /// self-update may replace).
    pub agent_program: Option<PathBuf>,
}

impl Terminal {
    /// Installs `release` as the terminal's folder (the store's initial
    /// set-up), adds its terminal-local config, writes its agent config.
    pub fn install(
        root: &Path,
        number: u32,
        model: &str,
        release: &Path,
        trust_key: &str,
        health_timeout_secs: u64,
    ) -> Result<Self> {
        let folder = root.join("cupos");
        copy_dir(release, &folder)?;
        write(
            &folder.join(format!("config/local/terminal-{number}.ini")),
            format!("[terminal]\nnumber = {number}\nprinter = EPSON-TM{number}\n"),
        );
        let pos_state = root.join("pos-state");
        fs::create_dir_all(&pos_state)?;
        let token = format!("agent-token-{number}-{}", std::process::id());
        let config = root.join("agent.toml");
        let t = Self {
            number,
            model: model.to_owned(),
            root: root.to_owned(),
            folder,
            pos_state,
            token,
            trust_key: trust_key.to_owned(),
            config,
            agent: None,
            busy_timeout_secs: 10,
            health_timeout_secs,
            watchdog_secs: 600,
            port: 0,
            listener_address: None,
            agent_program: None,
        };
        t.write_config()?;
        Ok(t)
    }

    /// Writes the agent config.
    pub fn write_config(&self) -> Result<()> {
        let (busy_timeout_secs, health_timeout_secs, watchdog_secs, port) = (
            self.busy_timeout_secs,
            self.health_timeout_secs,
            self.watchdog_secs,
            self.port,
        );
        let folder = self.folder.display().to_string();
        let pos = self.pos_state.display().to_string();
        let cfg = format!(
            r#"terminal = {number}
model = "{model}"
token_sha256 = "{token_sha256}"
trust_key = "{trust_key}"
listen = "127.0.0.1:{port}"
folder = {folder:?}
state_dir = {state:?}
version_file = "VERSION"
watchdog_secs = {watchdog_secs}

[main]
command = ["{{folder}}/bin/pos-sim", "run", "--folder", "{{folder}}", "--state", {pos:?}]
stop_timeout_secs = 10
busy_file = {busy:?}
busy_timeout_secs = {busy_timeout_secs}
health_command = ["{{folder}}/bin/pos-sim", "probe", "--state", {pos:?}]
health_timeout_secs = {health_timeout_secs}
autostart = true
"#,
            number = self.number,
            model = self.model,
            // The agent keeps only the token's hash, as installs should.
            token_sha256 = hex_sha256(self.token.as_bytes()),
            trust_key = self.trust_key,
            state = self.root.join("agent-state").display().to_string(),
            busy = self.pos_state.join("busy").display().to_string(),
        );
        fs::write(&self.config, cfg)?;
        Ok(())
    }

    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    /// Starts the agent with extra environment (a fault to inject).
    pub fn start_agent_with(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.agent = None;
        self.write_config()?;
        let program = match &self.agent_program {
            Some(p) => p.clone(),
            None => bin("tillup-agent")?,
        };
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(&self.config)
            .envs(env.iter().copied());
        let proc = spawn_listening(cmd, &self.root.join("agent.log"))?;
        self.port = proc.port();
        self.agent = Some(proc);
        Ok(())
    }

    /// Whether its agent has exited (crashed).
    pub fn agent_exited(&mut self) -> bool {
        self.agent.as_mut().is_some_and(Proc::exited)
    }

    /// Stops the agent and its main program (the terminal goes offline).
    pub fn stop(&mut self) {
        self.agent = None;
        self.kill_main();
    }

    fn kill_main(&self) {
        let pid_file = self.root.join("agent-state/main.pid");
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }

    pub fn url(&self) -> Option<&str> {
        self.agent.as_ref().map(|a| a.url.as_str())
    }

    /// Its agent's status, asked directly.
    pub fn agent_status(&self) -> Result<serde_json::Value> {
        let url = self.url().context("its agent is not running")?;
        Ok(self
            .http()
            .get(format!("{url}{}", tillup_core::api::agent::STATUS))
            .bearer_auth(&self.token)
            .send()?
            .json()?)
    }

    /// A client for a test to ask its agent directly. It takes the agent's
    /// own certificate as it comes (the host pins it; see `tillup pair`).
    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a TLS backend is compiled in")
    }

    /// The SHA-256 of its agent's TLS certificate, once it made one.
    pub fn fingerprint(&self) -> Option<String> {
        fs::read(self.root.join("agent-state/tls/agent.crt.der"))
            .ok()
            .map(|der| tillup_core::pairing::fingerprint(&der).to_string())
    }

    /// The version the running main program reports (via its heartbeat).
    pub fn running_version(&self) -> Option<String> {
        let out = Command::new(self.folder.join("bin/pos-sim"))
            .arg("probe")
            .arg("--state")
            .arg(&self.pos_state)
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
    }

    /// Waits (bounded by a minute: a loaded CI machine starts processes
    /// slowly) until the main program reports `version`.
    pub fn wait_running(&self, version: &str) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.running_version().as_deref() == Some(version) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "terminal {}: main program does not report {version} (reports {:?})",
            self.number,
            self.running_version()
        )
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// A store: server, terminals, and the listener's config and data.
pub struct Store {
    pub root: PathBuf,
    pub server: Server,
    pub store_id: String,
    pub store_token: String,
    pub terminals: BTreeMap<u32, Terminal>,
    pub listener_config: PathBuf,
    pub listener_data: PathBuf,
    /// The `tillup` executable when not the workspace's (a private copy a
    /// self-update may replace).
    pub listener_program: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

/// How to set up a store.
pub struct StoreSpec {
    pub terminals: Vec<(u32, &'static str)>,
    pub first: ReleaseSpec,
    pub mode: &'static str,
    /// The agents' health check timeout.
    pub health_timeout_secs: u64,
    /// Where the server keeps its state.
    pub backend: Backend,
}

impl Default for StoreSpec {
    fn default() -> Self {
        Self {
            terminals: vec![(1, "CP-500"), (2, "CP-500"), (3, "CP-700")],
            first: ReleaseSpec::new("1.0.0"),
            mode: "prompt",
            health_timeout_secs: 20,
            backend: Backend::default(),
        }
    }
}

impl Store {
    /// A store of one terminal (1, a CP-500), its agent running.
    pub fn one_till() -> Result<Self> {
        Self::new(
            None,
            StoreSpec {
                terminals: vec![(1, "CP-500")],
                ..StoreSpec::default()
            },
        )
    }

    /// A store of two terminals (1 and 2, CP-500s), their agents running.
    pub fn two_tills() -> Result<Self> {
        Self::new(
            None,
            StoreSpec {
                terminals: vec![(1, "CP-500"), (2, "CP-500")],
                ..StoreSpec::default()
            },
        )
    }

    /// Every terminal's folder as it is now, in terminal order.
    pub fn folders(&self) -> Vec<Manifest> {
        self.terminals
            .values()
            .map(|t| manifest_of(&t.folder))
            .collect()
    }

    /// Every terminal runs `version` from `release` (a release folder) plus
    /// its own files as they were in `old` (its folder before, in terminal
    /// order), the sales log aside: computed here, not by the code under test.
    pub fn assert_upgraded(&self, release: &Path, old: &[Manifest], version: &str) -> Result<()> {
        let release = manifest_of(release);
        for (t, before) in self.terminals.values().zip(old) {
            t.wait_running(version)?;
            assert_eq!(
                without_sales(&manifest_of(&t.folder)),
                without_sales(&expected_after(&release, before)),
                "terminal {}",
                t.number
            );
        }
        Ok(())
    }

    /// The channel `stable`'s log as the server serves this store: its
    /// bytes and its signature (the `.minisig` text).
    pub fn served_log(&self) -> Result<(Vec<u8>, String)> {
        use base64::Engine;
        let resp = reqwest::blocking::Client::new()
            .get(format!(
                "{}{}",
                self.server.url(),
                tillup_core::api::route(tillup_core::api::server::LOG, &[("channel", "stable")])
            ))
            .bearer_auth(&self.store_token)
            .send()?
            .error_for_status()?;
        let sig = resp.headers()[tillup_core::api::SIGNATURE_HEADER]
            .to_str()?
            .to_owned();
        let sig = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(sig)?)?;
        Ok((resp.bytes()?.to_vec(), sig))
    }

    /// A server with `first` published, and terminals running it.
    pub fn new(keep: Option<&Path>, spec: StoreSpec) -> Result<Self> {
        Self::with_release(
            keep,
            &spec,
            |root| {
                let rel = root.join("releases").join(&spec.first.version);
                build_release(&rel, &spec.first)?;
                Ok((rel, spec.first.version.clone()))
            },
            |_, _| Ok(()),
        )
    }

    /// A store like [`Store::new`] whose first release is the folder that
    /// `first(root)` makes ready under the store's root (returning it and
    /// its version; it must hold `VERSION` and a runnable `bin/pos-sim`);
    /// `local(number, folder)` adds each terminal's own files before its
    /// agent starts. `spec.first` is not used.
    pub fn with_release(
        keep: Option<&Path>,
        spec: &StoreSpec,
        first: impl FnOnce(&Path) -> Result<(PathBuf, String)>,
        mut local: impl FnMut(u32, &Path) -> Result<()>,
    ) -> Result<Self> {
        let (root, tmp) = match keep {
            Some(dir) => {
                fs::create_dir_all(dir)?;
                (dir.canonicalize()?, None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("tillup-e2e-").tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let server = Server::start_on(&root.join("server"), spec.backend.clone())?;
        let store_id = "store-001".to_owned();
        let store_token = server.add_store(&store_id)?;
        let (rel, version) = first(&root)?;
        server.publish(&rel, &version, &[])?;
        let mut terminals = BTreeMap::new();
        for (n, model) in &spec.terminals {
            let mut t = Terminal::install(
                &root.join(format!("terminals/{n}")),
                *n,
                model,
                &rel,
                &server.public_key,
                spec.health_timeout_secs,
            )?;
            local(*n, &t.folder)?;
            t.start_agent()?;
            terminals.insert(*n, t);
        }
        for t in terminals.values() {
            t.wait_running(&version)?;
        }
        let mut store = Self {
            listener_config: root.join("host/config.toml"),
            listener_data: root.join("host/data"),
            listener_program: None,
            root,
            server,
            store_id,
            store_token,
            terminals,
            _tmp: tmp,
        };
        store.write_listener_config(spec.mode, &[])?;
        Ok(store)
    }

    /// Writes the listener's config; `extra` lines go at the top level.
    pub fn write_listener_config(&mut self, mode: &str, extra: &[&str]) -> Result<()> {
        self.write_listener_config_for(
            self.server.url().to_owned(),
            &self.server.public_key.clone(),
            mode,
            extra,
        )
    }

    pub fn write_listener_config_for(
        &self,
        server_url: String,
        public_key: &str,
        mode: &str,
        extra: &[&str],
    ) -> Result<()> {
        let mut cfg = format!(
            "server = {server_url:?}\npublic_key = {public_key:?}\nstore_id = {:?}\nstore_token = {:?}\ndata_dir = {:?}\nmode = {mode:?}\n",
            self.store_id,
            self.store_token,
            self.listener_data.display().to_string(),
        );
        for line in extra {
            cfg.push_str(line);
            cfg.push('\n');
        }
        cfg.push_str("\n[window]\nstart = \"03:00\"\nend = \"05:00\"\ntime_zone = \"Asia/Shanghai\"\n\n[check]\ninterval_minutes = 60\njitter_minutes = 10\n");
        for t in self.terminals.values() {
            // An offline terminal keeps its last address: nothing answers there.
            let url = t
                .listener_address
                .clone()
                .or_else(|| t.url().map(str::to_owned))
                .unwrap_or_else(dead_address);
            cfg.push_str(&format!(
                "\n[[terminals]]\nnumber = {}\naddress = {url:?}\ntoken = {:?}\n",
                t.number, t.token
            ));
            // Paired at installation: the host pins the agent's certificate.
            if let Some(pin) = t.fingerprint() {
                cfg.push_str(&format!("cert_sha256 = {:?}\n", pin));
            }
        }
        write(&self.listener_config, cfg);
        Ok(())
    }

    /// Builds and publishes a release.
    pub fn publish(&self, spec: &ReleaseSpec, extra: &[&str]) -> Result<PathBuf> {
        let rel = self.root.join("releases").join(&spec.version);
        if rel.exists() {
            fs::remove_dir_all(&rel)?;
        }
        build_release(&rel, spec)?;
        self.server.publish(&rel, &spec.version, extra)?;
        Ok(rel)
    }

    /// Runs the `tillup` CLI with this store's config.
    pub fn tillup(&self, args: &[&str]) -> Result<Output> {
        self.tillup_with(args, &[])
    }

    /// The `tillup` command with this store's config and no injected clock.
    fn tillup_command(&self, args: &[&str]) -> Result<Command> {
        let program = match &self.listener_program {
            Some(p) => p.clone(),
            None => bin("tillup")?,
        };
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(&self.listener_config)
            .args(args)
            .env_remove("TILLUP_NOW");
        Ok(cmd)
    }

    /// `tillup ARGS --json`, parsed; fails unless it exits 0.
    pub fn tillup_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.tillup(&all)?;
        if !out.status.success() {
            bail!("tillup {args:?}: {}", text(&out));
        }
        serde_json::from_slice(&out.stdout).with_context(|| text(&out))
    }

    /// The host's local log, parsed.
    pub fn local_log(&self) -> serde_json::Value {
        serde_json::from_slice(
            &fs::read(self.listener_data.join("local-log.json")).unwrap_or_default(),
        )
        .unwrap_or(serde_json::Value::Null)
    }

    /// Runs the `tillup` CLI, returning also the most memory it held
    /// (see [`run_peak_memory`]).
    pub fn tillup_peak_memory(&self, args: &[&str]) -> Result<(Output, u64)> {
        run_peak_memory(self.tillup_command(args)?, Duration::from_secs(300))
    }

    /// Runs the `tillup` CLI with extra environment (a fault to inject).
    pub fn tillup_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = self.tillup_command(args)?;
        cmd.envs(env.iter().copied());
        run(cmd, Duration::from_secs(300))
    }

    /// Runs the `tillup` CLI while playing systemd for the services: an
    /// agent or the server that crashes is started again at once, on the
    /// same port, without its fault. Returns the output and how many
    /// restarts it took.
    pub fn tillup_supervised(&mut self, args: &[&str]) -> Result<(Output, usize)> {
        let cmd = self.tillup_command(args)?;
        let mut restarts = 0;
        let out = run_with(cmd, Duration::from_secs(300), || {
            for t in self.terminals.values_mut() {
                if t.agent_exited() {
                    t.start_agent()?;
                    restarts += 1;
                }
            }
            if self.server.proc.as_mut().is_some_and(Proc::exited) {
                self.server.restart()?;
                restarts += 1;
            }
            Ok(())
        })?;
        Ok((out, restarts))
    }

    /// The host's backup folders, oldest first.
    pub fn backups(&self) -> Vec<PathBuf> {
        tillup_listener::runner::backup::folders(&self.listener_data)
    }
}

/// The `IP:PORT` of an `http://` or `https://` URL on loopback.
pub(crate) fn socket_addr_of(url: &str) -> Result<std::net::SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    hostport
        .parse()
        .with_context(|| format!("`{url}` is not an http(s)://IP:PORT address"))
}

/// The SHA-256 of `bytes`, in hex.
fn hex_sha256(bytes: &[u8]) -> String {
    tillup_core::Sha256Hex::of(bytes).to_string()
}

/// An address where nothing listens (a port bound then released).
pub fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = l.local_addr().expect("bound").port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// A server on loopback answering every request (at most 20) with `body`
/// as the version log and `signature` (the `.minisig` text) as its
/// signature: an attacker, or a stale or tampered mirror.
pub fn serve_log(body: Vec<u8>, signature: &str) -> Result<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    static_http(
        200,
        vec![
            (tillup_core::api::SIGNATURE_HEADER.into(), b64),
            ("content-type".into(), "application/json".into()),
        ],
        body,
        20,
    )
}

/// A one-response-fits-all HTTP server on loopback: the attacker or stale
/// mirror of the security tests. Answers every request with `status`,
/// `headers` and `body`, for at most `max_requests` requests.
pub fn static_http(
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    max_requests: usize,
) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 8192];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    Ok(url)
}

/// What a hostile HTTP server ([`hostile_http`]) sends as a body.
#[derive(Clone, Copy, Debug)]
pub enum HostileBody {
    /// Declares this many bytes, then sends zeros until the client leaves.
    Declared(u64),
    /// Chunked, without end, until the client leaves.
    Endless,
    /// Chunked, one byte every 100 ms, until the client leaves: a peer
    /// that is never silent long enough for a read timeout.
    Trickle,
}

/// An HTTP server on loopback that answers each request (at most
/// `max_requests`) with `status` and a body that never ends well. Returns
/// its URL and the body bytes it managed to send, in all: what the client
/// read, give or take the sockets' buffers.
pub fn hostile_http(
    status: u16,
    body: HostileBody,
    max_requests: usize,
) -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut s) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let mut buf = [0u8; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = match body {
                    HostileBody::Declared(n) => {
                        format!("HTTP/1.1 {status} X\r\ncontent-length: {n}\r\n\r\n")
                    }
                    HostileBody::Endless | HostileBody::Trickle => {
                        format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n")
                    }
                };
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if let HostileBody::Trickle = body {
                    // 10 minutes at most: the client is meant to leave long before.
                    for _ in 0..6000 {
                        if s.write_all(b"1\r\n0\r\n").is_err() {
                            return;
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return;
                }
                let piece = vec![b'0'; 64 * 1024];
                let chunk = match body {
                    HostileBody::Declared(_) => piece,
                    HostileBody::Endless | HostileBody::Trickle => {
                        let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
                        c.extend_from_slice(&piece);
                        c.extend_from_slice(b"\r\n");
                        c
                    }
                };
                // 16 GiB at most: the client is meant to leave long before.
                for _ in 0..(1u64 << 18) {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                    counter.fetch_add(64 * 1024, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((url, sent))
}
