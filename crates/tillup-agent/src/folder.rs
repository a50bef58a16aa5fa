//! The program folder and its two siblings: staging (`<folder>.tillup-staging`,
//! the new folder being built) and previous (`<folder>.tillup-previous`, the
//! folder before the last swap, kept for rollback).
//!
//! **Architecture invariant:** the folder path always names a complete
//! folder. A new folder is built beside it and swapped in with one rename
//! (Linux: `RENAME_EXCHANGE`), never patched in place.
//!
//! Everything here is synchronous; the HTTP layer calls it in `spawn_blocking`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use semver::Version;
use tillup_core::api::{StageReport, StageRequest};
use tillup_core::manifest::ManifestChanges;
use tillup_core::{Manifest, RelPath, Sha256Hex};
use tillup_fs::{BlobStore, IoContext};

/// `<folder>.<suffix>`, beside `folder` (so on the same file system).
pub fn sibling(folder: &Path, suffix: &str) -> PathBuf {
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    folder.with_file_name(format!("{name}.{suffix}"))
}

/// Why a folder operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// Some files of the manifest are neither in the folder nor in the incoming store.
    #[error("{} file(s) are neither in the folder nor received yet; send them first: {}", .0.len(), list(.0))]
    Missing(Vec<Sha256Hex>),
    /// Not enough disk space to build the staging folder.
    #[error(
        "not enough disk space to stage: the new folder needs {need} bytes, {free} are free beside {folder}"
    )]
    NoSpace {
        /// Bytes the new folder takes.
        need: u64,
        /// Bytes free on that disk.
        free: u64,
        /// The program folder.
        folder: PathBuf,
    },
    /// Commit asked for a version that is not staged.
    #[error("version {version} is not staged (staged: {}); stage it first", show(.staged))]
    NotStaged {
        /// The version asked for.
        version: Version,
        /// The version staged, if any.
        staged: Option<Version>,
    },
    /// Rollback asked for a version that is neither current nor previous.
    #[error("cannot roll back to {version}: the folder holds {} and the previous folder holds {}", show(.current), show(.previous))]
    NoPrevious {
        /// The version asked for.
        version: Version,
        /// The version the folder holds.
        current: Option<Version>,
        /// The version the previous folder holds.
        previous: Option<Version>,
    },
    /// The built folder does not say the version it was staged as.
    #[error("the staged folder's version file says {}, not {version}; the manifest does not match the version", show(.found))]
    WrongVersion {
        /// The version asked for.
        version: Version,
        /// What the staged folder's version file says.
        found: Option<Version>,
    },
    /// Two paths differ only in case on a case-insensitive disk.
    #[error("{0}")]
    CaseCollision(String),
    /// A disk operation failed.
    #[error(transparent)]
    Fs(#[from] tillup_fs::Error),
}

fn list(hashes: &[Sha256Hex]) -> String {
    let mut s = hashes
        .iter()
        .take(20)
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if hashes.len() > 20 {
        s.push_str(&format!(" and {} more", hashes.len() - 20));
    }
    s
}

fn show(v: &Option<Version>) -> String {
    v.as_ref()
        .map_or_else(|| "nothing".to_owned(), |v| v.to_string())
}

/// The folder, its siblings, and where its version is written.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The program folder.
    pub folder: PathBuf,
    /// Where a new folder is built.
    pub staging: PathBuf,
    /// Where the folder before the last swap is kept.
    pub previous: PathBuf,
    /// The manifest of what the staging folder holds, written only once the
    /// staging folder is complete and checked; absent while it changes.
    pub staged_record: PathBuf,
    /// The swap in progress, if any (see [`Layout::recover`]).
    pub journal: PathBuf,
    /// Where the two-rename swap parks the old folder.
    swap_tmp: PathBuf,
    /// Use the atomic exchange where the system has it.
    exchange: bool,
    version_file: RelPath,
    /// The staging record as last read or written, by which file it was:
    /// a record of ten thousand files is parsed once, not at every look.
    record: Arc<Mutex<Option<(RecordId, Manifest, Sha256Hex)>>>,
}

/// Which file a path names, and as which write: an atomic write is a new
/// file, so a record read before is recognised without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordId {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ino: u64,
}

