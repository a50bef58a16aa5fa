//! The real `tillup-agent` binary supervising the real `pos-sim`, each test
//! in its own temporary folder, talked to over HTTP on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use tillup_core::api::{
    self, AgentStatus, ErrorBody, HashList, HealthReport, MainState, Snapshot, StageChanges,
    StageReport, StageRequest, StartReport, StopReport, StopRequest, SwapReport, SwapRequest,
    agent as routes,
};
use tillup_core::install::SignedLog;
use tillup_core::manifest::FileEntry;
use tillup_core::{Manifest, Sha256Hex};
use tillup_fs::{HashCache, scan_folder};

const TOKEN: &str = "test-token-of-the-host";

/// The chain's key pair of a test: the agent pins the public half.
struct ChainKey {
    secret: tillup_core::sign::SecretKey,
    public_line: String,
    /// The next log's sequence.
    sequence: std::sync::atomic::AtomicU64,
}

impl ChainKey {
    fn new() -> Self {
        let keys = tillup_core::sign::generate_keys().unwrap();
        Self {
            secret: tillup_core::sign::SecretKey::parse(&keys.secret_file, None).unwrap(),
            public_line: keys.public_line,
            sequence: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A fresh log of channel `stable` naming release `version` with the
    /// manifest `manifest_bytes`, for every model, preserving nothing.
    fn sign(&self, version: &str, manifest_bytes: &[u8]) -> SignedLog {
        self.sign_preserving(version, manifest_bytes, &[])
    }

    /// [`ChainKey::sign`], the release keeping the terminal's files that
    /// match `preserve`.
    fn sign_preserving(
        &self,
        version: &str,
        manifest_bytes: &[u8],
        preserve: &[&str],
    ) -> SignedLog {
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = jiff::Timestamp::now();
        let log = serde_json::json!({
            "channel": "stable",
            "sequence": sequence,
            "generated": now.to_string(),
            "expires": (now + jiff::SignedDuration::from_hours(24 * 7)).to_string(),
            "releases": [{
                "version": version,
                "date": now.to_string(),
                "size": 0,
                "sha256": Sha256Hex::of(manifest_bytes).to_string(),
                "notes": {"en": "", "zh_cn": ""},
                "preserve": preserve,
            }],
        })
        .to_string();
        let signature = self.secret.sign(log.as_bytes(), "test").unwrap();
        SignedLog {
            log,
            signature,
            keys: Default::default(),
        }
    }
}

/// `target/debug/pos-sim`, next to the folder holding this test binary.
fn pos_sim_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(format!("pos-sim{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p tillup-pos-sim` first",
        p.display()
    );
    p
}

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn scan(p: &Path) -> Manifest {
    scan_folder(p, &mut HashCache::default()).unwrap()
}

/// A program folder holding version `version` and the real pos-sim.
fn program_folder(root: &Path, version: &str) {
    let bin = root.join("bin/pos-sim");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(pos_sim_binary(), &bin).unwrap();
    write(root, "VERSION", format!("{version}\n").as_bytes());
    write(root, "config/app.ini", b"[till]\nprinter = lpt1\n");
    write(root, "lib/report.dll", b"report engine v1");
    write(root, "lib/old.dll", b"removed in the next release");
}

struct Harness {
    key: ChainKey,
    dir: tempfile::TempDir,
    agent: Child,
    base: String,
    http: reqwest::Client,
}

/// Starts the agent binary on `config`; returns it and its base URL.
fn spawn_agent(config: &Path) -> (Child, String) {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_tillup-agent"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = agent.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the agent printed no address within 20 s");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (agent, base)
}

/// Waits, without a word to the agent, until `cond` holds (at most 30 s).
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("waited 30 s for {what}");
}

impl Harness {
    fn folder(&self) -> PathBuf {
        self.dir.path().join("cupos")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn busy_file(&self) -> PathBuf {
        self.state().join("pos/busy")
    }

    fn start(busy_timeout_secs: u64) -> Self {
        Self::with_watchdog(busy_timeout_secs, 600)
    }

    fn with_watchdog(busy_timeout_secs: u64, watchdog_secs: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = ChainKey::new();
        program_folder(&dir.path().join("cupos"), "1.0.0");
        let state = dir.path().join("state");
        let pos = state.join("pos");
        let config = format!(
            r#"terminal = 7
model = "CP-500"
token = "{TOKEN}"
trust_key = "{trust_key}"
listen = "127.0.0.1:0"
folder = {folder:?}
state_dir = {state:?}
watchdog_secs = {watchdog_secs}
[main]
command = ["{{folder}}/bin/pos-sim", "run", "--folder", "{{folder}}", "--state", {pos:?}]
stop_timeout_secs = 5
busy_file = {busy:?}
busy_timeout_secs = {busy_timeout_secs}
health_command = ["{{folder}}/bin/pos-sim", "probe", "--state", {pos:?}]
health_timeout_secs = 10
"#,
            folder = dir.path().join("cupos").to_str().unwrap(),
            state = state.to_str().unwrap(),
            trust_key = key.public_line,
            pos = pos.to_str().unwrap(),
            busy = pos.join("busy").to_str().unwrap(),
        );
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        let (agent, base) = spawn_agent(&config_path);
        // The agent's certificate is its own (a host pins it at pairing).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        Self {
            key,
            dir,
            agent,
            base,
            http,
        }
    }

