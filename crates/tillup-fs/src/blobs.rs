//! A content-addressed store: `root/ab/abcdef…` holds the bytes whose
//! SHA-256 is `abcdef…`. A blob appears under its name only after its hash
//! was checked, so a partial or altered file is never taken for a whole one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tillup_core::Sha256Hex;

use crate::{Error, IoContext, fsync_dir};

/// A folder of blobs named by their SHA-256.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        fs::create_dir_all(root.join("tmp")).at(&root)?;
        Ok(Self { root })
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

    /// A file under the store's `tmp/` where a download of `h` can grow
    /// across interruptions; [`BlobStore::adopt_partial`] takes it in once whole.
    pub fn partial_path(&self, h: &Sha256Hex) -> PathBuf {
        self.root.join("tmp").join(format!("{h}.partial"))
    }

    /// Checks the partial download of `h` and moves it into the store. On a
    /// mismatch the partial file is deleted so the next try starts over.
    pub fn adopt_partial(&self, h: &Sha256Hex, size: Option<u64>) -> Result<(), Error> {
        let partial = self.partial_path(h);
        let (actual, len) = crate::hash_file(&partial)?;
        if let Some(s) = size.filter(|s| *s != len) {
            let _ = fs::remove_file(&partial);
            return Err(Error::SizeMismatch {
                path: partial,
                expected: s,
                actual: len,
            });
        }
        if actual != *h {
            let _ = fs::remove_file(&partial);
            return Err(Error::HashMismatch {
                path: partial,
                expected: *h,
                actual,
            });
        }
        File::open(&partial)
            .and_then(|f| f.sync_data())
            .at(&partial)?;
        let dest = self.path(h);
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).at(dir)?;
        fs::rename(&partial, &dest).at(&dest)?;
        fsync_dir(dir)
    }

    fn commit(&self, tmp: tempfile::NamedTempFile, h: &Sha256Hex) -> Result<(), Error> {
        tmp.as_file().sync_data().at(tmp.path())?;
        let dest = self.path(h);
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).at(dir)?;
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

    /// Removes the leftovers of interrupted writes.
    pub fn clean_tmp(&self) -> Result<(), Error> {
        let tmp = self.root.join("tmp");
        // Partial downloads are kept: they resume.
        for e in fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            if !e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
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
    fn a_partial_download_is_adopted_only_when_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let h = Sha256Hex::of(b"whole file");
        fs::write(s.partial_path(&h), b"whole").unwrap();
        assert!(s.adopt_partial(&h, Some(10)).is_err());
        assert!(!s.has(&h) && !s.partial_path(&h).exists());
        fs::write(s.partial_path(&h), b"whole file").unwrap();
        s.adopt_partial(&h, Some(10)).unwrap();
        assert_eq!(s.read(&h).unwrap(), b"whole file");
    }
}
