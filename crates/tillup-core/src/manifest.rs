//! Manifests: what a program folder holds, file by file.
//!
//! A manifest is the unit every transfer speaks: a release is a manifest
//! plus the files it names, a backup is one manifest per terminal, and the
//! server's result for a terminal is a manifest the host checks against its
//! own computation (see [`merge_for_terminal`]).

use std::collections::{BTreeMap, BTreeSet};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::hash::Sha256Hex;
use crate::path::RelPath;

/// The largest manifest accepted, in bytes of JSON.
pub const MAX_MANIFEST_BYTES: usize = 32 * 1024 * 1024;

/// One file of a folder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: RelPath,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// Whether the file is executable (Unix mode bits; ignored on Windows).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

/// What turns one manifest into another: files added or changed, paths
/// removed. A store upgrade moves these after the stop instead of whole
/// manifests, so the work while a till is stopped follows what changed,
/// not the folder's size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestChanges {
    /// Files added or changed, by path.
    pub upsert: Vec<FileEntry>,
    /// Paths no longer in the folder.
    pub remove: Vec<RelPath>,
}

impl ManifestChanges {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// Every file of a folder, sorted by path, each path once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Manifest {
    files: Vec<FileEntry>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    #[error("the manifest is not valid: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("the manifest lists `{0}` twice")]
    Duplicate(RelPath),
    #[error("the manifest lists `{file}` as a file and also `{inner}` inside it")]
    FileIsFolder { file: RelPath, inner: RelPath },
    #[error(
        "`{a}` and `{b}` differ only in case or in how their letters are composed, and would overwrite each other on Windows or macOS"
    )]
    CaseCollision { a: RelPath, b: RelPath },
}

/// That in the sorted `files`, `path` is not inside a file, and no file is
/// inside `path`.
fn check_not_file_and_folder(files: &[FileEntry], path: &RelPath) -> Result<(), ManifestError> {
    let find = |p: &str| files.binary_search_by(|f| f.path.as_str().cmp(p));
    let s = path.as_str();
    for (i, _) in s.match_indices('/') {
        if find(&s[..i]).is_ok() {
            return Err(ManifestError::FileIsFolder {
                file: RelPath::new(&s[..i]).expect("prefix of a valid path"),
                inner: path.clone(),
            });
        }
    }
    let inside = format!("{s}/");
    let at = find(&inside).unwrap_or_else(|at| at);
    match files.get(at) {
        Some(f) if f.path.as_str().starts_with(&inside) => Err(ManifestError::FileIsFolder {
            file: path.clone(),
            inner: f.path.clone(),
        }),
        _ => Ok(()),
    }
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            files: Vec<FileEntry>,
        }
        let raw = Raw::deserialize(d)?;
        Manifest::new(raw.files).map_err(serde::de::Error::custom)
    }
}

impl Manifest {
    /// Sorts `files` and checks that no path is listed twice and no file is
    /// also a folder of another.
    pub fn new(mut files: Vec<FileEntry>) -> Result<Self, ManifestError> {
        // Nearly always sorted already (a scan, a parse): then one pass.
        if !files.is_sorted_by(|a, b| a.path < b.path) {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            for pair in files.windows(2) {
                if pair[0].path == pair[1].path {
                    return Err(ManifestError::Duplicate(pair[0].path.clone()));
                }
            }
        }
        // "a" sorts right before "a/…" entries only if nothing sorts between
        // them, which is not true ("a.txt" < "a/b"), so check every folder.
        let paths: std::collections::HashSet<&str> =
            files.iter().map(|f| f.path.as_str()).collect();
        for f in &files {
            let s = f.path.as_str();
            for (i, _) in s.match_indices('/') {
                if paths.contains(&s[..i]) {
                    let file = RelPath::new(&s[..i]).expect("prefix of a valid path");
                    return Err(ManifestError::FileIsFolder {
                        file,
                        inner: f.path.clone(),
                    });
                }
            }
        }
        Ok(Self { files })
    }

