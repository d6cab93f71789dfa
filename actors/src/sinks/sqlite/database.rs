//! The SQLite sink's database file: taking it (the lock that makes one engine process its only
//! writer), opening it (WAL, `synchronous = FULL`, a busy timeout), migrating its schema, and
//! what the sink does with it: one transaction per flush, and reading the progress back.
//!
//! Every function here blocks. The sink runs them on tokio's blocking pool, never on the
//! runtime's threads; the administrative functions run them from the CLI.
//!
//! # Ownership
//! A database file belongs to one engine process at a time. Opening it takes an exclusive
//! `flock` on `<file>.lock` (created beside it, holding the owner's pid), held until the sink
//! closes; a second process that opens it is refused with an error naming the owner. Readers
//! are not: the database itself is in WAL mode with ordinary locking, so the sqlite3 shell or a
//! Python script may read it while the engine writes. (`locking_mode = EXCLUSIVE` would refuse
//! the second engine too, but also every reader.) Within one process, a file still held by an
//! earlier run of the engine that is closing (a restart from the stored progress) is a
//! retryable refusal: the new run waits for it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, TransactionBehavior};

use super::errors::{db_error, fatal, retryable};
use super::rows::Rows;
use super::schema::{insert, ADD_VERSION, BOOTSTRAP, CURRENT_VERSION, MIGRATIONS, SELECT_PROGRESS, TABLES, UPSERT_PROGRESS};
use crate::sinks::writer::SinkError;

/// Lock files held by this process (canonical paths), so that a second open within it is told
/// apart from another process's.
static HELD: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// `<file>.lock`, beside the database.
pub(super) fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Why a database file could not be taken.
pub(super) enum Refusal {
    /// An earlier open in this process still holds it.
    ThisProcess,
    /// Another process holds it (its pid, as it wrote it).
    OtherProcess(String),
    /// The lock file cannot be created or locked.
    Io(std::io::Error),
}

/// This process's exclusive hold on a database file: the `flock` on its lock file, released
/// when dropped.
pub(super) struct Ownership {
    file: Option<File>,
    key: PathBuf,
}

impl Ownership {
    /// Takes `db` (whose directory must exist), or says who holds it.
    pub(super) fn take(db: &Path) -> Result<Ownership, Refusal> {
        let lock = lock_path(db);
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock).map_err(Refusal::Io)?;
        let key = lock.canonicalize().map_err(Refusal::Io)?;
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains(&key) {
            return Err(Refusal::ThisProcess);
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(Refusal::OtherProcess(pid.trim().to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Refusal::Io(e)),
        }
        // The owner's pid, for whoever is refused (a courtesy: the lock is what counts).
        let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
        held.insert(key.clone());
        Ok(Ownership { file: Some(file), key })
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        // Unlocked before the name leaves the list, so that whoever finds the name gone finds
        // the file free too.
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.file.take());
        held.remove(&self.key);
    }
}

/// One partition's progress as stored (and read back).
pub(super) struct ProgressRow {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) resume: i64,
    pub(super) emitted_through: i64,
    /// The replay state (JSON).
    pub(super) state: String,
}

/// The open database of a sink. Fields drop in order: the connection closes before the file's
/// lock is released.
pub(super) struct Db {
    conn: Connection,
    /// `INSERT … ON CONFLICT DO NOTHING` per table of `schema::TABLES`.
    inserts: Vec<String>,
    _owner: Ownership,
}

