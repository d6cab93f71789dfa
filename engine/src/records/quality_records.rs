//! The data-quality records: per closed layer (`data_quality`, with its lasers) and per input
//! and window of event time (`input_quality`). `docs/records.md` documents every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One laser's data quality in one layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaserQuality {
    /// Samples received.
    pub samples: u64,
    /// Samples its sample period gives over the layer's exposure.
    pub expected: u64,
    /// Blocks received.
    pub blocks: u64,
    /// Samples that cover time already covered (duplicated or overlapping blocks).
    pub duplicate_samples: u64,
    /// Holes in the stream longer than three block lengths (the exposure's edges included).
    pub gaps: u32,
    /// Their total length, ms.
    pub gap_ms: f64,
    /// Distinct samples received ÷ expected, at most 1: duplicates do not fill holes.
    pub score: f64,
}

/// The data quality of one closed layer of a build, per laser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataQuality {
    /// Build.
    pub build_id: String,
    /// Layer.
    pub layer: u32,
    /// End of the layer's window.
    pub time: String,
    /// Same, ns.
    pub time_ns: i64,
    /// Exposure judged (the layer window's span), ms.
    pub exposure_ms: f64,
    /// The lowest laser score, 0–1.
    pub score: f64,
    /// Below `[verdict] min_data_quality`.
    pub below_threshold: bool,
    /// Per laser (lasers with a known sample period).
    pub lasers: BTreeMap<String, LaserQuality>,
}

/// The data quality of one input (a file, a simulator, a Kafka partition) over a window of
/// event time (`[engine] input_quality_window_ms`; see `pipeline::input_quality`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputQuality {
    /// The source's name.
    pub source: String,
    /// Input number (engine-internal, as in dead letters).
    pub input: u32,
    /// Kafka topic, for a Kafka source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka partition, for a Kafka source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Window start (of the input's running maximum event time).
    pub window_start: String,
    /// Same, ns.
    pub window_start_ns: i64,
    /// Window end (exclusive), ns.
    pub window_end_ns: i64,
    /// Source records (dead letters included).
    pub records: u64,
    /// Samples.
    pub samples: u64,
    /// Sample blocks.
    pub blocks: u64,
    /// Layer events.
    pub layer_events: u64,
    /// Machine-log records.
    pub logs: u64,
    /// Records rejected when decoding.
    pub dead_letters: u64,
    /// The same per reason.
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    /// Dead letters ÷ records.
    pub dead_letter_rate: f64,
    /// Samples behind the input's watermark when they arrived.
    pub late_samples: u64,
    /// Late samples ÷ samples.
    pub late_rate: f64,
    /// The largest lag of a sample behind the largest event time before it, ms.
    pub max_disorder_ms: f64,
    /// (1 − dead-letter rate) × (1 − late rate).
    pub score: f64,
    /// Below `[verdict] min_data_quality`.
    pub below_threshold: bool,
}
