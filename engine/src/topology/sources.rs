//! `[[sources]]`: the config struct of each source type (simulator, file, R1, Kafka, CT) with their
//! defaults, and [`SourceKind`], the tagged set of them. Plain serde structs; which `type` picks
//! which struct is the registry in `load`, and their bounds are checked in `check`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::simulator::kinds::AnomalyKind;

/// Pace of the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// As fast as the engine takes it.
    Fast,
    /// Event time follows the wall clock.
    Real,
}

/// `type = "simulator"`: a fleet of simulated machines.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorConfig {
    /// Number of machines (one build each).
    pub machines: u32,
    /// Lasers per machine.
    pub lasers: u8,
    /// Samples per second per laser.
    pub sample_rate_hz: u32,
    /// Layers per build.
    pub layers: u32,
    /// Exposure time of a layer, ms.
    pub layer_ms: u64,
    /// Recoat time between layers, ms.
    pub recoat_ms: u64,
    /// Length of one sample block, ms.
    pub block_ms: u64,
    /// Seed of the deterministic generator.
    pub seed: u64,
    /// `fast` or `real`.
    pub pace: Pace,
    /// Inject anomalies (hot spot, power drop, O2 rise, lack of fusion, and with
    /// `anomaly_rate_per_layer` the kinds of `anomaly_kinds`).
    pub anomalies: bool,
    /// Expected anomalies planted per layer of each build, from `anomaly_from_layer` on (the
    /// integer part on every layer, the fraction as a chance); 0 keeps the fixed plan (one
    /// anomaly per build on layer 1).
    pub anomaly_rate_per_layer: f64,
    /// First layer that can carry a planted anomaly (keep SPC baselines clean).
    pub anomaly_from_layer: u32,
    /// The kinds drawn (uniformly) by `anomaly_rate_per_layer`.
    pub anomaly_kinds: Vec<AnomalyKind>,
    /// A slow drift only SPC sees: in every build one laser (drawn from the seed) delivers this
    /// much less power each layer, from the middle of the build on (percent per layer; 0: none), so
    /// that a baseline on the first layers is in control.
    pub power_drift_pct_per_layer: f64,
    /// Sample blocks lost on the way (percent of all blocks, in bursts of 1 to 10 blocks of one
    /// laser): what the data-quality records see. 0: none.
    pub block_loss_pct: f64,
    /// Blocks per batch handed to the engine.
    pub batch_blocks: usize,
    /// Event time of the first sample, RFC 3339.
    pub start_time: String,
    /// Prefix of the build ids (`<prefix><machine>`).
    pub build_prefix: String,
    /// Builds each machine runs, one after the other (`<prefix><machine>`, then
    /// `<prefix><machine>-2`, …); 0: without end (a long-running fleet).
    pub builds_per_machine: u32,
    /// Time between a machine's builds (plate change), ms.
    pub build_gap_ms: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            machines: 3,
            lasers: 4,
            sample_rate_hz: 100_000,
            layers: 5,
            layer_ms: 2_000,
            recoat_ms: 200,
            block_ms: 1,
            seed: 42,
            pace: Pace::Fast,
            anomalies: true,
            anomaly_rate_per_layer: 0.0,
            anomaly_from_layer: 1,
            anomaly_kinds: AnomalyKind::LOCAL.to_vec(),
            power_drift_pct_per_layer: 0.0,
            block_loss_pct: 0.0,
            batch_blocks: 64,
            start_time: "2024-01-15T10:30:00Z".into(),
            build_prefix: "sim-".into(),
            builds_per_machine: 1,
            build_gap_ms: 2_000,
        }
    }
}

/// `type = "file"` source: replay of JSON lines.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file (relative paths are relative to the topology file).
    pub path: PathBuf,
    /// Records per batch.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
}

fn default_batch_records() -> usize {
    1024
}

/// `type = "r1"`: the R1 reference workload of DESIGN §4 (per-sample events).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct R1Config {
    /// Builds.
    pub builds: usize,
    /// Samples in all.
    pub samples: u64,
    /// Samples per batch.
    pub batch_samples: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for R1Config {
    fn default() -> Self {
        R1Config { builds: 8, samples: 10_000_000, batch_samples: 4096, seed: 7 }
    }
}

/// `type = "kafka"` source: a consumer-group member reading JSON messages (the seed's format,
/// sample blocks, layer events, logs).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers (`host:port,...`); `${VAR}` and `${VAR:-default}` are expanded.
    pub brokers: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Consumer group (default: `meltstream-<topology name>`).
    #[serde(default)]
    pub group_id: String,
    /// Messages per batch (per partition).
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// A partial batch is sent after this long, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// librdkafka's read-ahead bound per consumer, KiB (`queued.max.messages.kbytes`).
    #[serde(default = "default_prefetch_kib")]
    pub prefetch_kib: u64,
    /// Extra librdkafka properties (security, timeouts).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_linger_ms() -> u64 {
    5
}

fn default_prefetch_kib() -> u64 {
    16 * 1024
}

/// `type = "ct"`: CT defect lists, fused with the stored in-situ evidence as they arrive (the
/// streaming form of `meltstream fuse`). Exactly one of `path` (a file) and `brokers` + `topic`
/// (a Kafka topic, read from its beginning on every start) is set.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CtSourceConfig {
    /// A CT defect list, JSON lines or CSV with a header (relative paths are relative to the
    /// topology file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Bootstrap servers (`host:port,...`); `${VAR}` and `${VAR:-default}` are expanded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// The topic (one JSON object or one CSV row per message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Consumer group id librdkafka is given (offsets are never committed: the topic is read
    /// from its beginning on every start). Default: `meltstream-ct-<topology name>`.
    #[serde(default)]
    pub group_id: String,
    /// Kafka: a build whose defects changed is fused once the topic is read to its end, or after
    /// this long without a message, ms.
    #[serde(default = "default_ct_quiet_ms")]
    pub quiet_ms: u64,
    /// Kafka: end once the topic is read to its end (and its builds fused), like a file.
    #[serde(default)]
    pub stop_at_end: bool,
    /// Extra librdkafka properties (security, timeouts).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_ct_quiet_ms() -> u64 {
    1_000
}

/// A source of the topology.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceKind {
    /// Simulated fleet.
    Simulator(SimulatorConfig),
    /// R1 reference workload.
    R1(R1Config),
    /// JSON-lines replay.
    File(FileSourceConfig),
    /// Kafka consumer.
    Kafka(KafkaSourceConfig),
    /// CT defect lists, fused as they arrive.
    Ct(CtSourceConfig),
}

/// A named source.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SourceConfig {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
}