impl RecordId {
    fn of(path: &Path) -> Option<Self> {
        let md = std::fs::metadata(path).ok()?;
        Some(Self {
            len: md.len(),
            modified: md.modified().ok(),
            #[cfg(unix)]
            ino: std::os::unix::fs::MetadataExt::ino(&md),
        })
    }
}

impl Layout {
    /// The layout around `folder`; `version_file` must be a valid relative path.
    pub fn new(folder: &Path, version_file: &str) -> Self {
        Self {
            folder: folder.to_owned(),
            staging: sibling(folder, "tillup-staging"),
            previous: sibling(folder, "tillup-previous"),
            staged_record: sibling(folder, "tillup-staging.manifest.json"),
            journal: sibling(folder, "tillup-journal.json"),
            swap_tmp: sibling(folder, "tillup-swap"),
            exchange: true,
            version_file: RelPath::new(version_file).expect("checked when the config was loaded"),
            record: Arc::default(),
        }
    }

    /// The version `dir` holds, if its version file exists and parses.
    pub fn version_of(&self, dir: &Path) -> Option<Version> {
        let text = std::fs::read_to_string(tillup_fs::join(dir, &self.version_file)).ok()?;
        Version::parse(text.trim()).ok()
    }

    /// Builds the staging folder from `req.manifest`, each file taken from
    /// the current folder (`current`, a fresh scan of it) when it has the
    /// same hash, else from the incoming `store`. Every byte is checked
    /// against the manifest.
    ///
    /// Staging is incremental: when the staging folder is complete from an
    /// earlier stage (its record says what it holds), only the files that
    /// differ are removed or copied, so staging the release before the main
    /// program stops and again with the terminal's own files after costs
    /// in proportion to what changed.
    pub fn stage(
        &self,
        current: &Manifest,
        store: &BlobStore,
        req: &StageRequest,
    ) -> Result<StageReport, FolderError> {
        let local = current
            .files()
            .iter()
            .map(|f| (f.sha256, f.path.clone()))
            .collect();
        self.stage_from(&local, store, req, self.staged())
    }

