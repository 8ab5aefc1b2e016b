//! SQLite persistence for an Atmosphere node.
//!
//! A [`Store`] wraps one [`rusqlite::Connection`] to a database file (or an
//! in-memory database for tests). It keeps everything a node must remember
//! across restarts: its identity keypair, small settings, the meshes it belongs
//! to with their members and invites, and the peers it has seen together with
//! the addresses they were reached at.
//!
//! Every call is synchronous and short; a [`Store`] is [`Send`] but not
//! [`Sync`], so share it behind a mutex or give it to one task. Several
//! [`Store`]s (even in several processes) may open the same file: the database
//! runs in WAL mode with a 5 second busy timeout, and every read-modify-write
//! (such as [`Store::redeem_invite`]) runs in one `IMMEDIATE` transaction.
//!
//! Errors are [`StoreError`]s; SQLite's "disk full", "not a database" and
//! "corrupt" results get their own variants so callers can tell the user what
//! is wrong.
//!
//! # Schema
//!
//! The schema is versioned with `PRAGMA user_version` (see [`SCHEMA_VERSION`]).
//! [`Store::open`] applies the missing migration steps, each in its own
//! transaction, and refuses a database written by a newer build
//! ([`StoreError::TooNew`]). Version 1:
//!
//! | table | columns | key and constraints |
//! | --- | --- | --- |
//! | `identity` | `id INTEGER`, `keypair BLOB` | one row, `id = 1`; the libp2p keypair in protobuf encoding |
//! | `settings` | `key TEXT`, `value TEXT` | primary key `key` |
//! | `meshes` | `id TEXT`, `name TEXT`, `founder_key BLOB`, `nonce BLOB`, `is_founder INTEGER` (0/1), `certificate BLOB`, `joined_at INTEGER` | primary key `id` |
//! | `members` | `mesh_id TEXT`, `peer_id TEXT`, `certificate BLOB`, `updated_at INTEGER` | primary key `(mesh_id, peer_id)`; `mesh_id` references `meshes(id) ON DELETE CASCADE`; index on `peer_id` |
//! | `invites` | `mesh_id TEXT`, `secret_hash BLOB` (32 bytes), `uses_left INTEGER` (≥ 0), `expires_at INTEGER`, `created_at INTEGER`, `permissions BLOB` | primary key `(mesh_id, secret_hash)`; `mesh_id` references `meshes(id) ON DELETE CASCADE`; index on `expires_at` |
//! | `peers` | `peer_id TEXT`, `name TEXT NULL`, `last_seen INTEGER` | primary key `peer_id` |
//! | `endpoints` | `peer_id TEXT`, `addr TEXT`, `last_success INTEGER NULL`, `latency_ms INTEGER NULL` | primary key `(peer_id, addr)`; at most [`MAX_ENDPOINTS_PER_PEER`] rows per peer |
//!
//! Version 2 adds `meshes.auto_reconnect INTEGER` (0/1, default 1). Version 3
//! rewrites `endpoints.addr` without the peer's own `/p2p/<peer id>` suffix
//! (the form the node saves since).
//!
//! Times are unix seconds. Ids are strings (mesh ids, libp2p peer ids in their
//! base58 text form); keys, certificates and permissions are opaque blobs. The
//! `endpoints` and `peers` tables are independent: an endpoint may be recorded
//! for a peer that has no `peers` row.

mod migrations;
mod records;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction,
    TransactionBehavior,
};

pub use migrations::SCHEMA_VERSION;
pub use records::{
    EndpointRecord, InviteRecord, MemberRecord, MeshRecord, PeerRecord, RedeemRefusal,
};

/// The most endpoints kept per peer; beyond it the least useful are deleted
/// (never-succeeded ones first, then those with the oldest success).
pub const MAX_ENDPOINTS_PER_PEER: usize = 16;

/// How long a call waits for another connection's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The path reported in errors for an in-memory store.
const MEMORY_PATH: &str = ":memory:";

