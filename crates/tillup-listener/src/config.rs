//! The listener's TOML configuration.

use std::path::{Path, PathBuf};

use jiff::civil::Time;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use tillup_core::sign::PublicKey;

use crate::Error;

/// The largest configuration file accepted: 1 MiB. A real one is a few
/// hundred bytes per terminal; anything near this is the wrong file.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Reads `path` as text, refusing more than `max` bytes without reading
/// further (a config path could name a device or a huge file by mistake).
pub(crate) fn read_bounded(path: &Path, max: usize) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// How an available update is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Ask the store manager (the tray app's popup).
    #[default]
    Prompt,
    /// Upgrade silently inside the maintenance window.
    Scheduled,
}

/// The listener's configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of `tillup-server`, e.g. `https://updates.example.com`.
    /// `http://` only on loopback or with [`Config::allow_plain_http_server`].
    pub server: String,
    /// Other addresses of the same server (mirrors), tried in this order
    /// when `server` cannot be reached. A mirror is trusted no more than the
    /// server: the log must verify against `public_key` and every file
    /// against its signed hash. To take an upgrade over mid-way, a mirror
    /// shares the server's database and storage (the README's "A head
    /// office with more than one server"); otherwise an upgrade that loses
    /// its server half-way is restored and the next one starts on the
    /// mirror.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// Lets `server` and `mirrors` be a plain `http://` address off this machine: only
    /// where something else (a VPN) already protects the link, because the
    /// store token and the terminals' files cross it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http_server: bool,
    /// Lets terminals have plain `http://` addresses off this machine: only
    /// where something else protects the shop LAN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plain_http_agents: bool,
    /// The minisign public key (`RW…`) the version log must be signed with.
    pub public_key: String,
    pub store_id: String,
    pub store_token: String,
    #[serde(default = "default_channel")]
    pub channel: String,
    /// The channel of tillup's own releases. Set, the daemon (and
    /// `tillup self-update`) keeps the terminals' agents and this listener
    /// on its newest release, canary first (see `tillup_core::selfupdate`);
    /// unset, tillup is updated by hand (its packages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_channel: Option<String>,
    /// The file it was loaded from (for the self-check of a new executable).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Where the local log, backups and staging live. Default: the
    /// platform's data folder.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub mode: Mode,
    /// The terminal installed first; default the lowest number.
    #[serde(default)]
    pub canary: Option<u32>,
    /// How many terminals are installed at once after the canary.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Halt the upgrade when more than this percentage of the terminals
    /// after the canary fail; those not swapped yet stay on the old release.
    #[serde(default = "default_halt_percent")]
    pub halt_percent: u8,
    /// How many of the host's backup folders to keep, newest first.
    #[serde(default = "default_keep_backups")]
    pub keep_backups: usize,
    #[serde(default)]
    pub window: Window,
    #[serde(default)]
    pub check: CheckSchedule,
    /// How slow the server and the agents may be before an exchange fails.
    #[serde(default, skip_serializing_if = "PaceConfig::is_default")]
    pub pace: PaceConfig,
    #[serde(default)]
    pub terminals: Vec<Terminal>,
}

/// `[pace]`: the bounds of [`crate::pace::Pace`], for a link slower than
/// the defaults allow (a satellite line) or a test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaceConfig {
    /// How long a peer may take to begin its answer.
    pub answer_within_secs: u64,
    /// Time given to a body on top of its bytes.
    pub grace_secs: u64,
    /// The slowest average rate a body may move at, in bytes per second.
    pub min_rate_bytes_per_sec: u64,
}

impl Default for PaceConfig {
    fn default() -> Self {
        let p = crate::pace::Pace::DEFAULT;
        Self {
            answer_within_secs: p.answer_within.as_secs(),
            grace_secs: p.grace.as_secs(),
            min_rate_bytes_per_sec: p.min_rate,
        }
    }
}

impl PaceConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The pace every exchange is held to.
    pub fn pace(&self) -> crate::pace::Pace {
        crate::pace::Pace {
            answer_within: std::time::Duration::from_secs(self.answer_within_secs),
            grace: std::time::Duration::from_secs(self.grace_secs),
            min_rate: self.min_rate_bytes_per_sec,
        }
    }
}

/// The maintenance window, in local time of `time_zone`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM`; before `start` means the window crosses midnight.
    pub end: String,
    /// An IANA name such as `Asia/Shanghai`; default the system's.
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            start: "03:00".into(),
            end: "05:00".into(),
            time_zone: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSchedule {
    pub interval_minutes: u64,
    /// A random delay of up to this much is added to every interval, so a
    /// thousand stores do not ask the server in the same second.
    pub jitter_minutes: u64,
}

impl Default for CheckSchedule {
    fn default() -> Self {
        Self {
            interval_minutes: 60,
            jitter_minutes: 10,
        }
    }
}

