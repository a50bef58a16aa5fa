//! The signed version log (DESIGN §1) and the compare rule.

use std::collections::BTreeSet;

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::hash::Sha256Hex;
use crate::manifest::{BadPattern, Preserve};

/// The largest version log accepted, in bytes.
pub const MAX_LOG_BYTES: usize = 4 * 1024 * 1024;

/// One channel's list of releases, signed as a whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionLog {
    pub channel: String,
    /// Grows by one at every signing: a log with a lower sequence than one
    /// already seen is a replay.
    pub sequence: u64,
    pub generated: Timestamp,
    /// After this a log is stale: a frozen mirror cannot hide new releases.
    pub expires: Timestamp,
    pub releases: Vec<Release>,
}

/// One release of the POS program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Release {
    #[schema(value_type = crate::openapi::SemVer)]
    pub version: Version,
    pub date: Timestamp,
    /// Total bytes of the release's files.
    pub size: u64,
    /// SHA-256 of the release manifest, which names every file by its hash.
    pub sha256: Sha256Hex,
    pub notes: Notes,
    #[serde(default)]
    pub critical: bool,
    /// The oldest version this release can upgrade from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::openapi::SemVer>)]
    pub min_from: Option<Version>,
    /// Terminal models it supports; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Globs of terminal-local files an upgrade keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preserve: Vec<String>,
    /// The stores that may install it, by id, while a staged rollout
    /// admits it store by store; none (absent): every store of the channel.
    /// Signed with the rest of the log, so no mirror or proxy can admit a
    /// store early (see [`Release::admits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<Vec<String>>,
}

/// Release notes in the two languages the listener shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notes {
    #[serde(default)]
    pub en: String,
    #[serde(default, rename = "zh-CN")]
    pub zh_cn: String,
}

/// Why a log was refused at parse time.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the version log is {0} bytes, more than the {MAX_LOG_BYTES} allowed")]
    TooLarge(usize),
    #[error("the version log is not valid: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("the version log lists release {0} twice")]
    DuplicateVersion(Version),
    #[error("release {version}: {source}")]
    Preserve {
        version: Version,
        source: BadPattern,
    },
    #[error("the version log expires ({expires}) before it was generated ({generated})")]
    ExpiresBeforeGenerated {
        generated: Timestamp,
        expires: Timestamp,
    },
}

impl VersionLog {
    /// Parses log bytes (already signature-checked by the caller).
    pub fn parse(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() > MAX_LOG_BYTES {
            return Err(LogError::TooLarge(bytes.len()));
        }
        let log: VersionLog = serde_json::from_slice(bytes)?;
        log.validate()?;
        Ok(log)
    }

    fn validate(&self) -> Result<(), LogError> {
        if self.expires <= self.generated {
            return Err(LogError::ExpiresBeforeGenerated {
                generated: self.generated,
                expires: self.expires,
            });
        }
        let mut seen = BTreeSet::new();
        for r in &self.releases {
            if !seen.insert(&r.version) {
                return Err(LogError::DuplicateVersion(r.version.clone()));
            }
            r.preserve_set()?;
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a log always serialises")
    }

    pub fn release(&self, v: &Version) -> Option<&Release> {
        self.releases.iter().find(|r| &r.version == v)
    }

    /// The log as store `store` acts on it: the releases it admits. A
    /// release a staged rollout has not admitted the store to yet is, for
    /// that store, not there.
    pub fn for_store(&self, store: &str) -> VersionLog {
        VersionLog {
            releases: self
                .releases
                .iter()
                .filter(|r| r.admits(store))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    pub fn newest(&self) -> Option<&Release> {
        self.releases
            .iter()
            .max_by(|a, b| a.version.cmp(&b.version))
    }
}

impl Release {
    pub fn preserve_set(&self) -> Result<Preserve, LogError> {
        Preserve::new(&self.preserve).map_err(|source| LogError::Preserve {
            version: self.version.clone(),
            source,
        })
    }

    pub fn supports(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// Whether store `store` may install it now.
    pub fn admits(&self, store: &str) -> bool {
        self.stores
            .as_ref()
            .is_none_or(|stores| stores.iter().any(|s| s == store))
    }
}

/// What the listener last accepted, to refuse replays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenLog {
    pub sequence: u64,
    pub digest: Sha256Hex,
}

/// Why a correctly signed log is still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the version log expired at {expires} (now {now}): the server or a mirror is serving a stale log; check the server's clock and that it is running"
    )]
    Expired { expires: Timestamp, now: Timestamp },
    #[error(
        "the version log has sequence {got}, older than sequence {seen} already seen: an old log is being replayed (stale mirror or attack); nothing was changed"
    )]
    Replayed { seen: u64, got: u64 },
    #[error(
        "the version log has sequence {sequence} like the one already seen but different content: refused; nothing was changed"
    )]
    Forked { sequence: u64 },
    #[error("the version log is for channel `{got}`, not `{want}`")]
    WrongChannel { want: String, got: String },
}