    /// [`Layout::stage`], given where each hash is in the program folder
    /// (`local`: every copy from it is checked against its hash, so a map
    /// a little older than the folder can fail a stage but never spoil
    /// one) and the staging folder's record as the caller just read it
    /// ([`Layout::staged`]).
    pub fn stage_from(
        &self,
        local: &HashMap<Sha256Hex, RelPath>,
        store: &BlobStore,
        req: &StageRequest,
        staged: Option<Manifest>,
    ) -> Result<StageReport, FolderError> {
        // The folder holds the release and this terminal's own files: two
        // of its own that differ only in case can live side by side here,
        // and only a system that folds case would lose one (releases are
        // checked on every system, at publish).
        #[cfg(any(windows, target_os = "macos"))]
        req.manifest
            .check_case_collisions()
            .map_err(|e| FolderError::CaseCollision(e.to_string()))?;
        // Only what the staging folder does not hold already is needed.
        let changes = staged.as_ref().map(|s| s.changes_to(&req.manifest));
        let to_write: Vec<&tillup_core::FileEntry> = match &changes {
            Some(c) => c.upsert.iter().collect(),
            None => req.manifest.files().iter().collect(),
        };
        let missing = store.missing(
            to_write
                .iter()
                .map(|f| &f.sha256)
                .filter(|h| !local.contains_key(h)),
        );
        if !missing.is_empty() {
            return Err(FolderError::Missing(missing));
        }
        // From here until the record is written again, the staging folder
        // is not trusted: a crash leaves it to be rebuilt from scratch.
        tillup_fs::remove_file_if_exists(&self.staged_record)?;
        let parent = parent_of(&self.folder);
        tillup_fs::fsync_dir(&parent)?;
        let need: u64 = to_write.iter().map(|f| f.size).sum();
        let free = tillup_fs::free_space(&parent)?;
        if need > free {
            return Err(FolderError::NoSpace {
                need,
                free,
                folder: self.folder.clone(),
            });
        }
        let mut report = StageReport {
            reused_bytes: 0,
            received_bytes: 0,
        };
        for f in &to_write {
            if local.contains_key(&f.sha256) {
                report.reused_bytes += f.size;
            } else {
                report.received_bytes += f.size;
            }
        }
        let source = |f: &tillup_core::FileEntry| -> Result<PathBuf, tillup_fs::Error> {
            Ok(match local.get(&f.sha256) {
                Some(rel) => tillup_fs::join(&self.folder, rel),
                None => store.path(&f.sha256),
            })
        };
        tillup_fs::fault::crash_point("agent.stage.building");
        let built = match (&staged, &changes) {
            (Some(old), Some(changes)) => self.update_staging(old, changes, &source),
            _ => remove_dir_if_exists(&self.staging)
                .and_then(|()| tillup_fs::materialize(&self.staging, &req.manifest, &source))
                .map_err(FolderError::from),
        }
        .and_then(|()| {
            let found = self.version_of(&self.staging);
            if found.as_ref() == Some(&req.version) {
                Ok(())
            } else {
                Err(FolderError::WrongVersion {
                    version: req.version.clone(),
                    found,
                })
            }
        });
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&self.staging);
            return Err(e);
        }
        self.write_record(&req.manifest)?;
        Ok(report)
    }

    /// Turns the previous folder into the staging folder, when there is no
    /// complete staging folder and no previous release is needed any more
    /// (the caller knows: no release on trial), so the next stage writes
    /// only what differs from it rather than a whole folder. `cache` is the
    /// hash cache of the folder as it was when it became previous (the
    /// rename keeps sizes and times), so the scan that records what it
    /// holds reads no file that did not change. Returns what it holds.
    pub fn recycle_previous(
        &self,
        cache: &mut tillup_fs::HashCache,
    ) -> Result<Option<Manifest>, FolderError> {
        self.recover()?;
        if self.staged().is_some() || !self.previous.is_dir() {
            return Ok(None);
        }
        tillup_fs::remove_file_if_exists(&self.staged_record)?;
        remove_dir_if_exists(&self.staging)?;
        rename(&self.previous, &self.staging)?;
        tillup_fs::fsync_dir(&parent_of(&self.folder))?;
        let holds = match tillup_fs::scan_folder(&self.staging, cache) {
            Ok(m) => m,
            Err(e) => {
                // A link or a bad name in an old folder: build afresh.
                tracing::warn!("the previous folder cannot be reused ({e}); staging from scratch");
                remove_dir_if_exists(&self.staging)?;
                return Ok(None);
            }
        };
        self.write_record(&holds)?;
        Ok(Some(holds))
    }

    /// What the staging folder holds, if it is complete (as its record
    /// says); `None` while none is, or one is being built.
    pub fn staged(&self) -> Option<Manifest> {
        self.staged_with_digest().map(|(m, _)| m)
    }

    /// [`Layout::staged`] with its digest ([`Manifest::digest`]).
    pub fn staged_with_digest(&self) -> Option<(Manifest, Sha256Hex)> {
        if !self.staging.is_dir() {
            return None;
        }
        let id = RecordId::of(&self.staged_record)?;
        let mut kept = self.record.lock().expect("not poisoned");
        if let Some((_, m, d)) = kept.as_ref().filter(|(k, _, _)| *k == id) {
            return Some((m.clone(), *d));
        }
        let m = Manifest::parse(&std::fs::read(&self.staged_record).ok()?).ok()?;
        let digest = m.digest();
        *kept = Some((id, m.clone(), digest));
        Some((m, digest))
    }

    /// Writes the staging record: the staging folder is complete and holds `m`.
    fn write_record(&self, m: &Manifest) -> Result<(), FolderError> {
        let bytes = m.to_bytes();
        tillup_fs::write_atomic(&self.staged_record, &bytes)?;
        *self.record.lock().expect("not poisoned") =
            RecordId::of(&self.staged_record).map(|id| (id, m.clone(), Sha256Hex::of(&bytes)));
        Ok(())
    }

    /// Turns a complete staging folder holding `old` into one holding
    /// `old` with `changes`.
    fn update_staging(
        &self,
        old: &Manifest,
        changes: &ManifestChanges,
        source: &dyn Fn(&tillup_core::FileEntry) -> Result<PathBuf, tillup_fs::Error>,
    ) -> Result<(), FolderError> {
        let mut touched = std::collections::BTreeSet::new();
        let replaced = changes.upsert.iter().map(|f| &f.path);
        for p in changes
            .remove
            .iter()
            .chain(replaced.filter(|p| old.get(p).is_some()))
        {
            let path = tillup_fs::join(&self.staging, p);
            tillup_fs::remove_file_if_exists(&path)?;
            // Prune folders the removal left empty (a file may replace one).
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != self.staging) {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            touched.insert(dir.unwrap_or(&self.staging).to_owned());
        }
        for f in &changes.upsert {
            let path = tillup_fs::join(&self.staging, &f.path);
            let dir = path.parent().expect("joined paths have a parent");
            std::fs::create_dir_all(dir).at(dir)?;
            tillup_fs::copy_verified(&source(f)?, &path, f)?;
            touched.insert(dir.to_owned());
        }
        for d in touched.iter().filter(|d| d.is_dir()) {
            tillup_fs::fsync_dir(d)?;
        }
        Ok(())
    }

    /// Swaps the complete staged folder in; the old one becomes previous.
    /// Returns false when the folder already holds `version`.
    pub fn commit(&self, version: &Version) -> Result<bool, FolderError> {
        self.recover()?;
        if self.version_of(&self.folder).as_ref() == Some(version) {
            return Ok(false);
        }
        // Only a staging folder whose record says it is complete: a stage
        // cut short leaves files but no record.
        let staged = self.staged().and_then(|_| self.version_of(&self.staging));
        if staged.as_ref() != Some(version) {
            return Err(FolderError::NotStaged {
                version: version.clone(),
                staged,
            });
        }
        self.swap_in(Source::Staging, version)?;
        Ok(true)
    }

    /// Swaps the previous folder back in; the current one becomes previous.
    /// Returns false when the folder already holds `version`.
    pub fn rollback(&self, version: &Version) -> Result<bool, FolderError> {
        self.recover()?;
        let current = self.version_of(&self.folder);
        if current.as_ref() == Some(version) {
            return Ok(false);
        }
        let previous = self.version_of(&self.previous);
        if previous.as_ref() != Some(version) {
            return Err(FolderError::NoPrevious {
                version: version.clone(),
                current,
                previous,
            });
        }
        self.swap_in(Source::Previous, version)?;
        Ok(true)
    }

    fn source_path(&self, source: Source) -> &Path {
        match source {
            Source::Staging => &self.staging,
            Source::Previous => &self.previous,
        }
    }

    /// Puts `source` at the folder path and the old folder at the previous
    /// path, journaled: the journal is on disk before the first rename and
    /// removed after the last, so [`Layout::recover`] can finish the swap.
    fn swap_in(&self, source: Source, target: &Version) -> Result<(), FolderError> {
        let journal = SwapJournal {
            target: target.clone(),
            from: self.version_of(&self.folder),
            source,
        };
        tillup_fs::write_json_atomic(&self.journal, &journal)?;
        tillup_fs::fault::crash_point("agent.swap.journaled");
        let from = self.source_path(source);
        let exchanged = if self.exchange {
            match exchange(from, &self.folder) {
                Ok(()) => true,
                Err(e) if exchange_unsupported(&e) => false,
                Err(e) => return Err(e).at(&self.folder).map_err(Into::into),
            }
        } else {
            false
        };
        if !exchanged {
            // No atomic exchange here (Windows, some file systems): two
            // renames, with the folder path empty between them. The journal
            // says how to finish.
            remove_dir_if_exists(&self.swap_tmp)?;
            rename(&self.folder, &self.swap_tmp)?;
            tillup_fs::fault::crash_point("agent.swap.half");
            rename(from, &self.folder)?;
        }
        tillup_fs::fsync_dir(&parent_of(&self.folder))?;
        tillup_fs::fault::crash_point("agent.swap.exchanged");
        self.settle(&journal)?;
        Ok(())
    }

    /// Finishes or undoes a swap cut short (by a crash or a failed rename),
    /// as its journal describes, so that the folder path names a complete
    /// folder, all old or all new, and the previous path the other one.
    /// Does nothing without a journal; safe to run any number of times.
    /// Returns what it did, to be told in the agent's status.
    pub fn recover(&self) -> Result<Option<String>, FolderError> {
        let journal: SwapJournal = match std::fs::read(&self.journal) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(j) => j,
                Err(e) => {
                    // Written atomically, so only a hand edit gets here.
                    tracing::error!(
                        "the swap journal {} is unreadable ({e}); keeping the folder as it is",
                        self.journal.display()
                    );
                    tillup_fs::remove_file_if_exists(&self.journal)?;
                    return Ok(None);
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&self.journal).map_err(Into::into),
        };
        let from = self.source_path(journal.source).to_owned();
        if !self.folder.exists() {
            // The two-rename swap stopped between its renames: finish it
            // when the new folder is whole, else put the old one back.
            if self.version_of(&from).as_ref() == Some(&journal.target) {
                rename(&from, &self.folder)?;
            } else if self.swap_tmp.exists() {
                rename(&self.swap_tmp, &self.folder)?;
            }
            tillup_fs::fsync_dir(&parent_of(&self.folder))?;
        }
        let done = self.version_of(&self.folder).as_ref() == Some(&journal.target);
        if done {
            self.settle(&journal)?;
        } else {
            tillup_fs::remove_file_if_exists(&self.journal)?;
            tillup_fs::fsync_dir(&parent_of(&self.journal))?;
        }
        let what = if done { "finished" } else { "undid" };
        let message = format!(
            "{what} a swap to {} that was cut short; the folder holds {}",
            journal.target,
            show(&self.version_of(&self.folder))
        );
        tracing::warn!("{message}");
        Ok(Some(message))
    }

    /// The last part of a swap whose folder path holds the target: the old
    /// folder (at the swap's source path after an exchange, or at the
    /// temporary path after two renames) becomes previous. Repeatable.
    fn settle(&self, journal: &SwapJournal) -> Result<(), FolderError> {
        let parent = parent_of(&self.folder);
        if journal.source == Source::Staging {
            // The staging path now holds the old release, not what its
            // record describes.
            tillup_fs::remove_file_if_exists(&self.staged_record)?;
            tillup_fs::fsync_dir(&parent)?;
        }
        tillup_fs::fault::crash_point("agent.swap.settling");
        let from = self.source_path(journal.source);
        let old = if self.swap_tmp.exists() {
            Some(self.swap_tmp.as_path())
        } else if from != self.previous && from.exists() {
            Some(from)
        } else {
            None
        };
        if let Some(old) = old {
            remove_dir_if_exists(&self.previous)?;
            rename(old, &self.previous)?;
        }
        tillup_fs::fsync_dir(&parent)?;
        tillup_fs::remove_file_if_exists(&self.journal)?;
        tillup_fs::fsync_dir(&parent_of(&self.journal))?;
        Ok(())
    }
}

