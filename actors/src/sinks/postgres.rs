//! PostgreSQL sink: one table per record kind, written in batches; every flush is one
//! transaction that also stores the source progress.
//!
//! # Tables
//! All tables live in the sink's schema (default `meltstream`) and every row carries the
//! `pipeline` it belongs to. The primary keys follow [`OutputRecord::key`], so the same result
//! always lands on the same row:
//!
//! | table | one row per | primary key |
//! | --- | --- | --- |
//! | `layer_summaries` | layer summary | `pipeline, build_id, layer, laser, revision` |
//! | `grid_maps` | grid map | `pipeline, build_id, layer, revision` |
//! | `window_results` | time-window result | `pipeline, build_id, window, window_start_ns` |
//! | `anomalies` | rule hit | `pipeline, build_id, rule, laser_key, time_ns` (`laser_key` = laser, or −1 when none) |
//! | `dead_letters` | rejected input record (with Kafka topic and partition), or a result this sink cannot store (`source` = `sink NAME: KEY`) | `pipeline, source, input, kafka_offset` |
//! | `late_records` | block of late samples | `pipeline, build_id, source_offset, t0_ns, laser` |
//! | `spc_signals` | SPC out-of-control point (`layers` an `int[]`; `cell`, `cell_x_mm`, `cell_y_mm`, `cell_mm` null but for cell charts) | `pipeline, build_id, spc, laser, layer, rule, coalesce(cell, -1)` (a unique index) |
//! | `layer_verdicts` | verdict on a closed layer (`reasons` and the whole `record` as `jsonb`) | `pipeline, build_id, layer` |
//! | `build_reports` | report of an ended build (the whole `record` as `jsonb`) | `pipeline, build_id` |
//! | `data_quality` | data quality of a closed layer (the whole `record` as `jsonb`) | `pipeline, build_id, layer` |
//! | `input_quality` | data quality of an input over a window of event time | `pipeline, source, input, window_start_ns` |
//! | `spc_baselines` | phase I baseline of an SPC chart (read back by `baseline = "reference"`) | `pipeline, build_id, spc, laser, coalesce(cell, -1)` (a unique index) |
//! | `progress` | Kafka partition | `pipeline, topic, partition` |
//!
//! Times are stored both as `timestamptz` (microseconds, computed in SQL from the record's
//! nanoseconds) and, where they are part of a key, as the exact `…_ns` integers. Maps and cell
//! lists are `jsonb`; `layer_summaries.record` holds the whole record. The schema is created
//! and migrated on first use (versions in `schema_version`, under a transaction-scoped advisory
//! lock so that several engines may start at once).
//!
//! # Repeated writes are harmless
//! [`SinkWriter::write`] only buffers. [`SinkWriter::flush`] runs one transaction holding one
//! multi-row `INSERT … SELECT … FROM UNNEST(…) ON CONFLICT DO NOTHING` per table that has
//! buffered rows, then one upsert of the checkpoint into `progress`, then `COMMIT`. Because every
//! insert skips rows whose key is already there and the progress is an upsert, writing the same
//! records again (a replay after a crash, or a flush retried after a `COMMIT` whose outcome was
//! unknown) changes nothing.
//!
//! # Progress
//! The [`Checkpoint`] given to a flush is stored in the same transaction as the records, so the
//! stored progress never runs ahead of the stored results (see `progress.rs`).
//!
//! # Fencing
//! Each `progress` row carries an `epoch`. When the consumer group assigns a partition to this
//! process, the next flush (the board's version moved, so one follows within `flush_ms`) first
//! claims the partition's next epoch (`epoch + 1`) in its transaction; every later upsert of
//! the row applies only `WHERE epoch` is still the one claimed. A process that lost the
//! partition without noticing (paused past the session timeout: a zombie) finds a newer epoch,
//! the upsert touches fewer rows than it sent, and the whole transaction rolls back
//! ([`SinkError::Fenced`]): it writes nothing, and its engine starts again.
//! [`SinkWriter::stored_progress`] reads it back once before the engine starts.
//!
//! # Files
//! This file is the sink itself; `postgres/` holds its column buffers (`columns.rs`), the schema
//! and its migrations (`schema.rs`), the error classes (`errors.rs`), its connections
//! (`connection.rs`) and the administrative functions (`admin.rs`: reset, row counts).
//!
//! # Failures
//! A failed flush keeps its buffers; the sink actor retries it with backoff as long as the
//! error is [`SinkError::Retryable`]: I/O and connection errors, a closed connection, pool
//! timeouts, and SQLSTATE classes `08` (connection exception), `40` (transaction rollback:
//! serialization failure, deadlock), `53` (insufficient resources) and `57` (operator
//! intervention, e.g. `57P01` admin shutdown). Anything else (say `42P01` undefined table) is a
//! fault that retrying will not fix: [`SinkError::Fatal`]. Every failure is logged with its
//! SQLSTATE.
//!
//! A record with a value that does not fit its column never gets that far: `write` stages it
//! as a dead letter (reason `unwritable`, the record as its raw prefix) in its place and
//! buffers the rest of the batch, so one result never halts the pipeline.

