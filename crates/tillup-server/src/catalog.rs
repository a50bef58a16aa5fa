//! A release as head office's page shows it: what it is, which files
//! changed against the release before it on its channel, which stores run
//! it, and its rollouts.

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use serde::Serialize;
use tillup_core::log::Release;
use tillup_core::manifest::Manifest;

use crate::db::{Db, RolloutRow};
use crate::error::Error;
use crate::storage::Storage;

/// The most paths a release page lists for each kind of change; the
/// counts are always whole.
pub const MAX_LISTED: usize = 200;

/// One release's page.
#[derive(Clone, Debug, Serialize)]
pub struct ReleasePage {
    /// Its channel.
    pub channel: String,
    /// The release as the signed log has it.
    pub release: Release,
    /// How many files it has.
    pub files: usize,
    /// What changed against the release before it, if there is one.
    pub changes: Option<Changes>,
    /// The stores where at least one till runs it, by their newest report.
    pub stores: Vec<String>,
    /// Its rollouts, newest first.
    pub rollouts: Vec<RolloutRow>,
}

/// Files changed between two releases.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Changes {
    /// The release compared with.
    pub previous: Version,
    /// How many files are new, changed and gone, and the first of each.
    pub added: Listed,
    /// See `added`.
    pub changed: Listed,
    /// See `added`.
    pub removed: Listed,
}

/// A count of paths and the first [`MAX_LISTED`] of them.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Listed {
    /// How many.
    pub count: usize,
    /// The first of them, sorted.
    pub paths: Vec<String>,
}

impl Listed {
    fn push(&mut self, path: &str) {
        self.count += 1;
        if self.paths.len() < MAX_LISTED {
            self.paths.push(path.to_owned());
        }
    }
}

/// Release `version` of `channel`'s page; `None` if it is not published.
pub fn release_page(
    db: &dyn Db,
    storage: &Storage,
    channel: &str,
    version: &Version,
) -> Result<Option<ReleasePage>, Error> {
    let releases = db.releases(channel)?;
    let Some(release) = releases.iter().find(|r| r.version == *version).cloned() else {
        return Ok(None);
    };
    let manifest = release_manifest(storage, &release)?;
    let previous = releases
        .iter()
        .filter(|r| r.version < *version)
        .max_by(|a, b| a.version.cmp(&b.version));
    let changes = match previous {
        Some(p) => Some(changes(
            &release_manifest(storage, p)?,
            &manifest,
            &p.version,
        )),
        None => None,
    };
    let fleet = crate::fleet::overview(db, Timestamp::now(), SignedDuration::MAX)?;
    let wanted = version.to_string();
    let stores = fleet
        .stores
        .into_iter()
        .filter(|s| s.terminals.values().any(|v| *v == wanted))
        .map(|s| s.id)
        .collect();
    let rollouts = db
        .rollouts()?
        .into_iter()
        .filter(|r| r.channel == channel && r.version == *version)
        .collect();
    Ok(Some(ReleasePage {
        channel: channel.to_owned(),
        files: manifest.len(),
        release,
        changes,
        stores,
        rollouts,
    }))
}

/// A release's manifest from storage, checked against the hash its log signs.
pub fn release_manifest(storage: &Storage, release: &Release) -> Result<Manifest, Error> {
    let manifest = Manifest::parse(&storage.read(&release.sha256)?)
        .map_err(|e| Error::Corrupt(format!("the manifest of release {}: {e}", release.version)))?;
    if manifest.digest() != release.sha256 {
        return Err(Error::Corrupt(format!(
            "the manifest of release {} does not match its hash",
            release.version
        )));
    }
    Ok(manifest)
}

/// Release manifests read and checked, kept by digest: every store's
/// processing on a release night needs the same few, and a manifest of
/// ten thousand files takes milliseconds to read and check each time.
#[derive(Default)]
pub struct Manifests(std::sync::Mutex<Vec<(tillup_core::Sha256Hex, std::sync::Arc<Manifest>)>>);

impl Manifests {
    /// The releases kept at once (a channel's current and next, a few channels).
    const KEPT: usize = 8;

    /// [`release_manifest`], once per release while it is among the last
    /// [`Manifests::KEPT`] asked for.
    pub fn get(
        &self,
        storage: &Storage,
        release: &Release,
    ) -> Result<std::sync::Arc<Manifest>, Error> {
        let found = self
            .0
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(d, _)| *d == release.sha256)
            .map(|(_, m)| std::sync::Arc::clone(m));
        if let Some(m) = found {
            return Ok(m);
        }
        let m = std::sync::Arc::new(release_manifest(storage, release)?);
        let mut kept = self.0.lock().expect("not poisoned");
        if kept.len() >= Self::KEPT {
            kept.remove(0);
        }
        kept.push((release.sha256, std::sync::Arc::clone(&m)));
        Ok(m)
    }
}

/// What changed from `old` (release `previous`) to `new`.
fn changes(old: &Manifest, new: &Manifest, previous: &Version) -> Changes {
    let diff = old.changes_to(new);
    let mut out = Changes {
        previous: previous.clone(),
        added: Listed::default(),
        changed: Listed::default(),
        removed: Listed::default(),
    };
    for f in &diff.upsert {
        match old.get(&f.path) {
            Some(_) => out.changed.push(f.path.as_str()),
            None => out.added.push(f.path.as_str()),
        }
    }
    for p in &diff.remove {
        out.removed.push(p.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_core::hash::Sha256Hex;
    use tillup_core::manifest::FileEntry;
    use tillup_core::path::RelPath;

    fn manifest(files: &[(&str, &str)]) -> Manifest {
        Manifest::new(
            files
                .iter()
                .map(|(p, c)| FileEntry {
                    path: RelPath::new(p).unwrap(),
                    size: c.len() as u64,
                    sha256: Sha256Hex::of(c.as_bytes()),
                    exec: false,
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn changes_are_split_into_added_changed_and_removed() {
        let old = manifest(&[("a.dll", "1"), ("b.exe", "1"), ("gone.txt", "x")]);
        let new = manifest(&[("a.dll", "1"), ("b.exe", "2"), ("new.ini", "y")]);
        let c = changes(&old, &new, &Version::new(1, 0, 0));
        assert_eq!(c.added.paths, ["new.ini"]);
        assert_eq!(c.changed.paths, ["b.exe"]);
        assert_eq!(c.removed.paths, ["gone.txt"]);
        assert_eq!((c.added.count, c.changed.count, c.removed.count), (1, 1, 1));
    }

    #[test]
    fn a_long_list_is_cut_but_counted_whole() {
        let mut l = Listed::default();
        for i in 0..MAX_LISTED + 5 {
            l.push(&format!("f{i}"));
        }
        assert_eq!((l.count, l.paths.len()), (MAX_LISTED + 5, MAX_LISTED));
    }
}
