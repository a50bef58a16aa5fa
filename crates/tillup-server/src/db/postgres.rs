//! [`Db`] in PostgreSQL: one database shared by several servers.
//!
//! Connections come from a small pool (r2d2). [`Db::generation`] is read
//! from memory: a thread holds one more connection that `LISTEN`s for the
//! `NOTIFY` every change sends at commit, so the servers sharing the
//! database see a new store, a revoked token or a new log within
//! milliseconds without a query per request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use jiff::Timestamp;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Transaction};
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::keys::{KeyChain, SignedKeyList};
use tillup_core::log::Release;

use super::{
    AuditRow, Db, KEEP_REPORTS, KEEP_UPGRADES, PersonRow, ReportRow, RolloutRow, SessionRow,
    SignedLog, Signer, StoreAccess, StoreRow, UpgradeRow, to_json,
};
use crate::error::Error;
use tillup_core::roles::Role;
use tillup_core::rollout::Rollout;

/// The connections each server keeps: the blocking pool runs at most this
/// many database calls at once; more wait for a free connection.
pub const POOL_SIZE: u32 = 16;
/// How long a call waits for a pooled connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// The `NOTIFY` channel of [`Db::generation`].
const CHANNEL: &str = "tillup_generation";
/// How often the generation is re-read even without a notification (a
/// lost connection, a notification missed while reconnecting).
const GENERATION_POLL: Duration = Duration::from_secs(1);