/// A POS terminal of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    pub number: u32,
    /// Base URL of its `tillup-agent`, e.g. `https://192.168.1.21:8710`.
    pub address: String,
    pub token: String,
    /// The SHA-256 of its agent's TLS certificate, written by `tillup pair`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
}

fn default_channel() -> String {
    "stable".into()
}

fn default_halt_percent() -> u8 {
    25
}

fn default_parallel() -> usize {
    4
}

fn default_keep_backups() -> usize {
    3
}

/// The checked, ready-to-use form of the window.
#[derive(Clone, Debug)]
pub struct ParsedWindow {
    pub start: Time,
    pub end: Time,
    pub tz: TimeZone,
}

impl ParsedWindow {
    /// When the window next opens after `now` (now itself if it is open).
    pub fn next_start(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        if self.contains(now) {
            return now;
        }
        let local = now.to_zoned(self.tz.clone());
        let today = local.date().to_datetime(self.start);
        let start = today
            .to_zoned(self.tz.clone())
            .map(|z| z.timestamp())
            .unwrap_or(now);
        if start > now {
            start
        } else {
            let tomorrow = (today + jiff::Span::new().days(1)).to_zoned(self.tz.clone());
            tomorrow.map(|z| z.timestamp()).unwrap_or(now)
        }
    }

    /// How long the window stays open once it opens.
    pub fn length(&self) -> jiff::SignedDuration {
        let d = self.start.duration_until(self.end);
        if d.is_negative() {
            d + jiff::SignedDuration::from_hours(24)
        } else {
            d
        }
    }

    /// Whether `now` falls inside the window.
    pub fn contains(&self, now: jiff::Timestamp) -> bool {
        let t = now.to_zoned(self.tz.clone()).time();
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl Config {
    /// The default location: `<platform config dir>/tillup/config.toml`.
    pub fn default_path() -> Option<PathBuf> {
        directories::ProjectDirs::from("", "", "tillup").map(|d| d.config_dir().join("config.toml"))
    }

    /// Reads and checks a configuration file of at most
    /// [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let config_error = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        let text = read_bounded(path, MAX_CONFIG_BYTES)
            .map_err(|e| {
                config_error(format!(
                    "cannot read it ({e}); create it or pass --config FILE"
                ))
            })?
            .ok_or_else(|| config_error(too_large()))?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            Error::Config { message, .. } => config_error(message),
            other => other,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// [`Config::load`] of a string: parses and checks it. Errors carry an
    /// empty path.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let config_error = |message: String| Error::Config {
            path: PathBuf::new(),
            message,
        };
        if text.len() > MAX_CONFIG_BYTES {
            return Err(config_error(too_large()));
        }
        let config: Config = toml::from_str(text).map_err(|e| config_error(e.to_string()))?;
        config.validate().map_err(config_error)?;
        Ok(config)
    }

