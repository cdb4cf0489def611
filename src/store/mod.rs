//! All SQL lives here: opening a database file (identity check, per-connection pragmas, forward
//! migrations), the write transaction type handed to the engine, the read connection pool, the
//! writer thread, and the row ↔ model functions. This is the only module that names `rusqlite`.

pub mod attack;
pub mod bench;
#[cfg(test)]
mod plans;
mod queries;
mod scan;
mod signatures;
mod writer;

pub use queries::*;
/// The write connection `open_for_writing` returns, named here so no other layer names `rusqlite`.
pub use rusqlite::Connection;
pub use scan::*;
pub use signatures::*;
pub use writer::{write_once, Busy, Job, Writer};

use rusqlite::{OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The schema version this binary writes; `PRAGMA user_version` of an up-to-date database.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `PRAGMA application_id` of a fedcore database ('FEDC').
const APPLICATION_ID: i64 = 0x4645_4443;

/// The ordered list of migrations; `user_version` counts how many were applied. Never remove or
/// reorder an entry: only append.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema.sql"),
    include_str!("../../migrations/002_trust.sql"),
    include_str!("../../migrations/003_signing.sql"),
    include_str!("../../migrations/004_plans.sql"),
    include_str!("../../migrations/005_audit_log_without_entry_hash_index.sql"),
    include_str!("../../migrations/006_evidence_in_insertion_order.sql"),
];

/// The write connection `open_for_writing` returns, named for layers that must not name rusqlite.
pub type WriteConnection = Connection;

/// How many idle read connections the pool keeps.
const MAX_IDLE_READERS: usize = 16;

/// How long a statement waits for a lock another connection holds before failing busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path} is not a fedcore database ({why}); it was left untouched")]
    NotFedcore { path: PathBuf, why: String },
    #[error("{path} has schema version {found}, newer than this binary's {supported}")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("stored data is not what fedcore wrote: {0}")]
    Corrupt(String),
    /// A row that cannot be read back as the object fedcore wrote (a wrong type, an unknown
    /// status, a timestamp in another spelling); `key` names the row as `verify` reports it.
    #[error("{table} row {key} is not what fedcore wrote: {why}")]
    BadRow {
        table: &'static str,
        key: String,
        why: String,
    },
    /// Migrations left a row whose foreign key names no row of its parent table; they were
    /// rolled back, so the file is as it was.
    #[error(
        "{path}: migrating to schema version {version} would leave {n_rows} row(s) of {table} \
         naming a missing row of {parent}; nothing was changed"
    )]
    DanglingReference {
        path: PathBuf,
        version: i64,
        table: String,
        parent: String,
        n_rows: i64,
    },
    /// A file read without locks (`immutable`, as nobody had it open) was written while it was
    /// read: what was read may mix two states, so nothing of it is reported.
    #[error(
        "{path} changed while it was read: no connection had it open, so it was read without \
         locks, and something (a server starting on it) wrote it meanwhile; what was read cannot \
         be trusted, so nothing is reported. Check again: the file of a running server is read \
         through its WAL"
    )]
    ChangedWhileRead { path: PathBuf },
    /// A file changed since fedcore wrote it, found before migrating it; nothing was changed.
    #[error(
        "{path} is not as fedcore left it ({why}); it was not migrated and its contents were not \
         changed: `fedcore verify --db '{path}'` shows what changed"
    )]
    NotAsWritten { path: PathBuf, why: String },
    /// A file with fedcore's `application_id` and schema objects but `user_version` 0. The first
    /// migration sets all three in one transaction, so the version was reset since, and nothing
    /// tells which migrations the file holds: it is neither migrated nor read (`verify` exits
    /// 2, could not check). Found before anything is written, so nothing was changed.
    #[error(
        "{path} is not as fedcore left it: it has fedcore's application_id and {n_objects} \
         schema objects, but schema version 0 (PRAGMA user_version was reset after fedcore wrote \
         it), so nothing tells which schema version to read or migrate it as; it was refused and \
         its contents were not changed"
    )]
    SchemaVersionReset { path: PathBuf, n_objects: i64 },
    /// A file whose schema objects show a later schema version than its `user_version` (it was
    /// lowered after fedcore wrote the file: every migration sets it in the transaction that
    /// makes its objects). Migrating would run migrations it holds again over their own work, and
    /// reading it as the version it claims would leave out what the later ones added; it is
    /// neither (`verify` exits 2, could not check). Found before anything is written.
    #[error(
        "{path} is not as fedcore left it: its schema objects show schema version {shown}, but it \
         says schema version {found} (PRAGMA user_version was lowered, or its schema objects \
         changed, after fedcore wrote it), so it can be neither read as the version it claims nor migrated (that would run again \
         migrations it already holds); it was refused and its contents were not changed"
    )]
    SchemaVersionLowered {
        path: PathBuf,
        found: i64,
        shown: i64,
    },
    /// The other way round: a `user_version` above what the schema objects show (raised after
    /// fedcore wrote the file). Reading it as that version would query tables and columns that
    /// are not there, and migrating would skip the migrations that make them.
    #[error(
        "{path} is not as fedcore left it: its schema objects show schema version {shown}, but it \
         says schema version {found} (PRAGMA user_version was raised, or its schema objects \
         changed, after fedcore wrote it), so it can be neither read as the version it claims nor migrated (that would skip \
         migrations it does not hold); it was refused and its contents were not changed"
    )]
    SchemaVersionRaised {
        path: PathBuf,
        found: i64,
        shown: i64,
    },
    #[error("the operation panicked and was rolled back")]
    Panicked,
    /// Nobody waited for the job's answer any more when its turn came, so it was not run.
    #[error("nobody waits for the answer any more: not run")]
    Abandoned,
    #[error("the write transaction failed: {0}")]
    Transaction(String),
}

