//! The server's state behind one narrow interface, [`Db`]: callers see
//! releases, signed logs, stores, blob references, upgrades, reports and
//! leases, never SQL. Two implementations pass one test suite
//! (`tests/db.rs`): [`SqliteDb`] (the embedded default, one file) and
//! [`PgDb`] (PostgreSQL, shared by several servers).
//!
//! Methods are synchronous; async callers use `spawn_blocking`, except
//! for [`Db::generation`], which is cheap enough for an async thread.

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use semver::Version;
use std::collections::{BTreeMap, BTreeSet};
use tillup_core::Sha256Hex;
use tillup_core::keys::{KeyChain, SignedKeyList};
use tillup_core::log::Release;
use tillup_core::roles::Role;
use tillup_core::rollout::{Plan, Rollout};

use crate::error::Error;

pub use self::postgres::PgDb;
pub use self::sqlite::SqliteDb;

/// The upgrades (with their backups) kept per store on the server: a
/// store needs its latest; a token holder inventing upgrade ids cannot
/// make the server keep more.
pub const KEEP_UPGRADES: i64 = 8;
/// The reports kept per store, newest first.
pub const KEEP_REPORTS: i64 = 1000;

/// One signed version log as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedLog {
    /// The log's sequence.
    pub sequence: u64,
    /// When it was generated.
    pub generated: Timestamp,
    /// When it expires.
    pub expires: Timestamp,
    /// The exact signed bytes.
    pub bytes: Vec<u8>,
    /// The `.minisig` text.
    pub signature: String,
}

/// A store as `store list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreRow {
    /// The store's id.
    pub id: String,
    /// When it was added.
    pub created: Timestamp,
    /// When it last fetched the log.
    pub last_check: Option<Timestamp>,
    /// When its token was revoked, if it was.
    pub revoked: Option<Timestamp>,
}

/// What a store's token lets it do: the part of the state every request
/// needs, kept in memory by [`crate::access::Access`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreAccess {
    /// The SHA-256 (hex) of the store's token.
    pub token_sha256: String,
    /// The store's id.
    pub store: String,
    /// The channels whose logs it may read, sorted.
    pub channels: Vec<String>,
}

/// A store report as received.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReportRow {
    /// The store that sent it.
    pub store: String,
    /// When it arrived.
    pub received: Timestamp,
    /// The report itself.
    pub report: serde_json::Value,
}

/// A store upgrade the server has seen the backup of.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeRow {
    /// The store.
    pub store: String,
    /// The upgrade's id, as the store named it.
    pub upgrade: String,
    /// When its backup last arrived.
    pub backup_at: Timestamp,
    /// When the server built its terminals' folders, if it did.
    pub processed_at: Option<Timestamp>,
}

/// A person who signs in to the server's pages and admin API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PersonRow {
    /// Their sign-in name.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// Their password's Argon2id hash (a PHC string); never shown.
    #[serde(skip)]
    pub password: String,
    /// When they were added.
    pub created: Timestamp,
    /// When they were disabled, if they were: they cannot sign in.
    pub disabled: Option<Timestamp>,
}

/// A signed-in session, found by the SHA-256 of its cookie's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// Who signed in.
    pub person: String,
    /// Their role now (a role changed since applies at once).
    pub role: Role,
    /// The token every form and unsafe request of the session must carry.
    pub csrf: String,
    /// When the session ends.
    pub expires: Timestamp,
}

/// One action by a person, as the audit trail keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    /// When.
    pub at: Timestamp,
    /// Who (a person's name, or `cli:USER` for the command line).
    pub who: String,
    /// What, in a word: `publish`, `rollout.start`, `store.revoke`, …
    pub action: String,
    /// On what: a release, a store, a person, a rollout.
    pub subject: String,
}

/// A staged rollout of a release, as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RolloutRow {
    /// Its id.
    pub id: String,
    /// The release's channel.
    pub channel: String,
    /// The release.
    pub version: Version,
    /// Its waves.
    pub plan: Plan,
    /// Each wave's stores, fixed at the start.
    pub waves: Vec<BTreeSet<String>>,
    /// Where it is.
    pub state: Rollout,
    /// When it was created.
    pub created: Timestamp,
}

impl ReportRow {
    /// The upgrade the report tells of (`"upgrade"`), if it is an upgrade
    /// report this server can read.
    pub fn upgrade(&self) -> Option<tillup_core::report::HistoryEntry> {
        serde_json::from_value(self.report.get("upgrade")?.clone()).ok()
    }
}

/// The log signer handed to [`Db::append_log`]: gets the next sequence and
/// the channel's releases (sorted by version), returns the log to store.
pub type Signer<'a> = Box<dyn FnOnce(u64, Vec<Release>) -> Result<SignedLog, Error> + 'a>;

/// The server's state. Every method is one transaction.
pub trait Db: Send + Sync + std::fmt::Debug {
    // ---- change detection ---------------------------------------------------