/// Which folder a swap puts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    Staging,
    Previous,
}

/// A swap in progress: on disk before its first rename, gone after its last.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SwapJournal {
    /// The version the folder will hold.
    target: Version,
    /// The version it held before.
    from: Option<Version>,
    /// Where the new folder comes from.
    source: Source,
}

/// Renames, retrying on Windows while another process (an antivirus, an
/// indexer, a POS helper) briefly holds a file open inside the folder.
fn rename(from: &Path, to: &Path) -> Result<(), tillup_fs::Error> {
    #[cfg(windows)]
    {
        const SHARING: [i32; 3] = [5, 32, 33]; // access denied, sharing and lock violations
        let mut wait = std::time::Duration::from_millis(100);
        for _ in 0..8 {
            match std::fs::rename(from, to) {
                Err(e) if e.raw_os_error().is_some_and(|c| SHARING.contains(&c)) => {
                    tracing::warn!("{} is in use ({e}); retrying in {wait:?}", from.display());
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                other => return other.at(from),
            }
        }
    }
    std::fs::rename(from, to).at(from)
}

fn parent_of(folder: &Path) -> PathBuf {
    folder
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Removes a folder, or a file left at its path.
fn remove_dir_if_exists(dir: &Path) -> Result<(), tillup_fs::Error> {
    let result = match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => std::fs::remove_file(dir),
        _ => std::fs::remove_dir_all(dir),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at(dir),
        _ => Ok(()),
    }
}

/// Exchanges two paths atomically: each name always names a complete folder.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

#[cfg(target_os = "linux")]
fn exchange_unsupported(e: &io::Error) -> bool {
    // Some file systems (and old kernels) lack RENAME_EXCHANGE.
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
        || e.raw_os_error() == Some(rustix::io::Errno::NOSYS.raw_os_error())
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no atomic exchange here",
    ))
}

