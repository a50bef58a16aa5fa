//! [`Db`] in one SQLite file (WAL): the embedded default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::keys::{KeyChain, SignedKeyList};
use tillup_core::log::Release;

use super::{
    AuditRow, Db, KEEP_REPORTS, KEEP_UPGRADES, PersonRow, ReportRow, RolloutRow, SessionRow,
    SignedLog, Signer, StoreAccess, StoreRow, UpgradeRow,
};
use crate::error::Error;
use tillup_core::roles::Role;
use tillup_core::rollout::Rollout;

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
CREATE TABLE IF NOT EXISTS store_labels (
    store TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (store, label)
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
CREATE TABLE IF NOT EXISTS generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO generation (id, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL,
    upgrade TEXT,
    received TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS people (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created TEXT NOT NULL,
    disabled TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    person TEXT NOT NULL REFERENCES people (name),
    csrf TEXT NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    plan TEXT NOT NULL,
    waves TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL
);
";

/// The database: one connection, serialised by a mutex.
#[derive(Debug)]
pub struct SqliteDb {
    conn: Mutex<Connection>,
    /// A second connection for [`Db::generation`]: in WAL mode it reads
    /// while the first one writes, so a request never waits on a write.
    reader: Mutex<Connection>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

fn ts(s: String) -> Result<Timestamp, Error> {
    s.parse()
        .map_err(|e| corrupt(format!("timestamp `{s}`: {e}")))
}

impl SqliteDb {
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
        let reader = Connection::open(path)?;
        reader.busy_timeout(Duration::from_secs(10))?;
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // write is a transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SqliteDb {
    fn rollouts_where(
        &self,
        clause: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<RolloutRow>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT id, channel, version, plan, waves, state, created FROM rollouts {clause}"
        ))?;
        type Row = (String, String, String, String, String, String, String);
        let rows: Vec<Row> = st
            .query_map(args, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(id, channel, version, plan, waves, state, created)| {
                Ok(RolloutRow {
                    id,
                    channel,
                    version: version.parse().map_err(corrupt)?,
                    plan: serde_json::from_str(&plan).map_err(corrupt)?,
                    waves: serde_json::from_str(&waves).map_err(corrupt)?,
                    state: serde_json::from_str(&state).map_err(corrupt)?,
                    created: ts(created)?,
                })
            })
            .collect()
    }

    fn people_where(
        &self,
        clause: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<PersonRow>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT name, role, password, created, disabled FROM people {clause}"
        ))?;
        type Row = (String, String, String, String, Option<String>);
        let rows: Vec<Row> = st
            .query_map(args, |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(name, role, password, created, disabled)| {
                Ok(PersonRow {
                    name,
                    role: role.parse::<Role>().map_err(corrupt)?,
                    password,
                    created: ts(created)?,
                    disabled: disabled.map(ts).transpose()?,
                })
            })
            .collect()
    }
}

/// Marks a change [`Db::generation`] reports, inside the change's transaction.
/// Whether store `id` exists.
fn has_store(conn: &Connection, id: &str) -> Result<bool, Error> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM stores WHERE id = ?1)",
        [id],
        |r| r.get(0),
    )?)
}

/// Replaces store `id`'s rows in `table` (a set of `column` values per
/// store) with `values`, in `tx`; an unknown store is refused.
fn replace_store_set<'a>(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    (table, column): (&str, &str),
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(), Error> {
    if !has_store(tx, id)? {
        return Err(Error::UnknownStore(id.to_owned()));
    }
    tx.execute(&format!("DELETE FROM {table} WHERE store = ?1"), [id])?;
    let mut insert = tx.prepare(&format!(
        "INSERT OR IGNORE INTO {table} (store, {column}) VALUES (?1, ?2)"
    ))?;
    for v in values {
        insert.execute(params![id, v])?;
    }
    Ok(())
}

fn bump(conn: &Connection) -> Result<(), Error> {
    conn.execute("UPDATE generation SET value = value + 1 WHERE id = 1", [])?;
    Ok(())
}

impl Db for SqliteDb {
    fn generation(&self) -> Result<u64, Error> {
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = reader.prepare_cached("SELECT value FROM generation WHERE id = 1")?;
        let value: i64 = st.query_row([], |r| r.get(0))?;
        Ok(value as u64)
    }

    // ---- releases ------------------------------------------------------

