//! The server's operations outside HTTP: keys, publishing, signing, stores.
//! The binary's subcommands are one call each.

use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use rand::RngCore;
use semver::Version;
use sha2::{Digest, Sha256};
use tillup_core::Sha256Hex;
use tillup_core::log::{Notes, Release, VersionLog};
use tillup_core::manifest::Preserve;
use tillup_fs::{BlobStore, HashCache, ZipLimits};

use crate::data::{DataDir, KeySource};
use crate::db::{Db, SignedLog};
use crate::error::{Error, check_id};
use crate::storage::Storage;

/// How long a log stays valid when nothing else was chosen: a server
/// (or a mirror) frozen on an old log is noticed by every store within a
/// week. `serve` re-signs a log when half of it is gone.
pub const DEFAULT_VALIDITY_DAYS: i64 = 7;
/// The longest validity a log is signed with: how long a stolen copy of
/// the newest log can be replayed to hold stores on it.
pub const MAX_VALIDITY_DAYS: i64 = 14;

/// The public key `keygen` made.
#[derive(Clone, Debug)]
pub struct KeygenOutput {
    /// The `RW…` line, as the listener's config takes it.
    pub public_line: String,
    /// Where the secret key was written.
    pub secret_path: PathBuf,
    /// Where the public key was written.
    pub public_path: PathBuf,
}

/// Makes an unprotected minisign key pair in `DIR/keys/`; refuses to
/// overwrite one unless `force`.
pub fn keygen(data: &DataDir, force: bool) -> Result<KeygenOutput, Error> {
    write_key_pair(data.secret_key(), data.public_key(), force)
}

/// Makes an unprotected key pair at `secret_path` (0600) and `public_path`.
pub(crate) fn write_key_pair(
    secret_path: PathBuf,
    public_path: PathBuf,
    force: bool,
) -> Result<KeygenOutput, Error> {
    if !force {
        for p in [&secret_path, &public_path] {
            if p.exists() {
                return Err(Error::KeysExist(p.clone()));
            }
        }
    }
    let keys = tillup_core::sign::generate_keys().map_err(|source| Error::Key {
        path: secret_path.clone(),
        source,
    })?;
    // write_atomic creates its file with mode 0600 (tempfile's default).
    tillup_fs::write_atomic(&secret_path, keys.secret_file.as_bytes())?;
    set_mode(&secret_path, 0o600)?;
    tillup_fs::write_atomic(&public_path, keys.public_file.as_bytes())?;
    set_mode(&public_path, 0o644)?;
    Ok(KeygenOutput {
        public_line: keys.public_line,
        secret_path,
        public_path,
    })
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), Error> {
    Ok(())
}

/// What `publish` is asked to record.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// The release's program folder, or a `.zip` of its content (entries
    /// are paths inside the program folder).
    pub folder: PathBuf,
    /// Its version.
    pub version: Version,
    /// Its channel.
    pub channel: String,
    /// Its release date.
    pub date: Timestamp,
    /// Its notes.
    pub notes: Notes,
    /// Whether it is critical.
    pub critical: bool,
    /// The oldest version it upgrades from.
    pub min_from: Option<Version>,
    /// Terminal models it supports (empty: all).
    pub models: Vec<String>,
    /// Globs of terminal-local files an upgrade keeps.
    pub preserve: Vec<String>,
    /// Replace a release of the same version.
    pub replace: bool,
    /// The only stores admitted to install it (a staged rollout's first
    /// wave); none: every store of the channel. See [`admit`].
    pub stores: Option<Vec<String>>,
}

/// What `publish` did.
#[derive(Clone, Debug)]
pub struct Published {
    /// The release as listed in the log.
    pub release: Release,
    /// How many files it has.
    pub files: usize,
    /// Whether it replaced a release of the same version.
    pub replaced: bool,
    /// The log signed afterwards.
    pub sequence: u64,
}

