//! The data folder's layout and the signing key.
//!
//! ```text
//! DIR/tillup.db                                   SQLite (WAL)
//! DIR/blobs/                                      the BlobStore
//! DIR/keys/tillup.key, DIR/keys/tillup.pub        made by `keygen`
//! DIR/stores/{store}/upgrades/{upgrade}/backup.json
//! DIR/stores/{store}/upgrades/{upgrade}/result/{terminal}.json
//! ```

use std::path::{Path, PathBuf};

use tillup_core::sign::SecretKey;

use crate::error::Error;

/// The environment variable holding the password of a protected key.
pub const KEY_PASSWORD_ENV: &str = "TILLUP_KEY_PASSWORD";

/// Paths inside the data folder. Ids given to it must have passed
/// [`crate::error::check_id`].
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database.
    pub fn db(&self) -> PathBuf {
        self.root.join("tillup.db")
    }

    /// The blob store's folder.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The default secret key.
    pub fn secret_key(&self) -> PathBuf {
        self.root.join("keys").join("tillup.key")
    }

    /// The default public key.
    pub fn public_key(&self) -> PathBuf {
        self.root.join("keys").join("tillup.pub")
    }

    /// The temporary area of one store's upgrade.
    pub fn upgrade(&self, store: &str, upgrade: &str) -> PathBuf {
        self.root
            .join("stores")
            .join(store)
            .join("upgrades")
            .join(upgrade)
    }

    /// The backup uploaded for an upgrade.
    pub fn backup(&self, store: &str, upgrade: &str) -> PathBuf {
        self.upgrade(store, upgrade).join("backup.json")
    }

    /// The processed manifest of one terminal.
    pub fn result(&self, store: &str, upgrade: &str, terminal: u32) -> PathBuf {
        self.upgrade(store, upgrade)
            .join("result")
            .join(format!("{terminal}.json"))
    }
}

/// Where the signing key is and how to unlock it; read at every use, so a
/// replaced key file takes effect without a restart.
#[derive(Clone, Debug)]
pub struct KeySource {
    /// The minisign secret key file (or Tauri's base64 form).
    pub path: PathBuf,
    /// The password of a protected key.
    pub password: Option<String>,
}

impl KeySource {
    /// The key at `path`, with the password from [`KEY_PASSWORD_ENV`] if set.
    pub fn from_env(path: PathBuf) -> Self {
        Self {
            path,
            password: std::env::var(KEY_PASSWORD_ENV).ok(),
        }
    }

    /// Reads and unlocks the key.
    pub fn load(&self) -> Result<SecretKey, Error> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::KeyFile {
            path: self.path.clone(),
            source,
        })?;
        match SecretKey::parse(&text, self.password.clone()) {
            Ok(key) => Ok(key),
            Err(source) => match repair_unencrypted_checksum(&text) {
                Some(fixed) => SecretKey::parse(&fixed, None),
                None => Err(source),
            }
            .map_err(|source| Error::Key {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// C minisign 0.11 writes an all-zero checksum into the unencrypted keys
/// that `minisign -G -W` makes (the C tool does not check it), and the
/// `minisign` crate refuses them as corrupted. For such a key only (no
/// KDF, zero checksum), returns the key text with the checksum filled in:
/// BLAKE2b-256 of the algorithm, key id and secret key, as minisign defines it.
fn repair_unencrypted_checksum(text: &str) -> Option<String> {
    use base64::Engine;
    use blake2::Digest;
    const LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<&str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| !l.trim().is_empty() && !l.starts_with("untrusted comment:"))?;
    let mut raw = b64.decode(lines[i].trim()).ok()?;
    let chk = 126..LEN;
    if raw.len() != LEN
        || &raw[..2] != b"Ed"
        || raw[2..4] != [0, 0]
        || raw[chk.clone()].iter().any(|b| *b != 0)
    {
        return None;
    }
    let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
    h.update(&raw[..2]);
    h.update(&raw[54..126]);
    raw[chk].copy_from_slice(&h.finalize());
    let fixed = b64.encode(&raw);
    lines[i] = &fixed;
    Some(lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_checksum_of_an_unencrypted_key_is_repaired_and_nothing_else() {
        use base64::Engine;
        let keys = tillup_core::sign::generate_keys().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut lines: Vec<String> = keys.secret_file.lines().map(str::to_owned).collect();
        let mut raw = b64.decode(&lines[1]).unwrap();
        let good = raw.clone();
        raw[126..].fill(0);
        lines[1] = b64.encode(&raw);
        let broken = lines.join("\n");
        assert!(SecretKey::parse(&broken, None).is_err());
        let fixed = repair_unencrypted_checksum(&broken).unwrap();
        assert_eq!(b64.decode(fixed.lines().nth(1).unwrap()).unwrap(), good);
        SecretKey::parse(&fixed, None).unwrap();
        assert_eq!(repair_unencrypted_checksum(&keys.secret_file), None);
    }
}
