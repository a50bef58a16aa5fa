//! Many blobs received in one go (a pack of a program folder's files).
//!
//! Each blob grows its partial file, as [`BlobStore::receive`] does, and is
//! hashed while it arrives; once whole and checked it is set aside under a
//! name nobody else writes. [`Batch::finish`] then makes every checked blob
//! durable with one sync of the file system and only after that renames
//! them into the store (and syncs the names). A pack of thousands of small
//! files so costs two syncs rather than two per file, and a blob still
//! enters the store only with its bytes checked and on disk.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tillup_core::Sha256Hex;

use crate::{BlobStore, Error, IoContext};

/// Blobs received together; see the module doc.
#[must_use = "nothing enters the store before `finish`"]
pub struct Batch {
    store: BlobStore,
    owner: String,
    /// Checked blobs waiting for `finish`: the set-aside file and its hash.
    checked: Vec<(PathBuf, Sha256Hex)>,
}

impl BlobStore {
    /// Starts receiving several blobs sent by `owner` (see [`BlobStore::upload_path`]).
    pub fn batch(&self, owner: &str) -> Result<Batch, Error> {
        // Checks the owner's name once.
        self.upload_path(&Sha256Hex::from_bytes([0; 32]), owner)?;
        Ok(Batch {
            store: self.clone(),
            owner: owner.to_owned(),
            checked: Vec::new(),
        })
    }
}

/// A blob arriving piece by piece ([`Batch::begin`]): its partial file,
/// held by this writer alone, and its hash so far.
#[must_use = "a blob counts only once `Batch::complete` checked it"]
pub struct Incoming {
    h: Sha256Hex,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    offset: u64,
    total: u64,
    _writer: crate::blobs::PartialLock,
}

impl Incoming {
    /// The blob's hash.
    pub fn sha256(&self) -> Sha256Hex {
        self.h
    }

    /// The bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.total - self.len
    }

    /// Appends `bytes` (at most [`Incoming::remaining`]).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        debug_assert!(bytes.len() as u64 <= self.remaining());
        crate::fault::charge(bytes.len()).at(&self.path)?;
        self.file.write_all(bytes).at(&self.path)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// The blob stopped short: what arrived stays for a resume.
    pub fn cut(self, source: io::Error) -> Error {
        Error::TransferCut {
            path: self.path.clone(),
            held: self.len,
            source,
        }
    }
}