    /// Checks this configuration and writes it to `path` atomically (the
    /// tray's settings page). Comments in the file are not kept.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let config_error = |message: String| Error::Config {
            path: path.to_owned(),
            message,
        };
        self.validate().map_err(config_error)?;
        let text = toml::to_string(self).map_err(|e| config_error(e.to_string()))?;
        let text =
            format!("# tillup listener configuration (saved from the tillup window).\n{text}");
        tillup_fs::write_atomic(path, text.as_bytes())?;
        Ok(())
    }

    /// Checks what TOML types cannot: URLs, the key, the window, numbers.
    pub fn validate(&self) -> Result<(), String> {
        check_url("server", &self.server)?;
        for (i, m) in self.mirrors.iter().enumerate() {
            check_url(&format!("mirrors[{i}]"), m)?;
        }
        if self.pace.min_rate_bytes_per_sec == 0 {
            return Err(
                "[pace] min_rate_bytes_per_sec is 0, which would let a peer hold the host for ever; give the slowest rate a working link has (the default is 4096)".into(),
            );
        }
        if let Some(url) = std::iter::once(&self.server)
            .chain(&self.mirrors)
            .find(|u| !self.allow_plain_http_server && !is_private_link(u))
        {
            return Err(format!(
                "server `{url}`: the store token and the terminals' files would cross the network in clear; use an https:// address, or set allow_plain_http_server = true if a VPN already protects the link"
            ));
        }
        PublicKey::parse(&self.public_key).map_err(|e| format!("public_key: {e}"))?;
        if let Some(c) = &self.self_channel
            && (c.is_empty()
                || *c == self.channel
                || !c
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || c.starts_with('.'))
        {
            return Err(format!(
                "self_channel `{c}`: name the channel tillup's own releases are published on (letters, digits, `-`, `_` or `.`), not the POS program's `{}`",
                self.channel
            ));
        }
        if self.store_id.trim().is_empty()
            || !self
                .store_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "store_id `{}`: use letters, digits, `-`, `_` or `.`",
                self.store_id
            ));
        }
        if self.store_token.is_empty() {
            return Err("store_token is empty: run `tillup-server store add STORE_ID` on the server and paste the token".into());
        }
        self.parsed_window()?;
        if self.check.interval_minutes == 0 {
            return Err("check.interval_minutes must be at least 1".into());
        }
        if self.parallel == 0 {
            return Err("parallel must be at least 1".into());
        }
        if self.halt_percent > 100 {
            return Err(format!(
                "halt_percent = {} is not a percentage; use 0 to 100",
                self.halt_percent
            ));
        }
        if self.keep_backups == 0 {
            return Err("keep_backups must be at least 1: the last backup is what a terminal is restored from".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.terminals {
            if !seen.insert(t.number) {
                return Err(format!("terminal {} is listed twice", t.number));
            }
            check_url(&format!("terminal {} address", t.number), &t.address)?;
            if !self.allow_plain_http_agents && !is_private_link(&t.address) {
                return Err(format!(
                    "terminal {} address `{}`: its token and files would cross the shop LAN in clear; use https:// and pair it (tillup pair {} CODE), or set allow_plain_http_agents = true",
                    t.number, t.address, t.number
                ));
            }
            if let Some(pin) = &t.cert_sha256
                && pin.parse::<tillup_core::Sha256Hex>().is_err()
            {
                return Err(format!(
                    "terminal {}: cert_sha256 must be 64 hex digits, as `tillup pair` writes it",
                    t.number
                ));
            }
            if t.token.is_empty() {
                return Err(format!(
                    "terminal {}: token is empty (it is the `token` of that terminal's agent config)",
                    t.number
                ));
            }
        }
        if let Some(c) = self.canary.filter(|c| !seen.contains(c)) {
            return Err(format!("canary = {c}, but no terminal has that number"));
        }
        Ok(())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::parse(&self.public_key).expect("checked by validate")
    }

    pub fn parsed_window(&self) -> Result<ParsedWindow, String> {
        let time = |name: &str, s: &str| {
            Time::strptime("%H:%M", s)
                .map_err(|_| format!("window.{name} `{s}`: expected HH:MM, e.g. 03:00"))
        };
        let tz = match &self.window.time_zone {
            Some(name) => TimeZone::get(name).map_err(|e| {
                format!("window.time_zone `{name}`: {e}; use an IANA name like Asia/Shanghai")
            })?,
            None => TimeZone::system(),
        };
        let (start, end) = (
            time("start", &self.window.start)?,
            time("end", &self.window.end)?,
        );
        if start == end {
            return Err("window.start and window.end are equal: the window would be empty".into());
        }
        Ok(ParsedWindow { start, end, tz })
    }

    /// The data folder: configured, or the platform's.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            directories::ProjectDirs::from("", "", "tillup")
                .map_or_else(|| PathBuf::from("tillup-data"), |d| d.data_dir().to_owned())
        })
    }
}

fn too_large() -> String {
    format!(
        "the file is larger than {MAX_CONFIG_BYTES} bytes; a configuration is a few kilobytes: check that this is the right file"
    )
}

