//! Log checks that end in 304, tillup-server against nginx serving the same
//! log file with its ETag, both driven by `wrk` on this machine in the same
//! run, in alternating rounds (the machine is shared and noisy).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tillup_e2e::{run, text};

use crate::head_office::HeadOffice;

/// One `wrk` run's figures.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct WrkRun {
    /// Requests per second.
    pub per_second: f64,
    /// Mean latency, in ms.
    pub mean_ms: f64,
    /// Answers other than 2xx/3xx, and socket errors.
    pub errors: u64,
}

/// How `wrk` drives each side.
#[derive(Clone, Debug)]
pub struct Wrk {
    /// Open connections.
    pub connections: u32,
    /// Its threads.
    pub threads: u32,
    /// Each run's length.
    pub seconds: u32,
}

impl Wrk {
    /// Runs `wrk` against `url` with `headers`; fails unless every answer
    /// was a 304 (wrk counts other statuses as non-2xx/3xx, so a 200
    /// would pass: the caller checks one answer first).
    pub fn run(&self, url: &str, headers: &[(&str, &str)]) -> Result<WrkRun> {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-c",
            &self.connections.to_string(),
            "-t",
            &self.threads.to_string(),
            "-d",
            &format!("{}s", self.seconds),
            "--latency",
        ]);
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd.arg(url);
        let out = run(cmd, Duration::from_secs(u64::from(self.seconds) + 60))
            .context("running wrk (scripts/setup --bench installs it)")?;
        ensure!(out.status.success(), "wrk failed: {}", text(&out));
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Reads `Requests/sec`, the mean latency and the errors from wrk's report.
pub fn parse_wrk(report: &str) -> Result<WrkRun> {
    let per_second = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("wrk printed no Requests/sec")?
        .trim()
        .parse()?;
    let latency = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Latency"))
        .context("wrk printed no latency")?
        .split_whitespace()
        .next()
        .context("an empty latency line")?;
    let mean_ms = duration_ms(latency)?;
    let mut errors = 0;
    for l in report.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>()?;
        }
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part.split_whitespace().last().unwrap_or("0");
                errors += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(WrkRun {
        per_second,
        mean_ms,
        errors,
    })
}

fn duration_ms(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .context("a duration without unit")?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        other => bail!("unknown unit `{other}` in wrk's latency"),
    })
}

/// nginx serving one folder on a free loopback port, with its own prefix
/// folder (configuration, logs, pid); stopped when dropped.
pub struct Nginx {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl Nginx {
    /// Serves `root` (read-only) from `prefix`'s configuration.
    pub fn start(root: &Path, prefix: &Path) -> Result<Self> {
        std::fs::create_dir_all(prefix.join("logs"))?;
        // nginx takes a port number, not 0: take a free one and hand it over.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes auto;\npid {pid};\nerror_log {err} warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n  \
                 proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n  \
                 uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
                pid = prefix.join("nginx.pid").display(),
                err = prefix.join("logs/error.log").display(),
                tmp = prefix.display(),
                root = root.display(),
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (scripts/setup --bench installs it)")?;
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { child, url });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "nginx did not listen on port {port}; its log: {}",
            std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both sides' runs, round by round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    /// tillup-server's runs.
    pub tillup: Vec<WrkRun>,
    /// nginx's runs.
    pub nginx: Vec<WrkRun>,
}

/// Serves the office's current log from nginx too, checks that each side
/// answers a conditional request with 304, then runs `rounds` rounds.
pub fn compare(work: &Path, office: &HeadOffice, wrk: &Wrk, rounds: u32) -> Result<Comparison> {
    let (store, token) = office.stores.first().context("a store")?;
    let url = format!("{}{}", office.urls[0], LOG);
    let auth = format!("Bearer {token}");
    let http = reqwest::blocking::Client::new();
    let first = http.get(&url).header("authorization", &auth).send()?;
    ensure!(
        first.status() == 200,
        "tillup-server answered {}",
        first.status()
    );
    let etag = header(&first, "etag")?;
    let log = first.bytes()?;

    let site = tempfile::tempdir_in(work)?;
    let file = site.path().join(LOG.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().context("a folder")?)?;
    std::fs::write(&file, &log)?;
    let prefix = tempfile::tempdir_in(work)?;
    let nginx = Nginx::start(site.path(), prefix.path())?;
    let nginx_url = format!("{}{}", nginx.url, LOG);
    let nginx_etag = header(&http.get(&nginx_url).send()?, "etag")?;

    for (what, url, headers) in [
        (
            "tillup-server",
            &url,
            vec![
                ("authorization", auth.as_str()),
                ("if-none-match", etag.as_str()),
            ],
        ),
        (
            "nginx",
            &nginx_url,
            vec![("if-none-match", nginx_etag.as_str())],
        ),
    ] {
        let mut req = http.get(url);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let status = req.send()?.status();
        ensure!(
            status == 304,
            "{what} answered a conditional request with {status}, not 304"
        );
    }
    eprintln!(
        "store {store}: both sides answer 304; {rounds} rounds of {} s",
        wrk.seconds
    );
    let mut out = Comparison {
        tillup: Vec::new(),
        nginx: Vec::new(),
    };
    for round in 1..=rounds {
        let t = wrk.run(&url, &[("Authorization", &auth), ("If-None-Match", &etag)])?;
        let n = wrk.run(&nginx_url, &[("If-None-Match", &nginx_etag)])?;
        eprintln!(
            "round {round}: tillup {:.0}/s, nginx {:.0}/s",
            t.per_second, n.per_second
        );
        out.tillup.push(t);
        out.nginx.push(n);
    }
    Ok(out)
}

/// The path of the log both sides serve.
const LOG: &str = "/v1/log/stable";

fn header(resp: &reqwest::blocking::Response, name: &str) -> Result<String> {
    Ok(resp
        .headers()
        .get(name)
        .with_context(|| format!("no {name} header"))?
        .to_str()?
        .to_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The comparison as a Markdown table with medians and the ratio.
pub fn table(c: &Comparison) -> String {
    let rates = |runs: &[WrkRun]| runs.iter().map(|r| r.per_second).collect::<Vec<_>>();
    let means = |runs: &[WrkRun]| runs.iter().map(|r| r.mean_ms).collect::<Vec<_>>();
    let errors = |runs: &[WrkRun]| runs.iter().map(|r| r.errors).sum::<u64>();
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (t, n) = (median(rates(&c.tillup)), median(rates(&c.nginx)));
    format!(
        "| 304 log checks | requests/s (each round) | median | mean latency ms (median) | errors |\n\
         | --- | --- | ---: | ---: | ---: |\n\
         | tillup-server | {} | {t:.0} | {:.2} | {} |\n\
         | nginx | {} | {n:.0} | {:.2} | {} |\n\
         \ntillup-server / nginx: {:.2}\n",
        fmt(&rates(&c.tillup)),
        median(means(&c.tillup)),
        errors(&c.tillup),
        fmt(&rates(&c.nginx)),
        median(means(&c.nginx)),
        errors(&c.nginx),
        t / n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrk_report_is_read() {
        let report = "Running 8s test @ http://127.0.0.1:1/v1/log/stable
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   712.31us  301.22us  12.01ms   80.00%
    Req/Sec    45.01k     2.01k   50.00k    70.00%
  716000 requests in 8.00s, 90.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  89500.12
Transfer/sec:     11.25MB
";
        let r = parse_wrk(report).unwrap();
        assert!((r.per_second - 89500.12).abs() < 1e-6);
        assert!((r.mean_ms - 0.71231).abs() < 1e-9);
        assert_eq!(r.errors, 7);
    }
}
