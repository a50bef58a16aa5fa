//! The server's state in SQLite, behind a narrow interface so that another
//! database (PostgreSQL) can replace it: callers see releases, signed logs,
//! stores, blob references, upgrades and reports, never SQL.
//!
//! Methods are synchronous; async callers use `spawn_blocking`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::log::Release;

use crate::error::Error;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS releases (
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (channel, version)
);
CREATE TABLE IF NOT EXISTS release_blobs (
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (channel, version, sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS release_blobs_by_hash ON release_blobs (sha256);
CREATE TABLE IF NOT EXISTS logs (
    channel TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    generated TEXT NOT NULL,
    expires TEXT NOT NULL,
    bytes BLOB NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (channel, sequence)
);
CREATE TABLE IF NOT EXISTS stores (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    last_check TEXT,
    revoked TEXT,
    uploaded_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS key_lists (
    version INTEGER PRIMARY KEY,
    list TEXT NOT NULL,
    signature TEXT NOT NULL,
    next_root INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS store_channels (
    store TEXT NOT NULL,
    channel TEXT NOT NULL,
    PRIMARY KEY (store, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_blobs (
    store TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (store, sha256)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upgrades (
    store TEXT NOT NULL,
    upgrade TEXT NOT NULL,
    backup_at TEXT NOT NULL,
    processed_at TEXT,
    PRIMARY KEY (store, upgrade)
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,
    upgrade TEXT,
    received TEXT NOT NULL,
    body TEXT NOT NULL
);
";

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

/// The database: one connection, serialised by a mutex.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

fn ts(s: String) -> Result<Timestamp, Error> {
    s.parse()
        .map_err(|e| corrupt(format!("timestamp `{s}`: {e}")))
}

impl Db {
    /// Opens (creating) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tillup_fs::private_dir(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a
        // power cut, and a signed log sequence already served could then be
        // signed again with other content, which listeners refuse as forked.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // write is a transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- releases ------------------------------------------------------

    /// The release of `version` on `channel`.
    pub fn release(&self, channel: &str, version: &Version) -> Result<Option<Release>, Error> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT json FROM releases WHERE channel = ?1 AND version = ?2",
                params![channel, version.to_string()],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| serde_json::from_str(&j).map_err(corrupt))
            .transpose()
    }

    /// Every release of `channel`, sorted by version.
    pub fn releases(&self, channel: &str) -> Result<Vec<Release>, Error> {
        releases_of(&self.conn(), channel)
    }

    /// Records (or replaces) a release and the blobs it makes readable
    /// (its files and its manifest).
    pub fn put_release(
        &self,
        channel: &str,
        release: &Release,
        blobs: &[Sha256Hex],
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = release.version.to_string();
        let json = serde_json::to_string(release).map_err(corrupt)?;
        tx.execute(
            "INSERT INTO releases (channel, version, json) VALUES (?1, ?2, ?3)
             ON CONFLICT (channel, version) DO UPDATE SET json = excluded.json",
            params![channel, version, json],
        )?;
        tx.execute(
            "DELETE FROM release_blobs WHERE channel = ?1 AND version = ?2",
            params![channel, version],
        )?;
        {
            let mut ins = tx.prepare(
                "INSERT OR IGNORE INTO release_blobs (channel, version, sha256) VALUES (?1, ?2, ?3)",
            )?;
            for h in blobs {
                ins.execute(params![channel, version, h.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- signed logs -----------------------------------------------------

    /// Appends the next log of `channel`: `sign` gets the next sequence and
    /// the channel's releases (sorted by version) and returns the log to
    /// store. The whole step is one write transaction, so two processes
    /// never sign the same sequence.
    pub fn append_log<E: From<Error>>(
        &self,
        channel: &str,
        sign: impl FnOnce(u64, Vec<Release>) -> Result<SignedLog, E>,
    ) -> Result<SignedLog, E> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(Error::from)?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT MAX(sequence) FROM logs WHERE channel = ?1",
                [channel],
                |r| r.get(0),
            )
            .map_err(Error::from)?;
        let next = last.map_or(1, |s| s as u64 + 1);
        let releases = releases_of(&tx, channel)?;
        let log = sign(next, releases)?;
        tx.execute(
            "INSERT INTO logs (channel, sequence, generated, expires, bytes, signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                channel,
                log.sequence as i64,
                log.generated.to_string(),
                log.expires.to_string(),
                log.bytes,
                log.signature
            ],
        )
        .map_err(Error::from)?;
        tx.commit().map_err(Error::from)?;
        Ok(log)
    }

    /// The newest signed log of `channel`.
    pub fn latest_log(&self, channel: &str) -> Result<Option<SignedLog>, Error> {
        let row = self
            .conn()
            .query_row(
                "SELECT sequence, generated, expires, bytes, signature FROM logs
                 WHERE channel = ?1 ORDER BY sequence DESC LIMIT 1",
                [channel],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(sequence, generated, expires, bytes, signature)| {
            Ok(SignedLog {
                sequence: sequence as u64,
                generated: ts(generated)?,
                expires: ts(expires)?,
                bytes,
                signature,
            })
        })
        .transpose()
    }

    // ---- key lists ---------------------------------------------------------

    /// Keeps a root-signed key list; refused unless newer than every kept one.
    pub fn add_key_list(
        &self,
        version: u64,
        signed: &tillup_core::keys::SignedKeyList,
        names_next_root: bool,
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let newest: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM key_lists", [], |r| r.get(0))?;
        if let Some(newest) = newest.filter(|n| *n as u64 >= version) {
            return Err(Error::KeyListNotNewer {
                version,
                newest: newest as u64,
            });
        }
        tx.execute(
            "INSERT INTO key_lists (version, list, signature, next_root) VALUES (?1, ?2, ?3, ?4)",
            params![
                version as i64,
                signed.list,
                signed.signature,
                names_next_root
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// What a verifier needs to walk from any root it may hold: every list
    /// that names a next root, and the newest, oldest first.
    pub fn key_chain(&self) -> Result<tillup_core::keys::KeyChain, Error> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT list, signature FROM key_lists
             WHERE next_root OR version = (SELECT MAX(version) FROM key_lists)
             ORDER BY version",
        )?;
        let lists = st
            .query_map([], |r| {
                Ok(tillup_core::keys::SignedKeyList {
                    list: r.get(0)?,
                    signature: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(tillup_core::keys::KeyChain { lists })
    }

    /// The channels that have a signed log.
    pub fn log_channels(&self) -> Result<Vec<String>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT DISTINCT channel FROM logs ORDER BY channel")?;
        let rows = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- stores ------------------------------------------------------------

    /// Adds a store with the SHA-256 (hex) of its token.
    pub fn add_store(&self, id: &str, token_sha256: &str, now: Timestamp) -> Result<(), Error> {
        let conn = self.conn();
        let exists: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM stores WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if exists {
            return Err(Error::StoreExists(id.to_owned()));
        }
        conn.execute(
            "INSERT INTO stores (id, token_sha256, created) VALUES (?1, ?2, ?3)",
            params![id, token_sha256, now.to_string()],
        )?;
        conn.execute(
            "INSERT INTO store_channels (store, channel) VALUES (?1, 'stable')",
            [id],
        )?;
        Ok(())
    }

    /// The channels whose logs the store may read.
    pub fn store_channels(&self, id: &str) -> Result<Vec<String>, Error> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT channel FROM store_channels WHERE store = ?1 ORDER BY channel")?;
        let channels = st
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(channels)
    }

    /// Assigns the store exactly `channels` (at least one).
    pub fn set_store_channels(&self, id: &str, channels: &[String]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM stores WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        tx.execute("DELETE FROM store_channels WHERE store = ?1", [id])?;
        for c in channels {
            tx.execute(
                "INSERT OR IGNORE INTO store_channels (store, channel) VALUES (?1, ?2)",
                params![id, c],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether the store may read `channel`'s log.
    pub fn store_reads(&self, id: &str, channel: &str) -> Result<bool, Error> {
        Ok(self.conn().query_row(
            "SELECT EXISTS(SELECT 1 FROM store_channels WHERE store = ?1 AND channel = ?2)",
            params![id, channel],
            |r| r.get(0),
        )?)
    }

    /// The store whose token hashes to `token_sha256`.
    pub fn store_by_token(&self, token_sha256: &str) -> Result<Option<String>, Error> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id FROM stores WHERE token_sha256 = ?1 AND revoked IS NULL",
                [token_sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether the store exists.
    pub fn store_exists(&self, id: &str) -> Result<bool, Error> {
        Ok(self.conn().query_row(
            "SELECT EXISTS(SELECT 1 FROM stores WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?)
    }

    /// Every store, by id.
    pub fn stores(&self) -> Result<Vec<StoreRow>, Error> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT id, created, last_check, revoked FROM stores ORDER BY id")?;
        type Row = (String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, created, last, revoked)| {
                Ok(StoreRow {
                    id,
                    created: ts(created)?,
                    last_check: last.map(ts).transpose()?,
                    revoked: revoked.map(ts).transpose()?,
                })
            })
            .collect()
    }

    /// Refuses the store's token from now on; its backups and reports stay.
    pub fn revoke_store(&self, id: &str, now: Timestamp) -> Result<(), Error> {
        let changed = self.conn().execute(
            "UPDATE stores SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![id, now.to_string()],
        )?;
        if changed == 0 && !self.store_exists(id)? {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        Ok(())
    }

    /// Gives the store the token hashing to `token_sha256` in place of its
    /// own, and lifts a revocation.
    pub fn replace_store_token(&self, id: &str, token_sha256: &str) -> Result<(), Error> {
        let changed = self.conn().execute(
            "UPDATE stores SET token_sha256 = ?2, revoked = NULL WHERE id = ?1",
            params![id, token_sha256],
        )?;
        if changed == 0 {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        Ok(())
    }

    /// Records that the store fetched the log.
    pub fn touch_store(&self, id: &str, now: Timestamp) -> Result<(), Error> {
        self.conn().execute(
            "UPDATE stores SET last_check = ?2 WHERE id = ?1",
            params![id, now.to_string()],
        )?;
        Ok(())
    }

    // ---- blob references ---------------------------------------------------

    /// Of `hashes`, those the store may not read: referenced neither by a
    /// release nor by the store itself. In order, each once.
    pub fn unreadable(&self, store: &str, hashes: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM release_blobs WHERE sha256 = ?1)
                 OR EXISTS(SELECT 1 FROM store_blobs WHERE store = ?2 AND sha256 = ?1)",
        )?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for h in hashes {
            if seen.insert(*h)
                && !st.query_row(params![h.to_string(), store], |r| r.get::<_, bool>(0))?
            {
                out.push(*h);
            }
        }
        Ok(out)
    }

    /// Makes blobs readable by the store.
    pub fn add_store_blobs(&self, store: &str, hashes: &[Sha256Hex]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut ins =
                tx.prepare("INSERT OR IGNORE INTO store_blobs (store, sha256) VALUES (?1, ?2)")?;
            for h in hashes {
                ins.execute(params![store, h.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- upgrades and reports ----------------------------------------------

    /// Records that a backup arrived for an upgrade (again). Returns the
    /// store's upgrades beyond its newest [`KEEP_UPGRADES`], forgotten: the
    /// caller removes their folders.
    pub fn record_backup(
        &self,
        store: &str,
        upgrade: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO upgrades (store, upgrade, backup_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, upgrade) DO UPDATE SET backup_at = excluded.backup_at, processed_at = NULL",
            params![store, upgrade, now.to_string()],
        )?;
        let old: Vec<String> = tx
            .prepare(
                "SELECT upgrade FROM upgrades WHERE store = ?1
                 ORDER BY backup_at DESC, upgrade DESC LIMIT -1 OFFSET ?2",
            )?
            .query_map(params![store, KEEP_UPGRADES], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for u in &old {
            tx.execute(
                "DELETE FROM upgrades WHERE store = ?1 AND upgrade = ?2",
                params![store, u],
            )?;
        }
        tx.commit()?;
        Ok(old)
    }

    /// The bytes of files the store has uploaded in all.
    pub fn uploaded_bytes(&self, store: &str) -> Result<u64, Error> {
        let n: Option<i64> = self
            .conn()
            .query_row(
                "SELECT uploaded_bytes FROM stores WHERE id = ?1",
                [store],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    /// Counts `bytes` more uploaded by the store.
    pub fn add_uploaded_bytes(&self, store: &str, bytes: u64) -> Result<(), Error> {
        if bytes > 0 {
            self.conn().execute(
                "UPDATE stores SET uploaded_bytes = uploaded_bytes + ?2 WHERE id = ?1",
                params![store, i64::try_from(bytes).unwrap_or(i64::MAX)],
            )?;
        }
        Ok(())
    }

    /// Records that an upgrade was processed.
    pub fn record_processed(
        &self,
        store: &str,
        upgrade: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        self.conn().execute(
            "UPDATE upgrades SET processed_at = ?3 WHERE store = ?1 AND upgrade = ?2",
            params![store, upgrade, now.to_string()],
        )?;
        Ok(())
    }

    /// Stores a report. A report naming its upgrade (`"upgrade": {"id": "…"}`)
    /// replaces the store's earlier report of that upgrade, so a report
    /// sent again (a retry) is kept once; other reports are added.
    pub fn add_report(
        &self,
        store: &str,
        now: Timestamp,
        report: &serde_json::Value,
    ) -> Result<(), Error> {
        let upgrade = report
            .get("upgrade")
            .and_then(|u| u.get("id"))
            .and_then(|id| id.as_str());
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO reports (store, upgrade, received, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (store, upgrade) DO UPDATE
             SET received = excluded.received, body = excluded.body",
            params![store, upgrade, now.to_string(), report.to_string()],
        )?;
        tx.execute(
            "DELETE FROM reports WHERE store = ?1 AND id NOT IN
             (SELECT id FROM reports WHERE store = ?1 ORDER BY id DESC LIMIT ?2)",
            params![store, KEEP_REPORTS],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The store's reports, oldest first.
    pub fn reports(&self, store: &str) -> Result<Vec<ReportRow>, Error> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT received, body FROM reports WHERE store = ?1 ORDER BY id")?;
        let rows: Vec<(String, String)> = st
            .query_map([store], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(received, body)| {
                Ok(ReportRow {
                    store: store.to_owned(),
                    received: ts(received)?,
                    report: serde_json::from_str(&body).map_err(corrupt)?,
                })
            })
            .collect()
    }
}

/// Brings a database made by an older server up to [`SCHEMA`].
fn migrate(conn: &Connection) -> Result<(), Error> {
    let has_upgrade: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('reports') WHERE name = 'upgrade')",
        [],
        |r| r.get(0),
    )?;
    if !has_upgrade {
        // Older reports keep a NULL upgrade: NULLs never conflict, so they stay as they are.
        conn.execute("ALTER TABLE reports ADD COLUMN upgrade TEXT", [])?;
    }
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS reports_by_upgrade ON reports (store, upgrade)",
        [],
    )?;
    let has_revoked: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('stores') WHERE name = 'revoked')",
        [],
        |r| r.get(0),
    )?;
    if !has_revoked {
        conn.execute("ALTER TABLE stores ADD COLUMN revoked TEXT", [])?;
    }
    let has_uploaded: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('stores') WHERE name = 'uploaded_bytes')",
        [],
        |r| r.get(0),
    )?;
    if !has_uploaded {
        conn.execute(
            "ALTER TABLE stores ADD COLUMN uploaded_bytes INTEGER NOT NULL DEFAULT 0",
            [],
        )?;
    }
    // Stores from before channels were assigned read `stable`.
    conn.execute(
        "INSERT OR IGNORE INTO store_channels (store, channel)
         SELECT id, 'stable' FROM stores
         WHERE id NOT IN (SELECT store FROM store_channels)",
        [],
    )?;
    Ok(())
}

fn releases_of(conn: &Connection, channel: &str) -> Result<Vec<Release>, Error> {
    let mut st = conn.prepare("SELECT json FROM releases WHERE channel = ?1")?;
    let jsons: Vec<String> = st
        .query_map([channel], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out: Vec<Release> = jsons
        .iter()
        .map(|j| serde_json::from_str(j).map_err(corrupt))
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: NORMAL could lose a served log sequence on a power cut.
    #[test]
    fn commits_are_synced_fully() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tillup.db")).unwrap();
        let level: i64 = db
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(level, 2, "synchronous must be FULL (2)");
    }

    #[test]
    fn a_store_keeps_its_newest_upgrades_and_reports_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tillup.db")).unwrap();
        db.add_store("s", "t", Timestamp::now()).unwrap();
        let start = Timestamp::now();
        let mut forgotten = Vec::new();
        for i in 0..KEEP_UPGRADES + 3 {
            let at = start + jiff::SignedDuration::from_secs(i);
            forgotten.extend(db.record_backup("s", &format!("u{i:02}"), at).unwrap());
        }
        assert_eq!(forgotten, ["u00", "u01", "u02"]);
        for i in 0..KEEP_REPORTS + 5 {
            let report = serde_json::json!({"upgrade": {"id": format!("r{i}")}});
            db.add_report("s", Timestamp::now(), &report).unwrap();
        }
        let reports = db.reports("s").unwrap();
        assert_eq!(reports.len(), KEEP_REPORTS as usize);
        assert_eq!(reports[0].report["upgrade"]["id"], "r5", "the oldest go");
    }

    #[test]
    fn a_revoked_token_is_refused_until_it_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("tillup.db")).unwrap();
        db.add_store("s", "old", Timestamp::now()).unwrap();
        assert_eq!(db.store_by_token("old").unwrap().as_deref(), Some("s"));
        db.revoke_store("s", Timestamp::now()).unwrap();
        assert_eq!(db.store_by_token("old").unwrap(), None);
        assert!(db.stores().unwrap()[0].revoked.is_some());
        db.replace_store_token("s", "new").unwrap();
        assert_eq!(db.store_by_token("old").unwrap(), None);
        assert_eq!(db.store_by_token("new").unwrap().as_deref(), Some("s"));
        assert!(matches!(
            db.revoke_store("nope", Timestamp::now()),
            Err(Error::UnknownStore(_))
        ));
    }

    #[test]
    fn a_database_from_before_idempotent_reports_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tillup.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE reports (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    store TEXT NOT NULL,
                    received TEXT NOT NULL,
                    body TEXT NOT NULL
                );
                INSERT INTO reports (store, received, body)
                VALUES ('s', '2026-01-01T00:00:00Z', '{\"upgrade\":{\"id\":\"u1\"}}'),
                       ('s', '2026-01-01T00:00:01Z', '{\"upgrade\":{\"id\":\"u1\"}}');",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.reports("s").unwrap().len(), 2, "old rows are kept");
        let report = serde_json::json!({"upgrade": {"id": "u2"}});
        db.add_report("s", Timestamp::now(), &report).unwrap();
        db.add_report("s", Timestamp::now(), &report).unwrap();
        assert_eq!(db.reports("s").unwrap().len(), 3);
        drop(db);
        Db::open(&path).unwrap();
    }
}
