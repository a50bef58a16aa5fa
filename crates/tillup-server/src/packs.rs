//! Packs the server compressed before.
//!
//! On a release night thousands of stores ask for the same files, the
//! release's new ones, in the same order; compressing them again for each
//! store was most of the server's work. A pack asked for from the first
//! byte of every file, of at least [`MIN_CACHED_BYTES`], is written once
//! into the cache under the hash of its request and sent from there: the
//! same request, the same bytes. A resumed transfer, or a small pack, is
//! compressed as it is sent and leaves nothing behind.
//!
//! The cache is this server's own (in its data folder) and derived from the
//! blobs alone, so losing it costs only the work to make it again; it is
//! kept below [`MAX_CACHED_BYTES`] by dropping the packs sent longest ago.
//! Nothing in it is trusted more than a pack made on the fly: the receiver
//! hashes every blob as always.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tillup_core::Sha256Hex;
use tillup_core::api::PackEntry;
use tillup_fs::IoContext;

use crate::error::Error;

/// The most bytes the cache holds; beyond it the packs sent longest ago go.
/// A release night needs one pack per version stores come from (a few tens
/// of MB each).
pub const MAX_CACHED_BYTES: u64 = 2 << 30;
/// The age after which an unfinished pack is taken for a crash's leftover.
const STALE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The fewest bytes of files a pack must hold to be kept: a smaller one
/// costs little to compress again.
pub const MIN_CACHED_BYTES: u64 = 1 << 20;

/// The packs this server keeps (see the module's documentation).
#[derive(Debug)]
pub struct PackCache {
    dir: PathBuf,
    max_bytes: u64,
    min_bytes: u64,
    /// Held while a pack is written, so that stores arriving together wait
    /// for one compression instead of each making their own.
    writing: Mutex<()>,
}

impl PackCache {
    /// The cache in `dir`, created if absent, with the unfinished files a
    /// crash left removed; it keeps packs of `min_bytes` of files or more
    /// (see [`MIN_CACHED_BYTES`]) and holds at most `max_bytes`.
    pub fn open(dir: impl Into<PathBuf>, min_bytes: u64, max_bytes: u64) -> Result<Self, Error> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).at(&dir)?;
        // Left by a crash; a day old, so that another server sharing the
        // folder is not writing it.
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = entry.path();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE));
            if path.extension().is_some_and(|e| e == "tmp") && stale {
                tillup_fs::remove_file_if_exists(&path)?;
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            min_bytes,
            writing: Mutex::default(),
        })
    }

    /// The pack of `entries` at `level`, opened, if it is (or now becomes)
    /// cached; `None` if the request should be compressed as it is sent.
    /// `locate` says where each blob is, as for
    /// [`tillup_transfer::pack::write_pack`].
    pub fn get_or_make(
        &self,
        entries: &[PackEntry],
        level: i32,
        locate: &dyn Fn(&Sha256Hex) -> Option<PathBuf>,
    ) -> Result<Option<File>, Error> {
        let Some(key) = key(entries, level) else {
            return Ok(None);
        };
        let path = self.dir.join(key.to_string());
        if let Some(file) = open_touched(&path)? {
            return Ok(Some(file));
        }
        // A blob that cannot be found is for the pack made on the fly to
        // report, as it is sent.
        let mut bytes = 0;
        for e in entries {
            let Some(len) = locate(&e.sha256)
                .and_then(|p| p.metadata().ok())
                .map(|m| m.len())
            else {
                return Ok(None);
            };
            bytes += len;
        }
        if bytes < self.min_bytes {
            return Ok(None);
        }
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Another request may have written it while this one waited.
        if let Some(file) = open_touched(&path)? {
            return Ok(Some(file));
        }
        // A name of its own: servers may share a data folder.
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{key}."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .at(&self.dir)?;
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        tillup_transfer::pack::write_pack(entries, locate, level, &|_| {}, &mut w)
            .map_err(|source| Error::Pack { source })?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .at(tmp.path())?;
        // A cached pack cut by a crash would be sent as whole: it was
        // synced above, and only a whole one gets its name.
        tmp.persist(&path).map_err(|e| e.error).at(&path)?;
        self.trim()?;
        open_touched(&path)
    }

    /// Drops the packs sent longest ago until the cache holds at most its
    /// bound; returns how many went. A pack being sent stays readable to
    /// its reader.
    pub fn trim(&self) -> Result<usize, Error> {
        let mut packs = Vec::new();
        let mut total = 0u64;
        for entry in std::fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            let path = entry.path();
            if path.extension().is_some() {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            total += meta.len();
            let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            packs.push((used, meta.len(), path));
        }
        packs.sort();
        let mut dropped = 0;
        for (_, len, path) in packs {
            if total <= self.max_bytes {
                break;
            }
            tillup_fs::remove_file_if_exists(&path)?;
            total -= len;
            dropped += 1;
        }
        Ok(dropped)
    }
}

/// The name a request's pack is kept under: the hash of the pack format,
/// the level and every blob asked for, in order; `None` for a resumed
/// transfer (a blob asked from inside), whose pack no one else will want.
fn key(entries: &[PackEntry], level: i32) -> Option<Sha256Hex> {
    if entries.is_empty() || entries.iter().any(|e| e.from != 0) {
        return None;
    }
    let mut h = Sha256::new();
    h.update(tillup_transfer::pack::MAGIC);
    h.update(level.to_be_bytes());
    for e in entries {
        h.update(e.sha256.as_bytes());
    }
    Some(Sha256Hex::from_bytes(h.finalize().into()))
}