impl Batch {
    /// Starts receiving bytes `offset..total` of blob `h`, appended to what
    /// is held of it; `offset` is 0 (start over) or exactly the length
    /// held, else [`Error::WrongOffset`]. Waits while another writer has
    /// the same partial file.
    pub fn begin(&mut self, h: &Sha256Hex, offset: u64, total: u64) -> Result<Incoming, Error> {
        let path = self.store.upload_path(h, &self.owner)?;
        let writer = self.store.partial_lock(&path);
        let held = crate::blobs::held_len(path.clone())?;
        if offset != 0 && offset != held {
            return Err(Error::WrongOffset { path, held, offset });
        }
        if offset > total {
            return Err(Error::SizeMismatch {
                path,
                expected: total,
                actual: offset,
            });
        }
        let mut hasher = Sha256::new();
        if offset > 0 {
            let mut f = File::open(&path).at(&path)?;
            io::copy(&mut f, &mut hasher).at(&path)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(offset > 0)
            .truncate(offset == 0)
            .open(&path)
            .at(&path)?;
        Ok(Incoming {
            h: *h,
            path,
            file,
            hasher,
            len: offset,
            offset,
            total,
            _writer: writer,
        })
    }

    /// Ends a blob whose bytes all arrived: hashed, a mismatch deletes it
    /// ([`Error::HashMismatch`]); a match sets it aside for
    /// [`Batch::finish`]. A blob the store holds already is dropped.
    /// Returns the bytes received.
    pub fn complete(&mut self, incoming: Incoming) -> Result<u64, Error> {
        let Incoming {
            h,
            path,
            file,
            hasher,
            len,
            offset,
            total,
            _writer,
        } = incoming;
        if len != total {
            return Err(Error::TransferCut {
                path,
                held: len,
                source: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        drop(file);
        let actual = Sha256Hex::from_bytes(hasher.finalize().into());
        if actual != h {
            let _ = fs::remove_file(&path);
            return Err(Error::HashMismatch {
                path,
                expected: h,
                actual,
            });
        }
        if self.store.has(&h) {
            let _ = fs::remove_file(&path);
        } else {
            // Out of reach of any other writer of the same partial name.
            let aside = path.with_extension(format!("{}.checked", self.checked.len()));
            fs::rename(&path, &aside).at(&aside)?;
            self.checked.push((aside, h));
        }
        Ok(len - offset)
    }

    /// [`Batch::begin`], the bytes read from `reader`, then
    /// [`Batch::complete`]: reads exactly `total - offset` bytes; fewer is
    /// a cut ([`Error::TransferCut`]; what arrived is kept for a resume).
    pub fn receive(
        &mut self,
        h: &Sha256Hex,
        offset: u64,
        total: u64,
        reader: &mut dyn Read,
    ) -> Result<u64, Error> {
        let mut incoming = self.begin(h, offset, total)?;
        let mut buf = vec![0u8; 256 * 1024];
        while incoming.remaining() > 0 {
            let want = usize::try_from(incoming.remaining())
                .unwrap_or(usize::MAX)
                .min(buf.len());
            match reader.read(&mut buf[..want]) {
                Ok(0) => return Err(incoming.cut(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => incoming.write(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(incoming.cut(e)),
            }
        }
        self.complete(incoming)
    }

    /// How many checked blobs wait for [`Batch::finish`].
    pub fn pending(&self) -> usize {
        self.checked.len()
    }

    /// Makes every checked blob durable, then moves it into the store.
    /// Returns the hashes that entered it.
    pub fn finish(mut self) -> Result<Vec<Sha256Hex>, Error> {
        let checked = std::mem::take(&mut self.checked);
        if checked.is_empty() {
            return Ok(Vec::new());
        }
        sync_files(self.store.root(), checked.iter().map(|(p, _)| p.as_path()))?;
        let mut dirs = std::collections::BTreeSet::new();
        let mut entered = Vec::with_capacity(checked.len());
        for (aside, h) in checked {
            let dest = self.store.path(&h);
            let dir = dest.parent().expect("blob paths have a parent");
            if dirs.insert(dir.to_owned()) {
                crate::private_dir(dir)?;
            }
            crate::blobs::read_only(&aside)?;
            fs::rename(&aside, &dest).at(&dest)?;
            entered.push(h);
        }
        for dir in &dirs {
            crate::fsync_dir(dir)?;
        }
        Ok(entered)
    }
}

impl Drop for Batch {
    /// Checked blobs never finished are dropped: they were not made durable.
    fn drop(&mut self) {
        for (aside, _) in &self.checked {
            let _ = fs::remove_file(aside);
        }
    }
}

/// Makes the data of `files` (all under `root`) durable: one `syncfs` of
/// the file system on Linux, one `sync_data` per file elsewhere.
pub(crate) fn sync_files<'p>(
    root: &Path,
    files: impl Iterator<Item = &'p Path>,
) -> Result<(), Error> {
    #[cfg(target_os = "linux")]
    {
        let _ = files;
        let dir = File::open(root).at(root)?;
        rustix::fs::syncfs(&dir).map_err(io::Error::from).at(root)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        for f in files {
            File::open(f).and_then(|f| f.sync_data()).at(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
    }

    #[test]
    fn blobs_enter_the_store_only_at_finish_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (a, b) = (bytes(3, 1000), bytes(5, 300_000));
        let (ha, hb) = (Sha256Hex::of(&a), Sha256Hex::of(&b));
        let mut batch = store.batch("").unwrap();
        batch.receive(&ha, 0, 1000, &mut &a[..]).unwrap();
        batch.receive(&hb, 0, b.len() as u64, &mut &b[..]).unwrap();
        assert!(!store.has(&ha) && !store.has(&hb), "not before finish");
        assert_eq!(batch.finish().unwrap(), vec![ha, hb]);
        assert_eq!(store.read(&ha).unwrap(), a);
        assert_eq!(store.read(&hb).unwrap(), b);
    }

    #[test]
    fn a_wrong_hash_is_deleted_and_a_cut_keeps_what_arrived_for_a_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = bytes(7, 10_000);
        let h = Sha256Hex::of(&a);
        let mut batch = store.batch("store-1").unwrap();
        let wrong = bytes(9, 10_000);
        assert!(matches!(
            batch.receive(&h, 0, 10_000, &mut &wrong[..]),
            Err(Error::HashMismatch { .. })
        ));
        assert_eq!(store.partial_len(&h, "store-1").unwrap(), 0);
        // Cut after 4 000 bytes, resumed from there.
        assert!(matches!(
            batch.receive(&h, 0, 10_000, &mut &a[..4000]),
            Err(Error::TransferCut { held: 4000, .. })
        ));
        assert!(matches!(
            batch.receive(&h, 100, 10_000, &mut &a[100..]),
            Err(Error::WrongOffset { held: 4000, .. })
        ));
        batch.receive(&h, 4000, 10_000, &mut &a[4000..]).unwrap();
        batch.finish().unwrap();
        assert_eq!(store.read(&h).unwrap(), a);
    }

    #[test]
    fn an_unfinished_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = bytes(11, 500);
        let h = Sha256Hex::of(&a);
        {
            let mut batch = store.batch("").unwrap();
            batch.receive(&h, 0, 500, &mut &a[..]).unwrap();
        }
        assert!(!store.has(&h));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