pub mod admin;
#[macro_use]
mod columns;
mod connection;
mod errors;
mod judgement_columns;
mod spc_columns;
pub mod fusion;
mod schema;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use deadpool_postgres::{Pool, PoolError};

use meltstream_engine::records::Emitted;

use crate::progress::{Checkpoint, Progress, StoredProgress, StoredStates};
use meltstream_engine::pipeline::decisions::PartitionState;
use crate::sinks::writer::{unwritable, SinkError, SinkWriter};

use columns::{bigint, Buffers, Param};
use schema::{Sql, MIGRATION_LOCK};

/// Writes records to PostgreSQL, one transaction per flush (see the module documentation).
pub struct PgSink {
    name: String,
    pipeline: String,
    schema: String,
    pool: Pool,
    sql: Sql,
    migrated: bool,
    buffers: Buffers,
    /// Per partition: the assignment (of this run) whose epoch this sink claimed, and the epoch.
    claimed: HashMap<(String, i32), (u64, i64)>,
    /// The replay state read with the stored progress.
    stored_states: StoredStates,
    /// Partitions claimed whose progress has not moved yet since (with the progress stored in
    /// the claiming transaction): the first move is logged, the end of a hand-over
    /// (`scripts/handover-times`).
    awaiting_first: HashMap<(String, i32), Progress>,
    /// The progress read last (at an assignment): where a claimed partition starts.
    read_progress: StoredProgress,
}

impl PgSink {
    /// A sink named `name` writing the rows of `pipeline` into `schema` of the database at
    /// `url`. Nothing connects yet: the first [`SinkWriter::stored_progress`] or flush does,
    /// and migrates the schema. Fails (fatally) only on a URL that does not parse.
    pub fn new(name: &str, url: &str, pipeline: &str, schema: &str) -> Result<PgSink, SinkError> {
        let fatal = |message: String| SinkError::Fatal { sink: name.to_owned(), message };
        if schema.is_empty() {
            return Err(fatal("the schema name is empty".into()));
        }
        let pool = connection::pool(url).map_err(fatal)?;
        Ok(PgSink {
            name: name.to_owned(),
            pipeline: pipeline.to_owned(),
            schema: schema.to_owned(),
            pool,
            sql: Sql::new(schema),
            migrated: false,
            buffers: Buffers::default(),
            claimed: HashMap::new(),
            stored_states: StoredStates::new(),
            awaiting_first: HashMap::new(),
            read_progress: StoredProgress::new(),
        })
    }

    /// Rows buffered since the last successful flush.
    pub fn buffered_rows(&self) -> usize {
        let b = &self.buffers;
        b.layer_summaries.len() + b.grid_maps.len() + b.window_results.len() + b.anomalies.len() + b.dead_letters.len() + b.late_records.len() + b.spc_signals.len() + b.layer_verdicts.len() + b.build_reports.len() + b.data_quality.len() + b.input_quality.len() + b.spc_baselines.len()
    }

    /// Classifies a database error of `stage`, logging it.
    fn db_error(&self, stage: &str, e: &tokio_postgres::Error) -> SinkError {
        errors::db_error(&self.name, stage, e)
    }

    /// Classifies a failure to get a connection, logging it.
    fn pool_error(&self, e: PoolError) -> SinkError {
        errors::pool_error(&self.name, e)
    }

    fn fatal(&self, message: String) -> SinkError {
        errors::fatal(&self.name, message)
    }

    /// Creates or upgrades the schema (idempotent; serialised by an advisory lock).
    async fn migrate(&mut self) -> Result<(), SinkError> {
        if self.migrated {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error("begin migration", &e))?;
        migrate_in(&tx, &self.sql, &self.name, &self.schema).await.map_err(|(stage, e)| self.db_error(&stage, &e))?;
        tx.commit().await.map_err(|e| self.db_error("commit migration", &e))?;
        self.migrated = true;
        Ok(())
    }