/// Opens a cached pack and marks it as used now; `None` if it is absent.
fn open_touched(path: &Path) -> Result<Option<File>, Error> {
    match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        opened => {
            let file = opened.at(path)?;
            // The time only orders what `trim` drops first.
            let _ = file.set_modified(SystemTime::now());
            Ok(Some(file))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn blobs(dir: &Path, n: usize) -> (tillup_fs::BlobStore, Vec<PackEntry>) {
        let store = tillup_fs::BlobStore::open(dir.join("blobs")).unwrap();
        let entries = (0..n)
            .map(|i| PackEntry {
                sha256: store
                    .put_bytes(format!("file {i} ").repeat(1000).as_bytes())
                    .unwrap(),
                from: 0,
            })
            .collect();
        (store, entries)
    }

    /// The files in the cache's folder, finished or not.
    fn kept(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("packs")).unwrap().count()
    }

    fn read(mut f: File) -> Vec<u8> {
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn a_pack_is_kept_and_sent_as_made_on_the_fly() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entries) = blobs(dir.path(), 5);
        let cache = PackCache::open(dir.path().join("packs"), 0, MAX_CACHED_BYTES).unwrap();
        let locate = |h: &Sha256Hex| Some(store.path(h));
        let kept = read(cache.get_or_make(&entries, 3, &locate).unwrap().unwrap());
        let again = read(cache.get_or_make(&entries, 3, &locate).unwrap().unwrap());
        assert_eq!(kept, again);
        let mut fly = Vec::new();
        tillup_transfer::pack::write_pack(&entries, &locate, 3, &|_| {}, &mut fly).unwrap();
        assert_eq!(kept, fly);
        // Another order or level is another pack.
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_ne!(key(&reversed, 3), key(&entries, 3));
        assert_ne!(key(&entries, 1), key(&entries, 3));
    }

    #[test]
    fn a_small_pack_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entries) = blobs(dir.path(), 2);
        let cache = PackCache::open(dir.path().join("packs"), 1 << 20, MAX_CACHED_BYTES).unwrap();
        let locate = |h: &Sha256Hex| Some(store.path(h));
        assert!(cache.get_or_make(&entries, 3, &locate).unwrap().is_none());
        assert_eq!(kept(dir.path()), 0);
    }

    #[test]
    fn a_resumed_transfer_is_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut entries) = blobs(dir.path(), 2);
        entries[1].from = 10;
        let cache = PackCache::open(dir.path().join("packs"), 0, MAX_CACHED_BYTES).unwrap();
        let locate = |h: &Sha256Hex| Some(store.path(h));
        for _ in 0..3 {
            assert!(cache.get_or_make(&entries, 3, &locate).unwrap().is_none());
        }
        assert_eq!(kept(dir.path()), 0);
    }

    #[test]
    fn a_blob_that_cannot_be_read_leaves_no_pack_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entries) = blobs(dir.path(), 3);
        let cache = PackCache::open(dir.path().join("packs"), 0, MAX_CACHED_BYTES).unwrap();
        let gone = entries[2].sha256;
        // Gone before: left to the pack made on the fly.
        let locate = |h: &Sha256Hex| (*h != gone).then(|| store.path(h));
        assert!(cache.get_or_make(&entries, 3, &locate).unwrap().is_none());
        // Gone while the pack is made.
        let first = std::sync::atomic::AtomicBool::new(true);
        let locate = |h: &Sha256Hex| {
            let found = *h != gone || first.swap(false, std::sync::atomic::Ordering::SeqCst);
            found.then(|| store.path(h))
        };
        assert!(cache.get_or_make(&entries, 3, &locate).is_err());
        assert_eq!(kept(dir.path()), 0);
    }

    #[test]
    fn the_packs_sent_longest_ago_go_first_when_the_cache_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let (store, entries) = blobs(dir.path(), 3);
        let locate = |h: &Sha256Hex| Some(store.path(h));
        let packs: Vec<Vec<PackEntry>> = (0..3).map(|i| vec![entries[i].clone()]).collect();
        let one = {
            let mut v = Vec::new();
            tillup_transfer::pack::write_pack(&packs[0], &locate, 3, &|_| {}, &mut v).unwrap();
            v.len() as u64
        };
        // Room for two packs of about that size.
        let cache = PackCache::open(dir.path().join("packs"), 0, 2 * one + one / 2).unwrap();
        for p in &packs[..2] {
            cache.get_or_make(p, 3, &locate).unwrap().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The first is used again, so the second is the oldest.
        cache.get_or_make(&packs[0], 3, &locate).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.get_or_make(&packs[2], 3, &locate).unwrap().unwrap();
        let held = |p: &Vec<PackEntry>| {
            dir.path()
                .join("packs")
                .join(key(p, 3).unwrap().to_string())
                .exists()
        };
        assert!(held(&packs[0]));
        assert!(!held(&packs[1]));
        assert!(held(&packs[2]));
    }
}
