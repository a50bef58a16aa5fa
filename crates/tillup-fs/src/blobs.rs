//! A content-addressed store: `root/ab/abcdef…` holds the bytes whose
//! SHA-256 is `abcdef…`. A blob appears under its name only after its hash
//! was checked, so a partial or altered file is never taken for a whole one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tillup_core::Sha256Hex;

use crate::{Error, IoContext, fsync_dir};

/// A folder of blobs named by their SHA-256.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
    /// One writer per partial file at a time, across clones of the store:
    /// a resumed upload waits for the handler of the cut one to finish.
    partial_locks: Arc<Writers>,
}

/// The partial files being written now, and a wake-up for who waits on one.
#[derive(Debug, Default)]
pub(crate) struct Writers {
    writing: Mutex<std::collections::HashSet<PathBuf>>,
    done: std::sync::Condvar,
}

impl BlobStore {
    /// Opens (creating) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        crate::private_dir(&root)?;
        crate::private_dir(&root.join("tmp"))?;
        Ok(Self {
            root,
            partial_locks: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob lives (whether or not it is there).
    pub fn path(&self, h: &Sha256Hex) -> PathBuf {
        self.root.join(h.prefix()).join(h.to_string())
    }

    pub fn has(&self, h: &Sha256Hex) -> bool {
        self.path(h).is_file()
    }

    /// The hashes of `wanted` that the store lacks, in order, each once.
    pub fn missing<'a>(&self, wanted: impl IntoIterator<Item = &'a Sha256Hex>) -> Vec<Sha256Hex> {
        let mut seen = std::collections::BTreeSet::new();
        wanted
            .into_iter()
            .filter(|h| seen.insert(**h) && !self.has(h))
            .copied()
            .collect()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, h: &Sha256Hex) -> Result<File, Error> {
        let p = self.path(h);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::MissingBlob(*h)
            } else {
                Error::Io { path: p, source: e }
            }
        })
    }

    /// Reads a whole (small) blob.
    pub fn read(&self, h: &Sha256Hex) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut f = self.open_blob(h)?;
        f.read_to_end(&mut out).at(&self.path(h))?;
        Ok(out)
    }

    /// Stores bytes under their own hash.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Sha256Hex, Error> {
        let h = Sha256Hex::of(bytes);
        if !self.has(&h) {
            self.put_reader(&mut &bytes[..], &h, Some(bytes.len() as u64))?;
        }
        Ok(h)
    }

    /// Streams `reader` into the store, checking it hashes to `expected`
    /// (and has `size` bytes, if given). On a mismatch nothing is kept.
    pub fn put_reader(
        &self,
        reader: &mut dyn Read,
        expected: &Sha256Hex,
        size: Option<u64>,
    ) -> Result<u64, Error> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).at(&tmp_dir)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).at(tmp.path()),
            };
            hasher.update(&buf[..n]);
            crate::fault::charge(n).at(tmp.path())?;
            tmp.write_all(&buf[..n]).at(tmp.path())?;
            total += n as u64;
            if size.is_some_and(|s| total > s) {
                return Err(Error::SizeMismatch {
                    path: self.path(expected),
                    expected: size.unwrap_or(0),
                    actual: total,
                });
            }
        }
        if let Some(s) = size.filter(|s| *s != total) {
            return Err(Error::SizeMismatch {
                path: self.path(expected),
                expected: s,
                actual: total,
            });
        }
        let actual = Sha256Hex::from_bytes(hasher.finalize().into());
        if actual != *expected {
            return Err(Error::HashMismatch {
                path: self.path(expected),
                expected: *expected,
                actual,
            });
        }
        self.commit(tmp, expected)?;
        Ok(total)
    }

    /// Copies a file already known to hash to `h` into the store (used
    /// for a file just scanned); the copy is hashed again on the way in.
    pub fn put_file(&self, src: &Path, h: &Sha256Hex) -> Result<(), Error> {
        if self.has(h) {
            return Ok(());
        }
        let mut f = File::open(src).at(src)?;
        self.put_reader(&mut f, h, None).map(|_| ())
    }

    /// A file under the store's `tmp/` where a transfer of `h` with no
    /// owner (see [`BlobStore::upload_path`]) grows across interruptions.
    fn partial_path(&self, h: &Sha256Hex) -> PathBuf {
        self.root.join("tmp").join(format!("{h}.partial"))
    }

    /// Where an upload of `h` sent by `owner` grows across interruptions.
    /// Each owner (a store, on the server) has its own: a blob counts as
    /// received from an owner only if that owner sent every byte of it.
    /// `owner` is empty or made of ASCII letters, digits, `.`, `_`, `-`.
    pub fn upload_path(&self, h: &Sha256Hex, owner: &str) -> Result<PathBuf, Error> {
        if owner.is_empty() {
            return Ok(self.partial_path(h));
        }
        // No separator can get in: the name stays inside `tmp/`.
        if !owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Error::BadName {
                path: PathBuf::from(owner),
                reason: "an upload's owner is made of ASCII letters, digits, `.`, `_` and `-`"
                    .into(),
            });
        }
        Ok(self.root.join("tmp").join(format!("{h}.{owner}.partial")))
    }

    /// How many bytes of an unfinished upload of `h` by `owner` are held.
    /// Waits while one is being received (the handler of a cut upload may
    /// still be writing its last bytes), so the answer is where to resume.
    pub fn partial_len(&self, h: &Sha256Hex, owner: &str) -> Result<u64, Error> {
        let path = self.upload_path(h, owner)?;
        let _one_writer = self.partial_lock(&path);
        held_len(path)
    }

    /// Of `hashes`, those `owner` holds part of, with how many bytes: where
    /// each resumes (the `held` of a `blobs/missing` answer).
    pub fn held(
        &self,
        hashes: &[Sha256Hex],
        owner: &str,
    ) -> Result<std::collections::BTreeMap<Sha256Hex, u64>, Error> {
        let mut held = std::collections::BTreeMap::new();
        for h in hashes {
            let n = self.partial_len(h, owner)?;
            if n > 0 {
                held.insert(*h, n);
            }
        }
        Ok(held)
    }

    /// Waits until nobody writes the partial file `path`, then holds it
    /// until the lock is dropped (which may be on another thread).
    pub(crate) fn partial_lock(&self, path: &Path) -> PartialLock {
        let w = &*self.partial_locks;
        let mut writing = w.writing.lock().unwrap_or_else(|p| p.into_inner());
        while writing.contains(path) {
            writing = w.done.wait(writing).unwrap_or_else(|p| p.into_inner());
        }
        writing.insert(path.to_owned());
        PartialLock {
            writers: Arc::clone(&self.partial_locks),
            path: path.to_owned(),
        }
    }

    fn commit(&self, tmp: tempfile::NamedTempFile, h: &Sha256Hex) -> Result<(), Error> {
        tmp.as_file().sync_data().at(tmp.path())?;
        read_only(tmp.path())?;
        let dest = self.path(h);
        let dir = dest.parent().expect("blob paths have a parent");
        crate::private_dir(dir)?;
        tmp.persist(&dest).map_err(|e| e.error).at(&dest)?;
        fsync_dir(dir)
    }

    /// Deletes every blob not in `live` (`tmp/` is left alone). Returns the
    /// number of blobs and bytes freed.
    pub fn retain(
        &self,
        live: &std::collections::BTreeSet<Sha256Hex>,
    ) -> Result<(usize, u64), Error> {
        let (mut count, mut bytes) = (0, 0);
        for h in self.hashes()?.difference(live) {
            let path = self.path(h);
            bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).at(&path)?;
            count += 1;
        }
        Ok((count, bytes))
    }

    /// Every blob the store holds.
    pub fn hashes(&self) -> Result<std::collections::BTreeSet<Sha256Hex>, Error> {
        let mut out = std::collections::BTreeSet::new();
        for fan in fs::read_dir(&self.root).at(&self.root)? {
            let fan = fan.at(&self.root)?;
            if fan.file_name() == "tmp" || !fan.file_type().at(&fan.path())?.is_dir() {
                continue;
            }
            for blob in fs::read_dir(fan.path()).at(&fan.path())? {
                let name = blob.at(&fan.path())?.file_name();
                out.extend(name.to_str().and_then(|n| n.parse::<Sha256Hex>().ok()));
            }
        }
        Ok(out)
    }

    /// Removes everything in `tmp/`, partial downloads included: call it
    /// only when no transfer runs.
    pub fn clear_tmp(&self) -> Result<(), Error> {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            fs::remove_file(e.path()).at(&e.path())?;
        }
        Ok(())
    }

    /// How long an unfinished transfer is kept for a resume: one nobody
    /// resumed within a day is abandoned (a store that gave up an
    /// upgrade), and is dropped.
    pub const PARTIAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    /// How long any other file may sit in `tmp/` while transfers run: a
    /// write in progress touches its file far more often.
    pub const TMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

    /// Removes what in `tmp/` nobody has touched for long (unfinished
    /// transfers after [`BlobStore::PARTIAL_MAX_AGE`], anything else after
    /// [`BlobStore::TMP_MAX_AGE`]); safe while transfers run. Returns the
    /// files removed.
    pub fn expire_tmp(&self) -> Result<usize, Error> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            let max_age = if e.file_name().to_string_lossy().ends_with(".partial") {
                Self::PARTIAL_MAX_AGE
            } else {
                Self::TMP_MAX_AGE
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if old && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the leftovers of interrupted writes, and unfinished
    /// transfers untouched for [`BlobStore::PARTIAL_MAX_AGE`]; call it at
    /// start-up, when no transfer runs.
    pub fn clean_tmp(&self) -> Result<(), Error> {
        let tmp = self.root.join("tmp");
        // Unfinished transfers are kept: they resume.
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            let abandoned = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Self::PARTIAL_MAX_AGE);
            if abandoned || !e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

/// Makes a blob read-only (on Unix): the host's backup folders are hard
/// links to blobs, and neither may change under the other's name. Windows
/// keeps the default, so the store can still delete what it no longer needs.
pub(crate) fn read_only(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o400)).at(path)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The length of a partial file, 0 if there is none.
pub(crate) fn held_len(path: PathBuf) -> Result<u64, Error> {
    match fs::metadata(&path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::Io { path, source: e }),
    }
}