/// A connection the store functions can read through: a write transaction or a read connection.
pub trait Db {
    #[doc(hidden)]
    fn conn(&self) -> &Connection;
    /// The schema version of the file (`PRAGMA user_version`), known when the connection was
    /// opened, so that reads of later columns and tables cost no query each time.
    fn schema_version(&self) -> i64;
    /// Another connection that reads exactly what this one reads, for a second thread: only a
    /// file opened `immutable` has one (nothing can change it between the two), so `None` for
    /// everything else.
    fn sibling(&self) -> Result<Option<Reader>, StoreError> {
        Ok(None)
    }
}

/// The open write transaction of one engine operation. Store functions take it and never commit;
/// the writer thread begins and ends it.
pub struct Tx<'c> {
    conn: &'c Connection,
}

impl Db for Tx<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }
    /// A write transaction only ever runs on a connection `open_for_writing` migrated.
    fn schema_version(&self) -> i64 {
        SCHEMA_VERSION
    }
}

impl Tx<'_> {
    /// Marks a point that `rollback_to_savepoint` can return to without ending the transaction.
    pub fn savepoint(&self, name: &str) -> Result<(), StoreError> {
        Ok(run_cached(
            self.conn,
            &format!("SAVEPOINT {}", savepoint_name(name)),
        )?)
    }

    /// Undoes everything since `savepoint(name)` and forgets the savepoint.
    pub fn rollback_to_savepoint(&self, name: &str) -> Result<(), StoreError> {
        let name = savepoint_name(name);
        run_cached(self.conn, &format!("ROLLBACK TO {name}"))?;
        Ok(run_cached(self.conn, &format!("RELEASE {name}"))?)
    }

    /// Keeps everything since `savepoint(name)` and forgets the savepoint.
    pub fn release_savepoint(&self, name: &str) -> Result<(), StoreError> {
        Ok(run_cached(
            self.conn,
            &format!("RELEASE {}", savepoint_name(name)),
        )?)
    }
}

/// Runs one statement that returns no rows through the connection's statement cache: the
/// transaction and savepoint statements every write runs are parsed once, not once a request.
pub(crate) fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Savepoint names are fixed identifiers chosen by the code, never input; this keeps them so.
fn savepoint_name(name: &str) -> &str {
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "savepoint name"
    );
    name
}

/// How a commit reaches the disk. `Full` (the default) syncs the WAL on every commit: an
/// acknowledged write survives a power cut as far as the disk honours fsync. `Normal` syncs only
/// at WAL checkpoints: faster, and an acknowledged write still survives the process being killed,
/// but the last commits before a power cut may be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Full,
    Normal,
}

impl Durability {
    pub fn parse(text: &str) -> Option<Durability> {
        match text {
            "full" => Some(Durability::Full),
            "normal" => Some(Durability::Normal),
            _ => None,
        }
    }
}

/// Sets how commits on `conn` reach the disk (`open_for_writing` starts at `Full`).
pub fn set_durability(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    let level = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    Ok(())
}