/// Checks freshness: not expired, not older than what was already seen.
pub fn check_fresh(
    log: &VersionLog,
    digest: Sha256Hex,
    channel: &str,
    seen: Option<&SeenLog>,
    now: Timestamp,
) -> Result<(), Refusal> {
    if log.channel != channel {
        return Err(Refusal::WrongChannel {
            want: channel.to_owned(),
            got: log.channel.clone(),
        });
    }
    if log.expires <= now {
        return Err(Refusal::Expired {
            expires: log.expires,
            now,
        });
    }
    if let Some(seen) = seen {
        if log.sequence < seen.sequence {
            return Err(Refusal::Replayed {
                seen: seen.sequence,
                got: log.sequence,
            });
        }
        if log.sequence == seen.sequence && digest != seen.digest {
            return Err(Refusal::Forked {
                sequence: log.sequence,
            });
        }
    }
    Ok(())
}

/// What a terminal runs now, as the listener's local log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: Version,
    pub date: Option<Timestamp>,
    pub size: Option<u64>,
    pub sha256: Option<Sha256Hex>,
}

/// One terminal as the compare rule sees it.
#[derive(Clone, Debug)]
pub struct TerminalView<'a> {
    pub number: u32,
    pub model: &'a str,
    pub installed: &'a Installed,
}

/// The compare rule's answer for one terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing newer for this terminal.
    UpToDate { version: Version },
    /// Install `next` now; `target` is the newest reachable, `next` differs
    /// when `min_from` forces an intermediate release.
    Update {
        from: Version,
        next: Version,
        target: Version,
        critical: bool,
    },
    /// Newer releases exist, but none supports the terminal's model.
    NotForModel { model: String, newest: Version },
    /// Newer releases exist, but none can be installed over `from`.
    Unreachable {
        from: Version,
        newest: Version,
        min_from: Version,
    },
}

/// A finding that does not stop anything but must be shown and reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "warning", rename_all = "snake_case")]
pub enum Warning {
    /// The installed version appears in the log with another date, size or
    /// hash: it was republished. Not installed.
    Republished {
        version: Version,
        terminals: Vec<u32>,
        changed: Vec<String>,
    },
    /// A newer release leaves this terminal's model out.
    ModelExcluded {
        terminal: u32,
        model: String,
        version: Version,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::Republished {
                version,
                terminals,
                changed,
            } => write!(
                f,
                "release {version} was republished ({} changed) but terminal(s) {} run the original: not installed; ask the chain's IT whether the republished release is intended",
                changed.join(", "),
                terminals
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Warning::ModelExcluded {
                terminal,
                model,
                version,
            } => {
                write!(
                    f,
                    "release {version} does not support model {model} of terminal {terminal}: that terminal is left on its compatible release"
                )
            }
        }
    }
}

/// The compare rule over every terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub terminals: Vec<(u32, Verdict)>,
    pub warnings: Vec<Warning>,
}

impl Comparison {
    /// The newest version any terminal will reach, if any update is due.
    pub fn update_target(&self) -> Option<&Version> {
        self.terminals
            .iter()
            .filter_map(|(_, v)| {
                if let Verdict::Update { target, .. } = v {
                    Some(target)
                } else {
                    None
                }
            })
            .max()
    }