    /// Logs, once per claim, the first committed transaction that moved a claimed partition's
    /// progress: its new owner's first durable result (a layer result releasing the resume
    /// offset, or a positioned record moving the emitted-through offset).
    fn note_first_progress(&mut self, checkpoint: &Checkpoint, claims: &[((String, i32), (u64, i64))]) {
        let latest = |tp: &(String, i32)| checkpoint.entries.iter().rev().find(|(t, _)| t == tp).map(|(_, p)| *p);
        for (tp, _) in claims {
            let from = latest(tp).or_else(|| self.read_progress.get(tp).copied()).unwrap_or(Progress { resume: 0, emitted_through: 0 });
            self.awaiting_first.insert(tp.clone(), from);
        }
        let moved: Vec<(String, i32)> = self
            .awaiting_first
            .iter()
            .filter(|(tp, at)| !claims.iter().any(|(c, _)| c == *tp) && latest(tp).is_some_and(|p| p.resume > at.resume || p.emitted_through > at.emitted_through))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in moved {
            self.awaiting_first.remove(&tp);
            tracing::info!(sink = %self.name, topic = %tp.0, partition = tp.1, "first result of the partition durable since its claim");
        }
    }

    /// The partitions assigned to this process whose assignment this sink has not claimed an
    /// epoch for yet.
    fn unclaimed<'c>(&'c self, checkpoint: &'c Checkpoint) -> impl Iterator<Item = &'c (String, i32)> + 'c {
        checkpoint.assignments.iter().filter(|(tp, stamp)| self.claimed.get(*tp).map(|c| c.0) != Some(**stamp)).map(|(tp, _)| tp)
    }

    /// Writes the buffers and `checkpoint` in one transaction; returns the rows inserted per
    /// table and the epochs claimed in it, once committed.
    async fn write_transaction(&self, checkpoint: &Checkpoint) -> Result<(Vec<(&'static str, u64)>, Vec<((String, i32), (u64, i64))>), SinkError> {
        let b = &self.buffers;
        let p = &self.pipeline;
        let batches: [(&'static str, usize, &str, Vec<Param<'_>>); 12] = [
            ("layer_summaries", b.layer_summaries.len(), &self.sql.insert_layer_summaries, b.layer_summaries.params(p)),
            ("grid_maps", b.grid_maps.len(), &self.sql.insert_grid_maps, b.grid_maps.params(p)),
            ("window_results", b.window_results.len(), &self.sql.insert_window_results, b.window_results.params(p)),
            ("anomalies", b.anomalies.len(), &self.sql.insert_anomalies, b.anomalies.params(p)),
            ("dead_letters", b.dead_letters.len(), &self.sql.insert_dead_letters, b.dead_letters.params(p)),
            ("late_records", b.late_records.len(), &self.sql.insert_late_records, b.late_records.params(p)),
            ("spc_signals", b.spc_signals.len(), &self.sql.insert_spc_signals, b.spc_signals.params(p)),
            ("layer_verdicts", b.layer_verdicts.len(), &self.sql.insert_layer_verdicts, b.layer_verdicts.params(p)),
            ("build_reports", b.build_reports.len(), &self.sql.insert_build_reports, b.build_reports.params(p)),
            ("data_quality", b.data_quality.len(), &self.sql.insert_data_quality, b.data_quality.params(p)),
            ("input_quality", b.input_quality.len(), &self.sql.insert_input_quality, b.input_quality.params(p)),
            ("spc_baselines", b.spc_baselines.len(), &self.sql.insert_spc_baselines, b.spc_baselines.params(p)),
        ];
        // One entry per partition (an upsert may not touch a row twice); the latest wins.
        let latest: BTreeMap<(&str, i32), &Progress> = checkpoint.entries.iter().map(|((topic, partition), p)| ((topic.as_str(), *partition), p)).collect();
        let mut topics = Vec::with_capacity(latest.len());
        let mut partitions = Vec::with_capacity(latest.len());
        let mut resume = Vec::with_capacity(latest.len());
        let mut emitted = Vec::with_capacity(latest.len());
        let mut states = Vec::with_capacity(latest.len());
        for ((topic, partition), p) in &latest {
            states.push(checkpoint.states.get(&((*topic).to_owned(), *partition)).map(|s| s.to_json()).unwrap_or_else(|| "{}".to_owned()));
            topics.push(*topic);
            partitions.push(*partition);
            resume.push(bigint(p.resume, "resume offset").map_err(|m| self.fatal(m))?);
            emitted.push(bigint(p.emitted_through, "emitted-through offset").map_err(|m| self.fatal(m))?);
        }
        // Partitions assigned to this process since this sink last claimed them: their next
        // epoch is claimed first, in this transaction.
        let stamp = |topic: &str, partition: i32| checkpoint.assignments.get(&(topic.to_owned(), partition)).copied().unwrap_or(0);
        let to_claim: Vec<(&str, i32)> = self.unclaimed(checkpoint).map(|(t, p)| (t.as_str(), *p)).collect();

        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error("begin", &e))?;
        let mut claims = Vec::new();
        if !to_claim.is_empty() {
            let (ct, cp): (Vec<&str>, Vec<i32>) = to_claim.iter().copied().unzip();
            let stmt = tx.prepare_cached(&self.sql.claim_epochs).await.map_err(|e| self.db_error("prepare epoch claim", &e))?;
            let rows = tx.query(&stmt, &[p, &ct, &cp]).await.map_err(|e| self.db_error("claim epochs", &e))?;
            for row in rows {
                let (topic, partition, epoch): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
                tracing::info!(sink = %self.name, topic = %topic, partition, epoch, "claimed the partition's progress epoch");
                let s = stamp(&topic, partition);
                claims.push(((topic, partition), (s, epoch)));
            }
        }
        let epoch_of = |topic: &str, partition: i32| {
            claims.iter().find(|((t, p), _)| t == topic && *p == partition).map(|c| c.1 .1).or_else(|| self.claimed.get(&(topic.to_owned(), partition)).map(|c| c.1)).unwrap_or(0)
        };
        let epochs: Vec<i64> = latest.keys().map(|(t, p)| epoch_of(t, *p)).collect();
        let mut inserted = Vec::new();
        for (table, len, sql, params) in &batches {
            if *len == 0 {
                continue;
            }
            let stmt = tx.prepare_cached(sql).await.map_err(|e| self.db_error(&format!("prepare insert into {table}"), &e))?;
            let n = tx.execute(&stmt, params).await.map_err(|e| self.db_error(&format!("insert into {table}"), &e))?;
            inserted.push((*table, n));
        }
        if !latest.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.upsert_progress).await.map_err(|e| self.db_error("prepare progress upsert", &e))?;
            let params: [Param<'_>; 7] = [p, &topics, &partitions, &resume, &emitted, &epochs, &states];
            let stored = tx.execute(&stmt, &params).await.map_err(|e| self.db_error("store progress", &e))?;
            if stored < latest.len() as u64 {
                // Dropping the transaction rolls it back: none of its rows are written.
                drop(tx);
                let mine: Vec<String> = latest.keys().zip(&epochs).map(|((t, p), e)| format!("{t}/{p}@{e}")).collect();
                let message = format!("another process claimed a newer epoch of a partition this one stores progress for (this one holds {}); nothing written", mine.join(", "));
                tracing::error!(sink = %self.name, "{message}");
                metrics::counter!("meltstream_sink_fenced_total", "sink" => self.name.clone()).increment(1);
                return Err(SinkError::Fenced { sink: self.name.clone(), message });
            }
        }
        tx.commit().await.map_err(|e| self.db_error("commit", &e))?;
        Ok((inserted, claims))
    }
}

