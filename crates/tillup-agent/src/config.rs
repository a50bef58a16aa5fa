//! The agent's TOML configuration.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `tillup-agent --config FILE`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The terminal's number in its store.
    pub terminal: u32,
    /// The terminal's hardware model.
    pub model: String,
    /// The Bearer token the host must send (at least 16 characters), or
    /// rather its SHA-256 in `token_sha256`, so that the terminal keeps no
    /// copy of it: `tillup-agent new-token` makes one.
    #[serde(default)]
    pub token: Option<String>,
    /// The SHA-256 (hex) of the Bearer token the host must send.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// The SHA-256 of the token, from either field, made once at load.
    #[serde(skip)]
    token_digest: [u8; 32],
    /// The chain's root key (the `RW…` line the store host's config has
    /// as `public_key`): the agent installs only releases named by a
    /// version log signed with it, or with a key it lists (see
    /// `tillup_core::keys`), whoever holds the token.
    pub trust_key: String,
    /// The channel whose signed logs the agent accepts.
    #[serde(default = "stable")]
    pub channel: String,
    /// The channel of tillup's own releases, whose signed logs the agent
    /// accepts to replace its own executable (see `tillup_core::selfupdate`).
    #[serde(default = "self_channel")]
    pub self_channel: String,
    /// The file it was loaded from, for the self-check of a new executable.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Serve over TLS with the agent's own certificate (which the host
    /// pins at pairing). Off only where something else protects the LAN.
    #[serde(default = "yes")]
    pub tls: bool,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The program folder (`cupos`).
    pub folder: PathBuf,
    /// The agent's own files; default: a sibling `<folder>.tillup-agent`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The file holding the folder's version, relative to the folder.
    #[serde(default = "default_version_file")]
    pub version_file: String,
    /// The largest file a pack sent to the agent (`PUT /v1/pack`) may hold, in bytes.
    #[serde(default = "eight_gib")]
    pub max_blob_bytes: u64,
    /// If the host goes silent this long while the main program is stopped
    /// (or a new release waits for its health check), the agent starts the
    /// main program on whatever folder is committed (and checks it).
    #[serde(default = "ten_minutes")]
    pub watchdog_secs: u64,
    /// The main program.
    pub main: MainConfig,
}

/// `[main]`: how to run, stop, and check the main program. `{folder}` in
/// any command or path is replaced with the program folder.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// After SIGTERM, wait this long before SIGKILL.
    #[serde(default = "ten")]
    pub stop_timeout_secs: u64,
    /// A sale is in progress while this file exists.
    #[serde(default)]
    pub busy_file: Option<PathBuf>,
    /// A sale is in progress while this command exits 0.
    #[serde(default)]
    pub busy_command: Option<Vec<String>>,
    /// Wait this long for a sale to finish before stopping anyway.
    #[serde(default = "sixty")]
    pub busy_timeout_secs: u64,
    /// Prints the running version on its first stdout line and exits 0 when healthy.
    pub health_command: Vec<String>,
    /// How long a health check may take.
    #[serde(default = "thirty")]
    pub health_timeout_secs: u64,
    /// Start the main program when the agent starts, unless it runs already.
    #[serde(default = "yes")]
    pub autostart: bool,
}

fn self_channel() -> String {
    tillup_core::selfupdate::SELF_CHANNEL.into()
}
fn stable() -> String {
    "stable".into()
}
fn default_version_file() -> String {
    "VERSION".into()
}
fn eight_gib() -> u64 {
    8 << 30
}
fn ten_minutes() -> u64 {
    600
}
fn ten() -> u64 {
    10
}
fn sixty() -> u64 {
    60
}
fn thirty() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// The shortest plain `token` accepted: 16 characters of `new-token`'s
/// alphabet already carry 96 bits; it makes 43 (256 bits).
pub const MIN_TOKEN_CHARS: usize = 16;