    /// The release of `version` on `channel`.
    fn release(&self, channel: &str, version: &Version) -> Result<Option<Release>, Error> {
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

    fn set_release_stores(
        &self,
        channel: &str,
        version: &Version,
        stores: Option<&[String]>,
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key = params![channel, version.to_string()];
        let json: Option<String> = tx
            .query_row(
                "SELECT json FROM releases WHERE channel = ?1 AND version = ?2",
                key,
                |r| r.get(0),
            )
            .optional()?;
        let Some(json) = json else {
            return Err(Error::UnknownRelease {
                channel: channel.to_owned(),
                version: version.clone(),
            });
        };
        let mut release: Release = serde_json::from_str(&json).map_err(corrupt)?;
        release.stores = stores.map(<[String]>::to_vec);
        let json = serde_json::to_string(&release).map_err(corrupt)?;
        tx.execute(
            "UPDATE releases SET json = ?3 WHERE channel = ?1 AND version = ?2",
            params![channel, version.to_string(), json],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every release of `channel`, sorted by version.
    fn releases(&self, channel: &str) -> Result<Vec<Release>, Error> {
        releases_of(&self.conn(), channel)
    }

    /// Records (or replaces) a release and the blobs it makes readable
    /// (its files and its manifest).
    fn put_release(
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
    fn append_log(&self, channel: &str, sign: Signer<'_>) -> Result<SignedLog, Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<i64> = tx.query_row(
            "SELECT MAX(sequence) FROM logs WHERE channel = ?1",
            [channel],
            |r| r.get(0),
        )?;
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
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(log)
    }

    /// The newest signed log of `channel`.
    fn latest_log(&self, channel: &str) -> Result<Option<SignedLog>, Error> {
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
    fn add_key_list(
        &self,
        version: u64,
        signed: &SignedKeyList,
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
    fn key_chain(&self) -> Result<KeyChain, Error> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT list, signature FROM key_lists
             WHERE next_root OR version = (SELECT MAX(version) FROM key_lists)
             ORDER BY version",
        )?;
        let lists = st
            .query_map([], |r| {
                Ok(SignedKeyList {
                    list: r.get(0)?,
                    signature: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(KeyChain { lists })
    }

    /// The channels that have a signed log.
    fn log_channels(&self) -> Result<Vec<String>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT DISTINCT channel FROM logs ORDER BY channel")?;
        let rows = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- stores ------------------------------------------------------------

    /// Adds a store with the SHA-256 (hex) of its token.
    fn add_store(&self, id: &str, token_sha256: &str, now: Timestamp) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if has_store(&tx, id)? {
            return Err(Error::StoreExists(id.to_owned()));
        }
        tx.execute(
            "INSERT INTO stores (id, token_sha256, created) VALUES (?1, ?2, ?3)",
            params![id, token_sha256, now.to_string()],
        )?;
        tx.execute(
            "INSERT INTO store_channels (store, channel) VALUES (?1, 'stable')",
            [id],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The channels whose logs the store may read.
    fn store_channels(&self, id: &str) -> Result<Vec<String>, Error> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT channel FROM store_channels WHERE store = ?1 ORDER BY channel")?;
        let channels = st
            .query_map([id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(channels)
    }

    fn store_labels(&self) -> Result<BTreeMap<String, BTreeSet<String>>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT store, label FROM store_labels")?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))? {
            let (store, label) = row?;
            out.entry(store).or_default().insert(label);
        }
        Ok(out)
    }

    fn set_store_labels(&self, id: &str, labels: &BTreeSet<String>) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        replace_store_set(&tx, id, ("store_labels", "label"), labels)?;
        tx.commit()?;
        Ok(())
    }

    /// Assigns the store exactly `channels` (at least one).
    fn set_store_channels(&self, id: &str, channels: &[String]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        replace_store_set(&tx, id, ("store_channels", "channel"), channels)?;
        bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// The store whose token hashes to `token_sha256`.
    fn store_by_token(&self, token_sha256: &str) -> Result<Option<String>, Error> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id FROM stores WHERE token_sha256 = ?1 AND revoked IS NULL",
                [token_sha256],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn store_access(&self) -> Result<Vec<StoreAccess>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT s.token_sha256, s.id, c.channel FROM stores s
             JOIN store_channels c ON c.store = s.id
             WHERE s.revoked IS NULL ORDER BY s.id, c.channel",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out: Vec<StoreAccess> = Vec::new();
        for row in rows {
            let (token_sha256, store, channel) = row?;
            match out.last_mut() {
                Some(last) if last.store == store => last.channels.push(channel),
                _ => out.push(StoreAccess {
                    token_sha256,
                    store,
                    channels: vec![channel],
                }),
            }
        }
        Ok(out)
    }

    /// Whether the store exists.
    fn store_exists(&self, id: &str) -> Result<bool, Error> {
        has_store(&self.conn(), id)
    }

    /// Every store, by id.
    fn stores(&self) -> Result<Vec<StoreRow>, Error> {
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
    fn revoke_store(&self, id: &str, now: Timestamp) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !has_store(&tx, id)? {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        tx.execute(
            "UPDATE stores SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![id, now.to_string()],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Gives the store the token hashing to `token_sha256` in place of its
    /// own, and lifts a revocation.
    fn replace_store_token(&self, id: &str, token_sha256: &str) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE stores SET token_sha256 = ?2, revoked = NULL WHERE id = ?1",
            params![id, token_sha256],
        )?;
        if changed == 0 {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        bump(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn record_checks(&self, checks: &[(String, Timestamp)]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut up = tx.prepare_cached(
                "UPDATE stores SET last_check = ?2
                 WHERE id = ?1 AND (last_check IS NULL OR julianday(last_check) < julianday(?2))",
            )?;
            for (id, at) in checks {
                up.execute(params![id, at.to_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ---- blob references ---------------------------------------------------

    /// Of `hashes`, those the store may not read: referenced neither by a
    /// release nor by the store itself. In order, each once.
    fn unreadable(&self, store: &str, hashes: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, Error> {
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
    fn add_store_blobs(&self, store: &str, hashes: &[Sha256Hex]) -> Result<(), Error> {
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
    fn record_backup(
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
    fn uploaded_bytes(&self, store: &str) -> Result<u64, Error> {
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
    fn add_uploaded_bytes(&self, store: &str, bytes: u64) -> Result<(), Error> {
        if bytes > 0 {
            self.conn().execute(
                "UPDATE stores SET uploaded_bytes = uploaded_bytes + ?2 WHERE id = ?1",
                params![store, i64::try_from(bytes).unwrap_or(i64::MAX)],
            )?;
        }
        Ok(())
    }

    /// Records that an upgrade was processed.
    fn record_processed(&self, store: &str, upgrade: &str, now: Timestamp) -> Result<(), Error> {
        self.conn().execute(
            "UPDATE upgrades SET processed_at = ?3 WHERE store = ?1 AND upgrade = ?2",
            params![store, upgrade, now.to_string()],
        )?;
        Ok(())
    }

    /// Stores a report. A report naming its upgrade (`"upgrade": {"id": "…"}`)
    /// replaces the store's earlier report of that upgrade, so a report
    /// sent again (a retry) is kept once; other reports are added.
    fn add_report(
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
    fn reports(&self, store: &str) -> Result<Vec<ReportRow>, Error> {
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

    fn unreported_upgrades(&self, since: Timestamp) -> Result<Vec<UpgradeRow>, Error> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT u.store, u.upgrade, u.backup_at, u.processed_at FROM upgrades u
             WHERE NOT EXISTS (
                 SELECT 1 FROM reports r WHERE r.store = u.store AND r.upgrade = u.upgrade
             )",
        )?;
        let rows: Vec<(String, String, String, Option<String>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        // Timestamps are text here: compared once parsed.
        let mut out = Vec::new();
        for (store, upgrade, backup_at, processed_at) in rows {
            let backup_at = ts(backup_at)?;
            if backup_at >= since {
                out.push(UpgradeRow {
                    store,
                    upgrade,
                    backup_at,
                    processed_at: processed_at.map(ts).transpose()?,
                });
            }
        }
        out.sort_by_key(|u| std::cmp::Reverse(u.backup_at));
        Ok(out)
    }

    fn add_person(&self, p: &PersonRow) -> Result<(), Error> {
        let added = self.conn().execute(
            "INSERT INTO people (name, role, password, created, disabled)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
            params![
                p.name,
                p.role.as_str(),
                p.password,
                p.created.to_string(),
                p.disabled.map(|t| t.to_string())
            ],
        )?;
        if added == 0 {
            return Err(Error::PersonExists(p.name.clone()));
        }
        Ok(())
    }

    fn person(&self, name: &str) -> Result<Option<PersonRow>, Error> {
        self.people_where("WHERE name = ?1", params![name])
            .map(|mut v| v.pop())
    }

    fn people(&self) -> Result<Vec<PersonRow>, Error> {
        self.people_where("ORDER BY name", params![])
    }

    fn disable_person(&self, name: &str, now: Timestamp) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = tx.execute(
            "UPDATE people SET disabled = COALESCE(disabled, ?2) WHERE name = ?1",
            params![name, now.to_string()],
        )?;
        if found == 0 {
            return Err(Error::UnknownPerson(name.to_owned()));
        }
        tx.execute("DELETE FROM sessions WHERE person = ?1", [name])?;
        tx.commit()?;
        Ok(())
    }

    fn add_session(
        &self,
        token_sha256: &str,
        session: &SessionRow,
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM sessions WHERE expires <= ?1",
            [now.as_second()],
        )?;
        tx.execute(
            "INSERT INTO sessions (token_sha256, person, csrf, expires) VALUES (?1, ?2, ?3, ?4)",
            params![
                token_sha256,
                session.person,
                session.csrf,
                session.expires.as_second()
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session(&self, token_sha256: &str, now: Timestamp) -> Result<Option<SessionRow>, Error> {
        let row: Option<(String, String, String, i64)> = self
            .conn()
            .query_row(
                "SELECT s.person, p.role, s.csrf, s.expires FROM sessions s
                 JOIN people p ON p.name = s.person
                 WHERE s.token_sha256 = ?1 AND p.disabled IS NULL AND s.expires > ?2",
                params![token_sha256, now.as_second()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        row.map(|(person, role, csrf, expires)| {
            Ok(SessionRow {
                person,
                role: role.parse().map_err(corrupt)?,
                csrf,
                expires: Timestamp::from_second(expires).map_err(corrupt)?,
            })
        })
        .transpose()
    }

    fn end_session(&self, token_sha256: &str) -> Result<(), Error> {
        self.conn().execute(
            "DELETE FROM sessions WHERE token_sha256 = ?1",
            [token_sha256],
        )?;
        Ok(())
    }

    fn record_audit(&self, e: &AuditRow) -> Result<(), Error> {
        self.conn().execute(
            "INSERT INTO audit (at, who, action, subject) VALUES (?1, ?2, ?3, ?4)",
            params![e.at.to_string(), e.who, e.action, e.subject],
        )?;
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRow>, Error> {
        let conn = self.conn();
        let mut st =
            conn.prepare("SELECT at, who, action, subject FROM audit ORDER BY id DESC LIMIT ?1")?;
        type Row = (String, String, String, String);
        let rows: Vec<Row> = st
            .query_map([limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(at, who, action, subject)| {
                Ok(AuditRow {
                    at: ts(at)?,
                    who,
                    action,
                    subject,
                })
            })
            .collect()
    }

    fn add_rollout(&self, r: &RolloutRow) -> Result<(), Error> {
        self.conn().execute(
            "INSERT INTO rollouts (id, channel, version, plan, waves, state, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.id,
                r.channel,
                r.version.to_string(),
                super::to_json(&r.plan)?,
                super::to_json(&r.waves)?,
                super::to_json(&r.state)?,
                r.created.to_string()
            ],
        )?;
        Ok(())
    }

    fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, Error> {
        self.rollouts_where("WHERE id = ?1", params![id])
            .map(|mut v| v.pop())
    }

    fn rollouts(&self) -> Result<Vec<RolloutRow>, Error> {
        self.rollouts_where("ORDER BY created DESC, id", params![])
    }

    fn save_rollout(&self, id: &str, was: &Rollout, now: &Rollout) -> Result<bool, Error> {
        let changed = self.conn().execute(
            "UPDATE rollouts SET state = ?3 WHERE id = ?1 AND state = ?2",
            params![id, super::to_json(was)?, super::to_json(now)?],
        )?;
        Ok(changed == 1)
    }

    fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<bool, Error> {
        let until = now
            .checked_add(ttl)
            .map_err(|e| corrupt(format!("lease end: {e}")))?;
        let changed = self.conn().execute(
            "INSERT INTO leases (name, holder, until) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.holder = excluded.holder OR julianday(leases.until) < julianday(?4)",
            params![name, holder, until.to_string(), now.to_string()],
        )?;
        Ok(changed == 1)
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
        let db = SqliteDb::open(&dir.path().join("tillup.db")).unwrap();
        let level: i64 = db
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(level, 2, "synchronous must be FULL (2)");
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
        let db = SqliteDb::open(&path).unwrap();
        assert_eq!(db.reports("s").unwrap().len(), 2, "old rows are kept");
        let report = serde_json::json!({"upgrade": {"id": "u2"}});
        db.add_report("s", Timestamp::now(), &report).unwrap();
        db.add_report("s", Timestamp::now(), &report).unwrap();
        assert_eq!(db.reports("s").unwrap().len(), 3);
        drop(db);
        SqliteDb::open(&path).unwrap();
    }
}
