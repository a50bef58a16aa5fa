//! The server's and the agent's HTTP APIs, fuzzed against their own OpenAPI
//! descriptions (generated from the code) by schemathesis, a property-based
//! API fuzzer from PyPI that `scripts/setup` installs: no 5xx, no crash,
//! every status, content type, header and body as described, no route
//! answering without the token.
//!
//! Each run is bounded in time (`TILLUP_API_FUZZ_SECONDS`, 40 s by default)
//! and prints its seed; a failure prints the command that replays it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tillup_core::api::server;
use tillup_e2e::{Store, bin, run, text};

/// Where `scripts/setup` installs schemathesis, unless `SCHEMATHESIS`
/// names the program.
fn schemathesis() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SCHEMATHESIS") {
        return Ok(p.into());
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let p = Path::new(&home).join(".cache/tillup/venv/bin/schemathesis");
    ensure!(
        p.is_file(),
        "{} is missing: run scripts/setup (it installs schemathesis from PyPI), or set SCHEMATHESIS",
        p.display()
    );
    Ok(p)
}

fn seconds() -> u64 {
    std::env::var("TILLUP_API_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40)
}

/// The checks every answer must pass: all that schemathesis has but two
/// that judge how strictly a request is read, not what is answered.
/// `positive_data_acceptance` expects every body the description allows to
/// be accepted, but a description cannot say all the code checks (a path
/// that is a Windows device name, a file the server does not hold, an
/// integer written `3.0`): those get a 400 the description lists.
/// `negative_data_rejection` expects every body it rules out to be refused,
/// but serde also reads a struct written as an array of its fields, which
/// is harmless and would make the run fail by chance.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance,negative_data_rejection";

/// The fuzzer's seed: `TILLUP_API_FUZZ_SEED` replays a run whose seed a
/// failure printed.
fn seed() -> Option<String> {
    std::env::var("TILLUP_API_FUZZ_SEED").ok()
}

/// The last lines of the log of the process under test, for a failure.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Runs schemathesis on the description at `location` against `base`, with
/// `token`; `parameters` are real ids to reach past the 404s. A failure
/// shows the tail of `log`, the log of the process under test.
fn fuzz(
    dir: &Path,
    location: &str,
    base: &str,
    token: &str,
    parameters: &[(&str, &str)],
    log: &Path,
) -> Result<()> {
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("api-fuzz/hooks.py");
    let mut config = format!(
        "hooks = {:?}\n\n[parameters]\n",
        hooks.display().to_string()
    );
    for (k, v) in parameters {
        config.push_str(&format!("{k:?} = {v:?}\n"));
    }
    let config_file = dir.join("schemathesis.toml");
    std::fs::write(&config_file, config)?;
    let secs = seconds();
    let mut cmd = Command::new(schemathesis()?);
    cmd.current_dir(dir)
        .arg("--config-file")
        .arg(&config_file)
        .args(["run", location, "--url", base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--exclude-checks", EXCLUDED_CHECKS])
        .args(["--max-time", &secs.to_string(), "--workers", "1"])
        .args(["--request-timeout", "30", "--tls-verify", "false"])
        .env("NO_COLOR", "1");
    if let Some(seed) = seed() {
        cmd.args(["--seed", &seed]);
    }
    let out = run(cmd, Duration::from_secs(secs + 180))?;
    if !out.status.success() {
        bail!(
            "schemathesis found failures in {location}:\n{}\n--- the last lines of {}:\n{}",
            text(&out),
            log.display(),
            log_tail(log)
        );
    }
    Ok(())
}

#[test]
fn the_server_api_answers_as_its_description_says_under_fuzzing() -> Result<()> {
    let store = Store::one_till()?;
    let url = store.server.url().to_owned();
    // A backup for the fuzzer's PATCH and process to reach past the 404.
    let backup = tillup_core::api::route(
        server::BACKUP,
        &[("store", &store.store_id), ("upgrade", "fuzz")],
    );
    let client = reqwest::blocking::Client::new();
    client
        .put(format!("{url}{backup}"))
        .bearer_auth(&store.store_token)
        .json(&serde_json::json!({ "terminals": [] }))
        .send()?
        .error_for_status()?;
    let release = serde_json::from_slice::<tillup_core::log::VersionLog>(
        &client
            .get(format!("{url}/v1/log/stable"))
            .bearer_auth(&store.store_token)
            .send()?
            .error_for_status()?
            .bytes()?,
    )?
    .releases[0]
        .sha256
        .to_string();
    fuzz(
        &store.root,
        &format!("{url}/openapi.json"),
        &url,
        &store.store_token,
        &[
            ("path.store", &store.store_id),
            ("path.upgrade", "fuzz"),
            ("path.channel", "stable"),
            ("path.sha256", &release),
        ],
        &store.server.data.join("serve.log"),
    )?;
    let health = client.get(format!("{url}/healthz")).send()?;
    ensure!(health.status().is_success(), "the server answers after");
    Ok(())
}

#[test]
fn the_agent_api_answers_as_its_description_says_under_fuzzing() -> Result<()> {
    let mut store = Store::one_till()?;
    let out = run(
        {
            let mut c = Command::new(bin("tillup-agent")?);
            c.arg("openapi");
            c
        },
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "tillup-agent openapi: {}", text(&out));
    let description = store.root.join("agent-openapi.json");
    std::fs::write(&description, &out.stdout)?;
    let t = store.terminals.get_mut(&1).context("terminal 1")?;
    let url = t.url().context("the agent runs")?.to_owned();
    fuzz(
        &store.root,
        &description.display().to_string(),
        &url,
        &t.token,
        &[],
        &t.root.join("agent.log"),
    )?;
    ensure!(!t.agent_exited(), "the agent is still running");
    let status = t
        .http()
        .get(format!("{url}/v1/status"))
        .bearer_auth(&t.token)
        .send()?;
    ensure!(status.status().is_success(), "the agent answers after");
    Ok(())
}