    /// A number that changes whenever a store, its token or channels, or a
    /// signed log changes, in this process or another one sharing the
    /// database. Cheap: called on every request.
    fn generation(&self) -> Result<u64, Error>;

    // ---- releases ------------------------------------------------------------

    /// The release of `version` on `channel`.
    fn release(&self, channel: &str, version: &Version) -> Result<Option<Release>, Error>;

    /// Every release of `channel`, sorted by version.
    fn releases(&self, channel: &str) -> Result<Vec<Release>, Error>;

    /// Records (or replaces) a release and the blobs it makes readable
    /// (its files and its manifest).
    fn put_release(
        &self,
        channel: &str,
        release: &Release,
        blobs: &[Sha256Hex],
    ) -> Result<(), Error>;

    /// Sets which stores the release admits (`None`: every store).
    fn set_release_stores(
        &self,
        channel: &str,
        version: &Version,
        stores: Option<&[String]>,
    ) -> Result<(), Error>;

    // ---- signed logs -----------------------------------------------------------

    /// Appends the next log of `channel`, signed by `sign`. The whole step
    /// is one transaction serialised per channel, so two processes never
    /// sign the same sequence.
    fn append_log(&self, channel: &str, sign: Signer<'_>) -> Result<SignedLog, Error>;

    /// The newest signed log of `channel`.
    fn latest_log(&self, channel: &str) -> Result<Option<SignedLog>, Error>;

    /// The channels that have a signed log.
    fn log_channels(&self) -> Result<Vec<String>, Error>;

    // ---- key lists -------------------------------------------------------------

    /// Keeps a root-signed key list; refused unless newer than every kept one.
    fn add_key_list(
        &self,
        version: u64,
        signed: &SignedKeyList,
        names_next_root: bool,
    ) -> Result<(), Error>;

    /// What a verifier needs to walk from any root it may hold: every list
    /// that names a next root, and the newest, oldest first.
    fn key_chain(&self) -> Result<KeyChain, Error>;

    // ---- stores ----------------------------------------------------------------

    /// Adds a store with the SHA-256 (hex) of its token, reading `stable`.
    fn add_store(&self, id: &str, token_sha256: &str, now: Timestamp) -> Result<(), Error>;

    /// The channels whose logs the store may read.
    fn store_channels(&self, id: &str) -> Result<Vec<String>, Error>;

    /// Assigns the store exactly `channels` (at least one).
    fn set_store_channels(&self, id: &str, channels: &[String]) -> Result<(), Error>;

    /// Every store's labels (region, tags: whatever IT names them
    /// by), which rollouts filter on; a store without any is absent.
    fn store_labels(&self) -> Result<BTreeMap<String, BTreeSet<String>>, Error>;

    /// Gives the store exactly `labels`.
    fn set_store_labels(&self, id: &str, labels: &BTreeSet<String>) -> Result<(), Error>;

    /// The store whose (unrevoked) token hashes to `token_sha256`.
    fn store_by_token(&self, token_sha256: &str) -> Result<Option<String>, Error>;

    /// Every unrevoked store's token digest and channels.
    fn store_access(&self) -> Result<Vec<StoreAccess>, Error>;

    /// Whether the store exists.
    fn store_exists(&self, id: &str) -> Result<bool, Error>;

    /// Every store, by id.
    fn stores(&self) -> Result<Vec<StoreRow>, Error>;

    /// Refuses the store's token from now on; its backups and reports stay.
    fn revoke_store(&self, id: &str, now: Timestamp) -> Result<(), Error>;

    /// Gives the store the token hashing to `token_sha256` in place of its
    /// own, and lifts a revocation.
    fn replace_store_token(&self, id: &str, token_sha256: &str) -> Result<(), Error>;

    /// Records when stores last fetched their log, in one transaction; an
    /// older time never replaces a newer one.
    fn record_checks(&self, checks: &[(String, Timestamp)]) -> Result<(), Error>;

    // ---- blob references ---------------------------------------------------------

    /// Of `hashes`, those the store may not read: referenced neither by a
    /// release nor by the store itself. In order, each once.
    fn unreadable(&self, store: &str, hashes: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, Error>;

    /// Makes blobs readable by the store.
    fn add_store_blobs(&self, store: &str, hashes: &[Sha256Hex]) -> Result<(), Error>;

    /// The bytes of files the store has uploaded in all.
    fn uploaded_bytes(&self, store: &str) -> Result<u64, Error>;

    /// Counts `bytes` more uploaded by the store.
    fn add_uploaded_bytes(&self, store: &str, bytes: u64) -> Result<(), Error>;

    // ---- upgrades and reports ------------------------------------------------------

    /// Records that a backup arrived for an upgrade (again). Returns the
    /// store's upgrades beyond its newest [`KEEP_UPGRADES`], forgotten: the
    /// caller removes their folders.
    fn record_backup(
        &self,
        store: &str,
        upgrade: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, Error>;

    /// Records that an upgrade was processed.
    fn record_processed(&self, store: &str, upgrade: &str, now: Timestamp) -> Result<(), Error>;

    /// Stores a report. A report naming its upgrade (`"upgrade": {"id": "…"}`)
    /// replaces the store's earlier report of that upgrade, so a report
    /// sent again (a retry) is kept once; other reports are added. Only the
    /// newest [`KEEP_REPORTS`] are kept.
    fn add_report(
        &self,
        store: &str,
        now: Timestamp,
        report: &serde_json::Value,
    ) -> Result<(), Error>;

    /// The store's reports, oldest first.
    fn reports(&self, store: &str) -> Result<Vec<ReportRow>, Error>;

    /// Every store's upgrades whose backup arrived at `since` or later and
    /// whose report has not: running now, or cut off. Newest first.
    fn unreported_upgrades(&self, since: Timestamp) -> Result<Vec<UpgradeRow>, Error>;

    // ---- people, sessions and the audit trail -------------------------------

    /// Adds a person; refused if the name is taken.
    fn add_person(&self, person: &PersonRow) -> Result<(), Error>;

    /// The person named `name`.
    fn person(&self, name: &str) -> Result<Option<PersonRow>, Error>;

    /// Every person, by name.
    fn people(&self) -> Result<Vec<PersonRow>, Error>;

    /// Disables a person (they cannot sign in again) and ends their
    /// sessions.
    fn disable_person(&self, name: &str, now: Timestamp) -> Result<(), Error>;

    /// Records a session under the SHA-256 (hex) of its token, and forgets
    /// sessions that ended before `now`.
    fn add_session(
        &self,
        token_sha256: &str,
        session: &SessionRow,
        now: Timestamp,
    ) -> Result<(), Error>;

    /// The session whose token hashes to `token_sha256`, if it has not
    /// ended by `now` and its person is not disabled.
    fn session(&self, token_sha256: &str, now: Timestamp) -> Result<Option<SessionRow>, Error>;

    /// Ends a session (signing out). Safe to repeat.
    fn end_session(&self, token_sha256: &str) -> Result<(), Error>;

    /// Adds an entry to the audit trail.
    fn record_audit(&self, entry: &AuditRow) -> Result<(), Error>;

    /// The newest `limit` entries of the audit trail, newest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditRow>, Error>;

    // ---- rollouts ------------------------------------------------------------

    /// Adds a rollout.
    fn add_rollout(&self, rollout: &RolloutRow) -> Result<(), Error>;

    /// The rollout `id`.
    fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, Error>;

    /// Every rollout, newest first.
    fn rollouts(&self) -> Result<Vec<RolloutRow>, Error>;

    /// Replaces rollout `id`'s state, if it is still `was` (another
    /// server may have moved it since it was read): returns whether it did.
    fn save_rollout(&self, id: &str, was: &Rollout, now: &Rollout) -> Result<bool, Error>;

    // ---- leases --------------------------------------------------------------------

    /// Takes (or renews) the lease `name` for `holder` until `now + ttl`,
    /// unless another holder has it unexpired. Jobs that must run on one
    /// server at a time (re-signing logs) run only while holding theirs.
    fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, Error>;
}

/// A stored value as JSON text (one form, so a stored state compares
/// equal to the same state serialised again).
fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Corrupt(format!("serialising: {e}")))
}

/// Where the state lives: the `--database` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (the default: `DATA/tillup.db`).
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`postgres://user@host/db` or
    /// `host=/run/postgresql dbname=tillup`).
    Postgres(String),
}

impl Location {
    /// Reads `--database`: a `postgres://` or `postgresql://` URL, else a
    /// SQLite file path (`sqlite://` optional).
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::Postgres(s.to_owned())
        } else {
            Self::Sqlite(PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s)))
        }
    }

    /// Opens (creating or migrating) the database.
    pub fn open(&self) -> Result<Box<dyn Db>, Error> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(SqliteDb::open(path)?),
            Self::Postgres(url) => Box::new(PgDb::connect(url)?),
        })
    }
}

impl std::fmt::Display for Location {
    /// Names the database without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_option_is_a_postgres_url_or_a_sqlite_path() {
        assert_eq!(
            Location::parse("postgres://u:secret@db/tillup"),
            Location::Postgres("postgres://u:secret@db/tillup".into())
        );
        assert_eq!(
            Location::parse("sqlite:///var/lib/tillup.db"),
            Location::Sqlite("/var/lib/tillup.db".into())
        );
        assert_eq!(
            Location::parse("data/tillup.db"),
            Location::Sqlite("data/tillup.db".into())
        );
        let shown = Location::parse("postgres://u:secret@db/tillup").to_string();
        assert!(!shown.contains("secret"), "{shown}");
    }
}