/// An error from the [`Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the database's size limit) is full; nothing was written.
    #[error("the store's disk is full: {0}")]
    DiskFull(String),
    /// The database file is not a database, or is corrupt.
    #[error("the store at {path} is corrupt or not an Atmosphere database: {reason}")]
    Corrupt {
        /// The database file's path.
        path: String,
        /// What SQLite (or the store) found wrong.
        reason: String,
    },
    /// The database was written by a newer version of Atmosphere.
    #[error("the store has schema version {found}, newer than this build supports ({supported})")]
    TooNew {
        /// The schema version found in the file.
        found: u32,
        /// The newest schema version this build knows ([`SCHEMA_VERSION`]).
        supported: u32,
    },
    /// Any other SQLite error.
    #[error("store error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// Creating the data directory or opening the file failed.
    #[error("cannot open the store at {path}: {source}")]
    Io {
        /// The path that could not be created or opened.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Classifies a SQLite error from the database at `path`: "disk full"
    /// becomes [`StoreError::DiskFull`], "not a database" and "corrupt" become
    /// [`StoreError::Corrupt`], anything else [`StoreError::Sqlite`].
    pub fn from_sqlite(path: &str, err: rusqlite::Error) -> StoreError {
        match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => {
                tracing::warn!(path, error = %err, "store disk full");
                StoreError::DiskFull(err.to_string())
            }
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                tracing::error!(path, error = %err, "store corrupt");
                StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: err.to_string(),
                }
            }
            _ => StoreError::Sqlite(err),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Classifies like [`StoreError::from_sqlite`], without a known path.
    fn from(err: rusqlite::Error) -> StoreError {
        StoreError::from_sqlite("<unknown>", err)
    }
}

/// The node's persistent state, in one SQLite database.
#[derive(Debug)]
pub struct Store {
    /// The open connection; configured and migrated by [`Store::open`].
    conn: Connection,
    /// The database's path as text, for error messages.
    path: String,
}