/// Every statement is idempotent, so a server runs it at each start; a
/// transaction-level advisory lock keeps two servers starting together
/// from racing.
const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7461796);
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
);
CREATE INDEX IF NOT EXISTS release_blobs_by_hash ON release_blobs (sha256);
CREATE TABLE IF NOT EXISTS logs (
    channel TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    generated TIMESTAMPTZ NOT NULL,
    expires TIMESTAMPTZ NOT NULL,
    bytes BYTEA NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (channel, sequence)
);
CREATE TABLE IF NOT EXISTS stores (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created TIMESTAMPTZ NOT NULL,
    last_check TIMESTAMPTZ,
    revoked TIMESTAMPTZ,
    uploaded_bytes BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS key_lists (
    version BIGINT PRIMARY KEY,
    list TEXT NOT NULL,
    signature TEXT NOT NULL,
    next_root BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS store_channels (
    store TEXT NOT NULL,
    channel TEXT NOT NULL,
    PRIMARY KEY (store, channel)
);
CREATE TABLE IF NOT EXISTS store_labels (
    store TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (store, label)
);
CREATE TABLE IF NOT EXISTS store_blobs (
    store TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (store, sha256)
);
CREATE TABLE IF NOT EXISTS upgrades (
    store TEXT NOT NULL,
    upgrade TEXT NOT NULL,
    backup_at TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ,
    PRIMARY KEY (store, upgrade)
);
CREATE TABLE IF NOT EXISTS reports (
    id BIGSERIAL PRIMARY KEY,
    store TEXT NOT NULL,
    upgrade TEXT,
    received TIMESTAMPTZ NOT NULL,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS reports_by_upgrade ON reports (store, upgrade);
CREATE TABLE IF NOT EXISTS generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO generation (id, value) VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS people (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL,
    disabled TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    person TEXT NOT NULL REFERENCES people (name),
    csrf TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
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
    created TIMESTAMPTZ NOT NULL
);
";

type Manager = PostgresConnectionManager<NoTls>;

/// The generation as last read by the listening thread.
#[derive(Debug, Default)]
struct Seen {
    value: AtomicU64,
    /// False while the listening thread has no connection: then
    /// [`Db::generation`] asks the database itself.
    live: AtomicBool,
}

/// The PostgreSQL database.
pub struct PgDb {
    pool: Pool<Manager>,
    seen: Arc<Seen>,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDb").field("seen", &self.seen).finish()
    }
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

/// `url` without its password, for messages and logs.
pub(super) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl PgDb {
    /// Connects to `url`, creates the tables if needed and starts the
    /// thread that follows the generation.
    pub fn connect(url: &str) -> Result<Self, Error> {
        let config: postgres::Config = url.parse().map_err(|e| Error::DatabaseUrl {
            url: redact(url),
            reason: format!("{e}"),
        })?;
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(POOL_WAIT)
            .build(Manager::new(config.clone(), NoTls))
            .map_err(|e| Error::DatabaseUnavailable {
                url: redact(url),
                reason: e.to_string(),
            })?;
        let db = Self {
            pool,
            seen: Arc::new(Seen::default()),
        };
        {
            let mut conn = db.conn()?;
            let mut tx = conn.transaction()?;
            tx.batch_execute(SCHEMA)?;
            tx.commit()?;
        }
        let value = db.read_generation()?;
        db.seen.value.store(value, Ordering::SeqCst);
        let weak = Arc::downgrade(&db.seen);
        std::thread::Builder::new()
            .name("tillup-pg-listen".into())
            .spawn(move || follow_generation(config, weak))
            .map_err(|e| Error::DatabaseUnavailable {
                url: redact(url),
                reason: format!("cannot start the listening thread: {e}"),
            })?;
        Ok(db)
    }

    fn conn(&self) -> Result<PooledConnection<Manager>, Error> {
        self.pool.get().map_err(|e| Error::DatabaseUnavailable {
            url: "the PostgreSQL pool".into(),
            reason: e.to_string(),
        })
    }

    /// Commits a transaction that called [`bump`]: this handle sees its
    /// own change at once, others when the notification arrives.
    fn committed(&self, tx: Transaction<'_>, generation: u64) -> Result<(), Error> {
        tx.commit()?;
        self.seen.value.fetch_max(generation, Ordering::SeqCst);
        Ok(())
    }

    fn read_generation(&self) -> Result<u64, Error> {
        let row = self
            .conn()?
            .query_one("SELECT value FROM generation WHERE id = 1", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// Marks a change [`Db::generation`] reports, inside the change's
/// transaction: the notification goes out at commit. Returns the new
/// generation, for [`PgDb::committed`].
/// Replaces store `id`'s rows in `table` (a set of `column` values per
/// store) with `values`, in `tx`, the store's row locked; an unknown store
/// is refused.
fn replace_store_set<'a>(
    tx: &mut Transaction<'_>,
    id: &str,
    (table, column): (&str, &str),
    values: impl IntoIterator<Item = &'a String>,
) -> Result<(), Error> {
    let exists = tx
        .query_opt("SELECT 1 FROM stores WHERE id = $1 FOR UPDATE", &[&id])?
        .is_some();
    if !exists {
        return Err(Error::UnknownStore(id.to_owned()));
    }
    tx.execute(&format!("DELETE FROM {table} WHERE store = $1"), &[&id])?;
    let values: Vec<&String> = values.into_iter().collect();
    tx.execute(
        &format!(
            "INSERT INTO {table} (store, {column}) SELECT $1, v FROM unnest($2::text[]) AS v ON CONFLICT DO NOTHING"
        ),
        &[&id, &values],
    )?;
    Ok(())
}

fn bump(tx: &mut Transaction<'_>) -> Result<u64, Error> {
    let value: i64 = tx
        .query_one(
            "UPDATE generation SET value = value + 1 WHERE id = 1 RETURNING value",
            &[],
        )?
        .get(0);
    tx.batch_execute(&format!("NOTIFY {CHANNEL}"))?;
    Ok(value as u64)
}

/// The listening thread: keeps `seen` at the database's generation until
/// the [`PgDb`] is dropped, reconnecting after a lost connection.
fn follow_generation(config: postgres::Config, seen: Weak<Seen>) {
    loop {
        let Some(s) = seen.upgrade() else { return };
        s.live.store(false, Ordering::SeqCst);
        drop(s);
        let mut client = match config.connect(NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("PostgreSQL: cannot listen for changes, retrying: {e}");
                std::thread::sleep(GENERATION_POLL);
                continue;
            }
        };
        if let Err(e) = listen(&mut client, &seen) {
            tracing::warn!("PostgreSQL: stopped listening for changes, reconnecting: {e}");
            std::thread::sleep(GENERATION_POLL);
        } else {
            return;
        }
    }
}

/// Follows notifications on one connection; `Ok` when the `PgDb` is gone.
fn listen(client: &mut Client, seen: &Weak<Seen>) -> Result<(), postgres::Error> {
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    loop {
        let value: i64 = client
            .query_one("SELECT value FROM generation WHERE id = 1", &[])?
            .get(0);
        let Some(s) = seen.upgrade() else {
            return Ok(());
        };
        s.value.fetch_max(value as u64, Ordering::SeqCst);
        s.live.store(true, Ordering::SeqCst);
        drop(s);
        // Wait for the next change (or the poll), then take every
        // notification already queued: one read covers them all.
        let mut notes = client.notifications();
        let mut waiting = notes.timeout_iter(GENERATION_POLL);
        waiting.next()?;
        drop(waiting);
        let mut queued = notes.iter();
        while queued.next()?.is_some() {}
    }
}

impl Db for PgDb {
    fn generation(&self) -> Result<u64, Error> {
        if self.seen.live.load(Ordering::SeqCst) {
            Ok(self.seen.value.load(Ordering::SeqCst))
        } else {
            self.read_generation()
        }
    }

    fn release(&self, channel: &str, version: &Version) -> Result<Option<Release>, Error> {
        let row = self.conn()?.query_opt(
            "SELECT json FROM releases WHERE channel = $1 AND version = $2",
            &[&channel, &version.to_string()],
        )?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt))
            .transpose()
    }

    fn releases(&self, channel: &str) -> Result<Vec<Release>, Error> {
        releases_of(&mut *self.conn()?, channel)
    }

    fn set_release_stores(
        &self,
        channel: &str,
        version: &Version,
        stores: Option<&[String]>,
    ) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let row = tx.query_opt(
            "SELECT json FROM releases WHERE channel = $1 AND version = $2 FOR UPDATE",
            &[&channel, &version.to_string()],
        )?;
        let Some(row) = row else {
            return Err(Error::UnknownRelease {
                channel: channel.to_owned(),
                version: version.clone(),
            });
        };
        let mut release: Release = serde_json::from_str(row.get::<_, &str>(0)).map_err(corrupt)?;
        release.stores = stores.map(<[String]>::to_vec);
        let json = serde_json::to_string(&release).map_err(corrupt)?;
        tx.execute(
            "UPDATE releases SET json = $3 WHERE channel = $1 AND version = $2",
            &[&channel, &version.to_string(), &json],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn put_release(
        &self,
        channel: &str,
        release: &Release,
        blobs: &[Sha256Hex],
    ) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let version = release.version.to_string();
        let json = serde_json::to_string(release).map_err(corrupt)?;
        tx.execute(
            "INSERT INTO releases (channel, version, json) VALUES ($1, $2, $3)
             ON CONFLICT (channel, version) DO UPDATE SET json = excluded.json",
            &[&channel, &version, &json],
        )?;
        tx.execute(
            "DELETE FROM release_blobs WHERE channel = $1 AND version = $2",
            &[&channel, &version],
        )?;
        let hashes: Vec<String> = blobs.iter().map(ToString::to_string).collect();
        tx.execute(
            "INSERT INTO release_blobs (channel, version, sha256)
             SELECT $1, $2, h FROM unnest($3::text[]) AS h ON CONFLICT DO NOTHING",
            &[&channel, &version, &hashes],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn append_log(&self, channel: &str, sign: Signer<'_>) -> Result<SignedLog, Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        // One signer per channel at a time, across every server.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tillup-log:' || $1))",
            &[&channel],
        )?;
        let last: Option<i64> = tx
            .query_one(
                "SELECT MAX(sequence) FROM logs WHERE channel = $1",
                &[&channel],
            )?
            .get(0);
        let next = last.map_or(1, |s| s as u64 + 1);
        let releases = releases_of(&mut tx, channel)?;
        let log = sign(next, releases)?;
        tx.execute(
            "INSERT INTO logs (channel, sequence, generated, expires, bytes, signature)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &channel,
                &i64_of(log.sequence),
                &log.generated,
                &log.expires,
                &log.bytes,
                &log.signature,
            ],
        )?;
        let generation = bump(&mut tx)?;
        self.committed(tx, generation)?;
        Ok(log)
    }

    fn latest_log(&self, channel: &str) -> Result<Option<SignedLog>, Error> {
        let row = self.conn()?.query_opt(
            "SELECT sequence, generated, expires, bytes, signature FROM logs
             WHERE channel = $1 ORDER BY sequence DESC LIMIT 1",
            &[&channel],
        )?;
        Ok(row.map(|r| SignedLog {
            sequence: r.get::<_, i64>(0) as u64,
            generated: r.get(1),
            expires: r.get(2),
            bytes: r.get(3),
            signature: r.get(4),
        }))
    }

    fn log_channels(&self) -> Result<Vec<String>, Error> {
        let rows = self
            .conn()?
            .query("SELECT DISTINCT channel FROM logs ORDER BY channel", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn add_key_list(
        &self,
        version: u64,
        signed: &SignedKeyList,
        names_next_root: bool,
    ) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.batch_execute("LOCK TABLE key_lists IN EXCLUSIVE MODE")?;
        let newest: Option<i64> = tx
            .query_one("SELECT MAX(version) FROM key_lists", &[])?
            .get(0);
        if let Some(newest) = newest.filter(|n| *n as u64 >= version) {
            return Err(Error::KeyListNotNewer {
                version,
                newest: newest as u64,
            });
        }
        tx.execute(
            "INSERT INTO key_lists (version, list, signature, next_root) VALUES ($1, $2, $3, $4)",
            &[
                &i64_of(version),
                &signed.list,
                &signed.signature,
                &names_next_root,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn key_chain(&self) -> Result<KeyChain, Error> {
        let rows = self.conn()?.query(
            "SELECT list, signature FROM key_lists
             WHERE next_root OR version = (SELECT MAX(version) FROM key_lists)
             ORDER BY version",
            &[],
        )?;
        Ok(KeyChain {
            lists: rows
                .iter()
                .map(|r| SignedKeyList {
                    list: r.get(0),
                    signature: r.get(1),
                })
                .collect(),
        })
    }

    fn add_store(&self, id: &str, token_sha256: &str, now: Timestamp) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let added = tx.execute(
            "INSERT INTO stores (id, token_sha256, created) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &token_sha256, &now],
        )?;
        if added == 0 {
            return Err(Error::StoreExists(id.to_owned()));
        }
        tx.execute(
            "INSERT INTO store_channels (store, channel) VALUES ($1, 'stable')",
            &[&id],
        )?;
        let generation = bump(&mut tx)?;
        self.committed(tx, generation)?;
        Ok(())
    }

    fn store_channels(&self, id: &str) -> Result<Vec<String>, Error> {
        let rows = self.conn()?.query(
            "SELECT channel FROM store_channels WHERE store = $1 ORDER BY channel",
            &[&id],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn store_labels(&self) -> Result<BTreeMap<String, BTreeSet<String>>, Error> {
        let rows = self
            .conn()?
            .query("SELECT store, label FROM store_labels", &[])?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in &rows {
            out.entry(r.get(0)).or_default().insert(r.get(1));
        }
        Ok(out)
    }

    fn set_store_labels(&self, id: &str, labels: &BTreeSet<String>) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        replace_store_set(&mut tx, id, ("store_labels", "label"), labels)?;
        tx.commit()?;
        Ok(())
    }

    fn set_store_channels(&self, id: &str, channels: &[String]) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        replace_store_set(&mut tx, id, ("store_channels", "channel"), channels)?;
        let generation = bump(&mut tx)?;
        self.committed(tx, generation)?;
        Ok(())
    }

    fn store_by_token(&self, token_sha256: &str) -> Result<Option<String>, Error> {
        let row = self.conn()?.query_opt(
            "SELECT id FROM stores WHERE token_sha256 = $1 AND revoked IS NULL",
            &[&token_sha256],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    fn store_access(&self) -> Result<Vec<StoreAccess>, Error> {
        let rows = self.conn()?.query(
            "SELECT s.token_sha256, s.id, array_agg(c.channel ORDER BY c.channel)
             FROM stores s JOIN store_channels c ON c.store = s.id
             WHERE s.revoked IS NULL GROUP BY s.id ORDER BY s.id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| StoreAccess {
                token_sha256: r.get(0),
                store: r.get(1),
                channels: r.get(2),
            })
            .collect())
    }

    fn store_exists(&self, id: &str) -> Result<bool, Error> {
        Ok(self
            .conn()?
            .query_opt("SELECT 1 FROM stores WHERE id = $1", &[&id])?
            .is_some())
    }

    fn stores(&self) -> Result<Vec<StoreRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT id, created, last_check, revoked FROM stores ORDER BY id",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| StoreRow {
                id: r.get(0),
                created: r.get(1),
                last_check: r.get(2),
                revoked: r.get(3),
            })
            .collect())
    }

    fn revoke_store(&self, id: &str, now: Timestamp) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let exists = tx
            .query_opt("SELECT 1 FROM stores WHERE id = $1 FOR UPDATE", &[&id])?
            .is_some();
        if !exists {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        tx.execute(
            "UPDATE stores SET revoked = $2 WHERE id = $1 AND revoked IS NULL",
            &[&id, &now],
        )?;
        let generation = bump(&mut tx)?;
        self.committed(tx, generation)?;
        Ok(())
    }

    fn replace_store_token(&self, id: &str, token_sha256: &str) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE stores SET token_sha256 = $2, revoked = NULL WHERE id = $1",
            &[&id, &token_sha256],
        )?;
        if changed == 0 {
            return Err(Error::UnknownStore(id.to_owned()));
        }
        let generation = bump(&mut tx)?;
        self.committed(tx, generation)?;
        Ok(())
    }

    fn record_checks(&self, checks: &[(String, Timestamp)]) -> Result<(), Error> {
        let ids: Vec<&str> = checks.iter().map(|(id, _)| id.as_str()).collect();
        let ats: Vec<Timestamp> = checks.iter().map(|(_, at)| *at).collect();
        self.conn()?.execute(
            "UPDATE stores s SET last_check = v.at
             FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at)
             WHERE s.id = v.id AND (s.last_check IS NULL OR s.last_check < v.at)",
            &[&ids, &ats],
        )?;
        Ok(())
    }

    fn unreadable(&self, store: &str, hashes: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, Error> {
        let wanted: Vec<String> = hashes.iter().map(ToString::to_string).collect();
        let rows = self.conn()?.query(
            "SELECT h FROM unnest($1::text[]) AS h
             WHERE NOT EXISTS (SELECT 1 FROM release_blobs r WHERE r.sha256 = h)
               AND NOT EXISTS (SELECT 1 FROM store_blobs b WHERE b.store = $2 AND b.sha256 = h)",
            &[&wanted, &store],
        )?;
        let unreadable: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut seen = std::collections::HashSet::new();
        Ok(hashes
            .iter()
            .filter(|h| seen.insert(**h) && unreadable.contains(&h.to_string()))
            .copied()
            .collect())
    }

    fn add_store_blobs(&self, store: &str, hashes: &[Sha256Hex]) -> Result<(), Error> {
        let hashes: Vec<String> = hashes.iter().map(ToString::to_string).collect();
        self.conn()?.execute(
            "INSERT INTO store_blobs (store, sha256)
             SELECT $1, h FROM unnest($2::text[]) AS h ON CONFLICT DO NOTHING",
            &[&store, &hashes],
        )?;
        Ok(())
    }

    fn uploaded_bytes(&self, store: &str) -> Result<u64, Error> {
        let row = self
            .conn()?
            .query_opt("SELECT uploaded_bytes FROM stores WHERE id = $1", &[&store])?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn add_uploaded_bytes(&self, store: &str, bytes: u64) -> Result<(), Error> {
        if bytes > 0 {
            self.conn()?.execute(
                "UPDATE stores SET uploaded_bytes = uploaded_bytes + $2 WHERE id = $1",
                &[&store, &i64_of(bytes)],
            )?;
        }
        Ok(())
    }

    fn record_backup(
        &self,
        store: &str,
        upgrade: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO upgrades (store, upgrade, backup_at) VALUES ($1, $2, $3)
             ON CONFLICT (store, upgrade) DO UPDATE
             SET backup_at = excluded.backup_at, processed_at = NULL",
            &[&store, &upgrade, &now],
        )?;
        let old: Vec<String> = tx
            .query(
                "DELETE FROM upgrades WHERE store = $1 AND upgrade IN (
                     SELECT upgrade FROM upgrades WHERE store = $1
                     ORDER BY backup_at DESC, upgrade DESC OFFSET $2)
                 RETURNING upgrade",
                &[&store, &KEEP_UPGRADES],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit()?;
        let mut old = old;
        old.sort();
        Ok(old)
    }

    fn record_processed(&self, store: &str, upgrade: &str, now: Timestamp) -> Result<(), Error> {
        self.conn()?.execute(
            "UPDATE upgrades SET processed_at = $3 WHERE store = $1 AND upgrade = $2",
            &[&store, &upgrade, &now],
        )?;
        Ok(())
    }

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
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO reports (store, upgrade, received, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (store, upgrade) DO UPDATE
             SET received = excluded.received, body = excluded.body",
            &[&store, &upgrade, &now, &report.to_string()],
        )?;
        tx.execute(
            "DELETE FROM reports WHERE store = $1 AND id NOT IN
             (SELECT id FROM reports WHERE store = $1 ORDER BY id DESC LIMIT $2)",
            &[&store, &KEEP_REPORTS],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn reports(&self, store: &str) -> Result<Vec<ReportRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT received, body FROM reports WHERE store = $1 ORDER BY id",
            &[&store],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ReportRow {
                    store: store.to_owned(),
                    received: r.get(0),
                    report: serde_json::from_str(r.get::<_, &str>(1)).map_err(corrupt)?,
                })
            })
            .collect()
    }

    fn unreported_upgrades(&self, since: Timestamp) -> Result<Vec<UpgradeRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT u.store, u.upgrade, u.backup_at, u.processed_at FROM upgrades u
             WHERE u.backup_at >= $1 AND NOT EXISTS (
                 SELECT 1 FROM reports r WHERE r.store = u.store AND r.upgrade = u.upgrade
             )
             ORDER BY u.backup_at DESC",
            &[&since],
        )?;
        Ok(rows
            .iter()
            .map(|r| UpgradeRow {
                store: r.get(0),
                upgrade: r.get(1),
                backup_at: r.get(2),
                processed_at: r.get(3),
            })
            .collect())
    }

    fn add_person(&self, p: &PersonRow) -> Result<(), Error> {
        let added = self.conn()?.execute(
            "INSERT INTO people (name, role, password, created, disabled)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            &[
                &p.name,
                &p.role.as_str(),
                &p.password,
                &p.created,
                &p.disabled,
            ],
        )?;
        if added == 0 {
            return Err(Error::PersonExists(p.name.clone()));
        }
        Ok(())
    }

    fn person(&self, name: &str) -> Result<Option<PersonRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT name, role, password, created, disabled FROM people WHERE name = $1",
            &[&name],
        )?;
        rows.iter().map(person_row).next().transpose()
    }

    fn people(&self) -> Result<Vec<PersonRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT name, role, password, created, disabled FROM people ORDER BY name",
            &[],
        )?;
        rows.iter().map(person_row).collect()
    }

    fn disable_person(&self, name: &str, now: Timestamp) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let found = tx.execute(
            "UPDATE people SET disabled = COALESCE(disabled, $2) WHERE name = $1",
            &[&name, &now],
        )?;
        if found == 0 {
            return Err(Error::UnknownPerson(name.to_owned()));
        }
        tx.execute("DELETE FROM sessions WHERE person = $1", &[&name])?;
        tx.commit()?;
        Ok(())
    }

    fn add_session(
        &self,
        token_sha256: &str,
        session: &SessionRow,
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute("DELETE FROM sessions WHERE expires <= $1", &[&now])?;
        tx.execute(
            "INSERT INTO sessions (token_sha256, person, csrf, expires) VALUES ($1, $2, $3, $4)",
            &[
                &token_sha256,
                &session.person,
                &session.csrf,
                &session.expires,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn session(&self, token_sha256: &str, now: Timestamp) -> Result<Option<SessionRow>, Error> {
        let row = self.conn()?.query_opt(
            "SELECT s.person, p.role, s.csrf, s.expires FROM sessions s
             JOIN people p ON p.name = s.person
             WHERE s.token_sha256 = $1 AND p.disabled IS NULL AND s.expires > $2",
            &[&token_sha256, &now],
        )?;
        row.map(|r| {
            Ok(SessionRow {
                person: r.get(0),
                role: r.get::<_, &str>(1).parse::<Role>().map_err(corrupt)?,
                csrf: r.get(2),
                expires: r.get(3),
            })
        })
        .transpose()
    }

    fn end_session(&self, token_sha256: &str) -> Result<(), Error> {
        self.conn()?.execute(
            "DELETE FROM sessions WHERE token_sha256 = $1",
            &[&token_sha256],
        )?;
        Ok(())
    }

    fn record_audit(&self, e: &AuditRow) -> Result<(), Error> {
        self.conn()?.execute(
            "INSERT INTO audit (at, who, action, subject) VALUES ($1, $2, $3, $4)",
            &[&e.at, &e.who, &e.action, &e.subject],
        )?;
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT at, who, action, subject FROM audit ORDER BY id DESC LIMIT $1",
            &[&(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                at: r.get(0),
                who: r.get(1),
                action: r.get(2),
                subject: r.get(3),
            })
            .collect())
    }

    fn add_rollout(&self, r: &RolloutRow) -> Result<(), Error> {
        self.conn()?.execute(
            "INSERT INTO rollouts (id, channel, version, plan, waves, state, created)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &r.id,
                &r.channel,
                &r.version.to_string(),
                &to_json(&r.plan)?,
                &to_json(&r.waves)?,
                &to_json(&r.state)?,
                &r.created,
            ],
        )?;
        Ok(())
    }

    fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT id, channel, version, plan, waves, state, created FROM rollouts WHERE id = $1",
            &[&id],
        )?;
        rows.iter().map(rollout_row).next().transpose()
    }

    fn rollouts(&self) -> Result<Vec<RolloutRow>, Error> {
        let rows = self.conn()?.query(
            "SELECT id, channel, version, plan, waves, state, created FROM rollouts
             ORDER BY created DESC, id",
            &[],
        )?;
        rows.iter().map(rollout_row).collect()
    }

    fn save_rollout(&self, id: &str, was: &Rollout, now: &Rollout) -> Result<bool, Error> {
        let changed = self.conn()?.execute(
            "UPDATE rollouts SET state = $3 WHERE id = $1 AND state = $2",
            &[&id, &to_json(was)?, &to_json(now)?],
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
        let changed = self.conn()?.execute(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.holder = excluded.holder OR leases.until < $4",
            &[&name, &holder, &until, &now],
        )?;
        Ok(changed == 1)
    }
}

fn releases_of(
    conn: &mut impl postgres::GenericClient,
    channel: &str,
) -> Result<Vec<Release>, Error> {
    let rows = conn.query("SELECT json FROM releases WHERE channel = $1", &[&channel])?;
    let mut out: Vec<Release> = rows
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt))
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(out)
}

fn person_row(r: &postgres::Row) -> Result<PersonRow, Error> {
    Ok(PersonRow {
        name: r.get(0),
        role: r.get::<_, &str>(1).parse::<Role>().map_err(corrupt)?,
        password: r.get(2),
        created: r.get(3),
        disabled: r.get(4),
    })
}

fn rollout_row(r: &postgres::Row) -> Result<RolloutRow, Error> {
    Ok(RolloutRow {
        id: r.get(0),
        channel: r.get(1),
        version: r.get::<_, &str>(2).parse().map_err(corrupt)?,
        plan: serde_json::from_str(r.get(3)).map_err(corrupt)?,
        waves: serde_json::from_str(r.get(4)).map_err(corrupt)?,
        state: serde_json::from_str(r.get(5)).map_err(corrupt)?,
        created: r.get(6),
    })
}