/// Scans the folder (or a zip, extracted within [`ZipLimits`] into a
/// temporary folder beside the blob store and removed afterwards), refuses
/// paths that differ only in case, stores its files and manifest as blobs,
/// records the release and re-signs the channel's log. Nothing is stored
/// before every check passed. The new log keeps the validity
/// of the channel's previous log (30 days for the first one).
pub fn publish(
    db: &dyn Db,
    storage: &Storage,
    key: &KeySource,
    req: PublishRequest,
) -> Result<Published, Error> {
    check_id("channel", &req.channel)?;
    Preserve::new(&req.preserve)?;
    if let Some(m) = &req.min_from
        && *m >= req.version
    {
        return Err(Error::MinFromNotOlder {
            min_from: m.clone(),
            version: req.version.clone(),
        });
    }
    let existing = db.release(&req.channel, &req.version)?;
    if existing.is_some() && !req.replace {
        return Err(Error::VersionExists {
            version: req.version,
            channel: req.channel,
        });
    }
    // Fail on a bad key before storing anything.
    key.load()?;

    let blobs = storage.local();
    let source = ReleaseSource::open(&req.folder, blobs)?;
    let folder = source.folder();
    let manifest = tillup_fs::scan_folder(&folder, &mut HashCache::default())?;
    if manifest.is_empty() {
        return Err(Error::EmptyFolder(req.folder));
    }
    if req.channel == tillup_core::selfupdate::SELF_CHANNEL {
        let programs = tillup_core::selfupdate::Program::ALL.map(|p| p.file_name());
        if let Some(f) = manifest
            .files()
            .iter()
            .find(|f| !programs.iter().any(|p| p == f.path.as_str()))
        {
            return Err(Error::NotTillup {
                path: req.folder,
                file: f.path.to_string(),
                expected: programs.join(", "),
                channel: req.channel,
            });
        }
    }
    manifest
        .check_case_collisions()
        .map_err(|collision| Error::CaseCollision {
            path: req.folder.clone(),
            collision,
        })?;
    for f in manifest.files() {
        blobs.put_file(&tillup_fs::join(&folder, &f.path), &f.sha256)?;
    }
    drop(folder);
    drop(source);
    let digest = blobs.put_bytes(&manifest.to_bytes())?;
    debug_assert_eq!(digest, manifest.digest());
    let release = Release {
        version: req.version,
        date: req.date,
        size: manifest.total_size(),
        sha256: digest,
        notes: req.notes,
        critical: req.critical,
        min_from: req.min_from,
        models: req.models,
        preserve: req.preserve,
        stores: req.stores.map(admitted).transpose()?,
    };
    let mut refs: Vec<Sha256Hex> = manifest.hashes().into_iter().collect();
    refs.push(digest);
    // Shared before recorded: a recorded blob is readable from every server.
    storage.share(&refs)?;
    db.put_release(&req.channel, &release, &refs)?;
    let validity = db
        .latest_log(&req.channel)?
        .map(|l| l.expires.duration_since(l.generated));
    let log = sign_log(
        db,
        key,
        &req.channel,
        validity.unwrap_or(days(DEFAULT_VALIDITY_DAYS)),
        Timestamp::now(),
    )?;
    Ok(Published {
        release,
        files: manifest.len(),
        replaced: existing.is_some(),
        sequence: log.sequence,
    })
}

/// What `publish` reads the release from: the folder itself, or a zip
/// extracted into a temporary folder that is removed when this is dropped.
enum ReleaseSource<'a> {
    Folder(&'a Path),
    Zip(tempfile::TempDir),
}

