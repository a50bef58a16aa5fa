//! Store backups kept parsed, by the digest of their stored bytes.
//!
//! One store upgrade reads its backup three times within seconds: the
//! upload before the stop, the changes after it, and the processing, the
//! last two while the store's tills are stopped. A backup of eight
//! terminals of ten thousand files is megabytes of JSON; parsing it costs
//! several times hashing its bytes. The key is the stored bytes' digest,
//! so whichever server of several over one storage wrote the backup, a
//! memo is only ever used for exactly the bytes it was parsed from.
//!
//! Each kept backup also keeps the terminal folders built from it. The
//! host asks for them before the stop (built ahead); the backup after the
//! stop is changes to that one, and its folders are built from those
//! folders and the changes alone, so the build while the tills are
//! stopped follows what changed, not the folders' size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tillup_core::Sha256Hex;
use tillup_core::api::{Backup, TerminalBackup};
use tillup_core::manifest::{
    Manifest, ManifestChanges, ManifestError, Preserve, merge_for_terminal, remerge_for_terminal,
};

use crate::storage::DocumentVersion;

/// A backup as parsed, with its [`Backup::digest`] and the folders built
/// from it.
pub(crate) struct Parsed {
    pub backup: Backup,
    pub digest: Sha256Hex,
    built: Mutex<HashMap<FolderKey, Built>>,
    /// The backup this one is changes to, when it came as changes.
    from: Option<Lineage>,
}

/// The backup a changed one came from: the folders built from it, and
/// each terminal's changes since.
struct Lineage {
    built: HashMap<FolderKey, Built>,
    changes: HashMap<u32, ManifestChanges>,
}

/// One terminal's folder on one release.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct FolderKey {
    pub terminal: u32,
    /// The release manifest's SHA-256.
    pub release: Sha256Hex,
    pub preserve: Vec<String>,
}

/// A terminal's new folder with its manifest's digest.
#[derive(Clone)]
pub(crate) struct Built {
    pub folder: Arc<Manifest>,
    pub digest: Sha256Hex,
}

impl Built {
    fn new(folder: Manifest) -> Self {
        let digest = folder.digest();
        Self {
            folder: Arc::new(folder),
            digest,
        }
    }
}

impl Parsed {
    /// `backup` with its digest computed.
    pub fn new(backup: Backup) -> Self {
        let digest = backup.digest();
        Self::with_digest(backup, digest, None)
    }

    /// `base` with `changes` (by terminal), whose digest is `digest`: its
    /// folders are built from `base`'s.
    pub fn changed(
        base: &Parsed,
        backup: Backup,
        digest: Sha256Hex,
        changes: HashMap<u32, ManifestChanges>,
    ) -> Self {
        let built = base.built.lock().expect("not poisoned").clone();
        Self::with_digest(backup, digest, Some(Lineage { built, changes }))
    }

    /// Whether this backup came as changes to another.
    pub fn is_changed(&self) -> bool {
        self.from.is_some()
    }

    fn with_digest(backup: Backup, digest: Sha256Hex, from: Option<Lineage>) -> Self {
        Self {
            backup,
            digest,
            built: Mutex::default(),
            from,
        }
    }

    /// Terminal `old.number`'s new folder on `release` (see
    /// [`merge_for_terminal`]), `key` naming both: built once per backup,
    /// and from the folder built before the changes when there is one.
    pub fn folder(
        &self,
        key: &FolderKey,
        old: &TerminalBackup,
        release: &Manifest,
        preserve: &Preserve,
    ) -> Result<Built, ManifestError> {
        if let Some(b) = self.built.lock().expect("not poisoned").get(key) {
            return Ok(b.clone());
        }
        let before = self.from.as_ref().and_then(|l| {
            let changes = l.changes.get(&key.terminal)?;
            Some((l.built.get(key)?, changes))
        });
        let folder = match before {
            Some((b, changes)) => {
                tracing::debug!(
                    terminal = key.terminal,
                    changes = changes.upsert.len() + changes.remove.len(),
                    "built from its folder before the changes"
                );
                remerge_for_terminal(&b.folder, release, changes, preserve)?
            }
            None => merge_for_terminal(release, &old.manifest, preserve)?,
        };
        let built = Built::new(folder);
        self.built
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), built.clone());
        Ok(built)
    }
}

/// One backup kept parsed.
struct Kept {
    /// The digest of the bytes it was parsed from.
    key: Sha256Hex,
    parsed: Arc<Parsed>,
    /// The stored document it was read from, when the storage told its
    /// version: found again by a look at the version alone.
    stored: Option<(String, DocumentVersion)>,
}

#[derive(Default)]
pub(crate) struct Backups(Mutex<Vec<Kept>>);

impl Backups {
    /// The backups kept at once: the stores upgrading at the same moment
    /// on a release night, each kept from its upload to its processing
    /// (one entry per store: a backup's changes replace it). Each holds
    /// its terminals' manifests twice (backed up and built): about 2 × 8 ×
    /// 1.1 MB for a store of 8 tills of 10,000 files.
    const KEPT: usize = 16;

