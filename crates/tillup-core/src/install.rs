//! What a terminal may install, decided by the terminal itself.
//!
//! The host hands each agent the signed version log ([`SignedLog`]) with
//! the folder to stage, and the release's manifest among the files. The
//! agent pins the chain's key, so holding the agent's token is not enough
//! to install anything: [`check_release`] accepts a staged release only if
//! the log verifies, is fresh (never older than the last one this
//! terminal accepted), names the version, supports the terminal's model
//! and does not take it backwards; [`check_folder`] accepts the folder to
//! swap in only if it is exactly that release's files plus the terminal's
//! own files kept under the release's `preserve` patterns, which is the
//! host's and the server's rule ([`merge_for_terminal`]) computed a third
//! time, on the terminal, from its own folder.

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::Sha256Hex;
use crate::keys::{KeyChain, KeyRefusal, Trust};
use crate::log::{Refusal, Release, SeenLog, VersionLog, check_fresh};
use crate::manifest::{Manifest, ManifestError, merge_for_terminal};

/// A version log exactly as the server signed it, with the key lists
/// that say which keys may sign it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedLog {
    /// The log's bytes (UTF-8 JSON), as signed.
    pub log: String,
    /// Its minisign signature (the `.minisig` text).
    pub signature: String,
    /// The server's key chain (see [`crate::keys`]); empty when the root
    /// signs logs itself.
    #[serde(default)]
    pub keys: KeyChain,
}

/// Why a terminal refuses to install what it was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallRefusal {
    #[error(
        "the version log's signature does not verify with this terminal's trusted keys ({0}): nothing is installed"
    )]
    BadSignature(String),
    #[error(transparent)]
    Keys(#[from] KeyRefusal),
    #[error("the signed version log is invalid: {0}")]
    BadLog(String),
    #[error(transparent)]
    Stale(#[from] Refusal),
    #[error("version {0} is not in the signed version log: nothing is installed")]
    NotInLog(Version),
    #[error("release {version} does not support this terminal's model `{model}`")]
    WrongModel { version: Version, model: String },
    #[error(
        "release {version} is older than {running}, which this terminal runs: a downgrade is refused (publish a newer release instead)"
    )]
    Downgrade { version: Version, running: Version },
    #[error(
        "release {version} upgrades only from {min_from} or newer; this terminal runs {running}"
    )]
    TooOld {
        version: Version,
        min_from: Version,
        running: Version,
    },
    #[error(
        "the release manifest is not the one the signed log names (it names {signed}, this is {got})"
    )]
    WrongManifest { signed: Sha256Hex, got: Sha256Hex },
    #[error(
        "the folder to install is not release {version} with this terminal's own files: {difference}; nothing is installed"
    )]
    Tampered {
        version: Version,
        difference: String,
    },
}

/// What [`check_release`] found: the release's entry, and the log and
/// keys to remember so older ones are refused from now on.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub release: Release,
    pub seen: SeenLog,
    pub trust: Trust,
}

/// Checks that `signed` is a genuine, fresh log of `channel` naming
/// `version` for `model`, and that installing it does not take a terminal
/// running `running` backwards.
#[allow(clippy::too_many_arguments)]
pub fn check_release(
    trust: &Trust,
    signed: &SignedLog,
    channel: &str,
    seen: Option<&SeenLog>,
    now: Timestamp,
    version: &Version,
    model: &str,
    running: Option<&Version>,
) -> Result<Accepted, InstallRefusal> {
    let trust = trust.follow(&signed.keys, now)?;
    trust
        .verify_log(signed.log.as_bytes(), &signed.signature)
        .map_err(|e| InstallRefusal::BadSignature(e.to_string()))?;
    let log = VersionLog::parse(signed.log.as_bytes())
        .map_err(|e| InstallRefusal::BadLog(e.to_string()))?;
    let digest = Sha256Hex::of(signed.log.as_bytes());
    check_fresh(&log, digest, channel, seen, now)?;
    let release = log
        .release(version)
        .ok_or_else(|| InstallRefusal::NotInLog(version.clone()))?;
    if !release.supports(model) {
        return Err(InstallRefusal::WrongModel {
            version: version.clone(),
            model: model.to_owned(),
        });
    }
    if let Some(running) = running {
        if running > version {
            return Err(InstallRefusal::Downgrade {
                version: version.clone(),
                running: running.clone(),
            });
        }
        if let Some(min_from) = release.min_from.as_ref().filter(|m| running < *m) {
            return Err(InstallRefusal::TooOld {
                version: version.clone(),
                min_from: min_from.clone(),
                running: running.clone(),
            });
        }
    }
    Ok(Accepted {
        release: release.clone(),
        seen: SeenLog {
            sequence: log.sequence,
            digest,
        },
        trust,
    })
}