    pub fn is_critical(&self) -> bool {
        self.terminals
            .iter()
            .any(|(_, v)| matches!(v, Verdict::Update { critical: true, .. }))
    }
}

/// DESIGN §1's compare rule, for a log that verified and is fresh.
pub fn compare(log: &VersionLog, terminals: &[TerminalView<'_>]) -> Comparison {
    let mut releases: Vec<&Release> = log.releases.iter().collect();
    releases.sort_by(|a, b| b.version.cmp(&a.version));
    let mut out = Comparison {
        terminals: Vec::new(),
        warnings: Vec::new(),
    };

    for t in terminals {
        let inst = t.installed;
        if let Some(same) = log.release(&inst.version) {
            let mut changed = Vec::new();
            if inst.date.is_some_and(|d| d != same.date) {
                changed.push("date".to_owned());
            }
            if inst.size.is_some_and(|s| s != same.size) {
                changed.push("size".to_owned());
            }
            if inst.sha256.is_some_and(|h| h != same.sha256) {
                changed.push("hash".to_owned());
            }
            if !changed.is_empty() {
                match out.warnings.iter_mut().find(|w| matches!(w, Warning::Republished { version, .. } if *version == inst.version)) {
                    Some(Warning::Republished { terminals, .. }) => terminals.push(t.number),
                    _ => out.warnings.push(Warning::Republished { version: inst.version.clone(), terminals: vec![t.number], changed }),
                }
            }
        }

        let newer: Vec<&Release> = releases
            .iter()
            .copied()
            .filter(|r| r.version > inst.version)
            .collect();
        let compatible: Vec<&Release> = newer
            .iter()
            .copied()
            .filter(|r| r.supports(t.model))
            .collect();
        if let Some(excluded) = newer.first().filter(|r| !r.supports(t.model))
            && !compatible.is_empty()
        {
            out.warnings.push(Warning::ModelExcluded {
                terminal: t.number,
                model: t.model.to_owned(),
                version: excluded.version.clone(),
            });
        }
        let verdict = match (newer.first(), compatible.first()) {
            (None, _) => Verdict::UpToDate {
                version: inst.version.clone(),
            },
            (Some(newest), None) => Verdict::NotForModel {
                model: t.model.to_owned(),
                newest: newest.version.clone(),
            },
            (Some(_), Some(target)) => {
                // The newest compatible release installable over what runs now;
                // the next check continues from there (an intermediate hop).
                match compatible
                    .iter()
                    .find(|r| r.min_from.as_ref().is_none_or(|m| inst.version >= *m))
                {
                    Some(next) => Verdict::Update {
                        from: inst.version.clone(),
                        next: next.version.clone(),
                        target: target.version.clone(),
                        critical: compatible.iter().any(|r| r.critical),
                    },
                    None => Verdict::Unreachable {
                        from: inst.version.clone(),
                        newest: target.version.clone(),
                        min_from: target
                            .min_from
                            .clone()
                            .expect("unreachable only through min_from"),
                    },
                }
            }
        };
        out.terminals.push((t.number, verdict));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &str) -> Release {
        Release {
            version: v.parse().unwrap(),
            date: "2026-11-01T00:00:00Z".parse().unwrap(),
            size: 100,
            sha256: Sha256Hex::of(v.as_bytes()),
            notes: Notes::default(),
            critical: false,
            min_from: None,
            models: vec![],
            preserve: vec![],
            stores: None,
        }
    }

    #[test]
    fn a_release_admits_every_store_or_the_ones_it_names() {
        let open = rel("1.1.0");
        assert!(open.admits("any-store"));
        let wave = Release {
            stores: Some(vec!["s-1".into(), "s-2".into()]),
            ..rel("1.2.0")
        };
        assert!(wave.admits("s-2") && !wave.admits("s-3"));
        let stopped = Release {
            stores: Some(vec![]),
            ..rel("1.3.0")
        };
        assert!(!stopped.admits("s-1"));
        // For a store outside the wave, the newer releases are not there.
        let l = log(vec![open, wave, stopped]);
        let versions = |l: &VersionLog| -> Vec<String> {
            l.releases.iter().map(|r| r.version.to_string()).collect()
        };
        assert_eq!(versions(&l.for_store("s-3")), ["1.1.0"]);
        assert_eq!(versions(&l.for_store("s-1")), ["1.1.0", "1.2.0"]);
        assert_eq!(l.for_store("s-1").sequence, l.sequence);
        // The admission is part of the signed bytes; absent, it stays absent.
        let bytes = String::from_utf8(log(vec![rel("1.1.0")]).to_bytes()).unwrap();
        assert!(!bytes.contains("stores"), "{bytes}");
        assert!(String::from_utf8(l.to_bytes()).unwrap().contains("\"s-2\""));
    }

    fn log(releases: Vec<Release>) -> VersionLog {
        VersionLog {
            channel: "stable".into(),
            sequence: 5,
            generated: "2026-11-01T00:00:00Z".parse().unwrap(),
            expires: "2026-12-01T00:00:00Z".parse().unwrap(),
            releases,
        }
    }

    fn installed(r: &Release) -> Installed {
        Installed {
            version: r.version.clone(),
            date: Some(r.date),
            size: Some(r.size),
            sha256: Some(r.sha256),
        }
    }

    fn verdict(l: &VersionLog, inst: &Installed, model: &str) -> Verdict {
        compare(
            l,
            &[TerminalView {
                number: 1,
                model,
                installed: inst,
            }],
        )
        .terminals[0]
            .1
            .clone()
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn nothing_newer_is_up_to_date_silently() {
        let l = log(vec![rel("1.0.0")]);
        let c = compare(
            &l,
            &[TerminalView {
                number: 1,
                model: "A",
                installed: &installed(&rel("1.0.0")),
            }],
        );
        assert_eq!(
            c.terminals[0].1,
            Verdict::UpToDate {
                version: v("1.0.0")
            }
        );
        assert!(c.warnings.is_empty());
        assert_eq!(c.update_target(), None);
    }

    #[test]
    fn newer_version_is_an_update_to_the_newest() {
        let l = log(vec![rel("1.0.0"), rel("1.2.0"), rel("1.1.0")]);
        let got = verdict(&l, &installed(&rel("1.0.0")), "A");
        assert_eq!(
            got,
            Verdict::Update {
                from: v("1.0.0"),
                next: v("1.2.0"),
                target: v("1.2.0"),
                critical: false
            }
        );
    }

    #[test]
    fn republished_same_version_warns_and_installs_nothing() {
        let mut again = rel("1.0.0");
        again.size = 999;
        let l = log(vec![again]);
        let c = compare(
            &l,
            &[TerminalView {
                number: 3,
                model: "A",
                installed: &installed(&rel("1.0.0")),
            }],
        );
        assert_eq!(
            c.terminals[0].1,
            Verdict::UpToDate {
                version: v("1.0.0")
            }
        );
        assert_eq!(
            c.warnings,
            vec![Warning::Republished {
                version: v("1.0.0"),
                terminals: vec![3],
                changed: vec!["size".into()]
            }]
        );
    }

    #[test]
    fn min_from_goes_through_an_intermediate_release() {
        let mut r2 = rel("2.0.0");
        r2.min_from = Some(v("1.5.0"));
        let l = log(vec![rel("1.0.0"), rel("1.5.0"), r2]);
        let first = verdict(&l, &installed(&rel("1.0.0")), "A");
        assert_eq!(
            first,
            Verdict::Update {
                from: v("1.0.0"),
                next: v("1.5.0"),
                target: v("2.0.0"),
                critical: false
            }
        );
        let second = verdict(&l, &installed(&rel("1.5.0")), "A");
        assert_eq!(
            second,
            Verdict::Update {
                from: v("1.5.0"),
                next: v("2.0.0"),
                target: v("2.0.0"),
                critical: false
            }
        );
    }

    #[test]
    fn min_from_with_no_path_is_unreachable() {
        let mut r2 = rel("2.0.0");
        r2.min_from = Some(v("1.5.0"));
        let l = log(vec![rel("1.0.0"), r2]);
        let got = verdict(&l, &installed(&rel("1.0.0")), "A");
        assert_eq!(
            got,
            Verdict::Unreachable {
                from: v("1.0.0"),
                newest: v("2.0.0"),
                min_from: v("1.5.0")
            }
        );
    }

    #[test]
    fn models_exclude_terminals() {
        let mut r = rel("1.1.0");
        r.models = vec!["A".into()];
        let l = log(vec![rel("1.0.0"), r]);
        assert!(matches!(
            verdict(&l, &installed(&rel("1.0.0")), "A"),
            Verdict::Update { .. }
        ));
        assert_eq!(
            verdict(&l, &installed(&rel("1.0.0")), "B"),
            Verdict::NotForModel {
                model: "B".into(),
                newest: v("1.1.0")
            }
        );
    }

    #[test]
    fn excluded_newest_falls_back_to_compatible_and_warns() {
        let mut r12 = rel("1.2.0");
        r12.models = vec!["A".into()];
        let l = log(vec![rel("1.0.0"), rel("1.1.0"), r12]);
        let c = compare(
            &l,
            &[TerminalView {
                number: 2,
                model: "B",
                installed: &installed(&rel("1.0.0")),
            }],
        );
        assert!(matches!(&c.terminals[0].1, Verdict::Update { next, .. } if *next == v("1.1.0")));
        assert_eq!(
            c.warnings,
            vec![Warning::ModelExcluded {
                terminal: 2,
                model: "B".into(),
                version: v("1.2.0")
            }]
        );
    }

    #[test]
    fn critical_is_carried() {
        let mut r = rel("1.1.0");
        r.critical = true;
        let l = log(vec![rel("1.0.0"), r]);
        assert!(matches!(
            verdict(&l, &installed(&rel("1.0.0")), "A"),
            Verdict::Update { critical: true, .. }
        ));
    }

    #[test]
    fn freshness_refuses_expired_replayed_and_forked_logs() {
        let l = log(vec![]);
        let d = Sha256Hex::of(b"log");
        let now: Timestamp = "2026-11-15T00:00:00Z".parse().unwrap();
        check_fresh(&l, d, "stable", None, now).unwrap();
        let later: Timestamp = "2026-12-02T00:00:00Z".parse().unwrap();
        assert!(matches!(
            check_fresh(&l, d, "stable", None, later),
            Err(Refusal::Expired { .. })
        ));
        let seen = SeenLog {
            sequence: 6,
            digest: d,
        };
        assert_eq!(
            check_fresh(&l, d, "stable", Some(&seen), now),
            Err(Refusal::Replayed { seen: 6, got: 5 })
        );
        let same_seq = SeenLog {
            sequence: 5,
            digest: Sha256Hex::of(b"other"),
        };
        assert_eq!(
            check_fresh(&l, d, "stable", Some(&same_seq), now),
            Err(Refusal::Forked { sequence: 5 })
        );
        assert!(matches!(
            check_fresh(&l, d, "beta", None, now),
            Err(Refusal::WrongChannel { .. })
        ));
    }

    #[test]
    fn parse_refuses_duplicates_bad_globs_and_oversize() {
        let dup = log(vec![rel("1.0.0"), rel("1.0.0")]);
        assert!(matches!(
            VersionLog::parse(&dup.to_bytes()),
            Err(LogError::DuplicateVersion(_))
        ));
        let mut bad = rel("1.0.0");
        bad.preserve = vec!["a/[".into()];
        let err = VersionLog::parse(&log(vec![bad]).to_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("release 1.0.0") && err.contains("a/["),
            "{err}"
        );
        assert!(matches!(
            VersionLog::parse(&vec![b' '; MAX_LOG_BYTES + 1]),
            Err(LogError::TooLarge(_))
        ));
        let ok = log(vec![rel("1.0.0")]);
        assert_eq!(VersionLog::parse(&ok.to_bytes()).unwrap(), ok);
    }
}