/// A new token for a host to send, and what the agent's config keeps of
/// it (`token_sha256`).
pub fn new_token() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let raw: [u8; 32] = rand::random();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    (token, digest)
}

/// The largest configuration file accepted: 1 MiB. A real one is well under
/// a kilobyte; anything near this is the wrong file.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error(
        "config file {path} is larger than {MAX_CONFIG_BYTES} bytes; an agent's configuration is a few hundred bytes: check that --config names the right file"
    )]
    TooLarge {
        /// The config file.
        path: PathBuf,
    },
    /// The TOML is invalid, a field is unknown, missing or of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, naming the field and line.
        message: String,
    },
    /// The values do not make sense together.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Which fields disagree.
        message: String,
    },
}

impl Config {
    /// Reads (at most [`MAX_CONFIG_BYTES`]), parses, checks and expands
    /// `{folder}` in `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(read)?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// [`Config::load`] of a string (errors carry an empty path).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: PathBuf::new(),
            });
        }
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: PathBuf::new(),
            message: message.to_owned(),
        };
        match (&c.token, &c.token_sha256) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "set only one of `token` and `token_sha256` (better: token_sha256)",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "`token_sha256` is missing: run `tillup-agent new-token` and put the line it prints here, and the token in the host's config",
                ));
            }
            (Some(t), None) if t.trim().chars().count() < MIN_TOKEN_CHARS => {
                return Err(invalid(&format!(
                    "`token` must have at least {MIN_TOKEN_CHARS} characters: run `tillup-agent new-token` for one"
                )));
            }
            (None, Some(h)) if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(invalid(
                    "`token_sha256` must be 64 hex digits, as `tillup-agent new-token` prints it",
                ));
            }
            (Some(t), None) => {
                use sha2::Digest;
                c.token_digest = sha2::Sha256::digest(t.trim().as_bytes()).into();
            }
            (None, Some(h)) => {
                hex::decode_to_slice(h, &mut c.token_digest).expect("64 hex digits, checked");
            }
        }
        if let Err(e) = tillup_core::sign::PublicKey::parse(&c.trust_key) {
            return Err(invalid(&format!(
                "`trust_key` is not a public key ({e}): give the `RW…` line `tillup-server keygen` printed, as the store host's config has it"
            )));
        }
        if c.main.command.is_empty() {
            return Err(invalid("`main.command` must name a program"));
        }
        if c.main.health_command.is_empty() {
            return Err(invalid("`main.health_command` must name a program"));
        }
        if c.main.busy_file.is_some() && c.main.busy_command.is_some() {
            return Err(invalid(
                "set only one of `main.busy_file` and `main.busy_command`",
            ));
        }
        if c.main.busy_command.as_ref().is_some_and(|b| b.is_empty()) {
            return Err(invalid("`main.busy_command` must name a program"));
        }
        if c.folder.file_name().is_none() {
            return Err(invalid(
                "`folder` must end in a folder name (the staging and previous folders are its siblings)",
            ));
        }
        if tillup_core::RelPath::new(&c.version_file).is_err() {
            return Err(invalid("`version_file` must be a path inside the folder"));
        }
        let folder = c.folder.to_string_lossy().into_owned();
        let expand = |v: &mut Vec<String>| {
            v.iter_mut()
                .for_each(|s| *s = s.replace("{folder}", &folder))
        };
        expand(&mut c.main.command);
        expand(&mut c.main.health_command);
        if let Some(b) = c.main.busy_command.as_mut() {
            expand(b);
        }
        if let Some(b) = c.main.busy_file.as_mut() {
            *b = PathBuf::from(b.to_string_lossy().replace("{folder}", &folder));
        }
        Ok(c)
    }

    /// Whether `given` is the host's token (in constant time).
    pub fn accepts(&self, given: &[u8]) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        bool::from(
            sha2::Sha256::digest(given)
                .as_slice()
                .ct_eq(&self.token_digest),
        )
    }

    /// The agent's state folder.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| crate::folder::sibling(&self.folder, "tillup-agent"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
