//! Administrative functions over an SQLite sink's database file, outside any running engine:
//! empty a pipeline (`meltstream reset`) and count its rows. They block (call them from the CLI
//! or from a blocking task); never used on the data path.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::database::{lock_path, Ownership, Refusal};
use super::schema::PIPELINE_TABLES;

/// The existing database at `path` (never created here), or `None` when there is no file.
fn open_existing(path: &Path) -> Result<Option<Connection>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(Some(conn))
}

/// Whether the database holds meltstream's tables (at any version).
fn has_tables(conn: &Connection, path: &Path) -> Result<bool, String> {
    conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'", [], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
        .map_err(|e| format!("cannot inspect {}: {e}", path.display()))
}

/// Deletes every row of `pipeline` (results, dead letters, late records and progress) from the
/// database at `path`, in one transaction, so that the pipeline starts over; returns the
/// number of rows deleted (0 when there is no such file, or it holds no meltstream tables).
/// Refused while an engine owns the file. Used by `meltstream reset`.
pub fn reset_pipeline(path: &Path, pipeline: &str) -> Result<u64, String> {
    if !path.exists() {
        return Ok(0);
    }
    // Taken first, released last: never a row of a running engine's file.
    let _owner = Ownership::take(path).map_err(|r| match r {
        Refusal::ThisProcess => format!("{} is open in this process", path.display()),
        Refusal::OtherProcess(pid) => format!("{} is in use by a running engine (pid {pid}, which holds {}): stop it first", path.display(), lock_path(path).display()),
        Refusal::Io(e) => format!("cannot lock {}: {e}", lock_path(path).display()),
    })?;
    let Some(mut conn) = open_existing(path)? else { return Ok(0) };
    if !has_tables(&conn, path)? {
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| format!("cannot begin: {e}"))?;
    let mut deleted = 0;
    for table in PIPELINE_TABLES {
        deleted += tx.execute(&format!("DELETE FROM {table} WHERE pipeline = ?1"), [pipeline]).map_err(|e| format!("cannot delete from {table}: {e}"))? as u64;
    }
    tx.commit().map_err(|e| format!("cannot commit: {e}"))?;
    Ok(deleted)
}

/// Rows of `pipeline` per table of the database at `path` (every table, including `progress`;
/// an empty map when there is no such file or it holds no meltstream tables). A reader: works
/// while an engine writes the file.
pub fn row_counts(path: &Path, pipeline: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    let Some(conn) = open_existing(path)? else { return Ok(counts) };
    if !has_tables(&conn, path)? {
        return Ok(counts);
    }
    for table in PIPELINE_TABLES {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table} WHERE pipeline = ?1"), [pipeline], |r| r.get(0)).map_err(|e| format!("cannot count {table}: {e}"))?;
        counts.insert(table.to_owned(), n.max(0) as u64);
    }
    Ok(counts)
}