/// Creates or upgrades the schema inside `tx` (which it locks for migration); `who` names the
/// sink or command in the log. On failure, the stage that failed and the error.
async fn migrate_in(tx: &tokio_postgres::Transaction<'_>, sql: &Sql, who: &str, schema: &str) -> Result<(), (String, tokio_postgres::Error)> {
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await.map_err(|e| ("lock for migration".to_owned(), e))?;
    tx.batch_execute(&sql.bootstrap).await.map_err(|e| ("create schema".to_owned(), e))?;
    for (version, what, statements) in &sql.migrations {
        let applied = tx.query_opt(&sql.has_version, &[version]).await.map_err(|e| ("read schema version".to_owned(), e))?;
        if applied.is_none() {
            tx.batch_execute(statements).await.map_err(|e| (format!("apply migration {version}"), e))?;
            tracing::info!(sink = %who, schema = %schema, "{what} (schema version {version})");
        }
    }
    Ok(())
}

impl SinkWriter for PgSink {
    fn discard(&mut self) {
        self.buffers.clear();
    }

    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        // Stage first, so that a record that cannot be stored leaves the buffers as they were.
        let mut staged = Buffers::default();
        if records.iter().all(|r| staged.push(&r.record).is_ok()) {
            self.buffers.append(&mut staged);
            return Ok(());
        }
        // Some record does not fit its columns: stage one by one, each such record as a dead
        // letter in its place; the others are written as usual.
        let mut staged = Buffers::default();
        for r in records {
            let mut one = Buffers::default();
            match one.push(&r.record) {
                Ok(()) => staged.append(&mut one),
                Err(m) => {
                    let mut dead = Buffers::default();
                    dead.push(&unwritable(&self.name, r, &m).record).map_err(|m| self.fatal(format!("cannot store the dead letter of {}: {m}", r.record.key())))?;
                    staged.append(&mut dead);
                }
            }
        }
        self.buffers.append(&mut staged);
        Ok(())
    }

    async fn flush(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        if self.buffers.is_empty() && checkpoint.entries.is_empty() && self.unclaimed(checkpoint).next().is_none() {
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        if !self.buffers.is_empty() && fault_fail_flush() {
            return Err(self.fatal("fault injection: MELTSTREAM_FAULT_FAIL_PG_FLUSHES".into()));
        }
        let started = Instant::now();
        self.migrate().await?;
        let (inserted, claims) = self.write_transaction(checkpoint).await?;
        // Committed: only now may the rows leave the buffers, and the claims count.
        self.buffers.clear();
        self.note_first_progress(checkpoint, &claims);
        self.claimed.extend(claims);
        for (table, n) in inserted {
            metrics::counter!("meltstream_pg_rows_total", "sink" => self.name.clone(), "table" => table).increment(n);
        }
        metrics::histogram!("meltstream_pg_flush_seconds", "sink" => self.name.clone()).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn take_stored_states(&mut self) -> StoredStates {
        std::mem::take(&mut self.stored_states)
    }

    async fn stored_progress(&mut self) -> Result<Option<StoredProgress>, SinkError> {
        self.migrate().await?;
        let client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let stmt = client.prepare_cached(&self.sql.select_progress).await.map_err(|e| self.db_error("prepare progress query", &e))?;
        let rows = client.query(&stmt, &[&self.pipeline]).await.map_err(|e| self.db_error("read progress", &e))?;
        let mut stored = StoredProgress::new();
        for row in rows {
            let topic: String = row.try_get(0).map_err(|e| self.db_error("read progress", &e))?;
            let partition: i32 = row.try_get(1).map_err(|e| self.db_error("read progress", &e))?;
            let resume: i64 = row.try_get(2).map_err(|e| self.db_error("read progress", &e))?;
            let emitted: i64 = row.try_get(3).map_err(|e| self.db_error("read progress", &e))?;
            let offset = |v: i64| u64::try_from(v).map_err(|_| self.fatal(format!("negative offset {v} stored for {topic}/{partition}")));
            let state: String = row.try_get(4).map_err(|e| self.db_error("read progress", &e))?;
            let progress = Progress { resume: offset(resume)?, emitted_through: offset(emitted)? };
            match PartitionState::from_json(&state) {
                Ok(s) => {
                    self.stored_states.insert((topic.clone(), partition), s);
                }
                Err(e) => tracing::warn!(sink = %self.name, topic = %topic, partition, error = %e, "unreadable replay state stored with the progress; the replay starts without it"),
            }
            stored.insert((topic, partition), progress);
        }
        self.read_progress = stored.clone();
        Ok(Some(stored))
    }
}

/// Test hook: with `MELTSTREAM_FAULT_FAIL_PG_FLUSHES=n`, the first `n` flushes with records of
/// this process fail fatally (the root supervisor's restart intensity is tested with it).
/// Compiled only with the `fault-injection` feature (the tests'), never in a release binary.
#[cfg(feature = "fault-injection")]
fn fault_fail_flush() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static LIMIT: OnceLock<u64> = OnceLock::new();
    static FAILED: AtomicU64 = AtomicU64::new(0);
    let limit = *LIMIT.get_or_init(|| std::env::var("MELTSTREAM_FAULT_FAIL_PG_FLUSHES").ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    FAILED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_url_is_fatal() {
        assert!(matches!(PgSink::new("pg", "postgres://host:notaport/db", "p", "s"), Err(SinkError::Fatal { .. })));
    }
}