impl<'a> ReleaseSource<'a> {
    fn open(path: &'a Path, blobs: &BlobStore) -> Result<Self, Error> {
        let md = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        if md.is_dir() {
            return Ok(Self::Folder(path));
        }
        if !md.is_file() {
            return Err(Error::NotAFolderOrZip(path.to_owned()));
        }
        // Beside the blob store, on the same disk; not inside it, where a
        // folder would look like one of its fan-out folders.
        let work = blobs
            .root()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        remove_stale_extractions(work, STALE_EXTRACTION);
        let tmp = tempfile::Builder::new()
            .prefix(EXTRACTION_PREFIX)
            .tempdir_in(work)
            .map_err(|source| Error::Io {
                path: work.to_owned(),
                source,
            })?;
        tillup_fs::extract_zip_file(path, &tmp.path().join("release"), &ZipLimits::default())
            .map_err(|reason| Error::Archive {
                path: path.to_owned(),
                reason: Box::new(reason),
            })?;
        Ok(Self::Zip(tmp))
    }

    fn folder(&self) -> std::borrow::Cow<'_, Path> {
        match self {
            Self::Folder(p) => std::borrow::Cow::Borrowed(p),
            Self::Zip(tmp) => std::borrow::Cow::Owned(tmp.path().join("release")),
        }
    }
}

/// Sets which stores release `version` of `channel` admits (none: every
/// store) and signs the channel's next log, valid for `validity`: stores
/// act on it at their next check. Admitting more stores is how a staged
/// rollout advances; admitting none is how it stops.
pub fn admit(
    db: &dyn Db,
    key: &KeySource,
    channel: &str,
    version: &Version,
    stores: Option<Vec<String>>,
    validity: SignedDuration,
    now: Timestamp,
) -> Result<SignedLog, Error> {
    check_id("channel", channel)?;
    // Fail on a bad key before changing anything.
    key.load()?;
    let stores = stores.map(admitted).transpose()?;
    db.set_release_stores(channel, version, stores.as_deref())?;
    sign_log(db, key, channel, validity, now)
}

/// A list of admitted stores: valid ids, sorted, each once.
fn admitted(mut stores: Vec<String>) -> Result<Vec<String>, Error> {
    for s in &stores {
        check_id("store", s)?;
    }
    stores.sort();
    stores.dedup();
    Ok(stores)
}

/// The name prefix of `publish`'s temporary extraction folders.
const EXTRACTION_PREFIX: &str = ".tillup-publish-";

/// An extraction folder this old was left by a publish that was killed (a
/// refused or finished one removes its own): the next publish removes it.
const STALE_EXTRACTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the extraction folders in `work` older than `age`, as best it
/// can: a leftover only wastes space, so a failure here stops nothing.
fn remove_stale_extractions(work: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .file_name()
            .to_string_lossy()
            .starts_with(EXTRACTION_PREFIX)
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|d| d > age));
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `n` days.
pub fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

/// The trusted comment of a log's signature.
pub fn trusted_comment(channel: &str, sequence: u64) -> String {
    format!("tillup log channel={channel} sequence={sequence}")
}

/// Signs the channel's releases as the next log, valid for `validity`.
pub fn sign_log(
    db: &dyn Db,
    key: &KeySource,
    channel: &str,
    validity: SignedDuration,
    now: Timestamp,
) -> Result<SignedLog, Error> {
    check_id("channel", channel)?;
    let sk = key.load()?;
    let validity = validity.max(SignedDuration::from_mins(1));
    db.append_log(
        channel,
        Box::new(|sequence, releases| {
            if releases.is_empty() {
                return Err(Error::NothingPublished(channel.to_owned()));
            }
            let expires = now
                .checked_add(validity)
                .map_err(|e| Error::Corrupt(format!("log expiry: {e}")))?;
            let log = VersionLog {
                channel: channel.to_owned(),
                sequence,
                generated: now,
                expires,
                releases,
            };
            let bytes = log.to_bytes();
            let signature = sk
                .sign(&bytes, &trusted_comment(channel, sequence))
                .map_err(|source| Error::Key {
                    path: key.path.clone(),
                    source,
                })?;
            Ok(SignedLog {
                sequence,
                generated: now,
                expires,
                bytes,
                signature,
            })
        }),
    )
}