/// The right to write one partial file; see [`BlobStore::partial_lock`].
#[derive(Debug)]
pub(crate) struct PartialLock {
    writers: Arc<Writers>,
    path: PathBuf,
}

impl Drop for PartialLock {
    fn drop(&mut self) {
        self.writers
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
        self.writers.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_by_hash_and_refuses_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let h = s.put_bytes(b"hello").unwrap();
        assert!(s.has(&h));
        assert_eq!(s.read(&h).unwrap(), b"hello");
        let other = Sha256Hex::of(b"other");
        let err = s.put_reader(&mut &b"hellO"[..], &other, None).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
        assert!(!s.has(&other));
        let short = s.put_reader(&mut &b"hell"[..], &h, Some(5)).unwrap_err();
        assert!(matches!(short, Error::SizeMismatch { .. }));
        assert_eq!(s.missing([&h, &other, &other]), vec![other]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn retain_keeps_only_the_live_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let keep = s.put_bytes(b"keep").unwrap();
        let drop = s.put_bytes(b"drop me").unwrap();
        fs::write(s.partial_path(&drop), b"drop").unwrap();
        let (count, bytes) = s.retain(&[keep].into()).unwrap();
        assert_eq!((count, bytes), (1, 7));
        assert!(s.has(&keep) && !s.has(&drop) && s.partial_path(&drop).exists());
        s.clear_tmp().unwrap();
        assert!(!s.partial_path(&drop).exists());
    }

    #[test]
    fn clean_tmp_keeps_recent_partials_and_drops_abandoned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let (fresh, old) = (Sha256Hex::of(b"fresh"), Sha256Hex::of(b"old"));
        let mut batch = s.batch("a").unwrap();
        for (h, part) in [(&fresh, &b"fre"[..]), (&old, &b"o"[..])] {
            let cut = batch.receive(h, 0, 5, &mut &part[..]);
            assert!(matches!(cut, Err(Error::TransferCut { .. })));
        }
        drop(batch);
        let old_path = s.upload_path(&old, "a").unwrap();
        let long_ago = std::time::SystemTime::now() - BlobStore::PARTIAL_MAX_AGE * 2;
        File::options()
            .write(true)
            .open(&old_path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        fs::write(dir.path().join("tmp/.tmpXYZ"), b"leftover").unwrap();
        // While transfers run, only what nobody touched for long goes: the
        // abandoned partial, not the fresh one nor a recent temporary file.
        assert_eq!(s.expire_tmp().unwrap(), 1);
        assert_eq!(s.partial_len(&old, "a").unwrap(), 0);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 2);
        s.clean_tmp().unwrap();
        assert_eq!(s.partial_len(&fresh, "a").unwrap(), 3);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
    }
}