/// Whether `url` is https, or plain http to this machine.
fn is_private_link(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or("");
    u.scheme() == "https"
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_url(what: &str, s: &str) -> Result<(), String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!(
            "{what} `{s}`: must be an http:// or https:// URL with a host"
        )),
        Err(e) => Err(format!("{what} `{s}`: not a URL ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let key = tillup_core::sign::generate_keys().unwrap().public_line;
        format!(
            r#"
server = "http://127.0.0.1:9"
public_key = "{key}"
store_id = "store-1"
store_token = "t"
mode = "scheduled"
[window]
start = "23:00"
end = "02:00"
time_zone = "Asia/Shanghai"
[[terminals]]
number = 1
address = "http://127.0.0.1:10"
token = "a"
"#
        )
    }

    fn load(text: &str) -> Result<Config, Error> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p)
    }

    #[test]
    fn a_good_file_loads_with_defaults() {
        let c = load(&sample()).unwrap();
        assert_eq!(c.mode, Mode::Scheduled);
        assert_eq!(c.channel, "stable");
        assert_eq!(c.check.interval_minutes, 60);
    }

    #[test]
    fn a_saved_configuration_loads_back_the_same_and_a_bad_one_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut c = load(&sample()).unwrap();
        c.save(&path).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(
            toml::to_string(&back).unwrap(),
            toml::to_string(&c).unwrap()
        );
        c.server = "not a url".into();
        let e = c.save(&path).unwrap_err().to_string();
        assert!(e.contains("server"), "{e}");
        assert_eq!(
            Config::load(&path).unwrap().server,
            back.server,
            "the file is unchanged"
        );
    }

    #[test]
    fn a_window_across_midnight() {
        let w = load(&sample()).unwrap().parsed_window().unwrap();
        let at = |s: &str| s.parse::<jiff::Zoned>().unwrap().timestamp();
        assert!(w.contains(at("2026-11-21T23:30:00+08:00[Asia/Shanghai]")));
        assert!(w.contains(at("2026-11-22T01:59:00+08:00[Asia/Shanghai]")));
        assert!(!w.contains(at("2026-11-22T02:00:00+08:00[Asia/Shanghai]")));
        assert!(!w.contains(at("2026-11-22T12:00:00+08:00[Asia/Shanghai]")));
    }

    #[test]
    fn the_next_window_opening() {
        let w = load(&sample()).unwrap().parsed_window().unwrap();
        let at = |s: &str| s.parse::<jiff::Zoned>().unwrap().timestamp();
        let noon = at("2026-11-21T12:00:00+08:00[Asia/Shanghai]");
        assert_eq!(
            w.next_start(noon),
            at("2026-11-21T23:00:00+08:00[Asia/Shanghai]")
        );
        let inside = at("2026-11-22T01:00:00+08:00[Asia/Shanghai]");
        assert_eq!(w.next_start(inside), inside);
        let after = at("2026-11-22T02:30:00+08:00[Asia/Shanghai]");
        assert_eq!(
            w.next_start(after),
            at("2026-11-22T23:00:00+08:00[Asia/Shanghai]")
        );
        assert_eq!(w.length(), jiff::SignedDuration::from_hours(3));
    }

    #[test]
    fn an_oversized_file_is_refused_before_parsing() {
        // Valid TOML all along: only its size is wrong.
        let mut text = sample();
        text.push_str(&"# padding\n".repeat(MAX_CONFIG_BYTES / 10 + 1));
        assert!(text.len() > MAX_CONFIG_BYTES);
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && err.contains("larger than 1048576 bytes"),
            "{err}"
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        // Just under the bound it loads.
        text.truncate(MAX_CONFIG_BYTES);
        let cut = text.rfind('\n').unwrap() + 1;
        text.truncate(cut);
        load(&text).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_file_is_not_read_to_its_end() {
        let err = Config::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn bad_input_says_what_and_where() {
        let cases = [
            (sample().replace("http://127.0.0.1:9", "ftp://x"), "server"),
            (sample().replace("23:00", "25:99"), "window.start"),
            (
                sample().replace("Asia/Shanghai", "Mars/Olympus"),
                "window.time_zone",
            ),
            (
                sample().replace("store_token = \"t\"", "store_token = \"\""),
                "store_token",
            ),
            (
                sample().replace("mode = \"scheduled\"", "mode = \"sometimes\""),
                "mode",
            ),
            (
                sample() + "\n[[terminals]]\nnumber = 1\naddress = \"http://x\"\ntoken = \"b\"\n",
                "listed twice",
            ),
            (
                sample().replace("public_key = ", "public_key = \"nope\"\n#"),
                "public_key",
            ),
            (sample() + "\ncolour = 1\n", "colour"),
            (
                sample().replace("mode = ", "halt_percent = 150\nmode = "),
                "halt_percent = 150 is not a percentage",
            ),
        ];
        for (text, want) in cases {
            let err = load(&text).unwrap_err().to_string();
            assert!(
                err.contains("config.toml") && err.contains(want),
                "{want}: {err}"
            );
        }
    }

    #[test]
    fn the_server_is_https_unless_on_this_machine_or_allowed_by_name() {
        let with = |server: &str| sample().replace("http://127.0.0.1:9", server);
        for ok in [
            "https://updates.example.com",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            load(&with(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = load(&with("http://10.1.2.3:8080")).unwrap_err().to_string();
        assert!(
            err.contains("in clear") && err.contains("allow_plain_http_server"),
            "{err}"
        );
        let allowed = format!(
            "allow_plain_http_server = true\n{}",
            with("http://10.1.2.3:8080")
        );
        assert!(load(&allowed).unwrap().allow_plain_http_server);
    }

    #[test]
    fn mirrors_are_held_to_the_servers_rules_and_kept_in_order() {
        let with = |mirrors: &str| format!("mirrors = {mirrors}\n{}", sample());
        let c = load(&with(r#"["https://m1.example.com", "http://127.0.0.1:7"]"#)).unwrap();
        assert_eq!(c.mirrors, ["https://m1.example.com", "http://127.0.0.1:7"]);
        for (mirrors, want) in [
            (r#"["not a url"]"#, "mirrors[0] `not a url`: not a URL"),
            (
                r#"["https://m1.example.com", "http://10.1.2.3:8080"]"#,
                "`http://10.1.2.3:8080`: the store token",
            ),
        ] {
            let err = load(&with(mirrors)).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        assert!(load(&sample()).unwrap().mirrors.is_empty());
    }
}