/// Re-signs every channel whose newest log has less than half its validity
/// left (keeping the same validity); returns the channels re-signed.
pub fn resign_due(
    db: &dyn Db,
    key: &KeySource,
    now: Timestamp,
) -> Result<Vec<(String, u64)>, Error> {
    let mut done = Vec::new();
    for channel in db.log_channels()? {
        let Some(log) = db.latest_log(&channel)? else {
            continue;
        };
        let validity = log
            .expires
            .duration_since(log.generated)
            .min(days(MAX_VALIDITY_DAYS));
        let half = log
            .generated
            .checked_add(validity / 2)
            .unwrap_or(log.generated);
        if now >= half {
            let signed = sign_log(db, key, &channel, validity, now)?;
            done.push((channel, signed.sequence));
        }
    }
    Ok(done)
}

/// The SHA-256 (hex) under which a token is stored.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Adds a store; returns its new token (shown once, only its hash is kept).
pub fn add_store(db: &dyn Db, id: &str, now: Timestamp) -> Result<String, Error> {
    check_id("store", id)?;
    let token = new_token();
    db.add_store(id, &token_digest(&token), now)?;
    Ok(token)
}

/// Gives a store a new token, returned (and shown once): the old one is
/// refused from now on, and a revoked store is let in again.
pub fn rotate_store_token(db: &dyn Db, id: &str) -> Result<String, Error> {
    check_id("store", id)?;
    let token = new_token();
    db.replace_store_token(id, &token_digest(&token))?;
    Ok(token)
}

/// Lets a store read exactly `channels`' logs.
pub fn set_store_channels(db: &dyn Db, id: &str, channels: &[String]) -> Result<(), Error> {
    check_id("store", id)?;
    for c in channels {
        check_id("channel", c)?;
    }
    if channels.is_empty() {
        return Err(Error::NoChannel(id.to_owned()));
    }
    db.set_store_channels(id, channels)
}

/// Gives a store exactly `labels` (each a word of `A-Z a-z 0-9 . _ - =`).
pub fn set_store_labels(db: &dyn Db, id: &str, labels: &[String]) -> Result<(), Error> {
    check_id("store", id)?;
    if labels.len() > MAX_LABELS {
        return Err(Error::TooManyLabels {
            store: id.to_owned(),
            count: labels.len(),
        });
    }
    for l in labels {
        check_label(l)?;
    }
    db.set_store_labels(id, &labels.iter().cloned().collect())
}

/// The most labels a store carries.
pub const MAX_LABELS: usize = 32;

/// A label: like an id, and `=` between a name and its value.
fn check_label(label: &str) -> Result<(), Error> {
    match label.split_once('=') {
        Some((name, value)) => {
            check_id("label", name)?;
            check_id("label", value)
        }
        None => check_id("label", label),
    }
}

/// Refuses a store's token from now on (its next request gets 401); its
/// backups and reports stay. [`rotate_store_token`] lets it in again.
pub fn revoke_store(db: &dyn Db, id: &str, now: Timestamp) -> Result<(), Error> {
    check_id("store", id)?;
    db.revoke_store(id, now)
}