impl Store {
    /// Opens the database file at `path`, creating it (and its parent
    /// directories) if needed, and brings its schema up to date.
    ///
    /// The connection uses the WAL journal, a 5 second busy timeout and
    /// enforced foreign keys. Fails with [`StoreError::Io`] if the directory or
    /// file cannot be created or opened, [`StoreError::Corrupt`] if the file is
    /// not an SQLite database, and [`StoreError::TooNew`] if a newer build
    /// wrote it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let io_err = |source: std::io::Error| StoreError::Io {
            path: shown.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        // Open (or create) the file ourselves first so that permission
        // problems, a directory in the way, etc. surface as real I/O errors
        // rather than SQLite's generic "unable to open database file".
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|err| {
            match err.sqlite_error_code() {
                Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                    io_err(std::io::Error::other(err))
                }
                _ => StoreError::from_sqlite(&shown, err),
            }
        })?;
        Store::init(conn, shown)
    }

    /// Opens a fresh, empty in-memory database with the current schema.
    ///
    /// Nothing is persisted; meant for tests and throwaway nodes.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|err| StoreError::from_sqlite(MEMORY_PATH, err))?;
        Store::init(conn, MEMORY_PATH.to_owned())
    }

    /// Configures a freshly opened connection and migrates its schema.
    fn init(conn: Connection, path: String) -> Result<Store, StoreError> {
        let store = Store { conn, path };
        store.configure().map_err(|err| store.err(err))?;
        match migrations::migrate(&store.conn).map_err(|err| store.err(err))? {
            migrations::Version::Known(version) => {
                tracing::debug!(path = %store.path, version, "store opened");
                Ok(store)
            }
            migrations::Version::TooNew(found) => {
                tracing::error!(
                    path = %store.path,
                    found,
                    supported = SCHEMA_VERSION,
                    "store schema too new"
                );
                Err(StoreError::TooNew {
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            migrations::Version::Invalid(raw) => Err(StoreError::Corrupt {
                path: store.path.clone(),
                reason: format!("invalid schema version {raw}"),
            }),
        }
    }

    /// Sets the connection's pragmas. The first statement that reads the file
    /// is here, so a non-database file fails here with `NotADatabase`.
    fn configure(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            self.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if self.path != MEMORY_PATH && !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %self.path, mode, "store could not switch to WAL journal");
        }
        self.conn.pragma_update(None, "foreign_keys", true)?;
        Ok(())
    }

    /// Classifies a SQLite error from this store's database.
    fn err(&self, err: rusqlite::Error) -> StoreError {
        StoreError::from_sqlite(&self.path, err)
    }

    /// Runs `f` on the connection, classifying its error.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn).map_err(|err| self.err(err))
    }

    /// Runs `f` in one `IMMEDIATE` transaction, committed if `f` succeeds and
    /// rolled back otherwise.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.with(|conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    /// The database's schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let raw = self.with(migrations::raw_user_version)?;
        u32::try_from(raw).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("invalid schema version {raw}"),
        })
    }

    // --- identity -------------------------------------------------------

    /// The node's libp2p keypair (protobuf encoding), if one was saved.
    pub fn load_identity(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT keypair FROM identity WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
        })
    }

    /// Saves the node's libp2p keypair (protobuf encoding), replacing any
    /// previous one.
    pub fn save_identity(&self, keypair_protobuf: &[u8]) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO identity (id, keypair) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET keypair = excluded.keypair",
                params![keypair_protobuf],
            )
        })?;
        tracing::debug!("store saved identity");
        Ok(())
    }

    // --- settings -------------------------------------------------------

    /// The value of setting `key`, if set.
    pub fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
        })
    }

    /// Sets setting `key` to `value`, replacing any previous value.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
        })?;
        Ok(())
    }

    // --- meshes ---------------------------------------------------------

    /// Saves a mesh, inserting it or replacing the saved mesh with that id.
    ///
    /// Replacing updates the row in place: the mesh's members and invites are
    /// kept.
    pub fn save_mesh(&self, mesh: &MeshRecord) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO meshes (id, name, founder_key, nonce, is_founder, certificate, joined_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET
                     name = excluded.name,
                     founder_key = excluded.founder_key,
                     nonce = excluded.nonce,
                     is_founder = excluded.is_founder,
                     certificate = excluded.certificate,
                     joined_at = excluded.joined_at",
                params![
                    mesh.id,
                    mesh.name,
                    mesh.founder_key,
                    mesh.nonce,
                    mesh.is_founder,
                    mesh.certificate,
                    mesh.joined_at
                ],
            )
        })?;
        tracing::debug!(mesh = %mesh.id, "store saved mesh");
        Ok(())
    }

    /// The saved mesh with id `id`, if any.
    pub fn mesh(&self, id: &str) -> Result<Option<MeshRecord>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT id, name, founder_key, nonce, is_founder, certificate, joined_at
                 FROM meshes WHERE id = ?1",
                params![id],
                mesh_from_row,
            )
            .optional()
        })
    }

    /// Every saved mesh, ordered by `joined_at`, then `id`.
    pub fn meshes(&self) -> Result<Vec<MeshRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, name, founder_key, nonce, is_founder, certificate, joined_at
                 FROM meshes ORDER BY joined_at, id",
            )?;
            let rows = stmt.query_map([], mesh_from_row)?;
            rows.collect()
        })
    }

    /// Turns reconnection to the mesh's members on or off; returns whether
    /// the mesh exists.
    pub fn set_auto_reconnect(&self, id: &str, on: bool) -> Result<bool, StoreError> {
        let changed = self.with(|conn| {
            conn.execute(
                "UPDATE meshes SET auto_reconnect = ?2 WHERE id = ?1",
                params![id, on],
            )
        })?;
        Ok(changed > 0)
    }

    /// Whether the node reconnects to the mesh's members by itself (`None`
    /// if the mesh is not saved).
    pub fn auto_reconnect(&self, id: &str) -> Result<Option<bool>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT auto_reconnect FROM meshes WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()
        })
    }

    /// Removes the mesh, its members, its invites, in one transaction. Returns
    /// whether it existed.
    pub fn delete_mesh(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.write(|tx| {
            // Explicit deletes, so the outcome does not depend on the
            // foreign-key cascade alone.
            tx.execute("DELETE FROM members WHERE mesh_id = ?1", params![id])?;
            tx.execute("DELETE FROM invites WHERE mesh_id = ?1", params![id])?;
            Ok(tx.execute("DELETE FROM meshes WHERE id = ?1", params![id])? > 0)
        })?;
        tracing::debug!(mesh = %id, existed, "store deleted mesh");
        Ok(existed)
    }

    // --- members --------------------------------------------------------

    /// Saves (inserts or replaces) the certificate of `peer_id` in mesh
    /// `mesh_id`, stamped with `now`.
    ///
    /// The mesh must be saved first: otherwise the foreign key fails and this
    /// returns [`StoreError::Sqlite`].
    pub fn save_member(
        &self,
        mesh_id: &str,
        peer_id: &str,
        certificate: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO members (mesh_id, peer_id, certificate, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (mesh_id, peer_id) DO UPDATE SET
                     certificate = excluded.certificate,
                     updated_at = excluded.updated_at",
                params![mesh_id, peer_id, certificate, now],
            )
        })?;
        Ok(())
    }

    /// The members of mesh `mesh_id`, ordered by peer id.
    pub fn members(&self, mesh_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT mesh_id, peer_id, certificate, updated_at
                 FROM members WHERE mesh_id = ?1 ORDER BY peer_id",
            )?;
            let rows = stmt.query_map(params![mesh_id], |row| {
                Ok(MemberRecord {
                    mesh_id: row.get(0)?,
                    peer_id: row.get(1)?,
                    certificate: row.get(2)?,
                    updated_at: row.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Every peer that is a member of at least one saved mesh (distinct peer
    /// ids, sorted).
    pub fn member_peer_ids(&self) -> Result<Vec<String>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT DISTINCT members.peer_id FROM members
                 JOIN meshes ON meshes.id = members.mesh_id
                 ORDER BY members.peer_id",
            )?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            rows.collect()
        })
    }

    // --- invites --------------------------------------------------------

    /// Saves a new invite.
    ///
    /// Fails with [`StoreError::Sqlite`] if its mesh is not saved or an invite
    /// with the same secret hash already exists for that mesh.
    pub fn create_invite(&self, invite: &InviteRecord) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO invites (mesh_id, secret_hash, uses_left, expires_at, created_at, permissions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    invite.mesh_id,
                    invite.secret_hash,
                    invite.uses_left,
                    invite.expires_at,
                    invite.created_at,
                    invite.permissions
                ],
            )
        })?;
        tracing::debug!(
            mesh = %invite.mesh_id,
            uses = invite.uses_left,
            expires_at = invite.expires_at,
            "store created invite"
        );
        Ok(())
    }

    /// Atomically (one IMMEDIATE transaction) checks and consumes one use.
    ///
    /// Order of checks: no row for that hash and mesh → [`RedeemRefusal::Unknown`];
    /// `expires_at <= now` → [`RedeemRefusal::Expired`]; `uses_left == 0` →
    /// [`RedeemRefusal::Exhausted`]; else decrements `uses_left` and returns
    /// the record as it is after the decrement. A refusal changes nothing.
    pub fn redeem_invite(
        &self,
        mesh_id: &str,
        secret_hash: &[u8; 32],
        now: i64,
    ) -> Result<Result<InviteRecord, RedeemRefusal>, StoreError> {
        let outcome = self.write(|tx| {
            let found = tx
                .query_row(
                    "SELECT secret_hash, mesh_id, uses_left, expires_at, created_at, permissions
                     FROM invites WHERE mesh_id = ?1 AND secret_hash = ?2",
                    params![mesh_id, secret_hash],
                    invite_from_row,
                )
                .optional()?;
            let Some(mut invite) = found else {
                return Ok(Err(RedeemRefusal::Unknown));
            };
            if invite.expires_at <= now {
                return Ok(Err(RedeemRefusal::Expired));
            }
            let Some(remaining) = invite.uses_left.checked_sub(1) else {
                return Ok(Err(RedeemRefusal::Exhausted));
            };
            tx.execute(
                "UPDATE invites SET uses_left = ?3 WHERE mesh_id = ?1 AND secret_hash = ?2",
                params![mesh_id, secret_hash, remaining],
            )?;
            invite.uses_left = remaining;
            Ok(Ok(invite))
        })?;
        match &outcome {
            Ok(invite) => {
                tracing::debug!(
                    mesh = %mesh_id,
                    uses_left = invite.uses_left,
                    "store redeemed invite"
                )
            }
            Err(refusal) => {
                tracing::debug!(mesh = %mesh_id, %refusal, "store refused invite")
            }
        }
        Ok(outcome)
    }

    /// The invites of mesh `mesh_id`, oldest first (by `created_at`, then
    /// secret hash).
    pub fn invites(&self, mesh_id: &str) -> Result<Vec<InviteRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT secret_hash, mesh_id, uses_left, expires_at, created_at, permissions
                 FROM invites WHERE mesh_id = ?1 ORDER BY created_at, secret_hash",
            )?;
            let rows = stmt.query_map(params![mesh_id], invite_from_row)?;
            rows.collect()
        })
    }

    /// Deletes invites expired before `now` or with no uses left; returns how
    /// many.
    ///
    /// "Expired" means what [`Store::redeem_invite`] refuses as expired:
    /// `expires_at <= now`.
    pub fn prune_invites(&self, now: i64) -> Result<usize, StoreError> {
        let pruned = self.with(|conn| {
            conn.execute(
                "DELETE FROM invites WHERE expires_at <= ?1 OR uses_left <= 0",
                params![now],
            )
        })?;
        if pruned > 0 {
            tracing::debug!(pruned, "store pruned invites");
        }
        Ok(pruned)
    }

    // --- peers ----------------------------------------------------------

    /// Records that `peer_id` was seen at `now`: inserts the peer or sets its
    /// `last_seen` to `now`. The name is set only when `name` is `Some`; `None`
    /// keeps the saved name.
    pub fn upsert_peer(
        &self,
        peer_id: &str,
        name: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO peers (peer_id, name, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer_id) DO UPDATE SET
                     name = coalesce(excluded.name, peers.name),
                     last_seen = excluded.last_seen",
                params![peer_id, name, now],
            )
        })?;
        Ok(())
    }

    /// The saved peer `peer_id`, if any.
    pub fn peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT peer_id, name, last_seen FROM peers WHERE peer_id = ?1",
                params![peer_id],
                peer_from_row,
            )
            .optional()
        })
    }

    /// Every saved peer, most recently seen first (then by peer id).
    pub fn peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT peer_id, name, last_seen FROM peers ORDER BY last_seen DESC, peer_id",
            )?;
            let rows = stmt.query_map([], peer_from_row)?;
            rows.collect()
        })
    }

    // --- endpoints ------------------------------------------------------

    /// Records a successful connection over `addr`: inserts or updates
    /// `last_success` (and latency when `Some`; `None` keeps the saved
    /// latency). Keeps at most [`MAX_ENDPOINTS_PER_PEER`] per peer: the ones
    /// with the oldest `last_success` (never-succeeded ones first) are deleted.
    pub fn record_endpoint_success(
        &self,
        peer_id: &str,
        addr: &str,
        now: i64,
        latency_ms: Option<u32>,
    ) -> Result<(), StoreError> {
        let evicted = self.write(|tx| {
            tx.execute(
                "INSERT INTO endpoints (peer_id, addr, last_success, latency_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (peer_id, addr) DO UPDATE SET
                     last_success = excluded.last_success,
                     latency_ms = coalesce(excluded.latency_ms, endpoints.latency_ms)",
                params![peer_id, addr, now, latency_ms],
            )?;
            bound_endpoints(tx, peer_id)
        })?;
        if evicted > 0 {
            tracing::debug!(peer = %peer_id, evicted, "store evicted endpoints");
        }
        Ok(())
    }

    /// Adds an endpoint learned but not yet used (`last_success` NULL) unless
    /// it already exists; same bound as
    /// [`record_endpoint_success`](Store::record_endpoint_success).
    ///
    /// Endpoints that have succeeded are preferred to learned ones: when a
    /// peer already has [`MAX_ENDPOINTS_PER_PEER`] endpoints that all
    /// succeeded, the new one is dropped at once; among never-succeeded ones
    /// the most recently added are kept.
    pub fn add_endpoint(&self, peer_id: &str, addr: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            let inserted = tx.execute(
                "INSERT INTO endpoints (peer_id, addr, last_success, latency_ms)
                 VALUES (?1, ?2, NULL, NULL)
                 ON CONFLICT (peer_id, addr) DO NOTHING",
                params![peer_id, addr],
            )?;
            if inserted > 0 {
                bound_endpoints(tx, peer_id)?;
            }
            Ok(())
        })
    }

    /// Endpoints of a peer, most recent success first, never-succeeded last
    /// (those most recently added first).
    pub fn endpoints(&self, peer_id: &str) -> Result<Vec<EndpointRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT peer_id, addr, last_success, latency_ms FROM endpoints
                 WHERE peer_id = ?1
                 ORDER BY last_success DESC NULLS LAST, rowid DESC",
            )?;
            let rows = stmt.query_map(params![peer_id], |row| {
                Ok(EndpointRecord {
                    peer_id: row.get(0)?,
                    addr: row.get(1)?,
                    last_success: row.get(2)?,
                    latency_ms: row.get(3)?,
                })
            })?;
            rows.collect()
        })
    }
}

