//! The library's error: what an operation of the server (CLI or HTTP) can
//! fail with. The HTTP layer turns it into [`crate::http::AppError`].

use std::path::PathBuf;

use semver::Version;

/// Why a server operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SQLite database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL database failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    /// `--database` is not a connection string PostgreSQL accepts.
    #[error("--database {url}: {reason}; write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE")]
    DatabaseUrl {
        /// The connection string, without its password.
        url: String,
        /// What the driver said.
        reason: String,
    },
    /// `--blobs` is not an object store URL tillup understands.
    #[error(
        "--blobs {url}: {reason}; write it as s3://BUCKET/PREFIX, with the endpoint and keys in AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    BlobsUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The shared object store failed.
    #[error("object store {url}: cannot {what}: {reason}")]
    ObjectStore {
        /// The store's URL.
        url: String,
        /// What was being done.
        what: String,
        /// What it said.
        reason: String,
    },
    /// No connection to PostgreSQL could be had.
    #[error(
        "cannot reach the database {url}: {reason}; check that PostgreSQL runs and accepts this user"
    )]
    DatabaseUnavailable {
        /// The connection string, without its password.
        url: String,
        /// What the driver said.
        reason: String,
    },
    /// A file or blob operation failed.
    #[error(transparent)]
    Fs(#[from] tillup_fs::Error),
    /// A pack could not be made (a blob it names cannot be read).
    #[error("making a pack: {source}")]
    Pack {
        /// What went wrong.
        source: tillup_transfer::PackError,
    },
    /// A file outside the blob store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The signing key could not be used.
    #[error("signing key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it could not be used.
        source: tillup_core::sign::KeyError,
    },
    /// The signing key file could not be read.
    #[error(
        "cannot read the signing key {path}: {source}; make one with `tillup-server keygen` or pass --key FILE"
    )]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `keygen` would overwrite a key.
    #[error(
        "{0} already exists; pass --force to replace it (every store's listener will then need the new public key)"
    )]
    KeysExist(PathBuf),
    /// `publish` of a version already published, without `--replace`.
    #[error(
        "release {version} is already published on channel `{channel}`; pass --replace to republish it (listeners that installed it will report it as republished)"
    )]
    VersionExists {
        /// The version.
        version: Version,
        /// The channel.
        channel: String,
    },
    /// A `--preserve` glob does not parse.
    #[error(transparent)]
    BadPreserve(#[from] tillup_core::manifest::BadPattern),
    /// `--min-from` is not older than `--version`.
    #[error(
        "--min-from {min_from} must be older than --version {version}: a release can only be installed over an older one"
    )]
    MinFromNotOlder {
        /// The oldest version it upgrades from.
        min_from: Version,
        /// The version published.
        version: Version,
    },
    /// A store, channel or upgrade id has characters outside the safe set.
    #[error("{what} `{value}` is not valid: use 1 to 64 characters among A-Z a-z 0-9 . _ -")]
    BadId {
        /// What kind of id.
        what: &'static str,
        /// The id as given (truncated).
        value: String,
    },
    /// The release archive was refused (a bad entry, a bound passed).
    // `reason`, not `source`: the message already holds it, and a binary
    // printing the chain with `{:#}` would say it twice.
    #[error("release archive {path}: {reason}")]
    Archive {
        /// The `.zip` given to `publish`.
        path: PathBuf,
        /// Why it was refused.
        reason: Box<tillup_fs::ArchiveError>,
    },
    /// Two paths of the release would be one on a case-insensitive disk.
    #[error(
        "release {path}: {collision}; terminals may run Windows, so rename one of them and publish again"
    )]
    CaseCollision {
        /// The folder or archive given to `publish`.
        path: PathBuf,
        /// The two paths.
        collision: tillup_core::manifest::ManifestError,
    },
    /// `publish` was given something that is neither a folder nor a file.
    #[error(
        "{0} is neither a folder nor a .zip file; point publish at the release's program folder or its .zip"
    )]
    NotAFolderOrZip(PathBuf),
    /// The release folder has no file.
    #[error("{0}: the folder holds no file; point publish at the release's program folder")]
    EmptyFolder(PathBuf),
    /// A release on tillup's own channel holding something else than
    /// tillup's programs (every store reads that channel).
    #[error(
        "{path}: `{file}` is not one of tillup's programs ({expected}); the channel `{channel}` is for tillup's own releases, which every store reads: publish the POS program on its own channel"
    )]
    NotTillup {
        /// The release folder.
        path: PathBuf,
        /// The file that is not one of tillup's programs.
        file: String,
        /// tillup's programs' file names.
        expected: String,
        /// tillup's channel.
        channel: String,
    },
    /// `store add` of an id that exists.
    #[error("store `{0}` already exists")]
    StoreExists(String),
    /// A store id that is not registered.
    #[error("store `{0}` does not exist; add it with `tillup-server store add {0}`")]
    UnknownStore(String),
    /// `keys import` of a list not newer than the newest kept.
    #[error(
        "key list {version} is not newer than key list {newest} already imported: sign it with a higher --version"
    )]
    KeyListNotNewer {
        /// The list's version.
        version: u64,
        /// The newest version kept.
        newest: u64,
    },
    /// A key list that is not one.
    #[error(
        "{path}: not a signed key list ({reason}); give the file `tillup-server sign-keys` wrote"
    )]
    BadKeyList {
        /// The file given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// More labels than a store carries.
    #[error(
        "{count} labels for store `{store}`: at most {max}; one label can carry a value (region=north)",
        max = crate::ops::MAX_LABELS
    )]
    TooManyLabels {
        /// The store.
        store: String,
        /// How many labels were given.
        count: usize,
    },
    /// A store was left without a channel to read.
    #[error("store `{0}` must read at least one channel (e.g. stable)")]
    NoChannel(String),
    /// `sign-log` on a channel with no release.
    #[error("nothing is published on channel `{0}` yet; run `tillup-server publish` first")]
    NothingPublished(String),
    /// `export` of a release the channel's newest log does not list.
    #[error(
        "release {version} is not in the newest log of channel `{channel}`; `tillup-server publish` it there first"
    )]
    NotInLog {
        /// The channel asked for.
        channel: String,
        /// The release asked for.
        version: semver::Version,
    },
    /// A stored record no longer parses (the data folder was altered).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A release that is not published on the channel.
    #[error(
        "release {version} is not published on channel `{channel}`; `tillup-server publish` it first"
    )]
    UnknownRelease {
        /// The channel.
        channel: String,
        /// The version.
        version: Version,
    },
    /// A rollout id that is not one.
    #[error("there is no rollout `{0}`; `tillup-server rollout list` shows them")]
    UnknownRollout(String),
    /// A rollout refused what was asked (its rules, or its state).
    #[error("{0}")]
    Rollout(String),
    /// `user add` of a name that is taken.
    #[error("`{0}` already exists; choose another name, or disable the old one first")]
    PersonExists(String),
    /// A person's name that is not registered.
    #[error("there is no person `{0}`; add them with `tillup-server user add {0} --role ROLE`")]
    UnknownPerson(String),
    /// A password too weak to keep.
    #[error("the password {0}; choose a longer one (a passphrase of several words is easiest)")]
    WeakPassword(String),
    /// A sign-in with an unknown name, a wrong password or a disabled
    /// person: the same answer for each, so nobody learns which names exist.
    #[error("the name or the password is wrong, or this person is disabled")]
    SignInRefused,
}

/// Checks an id that becomes part of a path or a key: store, channel, upgrade.
pub fn check_id(what: &'static str, value: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value != "."
        && value != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::BadId {
            what,
            value: value.chars().take(80).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_path_components() {
        for ok in ["store-1", "A.b_c", "stable"] {
            check_id("store", ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(check_id("store", bad).is_err(), "{bad:?}");
        }
    }
}