/// Opens (creating if needed) the database at `path` for writing: checks that it is a fedcore
/// database (or a new, empty file) *before* changing anything, sets the pragmas, and applies
/// pending migrations in one exclusive transaction.
pub fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    check_identity(&conn, path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    set_common_pragmas(&conn)?;
    migrate(&conn, path)?;
    // Savepoint journals (one per request in the writer's batch) stay in memory: by default
    // SQLite spills them past 64 KiB to temporary files, a write system call per journaled page.
    // Set after the migrations, whose index builds may need to spill a large sort to disk.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Opens an existing database read-only for inspection (`verify`): never creates, never writes.
/// An empty file is refused too: it is not a fedcore database until the schema is in it.
pub fn open_read_only(path: &Path) -> Result<Reader, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let (conn, immutable) = match immutable_uri(path) {
        Some(uri) => {
            // Taken before opening, so a write between the two is seen too.
            let before = FileState::of(path)?;
            let conn = Connection::open_with_flags(&uri, flags | OpenFlags::SQLITE_OPEN_URI)?;
            let immutable = Immutable {
                uri,
                path: path.to_path_buf(),
                before,
            };
            (conn, Some(immutable))
        }
        None => (Connection::open_with_flags(path, flags)?, None),
    };
    check_identity(&conn, path)?;
    if immutable.is_some() {
        map_in_memory(&conn)?;
    }
    let mut reader = Reader::new(conn)?;
    reader.immutable = immutable;
    if reader.schema_version == 0 {
        return Err(StoreError::NotFedcore {
            path: path.to_path_buf(),
            why: "it holds no fedcore schema".to_string(),
        });
    }
    Ok(reader)
}

/// A file opened `immutable`: how to open it again, and its size and modification time before
/// it was first opened. SQLite takes no lock on such a file and trusts that nothing writes it,
/// which held when it was opened (no `-wal` beside it: no connection had it open) but may not
/// hold throughout: a server starting on it may write it (a checkpoint) while it is read. Every
/// snapshot read from it ends by comparing the file with `before`, and reports nothing when it
/// changed.
#[derive(Clone)]
struct Immutable {
    uri: String,
    path: PathBuf,
    before: FileState,
}

/// What a write to a file changes in its metadata: its length or its modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileState {
    fn of(path: &Path) -> Result<FileState, StoreError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            StoreError::Corrupt(format!("could not read {}'s metadata: {e}", path.display()))
        })?;
        Ok(FileState {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Reads a file opened `immutable` through a memory map (up to SQLite's own cap, 2 GiB unless
/// built otherwise) instead of one read call, and one copy, per page: `verify` reads every page.
/// Only such a file: nobody has it open, so nothing truncates it under the map.
fn map_in_memory(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "mmap_size", 1i64 << 40)?;
    Ok(())
}

/// A read-only connection to a WAL database creates the `-wal` and `-shm` files beside it when
/// they are missing, and cannot remove them. They are missing only when no connection has the
/// database open (a server shuts down by folding the WAL back in), so then the file is opened
/// `immutable`, which reads it without them. A server writing meanwhile keeps its `-wal` file,
/// and is read through it as usual. `None` when the path cannot be written as a URI.
fn immutable_uri(path: &Path) -> Option<String> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        return None;
    }
    let text = path.to_str()?;
    // An empty authority (`file://` before an absolute path) keeps a leading `//` a path.
    let mut uri = String::from(if text.starts_with('/') {
        "file://"
    } else {
        "file:"
    });
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Some(uri)
}

fn set_common_pragmas(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn check_identity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    check_identity_in_one_snapshot(conn, path, || {})
}

/// Reads everything `check_identity` looks at in one read transaction: another process may
/// migrate the file meanwhile (`serve` upgrading it while `token` opens it), and a version read
/// before its commit with objects read after it would look like a version lowered by hand. A
/// deferred BEGIN writes nothing. `between` runs after the version was read (a test's seam).
fn check_identity_in_one_snapshot(
    conn: &Connection,
    path: &Path,
    between: impl FnOnce(),
) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let checked = identity(conn, path, between);
    let ended = conn.execute_batch("COMMIT");
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    checked?;
    Ok(ended?)
}