    /// Kills the agent with SIGKILL (its main program lives on) and starts it again.
    fn restart(&mut self) {
        self.agent.kill().unwrap();
        self.agent.wait().unwrap();
        let (agent, base) = spawn_agent(&self.dir.path().join("agent.toml"));
        self.agent = agent;
        self.base = base;
    }

    /// Whether the main program runs, from its pid file alone.
    fn main_alive(&self) -> bool {
        std::fs::read_to_string(self.state().join("main.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
    }

    fn url(&self, route: &str) -> String {
        format!("{}{route}", self.base)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, route: &str) -> T {
        let res = self
            .http
            .get(self.url(route))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        ok_json(res).await
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: &B,
    ) -> T {
        let res = self
            .http
            .post(self.url(route))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        ok_json(res).await
    }

    async fn post_raw<B: serde::Serialize>(&self, route: &str, body: &B) -> reqwest::Response {
        self.http
            .post(self.url(route))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn status(&self) -> AgentStatus {
        self.get(routes::STATUS).await
    }

    async fn health(&self, version: &str) -> HealthReport {
        self.get(&format!("{}?version={version}", routes::HEALTH))
            .await
    }

    /// Waits (bounded) until the main program answers healthy on `version`.
    async fn healthy(&self, version: &str) {
        let h = self.health(version).await;
        assert!(
            h.healthy,
            "{h:?}; main.log: {}",
            std::fs::read_to_string(self.state().join("main.log")).unwrap_or_default()
        );
    }

    /// `PUT /v1/pack` with the whole of each of `blobs`.
    async fn put_pack(&self, blobs: &[&[u8]]) -> reqwest::Response {
        let whole: Vec<(&[u8], u64)> = blobs.iter().map(|b| (*b, 0)).collect();
        self.http
            .put(self.url(routes::PACK))
            .bearer_auth(TOKEN)
            .body(tillup_transfer::pack::in_memory(&whole, 1))
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/pack` for `hashes`: the answer.
    async fn get_pack(&self, hashes: &[Sha256Hex]) -> reqwest::Response {
        let req = api::PackRequest {
            blobs: hashes
                .iter()
                .map(|h| api::PackEntry {
                    sha256: *h,
                    from: 0,
                })
                .collect(),
        };
        self.http
            .post(self.url(routes::PACK))
            .bearer_auth(TOKEN)
            .json(&req)
            .send()
            .await
            .unwrap()
    }

    /// Stages, swaps in and starts a 2.0.0 that runs but reports itself unhealthy.
    async fn install_unhealthy_2_0_0(&self) -> StartReport {
        let new = release(self, "2.0.0", None);
        write(&new, "UNHEALTHY", b"printer driver 4 is missing\n");
        self.send_and_stage(&new, "2.0.0").await;
        let _: StopReport = self.post(routes::STOP, &StopRequest::default()).await;
        let v2 = SwapRequest {
            version: "2.0.0".parse().unwrap(),
        };
        assert!(
            self.post::<_, SwapReport>(routes::COMMIT, &v2)
                .await
                .swapped
        );
        self.post(routes::START, &()).await
    }

    /// Signs a log naming `manifest` as release `version` and sends the
    /// agent the manifest's bytes; returns the log.
    async fn sign_and_send(&self, version: &str, manifest: &Manifest) -> SignedLog {
        self.sign_and_send_preserving(version, manifest, &[]).await
    }

    async fn sign_and_send_preserving(
        &self,
        version: &str,
        manifest: &Manifest,
        preserve: &[&str],
    ) -> SignedLog {
        let bytes = manifest.to_bytes();
        let res = self.put_pack(&[&bytes]).await;
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        self.key.sign_preserving(version, &bytes, preserve)
    }

    /// Sends the blobs of `release` the agent lacks, then stages it.
    async fn send_and_stage(
        &self,
        release: &Path,
        version: &str,
    ) -> (Manifest, Vec<Sha256Hex>, StageReport) {
        self.send_and_stage_preserving(release, version, &[]).await
    }

    /// [`Harness::send_and_stage`] of a release keeping `preserve`.
    async fn send_and_stage_preserving(
        &self,
        release: &Path,
        version: &str,
        preserve: &[&str],
    ) -> (Manifest, Vec<Sha256Hex>, StageReport) {
        let manifest = scan(release);
        let wanted = HashList::new(manifest.hashes().into_iter().collect());
        let missing: HashList = self.post(routes::BLOBS_MISSING, &wanted).await;
        let bytes: Vec<Vec<u8>> = missing
            .hashes
            .iter()
            .map(|h| {
                let f = manifest.files().iter().find(|f| f.sha256 == *h).unwrap();
                std::fs::read(tillup_fs::join(release, &f.path)).unwrap()
            })
            .collect();
        let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        let res = self.put_pack(&refs).await;
        assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        let none: HashList = self.post(routes::BLOBS_MISSING, &wanted).await;
        assert!(none.hashes.is_empty());
        let req = StageRequest {
            version: version.parse().unwrap(),
            manifest: manifest.clone(),
            release: self
                .sign_and_send_preserving(version, &manifest, preserve)
                .await,
        };
        let report: StageReport = self.post(routes::STAGE, &req).await;
        (manifest, missing.hashes, report)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if let Some(pid) = std::fs::read_to_string(self.state().join("main.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

async fn ok_json<T: serde::de::DeserializeOwned>(res: reqwest::Response) -> T {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn error_of(res: reqwest::Response, want: StatusCode) -> String {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(status, want, "{text}");
    serde_json::from_str::<ErrorBody>(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .error
}

fn running(s: &AgentStatus) -> bool {
    matches!(s.main, MainState::Running { .. })
}

/// The new release: a changed file, an added file with a Chinese name, a
/// removed file, and the terminal's own sales log kept (as `preserve` would).
fn release(h: &Harness, version: &str, fail: Option<&str>) -> PathBuf {
    let new = h.dir.path().join(format!("release-{version}"));
    program_folder(&new, version);
    std::fs::remove_file(new.join("lib/old.dll")).unwrap();
    write(
        &new,
        "lib/report.dll",
        format!("report engine {version}").as_bytes(),
    );
    write(&new, "收银/说明.txt", "新版本的收银说明".as_bytes());
    write(
        &new,
        "data/sales.log",
        &std::fs::read(h.folder().join("data/sales.log")).unwrap(),
    );
    if let Some(text) = fail {
        write(&new, "FAIL_HEALTH", text.as_bytes());
    }
    new
}

#[tokio::test]
async fn status_reports_terminal_model_version_and_running_main() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let s = h.status().await;
    assert_eq!((s.terminal, s.model.as_str()), (7, "CP-500"));
    assert_eq!(s.version, Some("1.0.0".parse().unwrap()));
    assert!(running(&s), "{s:?}");
    assert!(
        !s.busy && s.free_bytes > 0 && s.staged.is_none() && s.previous.is_none(),
        "{s:?}"
    );
    let pid: u32 = std::fs::read_to_string(h.state().join("main.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(s.main, MainState::Running { pid });
}

#[tokio::test]
async fn a_request_in_a_protocol_the_agent_does_not_speak_is_refused_saying_so() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let speaking = |p: &str| {
        h.http
            .get(h.url(routes::SNAPSHOT))
            .bearer_auth(TOKEN)
            .header(tillup_core::api::PROTOCOL_HEADER, p.to_owned())
    };
    let err = error_of(
        speaking("99").send().await.unwrap(),
        StatusCode::UPGRADE_REQUIRED,
    )
    .await;
    assert!(err.contains("protocol 1, the request speaks 99"), "{err}");
    error_of(
        speaking("two").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Its own protocol, or none (an older host), is served.
    let _: Snapshot = ok_json(speaking("1").send().await.unwrap()).await;
    let _: Snapshot = h.get(routes::SNAPSHOT).await;
    // The status says what it speaks, to a host of any protocol.
    let status: AgentStatus = ok_json(
        h.http
            .get(h.url(routes::STATUS))
            .bearer_auth(TOKEN)
            .header(tillup_core::api::PROTOCOL_HEADER, "99")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.protocols, tillup_core::api::Protocols::THIS);
    assert!(running(&h.status().await), "nothing else changed");
}

#[tokio::test]
async fn stop_waits_while_busy_then_forces_and_start_brings_it_back() {
    let h = Harness::start(1);
    h.healthy("1.0.0").await;
    std::fs::write(h.busy_file(), "sale 42").unwrap();
    assert!(h.status().await.busy);
    let stop: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    assert!(
        stop.was_running && stop.forced && stop.waited_busy_ms > 0,
        "{stop:?}"
    );
    assert_eq!(h.status().await.main, MainState::Stopped);
    let again: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    assert!(!again.was_running && !again.forced, "{again:?}");

    std::fs::remove_file(h.busy_file()).unwrap();
    let start: StartReport = h.post(routes::START, &()).await;
    assert!(!start.was_running);
    assert_eq!(h.status().await.main, MainState::Running { pid: start.pid });
    h.healthy("1.0.0").await;
    let again: StartReport = h.post(routes::START, &()).await;
    assert!(again.was_running && again.pid == start.pid);

    // Not busy: a plain graceful stop.
    let stop: StopReport = h
        .post(
            routes::STOP,
            &StopRequest {
                busy_timeout_secs: Some(30),
            },
        )
        .await;
    assert!(
        stop.was_running && !stop.forced && stop.waited_busy_ms == 0,
        "{stop:?}"
    );
    let log = std::fs::read_to_string(h.state().join("pos/heartbeat.json")).unwrap();
    assert!(log.contains("\"stopped\""), "{log}");
}

#[tokio::test]
async fn snapshot_changes_are_the_folder_now_against_a_recent_whole_snapshot() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let whole: Snapshot = h.get(routes::SNAPSHOT).await;
    let since = whole.digest.expect("a digest");
    assert_eq!(since, whole.manifest.digest());
    std::fs::write(h.folder().join("config/app.ini"), b"changed since").unwrap();
    std::fs::write(h.folder().join("new.txt"), b"new").unwrap();
    let route = |d: &Sha256Hex| format!("{}?since={d}", routes::SNAPSHOT_CHANGES);
    let now: api::SnapshotChanges = h.get(&route(&since)).await;
    assert_eq!(now.since, since);
    assert_eq!(now.version, Some("1.0.0".parse().unwrap()));
    // Applied to the whole snapshot, the changes give the folder as it is.
    assert_eq!(
        whole.manifest.with_changes(&now.changes).unwrap(),
        scan(&h.folder())
    );
    let upserted: Vec<&str> = now.changes.upsert.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(upserted, ["config/app.ini", "new.txt"]);
    // Asked again, the same answer: the base is kept for a retry.
    let again: api::SnapshotChanges = h.get(&route(&since)).await;
    assert_eq!(again, now);

    // A snapshot it does not hold (never served, or pushed out by newer
    // ones): 409, take a whole one.
    for content in ["one", "two"] {
        std::fs::write(h.folder().join("new.txt"), content).unwrap();
        let _: Snapshot = h.get(routes::SNAPSHOT).await;
    }
    for unknown in [since, Sha256Hex::of(b"never")] {
        let res = h
            .http
            .get(h.url(&route(&unknown)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let body: ErrorBody = res.json().await.unwrap();
        assert!(
            body.error.contains("take a whole snapshot"),
            "{}",
            body.error
        );
    }
    let res = h
        .http
        .get(h.url(&format!("{}?since=nothex", routes::SNAPSHOT_CHANGES)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[cfg(unix)]
#[tokio::test]
async fn a_folder_that_cannot_be_backed_up_is_a_409_naming_the_file_not_an_internal_error() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    std::os::unix::fs::symlink("/etc/passwd", h.folder().join("config/linked.ini")).unwrap();
    let res = h
        .http
        .get(h.url(routes::SNAPSHOT))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let error = error_of(res, StatusCode::CONFLICT).await;
    assert!(error.contains("config/linked.ini"), "{error}");
    assert!(error.contains("symbolic link"), "{error}");
    assert!(error.contains("replace it"), "{error}");
    // Fixed by the store, the folder is backed up again.
    std::fs::remove_file(h.folder().join("config/linked.ini")).unwrap();
    let fixed: Snapshot = h.get(routes::SNAPSHOT).await;
    assert_eq!(fixed.manifest, scan(&h.folder()));
}

#[tokio::test]
async fn snapshot_matches_scan_and_its_files_come_in_a_pack() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let snap: Snapshot = h.get(routes::SNAPSHOT).await;
    assert_eq!(snap.manifest, scan(&h.folder()));
    assert_eq!(snap.version, Some("1.0.0".parse().unwrap()));
    let entry = snap
        .manifest
        .files()
        .iter()
        .find(|f| f.path.as_str() == "config/app.ini")
        .unwrap();
    let res = h.get_pack(&[entry.sha256]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let raw = res.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = tillup_fs::BlobStore::open(dir.path()).unwrap();
    let mut batch = store.batch("").unwrap();
    let mut out = tillup_transfer::Unpacked::default();
    tillup_transfer::pack::read_pack(
        &raw[..],
        &mut batch,
        &mut |_, total| {
            (total == entry.size)
                .then_some(())
                .ok_or_else(|| "size".into())
        },
        &mut |_| {},
        &mut out,
    )
    .unwrap();
    batch.finish().unwrap();
    assert_eq!(
        store.read(&entry.sha256).unwrap(),
        b"[till]\nprinter = lpt1\n"
    );
    let res = h.get_pack(&[Sha256Hex::of(b"nothing")]).await;
    error_of(res, StatusCode::NOT_FOUND).await;
}

/// The host stages the release before the stop and the terminal's own
/// files after it, as changes to what is staged: applied only to the
/// folder they name, leading only to the folder they name, and asked
/// again (a lost answer) they change nothing.
#[tokio::test]
async fn staging_by_changes_applies_only_to_the_folder_named() {
    let h = Harness::start(60);
    let new = release(&h, "2.0.0", None);
    let (staged, _, _) = h.send_and_stage(&new, "2.0.0").await;
    // The terminal's config as it is after the stop, over the release's.
    let config = b"till = 7\n".as_slice();
    let res = h.put_pack(&[config]).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let mut files = staged.files().to_vec();
    files.push(FileEntry {
        path: tillup_core::RelPath::new("config/till.ini").unwrap(),
        size: config.len() as u64,
        sha256: Sha256Hex::of(config),
        exec: false,
    });
    let target = Manifest::new(files).unwrap();
    let req = StageChanges {
        version: "2.0.0".parse().unwrap(),
        base: staged.digest(),
        changes: staged.changes_to(&target),
        result: target.digest(),
        release: h.sign_and_send("2.0.0", &target).await,
    };

    // Changes that lead elsewhere than they say: refused, nothing staged.
    let wrong = StageChanges {
        result: Sha256Hex::of(b"another folder"),
        ..req.clone()
    };
    let msg = error_of(
        h.post_raw(routes::STAGE_CHANGES, &wrong).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(msg.contains("not to"), "{msg}");
    // From a folder that is not the one staged: 409, send the whole.
    let elsewhere = StageChanges {
        base: Sha256Hex::of(b"another folder"),
        ..req.clone()
    };
    let msg = error_of(
        h.post_raw(routes::STAGE_CHANGES, &elsewhere).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(msg.contains("send the whole folder"), "{msg}");
    let staging = h.dir.path().join("cupos.tillup-staging");
    assert_eq!(scan(&staging), staged, "refusals change nothing");

    let _: StageReport = h.post(routes::STAGE_CHANGES, &req).await;
    assert_eq!(scan(&staging), target);
    // Asked again: already there.
    let _: StageReport = h.post(routes::STAGE_CHANGES, &req).await;
    assert_eq!(scan(&staging), target);
}

/// The commit checks the staging folder against the terminal's own files
/// as a snapshot saw them while the program was stopped, without looking
/// at every file again; once the program has run since, it looks again.
#[tokio::test]
async fn a_commit_checks_the_own_files_again_once_the_program_ran_since_the_snapshot() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let swap = SwapRequest {
        version: "2.0.0".parse().unwrap(),
    };
    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    let _: Snapshot = h.get(routes::SNAPSHOT).await;
    let new = release(&h, "2.0.0", None);
    h.send_and_stage_preserving(&new, "2.0.0", &["data/**"])
        .await;
    // It sold meanwhile: the staged folder holds an old sales log.
    let _: StartReport = h.post(routes::START, &()).await;
    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    write(&h.folder(), "data/sales.log", b"sold after the snapshot");
    let msg = error_of(
        h.post_raw(routes::COMMIT, &swap).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(msg.contains("data/sales.log"), "{msg}");
    assert_eq!(h.status().await.version, Some("1.0.0".parse().unwrap()));

    // Staged again from a snapshot of the stopped program: it swaps.
    let _: Snapshot = h.get(routes::SNAPSHOT).await;
    let new = release(&h, "2.0.0", None);
    h.send_and_stage_preserving(&new, "2.0.0", &["data/**"])
        .await;
    let done: SwapReport = h.post(routes::COMMIT, &swap).await;
    assert!(done.swapped);
    assert_eq!(
        std::fs::read(h.folder().join("data/sales.log")).unwrap(),
        b"sold after the snapshot"
    );
}

#[tokio::test]
async fn stage_commit_rollback_round_trip() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let old = scan(&h.folder());
    let new = release(&h, "2.0.0", None);
    let (manifest, sent, report) = h.send_and_stage(&new, "2.0.0").await;
    // Only what the terminal lacks travels: the version, the changed and the new file.
    let want: std::collections::BTreeSet<Sha256Hex> =
        ["VERSION", "lib/report.dll", "收银/说明.txt"]
            .iter()
            .map(|p| {
                manifest
                    .get(&tillup_core::RelPath::new(p).unwrap())
                    .unwrap()
                    .sha256
            })
            .collect();
    assert_eq!(
        sent.into_iter().collect::<std::collections::BTreeSet<_>>(),
        want
    );
    let received: u64 = manifest
        .files()
        .iter()
        .filter(|f| want.contains(&f.sha256))
        .map(|f| f.size)
        .sum();
    assert_eq!(
        (report.received_bytes, report.reused_bytes),
        (received, manifest.total_size() - received)
    );
    assert_eq!(h.status().await.staged, Some("2.0.0".parse().unwrap()));

    let v2 = SwapRequest {
        version: "2.0.0".parse().unwrap(),
    };
    let msg = error_of(h.post_raw(routes::COMMIT, &v2).await, StatusCode::CONFLICT).await;
    assert!(msg.contains("stop the main program first"), "{msg}");
    assert_eq!(scan(&h.folder()), old, "a refused commit changes nothing");

    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    let swap: SwapReport = h.post(routes::COMMIT, &v2).await;
    assert!(swap.swapped);
    assert_eq!(scan(&h.folder()), manifest);
    for f in manifest.files() {
        assert_eq!(
            std::fs::read(tillup_fs::join(&h.folder(), &f.path)).unwrap(),
            std::fs::read(tillup_fs::join(&new, &f.path)).unwrap(),
            "{}",
            f.path
        );
    }
    assert_eq!(scan(&h.dir.path().join("cupos.tillup-previous")), old);
    assert!(!h.dir.path().join("cupos.tillup-staging").exists());
    let again: SwapReport = h.post(routes::COMMIT, &v2).await;
    assert!(!again.swapped);

    let _: StartReport = h.post(routes::START, &()).await;
    h.healthy("2.0.0").await;
    let s = h.status().await;
    assert_eq!(
        (s.version, s.previous),
        (
            Some("2.0.0".parse().unwrap()),
            Some("1.0.0".parse().unwrap())
        )
    );

    let v1 = SwapRequest {
        version: "1.0.0".parse().unwrap(),
    };
    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    let back: SwapReport = h.post(routes::ROLLBACK, &v1).await;
    assert!(back.swapped);
    assert_eq!(scan(&h.folder()), old);
    let again: SwapReport = h.post(routes::ROLLBACK, &v1).await;
    assert!(!again.swapped);
    let msg = error_of(
        h.post_raw(
            routes::ROLLBACK,
            &SwapRequest {
                version: "0.9.0".parse().unwrap(),
            },
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(msg.contains("0.9.0"), "{msg}");
    let _: StartReport = h.post(routes::START, &()).await;
    h.healthy("1.0.0").await;
}

#[tokio::test]
async fn a_release_that_fails_health_is_reported_with_its_own_words() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let new = release(
        &h,
        "3.0.0",
        Some("database schema 7 is newer than this program"),
    );
    h.send_and_stage(&new, "3.0.0").await;
    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    let _: SwapReport = h
        .post(
            routes::COMMIT,
            &SwapRequest {
                version: "3.0.0".parse().unwrap(),
            },
        )
        .await;
    let _: StartReport = h.post(routes::START, &()).await;
    let report = h.health("3.0.0").await;
    assert!(!report.healthy, "{report:?}");
    assert!(
        report
            .message
            .contains("database schema 7 is newer than this program"),
        "{report:?}"
    );
    assert!(report.message.contains("code 3"), "{report:?}");
    // The agent put the old release back and started it by itself.
    assert_eq!(report.rolled_back_to, Some("1.0.0".parse().unwrap()));
    let s = h.status().await;
    assert!(running(&s), "{s:?}");
    assert_eq!(s.version, Some("1.0.0".parse().unwrap()));
    let notice = &s.notices.last().expect("a notice").message;
    assert!(
        notice.contains("3.0.0 was not healthy")
            && notice.contains("database schema 7")
            && notice.contains("put 1.0.0 back and started it"),
        "{notice}"
    );
    h.healthy("1.0.0").await;
    // The host's own rollback, arriving after, changes nothing.
    let back: SwapReport = h
        .post(
            routes::ROLLBACK,
            &SwapRequest {
                version: "1.0.0".parse().unwrap(),
            },
        )
        .await;
    assert!(!back.swapped);
    h.healthy("1.0.0").await;
}

/// The host goes silent while the main program is stopped: the agent
/// starts it again by itself and says so; an agent killed and restarted
/// meanwhile does not start it under the host's feet, but its watchdog does.
#[tokio::test]
async fn the_watchdog_restarts_a_main_program_the_host_left_stopped() {
    let mut h = Harness::with_watchdog(60, 2);
    h.healthy("1.0.0").await;
    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    assert!(!h.main_alive());
    wait_for("the watchdog to start the main program", || h.main_alive()).await;
    let s = h.status().await;
    assert!(running(&s), "{s:?}");
    let notice = &s.notices.last().expect("a notice").message;
    assert!(
        notice.contains("silent") && notice.contains("started it again on version 1.0.0"),
        "{notice}"
    );

    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    h.restart();
    let s = h.status().await;
    assert_eq!(
        s.main,
        MainState::Stopped,
        "autostarted under the host's feet"
    );
    wait_for("the watchdog to start the main program", || h.main_alive()).await;
    h.healthy("1.0.0").await;
}

/// Someone with the agent's token polls its status while the host has the
/// main program stopped: that is not the host moving the upgrade on, so
/// the watchdog still starts the program in time.
#[tokio::test]
async fn polling_the_status_does_not_hold_the_watchdog_back() {
    let h = Harness::with_watchdog(60, 2);
    h.healthy("1.0.0").await;
    let _: StopReport = h.post(routes::STOP, &StopRequest::default()).await;
    let mut polls = 0;
    for _ in 0..300 {
        if h.main_alive() {
            break;
        }
        let _ = h.status().await;
        let _ = h.health("1.0.0").await;
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        h.main_alive(),
        "the watchdog never started the program ({polls} polls)"
    );
    assert!(polls > 10, "the status was polled throughout: {polls}");
}

/// A release swapped in, started, and then left by a silent host: the
/// watchdog checks it, finds it unhealthy, and puts the old one back.
#[tokio::test]
async fn the_watchdog_rolls_back_an_unhealthy_release_the_host_left() {
    let h = Harness::with_watchdog(60, 2);
    h.healthy("1.0.0").await;
    let old = scan(&h.folder());
    h.install_unhealthy_2_0_0().await;
    let version = h.folder().join("VERSION");
    wait_for("the watchdog to put 1.0.0 back", || {
        std::fs::read_to_string(&version).is_ok_and(|v| v.trim() == "1.0.0")
    })
    .await;
    wait_for("the old release to run", || h.main_alive()).await;
    // The same files, but for the sales the restarted program logged.
    let files = |m: Manifest| -> Vec<_> {
        m.files()
            .iter()
            .filter(|f| f.path.as_str() != "data/sales.log")
            .cloned()
            .collect()
    };
    assert_eq!(files(scan(&h.folder())), files(old));
    let s = h.status().await;
    let notice = &s.notices.last().expect("a notice").message;
    assert!(
        notice.contains("2.0.0 was not healthy") && notice.contains("printer driver 4"),
        "{notice}"
    );
    h.healthy("1.0.0").await;
}

/// Regression: rollback answered 409 while the main program ran, so a
/// release that starts but stays unhealthy was never rolled back.
#[tokio::test]
async fn a_running_unhealthy_release_is_rolled_back_without_a_stop_first() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let old = scan(&h.folder());
    let old_bytes: Vec<Vec<u8>> = old
        .files()
        .iter()
        .map(|f| std::fs::read(tillup_fs::join(&h.folder(), &f.path)).unwrap())
        .collect();
    let started = h.install_unhealthy_2_0_0().await;
    let running_new = MainState::Running { pid: started.pid };
    assert_eq!(h.status().await.main, running_new, "it keeps running");

    // A rollback with nothing to go back to stops nothing.
    let msg = error_of(
        h.post_raw(
            routes::ROLLBACK,
            &SwapRequest {
                version: "0.9.0".parse().unwrap(),
            },
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert!(msg.contains("0.9.0"), "{msg}");
    assert_eq!(h.status().await.main, running_new);

    // The rollback stops the running release itself, then swaps.
    let v1 = SwapRequest {
        version: "1.0.0".parse().unwrap(),
    };
    let back: SwapReport = h.post(routes::ROLLBACK, &v1).await;
    assert!(back.swapped, "{back:?}");
    let s = h.status().await;
    assert!(!running(&s), "{s:?}");
    assert_eq!(s.version, Some("1.0.0".parse().unwrap()));
    assert_eq!(scan(&h.folder()), old);
    for (f, bytes) in old.files().iter().zip(&old_bytes) {
        assert_eq!(
            &std::fs::read(tillup_fs::join(&h.folder(), &f.path)).unwrap(),
            bytes,
            "{}",
            f.path
        );
    }

    let start: StartReport = h.post(routes::START, &()).await;
    assert!(!start.was_running);
    h.healthy("1.0.0").await;
    // Idempotent by target: the folder holds 1.0.0, so nothing is stopped.
    let again: SwapReport = h.post(routes::ROLLBACK, &v1).await;
    assert!(!again.swapped, "{again:?}");
    assert_eq!(
        h.status().await.main,
        MainState::Running { pid: start.pid },
        "a rollback to the version held must not stop the main program"
    );
    h.healthy("1.0.0").await;
}

#[tokio::test]
async fn wrong_or_missing_token_changes_nothing() {
    let h = Harness::start(60);
    h.healthy("1.0.0").await;
    let before = scan(&h.folder());
    let pid = h.status().await.main;
    let new = release(&h, "2.0.0", None);
    let manifest = scan(&new);
    let hash = manifest.files()[0].sha256.to_string();
    let pack_request = serde_json::json!({ "blobs": [{ "sha256": hash, "from": 0 }] });
    let release = h.key.sign("2.0.0", &manifest.to_bytes());
    let stage = serde_json::to_value(StageRequest {
        version: "2.0.0".parse().unwrap(),
        manifest,
        release,
    })
    .unwrap();
    let swap = serde_json::json!({ "version": "2.0.0" });
    let calls: Vec<(reqwest::Method, String, Option<serde_json::Value>)> = vec![
        (reqwest::Method::GET, routes::STATUS.into(), None),
        (
            reqwest::Method::POST,
            routes::STOP.into(),
            Some(serde_json::json!({})),
        ),
        (reqwest::Method::POST, routes::START.into(), None),
        (reqwest::Method::GET, routes::SNAPSHOT.into(), None),
        (
            reqwest::Method::POST,
            routes::PACK.into(),
            Some(pack_request),
        ),
        (
            reqwest::Method::PUT,
            routes::PACK.into(),
            Some(serde_json::json!("bytes")),
        ),
        (
            reqwest::Method::POST,
            routes::BLOBS_MISSING.into(),
            Some(serde_json::json!({ "hashes": [hash] })),
        ),
        (reqwest::Method::POST, routes::STAGE.into(), Some(stage)),
        (
            reqwest::Method::POST,
            routes::COMMIT.into(),
            Some(swap.clone()),
        ),
        (reqwest::Method::POST, routes::ROLLBACK.into(), Some(swap)),
        (
            reqwest::Method::GET,
            format!("{}?version=1.0.0", routes::HEALTH),
            None,
        ),
    ];
    for (method, route, body) in calls {
        for auth in [None, Some("Bearer wrong"), Some("Bearer"), Some(TOKEN)] {
            let mut req = h.http.request(method.clone(), h.url(&route));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let res = req.send().await.unwrap();
            let msg = error_of(res, StatusCode::UNAUTHORIZED).await;
            assert!(msg.contains("token"), "{method} {route}: {msg}");
        }
    }
    assert_eq!(scan(&h.folder()), before);
    assert!(!h.dir.path().join("cupos.tillup-staging").exists());
    assert_eq!(h.status().await.main, pid, "the main program still runs");
}

#[tokio::test]
async fn a_blob_with_the_wrong_hash_is_refused_and_not_kept() {
    let h = Harness::start(60);
    let claimed = Sha256Hex::of(b"the real bytes");
    // A pack that names the real bytes' hash over other bytes.
    let res = h
        .http
        .put(h.url(routes::PACK))
        .bearer_auth(TOKEN)
        .body(tillup_transfer::pack::forged(
            &[(claimed, 13, 0, b"altered bytes")],
            1,
        ))
        .send()
        .await
        .unwrap();
    let msg = error_of(res, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(msg.contains("not kept"), "{msg}");
    let missing: HashList = h
        .post(routes::BLOBS_MISSING, &HashList::new(vec![claimed]))
        .await;
    assert_eq!(missing.hashes, vec![claimed]);
    let blobs = h.state().join("blobs");
    let files: Vec<_> = walk(&blobs);
    assert!(files.is_empty(), "{files:?}");
    let res = h.put_pack(&[b"the real bytes"]).await;
    assert!(res.status().is_success());
    let missing: HashList = h
        .post(routes::BLOBS_MISSING, &HashList::new(vec![claimed]))
        .await;
    assert!(missing.hashes.is_empty());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn a_bad_config_file_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "terminal = 1\nmodel = \"CP-500\"\ntoken = \"t\"\nlisten = \"127.0.0.1:0\"\nfolder = \"/x/cupos\"\nfolderr = \"typo\"\n[main]\ncommand = [\"x\"]\nhealth_command = [\"x\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tillup-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent.toml") && stderr.contains("folderr"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing is listening");
}

#[test]
fn pos_sim_is_found() {
    assert!(pos_sim_binary().is_file());
}
