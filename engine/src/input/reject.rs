//! Why a record is refused and what is kept of it: the reject reasons (one stable metric label
//! each) and the [`DeadLetter`] that carries a refused record's input, offset and first bytes to
//! the dead-letter output. Only data types: nothing here parses or decides.

use crate::input::event::InputId;

/// Why a record was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RejectReason {
    /// Not JSON at all, or truncated.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON, but not a record meltstream knows (missing or unknown fields, wrong types).
    #[error("wrong schema: {0}")]
    Schema(String),
    /// A value outside its domain (negative layer, non-finite number, mismatched block columns).
    #[error("out of range: {0}")]
    Range(String),
    /// Larger than the configured record limit.
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the record.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Event time further in the future than the configured skew allows.
    #[error("timestamp {t} is more than {max_future_s} s ahead of the wall clock")]
    Future {
        /// The offending time, RFC 3339.
        t: String,
        /// The allowed skew in seconds.
        max_future_s: i64,
    },
    /// A result a sink cannot store (a value beyond its column, a message beyond the broker's
    /// limit): the sink writes this dead letter in its place and the rest of the batch.
    #[error("a sink cannot store it: {0}")]
    Unwritable(String),
    /// The record made an actor fail; it was set aside so that it cannot fail it again.
    #[error("poison record: {0}")]
    Poison(String),
    /// A layer `end` for a build with no open layer: its first record, or one for a build
    /// whose layers are all closed.
    #[error("unknown build: {0}")]
    UnknownBuild(String),
    /// A layer `end` for a layer of a known build that has no open window: never started and
    /// without samples, or already final.
    #[error("unknown layer: {0}")]
    UnknownLayer(String),
}

impl RejectReason {
    /// A short stable label for metrics (`reason` label).
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::Json(_) => "invalid_json",
            RejectReason::Schema(_) => "wrong_schema",
            RejectReason::Range(_) => "out_of_range",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::Future { .. } => "future_timestamp",
            RejectReason::Unwritable(_) => "unwritable",
            RejectReason::Poison(_) => "poison",
            RejectReason::UnknownBuild(_) => "unknown_build",
            RejectReason::UnknownLayer(_) => "unknown_layer",
        }
    }
}

/// A rejected record, with where it came from and why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Input it came from.
    pub input: InputId,
    /// Source offset (line number, Kafka offset).
    pub offset: u64,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The first bytes of the record, lossily as UTF-8 (at most [`DEAD_LETTER_PREFIX`] bytes).
    pub raw_prefix: String,
}

/// How much of a rejected record is kept in its dead letter.
pub const DEAD_LETTER_PREFIX: usize = 512;

impl DeadLetter {
    /// A dead letter for `raw` at `offset`.
    pub fn new(input: InputId, offset: u64, reason: RejectReason, raw: &[u8]) -> DeadLetter {
        let cut = raw.len().min(DEAD_LETTER_PREFIX);
        DeadLetter { input, offset, reason, raw_prefix: String::from_utf8_lossy(&raw[..cut]).into_owned() }
    }
}