/// Deletes the endpoints of `peer_id` beyond the first
/// [`MAX_ENDPOINTS_PER_PEER`] in [`Store::endpoints`] order; returns how many.
fn bound_endpoints(tx: &Transaction<'_>, peer_id: &str) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM endpoints WHERE peer_id = ?1 AND rowid NOT IN (
             SELECT rowid FROM endpoints WHERE peer_id = ?1
             ORDER BY last_success DESC NULLS LAST, rowid DESC
             LIMIT ?2)",
        params![peer_id, MAX_ENDPOINTS_PER_PEER as i64],
    )
}

/// Reads a [`MeshRecord`] from `id, name, founder_key, nonce, is_founder,
/// certificate, joined_at`.
fn mesh_from_row(row: &Row<'_>) -> rusqlite::Result<MeshRecord> {
    Ok(MeshRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        founder_key: row.get(2)?,
        nonce: row.get(3)?,
        is_founder: row.get(4)?,
        certificate: row.get(5)?,
        joined_at: row.get(6)?,
    })
}

/// Reads an [`InviteRecord`] from `secret_hash, mesh_id, uses_left,
/// expires_at, created_at, permissions`.
fn invite_from_row(row: &Row<'_>) -> rusqlite::Result<InviteRecord> {
    Ok(InviteRecord {
        secret_hash: row.get(0)?,
        mesh_id: row.get(1)?,
        uses_left: row.get(2)?,
        expires_at: row.get(3)?,
        created_at: row.get(4)?,
        permissions: row.get(5)?,
    })
}

/// Reads a [`PeerRecord`] from `peer_id, name, last_seen`.
fn peer_from_row(row: &Row<'_>) -> rusqlite::Result<PeerRecord> {
    Ok(PeerRecord {
        peer_id: row.get(0)?,
        name: row.get(1)?,
        last_seen: row.get(2)?,
    })
}
