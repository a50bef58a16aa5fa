//! Rotating the keys that sign logs (see [`tillup_core::keys`]).
//!
//! The root key lives offline (`root-keygen` writes it where it is told,
//! a USB stick, never the data folder); `sign-keys` runs there and writes a
//! signed key list to a file; `keys import` on the server keeps it, and
//! `serve` hands the chain of lists to every store that checks.

use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use tillup_core::keys::{KeyList, SignedKeyList};
use tillup_core::sign::PublicKey;

use crate::data::KeySource;
use crate::db::Db;
use crate::error::Error;
use crate::ops::{KeygenOutput, write_key_pair};

/// How long a key list is valid when nothing else was chosen: the root
/// comes out of its drawer once a year.
pub const DEFAULT_KEY_LIST_DAYS: i64 = 365;

/// Makes the root key pair in `dir` (`root.key`, `root.pub`).
pub fn root_keygen(dir: &Path, force: bool) -> Result<KeygenOutput, Error> {
    tillup_fs::private_dir(dir)?;
    write_key_pair(dir.join("root.key"), dir.join("root.pub"), force)
}

/// What a key list says; see [`KeyList`].
pub struct KeyListSpec {
    /// Higher than every list signed before.
    pub version: u64,
    /// The online keys (`RW…` lines or `.pub` files' text).
    pub keys: Vec<String>,
    /// The root that signs the lists after this one (a root rotation).
    pub next_root: Option<String>,
    /// How long the list stays valid.
    pub valid_for: SignedDuration,
}

/// Signs `spec` with the root key `root`.
pub fn sign_key_list(
    root: &KeySource,
    spec: &KeyListSpec,
    now: Timestamp,
) -> Result<SignedKeyList, Error> {
    let line = |text: &str| -> Result<String, Error> {
        PublicKey::parse(text).map_err(|source| Error::Key {
            path: PathBuf::from(text),
            source,
        })?;
        Ok(text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or("")
            .to_owned())
    };
    let list = KeyList {
        version: spec.version,
        expires: now
            .checked_add(spec.valid_for)
            .map_err(|e| Error::Corrupt(format!("expiry: {e}")))?,
        keys: spec
            .keys
            .iter()
            .map(|k| line(k))
            .collect::<Result<_, _>>()?,
        next_root: spec.next_root.as_deref().map(line).transpose()?,
    };
    let text = serde_json::to_string_pretty(&list).expect("a key list serialises");
    let signature = root
        .load()?
        .sign(
            text.as_bytes(),
            &format!("tillup key list version={}", list.version),
        )
        .map_err(|source| Error::Key {
            path: root.path.clone(),
            source,
        })?;
    Ok(SignedKeyList {
        list: text,
        signature,
    })
}

/// Keeps the signed key list in `path` (as `sign-keys` wrote it); it
/// must be newer than every list kept. The server cannot check the root's
/// signature (it does not hold the root): every store does.
pub fn import_key_list(db: &dyn Db, path: &Path) -> Result<KeyList, Error> {
    let bad = |reason: String| Error::BadKeyList {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() > tillup_core::keys::MAX_KEY_CHAIN_BYTES {
        return Err(bad("it is far larger than a key list".into()));
    }
    let signed: SignedKeyList = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let list = signed.parse().map_err(|e| bad(e.to_string()))?;
    for k in list.keys.iter().chain(&list.next_root) {
        PublicKey::parse(k).map_err(|e| bad(format!("`{k}`: {e}")))?;
    }
    db.add_key_list(list.version, &signed, list.next_root.is_some())?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_list_is_imported_once_and_served_as_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let root = root_keygen(&dir.path().join("usb"), false).unwrap();
        let key = KeySource {
            path: root.secret_path.clone(),
            password: None,
        };
        let online = tillup_core::sign::generate_keys().unwrap().public_line;
        let next = tillup_core::sign::generate_keys().unwrap().public_line;
        let db = crate::db::SqliteDb::open(&dir.path().join("data/tillup.db")).unwrap();
        let mut files = Vec::new();
        for (version, next_root) in [(1, None), (2, Some(next.clone())), (3, None)] {
            let signed = sign_key_list(
                &key,
                &KeyListSpec {
                    version,
                    keys: vec![online.clone()],
                    next_root,
                    valid_for: SignedDuration::from_hours(24),
                },
                Timestamp::now(),
            )
            .unwrap();
            let file = dir.path().join(format!("keys-{version}.json"));
            std::fs::write(&file, serde_json::to_vec(&signed).unwrap()).unwrap();
            files.push(file);
        }
        import_key_list(&db, &files[0]).unwrap();
        import_key_list(&db, &files[1]).unwrap();
        assert!(matches!(
            import_key_list(&db, &files[0]),
            Err(Error::KeyListNotNewer {
                version: 1,
                newest: 2
            })
        ));
        import_key_list(&db, &files[2]).unwrap();
        // The transition (2) and the newest (3): enough to walk from root 1.
        let chain = db.key_chain().unwrap();
        let versions: Vec<u64> = chain
            .lists
            .iter()
            .map(|l| l.parse().unwrap().version)
            .collect();
        assert_eq!(versions, [2, 3]);
        let trust = tillup_core::keys::Trust::pinned(&root.public_line);
        // List 3 is signed by the first root in this test, not by `next`:
        // a verifier refuses it, as it should.
        assert!(trust.follow(&chain, Timestamp::now()).is_err());
    }
}