impl Db {
    /// Takes and opens the database at `path` for sink `sink` (creating it and its directory),
    /// and brings its schema up to date.
    pub(super) fn open(sink: &str, path: &Path, busy_timeout: Duration) -> Result<Db, SinkError> {
        let shown = path.display();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fatal(sink, format!("cannot create the directory of {shown}: {e}")))?;
        }
        let owner = Ownership::take(path).map_err(|r| match r {
            Refusal::ThisProcess => retryable(sink, format!("database {shown} is still held by an earlier run of this engine, which is closing it")),
            Refusal::OtherProcess(pid) => fatal(
                sink,
                format!(
                    "database {shown} is in use by another meltstream process (pid {}, which holds {}); one engine process owns a database file: stop that one, or give this sink its own `path`",
                    if pid.is_empty() { "unknown" } else { pid.as_str() },
                    lock_path(path).display()
                ),
            ),
            Refusal::Io(e) => fatal(sink, format!("cannot lock {}: {e}", lock_path(path).display())),
        })?;
        let mut conn = Connection::open(path).map_err(|e| db_error(sink, &format!("open {shown}"), &e))?;
        conn.busy_timeout(busy_timeout).map_err(|e| db_error(sink, "set the busy timeout", &e))?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(|e| db_error(sink, "switch to WAL", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fatal(sink, format!("{shown} cannot use WAL (journal mode stays {mode:?})")));
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| db_error(sink, "set synchronous = FULL", &e))?;
        conn.set_prepared_statement_cache_capacity(TABLES.len() + 4);
        migrate(&mut conn, sink, path)?;
        Ok(Db { conn, inserts: TABLES.iter().map(insert).collect(), _owner: owner })
    }

    /// One transaction: every buffered row of `pipeline` (a row whose key is there already is
    /// skipped), then `progress`; committed, or nothing of it is. Returns the rows inserted per
    /// table.
    pub(super) fn write(&mut self, sink: &str, pipeline: &str, rows: &Rows, progress: &[ProgressRow]) -> Result<Vec<(&'static str, u64)>, SinkError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_error(sink, "begin", &e))?;
        let mut inserted = Vec::new();
        let pipeline_value = rusqlite::types::Value::Text(pipeline.to_owned());
        for (table, table_rows) in rows.per_table() {
            if table_rows.is_empty() {
                continue;
            }
            let name = TABLES[table].name;
            let mut stmt = tx.prepare_cached(&self.inserts[table]).map_err(|e| db_error(sink, &format!("prepare insert into {name}"), &e))?;
            let mut n = 0;
            for row in table_rows {
                n += stmt.execute(params_from_iter(std::iter::once(&pipeline_value).chain(row))).map_err(|e| db_error(sink, &format!("insert into {name}"), &e))? as u64;
            }
            inserted.push((name, n));
        }
        if !progress.is_empty() {
            let mut stmt = tx.prepare_cached(UPSERT_PROGRESS).map_err(|e| db_error(sink, "prepare progress upsert", &e))?;
            for p in progress {
                stmt.execute(params![pipeline, p.topic, p.partition, p.resume, p.emitted_through, p.state]).map_err(|e| db_error(sink, "store progress", &e))?;
            }
        }
        #[cfg(feature = "fault-injection")]
        fault_abort_in_transaction(rows);
        tx.commit().map_err(|e| db_error(sink, "commit", &e))?;
        Ok(inserted)
    }

    /// The progress of `pipeline`, per partition.
    pub(super) fn read_progress(&self, sink: &str, pipeline: &str) -> Result<Vec<ProgressRow>, SinkError> {
        let mut stmt = self.conn.prepare_cached(SELECT_PROGRESS).map_err(|e| db_error(sink, "prepare progress query", &e))?;
        let rows = stmt
            .query_map([pipeline], |r| Ok(ProgressRow { topic: r.get(0)?, partition: r.get(1)?, resume: r.get(2)?, emitted_through: r.get(3)?, state: r.get(4)? }))
            .map_err(|e| db_error(sink, "read progress", &e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| db_error(sink, "read progress", &e))
    }

    /// Closes the connection (checkpointing the WAL into the file), then releases the file.
    pub(super) fn close(self, sink: &str) -> Result<(), SinkError> {
        let Db { conn, _owner, .. } = self;
        conn.close().map_err(|(_, e)| db_error(sink, "close", &e))
    }
}

/// Creates or upgrades the schema in one transaction (idempotent). A file whose schema is newer
/// than this engine's is refused: it was written by a newer meltstream.
pub(super) fn migrate(conn: &mut Connection, sink: &str, path: &Path) -> Result<(), SinkError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| db_error(sink, "begin migration", &e))?;
    tx.execute_batch(BOOTSTRAP).map_err(|e| db_error(sink, "create the version table", &e))?;
    let current: Option<i64> = tx.query_row(CURRENT_VERSION, [], |r| r.get(0)).map_err(|e| db_error(sink, "read the schema version", &e))?;
    let current = current.unwrap_or(0);
    let latest = MIGRATIONS[MIGRATIONS.len() - 1].0;
    if current > latest {
        return Err(fatal(sink, format!("{} has schema version {current}, newer than this engine's {latest}: a newer meltstream wrote it", path.display())));
    }
    for (version, what, sql) in MIGRATIONS {
        if version > current {
            tx.execute_batch(sql).map_err(|e| db_error(sink, &format!("apply migration {version}"), &e))?;
            tx.execute(ADD_VERSION, [version]).map_err(|e| db_error(sink, &format!("record migration {version}"), &e))?;
            tracing::info!(sink, path = %path.display(), "{what} (schema version {version})");
        }
    }
    tx.commit().map_err(|e| db_error(sink, "commit migration", &e))
}

/// Test hook: with `MELTSTREAM_FAULT_ABORT_SQLITE_FLUSH=n`, the process aborts inside its `n`th
/// transaction with rows, after the inserts and before `COMMIT` (a crash mid-transaction).
/// Compiled only with the `fault-injection` feature (the tests'), never in a release binary.
#[cfg(feature = "fault-injection")]
fn fault_abort_in_transaction(rows: &Rows) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<u64> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let at = *AT.get_or_init(|| std::env::var("MELTSTREAM_FAULT_ABORT_SQLITE_FLUSH").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    if at > 0 && !rows.is_empty() && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == at {
        tracing::error!("fault injection: aborting inside an SQLite transaction (MELTSTREAM_FAULT_ABORT_SQLITE_FLUSH)");
        std::process::abort();
    }
}