terminal = 2
model = "CP-500"
token = "secret-of-the-host-0123"
trust_key = "RWTkrcTyYrt1qYLHJb5GMRdYFzoIIVJ7cmjyUZYxORPNpjmgV8IL94QQ"
listen = "127.0.0.1:0"
folder = "/pos/cupos"
[main]
command = ["{folder}/bin/pos-sim", "run", "--folder", "{folder}"]
health_command = ["{folder}/bin/pos-sim", "probe"]
"#;

    #[test]
    fn defaults_and_folder_expansion() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.main.command[0], "/pos/cupos/bin/pos-sim");
        assert_eq!(c.main.command[3], "/pos/cupos");
        assert_eq!(
            (
                c.main.stop_timeout_secs,
                c.main.busy_timeout_secs,
                c.main.health_timeout_secs,
                c.main.autostart
            ),
            (10, 60, 30, true)
        );
        assert_eq!(c.version_file, "VERSION");
        assert_eq!(c.max_blob_bytes, 8 * 1024 * 1024 * 1024);
        assert_eq!(c.state_dir(), PathBuf::from("/pos/cupos.tillup-agent"));
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let err = Config::parse(&GOOD.replace("model", "modle"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("modle"), "{err}");
        let err = Config::parse(&GOOD.replace("token = \"secret-of-the-host-0123\"", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("token"), "{err}");
        let err = Config::parse(&GOOD.replace("terminal = 2", "terminal = \"two\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("terminal"), "{err}");
    }

    #[test]
    fn an_oversized_file_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        let mut text = GOOD.to_owned();
        text.push_str(&"# padding\n".repeat(MAX_CONFIG_BYTES / 10 + 1));
        std::fs::write(&p, &text).unwrap();
        let err = Config::load(&p).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("agent.toml"), "{err}");
        assert!(matches!(
            Config::parse(&text),
            Err(ConfigError::TooLarge { .. })
        ));
        // Just under the bound it loads.
        text.truncate(MAX_CONFIG_BYTES);
        text.truncate(text.rfind('\n').unwrap() + 1);
        std::fs::write(&p, &text).unwrap();
        Config::load(&p).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_file_is_not_read_to_its_end() {
        let err = Config::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, GOOD.replace("[main]", "[main]\nbusy_fiel = \"x\"")).unwrap();
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("busy_fiel"),
            "{err}"
        );
    }

    #[test]
    fn refuses_both_busy_checks_and_empty_token() {
        let both = GOOD.replace(
            "[main]",
            "[main]\nbusy_file = \"/b\"\nbusy_command = [\"true\"]",
        );
        assert!(
            Config::parse(&both)
                .unwrap_err()
                .to_string()
                .contains("only one")
        );
        assert!(
            Config::parse(&GOOD.replace("\"secret-of-the-host-0123\"", "\"short\""))
                .unwrap_err()
                .to_string()
                .contains("token")
        );
    }

    #[test]
    fn a_token_is_kept_as_its_hash_and_checked_in_either_form() {
        let (token, digest) = new_token();
        assert!(token.len() >= 43, "256 bits: {token}");
        let hashed = GOOD.replace(
            "token = \"secret-of-the-host-0123\"",
            &format!("token_sha256 = \"{digest}\""),
        );
        let c = Config::parse(&hashed).unwrap();
        assert!(c.accepts(token.as_bytes()));
        assert!(!c.accepts(b"secret-of-the-host-0123"));
        let plain = Config::parse(GOOD).unwrap();
        assert!(plain.accepts(b"secret-of-the-host-0123") && !plain.accepts(token.as_bytes()));
        let both = format!("token_sha256 = \"{digest}\"\n{GOOD}");
        assert!(
            Config::parse(&both)
                .unwrap_err()
                .to_string()
                .contains("only one")
        );
        let bad = hashed.replace(&digest, "abc");
        assert!(
            Config::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
    }
}