/// A release's manifest whose bytes hashed to the digest it was checked
/// against: what [`check_folder`] compares a staging folder with. Parsed
/// once, it can be checked before a stop and used at the commit.
#[derive(Clone, Debug)]
pub struct ReleaseFiles {
    sha256: Sha256Hex,
    files: Manifest,
}

impl ReleaseFiles {
    /// Parses `manifest_bytes` if they hash to `release`'s manifest digest.
    pub fn check(release: &Release, manifest_bytes: &[u8]) -> Result<Self, InstallRefusal> {
        let got = Sha256Hex::of(manifest_bytes);
        if got != release.sha256 {
            return Err(InstallRefusal::WrongManifest {
                signed: release.sha256,
                got,
            });
        }
        let files = Manifest::parse(manifest_bytes)
            .map_err(|e: ManifestError| InstallRefusal::BadLog(e.to_string()))?;
        Ok(Self { sha256: got, files })
    }

    /// The digest its bytes hashed to.
    pub fn sha256(&self) -> Sha256Hex {
        self.sha256
    }
}

/// Checks that `staged` is exactly `release` (whose manifest is `files`)
/// merged with `current`, the terminal's folder now.
pub fn check_folder(
    release: &Release,
    files: &ReleaseFiles,
    current: &Manifest,
    staged: &Manifest,
) -> Result<(), InstallRefusal> {
    if files.sha256 != release.sha256 {
        return Err(InstallRefusal::WrongManifest {
            signed: release.sha256,
            got: files.sha256,
        });
    }
    let bad = |e: &dyn std::fmt::Display| InstallRefusal::BadLog(e.to_string());
    let preserve = crate::manifest::Preserve::new(&release.preserve).map_err(|e| bad(&e))?;
    let expected = merge_for_terminal(&files.files, current, &preserve).map_err(|e| bad(&e))?;
    if expected == *staged {
        return Ok(());
    }
    Err(InstallRefusal::Tampered {
        version: release.version.clone(),
        difference: first_difference(&expected, staged),
    })
}

