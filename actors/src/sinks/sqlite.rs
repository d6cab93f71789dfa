//! SQLite sink: the PostgreSQL sink's tables in an embedded database file, written in batches;
//! every flush is one transaction that also stores the source progress. The results store of a
//! pipeline without a database server.
//!
//! # Tables
//! The PostgreSQL sink's, with the same names, columns and keys (see `postgres.rs`), every row
//! carrying its `pipeline`, in SQLite types: `INTEGER` for integers and the exact `…_ns`
//! times, `REAL`, `TEXT` for strings, for RFC 3339 UTC times with microseconds (PostgreSQL's
//! `timestamptz` columns, as the records write them) and for JSON (PostgreSQL's `jsonb`
//! columns, and `spc_signals.layers`, an `int[]` there, a JSON array here). `progress` has no
//! `epoch` (see *Ownership*). The schema is created and migrated on open (versions in
//! `schema_version`).
//!
//! # Repeated writes are harmless
//! [`SinkWriter::write`] only buffers. [`SinkWriter::flush`] runs one `BEGIN IMMEDIATE`
//! transaction holding an `INSERT … ON CONFLICT DO NOTHING` per buffered row (one prepared,
//! cached statement per table), then one upsert per partition of the checkpoint into
//! `progress`, then `COMMIT`. Writing the same records again (a replay after a crash, or a flush
//! retried after a failed `COMMIT`) changes nothing.
//!
//! # Progress
//! The [`Checkpoint`] given to a flush (per Kafka partition: resume, emitted-through, and the
//! replay state as JSON) is stored in the same transaction as the records, so the stored
//! progress never runs ahead of the stored results (see `progress.rs`).
//! [`SinkWriter::stored_progress`] reads it back before the engine starts and at each
//! assignment, with the replay state ([`SinkWriter::take_stored_states`]). As in PostgreSQL,
//! the keys refuse what a replay writes twice, so nothing is reported to
//! [`SinkWriter::take_written`].
//!
//! # Durability
//! WAL journal with `synchronous = FULL`: every `COMMIT` syncs the WAL before the flush
//! returns, so what the sink acknowledges as durable (its holds let the source offsets move on)
//! survives a power loss too. `NORMAL` would sync only at checkpoints: still atomic (a lost
//! transaction loses its records and its progress together, and the replay writes them
//! again), but the last acknowledged results could vanish with the power; one sync per flush
//! (every `flush_ms`) costs little.
//!
//! # Ownership
//! One engine process owns a database file: the sink takes an exclusive lock on `<file>.lock`
//! when it opens the file, and a second process opening it is refused with a fatal error
//! naming the owner's pid (see `sqlite/database.rs`). So there is no fencing, nor an epoch:
//! nobody else writes the file. Readers (the sqlite3 shell, Python's `sqlite3`) may query it
//! while the engine runs.
//!
//! # Blocking
//! rusqlite blocks: opening, migrating, every transaction and the progress query run on
//! tokio's blocking pool (`spawn_blocking`), the connection and the buffered rows moving there
//! and back. The runtime's threads never wait for the disk.
//!
//! # Files
//! This file is the sink itself; `sqlite/` holds its buffered rows (`rows.rs`), the schema and
//! its migrations (`schema.rs`), the database file, its lock and its transactions
//! (`database.rs`), the error classes (`errors.rs`) and the administrative functions
//! (`admin.rs`: reset, row counts).
//!
//! # Failures
//! A failed flush keeps its buffers; the sink actor retries it with backoff as long as the
//! error is [`SinkError::Retryable`]: `SQLITE_BUSY` and `SQLITE_LOCKED` (a reader holding a
//! write transaction past the busy timeout), I/O errors, a full disk. Anything else (a missing
//! table, a constraint, a corrupt file, another process owning the file) is
//! [`SinkError::Fatal`]. A record with a value SQLite cannot hold as it is (a count beyond a
//! signed 64-bit integer, a NaN) never gets that far: `write` stages it as a dead letter
//! (reason `unwritable`) in its place and buffers the rest of the batch.

pub mod admin;
mod database;
mod errors;
pub mod fusion;
mod rows;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meltstream_engine::pipeline::decisions::PartitionState;
use meltstream_engine::records::Emitted;

use crate::progress::{Checkpoint, Progress, StoredProgress, StoredStates};
use crate::sinks::writer::{unwritable, SinkError, SinkWriter};

use database::{Db, ProgressRow};
use rows::{integer, Rows};

/// How long a statement waits for a reader's write transaction before it fails (retryably).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes records to an SQLite database file, one transaction per flush (see the module
/// documentation).
pub struct SqliteSink {
    name: String,
    pipeline: String,
    path: PathBuf,
    busy_timeout: Duration,
    /// The open database; `None` before the first use, and while a blocking task has it.
    db: Option<Db>,
    rows: Rows,
    /// The replay state read with the stored progress.
    stored_states: StoredStates,
}

impl SqliteSink {
    /// A sink named `name` writing the rows of `pipeline` into the database file at `path`.
    /// Nothing is opened yet: the first [`SinkWriter::stored_progress`] or flush takes the
    /// file, creates it and migrates it. Fails (fatally) only on an empty path.
    pub fn new(name: &str, path: &Path, pipeline: &str) -> Result<SqliteSink, SinkError> {
        if path.as_os_str().is_empty() {
            return Err(errors::fatal(name, "the database path is empty".into()));
        }
        Ok(SqliteSink {
            name: name.to_owned(),
            pipeline: pipeline.to_owned(),
            path: path.to_owned(),
            busy_timeout: BUSY_TIMEOUT,
            db: None,
            rows: Rows::default(),
            stored_states: StoredStates::new(),
        })
    }

