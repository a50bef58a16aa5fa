//! A store upgrade on a store of realistic shape, with the real binaries,
//! the listener reaching the server through a simulated WAN, against an
//! rsync baseline over the same simulated WAN in the same run. Prints
//! Markdown tables.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/tillup-storebench [--folder-mb 205] [--files 2630] [--terminals 8]
//!     [--changed-share 0.055] [--wan-mbit 0] [--rtt-ms 0] [--runs 1] [--sizes 50,200,800]
//! ```
//!
//! Scenarios: (a) the first upgrade 1.0.0 → 1.1.0 right after tillup was
//! installed on a store running 1.0.0 (the host holds no blobs and no
//! backups); (b) the next upgrade 1.1.0 → 1.2.0 on the same store, after a
//! day of sales changed the terminals' own files. The agents are reached
//! directly on loopback (the LAN); only the listener's link to the server
//! crosses the WAN simulator.
//!
//! The oracle is independent of the code under test: a plain walk with
//! SHA-256 of the new release folder plus each terminal's own files as
//! they were before the upgrade (`data/sales.log`, which the simulated POS
//! program appends to at every start, must start with what it held).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tillup_e2e::realistic::{self, ChangeSummary, Digest32, Shape};
use tillup_e2e::wan::{Wan, WanConfig};
use tillup_e2e::{Store, StoreSpec, bin, run, text};

/// 1 MB, as printed: 10^6 bytes.
const MB: f64 = 1e6;
/// Each terminal's own files.
const TERMINAL_BYTES: u64 = 300_000;
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];
/// Written by the simulated POS program at every start.
const SALES_LOG: &str = "data/sales.log";