/// A new secret token: 32 random bytes, in hex.
pub fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::SqliteDb;

    fn setup() -> (tempfile::TempDir, DataDir, SqliteDb, Storage, KeySource) {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let db = SqliteDb::open(&data.db()).unwrap();
        let blobs = Storage::open(&data, &crate::storage::BlobsLocation::Local).unwrap();
        keygen(&data, false).unwrap();
        let key = KeySource {
            path: data.secret_key(),
            password: None,
        };
        (dir, data, db, blobs, key)
    }

    fn req(folder: &Path, v: &str) -> PublishRequest {
        PublishRequest {
            folder: folder.to_owned(),
            version: v.parse().unwrap(),
            channel: "stable".into(),
            date: "2026-11-01T00:00:00Z".parse().unwrap(),
            notes: Notes::default(),
            critical: false,
            min_from: None,
            models: vec![],
            preserve: vec!["config/**".into()],
            replace: false,
            stores: None,
        }
    }

    #[test]
    fn keygen_refuses_to_overwrite_without_force() {
        let (_d, data, ..) = setup();
        let err = keygen(&data, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        keygen(&data, true).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.secret_key())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn resign_only_when_half_the_validity_is_gone() {
        let (d, _data, db, blobs, key) = setup();
        let folder = d.path().join("rel");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("pos"), "x").unwrap();
        let p = publish(&db, &blobs, &key, req(&folder, "1.0.0")).unwrap();
        assert_eq!(p.sequence, 1);
        let log = db.latest_log("stable").unwrap().unwrap();
        assert!(
            resign_due(&db, &key, log.generated + days(3))
                .unwrap()
                .is_empty()
        );
        let done = resign_due(&db, &key, log.generated + days(4)).unwrap();
        assert_eq!(done, vec![("stable".to_owned(), 2)]);
        let again = db.latest_log("stable").unwrap().unwrap();
        assert_eq!(
            again.expires.duration_since(again.generated),
            days(DEFAULT_VALIDITY_DAYS)
        );
    }

    #[test]
    fn publish_refuses_bad_input_with_clear_messages() {
        let (d, _data, db, blobs, key) = setup();
        let folder = d.path().join("rel");
        std::fs::create_dir(&folder).unwrap();
        let err = publish(&db, &blobs, &key, req(&folder, "1.0.0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no file"), "{err}");
        std::fs::write(folder.join("pos"), "x").unwrap();
        let mut bad = req(&folder, "1.0.0");
        bad.preserve = vec!["a/[".into()];
        let err = publish(&db, &blobs, &key, bad).unwrap_err().to_string();
        assert!(err.contains("a/["), "{err}");
        let mut bad = req(&folder, "1.0.0");
        bad.min_from = Some("1.0.0".parse().unwrap());
        let err = publish(&db, &blobs, &key, bad).unwrap_err().to_string();
        assert!(err.contains("--min-from"), "{err}");
        publish(&db, &blobs, &key, req(&folder, "1.0.0")).unwrap();
        let err = publish(&db, &blobs, &key, req(&folder, "1.0.0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already published") && err.contains("--replace"),
            "{err}"
        );
        let mut again = req(&folder, "1.0.0");
        again.replace = true;
        let p = publish(&db, &blobs, &key, again).unwrap();
        assert!(p.replaced);
        assert_eq!(p.sequence, 2);
        // tillup's own channel, which every store reads, holds tillup only.
        let mut pos_on_tillup = req(&folder, "0.2.0");
        pos_on_tillup.channel = tillup_core::selfupdate::SELF_CHANNEL.into();
        let err = publish(&db, &blobs, &key, pos_on_tillup)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`pos` is not one of tillup's programs") && err.contains("own channel"),
            "{err}"
        );
    }

    #[test]
    fn stale_extractions_are_removed_and_fresh_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join(".tillup-publish-old");
        let fresh = d.path().join(".tillup-publish-fresh");
        let other = d.path().join("blobs");
        for p in [&old, &fresh, &other] {
            std::fs::create_dir_all(p.join("release/bin")).unwrap();
        }
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
        for p in [&old, &other] {
            std::fs::File::open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        remove_stale_extractions(d.path(), STALE_EXTRACTION);
        assert!(!old.exists());
        assert!(fresh.exists() && other.exists());
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (_d, _data, db, ..) = setup();
        let now = Timestamp::now();
        let t = add_store(&db, "s1", now).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(
            db.store_by_token(&token_digest(&t)).unwrap().as_deref(),
            Some("s1")
        );
        assert_eq!(db.store_by_token(&t).unwrap(), None);
        assert!(matches!(
            add_store(&db, "s1", now),
            Err(Error::StoreExists(_))
        ));
        assert!(matches!(
            add_store(&db, "../x", now),
            Err(Error::BadId { .. })
        ));
    }
}