    /// How long a statement waits for another connection's write lock (default 5 s).
    pub fn with_busy_timeout(mut self, timeout: Duration) -> SqliteSink {
        self.busy_timeout = timeout;
        self
    }

    /// Rows buffered since the last successful flush.
    pub fn buffered_rows(&self) -> usize {
        self.rows.len()
    }

    /// Closes the database (checkpointing its WAL) and releases the file, waiting for both;
    /// what is buffered is dropped. Dropping the sink does the same without waiting.
    pub async fn close(mut self) -> Result<(), SinkError> {
        let Some(db) = self.db.take() else { return Ok(()) };
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || db.close(&name)).await.map_err(|e| errors::fatal(&self.name, format!("the SQLite close task failed: {e}")))?
    }

    /// Runs `f` with the database (opened first if need be) and the buffered rows on the
    /// blocking pool; both come back whatever `f` returns. Only a panic of the task loses
    /// them: fatal, the sink fails and the engine starts again from the stored progress.
    async fn blocking<T: Send + 'static>(&mut self, f: impl FnOnce(&mut Db, &Rows) -> Result<T, SinkError> + Send + 'static) -> Result<T, SinkError> {
        let (db, rows) = (self.db.take(), std::mem::take(&mut self.rows));
        let (name, path, timeout) = (self.name.clone(), self.path.clone(), self.busy_timeout);
        let task = tokio::task::spawn_blocking(move || {
            let mut db = match db {
                Some(db) => db,
                None => match Db::open(&name, &path, timeout) {
                    Ok(db) => db,
                    Err(e) => return (None, rows, Err(e)),
                },
            };
            let out = f(&mut db, &rows);
            (Some(db), rows, out)
        });
        match task.await {
            Ok((db, rows, out)) => {
                self.db = db;
                self.rows = rows;
                out
            }
            Err(e) => Err(errors::fatal(&self.name, format!("the SQLite task failed: {e}"))),
        }
    }
}

impl Drop for SqliteSink {
    fn drop(&mut self) {
        // Closing checkpoints the WAL (disk I/O): off the runtime's threads when there is one.
        if let Some(db) = self.db.take() {
            let name = std::mem::take(&mut self.name);
            let close = move || drop(db.close(&name));
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(close)),
                Err(_) => close(),
            }
        }
    }
}

impl SinkWriter for SqliteSink {
    fn discard(&mut self) {
        self.rows.clear();
    }

    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        // Stage first, so that a record that cannot be stored leaves the buffers as they were.
        let mut staged = Rows::default();
        if records.iter().all(|r| staged.push(&r.record).is_ok()) {
            self.rows.append(&mut staged);
            return Ok(());
        }
        // Some record does not fit its columns: stage one by one, each such record as a dead
        // letter in its place; the others are written as usual.
        let mut staged = Rows::default();
        for r in records {
            if let Err(m) = staged.push(&r.record) {
                staged.push(&unwritable(&self.name, r, &m).record).map_err(|m| errors::fatal(&self.name, format!("cannot store the dead letter of {}: {m}", r.record.key())))?;
            }
        }
        self.rows.append(&mut staged);
        Ok(())
    }

    async fn flush(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        if self.rows.is_empty() && checkpoint.entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // One entry per partition; the latest wins.
        let latest: BTreeMap<&(String, i32), &Progress> = checkpoint.entries.iter().map(|(tp, p)| (tp, p)).collect();
        let mut progress = Vec::with_capacity(latest.len());
        for (tp, p) in latest {
            let offset = |v: u64, what: &str| integer(v, what).map_err(|m| errors::fatal(&self.name, format!("{}/{}: {m}", tp.0, tp.1)));
            progress.push(ProgressRow {
                topic: tp.0.clone(),
                partition: tp.1,
                resume: offset(p.resume, "resume offset")?,
                emitted_through: offset(p.emitted_through, "emitted-through offset")?,
                state: checkpoint.states.get(tp).map(|s| s.to_json()).unwrap_or_else(|| "{}".to_owned()),
            });
        }
        let (name, pipeline) = (self.name.clone(), self.pipeline.clone());
        let inserted = self.blocking(move |db, rows| db.write(&name, &pipeline, rows, &progress)).await?;
        // Committed: only now may the rows leave the buffers.
        self.rows.clear();
        for (table, n) in inserted {
            metrics::counter!("meltstream_sqlite_rows_total", "sink" => self.name.clone(), "table" => table).increment(n);
        }
        metrics::histogram!("meltstream_sqlite_flush_seconds", "sink" => self.name.clone()).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn take_stored_states(&mut self) -> StoredStates {
        std::mem::take(&mut self.stored_states)
    }

    async fn stored_progress(&mut self) -> Result<Option<StoredProgress>, SinkError> {
        let (name, pipeline) = (self.name.clone(), self.pipeline.clone());
        let rows = self.blocking(move |db, _| db.read_progress(&name, &pipeline)).await?;
        let mut stored = StoredProgress::new();
        for ProgressRow { topic, partition, resume, emitted_through: emitted, state } in rows {
            let offset = |v: i64| u64::try_from(v).map_err(|_| errors::fatal(&self.name, format!("negative offset {v} stored for {topic}/{partition}")));
            let progress = Progress { resume: offset(resume)?, emitted_through: offset(emitted)? };
            match PartitionState::from_json(&state) {
                Ok(s) => {
                    self.stored_states.insert((topic.clone(), partition), s);
                }
                Err(e) => tracing::warn!(sink = %self.name, topic = %topic, partition, error = %e, "unreadable replay state stored with the progress; the replay starts without it"),
            }
            stored.insert((topic, partition), progress);
        }
        Ok(Some(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_is_fatal() {
        assert!(matches!(SqliteSink::new("s", Path::new(""), "p"), Err(SinkError::Fatal { .. })));
    }
}