#[derive(Parser, Clone)]
#[command(
    about = "A store upgrade on a store of realistic shape through a simulated WAN, against rsync."
)]
struct Args {
    /// Size of the program folder, in MB (10^6 bytes).
    #[arg(long, default_value_t = 205)]
    folder_mb: u64,
    /// Files in the program folder.
    #[arg(long, default_value_t = 2630)]
    files: usize,
    /// POS terminals in the store.
    #[arg(long, default_value_t = 8)]
    terminals: u32,
    /// Share of the bytes each release changes (changed and new files).
    #[arg(long, default_value_t = 0.055)]
    changed_share: f64,
    /// WAN bandwidth per direction in Mbit/s; 0 for no limit.
    #[arg(long, default_value_t = 0.0)]
    wan_mbit: f64,
    /// WAN round-trip time in ms.
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// Repetitions, each on a new store.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Folder sizes in MB: repeat (a) and (b) for each (file count scaled
    /// in proportion, no rsync) and show how the stopped time grows.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<u64>,
    /// Seed of the generated releases.
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Bound on each `tillup update` and each rsync push, in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Work in this folder and keep it (default: a temporary folder,
    /// removed at the end).
    #[arg(long)]
    keep: Option<PathBuf>,
}

impl Args {
    fn wan(&self) -> WanConfig {
        WanConfig {
            mbit: self.wan_mbit,
            rtt: Duration::from_millis(self.rtt_ms),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.terminals >= 1, "--terminals must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.folder_mb >= 1, "--folder-mb must be at least 1");
    ensure!(
        (0.0..0.5).contains(&args.changed_share),
        "--changed-share must be in [0, 0.5)"
    );
    ensure!(
        args.wan_mbit >= 0.0 && args.wan_mbit.is_finite(),
        "--wan-mbit must be 0 (no limit) or more"
    );
    for b in ["tillup", "tillup-agent", "tillup-server", "pos-sim"] {
        bin(b)?;
    }
    let (work, _tmp) = match &args.keep {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            (dir.canonicalize()?, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("tillup-storebench-")
                .tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    if args.sizes.is_empty() {
        let rsync = rsync_path()?;
        main_table(&args, &work, &rsync)
    } else {
        sweep(&args, &work)
    }
}

/// `rsync`, or a clear error.
fn rsync_path() -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v rsync"])
        .output()
        .context("running sh")?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() {
        bail!(
            "rsync is not installed: the baseline needs it. Install it (Debian: `apt-get install -y rsync`) and run again"
        );
    }
    Ok(path.into())
}

// ---------------------------------------------------------------- releases

/// The three generated releases.
struct Releases {
    dirs: [PathBuf; 3],
    first_bytes: u64,
    first_files: usize,
    changes: [ChangeSummary; 2],
}

/// What makes a generated folder runnable by the agent: `VERSION`, and a
/// `bin/pos-sim` that runs the simulated POS program (a small script, so
/// the program's own size does not distort the folder's).
fn make_runnable(dir: &Path, version: &str) -> Result<()> {
    fs::write(dir.join("VERSION"), format!("{version}\n"))?;
    let pos = bin("pos-sim")?.canonicalize()?;
    let pos = pos.to_str().context("the pos-sim path is not UTF-8")?;
    ensure!(!pos.contains('\''), "the pos-sim path holds a quote: {pos}");
    let stub = dir.join("bin/pos-sim");
    fs::create_dir_all(stub.parent().context("has a folder")?)?;
    fs::write(&stub, format!("#!/bin/sh\nexec '{pos}' \"$@\"\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn make_releases(dir: &Path, shape: &Shape, changed_share: f64) -> Result<Releases> {
    let dirs = VERSIONS.map(|v| dir.join(v));
    for d in &dirs {
        if d.exists() {
            fs::remove_dir_all(d)?;
        }
    }
    realistic::generate(&dirs[0], shape)?;
    make_runnable(&dirs[0], VERSIONS[0])?;
    let first = realistic::walk(&dirs[0])?;
    let mut changes = Vec::new();
    for (i, pair) in dirs.windows(2).enumerate() {
        let seed = shape.seed + 1 + i as u64;
        changes.push(realistic::next_release(
            &pair[0],
            &pair[1],
            changed_share,
            seed,
        )?);
        make_runnable(&pair[1], VERSIONS[i + 1])?;
    }
    let changes: [ChangeSummary; 2] = changes
        .try_into()
        .map_err(|_| anyhow::anyhow!("two next releases"))?;
    for d in &dirs {
        ensure!(
            realistic::walk(d)?.keys().all(|p| !realistic::preserved(p)),
            "a generated release holds a terminal-local path"
        );
    }
    Ok(Releases {
        dirs,
        first_bytes: first.values().map(|d| d.size).sum(),
        first_files: first.len(),
        changes,
    })
}

/// A store running the first release, each terminal with its own files.
fn new_store(args: &Args, root: &Path, rel: &Releases) -> Result<Store> {
    let spec = StoreSpec {
        terminals: (1..=args.terminals).map(|n| (n, "CP-500")).collect(),
        ..StoreSpec::default()
    };
    Store::with_release(
        Some(root),
        &spec,
        |_| Ok((rel.dirs[0].clone(), VERSIONS[0].to_owned())),
        |n, folder| realistic::terminal_files(folder, n, TERMINAL_BYTES, args.seed),
    )
}

// ------------------------------------------------------------------ oracle

/// A terminal's own files (under the preserve patterns), and the sales
/// log's bytes.
struct Own {
    files: BTreeMap<String, Digest32>,
    sales_log: Vec<u8>,
}

fn own_files(folder: &Path) -> Result<Own> {
    Ok(Own {
        files: realistic::walk_where(folder, realistic::preserved)?,
        sales_log: fs::read(folder.join(SALES_LOG)).unwrap_or_default(),
    })
}

/// Whether `folder` is exactly `release` plus `own` (the sales log may
/// have grown); `Err` says what differs.
fn check_folder(folder: &Path, release: &BTreeMap<String, Digest32>, own: &Own) -> Result<()> {
    let mut expected = release.clone();
    expected.extend(own.files.iter().map(|(p, d)| (p.clone(), d.clone())));
    let mut now = realistic::walk(folder)?;
    if expected.contains_key(SALES_LOG) || now.contains_key(SALES_LOG) {
        let log = fs::read(folder.join(SALES_LOG)).unwrap_or_default();
        ensure!(
            log.starts_with(&own.sales_log),
            "{SALES_LOG} lost what it held"
        );
        expected.remove(SALES_LOG);
        now.remove(SALES_LOG);
    }
    let missing: Vec<_> = expected.keys().filter(|p| !now.contains_key(*p)).collect();
    let extra: Vec<_> = now.keys().filter(|p| !expected.contains_key(*p)).collect();
    let differ: Vec<_> = expected
        .iter()
        .filter(|(p, d)| now.get(*p).is_some_and(|n| n != *d))
        .map(|(p, _)| p)
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{} missing (e.g. {:?}), {} extra (e.g. {:?}), {} differ (e.g. {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        differ.len(),
        differ.first()
    );
    Ok(())
}

/// The floor: the new release's new or changed contents (by hash, once
/// each) plus every terminal's own files, each compressed once with zstd -3.
fn floor(old: &Path, new: &Path, owns: &[(u32, Own)], terminal_folders: &[PathBuf]) -> Result<u64> {
    let old_hashes: BTreeSet<[u8; 32]> = realistic::walk(old)?.values().map(|d| d.sha256).collect();
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (p, d) in realistic::walk(new)? {
        if !old_hashes.contains(&d.sha256) && seen.insert(d.sha256) {
            total += realistic::zstd3(&fs::read(new.join(&p))?)?;
        }
    }
    for ((_, own), folder) in owns.iter().zip(terminal_folders) {
        for (p, d) in &own.files {
            if seen.insert(d.sha256) {
                total += realistic::zstd3(&fs::read(folder.join(p))?)?;
            }
        }
    }
    Ok(total)
}

// -------------------------------------------------------------------- rows

/// One measured row.
struct Row {
    scenario: String,
    method: String,
    wall: Duration,
    /// Each terminal's stopped time, in ms.
    stopped: Vec<i64>,
    /// Bytes towards the store (downloads) and from it.
    down: u64,
    up: u64,
    requests: Option<u64>,
    /// `Ok` when every folder is what it must be.
    equal: Result<(), String>,
    floor: u64,
}

impl Row {
    /// WAN bytes both ways over the floor.
    fn over_floor(&self) -> f64 {
        (self.down + self.up) as f64 / self.floor.max(1) as f64
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / MB)
}

fn stopped_text(v: &[i64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let median = (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2;
    format!("{} / {} / {}", v[0], median, v[v.len() - 1])
}

fn equal_text(e: &Result<(), String>) -> String {
    match e {
        Ok(()) => "yes".into(),
        Err(why) => format!("**no**: {}", why.replace('|', "/")),
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "| scenario | method | wall s | till stopped ms (min / median / max) | WAN down MB | WAN up MB | WAN requests | folders equal | floor MB | WAN / floor |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.scenario,
            r.method,
            r.wall.as_secs_f64(),
            stopped_text(&r.stopped),
            mb(r.down),
            mb(r.up),
            r.requests.map_or("—".into(), |n| n.to_string()),
            equal_text(&r.equal),
            mb(r.floor),
            r.over_floor(),
        );
    }
}

// ------------------------------------------------------------------ tillup

/// Runs `tillup update --json` on `store` (whose listener reaches the
/// server through `wan`), upgrading to `new` from `old`.
fn tillup_scenario(
    args: &Args,
    store: &Store,
    wan: &Wan,
    scenario: &str,
    (old, new): (&Path, &Path),
    version: &str,
) -> Result<Row> {
    let owns: Vec<(u32, Own)> = store
        .terminals
        .values()
        .map(|t| Ok((t.number, own_files(&t.folder)?)))
        .collect::<Result<_>>()?;
    let folders: Vec<PathBuf> = store.terminals.values().map(|t| t.folder.clone()).collect();
    let floor = floor(old, new, &owns, &folders)?;
    let release = realistic::walk(new)?;

    let mut cmd = Command::new(bin("tillup")?);
    cmd.arg("--config")
        .arg(&store.listener_config)
        .args(["update", "--json"])
        .env_remove("TILLUP_NOW");
    let before = wan.counters();
    let start = Instant::now();
    let out = run(cmd, args.timeout())?;
    let wall = start.elapsed();
    // The listener's log (TILLUP_LOG sets its level), to see where the time goes.
    if let Some(dir) = std::env::var_os("TILLUP_STOREBENCH_LOGS") {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("listener-{version}.log")), &out.stderr)?;
    }
    let crossed = wan.counters().since(&before);
    ensure!(out.status.success(), "tillup update failed: {}", text(&out));
    if crossed.unparsed > 0 {
        eprintln!(
            "  warning: {} WAN connections were not HTTP/1.1 request framing; their requests after that are not counted",
            crossed.unparsed
        );
    }
    let outcome: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    let upgrades = outcome["upgrades"].as_array().context("no upgrades")?;
    ensure!(
        upgrades.len() == 1,
        "expected one upgrade to {version}: {outcome}"
    );
    let mut stopped = Vec::new();
    let mut problems = Vec::new();
    for t in upgrades[0]["terminals"]
        .as_array()
        .context("no terminals")?
    {
        if t["result"] != "upgraded" {
            problems.push(format!("terminal {}: {}", t["number"], t["result"]));
        }
        if let Some(ms) = t["stopped_ms"].as_i64() {
            stopped.push(ms);
        }
    }
    let mut equal = Ok(());
    if !problems.is_empty() {
        equal = Err(problems.join(", "));
    } else {
        for (t, (_, own)) in store.terminals.values().zip(&owns) {
            let ok = t
                .wait_running(version)
                .and_then(|()| check_folder(&t.folder, &release, own));
            if let Err(e) = ok {
                equal = Err(format!("terminal {}: {e:#}", t.number));
                break;
            }
        }
    }
    if stopped.len() != store.terminals.len() && equal.is_ok() {
        equal = Err(format!(
            "{} of {} terminals reported a stopped time",
            stopped.len(),
            store.terminals.len()
        ));
    }
    Ok(Row {
        scenario: scenario.into(),
        method: "tillup".into(),
        wall,
        stopped,
        down: crossed.down,
        up: crossed.up,
        requests: Some(crossed.requests),
        equal,
        floor,
    })
}

/// Scenarios (a) and (b) with tillup on a new store.
fn tillup_pair(
    args: &Args,
    root: &Path,
    rel: &Releases,
    label: &str,
    mut between: impl FnMut(usize, &Store, &Row) -> Result<Vec<Row>>,
) -> Result<Vec<Row>> {
    let mut store = new_store(args, root, rel)?;
    let wan = Wan::start(store.server.url(), args.wan())?;
    let key = store.server.public_key.clone();
    store.write_listener_config_for(wan.url(), &key, "prompt", &[])?;
    let mut rows = Vec::new();
    for i in 0..2 {
        if i == 1 {
            // A day of sales between the two upgrades.
            for t in store.terminals.values() {
                realistic::terminal_day(&t.folder, t.number, args.seed)?;
            }
        }
        store
            .server
            .publish(&rel.dirs[i + 1], VERSIONS[i + 1], &[])?;
        let scenario = format!(
            "({}) {} {} → {}{label}",
            ["a", "b"][i],
            ["first upgrade", "next upgrade"][i],
            VERSIONS[i],
            VERSIONS[i + 1]
        );
        let row = tillup_scenario(
            args,
            &store,
            &wan,
            &scenario,
            (&rel.dirs[i], &rel.dirs[i + 1]),
            VERSIONS[i + 1],
        )?;
        let more = between(i, &store, &row)?;
        rows.push(row);
        rows.extend(more);
    }
    // Stop the processes before their folders go.
    drop(wan);
    store.terminals.clear();
    Ok(rows)
}

// ------------------------------------------------------------------- rsync

/// An rsync daemon on 127.0.0.1, killed when dropped.
struct RsyncDaemon {
    child: Child,
    port: u16,
    module: PathBuf,
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn id(flag: &str) -> Result<String> {
    let out = Command::new("id").arg(flag).output()?;
    ensure!(out.status.success(), "id {flag} failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

impl RsyncDaemon {
    /// Starts `rsync --daemon` on a free port of 127.0.0.1, with one
    /// writable module `mod` at `dir/module`.
    fn start(rsync: &Path, dir: &Path) -> Result<Self> {
        let module = dir.join("module");
        fs::create_dir_all(&module)?;
        let config = dir.join("rsyncd.conf");
        fs::write(
            &config,
            format!(
                "use chroot = no\nlog file = {}\npid file = {}\n\n[mod]\n    path = {}\n    read only = no\n    uid = {}\n    gid = {}\n",
                dir.join("rsyncd.log").display(),
                dir.join("rsyncd.pid").display(),
                module.display(),
                id("-u")?,
                id("-g")?,
            ),
        )?;
        for _ in 0..5 {
            // A port bound then released: the daemon binds it next.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let _ = fs::remove_file(dir.join("rsyncd.pid"));
            let child = Command::new(rsync)
                .arg("--daemon")
                .arg("--no-detach")
                .arg("--address=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(format!("--config={}", config.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting rsync --daemon")?;
            let mut d = Self {
                child,
                port,
                module: module.clone(),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(d);
                }
                if d.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!(
            "rsync --daemon did not start; its log:\n{}",
            fs::read_to_string(dir.join("rsyncd.log")).unwrap_or_default()
        )
    }
}

/// How the new release's mtimes relate to the terminals' old folders.
#[derive(Clone, Copy)]
enum Mtimes {
    /// Every file of the new release is newer (a release unpacked at head
    /// office): rsync's quick check matches nothing, it checksums every file.
    Newer,
    /// Unchanged files keep the old mtime: rsync skips them by size and mtime.
    Same,
}

fn set_mtime(path: &Path, t: SystemTime) -> Result<()> {
    fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(t)
        .with_context(|| path.display().to_string())
}

/// `Total bytes sent: 1,234` → 1234.
fn stat(stdout: &str, name: &str) -> Result<u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(name))
        .with_context(|| format!("rsync --stats printed no `{name}`"))?;
    let digits: String = line[name.len()..]
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    Ok(digits.parse()?)
}

/// Pushes `new` into `terminals` copies of `old` (each with its own
/// files), one after another, through a WAN simulator like the listener's.
fn rsync_scenario(
    args: &Args,
    rsync: &Path,
    daemon: &RsyncDaemon,
    scenario: &str,
    (old, new): (&Path, &Path),
    mtimes: Mtimes,
    floor: u64,
) -> Result<Row> {
    // Fresh copies of the old folder, all aged two days.
    if daemon.module.exists() {
        fs::remove_dir_all(&daemon.module)?;
    }
    fs::create_dir_all(&daemon.module)?;
    let aged = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let old_files = realistic::walk(old)?;
    let mut owns = Vec::new();
    for n in 1..=args.terminals {
        let copy = daemon.module.join(format!("term-{n}"));
        tillup_e2e::copy_dir(old, &copy)?;
        realistic::terminal_files(&copy, n, TERMINAL_BYTES, args.seed)?;
        for p in realistic::paths(&copy)? {
            set_mtime(&copy.join(p), aged)?;
        }
        owns.push(own_files(&copy)?);
    }
    let now = SystemTime::now();
    let release = realistic::walk(new)?;
    for (p, d) in &release {
        let same = matches!(mtimes, Mtimes::Same) && old_files.get(p) == Some(d);
        set_mtime(&new.join(p), if same { aged } else { now })?;
    }

    let wan = Wan::start(&format!("127.0.0.1:{}", daemon.port), args.wan())?;
    let (mut sent, mut received) = (0, 0);
    let start = Instant::now();
    for n in 1..=args.terminals {
        let mut cmd = Command::new(rsync);
        cmd.args([
            "-a",
            "--delete",
            "--exclude",
            "config/local/",
            "--exclude",
            "data/",
            "--exclude",
            "logs/",
            "--stats",
        ])
        .arg(format!("{}/", new.display()))
        .arg(format!("rsync://127.0.0.1:{}/mod/term-{n}/", wan.port()));
        let out = run(cmd, args.timeout())?;
        ensure!(out.status.success(), "rsync failed: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        sent += stat(&stdout, "Total bytes sent:")?;
        received += stat(&stdout, "Total bytes received:")?;
    }
    let wall = start.elapsed();
    let wire = wan.counters();
    drop(wan);

    let mut equal = Ok(());
    for (n, own) in (1..=args.terminals).zip(&owns) {
        if let Err(e) = check_folder(&daemon.module.join(format!("term-{n}")), &release, own) {
            equal = Err(format!("copy {n}: {e:#}"));
            break;
        }
    }
    let method = match mtimes {
        Mtimes::Newer => "rsync, new files' mtimes newer",
        Mtimes::Same => "rsync, unchanged files' mtimes kept",
    };
    eprintln!(
        "  {method}: {} MB down, {} MB up on the wire",
        mb(wire.up),
        mb(wire.down)
    );
    fs::remove_dir_all(&daemon.module)?;
    Ok(Row {
        scenario: scenario.into(),
        method: method.into(),
        wall,
        stopped: Vec::new(),
        // From head office's `--stats`: what it sent goes down to the store.
        down: sent,
        up: received,
        requests: None,
        equal,
        floor,
    })
}

// -------------------------------------------------------------------- runs

fn header(args: &Args, shape: &Shape, rel: &Releases) {
    let wan = if args.wan_mbit > 0.0 {
        format!("{} Mbit/s each way", args.wan_mbit)
    } else {
        "no bandwidth limit".into()
    };
    println!(
        "## tillup-storebench: {} terminals, WAN {wan}, RTT {} ms\n",
        args.terminals, args.rtt_ms
    );
    println!(
        "Release 1.0.0: {} files, {} MB (asked: {} files, {} MB; `bin/pos-sim` and `VERSION` included). Each terminal also holds {} KB of its own files.",
        rel.first_files,
        mb(rel.first_bytes),
        shape.files,
        mb(shape.folder_bytes),
        TERMINAL_BYTES / 1000
    );
    for (i, c) in rel.changes.iter().enumerate() {
        println!(
            "Release {}: {} files, {} MB; {} files changed ({} MB), {} added ({} MB), {} removed: {:.1} % of the bytes new or changed.",
            VERSIONS[i + 1],
            c.files,
            mb(c.bytes),
            c.changed_files,
            mb(c.changed_bytes),
            c.added_files,
            mb(c.added_bytes),
            c.removed_files,
            c.share() * 100.0
        );
    }
    println!();
}

fn shape_of(args: &Args, folder_mb: u64) -> Shape {
    Shape {
        folder_bytes: folder_mb * 1_000_000,
        files: ((args.files as f64 * folder_mb as f64 / args.folder_mb as f64).round() as usize)
            .max(16),
        seed: args.seed,
    }
}

fn main_table(args: &Args, work: &Path, rsync: &Path) -> Result<()> {
    let shape = Shape {
        folder_bytes: args.folder_mb * 1_000_000,
        files: args.files,
        seed: args.seed,
    };
    eprintln!("generating the releases in {} …", work.display());
    let rel = make_releases(&work.join("releases"), &shape, args.changed_share)?;
    let daemon = RsyncDaemon::start(rsync, &work.join("rsync"))?;
    header(args, &shape, &rel);
    let mut rows = Vec::new();
    for r in 1..=args.runs {
        let label = if args.runs > 1 {
            format!(" #{r}")
        } else {
            String::new()
        };
        let root = work.join(format!("store-{r}"));
        eprintln!("run {r}: the store in {} …", root.display());
        rows.extend(tillup_pair(args, &root, &rel, &label, |i, _, row| {
            eprintln!(
                "  {}: tillup {:.1} s; rsync baselines …",
                row.scenario,
                row.wall.as_secs_f64()
            );
            let pair = (rel.dirs[i].as_path(), rel.dirs[i + 1].as_path());
            let mut more = Vec::new();
            for m in [Mtimes::Newer, Mtimes::Same] {
                more.push(rsync_scenario(
                    args,
                    rsync,
                    &daemon,
                    &row.scenario,
                    pair,
                    m,
                    row.floor,
                )?);
            }
            Ok(more)
        })?);
        fs::remove_dir_all(&root)?;
    }
    print_rows(&rows);
    println!();
    println!(
        "Floor: the new release's new or changed files, once each, plus every terminal's own files, each compressed once with zstd -3. WAN / floor = (down + up) / floor."
    );
    println!(
        "rsync pushes from head office into {} copies of the old folder (with their own files), one after another, through a WAN simulator of the same settings; its bytes are its `--stats` (sent counted as down).",
        args.terminals
    );
    println!();
    println!(
        "| scenario | tillup wall / rsync wall (mtimes newer) | tillup wall / rsync wall (mtimes kept) |"
    );
    println!("| --- | ---: | ---: |");
    for chunk in rows.chunks(3) {
        if let [t, newer, same] = chunk {
            println!(
                "| {} | {:.2} | {:.2} |",
                t.scenario,
                t.wall.as_secs_f64() / newer.wall.as_secs_f64(),
                t.wall.as_secs_f64() / same.wall.as_secs_f64()
            );
        }
    }
    drop(daemon);
    fs::remove_dir_all(work.join("releases"))?;
    fs::remove_dir_all(work.join("rsync"))?;
    Ok(())
}

/// (a) and (b) with tillup only, for each folder size.
fn sweep(args: &Args, work: &Path) -> Result<()> {
    println!(
        "## tillup-storebench --sizes: {} terminals, WAN {}, RTT {} ms\n",
        args.terminals,
        if args.wan_mbit > 0.0 {
            format!("{} Mbit/s each way", args.wan_mbit)
        } else {
            "no bandwidth limit".into()
        },
        args.rtt_ms
    );
    let mut lines = Vec::new();
    for &size in &args.sizes {
        ensure!(size >= 1, "sizes are in MB, at least 1");
        let shape = shape_of(args, size);
        let dir = work.join(format!("size-{size}"));
        eprintln!("{size} MB, {} files: generating …", shape.files);
        let rel = make_releases(&dir.join("releases"), &shape, args.changed_share)?;
        for r in 1..=args.runs {
            let label = if args.runs > 1 {
                format!(" #{r}")
            } else {
                String::new()
            };
            let rows = tillup_pair(
                args,
                &dir.join(format!("store-{r}")),
                &rel,
                &label,
                |_, _, row| {
                    eprintln!("  {}: {:.1} s", row.scenario, row.wall.as_secs_f64());
                    Ok(Vec::new())
                },
            )?;
            for row in rows {
                lines.push(format!(
                    "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.1} |",
                    mb(rel.first_bytes),
                    rel.first_files,
                    row.scenario,
                    row.wall.as_secs_f64(),
                    stopped_text(&row.stopped),
                    mb(row.down),
                    mb(row.up),
                    row.requests.unwrap_or(0),
                    equal_text(&row.equal),
                    row.over_floor(),
                ));
            }
        }
        if args.keep.is_none() {
            fs::remove_dir_all(&dir)?;
        }
    }
    println!(
        "| folder MB | files | scenario | wall s | till stopped ms (min / median / max) | WAN down MB | WAN up MB | WAN requests | folders equal | WAN / floor |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