fn identity(conn: &Connection, path: &Path, between: impl FnOnce()) -> Result<(), StoreError> {
    let not_fedcore = |why: String| StoreError::NotFedcore {
        path: path.to_path_buf(),
        why,
    };
    let application_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| not_fedcore(e.to_string()))?;
    let user_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    between();
    let n_objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if application_id == APPLICATION_ID {
        if user_version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: user_version,
                supported: SCHEMA_VERSION,
            });
        }
        if user_version == 0 && n_objects > 0 {
            // Migrating it from version 0 would run the first migration over the tables already
            // there, and reading it as version 0 would find no schema: say what happened instead.
            return Err(StoreError::SchemaVersionReset {
                path: path.to_path_buf(),
                n_objects,
            });
        }
        if user_version > 0 {
            // Migrating from the lower version would fail on a table already there ("table
            // tokens already exists"), or, where the later migrations only rebuild tables, run
            // them again; reads would follow the lower version. Only reads, so nothing is written.
            let shown = version_of_objects(conn)?;
            if shown > user_version {
                return Err(StoreError::SchemaVersionLowered {
                    path: path.to_path_buf(),
                    found: user_version,
                    shown,
                });
            }
            if shown < user_version {
                return Err(StoreError::SchemaVersionRaised {
                    path: path.to_path_buf(),
                    found: user_version,
                    shown,
                });
            }
        }
        Ok(())
    } else if application_id == 0 && user_version == 0 && n_objects == 0 {
        Ok(()) // A new, empty database: the first migration makes it ours.
    } else {
        Err(not_fedcore(format!(
            "application_id {application_id}, {n_objects} schema objects"
        )))
    }
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    apply_migrations(conn, path, MIGRATIONS)
}

/// Applies the pending ones of `migrations` (the first `user_version` are applied already) in
/// one exclusive transaction, as SQLite documents for changing a table's schema ("ALTER TABLE",
/// "Making Other Kinds Of Table Schema Changes"): `foreign_keys` is turned off before the
/// transaction (inside one the pragma does nothing), so that a table others refer to can be
/// dropped and built again; `PRAGMA foreign_key_check` must then find no row naming a missing
/// parent before COMMIT, or everything is rolled back; and `foreign_keys` is set back to what it
/// was, whatever happened.
fn apply_migrations(conn: &Connection, path: &Path, migrations: &[&str]) -> Result<(), StoreError> {
    let foreign_keys: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let result = migrate_in_one_transaction(conn, path, migrations);
    let restored = conn.pragma_update(None, "foreign_keys", foreign_keys);
    result?;
    restored?;
    Ok(())
}