    /// Parses a manifest received from elsewhere, bounded in size.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// What turns `self` into `newer`.
    pub fn changes_to(&self, newer: &Manifest) -> ManifestChanges {
        let mut out = ManifestChanges::default();
        let (mut old, mut new) = (self.files.iter().peekable(), newer.files.iter().peekable());
        loop {
            match (old.peek(), new.peek()) {
                (Some(o), Some(n)) if o.path == n.path => {
                    if o != n {
                        out.upsert.push((*n).clone());
                    }
                    old.next();
                    new.next();
                }
                (Some(o), Some(n)) if o.path < n.path => {
                    out.remove.push(o.path.clone());
                    old.next();
                }
                (_, Some(n)) => {
                    out.upsert.push((*n).clone());
                    new.next();
                }
                (Some(o), None) => {
                    out.remove.push(o.path.clone());
                    old.next();
                }
                (None, None) => return out,
            }
        }
    }

    /// `self` with `changes` applied (an upserted path wins over its
    /// removal); checked like any manifest. One merge of sorted lists, and
    /// only the upserted paths are checked: `self` is a valid manifest, and
    /// removing files cannot make one invalid. This runs while tills are
    /// stopped, on folders of thousands of files and changes of a few.
    pub fn with_changes(&self, changes: &ManifestChanges) -> Result<Manifest, ManifestError> {
        let mut upsert: Vec<&FileEntry> = changes.upsert.iter().collect();
        upsert.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        if let Some(pair) = upsert.windows(2).find(|p| p[0].path == p[1].path) {
            return Err(ManifestError::Duplicate(pair[0].path.clone()));
        }
        let removed: BTreeSet<&RelPath> = changes.remove.iter().collect();
        let mut files = Vec::with_capacity(self.files.len() + upsert.len());
        let mut up = upsert.iter().copied().peekable();
        for f in &self.files {
            while let Some(u) = up.next_if(|u| u.path < f.path) {
                files.push(u.clone());
            }
            if let Some(u) = up.next_if(|u| u.path == f.path) {
                files.push(u.clone());
            } else if !removed.contains(&f.path) {
                files.push(f.clone());
            }
        }
        files.extend(up.cloned());
        for u in &upsert {
            check_not_file_and_folder(&files, &u.path)?;
        }
        Ok(Self { files })
    }

