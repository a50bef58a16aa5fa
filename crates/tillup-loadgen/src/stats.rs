//! Per-endpoint counts and latencies (HDR histograms), and the table the
//! load generator prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What a simulated store asks the server, each timed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /v1/log/{channel}` answered 304 (the store holds the log).
    LogCheck,
    /// `GET /v1/log/{channel}` answered 200 (a new log, at an upgrade).
    LogFetch,
    /// `POST /v1/blobs/missing` then `PUT /v1/pack`: the terminals' own files.
    UploadOwnFiles,
    /// `PUT /v1/stores/{store}/upgrades/{upgrade}/backup`.
    Backup,
    /// `POST /v1/stores/{store}/upgrades/{upgrade}/process`.
    Process,
    /// `POST /v1/pack`: the release's new files, one pack.
    DownloadNewFiles,
    /// `POST /v1/stores/{store}/reports`.
    Report,
}

impl Endpoint {
    /// Every endpoint, in the order of a store's upgrade.
    pub const ALL: [Self; 7] = [
        Self::LogCheck,
        Self::LogFetch,
        Self::UploadOwnFiles,
        Self::Backup,
        Self::Process,
        Self::DownloadNewFiles,
        Self::Report,
    ];

    /// As printed.
    pub fn label(self) -> &'static str {
        match self {
            Self::LogCheck => "log check (304)",
            Self::LogFetch => "log fetch (200)",
            Self::UploadOwnFiles => "upload own files (missing + pack)",
            Self::Backup => "backup (PUT)",
            Self::Process => "process",
            Self::DownloadNewFiles => "download new files (pack)",
            Self::Report => "report",
        }
    }
}

/// The largest latency recorded exactly; longer ones are clamped.
const MAX_MICROS: u64 = 600_000_000;

#[derive(Debug)]
struct One {
    latency: Histogram<u64>,
    errors: u64,
    first_errors: Vec<String>,
}

impl One {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid bounds"),
            errors: 0,
            first_errors: Vec::new(),
        }
    }
}

/// Every endpoint's figures, shared by the simulated stores.
#[derive(Debug, Default)]
pub struct Stats {
    by: Mutex<BTreeMap<Endpoint, One>>,
}

/// How many distinct error messages are kept per endpoint.
const KEPT_ERRORS: usize = 5;

impl Stats {
    /// Records a request that succeeded after `took`.
    pub fn ok(&self, e: Endpoint, took: Duration) {
        let micros = (took.as_micros() as u64).clamp(1, MAX_MICROS);
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let one = by.entry(e).or_insert_with(One::new);
        one.latency
            .record(micros)
            .expect("clamped into the histogram's bounds");
    }

    /// Records a request that failed.
    pub fn error(&self, e: Endpoint, why: String) {
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let one = by.entry(e).or_insert_with(One::new);
        one.errors += 1;
        if one.first_errors.len() < KEPT_ERRORS && !one.first_errors.contains(&why) {
            one.first_errors.push(why);
        }
    }

    /// The figures of a run that lasted `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Vec<EndpointSummary> {
        let by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        Endpoint::ALL
            .iter()
            .filter_map(|e| {
                let one = by.get(e)?;
                let h = &one.latency;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                Some(EndpointSummary {
                    endpoint: *e,
                    label: e.label(),
                    ok: h.len(),
                    per_second: h.len() as f64 / elapsed.as_secs_f64(),
                    p50_ms: ms(0.5),
                    p99_ms: ms(0.99),
                    max_ms: h.max() as f64 / 1000.0,
                    errors: one.errors,
                    first_errors: one.first_errors.clone(),
                })
            })
            .collect()
    }
}

/// One endpoint's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointSummary {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// As printed.
    pub label: &'static str,
    /// Requests that succeeded.
    pub ok: u64,
    /// Of them, per second of the run.
    pub per_second: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Requests that failed.
    pub errors: u64,
    /// The first few distinct failures.
    pub first_errors: Vec<String>,
}

/// The summary as a Markdown table.
pub fn table(rows: &[EndpointSummary]) -> String {
    let mut out = String::from(
        "| endpoint | requests | per s | p50 ms | p99 ms | max ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            r.label, r.ok, r.per_second, r.p50_ms, r.p99_ms, r.max_ms, r.errors
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_errors_are_per_endpoint() {
        let s = Stats::default();
        for ms in 1..=100 {
            s.ok(Endpoint::LogCheck, Duration::from_millis(ms));
        }
        s.ok(Endpoint::Process, Duration::from_secs(2));
        s.error(Endpoint::Process, "HTTP 503".into());
        s.error(Endpoint::Process, "HTTP 503".into());
        let rows = s.summary(Duration::from_secs(10));
        assert_eq!(rows.len(), 2);
        let check = &rows[0];
        assert_eq!(check.ok, 100);
        assert!((check.per_second - 10.0).abs() < 1e-9);
        assert!((check.p50_ms - 50.0).abs() < 0.1, "{}", check.p50_ms);
        assert!((check.p99_ms - 99.0).abs() < 0.1, "{}", check.p99_ms);
        let process = &rows[1];
        assert_eq!((process.ok, process.errors), (1, 2));
        assert_eq!(process.first_errors, ["HTTP 503"]);
        assert!(table(&rows).contains("| process | 1 |"));
    }
}
