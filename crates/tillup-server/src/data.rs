//! The data folder's layout and the signing key.
//!
//! ```text
//! DIR/tillup.db                                   SQLite (WAL)
//! DIR/blobs/                                      the BlobStore
//! DIR/keys/tillup.key, DIR/keys/tillup.pub        made by `keygen`
//! DIR/stores/{store}/upgrades/{upgrade}/backup.json
//! DIR/stores/{store}/upgrades/{upgrade}/backup-changes.json
//! DIR/stores/{store}/upgrades/{upgrade}/results.json
//! DIR/cache/packs/{request hash}                  crate::packs
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

    /// The packs this server compressed before ([`crate::packs`]).
    pub fn packs(&self) -> PathBuf {
        self.root.join("cache").join("packs")
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

    /// The backup after the stop, as changes to the one uploaded whole.
    pub fn backup_changes(&self, store: &str, upgrade: &str) -> PathBuf {
        self.upgrade(store, upgrade).join("backup-changes.json")
    }

    /// The processed folders of an upgrade's terminals.
    pub fn results(&self, store: &str, upgrade: &str) -> PathBuf {
        self.upgrade(store, upgrade).join("results.json")
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
        SecretKey::parse(&text, self.password.clone()).map_err(|source| Error::Key {
            path: self.path.clone(),
            source,
        })
    }
}