    /// The canonical bytes: what is hashed and signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// The digest of [`Manifest::to_bytes`].
    pub fn digest(&self) -> Sha256Hex {
        Sha256Hex::of(&self.to_bytes())
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The sum of the files' sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The entry at `path`.
    pub fn get(&self, path: &RelPath) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// Every distinct content hash, once.
    pub fn hashes(&self) -> BTreeSet<Sha256Hex> {
        self.files.iter().map(|f| f.sha256).collect()
    }

    /// Fails if two paths would collide on a file system that ignores case
    /// and Unicode composition (Windows, macOS: `café` composed and
    /// decomposed are one name there): checked at publish and by every
    /// agent before it stages, whatever its own system, since one release
    /// serves every terminal. Folders count too: `Bin/a` and `bin/b` would
    /// share one folder there, and `a` and `A/b` would be a file and a
    /// folder at once.
    pub fn check_case_collisions(&self) -> Result<(), ManifestError> {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for f in &self.files {
            let s = f.path.as_str();
            let folders = s.match_indices('/').map(|(i, _)| &s[..i]);
            for p in folders.chain([s]) {
                let key = crate::path::collision_key(p);
                match seen.get(&key) {
                    Some(&a) if a != p => {
                        let rel = |x: &str| RelPath::new(x).expect("prefix of a valid path");
                        return Err(ManifestError::CaseCollision {
                            a: rel(a),
                            b: rel(p),
                        });
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(key, p);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The glob patterns of terminal-local files an upgrade keeps
/// (`config/**`, `data/*.db`, `logs/**`). `*` stays inside one folder; `**`
/// crosses folders.
#[derive(Clone, Debug)]
pub struct Preserve {
    patterns: Vec<String>,
    set: GlobSet,
}

/// A preserve pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("preserve pattern `{pattern}` is not a valid glob: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

impl Preserve {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, BadPattern> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| BadPattern {
                    pattern: p.to_owned(),
                    reason: e.kind().to_string(),
                })?;
            b.add(glob);
        }
        let set = b.build().map_err(|e| BadPattern {
            pattern: patterns
                .iter()
                .map(|p| p.as_ref())
                .collect::<Vec<_>>()
                .join(", "),
            reason: e.to_string(),
        })?;
        Ok(Self {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            set,
        })
    }

    pub fn matches(&self, path: &RelPath) -> bool {
        self.set.is_match(path.as_str())
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// A terminal's new folder (DESIGN §3.5): the release's files, except that
/// a file matching `preserve` that the terminal already holds keeps the
/// terminal's copy. Files the release does not have are dropped unless
/// preserved. The server computes this to deliver; the host computes it
/// again and refuses a server result that differs, so every byte installed
/// traces back to the signed release or to the terminal's own backup.
pub fn merge_for_terminal(
    release: &Manifest,
    old: &Manifest,
    preserve: &Preserve,
) -> Result<Manifest, ManifestError> {
    let layout = ReleaseLayout(release);
    let kept: Vec<&FileEntry> = old
        .files
        .iter()
        .filter(|f| preserve.matches(&f.path) && layout.keeps(&f.path))
        .collect();
    // Both lists are sorted by path: merge them, a kept file replacing the
    // release's at the same path.
    let mut files = Vec::with_capacity(release.files.len() + kept.len());
    let mut kept = kept.into_iter().peekable();
    for r in &release.files {
        while let Some(k) = kept.next_if(|k| k.path < r.path) {
            files.push(k.clone());
        }
        match kept.next_if(|k| k.path == r.path) {
            Some(k) => files.push(k.clone()),
            None => files.push(r.clone()),
        }
    }
    files.extend(kept.cloned());
    Manifest::new(files)
}

/// [`merge_for_terminal`] of `release` and the terminal's folder after
/// `changes`, from `merged`, its merge before them: only the changed
/// paths are looked at, so a build after the stop follows what changed
/// since the one made before it, not the folder's size.
pub fn remerge_for_terminal(
    merged: &Manifest,
    release: &Manifest,
    changes: &ManifestChanges,
    preserve: &Preserve,
) -> Result<Manifest, ManifestError> {
    let layout = ReleaseLayout(release);
    let upserted: BTreeSet<&RelPath> = changes.upsert.iter().map(|f| &f.path).collect();
    let mut delta = ManifestChanges::default();
    // A preserved path the terminal no longer holds (or may not keep)
    // is the release's again, if the release has it.
    let revert = |p: &RelPath, delta: &mut ManifestChanges| match release.get(p) {
        Some(r) => delta.upsert.push(r.clone()),
        None => delta.remove.push(p.clone()),
    };
    for f in &changes.upsert {
        if !preserve.matches(&f.path) {
            continue;
        }
        if layout.keeps(&f.path) {
            delta.upsert.push(f.clone());
        } else {
            revert(&f.path, &mut delta);
        }
    }
    for p in &changes.remove {
        if preserve.matches(p) && !upserted.contains(p) {
            revert(p, &mut delta);
        }
    }
    merged.with_changes(&delta)
}

/// Where a release puts files and folders: a terminal's own file is kept
/// only where it clashes with neither.
struct ReleaseLayout<'r>(&'r Manifest);

impl ReleaseLayout<'_> {
    /// Whether a terminal's own file at `path` can stay: a kept local file
    /// where the release now has a folder, or inside what the release now
    /// has as a file, gives way to the release's layout (and stays in the
    /// backup).
    fn keeps(&self, path: &RelPath) -> bool {
        let files = &self.0.files;
        let s = path.as_str();
        // The release holds a folder `p` when a path sorts right after `p/`.
        let prefix = format!("{s}/");
        let i = files.partition_point(|f| f.path.as_str() < prefix.as_str());
        let has_folder = files
            .get(i)
            .is_some_and(|f| f.path.as_str().starts_with(&prefix));
        let has_file = |p: &str| files.binary_search_by(|f| f.path.as_str().cmp(p)).is_ok();
        !has_folder && !s.match_indices('/').any(|(i, _)| has_file(&s[..i]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn entry(path: &str, content: &str) -> FileEntry {
        FileEntry {
            path: RelPath::new(path).unwrap(),
            size: content.len() as u64,
            sha256: Sha256Hex::of(content.as_bytes()),
            exec: false,
        }
    }

    pub fn manifest(files: &[(&str, &str)]) -> Manifest {
        Manifest::new(files.iter().map(|(p, c)| entry(p, c)).collect()).unwrap()
    }

    #[test]
    fn sorted_and_canonical() {
        let a = manifest(&[("b", "2"), ("a", "1")]);
        let b = manifest(&[("a", "1"), ("b", "2")]);
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.files()[0].path.as_str(), "a");
        assert_eq!(Manifest::parse(&a.to_bytes()).unwrap(), a);
    }

    #[test]
    fn refuses_duplicates_and_file_folder_clashes() {
        let dup = Manifest::new(vec![entry("a", "1"), entry("a", "2")]);
        assert!(matches!(dup, Err(ManifestError::Duplicate(_))));
        let clash = Manifest::new(vec![
            entry("a", "1"),
            entry("a.txt", "x"),
            entry("a/b", "2"),
        ]);
        assert!(
            matches!(clash, Err(ManifestError::FileIsFolder { .. })),
            "{clash:?}"
        );
    }

    #[test]
    fn refuses_escaping_paths_when_parsed() {
        let bad = br#"{"files":[{"path":"../../etc/passwd","size":1,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}"#;
        let err = Manifest::parse(bad).unwrap_err().to_string();
        assert!(err.contains("`..`"), "{err}");
    }

    #[test]
    fn refuses_oversized_input_before_parsing() {
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::parse(&big),
            Err(ManifestError::TooLarge(_))
        ));
    }

    #[test]
    fn case_collisions_are_found() {
        let m = manifest(&[("Config.ini", "1"), ("config.ini", "2")]);
        let err = m.check_case_collisions().unwrap_err();
        assert!(matches!(err, ManifestError::CaseCollision { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("`Config.ini`") && msg.contains("`config.ini`"),
            "{msg}"
        );
        for (a, b) in [
            ("Bin/a", "bin/b"), // one folder, two spellings
            ("a", "A/b"),       // a file and a folder at once
            ("x/Y/z", "x/y"),
            ("数据/Ä", "数据/ä"),
            // The same name, composed and decomposed: one file on macOS.
            ("caf\u{e9}.txt", "cafe\u{301}.txt"),
            ("Caf\u{e9}/a", "cafe\u{301}/b"),
        ] {
            let err = manifest(&[(a, "1"), (b, "2")])
                .check_case_collisions()
                .unwrap_err();
            assert!(
                matches!(err, ManifestError::CaseCollision { .. }),
                "{a} {b}"
            );
        }
        for (a, b) in [("bin/a", "bin/b"), ("bin/a", "binary"), ("a", "b/a")] {
            manifest(&[(a, "1"), (b, "2")])
                .check_case_collisions()
                .unwrap();
        }
    }

    #[test]
    fn merge_keeps_preserved_local_files_and_drops_removed_ones() {
        let release = manifest(&[
            ("bin/pos", "new"),
            ("config/default.ini", "release"),
            ("lib/new.so", "n"),
        ]);
        let old = manifest(&[
            ("bin/pos", "old"),
            ("config/default.ini", "mine"),
            ("config/local.ini", "local"),
            ("lib/gone.so", "g"),
            ("data/sales.db", "db"),
        ]);
        let preserve = Preserve::new(&["config/**", "data/*.db"]).unwrap();
        let merged = merge_for_terminal(&release, &old, &preserve).unwrap();
        let want = manifest(&[
            ("bin/pos", "new"),
            ("config/default.ini", "mine"),
            ("config/local.ini", "local"),
            ("data/sales.db", "db"),
            ("lib/new.so", "n"),
        ]);
        assert_eq!(merged, want);
    }

    #[test]
    fn star_does_not_cross_folders() {
        let p = Preserve::new(&["data/*.db"]).unwrap();
        assert!(p.matches(&RelPath::new("data/a.db").unwrap()));
        assert!(!p.matches(&RelPath::new("data/x/a.db").unwrap()));
        assert!(
            Preserve::new(&["data/[.db"])
                .unwrap_err()
                .to_string()
                .contains("data/[.db")
        );
    }

    #[test]
    fn merge_lets_the_release_layout_win_a_file_folder_clash() {
        let release = manifest(&[("config/app.ini", "r")]);
        let old = manifest(&[("config", "a file")]);
        let preserve = Preserve::new(&["config", "config/**"]).unwrap();
        let merged = merge_for_terminal(&release, &old, &preserve).unwrap();
        assert_eq!(merged, release);
    }

    mod merge_properties {
        use super::*;
        use proptest::prelude::*;

        /// The rule stated plainly, path by path: the release's files, a
        /// preserved local file replacing the release's at its path, and
        /// none that would be a file and a folder at once.
        fn reference(release: &Manifest, old: &Manifest, preserve: &Preserve) -> Manifest {
            let clashes = |a: &str, b: &str| b.starts_with(&format!("{a}/"));
            let mut out: BTreeMap<String, FileEntry> = release
                .files()
                .iter()
                .map(|f| (f.path.as_str().to_owned(), f.clone()))
                .collect();
            for f in old.files().iter().filter(|f| preserve.matches(&f.path)) {
                let p = f.path.as_str();
                let clash = release
                    .files()
                    .iter()
                    .any(|r| clashes(p, r.path.as_str()) || clashes(r.path.as_str(), p));
                if !clash {
                    out.insert(p.to_owned(), f.clone());
                }
            }
            Manifest::new(out.into_values().collect()).unwrap()
        }

        fn manifest_of(paths: Vec<(String, u8)>) -> Manifest {
            let mut files: BTreeMap<String, u8> = BTreeMap::new();
            for (p, c) in paths {
                // Drop a path that is a folder of one already kept, or the reverse.
                if files
                    .keys()
                    .any(|k| k.starts_with(&format!("{p}/")) || p.starts_with(&format!("{k}/")))
                {
                    continue;
                }
                files.insert(p, c);
            }
            let owned: Vec<(String, String)> =
                files.into_iter().map(|(p, c)| (p, c.to_string())).collect();
            let refs: Vec<(&str, &str)> = owned
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_str()))
                .collect();
            manifest(&refs)
        }

        fn paths() -> impl Strategy<Value = Vec<(String, u8)>> {
            proptest::collection::vec(("(a|b|c|d)(/(a|b|c))?(/(x|y))?", 0u8..3), 0..12)
        }

        proptest! {
            #[test]
            fn merge_matches_the_plain_rule(release in paths(), old in paths()) {
                let (release, old) = (manifest_of(release), manifest_of(old));
                let preserve = Preserve::new(&["a/**", "b", "c/*", "d/a/x"]).unwrap();
                prop_assert_eq!(
                    merge_for_terminal(&release, &old, &preserve).unwrap(),
                    reference(&release, &old, &preserve)
                );
            }

            #[test]
            fn a_remerge_equals_the_merge_of_the_changed_folder(
                release in paths(),
                old in paths(),
                new in paths(),
            ) {
                let (release, old, new) = (manifest_of(release), manifest_of(old), manifest_of(new));
                let preserve = Preserve::new(&["a/**", "b", "c/*", "d/a/x"]).unwrap();
                let merged = merge_for_terminal(&release, &old, &preserve).unwrap();
                prop_assert_eq!(
                    remerge_for_terminal(&merged, &release, &old.changes_to(&new), &preserve).unwrap(),
                    merge_for_terminal(&release, &new, &preserve).unwrap()
                );
            }
        }
    }

    mod changes_properties {
        use super::*;
        use proptest::prelude::*;

        fn folder() -> impl Strategy<Value = Manifest> {
            proptest::collection::btree_map("(a|b|c)(/(x|y|z))?", 0u8..3, 0..10).prop_map(|m| {
                let owned: Vec<(String, String)> = m
                    .into_iter()
                    // A path that is also a folder of another is dropped.
                    .map(|(p, c)| (p, c.to_string()))
                    .collect();
                let keep: Vec<(&str, &str)> = owned
                    .iter()
                    .filter(|(p, _)| !owned.iter().any(|(q, _)| q.starts_with(&format!("{p}/"))))
                    .map(|(p, c)| (p.as_str(), c.as_str()))
                    .collect();
                manifest(&keep)
            })
        }

        /// Any changes, valid or not: upserts may repeat a path or make
        /// a file a folder, removals may name paths that are not there.
        fn changes() -> impl Strategy<Value = ManifestChanges> {
            (
                proptest::collection::vec(("(a|b|c)(/(x|y|z))?", 0u8..3), 0..6),
                proptest::collection::vec("(a|b|c)(/(x|y|z))?", 0..4),
            )
                .prop_map(|(upsert, remove)| ManifestChanges {
                    upsert: upsert
                        .into_iter()
                        .map(|(p, c)| FileEntry {
                            path: RelPath::new(&p).unwrap(),
                            size: 1,
                            sha256: Sha256Hex::of(&[c]),
                            exec: false,
                        })
                        .collect(),
                    remove: remove.iter().map(|p| RelPath::new(p).unwrap()).collect(),
                })
        }

        /// The plain rule: drop what is removed or upserted, add the
        /// upserts, check the whole.
        fn applied_plainly(
            m: &Manifest,
            changes: &ManifestChanges,
        ) -> Result<Manifest, ManifestError> {
            let gone: BTreeSet<&RelPath> = changes
                .remove
                .iter()
                .chain(changes.upsert.iter().map(|f| &f.path))
                .collect();
            let files = m
                .files()
                .iter()
                .filter(|f| !gone.contains(&f.path))
                .chain(&changes.upsert)
                .cloned()
                .collect();
            Manifest::new(files)
        }

        proptest! {
            #[test]
            fn changes_apply_as_the_plain_rule_says(a in folder(), changes in changes()) {
                let got = a.with_changes(&changes);
                let want = applied_plainly(&a, &changes);
                prop_assert_eq!(got.is_ok(), want.is_ok(), "{:?} vs {:?}", got, want);
                if let (Ok(got), Ok(want)) = (got, want) {
                    prop_assert_eq!(got, want);
                }
            }

            #[test]
            fn changes_lead_from_one_folder_to_the_other(a in folder(), b in folder()) {
                let changes = a.changes_to(&b);
                prop_assert_eq!(a.with_changes(&changes).unwrap(), b.clone());
                prop_assert_eq!(changes.is_empty(), a == b);
                prop_assert!(changes.upsert.len() + changes.remove.len() <= a.len() + b.len());
            }
        }
    }
}