    /// The backup stored as `bytes`: the kept one if these bytes were
    /// parsed before, else `parse`d now (and kept). `stored` names the
    /// document they were read from and its version, for
    /// [`Backups::stored`].
    pub fn get<E>(
        &self,
        bytes: &[u8],
        stored: Option<(String, DocumentVersion)>,
        parse: impl FnOnce(&[u8]) -> Result<Backup, E>,
    ) -> Result<Arc<Parsed>, E> {
        let key = Sha256Hex::of(bytes);
        let found = self.find(
            |k| k.key == key,
            |k| {
                if stored.is_some() {
                    k.stored = stored.clone();
                }
            },
        );
        if let Some(found) = found {
            return Ok(found);
        }
        let parsed = Arc::new(Parsed::new(parse(bytes)?));
        self.keep_stored(key, Arc::clone(&parsed), stored);
        Ok(parsed)
    }

    /// The backup kept as read from document `doc` at `version`: equal
    /// versions are equal bytes, so it need not be read again.
    pub fn stored(&self, doc: &str, version: &DocumentVersion) -> Option<Arc<Parsed>> {
        self.find(
            |k| {
                k.stored
                    .as_ref()
                    .is_some_and(|(d, v)| d == doc && v == version)
            },
            |_| {},
        )
    }

    /// The backup kept under `key`, else `build`t now (and kept).
    pub fn get_or_build<E>(
        &self,
        key: Sha256Hex,
        build: impl FnOnce() -> Result<Parsed, E>,
    ) -> Result<Arc<Parsed>, E> {
        if let Some(found) = self.find(|k| k.key == key, |_| {}) {
            return Ok(found);
        }
        let parsed = Arc::new(build()?);
        self.keep(key, Arc::clone(&parsed));
        Ok(parsed)
    }

    /// Keeps `parsed` as what the bytes of digest `key` hold.
    pub fn keep(&self, key: Sha256Hex, parsed: Arc<Parsed>) {
        self.keep_stored(key, parsed, None);
    }

    fn keep_stored(
        &self,
        key: Sha256Hex,
        parsed: Arc<Parsed>,
        stored: Option<(String, DocumentVersion)>,
    ) {
        let mut kept = self.0.lock().expect("not poisoned");
        kept.retain(|k| k.key != key);
        if kept.len() >= Self::KEPT {
            kept.remove(0);
        }
        kept.push(Kept {
            key,
            parsed,
            stored,
        });
    }

    /// Forgets `parsed` (a backup its changes replaced).
    pub fn forget(&self, parsed: &Arc<Parsed>) {
        self.0
            .lock()
            .expect("not poisoned")
            .retain(|k| !Arc::ptr_eq(&k.parsed, parsed));
    }

    /// The first kept parse that `matches`, `update`d and made the newest.
    fn find(
        &self,
        matches: impl Fn(&Kept) -> bool,
        update: impl FnOnce(&mut Kept),
    ) -> Option<Arc<Parsed>> {
        let mut kept = self.0.lock().expect("not poisoned");
        let at = kept.iter().position(matches)?;
        let mut found = kept.remove(at);
        update(&mut found);
        let parsed = Arc::clone(&found.parsed);
        kept.push(found);
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_core::manifest::FileEntry;

    fn backup(number: u32) -> Backup {
        let file = FileEntry {
            path: tillup_core::path::RelPath::new("a.txt").unwrap(),
            size: 1,
            sha256: Sha256Hex::of(b"a"),
            exec: false,
        };
        Backup {
            terminals: vec![TerminalBackup {
                number,
                model: "till".into(),
                version: "1.0.0".parse().unwrap(),
                manifest: Manifest::new(vec![file]).unwrap(),
            }],
        }
    }

    fn parse(b: &[u8]) -> Result<Backup, serde_json::Error> {
        serde_json::from_slice(b)
    }

    /// For a backup that must come from the memo, not be parsed again.
    fn kept(_: &[u8]) -> Result<Backup, serde_json::Error> {
        panic!("kept")
    }

    /// The JSON of backups `0..=KEPT`: one more than are kept.
    fn documents() -> Vec<Vec<u8>> {
        (0..=Backups::KEPT as u32)
            .map(|n| serde_json::to_vec(&backup(n)).unwrap())
            .collect()
    }

    /// Whether `bytes` are parsed again.
    fn parsed_again(memo: &Backups, bytes: &[u8]) -> bool {
        let mut again = false;
        memo.get(bytes, None, |b| {
            again = true;
            parse(b)
        })
        .unwrap();
        again
    }

    #[test]
    fn the_same_bytes_parse_once_and_other_bytes_parse_again() {
        let memo = Backups::default();
        let one = serde_json::to_vec(&backup(1)).unwrap();
        let mut parses = 0;
        let mut parse = |b: &[u8]| {
            parses += 1;
            parse(b)
        };
        let first = memo.get(&one, None, &mut parse).unwrap();
        let again = memo.get(&one, None, &mut parse).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.digest, backup(1).digest());
        let two = serde_json::to_vec(&backup(2)).unwrap();
        let other = memo.get(&two, None, &mut parse).unwrap();
        assert_eq!(other.backup, backup(2));
        assert_eq!(parses, 2);
    }