#[cfg(not(target_os = "linux"))]
fn exchange_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_fs::{HashCache, scan_folder};

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn scan(p: &Path) -> Manifest {
        scan_folder(p, &mut HashCache::default()).unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        layout: Layout,
        store: BlobStore,
        new: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("cupos");
        write(&folder, "VERSION", "1.0.0\n");
        write(&folder, "bin/pos", "program");
        write(&folder, "lib/old.so", "old");
        let new = dir.path().join("release");
        write(&new, "VERSION", "2.0.0\n");
        write(&new, "bin/pos", "program");
        write(&new, "收银/说明.txt", "新");
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        Fixture {
            layout: Layout::new(&folder, "VERSION"),
            store,
            new,
            _dir: dir,
        }
    }

    fn request(f: &Fixture, version: &str) -> StageRequest {
        StageRequest {
            version: Version::parse(version).unwrap(),
            manifest: scan(&f.new),
            // The layout stages; the agent checked the release before.
            release: tillup_core::install::SignedLog {
                log: String::new(),
                signature: String::new(),
                keys: Default::default(),
            },
        }
    }

    /// Puts every file of `dir` into the incoming store.
    fn receive(f: &Fixture, dir: &Path) {
        for e in scan(dir).files() {
            f.store
                .put_file(&tillup_fs::join(dir, &e.path), &e.sha256)
                .unwrap();
        }
    }

    #[test]
    fn the_previous_folder_becomes_the_next_staging_and_only_what_differs_is_written() {
        let f = fixture();
        receive(&f, &f.new);
        let v1 = scan(&f.layout.folder);
        f.layout
            .stage(&v1, &f.store, &request(&f, "2.0.0"))
            .unwrap();
        // The agent keeps the hash cache of the folder it swaps out.
        let mut cache = HashCache::default();
        scan_folder(&f.layout.folder, &mut cache).unwrap();
        assert!(f.layout.commit(&Version::parse("2.0.0").unwrap()).unwrap());
        assert_eq!(scan(&f.layout.previous), v1);

        let holds = f.layout.recycle_previous(&mut cache).unwrap();
        assert_eq!(holds, Some(v1.clone()), "it holds the old folder");
        assert!(!f.layout.previous.exists() && f.layout.staging.is_dir());
        assert_eq!(
            f.layout.recycle_previous(&mut cache).unwrap(),
            None,
            "a complete staging folder is kept"
        );
        // 3.0.0: the 1.0.0 program again, a new file; only those are written.
        write(&f.new, "VERSION", "3.0.0\n");
        write(&f.new, "lib/new.so", "new library");
        std::fs::remove_dir_all(f.new.join("收银")).unwrap();
        receive(&f, &f.new);
        let v2 = scan(&f.layout.folder);
        let report = f
            .layout
            .stage(&v2, &f.store, &request(&f, "3.0.0"))
            .unwrap();
        assert_eq!(
            report.reused_bytes + report.received_bytes,
            ("3.0.0\n".len() + "new library".len()) as u64,
            "bin/pos, unchanged since 1.0.0, is not written again: {report:?}"
        );
        assert_eq!(scan(&f.layout.staging), scan(&f.new));
    }

    #[test]
    fn a_second_stage_changes_only_what_differs() {
        let f = fixture();
        receive(&f, &f.new);
        let current = scan(&f.layout.folder);
        let first = f
            .layout
            .stage(&current, &f.store, &request(&f, "2.0.0"))
            .unwrap();
        assert!(f.layout.staged_record.is_file());
        // The same release plus a terminal-local file, a removed file, and a
        // file where the release had a folder.
        write(&f.new, "config/local.ini", "mine");
        std::fs::remove_dir_all(f.new.join("收银")).unwrap();
        write(&f.new, "收银", "now a file");
        receive(&f, &f.new);
        let second = f
            .layout
            .stage(&current, &f.store, &request(&f, "2.0.0"))
            .unwrap();
        let changed = ("mine".len() + "now a file".len()) as u64;
        assert_eq!(
            second.reused_bytes + second.received_bytes,
            changed,
            "{first:?} then {second:?}"
        );
        assert_eq!(scan(&f.layout.staging), scan(&f.new));
        // Without its record, a staging folder is rebuilt whole.
        std::fs::remove_file(&f.layout.staged_record).unwrap();
        write(&f.layout.staging, "stray", "left by a crash");
        f.layout
            .stage(&current, &f.store, &request(&f, "2.0.0"))
            .unwrap();
        assert_eq!(scan(&f.layout.staging), scan(&f.new));
        // A commit consumes the staging folder and its record.
        assert!(f.layout.commit(&Version::new(2, 0, 0)).unwrap());
        assert!(!f.layout.staged_record.exists());
    }

    const CUTS: [&str; 4] = [
        "agent.swap.journaled",
        "agent.swap.half",
        "agent.swap.exchanged",
        "agent.swap.settling",
    ];

    /// Runs `op` with a crash at `cut`; true if the crash point was reached.
    fn crash_at(cut: &str, op: impl FnOnce() -> Result<bool, FolderError>) -> bool {
        tillup_fs::fault::panic_at_in_this_thread(Some(cut));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(op));
        tillup_fs::fault::panic_at_in_this_thread(None);
        r.is_err()
    }

    /// A swap cut at any point leaves the folder all old or all new, and
    /// recovery makes previous the other one and forgets the journal; a
    /// commit and a rollback repeated after it then do the right thing.
    #[test]
    fn a_swap_cut_anywhere_is_finished_or_undone() {
        for exchange in [true, false] {
            for cut in CUTS {
                let mut f = fixture();
                f.layout.exchange = exchange;
                receive(&f, &f.new);
                let old = scan(&f.layout.folder);
                let req = request(&f, "2.0.0");
                f.layout.stage(&old, &f.store, &req).unwrap();
                let (v1, v2) = (Version::new(1, 0, 0), Version::new(2, 0, 0));
                let ctx = format!("commit cut at {cut}, exchange: {exchange}");
                let reached = crash_at(cut, || f.layout.commit(&v2));
                if !reached {
                    // `agent.swap.half` is only on the two-rename path.
                    assert!(exchange && cut == "agent.swap.half", "{ctx}");
                    continue;
                }
                if f.layout.folder.exists() {
                    let now = scan(&f.layout.folder);
                    assert!(now == old || now == req.manifest, "{ctx}: a mix");
                } else {
                    assert_eq!(cut, "agent.swap.half", "{ctx}: no folder");
                }
                assert!(f.layout.journal.exists(), "{ctx}");
                assert!(f.layout.recover().unwrap().is_some(), "{ctx}");
                assert!(!f.layout.journal.exists(), "{ctx}");
                let now = scan(&f.layout.folder);
                if now == req.manifest {
                    assert_eq!(scan(&f.layout.previous), old, "{ctx}");
                    assert!(f.layout.staged().is_none(), "{ctx}: stale record");
                } else {
                    assert_eq!(now, old, "{ctx}");
                    // Undone: the staging folder is still whole and committable.
                    assert!(f.layout.staged().is_some(), "{ctx}");
                }
                f.layout.commit(&v2).unwrap();
                assert_eq!(scan(&f.layout.folder), req.manifest, "{ctx}");
                assert_eq!(scan(&f.layout.previous), old, "{ctx}");

                // The same for a rollback cut at that point.
                let ctx = format!("rollback cut at {cut}, exchange: {exchange}");
                if !crash_at(cut, || f.layout.rollback(&v1)) {
                    continue;
                }
                let recovered = f.layout.recover().unwrap();
                assert!(recovered.is_some(), "{ctx}");
                let now = scan(&f.layout.folder);
                let other = if now == old { &req.manifest } else { &old };
                assert!(now == old || now == req.manifest, "{ctx}: a mix");
                assert_eq!(&scan(&f.layout.previous), other, "{ctx}");
                f.layout.rollback(&v1).unwrap();
                assert_eq!(scan(&f.layout.folder), old, "{ctx}");
                assert_eq!(scan(&f.layout.previous), req.manifest, "{ctx}");
            }
        }
    }

    /// A staging folder whose stage was cut short (no record) is never
    /// swapped in, even when its version file is there.
    #[test]
    fn commit_refuses_a_staging_folder_without_its_record() {
        let f = fixture();
        receive(&f, &f.new);
        let old = scan(&f.layout.folder);
        f.layout
            .stage(&old, &f.store, &request(&f, "2.0.0"))
            .unwrap();
        std::fs::remove_file(&f.layout.staged_record).unwrap();
        let err = f.layout.commit(&Version::new(2, 0, 0)).unwrap_err();
        assert!(matches!(err, FolderError::NotStaged { .. }), "{err}");
        assert_eq!(scan(&f.layout.folder), old);
    }

    /// Junk at the previous path (a file, say) does not stop a swap.
    #[test]
    fn a_file_at_the_previous_path_is_replaced() {
        let f = fixture();
        receive(&f, &f.new);
        let old = scan(&f.layout.folder);
        f.layout
            .stage(&old, &f.store, &request(&f, "2.0.0"))
            .unwrap();
        std::fs::write(&f.layout.previous, "in the way").unwrap();
        assert!(f.layout.commit(&Version::new(2, 0, 0)).unwrap());
        assert_eq!(scan(&f.layout.previous), old);
        assert!(!f.layout.journal.exists());
    }

    #[test]
    fn stage_reports_missing_then_reuses_local_files() {
        let f = fixture();
        let req = request(&f, "2.0.0");
        let current = scan(&f.layout.folder);
        let err = f.layout.stage(&current, &f.store, &req).unwrap_err();
        assert!(
            matches!(&err, FolderError::Missing(h) if h.len() == 2),
            "{err}"
        );
        assert!(!f.layout.staging.exists());
        for name in ["VERSION", "收银/说明.txt"] {
            f.store
                .put_bytes(&std::fs::read(f.new.join(name)).unwrap())
                .unwrap();
        }
        let report = f.layout.stage(&current, &f.store, &req).unwrap();
        assert_eq!(report.reused_bytes, 7);
        assert_eq!(report.received_bytes, 6 + "新".len() as u64);
        assert_eq!(scan(&f.layout.staging), req.manifest);
        assert_eq!(
            f.layout.version_of(&f.layout.staging),
            Some(Version::new(2, 0, 0))
        );
    }

    #[test]
    fn stage_refuses_a_manifest_whose_version_file_disagrees() {
        let f = fixture();
        let req = request(&f, "9.9.9");
        f.store.put_bytes(b"2.0.0\n").unwrap();
        f.store.put_bytes("新".as_bytes()).unwrap();
        let err = f
            .layout
            .stage(&scan(&f.layout.folder), &f.store, &req)
            .unwrap_err();
        assert!(matches!(err, FolderError::WrongVersion { .. }), "{err}");
        assert!(
            !f.layout.staging.exists(),
            "a refused staging folder is removed"
        );
    }

    #[test]
    fn commit_and_rollback_are_idempotent_by_target() {
        let f = fixture();
        let (v1, v2) = (Version::new(1, 0, 0), Version::new(2, 0, 0));
        let old = scan(&f.layout.folder);
        assert!(matches!(
            f.layout.commit(&v2),
            Err(FolderError::NotStaged { .. })
        ));
        f.store.put_bytes(b"2.0.0\n").unwrap();
        f.store.put_bytes("新".as_bytes()).unwrap();
        let req = request(&f, "2.0.0");
        f.layout.stage(&old, &f.store, &req).unwrap();
        assert!(f.layout.commit(&v2).unwrap());
        assert_eq!(scan(&f.layout.folder), req.manifest);
        assert_eq!(scan(&f.layout.previous), old);
        assert!(!f.layout.staging.exists());
        assert!(!f.layout.commit(&v2).unwrap());
        assert!(f.layout.rollback(&v1).unwrap());
        assert_eq!(scan(&f.layout.folder), old);
        assert_eq!(scan(&f.layout.previous), req.manifest);
        assert!(!f.layout.rollback(&v1).unwrap());
        let err = f
            .layout
            .rollback(&Version::new(0, 9, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds 1.0.0") && err.contains("holds 2.0.0"),
            "{err}"
        );
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("/pos/cupos"), "tillup-staging"),
            PathBuf::from("/pos/cupos.tillup-staging")
        );
    }
}