/// The first file (by path) where `staged` differs from `expected`, in words.
fn first_difference(expected: &Manifest, staged: &Manifest) -> String {
    let changes = expected.changes_to(staged);
    if let Some(f) = changes.upsert.first() {
        return match expected.get(&f.path) {
            Some(_) => format!(
                "`{}` is not the file the release and this terminal hold",
                f.path
            ),
            None => format!(
                "`{}` is neither in the release nor this terminal's own",
                f.path
            ),
        };
    }
    if let Some(p) = changes.remove.first() {
        return format!("`{p}` is missing");
    }
    "the folders differ".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FileEntry;
    use crate::sign::generate_keys;

    fn file(path: &str, content: &str) -> FileEntry {
        FileEntry {
            path: crate::RelPath::new(path).unwrap(),
            size: content.len() as u64,
            sha256: Sha256Hex::of(content.as_bytes()),
            exec: false,
        }
    }

    struct Fixture {
        key: Trust,
        signed: SignedLog,
        manifest_bytes: Vec<u8>,
        release: Manifest,
    }

    /// A log of channel `stable`, sequence `sequence`, with release 1.1.0
    /// (models CP-500, min_from 1.0.0, preserving `config/local/**`).
    fn fixture(sequence: u64) -> Fixture {
        let keys = generate_keys().unwrap();
        let secret = crate::sign::SecretKey::parse(&keys.secret_file, None).unwrap();
        let release = Manifest::new(vec![
            file("bin/pos", "new program"),
            file("config/app.ini", "defaults"),
        ])
        .unwrap();
        let manifest_bytes = release.to_bytes();
        let log = serde_json::json!({
            "channel": "stable",
            "sequence": sequence,
            "generated": "2026-11-01T00:00:00Z",
            "expires": "2026-12-31T00:00:00Z",
            "releases": [{
                "version": "1.1.0",
                "date": "2026-11-01T00:00:00Z",
                "size": 20,
                "sha256": Sha256Hex::of(&manifest_bytes).to_string(),
                "notes": {"en": "", "zh_cn": ""},
                "min_from": "1.0.0",
                "models": ["CP-500"],
                "preserve": ["config/local/**"],
            }],
        })
        .to_string();
        let signature = secret.sign(log.as_bytes(), "test").unwrap();
        Fixture {
            key: Trust::pinned(&keys.public_line),
            signed: SignedLog {
                log,
                signature,
                keys: KeyChain::default(),
            },
            manifest_bytes,
            release,
        }
    }

    fn now() -> Timestamp {
        "2026-11-15T00:00:00Z".parse().unwrap()
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn check(
        f: &Fixture,
        seen: Option<&SeenLog>,
        version: &str,
        model: &str,
        running: &str,
    ) -> Result<Accepted, InstallRefusal> {
        check_release(
            &f.key,
            &f.signed,
            "stable",
            seen,
            now(),
            &v(version),
            model,
            Some(&v(running)),
        )
    }

    #[test]
    fn a_genuine_fresh_release_for_this_model_is_accepted() {
        let f = fixture(7);
        let ok = check(&f, None, "1.1.0", "CP-500", "1.0.0").unwrap();
        assert_eq!(ok.seen.sequence, 7);
        assert_eq!(ok.release.version, v("1.1.0"));
    }

    #[test]
    fn a_tampered_replayed_or_expired_log_is_refused() {
        let f = fixture(7);
        let mut tampered = f.signed.clone();
        tampered.log = tampered.log.replace("CP-500", "CP-700");
        let got = check_release(
            &f.key,
            &tampered,
            "stable",
            None,
            now(),
            &v("1.1.0"),
            "CP-700",
            None,
        );
        assert!(
            matches!(got, Err(InstallRefusal::BadSignature(_))),
            "{got:?}"
        );

        let newer = SeenLog {
            sequence: 8,
            digest: Sha256Hex::of(b"x"),
        };
        let got = check(&f, Some(&newer), "1.1.0", "CP-500", "1.0.0");
        assert!(
            matches!(got, Err(InstallRefusal::Stale(Refusal::Replayed { .. }))),
            "{got:?}"
        );

        let later: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        let got = check_release(
            &f.key,
            &f.signed,
            "stable",
            None,
            later,
            &v("1.1.0"),
            "CP-500",
            None,
        );
        assert!(
            matches!(got, Err(InstallRefusal::Stale(Refusal::Expired { .. }))),
            "{got:?}"
        );

        let other_key = Trust::pinned(&generate_keys().unwrap().public_line);
        let got = check_release(
            &other_key,
            &f.signed,
            "stable",
            None,
            now(),
            &v("1.1.0"),
            "CP-500",
            None,
        );
        assert!(
            matches!(got, Err(InstallRefusal::BadSignature(_))),
            "{got:?}"
        );
    }

    #[test]
    fn a_version_not_in_the_log_another_model_or_a_downgrade_is_refused() {
        let f = fixture(7);
        assert!(matches!(
            check(&f, None, "1.2.0", "CP-500", "1.0.0"),
            Err(InstallRefusal::NotInLog(_))
        ));
        assert!(matches!(
            check(&f, None, "1.1.0", "CP-700", "1.0.0"),
            Err(InstallRefusal::WrongModel { .. })
        ));
        assert!(matches!(
            check(&f, None, "1.1.0", "CP-500", "1.2.0"),
            Err(InstallRefusal::Downgrade { .. })
        ));
        assert!(matches!(
            check(&f, None, "1.1.0", "CP-500", "0.9.0"),
            Err(InstallRefusal::TooOld { .. })
        ));
    }

    #[test]
    fn only_the_release_plus_the_terminals_own_preserved_files_may_be_installed() {
        let f = fixture(7);
        let accepted = check(&f, None, "1.1.0", "CP-500", "1.0.0").unwrap();
        let current = Manifest::new(vec![
            file("bin/pos", "old program"),
            file("config/app.ini", "defaults"),
            file("config/local/terminal.ini", "number = 1"),
        ])
        .unwrap();
        let good = Manifest::new(vec![
            file("bin/pos", "new program"),
            file("config/app.ini", "defaults"),
            file("config/local/terminal.ini", "number = 1"),
        ])
        .unwrap();
        let files = ReleaseFiles::check(&accepted.release, &f.manifest_bytes).unwrap();
        check_folder(&accepted.release, &files, &current, &good).unwrap();

        let changed = good
            .with_changes(
                &good.changes_to(
                    &Manifest::new(vec![
                        file("bin/pos", "evil program"),
                        file("config/app.ini", "defaults"),
                        file("config/local/terminal.ini", "number = 1"),
                    ])
                    .unwrap(),
                ),
            )
            .unwrap();
        let added = Manifest::new(
            good.files()
                .iter()
                .cloned()
                .chain([file("bin/implant", "evil")])
                .collect(),
        )
        .unwrap();
        let forged_local = Manifest::new(vec![
            file("bin/pos", "new program"),
            file("config/app.ini", "defaults"),
            file("config/local/terminal.ini", "number = 99"),
        ])
        .unwrap();
        for (name, staged) in [
            ("changed", changed),
            ("added", added),
            ("forged local", forged_local),
        ] {
            let got = check_folder(&accepted.release, &files, &current, &staged);
            assert!(
                matches!(got, Err(InstallRefusal::Tampered { .. })),
                "{name}: {got:?}"
            );
        }
        // A manifest other than the signed one.
        let other = Manifest::new(vec![file("bin/pos", "evil program")]).unwrap();
        let got = ReleaseFiles::check(&accepted.release, &other.to_bytes());
        assert!(
            matches!(got, Err(InstallRefusal::WrongManifest { .. })),
            "{got:?}"
        );
        assert_eq!(f.release.len(), 2);
    }
}
