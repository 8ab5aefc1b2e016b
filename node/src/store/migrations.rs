//! Versioned schema migrations, tracked with `PRAGMA user_version`.
//!
//! [`MIGRATIONS`] is an ordered list of SQL batches: entry `i` takes the
//! database from version `i` to version `i + 1`. [`migrate`] applies every step
//! above the database's current version, each one inside its own `IMMEDIATE`
//! transaction together with the matching `user_version` bump, so a crash (or a
//! concurrent opener) never leaves a half-applied step behind.
//!
//! Steps are append-only: once released, a step's SQL must never change; a
//! schema change is a new step at the end of the list.

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// Version 1: every table of the initial schema (see the `store` module docs).
const V1: &str = "
CREATE TABLE identity (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    keypair BLOB    NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE meshes (
    id          TEXT    PRIMARY KEY NOT NULL,
    name        TEXT    NOT NULL,
    founder_key BLOB    NOT NULL,
    nonce       BLOB    NOT NULL,
    is_founder  INTEGER NOT NULL CHECK (is_founder IN (0, 1)),
    certificate BLOB    NOT NULL,
    joined_at   INTEGER NOT NULL
);

CREATE TABLE members (
    mesh_id     TEXT    NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    peer_id     TEXT    NOT NULL,
    certificate BLOB    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (mesh_id, peer_id)
);
CREATE INDEX members_by_peer ON members (peer_id);

CREATE TABLE invites (
    mesh_id     TEXT    NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    secret_hash BLOB    NOT NULL CHECK (length(secret_hash) = 32),
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    permissions BLOB    NOT NULL,
    PRIMARY KEY (mesh_id, secret_hash)
);
CREATE INDEX invites_by_expiry ON invites (expires_at);

CREATE TABLE peers (
    peer_id   TEXT    PRIMARY KEY NOT NULL,
    name      TEXT,
    last_seen INTEGER NOT NULL
);

CREATE TABLE endpoints (
    peer_id      TEXT    NOT NULL,
    addr         TEXT    NOT NULL,
    last_success INTEGER,
    latency_ms   INTEGER CHECK (latency_ms IS NULL OR latency_ms >= 0),
    PRIMARY KEY (peer_id, addr)
);
";

/// Version 2: whether the node reconnects to a mesh's members by itself.
const V2: &str = "
ALTER TABLE meshes ADD COLUMN auto_reconnect INTEGER NOT NULL DEFAULT 1
    CHECK (auto_reconnect IN (0, 1));
";

/// Version 3: endpoints are saved without the peer's own `/p2p/<peer id>`
/// suffix (one row per address); rows written with it are folded into the
/// bare form, or dropped where the bare form exists already.
const V3: &str = "
UPDATE OR IGNORE endpoints
    SET addr = substr(addr, 1, length(addr) - length('/p2p/' || peer_id))
    WHERE addr LIKE '%/p2p/' || peer_id;
DELETE FROM endpoints WHERE addr LIKE '%/p2p/' || peer_id;
";

/// The ordered migration steps; entry `i` upgrades version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build creates and understands: the number of steps.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// What reading `PRAGMA user_version` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// A version this build can open (possibly after migrating).
    Known(u32),
    /// A version newer than [`SCHEMA_VERSION`].
    TooNew(u32),
    /// A negative `user_version`, which no Atmosphere build ever writes.
    Invalid(i64),
}

/// Reads `PRAGMA user_version` as a raw integer.
pub(crate) fn raw_user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
}

/// Classifies the database's `user_version`.
pub(crate) fn classify_version(raw: i64) -> Version {
    match u32::try_from(raw) {
        Ok(v) if v > SCHEMA_VERSION => Version::TooNew(v),
        Ok(v) => Version::Known(v),
        Err(_) => Version::Invalid(raw),
    }
}

/// Applies every migration step above the database's current version.
///
/// Returns the version found inside the last transaction if it is not one this
/// build can handle (newer or invalid), so the caller can refuse the database;
/// `Ok(Version::Known(SCHEMA_VERSION))` when the schema is up to date.
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<Version> {
    // Fast path without taking the write lock: nothing to do, or nothing we may do.
    match classify_version(raw_user_version(conn)?) {
        Version::Known(current) if current < SCHEMA_VERSION => {}
        other => return Ok(other),
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = index as u32 + 1;
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        // Re-read inside the write lock: another process may have migrated
        // (or upgraded the file) since we last looked.
        match classify_version(raw_user_version(&tx)?) {
            Version::Known(current) if current >= target => {
                tx.rollback()?;
                continue;
            }
            Version::Known(_) => {}
            other => {
                tx.rollback()?;
                return Ok(other);
            }
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", target)?;
        tx.commit()?;
        tracing::info!(version = target, "store schema migrated");
    }
    Ok(classify_version(raw_user_version(conn)?))
}
