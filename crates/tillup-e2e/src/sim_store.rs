//! A light simulated store: it speaks the real store protocol to a real
//! `tillup-server` with its own token (fetches its channel's signed log,
//! verifies it with the server's public key, decides what it may install
//! exactly as a listener does with [`VersionLog::for_store`], and sends
//! an upgrade report), without terminals. Many of them stand for the
//! chain's other stores in head-office tests, beside one real store.

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use jiff::Timestamp;
use semver::Version;
use tillup_core::api::{self, route};
use tillup_core::log::VersionLog;
use tillup_core::report::{HistoryEntry, HistoryTerminal, Outcome};
use tillup_core::sign::PublicKey;
use tillup_core::upgrade::Trigger;

use crate::Server;

/// One simulated store on the `stable` channel.
pub struct SimStore {
    pub id: String,
    token: String,
    url: String,
    key: PublicKey,
    /// The version its tills run.
    pub running: Version,
    http: reqwest::blocking::Client,
}

/// How a simulated store's upgrade ends.
pub enum Upgrade {
    /// Every till is on the new release and healthy.
    Healthy,
    /// The canary till failed its health check and was put back; the
    /// other tills were never touched.
    CanaryFails(String),
}

impl SimStore {
    /// Adds store `id` to `server`, its tills on `running`.
    pub fn add(server: &Server, id: &str, running: &str) -> Result<Self> {
        Ok(Self {
            id: id.to_owned(),
            token: server.add_store(id)?,
            url: server.url().to_owned(),
            key: PublicKey::parse(&server.public_key)?,
            running: running.parse()?,
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
        })
    }

    /// The channel's log as this store may act on it, verified.
    pub fn log(&self) -> Result<VersionLog> {
        let resp = self
            .http
            .get(format!(
                "{}{}",
                self.url,
                route(api::server::LOG, &[("channel", "stable")])
            ))
            .bearer_auth(&self.token)
            .send()?
            .error_for_status()?;
        let sig = resp
            .headers()
            .get(api::SIGNATURE_HEADER)
            .context("the log came without its signature")?
            .to_str()?
            .to_owned();
        let sig = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(sig)?)?;
        let body = resp.bytes()?;
        self.key
            .verify(&body, &sig)
            .context("the log's signature does not verify")?;
        Ok(VersionLog::parse(&body)?.for_store(&self.id))
    }

    /// The newest release newer than what it runs that it may install.
    pub fn offered(&self) -> Result<Option<Version>> {
        Ok(self
            .log()?
            .newest()
            .map(|r| r.version.clone())
            .filter(|v| *v > self.running))
    }

    /// Checks, and if a newer release is admitted, starts upgrading to it
    /// and stops there: its backup (of empty folders on `tills` tills)
    /// reaches the server, its report never does. Returns the version.
    pub fn begin_upgrade(&self, tills: u32) -> Result<Option<Version>> {
        let Some(target) = self.offered()? else {
            return Ok(None);
        };
        let backup = api::Backup {
            terminals: (1..=tills)
                .map(|number| api::TerminalBackup {
                    number,
                    model: "CP-500".into(),
                    version: self.running.clone(),
                    manifest: tillup_core::manifest::Manifest::default(),
                })
                .collect(),
        };
        let id = format!("sim-{}-{target}", Timestamp::now().as_second());
        let path = route(
            api::server::BACKUP,
            &[("store", &self.id), ("upgrade", &id)],
        );
        self.send(reqwest::Method::PUT, &path, &backup, "backup")?;
        Ok(Some(target))
    }

    /// Checks, and if a newer release is admitted "installs" it on its
    /// `tills` as `how` says and reports the upgrade. Returns the version
    /// it upgraded to (or tried).
    pub fn check_and_upgrade(&mut self, tills: u32, how: &Upgrade) -> Result<Option<Version>> {
        let Some(target) = self.offered()? else {
            return Ok(None);
        };
        let started = Timestamp::now();
        let terminal = |number: u32, result: Outcome, failure: Option<String>| HistoryTerminal {
            number,
            from: self.running.clone(),
            to: target.clone(),
            result,
            stopped_ms: Some(4_000 + i64::from(number) * 150),
            failure,
            failed_at: None,
            model: Some("CP-500".to_owned()),
        };
        let (terminals, halted) = match how {
            Upgrade::Healthy => (
                (1..=tills)
                    .map(|n| terminal(n, Outcome::Upgraded, None))
                    .collect(),
                None,
            ),
            Upgrade::CanaryFails(why) => (
                vec![terminal(1, Outcome::Restored, Some(why.clone()))],
                Some(format!("the canary (terminal 1) failed: {why}")),
            ),
        };
        let id = format!("sim-{}-{target}", started.as_second());
        let entry = HistoryEntry {
            id: id.clone(),
            started,
            finished: Some(Timestamp::now()),
            trigger: Trigger::Schedule,
            terminals,
            left_out: Vec::new(),
            halted: halted.clone(),
            reported: false,
        };
        let report = serde_json::json!({
            "id": id,
            "kind": "upgrade",
            "store": self.id,
            "upgrade": entry,
            "failure": halted,
        });
        let path = route(api::server::REPORT, &[("store", &self.id)]);
        self.send(reqwest::Method::POST, &path, &report, "report")?;
        if matches!(how, Upgrade::Healthy) {
            self.running = target.clone();
        }
        Ok(Some(target))
    }

    /// Sends `body` as JSON to `path` with this store's token; a refusal
    /// is an error naming `what`.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl serde::Serialize,
        what: &str,
    ) -> Result<()> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()?;
        ensure!(
            resp.status().is_success(),
            "the server refused {}'s {what}: {}",
            self.id,
            resp.text().unwrap_or_default()
        );
        Ok(())
    }
}
