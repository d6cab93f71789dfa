//! What a sink writes through: the [`SinkWriter`] trait every sink implements (file, null,
//! PostgreSQL, Kafka, the test doubles), its object-safe form, and [`SinkError`], whose variant
//! tells the sink actor whether a retry can help. Never any actor or channel here.

use meltstream_engine::input::reject::{DeadLetter, RejectReason};
use meltstream_engine::records::{DeadLetterRecord, Emitted, OutputRecord};

use crate::progress::{Checkpoint, StoredProgress, StoredStates, Written};

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where records end up. `write` may buffer; `flush` makes everything written so far durable.
pub trait SinkWriter: Send + 'static {
    /// Buffers or writes records.
    fn write(&mut self, records: &[Emitted]) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
    /// Makes everything written durable; a transactional sink stores `checkpoint` atomically
    /// with it (a flush with no records then stores just the checkpoint).
    fn flush(&mut self, checkpoint: &Checkpoint) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
    /// For a transactional sink, the progress it stored (read once, before the engine starts);
    /// `None` for a sink that stores none.
    fn stored_progress(&mut self) -> impl std::future::Future<Output = Result<Option<StoredProgress>, SinkError>> + Send {
        async { Ok(None) }
    }
    /// After [`SinkWriter::stored_progress`]: source positions at or above the stored
    /// emitted-through whose records are nevertheless durable here (a sink without keys, whose
    /// last transactions held records ahead of the progress stored with them).
    fn take_written(&mut self) -> Written {
        Written::new()
    }
    /// After [`SinkWriter::stored_progress`]: the replay state stored with the progress.
    fn take_stored_states(&mut self) -> StoredStates {
        StoredStates::new()
    }
    /// Drops everything buffered and not yet flushed (the run was fenced: another process may
    /// own what it was computed from). Nothing to do for a sink that buffers nothing.
    fn discard(&mut self) {}
}

/// An object-safe wrapper so that a topology can hold sinks of different types.
pub type BoxedWriter = Box<dyn DynWriter>;

/// Object-safe form of [`SinkWriter`].
pub trait DynWriter: Send + 'static {
    /// See [`SinkWriter::write`].
    fn write<'a>(&'a mut self, records: &'a [Emitted]) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>>;
    /// See [`SinkWriter::flush`].
    fn flush<'a>(&'a mut self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), SinkError>>;
    /// See [`SinkWriter::stored_progress`].
    fn stored_progress(&mut self) -> BoxFuture<'_, Result<Option<StoredProgress>, SinkError>>;
    /// See [`SinkWriter::take_written`].
    fn take_written(&mut self) -> Written;
    /// See [`SinkWriter::take_stored_states`].
    fn take_stored_states(&mut self) -> StoredStates;
    /// See [`SinkWriter::discard`].
    fn discard(&mut self);
}

impl<W: SinkWriter> DynWriter for W {
    fn write<'a>(&'a mut self, records: &'a [Emitted]) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(SinkWriter::write(self, records))
    }
    fn flush<'a>(&'a mut self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(SinkWriter::flush(self, checkpoint))
    }
    fn stored_progress(&mut self) -> BoxFuture<'_, Result<Option<StoredProgress>, SinkError>> {
        Box::pin(SinkWriter::stored_progress(self))
    }
    fn take_written(&mut self) -> Written {
        SinkWriter::take_written(self)
    }
    fn take_stored_states(&mut self) -> StoredStates {
        SinkWriter::take_stored_states(self)
    }
    fn discard(&mut self) {
        SinkWriter::discard(self)
    }
}

/// A sink failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Transient: retrying may help (the sink retries with backoff).
    #[error("sink {sink}: {message} (will retry)")]
    Retryable {
        /// The sink.
        sink: String,
        /// What failed.
        message: String,
    },
    /// Another process owns a partition this sink stores progress for (it claimed a newer
    /// epoch): nothing of the transaction was written. Like a fatal error, the sink fails; the
    /// engine starts again from the stored progress and rejoins its consumer group.
    #[error("sink {sink}: fenced: {message}")]
    Fenced {
        /// The sink.
        sink: String,
        /// What was refused.
        message: String,
    },
    /// Permanent: the sink fails and its supervisor decides.
    #[error("sink {sink}: {message}")]
    Fatal {
        /// The sink.
        sink: String,
        /// What failed.
        message: String,
    },
}

/// The dead letter a sink writes in place of a result it cannot store, so that one result
/// never halts a pipeline (DESIGN §3.5). It keeps the result's holds and position (the offsets
/// behind it move on once the dead letter is durable) and names the sink and the result's key
/// in `source`, which keeps two such dead letters of one source position apart. Counted in
/// `meltstream_dead_letters_total{reason="unwritable"}` and logged.
pub fn unwritable(sink: &str, e: &Emitted, why: &str) -> Emitted {
    let key = e.record.key();
    let (input, offset) = e.position.unwrap_or((0, 0));
    let raw = serde_json::to_vec(&e.record).unwrap_or_default();
    let dl = DeadLetter::new(input, offset, RejectReason::Unwritable(format!("{key}: {why}")), &raw);
    let record = DeadLetterRecord::from_dead_letter(format!("sink {sink}: {key}"), None, &dl);
    metrics::counter!("meltstream_dead_letters_total", "reason" => record.reason_kind.clone()).increment(1);
    tracing::warn!(sink, record = %key, reason = %why, "a result this sink cannot store is written as a dead letter");
    Emitted { record: OutputRecord::DeadLetter(record), hold: e.hold.clone(), origin_wall_ns: e.origin_wall_ns, position: e.position }
}

/// Test hook shared by the sinks: when the environment variable `var` holds `n`, the process
/// aborts (`what` says at which instant). Only in builds with the `fault-injection` feature (the
/// tests'), never in a release binary.
#[cfg(feature = "fault-injection")]
pub fn fault_abort_at(var: &str, n: u64, what: &str) {
    if std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) == Some(n) {
        eprintln!("meltstream: {var}={n}: aborting {what}");
        std::process::abort();
    }
}
