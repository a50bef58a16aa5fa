//! Store backups kept parsed, by the digest of their stored bytes.
//!
//! One store upgrade reads its backup three times within seconds: the
//! upload before the stop, the changes after it, and the processing, the
//! last two while the store's tills are stopped. A backup of eight
//! terminals of ten thousand files is megabytes of JSON; parsing it costs
//! several times hashing its bytes. The key is the stored bytes' digest,
//! so whichever server of several over one storage wrote the backup, a
//! memo is only ever used for exactly the bytes it was parsed from.

use std::sync::{Arc, Mutex};

use tillup_core::Sha256Hex;
use tillup_core::api::Backup;

/// A backup as parsed, with its [`Backup::digest`].
pub(crate) struct Parsed {
    pub backup: Backup,
    pub digest: Sha256Hex,
}

impl Parsed {
    /// `backup` with its digest computed.
    pub fn new(backup: Backup) -> Self {
        let digest = backup.digest();
        Self { backup, digest }
    }
}

#[derive(Default)]
pub(crate) struct Backups(Mutex<Vec<(Sha256Hex, Arc<Parsed>)>>);

impl Backups {
    /// The backups kept at once: the stores upgrading at the same moment
    /// on a release night, each kept from its upload to its processing
    /// (one entry per store: a backup's changes replace it).
    const KEPT: usize = 16;

    /// The backup stored as `bytes`: the kept one if these bytes were
    /// parsed before, else `parse`d now (and kept).
    pub fn get<E>(
        &self,
        bytes: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<Backup, E>,
    ) -> Result<Arc<Parsed>, E> {
        let key = Sha256Hex::of(bytes);
        if let Some(found) = self.find(&key) {
            return Ok(found);
        }
        let parsed = Arc::new(Parsed::new(parse(bytes)?));
        self.keep(key, Arc::clone(&parsed));
        Ok(parsed)
    }

    /// Keeps `parsed` as what the bytes of digest `key` hold.
    pub fn keep(&self, key: Sha256Hex, parsed: Arc<Parsed>) {
        let mut kept = self.0.lock().expect("not poisoned");
        kept.retain(|(k, _)| *k != key);
        if kept.len() >= Self::KEPT {
            kept.remove(0);
        }
        kept.push((key, parsed));
    }

    /// Forgets `parsed` (a backup its changes replaced).
    pub fn forget(&self, parsed: &Arc<Parsed>) {
        self.0
            .lock()
            .expect("not poisoned")
            .retain(|(_, p)| !Arc::ptr_eq(p, parsed));
    }

    /// The kept parse of the bytes of digest `key`, made the newest.
    fn find(&self, key: &Sha256Hex) -> Option<Arc<Parsed>> {
        let mut kept = self.0.lock().expect("not poisoned");
        let at = kept.iter().position(|(k, _)| k == key)?;
        let found = kept.remove(at);
        let parsed = Arc::clone(&found.1);
        kept.push(found);
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillup_core::api::TerminalBackup;
    use tillup_core::manifest::{FileEntry, Manifest};

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
        memo.get(bytes, |b| {
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
        let first = memo.get(&one, &mut parse).unwrap();
        let again = memo.get(&one, &mut parse).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.digest, backup(1).digest());
        let two = serde_json::to_vec(&backup(2)).unwrap();
        let other = memo.get(&two, &mut parse).unwrap();
        assert_eq!(other.backup, backup(2));
        assert_eq!(parses, 2);
    }

    #[test]
    fn a_backup_used_lately_is_kept_over_older_ones() {
        let memo = Backups::default();
        let docs = documents();
        for d in &docs[..Backups::KEPT] {
            memo.get(d, parse).unwrap();
        }
        // Used again, then one more: the second is dropped, not the first.
        memo.get(&docs[0], kept).unwrap();
        memo.get(&docs[Backups::KEPT], parse).unwrap();
        memo.get(&docs[0], kept).unwrap();
        assert!(parsed_again(&memo, &docs[1]));
    }

    #[test]
    fn only_the_newest_are_kept() {
        let memo = Backups::default();
        let docs = documents();
        for d in &docs {
            memo.get(d, parse).unwrap();
        }
        assert!(parsed_again(&memo, &docs[0]), "the oldest was dropped");
    }
}