fn migrate_in_one_transaction(
    conn: &Connection,
    path: &Path,
    migrations: &[&str],
) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN EXCLUSIVE")?;
    let result = (|| {
        let supported = migrations.len() as i64;
        let user_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if user_version > supported {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: user_version,
                supported,
            });
        }
        if user_version == supported {
            // Nothing to migrate, but a writer must not work on a file whose append-only
            // triggers are gone or changed: what it wrote could then be rewritten unseen.
            // (The scan for dangling references is left to migrations and `verify`: it reads
            // every row, which a server's start need not.)
            return refuse_unless_triggers_as_written(conn, path, user_version);
        }
        if user_version > 0 {
            refuse_unless_as_written(conn, path, user_version)?;
        }
        for (i, sql) in migrations.iter().enumerate().skip(user_version as usize) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        check_foreign_keys(conn, path, supported)
    })();
    let result = result.and_then(|()| Ok(conn.execute_batch("COMMIT")?));
    if result.is_err() && !conn.is_autocommit() {
        // The error is what the caller needs to see; a rollback that fails too is left to the
        // connection, which SQLite rolls back when it is closed.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Before migrating a file: its immutability triggers must be exactly those its schema declares,
/// and no row may name a missing parent. A migration that rebuilds a table drops its triggers and
/// declares them again, and its final foreign-key check would blame itself for a reference that
/// was already broken: either way a sign of tampering that `fedcore verify` reports would be
/// mended or misnamed. Such a file is left as it is, for `verify` to show what changed.
fn refuse_unless_as_written(
    conn: &Connection,
    path: &Path,
    user_version: i64,
) -> Result<(), StoreError> {
    refuse_unless_triggers_as_written(conn, path, user_version)?;
    match first_dangling_reference(conn)? {
        None => Ok(()),
        Some((table, parent, n_rows)) => Err(StoreError::NotAsWritten {
            path: path.to_path_buf(),
            why: format!("{n_rows} row(s) of {table} name a row of {parent} that is not there"),
        }),
    }
}

/// The file's immutability triggers must be exactly those its schema version declares.
fn refuse_unless_triggers_as_written(
    conn: &Connection,
    path: &Path,
    user_version: i64,
) -> Result<(), StoreError> {
    let db = Tx { conn };
    for trigger in expected_triggers(&db, user_version)? {
        if let Err(mismatch) = trigger.compared_with(&db)? {
            return Err(StoreError::NotAsWritten {
                path: path.to_path_buf(),
                why: mismatch.why,
            });
        }
    }
    Ok(())
}

/// The first table (with its parent and how many of its rows) that names a missing parent row.
fn first_dangling_reference(
    conn: &Connection,
) -> Result<Option<(String, String, i64)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT \"table\", parent, count(*) FROM pragma_foreign_key_check
             GROUP BY \"table\", parent ORDER BY \"table\", parent LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// Refuses what the migrations leave if a row names, through a foreign key, a parent row that
/// does not exist (they ran with `foreign_keys` off, so nothing checked it as they went).
fn check_foreign_keys(conn: &Connection, path: &Path, version: i64) -> Result<(), StoreError> {
    match first_dangling_reference(conn)? {
        None => Ok(()),
        Some((table, parent, n_rows)) => Err(StoreError::DanglingReference {
            path: path.to_path_buf(),
            version,
            table,
            parent,
            n_rows,
        }),
    }
}

/// A read connection (`query_only`), for views and verification.
pub struct Reader {
    conn: Connection,
    schema_version: i64,
    /// A file opened `immutable`, which a sibling opens again.
    immutable: Option<Immutable>,
}

impl Db for Reader {
    fn conn(&self) -> &Connection {
        &self.conn
    }
    fn schema_version(&self) -> i64 {
        self.schema_version
    }
    fn sibling(&self) -> Result<Option<Reader>, StoreError> {
        let Some(Immutable { uri, path, .. }) = &self.immutable else {
            return Ok(None);
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(uri, flags)?;
        map_in_memory(&conn)?;
        check_identity(&conn, path)?;
        let mut reader = Reader::new(conn)?;
        reader.immutable = self.immutable.clone();
        Ok(Some(reader))
    }
}

impl Reader {
    /// Wraps `conn`, reading its schema version once.
    fn new(conn: Connection) -> Result<Reader, StoreError> {
        let schema_version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        Ok(Reader {
            conn,
            schema_version,
            immutable: None,
        })
    }

    /// Runs `f` inside one read transaction, so everything it reads is one consistent snapshot.
    /// On a file read without locks (`immutable`), `ChangedWhileRead` instead of what `f` found
    /// when the file was written since it was opened.
    pub fn snapshot<T>(&self, f: impl FnOnce(&Reader) -> T) -> Result<T, StoreError> {
        let begun = run_cached(&self.conn, "BEGIN").map_err(StoreError::from);
        let out = begun.map(|()| f(self));
        let ended = match &out {
            Ok(_) => run_cached(&self.conn, "COMMIT").map_err(StoreError::from),
            Err(_) => Ok(()),
        };
        if let Some(immutable) = &self.immutable {
            // Checked even when reading failed: a file written under the reader reads as
            // malformed, and the truth is that it changed.
            if FileState::of(&immutable.path)? != immutable.before {
                return Err(StoreError::ChangedWhileRead {
                    path: immutable.path.clone(),
                });
            }
        }
        ended?;
        out
    }
}

/// A pool of read connections that never wait for the writer (WAL readers see the last commit).
#[derive(Clone)]
pub struct ReadPool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Reader>>>,
}

impl ReadPool {
    pub fn new(path: &Path) -> ReadPool {
        ReadPool {
            path: Arc::new(path.to_path_buf()),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `f` on an idle reader (or a new one) inside one read snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&Reader) -> T) -> Result<T, StoreError> {
        let reader = match self.take_idle() {
            Some(r) => r,
            None => self.open_reader()?,
        };
        let out = reader.snapshot(f);
        if out.is_ok() {
            self.give_back(reader);
        }
        out
    }

    /// Runs `f` on an idle reader inside one read snapshot, without waiting on a lock (its busy
    /// timeout is zero meanwhile): `None` when no reader is idle, or when the snapshot or `f`
    /// failed for any reason (a lock held by another process, say), for the caller to do the read
    /// again by `read`, which may open a connection and waits up to the busy timeout. For small
    /// reads on an async task. (SQLite's own retry when it loses a race for the WAL index may
    /// still pause it briefly; the busy timeout does not govern that.)
    pub fn read_if_idle<T>(&self, f: impl FnOnce(&Reader) -> Result<T, StoreError>) -> Option<T> {
        let reader = self.take_idle()?;
        reader.conn.busy_timeout(Duration::ZERO).ok()?;
        let out = reader.snapshot(f);
        if reader.conn.busy_timeout(BUSY_TIMEOUT).is_ok() && out.is_ok() {
            self.give_back(reader);
        }
        out.ok()?.ok()
    }

    fn take_idle(&self) -> Option<Reader> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `reader` for the next read, outside any transaction, unless enough are idle.
    fn give_back(&self, reader: Reader) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(reader);
        }
    }

    fn open_reader(&self) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            self.path.as_ref(),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        set_common_pragmas(&conn)?;
        conn.pragma_update(None, "query_only", "ON")?;
        Reader::new(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty folder of its own under the temporary directory.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fedcore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_read_without_locks_and_written_meanwhile_reports_nothing_it_read() {
        let dir = fresh_dir("changed-while-read");
        let db = dir.join("f.db");
        drop(open_for_writing(&db).unwrap());
        let reader = open_read_only(&db).unwrap();
        assert!(
            reader.immutable.is_some(),
            "no -wal beside it: read without locks"
        );
        assert_eq!(
            reader.snapshot(|r| r.schema_version).unwrap(),
            SCHEMA_VERSION
        );
        // A server starts on it and writes; closing folds its WAL into the file.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let writer = open_for_writing(&db).unwrap();
        writer
            .execute_batch("CREATE TABLE scratch (x); INSERT INTO scratch VALUES (1);")
            .unwrap();
        drop(writer);
        let read = reader.snapshot(|r| r.schema_version);
        assert!(
            matches!(read, Err(StoreError::ChangedWhileRead { .. })),
            "expected the change to be reported instead of what was read: {read:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn, Path::new(":memory:")).unwrap();
        migrate(&conn, Path::new(":memory:")).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .unwrap();
        assert_eq!(app, APPLICATION_ID);
    }

    #[test]
    fn a_version_one_database_is_migrated_forward_keeping_its_rows() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO evidence (hash, body) VALUES ('h', x'6e756c6c')",
            [],
        )
        .unwrap();
        migrate(&conn, Path::new(":memory:")).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM evidence", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "expected the existing rows kept");
        let required: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('gates') WHERE name = 'approvals_required'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(required, 1, "expected migration 2 applied");
    }

    /// A database at the current version with foreign keys enforced (as `open_for_writing`
    /// leaves it), one blob, and a policy version whose `policy_hash` names that blob.
    fn migrated_with_a_reference() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        set_common_pragmas(&conn).unwrap();
        migrate(&conn, Path::new(":memory:")).unwrap();
        conn.execute_batch(
            "INSERT INTO evidence (hash, body) VALUES ('h', x'6e756c6c');
             INSERT INTO policies (policy_id, version, tier, default_effect, rules, policy_hash,
                                   created_at, created_by)
             VALUES ('p', 1, 'T1', 'deny', '[]', 'h', '2026-11-24T10:00:00.000000Z', 'a');",
        )
        .unwrap();
        conn
    }

    fn foreign_keys(conn: &Connection) -> bool {
        conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap()
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_migration_that_leaves_a_dangling_reference_is_rolled_back() {
        // Rebuilding evidence but forgetting to copy its rows: with foreign_keys off nothing
        // stops the migration itself, so the check before COMMIT must.
        let conn = migrated_with_a_reference();
        let forgetful =
            "CREATE TABLE evidence_new (hash TEXT NOT NULL PRIMARY KEY, body BLOB NOT NULL);
                         DROP TABLE evidence;
                         ALTER TABLE evidence_new RENAME TO evidence;";
        let migrations: Vec<&str> = MIGRATIONS.iter().copied().chain([forgetful]).collect();
        let refused = apply_migrations(&conn, Path::new("x.db"), &migrations).unwrap_err();
        match &refused {
            StoreError::DanglingReference {
                table,
                parent,
                n_rows,
                version,
                ..
            } => {
                assert_eq!((table.as_str(), parent.as_str()), ("policies", "evidence"));
                assert_eq!(*n_rows, 1);
                assert_eq!(*version, SCHEMA_VERSION + 1);
            }
            other => panic!("expected a dangling reference, got {other}"),
        }
        assert!(refused.to_string().contains("policies"), "{refused}");
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM evidence WHERE hash = 'h'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, 1, "expected the blob back after the rollback");
        assert!(conn.is_autocommit(), "expected no transaction left open");
        assert!(foreign_keys(&conn), "expected foreign_keys back on");
    }

    #[test]
    fn foreign_keys_is_restored_whether_migrations_succeed_or_fail() {
        let conn = migrated_with_a_reference();
        assert!(foreign_keys(&conn));
        // Nothing pending.
        migrate(&conn, Path::new(":memory:")).unwrap();
        assert!(foreign_keys(&conn));
        // A migration that fails on its own SQL.
        let broken: Vec<&str> = MIGRATIONS
            .iter()
            .copied()
            .chain(["SELECT x FROM nowhere"])
            .collect();
        apply_migrations(&conn, Path::new(":memory:"), &broken).unwrap_err();
        assert!(foreign_keys(&conn));
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        // A migration that succeeds and drops a table other tables refer to: possible only with
        // foreign_keys off, and enforced again afterwards.
        let rebuild =
            "CREATE TABLE evidence_new (hash TEXT NOT NULL PRIMARY KEY, body BLOB NOT NULL);
                       INSERT INTO evidence_new SELECT hash, body FROM evidence;
                       DROP TABLE evidence;
                       ALTER TABLE evidence_new RENAME TO evidence;";
        let rebuilding: Vec<&str> = MIGRATIONS.iter().copied().chain([rebuild]).collect();
        apply_migrations(&conn, Path::new(":memory:"), &rebuilding).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION + 1);
        assert!(foreign_keys(&conn));
        let refused = conn
            .execute(
                "INSERT INTO policies (policy_id, version, tier, default_effect, rules,
                                       policy_hash, created_at, created_by)
                 VALUES ('p', 2, 'T1', 'deny', '[]', 'missing', 'now', 'a')",
                [],
            )
            .unwrap_err();
        assert!(refused.to_string().contains("FOREIGN KEY"), "{refused}");
        // A connection that had foreign_keys off keeps it off (this SQLite is built with it on
        // by default).
        let off = Connection::open_in_memory().unwrap();
        off.pragma_update(None, "foreign_keys", false).unwrap();
        migrate(&off, Path::new(":memory:")).unwrap();
        assert!(!foreign_keys(&off));
    }

    #[test]
    fn with_foreign_keys_on_the_evidence_rebuild_would_fail() {
        // Why migrate turns foreign_keys off: DROP TABLE evidence deletes its rows first, which
        // the other tables' references refuse.
        let conn = migrated_with_a_reference();
        let refused = conn
            .execute_batch(include_str!(
                "../../migrations/006_evidence_in_insertion_order.sql"
            ))
            .unwrap_err();
        assert!(refused.to_string().contains("FOREIGN KEY"), "{refused}");
    }

    #[test]
    fn a_fedcore_schema_whose_version_was_reset_is_refused_and_an_empty_file_is_not() {
        let conn = Connection::open_in_memory().unwrap();
        check_identity(&conn, Path::new("x.db")).expect("a new, empty database");
        migrate(&conn, Path::new("x.db")).unwrap();
        conn.pragma_update(None, "user_version", 0).unwrap();
        let refused = check_identity(&conn, Path::new("x.db")).unwrap_err();
        assert!(
            matches!(refused, StoreError::SchemaVersionReset { n_objects, .. } if n_objects > 0),
            "{refused}"
        );
    }

    #[test]
    fn a_file_at_each_version_is_accepted_and_refused_once_its_version_is_changed() {
        for version in 1..=SCHEMA_VERSION {
            let conn = Connection::open_in_memory().unwrap();
            apply_migrations(&conn, Path::new("x.db"), &MIGRATIONS[..version as usize]).unwrap();
            check_identity(&conn, Path::new("x.db"))
                .unwrap_or_else(|e| panic!("version {version}: {e}"));
            for changed in (1..=SCHEMA_VERSION).filter(|&v| v != version) {
                conn.pragma_update(None, "user_version", changed).unwrap();
                let refused = check_identity(&conn, Path::new("x.db")).unwrap_err();
                let (found, shown) = match refused {
                    StoreError::SchemaVersionLowered { found, shown, .. } if changed < version => {
                        (found, shown)
                    }
                    StoreError::SchemaVersionRaised { found, shown, .. } if changed > version => {
                        (found, shown)
                    }
                    _ => panic!("version {version} changed to {changed}: {refused}"),
                };
                assert_eq!(
                    (found, shown),
                    (changed, version),
                    "version {version} changed to {changed}"
                );
            }
        }
    }

    #[test]
    fn a_file_migrated_by_another_process_while_it_is_checked_is_not_taken_for_a_lowered_one() {
        let dir = fresh_dir("identity");
        let db = dir.join("v4.db");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/schema-v4-pt004.db"
        );
        std::fs::copy(fixture, &db).unwrap();
        let checking = Connection::open(&db).unwrap();
        let checked = check_identity_in_one_snapshot(&checking, &db, || {
            // Another process brings the file to the current version between the two reads.
            open_for_writing(&db).unwrap();
        });
        assert!(checked.is_ok(), "{checked:?}");
        assert!(
            checking.is_autocommit(),
            "the read transaction was left open"
        );
        check_identity(&checking, &db).expect("the migrated file, read afresh");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sqlite_is_built_with_the_options_of_cargo_config() {
        // .cargo/config.toml passes them to the bundled build. Cargo finds that file from the
        // directory it runs in: run it from the repository (`cargo install` ignores it too).
        let conn = Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for option in [
            "DEFAULT_MEMSTATUS=0",
            "DQS=0",
            "THREADSAFE=2",
            "OMIT_SHARED_CACHE",
        ] {
            assert!(
                options.iter().any(|o| o == option),
                "SQLite was built without {option} (was cargo run outside the repository, where \
                 .cargo/config.toml does not apply?): {options:?}"
            );
        }
        assert!(conn
            .execute_batch("SELECT \"a string in double quotes\"")
            .is_err());
    }

    #[test]
    fn a_refused_file_leaves_no_transaction_open() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(check_identity(&conn, Path::new("x.db")).is_err());
        assert!(conn.is_autocommit());
    }

    #[test]
    fn a_read_if_idle_never_waits_and_leaves_its_reader_as_it_found_it() {
        let dir = fresh_dir("idle");
        let db = dir.join("idle.db");
        // A rollback-journal file, where a writer's exclusive lock keeps readers out (in WAL
        // mode only another process's recovery or exclusive locking mode would).
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE tokens(x)")
            .unwrap();
        let pool = ReadPool::new(&db);
        let timeout = |r: &Reader| -> Result<i64, StoreError> {
            Ok(r.conn
                .query_row("PRAGMA busy_timeout", [], |row| row.get(0))?)
        };
        let tokens = |r: &Reader| -> Result<i64, StoreError> {
            Ok(r.conn
                .query_row("SELECT count(*) FROM tokens", [], |row| row.get(0))?)
        };
        assert_eq!(pool.read_if_idle(tokens), None, "no reader is idle yet");
        pool.read(|_| ()).unwrap();
        assert_eq!(pool.read_if_idle(tokens), Some(0));

        // Another process holds the file exclusively: the read gives up at once, not after
        // the busy timeout, and the reader keeps that timeout for the reads that may wait.
        let blocker = Connection::open(&db).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(pool.read_if_idle(tokens), None);
        assert!(
            started.elapsed() < BUSY_TIMEOUT / 2,
            "it waited for the lock"
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        drop(blocker);
        assert_eq!(pool.read_if_idle(tokens), Some(0));
        // The one pooled reader, read the way that may wait, has its timeout back.
        assert_eq!(pool.read(timeout).unwrap().unwrap(), 5000);
        drop(pool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_check_whose_commit_fails_still_ends_its_transaction() {
        let dir = fresh_dir("commit");
        let db = dir.join("busy.db");
        let conn = Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::ZERO).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let other = Connection::open(&db).unwrap();
        let checked = check_identity_in_one_snapshot(&conn, &db, || {
            // A write inside the check makes its COMMIT need the file to itself, which a reader
            // on another connection denies (rollback journal): the COMMIT fails, busy, and leaves
            // the transaction open.
            conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
            other.execute_batch("BEGIN").unwrap();
            let _: i64 = other
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
        });
        assert!(checked.is_err(), "{checked:?}");
        assert!(conn.is_autocommit(), "the transaction was left open");
        other.execute_batch("COMMIT").unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "what the failed check wrote was rolled back");
        drop((conn, other));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_foreign_sqlite_database_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(matches!(
            check_identity(&conn, Path::new("x.db")),
            Err(StoreError::NotFedcore { .. })
        ));
    }
}