    #[test]
    fn a_backup_read_from_a_document_is_found_again_by_its_version_alone() {
        let memo = Backups::default();
        let one = serde_json::to_vec(&backup(1)).unwrap();
        let v1 = DocumentVersion::for_test("v1");
        let doc = "stores/s/upgrades/u/backup.json";
        assert!(memo.stored(doc, &v1).is_none(), "nothing read yet");
        let read = memo
            .get(&one, Some((doc.to_owned(), v1.clone())), parse)
            .unwrap();
        let found = memo.stored(doc, &v1).expect("found by its version");
        assert!(Arc::ptr_eq(&read, &found));
        // Another version of the document, or another document: read it.
        assert!(memo.stored(doc, &DocumentVersion::for_test("v2")).is_none());
        assert!(
            memo.stored("stores/s/upgrades/w/backup.json", &v1)
                .is_none()
        );
        // The same bytes parsed before and read again from a new version
        // of the document: found by that version from then on.
        let v2 = DocumentVersion::for_test("v2");
        memo.get(&one, Some((doc.to_owned(), v2.clone())), kept)
            .unwrap();
        assert!(memo.stored(doc, &v2).is_some());
    }

    #[test]
    fn a_backup_used_lately_is_kept_over_older_ones() {
        let memo = Backups::default();
        let docs = documents();
        for d in &docs[..Backups::KEPT] {
            memo.get(d, None, parse).unwrap();
        }
        // Used again, then one more: the second is dropped, not the first.
        memo.get(&docs[0], None, kept).unwrap();
        memo.get(&docs[Backups::KEPT], None, parse).unwrap();
        memo.get(&docs[0], None, kept).unwrap();
        assert!(parsed_again(&memo, &docs[1]));
    }

    fn entry(path: &str, content: &[u8]) -> FileEntry {
        FileEntry {
            path: tillup_core::path::RelPath::new(path).unwrap(),
            size: content.len() as u64,
            sha256: Sha256Hex::of(content),
            exec: false,
        }
    }

    fn terminal(files: Vec<FileEntry>) -> TerminalBackup {
        TerminalBackup {
            number: 1,
            model: "till".into(),
            version: "1.0.0".parse().unwrap(),
            manifest: Manifest::new(files).unwrap(),
        }
    }

    #[test]
    fn a_changed_backup_builds_its_folders_from_the_ones_built_before() {
        let release =
            Manifest::new(vec![entry("app.exe", b"new"), entry("data/db", b"empty")]).unwrap();
        let preserve = Preserve::new(&["data/**"]).unwrap();
        let key = FolderKey {
            terminal: 1,
            release: release.digest(),
            preserve: vec!["data/**".into()],
        };
        let before = terminal(vec![
            entry("app.exe", b"old"),
            entry("data/db", b"sales"),
            entry("data/journal", b"1"),
        ]);
        let base = Parsed::new(Backup {
            terminals: vec![before.clone()],
        });
        let ahead = base.folder(&key, &before, &release, &preserve).unwrap();
        // Written as it stopped: the journal grew, the database is gone.
        let after = terminal(vec![entry("app.exe", b"old"), entry("data/journal", b"12")]);
        let changes = before.manifest.changes_to(&after.manifest);
        let changed = Parsed::changed(
            &base,
            Backup {
                terminals: vec![after.clone()],
            },
            Sha256Hex::of(b"the changed backup's bytes"),
            [(1, changes)].into(),
        );
        // Not from the whole folder: a backup that does not match its
        // folder would show it.
        let unrelated = terminal(vec![entry("data/other", b"x")]);
        let built = changed
            .folder(&key, &unrelated, &release, &preserve)
            .unwrap();
        let whole = merge_for_terminal(&release, &after.manifest, &preserve).unwrap();
        assert_eq!(*built.folder, whole);
        assert_eq!(built.digest, whole.digest());
        assert_ne!(built.digest, ahead.digest);
        // Built once: asked again, the same.
        let again = changed
            .folder(&key, &unrelated, &release, &preserve)
            .unwrap();
        assert!(Arc::ptr_eq(&again.folder, &built.folder));
    }

    #[test]
    fn only_the_newest_are_kept() {
        let memo = Backups::default();
        let docs = documents();
        for d in &docs {
            memo.get(d, None, parse).unwrap();
        }
        assert!(parsed_again(&memo, &docs[0]), "the oldest was dropped");
    }
}
