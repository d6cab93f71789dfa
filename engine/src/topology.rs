//! The topology schema (sources, windows, rules, sinks, engine settings) and its two-pass
//! loading: parse the TOML keeping positions, then check the whole graph and report *every*
//! error at once with file, line, key and what was expected. Nothing here starts anything;
//! `actors` builds a running engine only from a [`Topology`] that passed [`load`].
//!
//! Components are chosen by their `type` key through one explicit registry (the `match` in
//! [`parse_source`] and [`parse_sink`]); each component's config is a `serde` struct with
//! `deny_unknown_fields` and documented defaults. `docs/topology.md` documents every key.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::input::event::Channel;
use crate::analytics::rules::CmpOp;

/// The embedded default topology (`topologies/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../topologies/demo.toml");

/// One problem in a topology file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// Dotted key path (`sources[1].path`).
    pub key: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: `{}`: {}", self.file, self.line, self.key, self.message)
    }
}

/// Every problem found in one file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// What to do with a record that arrives after its window was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Count it (metric `meltstream_late_samples_total`) and drop it.
    Drop,
    /// Send it, as a `late` record, to the sinks that take `late` records.
    LateSink,
    /// Merge it into the window and emit the result again, as long as the watermark is no more
    /// than `allowed_lateness_ms` past the window's end; later than that, drop and count.
    Update,
}

/// What a source does when the engine cannot take more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait (backpressure); nothing is lost.
    Block,
    /// Drop the newest batch and count it (only when the topology asks).
    DropNewest,
}

/// Engine-wide settings (`[engine]`).
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Bounded out-of-orderness of every input, ms.
    pub watermark_bound_ms: u64,
    /// An input without data for this long stops holding the watermark back, ms.
    pub input_idle_timeout_ms: u64,
    /// How often the watermark coordinator checks idleness and publishes, ms.
    pub watermark_interval_ms: u64,
    /// A build without events for this long is flushed and its actor stopped, ms.
    pub build_idle_timeout_ms: u64,
    /// A layer with no `end` event closes once the watermark is this far past its last sample, ms.
    pub layer_gap_timeout_ms: u64,
    /// Late-record policy.
    pub late_policy: LatePolicy,
    /// With `late_policy = "update"`: how long after a window's end it may still be updated, ms.
    pub allowed_lateness_ms: u64,
    /// Budget for batches in flight between the router and the build actors, MiB.
    pub memory_budget_mb: u64,
    /// Capacity of the queue from the sources to the router, in batches.
    pub source_queue_batches: usize,
    /// Capacity of each sink's queue, in records.
    pub sink_queue_records: usize,
    /// What sources do when the engine is full.
    pub when_full: WhenFull,
    /// Supervision: at most this many restarts …
    pub max_restarts: u32,
    /// … within this many seconds; beyond, the engine stops with an error.
    pub max_restart_window_s: u64,
    /// Largest accepted record, bytes.
    pub max_record_bytes: usize,
    /// How far ahead of the wall clock an event time may be, s.
    pub max_future_s: u64,
    /// Period of the terminal summary, ms (0: none).
    pub summary_interval_ms: u64,
    /// Address of the HTTP admin API (`/metrics`, `/health`, `/builds`), empty for none.
    pub admin_addr: String,
    /// Default layer thickness when no layer event gives one, µm.
    pub default_layer_thickness_um: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            watermark_bound_ms: 50,
            input_idle_timeout_ms: 5_000,
            watermark_interval_ms: 20,
            build_idle_timeout_ms: 600_000,
            layer_gap_timeout_ms: 30_000,
            late_policy: LatePolicy::Drop,
            allowed_lateness_ms: 0,
            memory_budget_mb: 256,
            source_queue_batches: 16,
            sink_queue_records: 65_536,
            when_full: WhenFull::Block,
            max_restarts: 5,
            max_restart_window_s: 60,
            max_record_bytes: 1 << 20,
            max_future_s: 86_400,
            summary_interval_ms: 1_000,
            admin_addr: String::new(),
            default_layer_thickness_um: 30.0,
        }
    }
}

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
    /// Inject anomalies (hot spot, power drop, O2 rise, lack of fusion).
    pub anomalies: bool,
    /// Blocks per batch handed to the engine.
    pub batch_blocks: usize,
    /// Event time of the first sample, RFC 3339.
    pub start_time: String,
    /// Prefix of the build ids (`<prefix><machine>`).
    pub build_prefix: String,
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
            batch_blocks: 64,
            start_time: "2024-01-15T10:30:00Z".into(),
            build_prefix: "sim-".into(),
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
}

/// A named source.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SourceConfig {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
}

/// Which output records a sink takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Per layer and laser statistics.
    LayerSummary,
    /// Per layer x/y grid map.
    Grid,
    /// Time-window results.
    Window,
    /// Rule hits.
    Anomaly,
    /// Rejected input.
    DeadLetter,
    /// Records that came too late (with `late_policy = "late_sink"`).
    Late,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 6] = [
        RecordKind::LayerSummary,
        RecordKind::Grid,
        RecordKind::Window,
        RecordKind::Anomaly,
        RecordKind::DeadLetter,
        RecordKind::Late,
    ];

    /// Its name in topologies and in the records' `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::LayerSummary => "layer_summary",
            RecordKind::Grid => "grid",
            RecordKind::Window => "window",
            RecordKind::Anomaly => "anomaly",
            RecordKind::DeadLetter => "dead_letter",
            RecordKind::Late => "late",
        }
    }
}

fn all_kinds() -> Vec<RecordKind> {
    RecordKind::ALL.to_vec()
}

/// `type = "file"` sink: JSON lines.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Output file (relative to the working directory); created with its directory.
    pub path: PathBuf,
    /// Record kinds written.
    #[serde(default = "all_kinds")]
    pub records: Vec<RecordKind>,
    /// Flush (and acknowledge) at least this often, ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// fsync on every flush (durable across power loss, slower).
    #[serde(default)]
    pub fsync: bool,
}

fn default_flush_ms() -> u64 {
    100
}

/// `type = "null"` sink: counts and acknowledges.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {
    /// Record kinds taken.
    #[serde(default = "all_kinds")]
    pub records: Vec<RecordKind>,
}

/// `type = "postgres"` sink: tables per record kind, written in batches, each flush one
/// transaction together with the source progress.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection URL; `${VAR}` and `${VAR:-default}` are expanded.
    pub url: String,
    /// Schema holding the tables (created and migrated by the engine).
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    /// Pipeline name keying every row and the progress (default: the topology's name).
    #[serde(default)]
    pub pipeline: String,
    /// Record kinds written.
    #[serde(default = "all_kinds")]
    pub records: Vec<RecordKind>,
    /// Flush (one transaction) at least this often, ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
}

fn default_pg_schema() -> String {
    "meltstream".into()
}

/// `type = "kafka"` sink: a transactional producer; records and the source offsets that
/// produced them commit together.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers; `${VAR}` and `${VAR:-default}` are expanded.
    pub brokers: String,
    /// Topic written.
    pub topic: String,
    /// Transactional id (default: `meltstream-<topology name>-<sink name>`); one per running
    /// engine instance.
    #[serde(default)]
    pub transactional_id: String,
    /// Record kinds written: only kinds with a source position (`anomaly`, `dead_letter`, `late`).
    #[serde(default = "alert_kinds")]
    pub records: Vec<RecordKind>,
    /// Flush (one transaction) at least this often, ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Extra librdkafka properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn alert_kinds() -> Vec<RecordKind> {
    vec![RecordKind::Anomaly]
}

/// A sink of the topology.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    /// JSON-lines file.
    File(FileSinkConfig),
    /// Discards.
    Null(NullSinkConfig),
    /// PostgreSQL tables.
    Postgres(PostgresSinkConfig),
    /// Kafka topic, transactional.
    Kafka(KafkaSinkConfig),
}

impl SinkKind {
    /// The record kinds this sink takes.
    pub fn records(&self) -> &[RecordKind] {
        match self {
            SinkKind::File(c) => &c.records,
            SinkKind::Null(c) => &c.records,
            SinkKind::Postgres(c) => &c.records,
            SinkKind::Kafka(c) => &c.records,
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in `s` from the environment (an unset variable
/// without a default expands to nothing).
pub fn expand_env(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &rest[i + 2..i + j];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => out.push_str(default.unwrap_or("")),
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}

/// A named sink.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SinkConfig {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: SinkKind,
}

/// Kind of a time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWindowKind {
    /// Fixed, adjacent windows of `size_ms`.
    Tumbling,
    /// Windows of `size_ms` every `slide_ms`.
    Sliding,
    /// Activity separated by gaps longer than `gap_ms`.
    Session,
}

/// One time window inside each build (`[[windows.time]]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowConfig {
    /// Name, written in each result.
    pub name: String,
    /// Kind.
    pub kind: TimeWindowKind,
    /// Channel aggregated.
    pub channel: String,
    /// Size (tumbling, sliding), ms.
    #[serde(default)]
    pub size_ms: u64,
    /// Slide (sliding), ms.
    #[serde(default)]
    pub slide_ms: u64,
    /// Gap (session), ms.
    #[serde(default)]
    pub gap_ms: u64,
}

/// Windows (`[windows]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// Grid cell size, mm.
    pub grid_cell_mm: f64,
    /// Build plate size (square), mm; samples outside `[0, plate_mm)` are counted, not mapped.
    pub plate_mm: f64,
    /// Channel averaged in the grid map.
    pub grid_channel: String,
    /// Time windows inside each build.
    pub time: Vec<TimeWindowConfig>,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig { grid_cell_mm: 10.0, plate_mm: 400.0, grid_channel: "photodiode_on_axis".into(), time: Vec::new() }
    }
}

/// A threshold rule (`[[rules]]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name, written in each anomaly.
    pub name: String,
    /// A sample channel, a machine-log channel (`o2_ppm`) or `energy_density_j_mm3` (per layer and laser).
    pub channel: String,
    /// Comparison: `>`, `>=`, `<`, `<=`.
    pub op: String,
    /// The limit.
    pub limit: f64,
    /// At most one anomaly per build, laser and rule in each period of this length (event time), ms.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
}

fn default_cooldown_ms() -> u64 {
    1_000
}

/// A checked topology.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Topology {
    /// Its name.
    pub name: String,
    /// Directory of the file it was loaded from (relative paths of file sources resolve here).
    pub base_dir: PathBuf,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Sources.
    pub sources: Vec<SourceConfig>,
    /// Windows.
    pub windows: WindowsConfig,
    /// Rules.
    pub rules: Vec<RuleConfig>,
    /// Sinks.
    pub sinks: Vec<SinkConfig>,
}

/// Reads and checks a topology file.
pub fn load_file(path: &Path) -> Result<Topology, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError { file: file.clone(), line: 0, key: String::new(), message: format!("cannot read: {e}") }])
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load(&text, &file, &base)
}

/// Positions of keys, from a span-keeping parse.
struct Positions {
    text: String,
    spans: BTreeMap<String, usize>,
}

impl Positions {
    fn new(text: &str) -> Positions {
        let mut spans = BTreeMap::new();
        if let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() {
            walk_table(doc.as_table(), "", &mut spans);
        }
        Positions { text: text.to_owned(), spans }
    }

    /// Line of `key`, or of its nearest ancestor that has a position.
    fn line(&self, key: &str) -> usize {
        let mut k = key.to_owned();
        loop {
            if let Some(&off) = self.spans.get(&k) {
                return line_of(&self.text, off);
            }
            match k.rfind(['.', '[']) {
                Some(i) => k.truncate(i),
                None => return 0,
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn walk_table(t: &toml_edit::Table, prefix: &str, spans: &mut BTreeMap<String, usize>) {
    for (k, item) in t.iter() {
        let path = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
        let off = t.key(k).and_then(|key| key.span()).map(|s| s.start).or_else(|| item.span().map(|s| s.start));
        if let Some(off) = off {
            spans.insert(path.clone(), off);
        }
        walk_item(item, &path, spans);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, spans: &mut BTreeMap<String, usize>) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, spans),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(s) = t.span() {
                    spans.insert(p.clone(), s.start);
                }
                walk_table(t, &p, spans);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = format!("{path}.{k}");
                if let Some(s) = t.key(k).and_then(|key| key.span()).or_else(|| v.span()) {
                    spans.insert(p, s.start);
                }
            }
        }
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                if let Some(s) = v.span() {
                    spans.insert(format!("{path}[{i}]"), s.start);
                }
            }
        }
        _ => {}
    }
}

/// Collects errors while checking one file.
struct Checker<'a> {
    file: &'a str,
    pos: Positions,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        let line = self.pos.line(key);
        self.errors.push(ConfigError { file: self.file.to_owned(), line, key: key.to_owned(), message: message.into() });
    }

    /// Deserializes `value` as `T`, reporting a failure at the precise key.
    fn de<T: DeserializeOwned>(&mut self, prefix: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let msg = e.into_inner().to_string();
                // toml appends "in `key`" on a second line; the key is reported on its own.
                let msg = msg.lines().next().unwrap_or_default().trim().to_string();
                self.err(&join_key(prefix, &inner), msg);
                None
            }
        }
    }
}

fn join_key(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty() || inner == ".") {
        (_, true) => prefix.to_owned(),
        (true, false) => inner.to_owned(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

/// Parses and checks a topology from `text`; `file` names it in errors, `base_dir` resolves
/// relative source paths.
pub fn load(text: &str, file: &str, base_dir: &Path) -> Result<Topology, ConfigErrors> {
    let root: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                line,
                key: String::new(),
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let mut c = Checker { file, pos: Positions::new(text), errors: Vec::new() };
    let known = ["name", "engine", "sources", "windows", "rules", "sinks"];
    for k in root.keys() {
        if !known.contains(&k.as_str()) {
            c.err(k, format!("unknown top-level key, expected one of: {}", known.join(", ")));
        }
    }
    let name = match root.get("name") {
        Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            c.err("name", "expected a non-empty string");
            String::new()
        }
        None => "unnamed".into(),
    };
    let engine: EngineConfig = match root.get("engine") {
        Some(v) => c.de("engine", v.clone()).unwrap_or_default(),
        None => EngineConfig::default(),
    };
    let windows: WindowsConfig = match root.get("windows") {
        Some(v) => c.de("windows", v.clone()).unwrap_or_default(),
        None => WindowsConfig::default(),
    };
    let sources = array_of_tables(&mut c, &root, "sources")
        .into_iter()
        .filter_map(|(key, t)| parse_source(&mut c, &key, t))
        .collect::<Vec<_>>();
    let sinks = array_of_tables(&mut c, &root, "sinks")
        .into_iter()
        .filter_map(|(key, t)| parse_sink(&mut c, &key, t))
        .collect::<Vec<_>>();
    let rules = array_of_tables(&mut c, &root, "rules")
        .into_iter()
        .filter_map(|(key, t)| c.de::<RuleConfig>(&key, toml::Value::Table(t)).map(|r| (key, r)))
        .collect::<Vec<_>>();

    check_engine(&mut c, &engine);
    check_windows(&mut c, &windows);
    if !root.contains_key("sources") {
        c.err("sources", "a topology needs at least one [[sources]] entry");
    }
    if !root.contains_key("sinks") {
        c.err("sinks", "a topology needs at least one [[sinks]] entry");
    }
    check_names(&mut c, "sources", sources.iter().map(|(k, s)| (k.as_str(), s.name.as_str())));
    check_names(&mut c, "sinks", sinks.iter().map(|(k, s)| (k.as_str(), s.name.as_str())));
    check_names(&mut c, "rules", rules.iter().map(|(k, r)| (k.as_str(), r.name.as_str())));
    for (key, r) in &rules {
        if CmpOp::parse(&r.op).is_none() {
            c.err(&format!("{key}.op"), format!("unknown comparison {:?}, expected one of \">\", \">=\", \"<\", \"<=\"", r.op));
        }
        if !r.limit.is_finite() {
            c.err(&format!("{key}.limit"), "expected a finite number");
        }
        if let Some(msg) = rule_channel_problem(&r.channel) {
            c.err(&format!("{key}.channel"), msg);
        }
    }
    for (key, s) in &sinks {
        if s.kind.records().is_empty() {
            c.err(&format!("{key}.records"), "expected at least one record kind");
        }
    }
    let kafka_sources = sources.iter().filter(|(_, s)| matches!(s.kind, SourceKind::Kafka(_))).count();
    for (key, s) in &sinks {
        if matches!(s.kind, SinkKind::Kafka(_)) && kafka_sources != 1 {
            c.err(&format!("{key}.type"), format!("a Kafka sink commits the offsets of exactly one Kafka source's group; this topology has {kafka_sources}"));
        }
    }
    let late_needs_sink = engine.late_policy == LatePolicy::LateSink;
    if late_needs_sink && !sinks.iter().any(|(_, s)| s.kind.records().contains(&RecordKind::Late)) {
        c.err("engine.late_policy", "\"late_sink\" needs a sink whose `records` include \"late\"");
    }
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| e.line);
        return Err(ConfigErrors(c.errors));
    }
    let mut sources: Vec<SourceConfig> = sources.into_iter().map(|(_, s)| s).collect();
    for s in &mut sources {
        if let SourceKind::Kafka(k) = &mut s.kind {
            if k.group_id.is_empty() {
                k.group_id = format!("meltstream-{name}");
            }
        }
    }
    let mut sinks: Vec<SinkConfig> = sinks.into_iter().map(|(_, s)| s).collect();
    for s in &mut sinks {
        match &mut s.kind {
            SinkKind::Postgres(p) if p.pipeline.is_empty() => p.pipeline = name.clone(),
            SinkKind::Kafka(k) if k.transactional_id.is_empty() => k.transactional_id = format!("meltstream-{name}-{}", s.name),
            _ => {}
        }
    }
    Ok(Topology { name, base_dir: base_dir.to_path_buf(), engine, sources, windows, rules: rules.into_iter().map(|(_, r)| r).collect(), sinks })
}

fn array_of_tables(c: &mut Checker<'_>, root: &toml::Table, key: &str) -> Vec<(String, toml::Table)> {
    match root.get(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                toml::Value::Table(t) => Some((format!("{key}[{i}]"), t.clone())),
                _ => {
                    c.err(&format!("{key}[{i}]"), "expected a table");
                    None
                }
            })
            .collect(),
        Some(_) => {
            c.err(key, format!("expected an array of tables ([[{key}]])"));
            Vec::new()
        }
    }
}

fn take_name_and_type(c: &mut Checker<'_>, key: &str, t: &mut toml::Table, types: &[&str]) -> Option<(String, String)> {
    let name = match t.remove("name") {
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => {
            c.err(&format!("{key}.name"), "expected a non-empty string");
            None
        }
        None => {
            c.err(key, "missing `name`");
            None
        }
    };
    let ty = match t.remove("type") {
        Some(toml::Value::String(s)) if types.contains(&s.as_str()) => Some(s),
        Some(toml::Value::String(s)) => {
            c.err(&format!("{key}.type"), format!("unknown type {s:?}, expected one of: {}", types.join(", ")));
            None
        }
        Some(_) => {
            c.err(&format!("{key}.type"), format!("expected a string, one of: {}", types.join(", ")));
            None
        }
        None => {
            c.err(key, format!("missing `type`, expected one of: {}", types.join(", ")));
            None
        }
    };
    Some((name?, ty?))
}

/// The source registry: one arm per source type.
fn parse_source(c: &mut Checker<'_>, key: &str, mut t: toml::Table) -> Option<(String, SourceConfig)> {
    let (name, ty) = take_name_and_type(c, key, &mut t, &["simulator", "file", "r1", "kafka"])?;
    let v = toml::Value::Table(t);
    let kind = match ty.as_str() {
        "simulator" => {
            let s: SimulatorConfig = c.de(key, v)?;
            check_simulator(c, key, &s);
            SourceKind::Simulator(s)
        }
        "r1" => {
            let r: R1Config = c.de(key, v)?;
            positive(c, &format!("{key}.builds"), r.builds as u64);
            positive(c, &format!("{key}.batch_samples"), r.batch_samples as u64);
            SourceKind::R1(r)
        }
        "file" => {
            let f: FileSourceConfig = c.de(key, v)?;
            if f.batch_records == 0 {
                c.err(&format!("{key}.batch_records"), "expected a positive number");
            }
            SourceKind::File(f)
        }
        "kafka" => {
            let k: KafkaSourceConfig = c.de(key, v)?;
            if k.brokers.trim().is_empty() {
                c.err(&format!("{key}.brokers"), "expected `host:port[,host:port...]`");
            }
            if k.topics.is_empty() || k.topics.iter().any(|t| t.is_empty()) {
                c.err(&format!("{key}.topics"), "expected at least one non-empty topic name");
            }
            if k.topics.len() > 256 {
                c.err(&format!("{key}.topics"), "at most 256 topics per source");
            }
            positive(c, &format!("{key}.batch_records"), k.batch_records as u64);
            positive(c, &format!("{key}.linger_ms"), k.linger_ms);
            positive(c, &format!("{key}.prefetch_kib"), k.prefetch_kib);
            SourceKind::Kafka(k)
        }
        _ => return None,
    };
    Some((key.to_owned(), SourceConfig { name, kind }))
}

/// The sink registry: one arm per sink type.
fn parse_sink(c: &mut Checker<'_>, key: &str, mut t: toml::Table) -> Option<(String, SinkConfig)> {
    let (name, ty) = take_name_and_type(c, key, &mut t, &["file", "null", "postgres", "kafka"])?;
    let v = toml::Value::Table(t);
    let kind = match ty.as_str() {
        "file" => {
            let f: FileSinkConfig = c.de(key, v)?;
            if f.flush_ms == 0 {
                c.err(&format!("{key}.flush_ms"), "expected a positive number of milliseconds");
            }
            SinkKind::File(f)
        }
        "null" => SinkKind::Null(c.de(key, v)?),
        "postgres" => {
            let p: PostgresSinkConfig = c.de(key, v)?;
            if p.url.trim().is_empty() {
                c.err(&format!("{key}.url"), "expected a connection URL such as \"postgres://user@host:5432/db\"");
            }
            if p.schema.is_empty() || !p.schema.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') || p.schema.starts_with(|ch: char| ch.is_ascii_digit()) {
                c.err(&format!("{key}.schema"), "expected an identifier (letters, digits, `_`, not starting with a digit)");
            }
            positive(c, &format!("{key}.flush_ms"), p.flush_ms);
            SinkKind::Postgres(p)
        }
        "kafka" => {
            let k: KafkaSinkConfig = c.de(key, v)?;
            if k.brokers.trim().is_empty() {
                c.err(&format!("{key}.brokers"), "expected `host:port[,host:port...]`");
            }
            if k.topic.is_empty() {
                c.err(&format!("{key}.topic"), "expected a topic name");
            }
            for r in &k.records {
                if matches!(r, RecordKind::LayerSummary | RecordKind::Grid | RecordKind::Window) {
                    c.err(
                        &format!("{key}.records"),
                        format!("{:?} cannot go to a Kafka sink exactly once (window results are deduplicated by key; a topic has none): use a postgres or file sink; expected anomaly, dead_letter or late", r.name()),
                    );
                }
            }
            positive(c, &format!("{key}.flush_ms"), k.flush_ms);
            SinkKind::Kafka(k)
        }
        _ => return None,
    };
    Some((key.to_owned(), SinkConfig { name, kind }))
}

fn positive(c: &mut Checker<'_>, key: &str, v: u64) {
    if v == 0 {
        c.err(key, "expected a positive number");
    }
}

fn check_engine(c: &mut Checker<'_>, e: &EngineConfig) {
    positive(c, "engine.watermark_interval_ms", e.watermark_interval_ms);
    positive(c, "engine.input_idle_timeout_ms", e.input_idle_timeout_ms);
    positive(c, "engine.build_idle_timeout_ms", e.build_idle_timeout_ms);
    positive(c, "engine.layer_gap_timeout_ms", e.layer_gap_timeout_ms);
    positive(c, "engine.memory_budget_mb", e.memory_budget_mb);
    positive(c, "engine.source_queue_batches", e.source_queue_batches as u64);
    positive(c, "engine.sink_queue_records", e.sink_queue_records as u64);
    positive(c, "engine.max_restart_window_s", e.max_restart_window_s);
    positive(c, "engine.max_record_bytes", e.max_record_bytes as u64);
    if e.allowed_lateness_ms > 0 && e.late_policy != LatePolicy::Update {
        c.err("engine.allowed_lateness_ms", "only meaningful with late_policy = \"update\"");
    }
    if !e.admin_addr.is_empty() && e.admin_addr.parse::<std::net::SocketAddr>().is_err() {
        c.err("engine.admin_addr", format!("expected host:port such as \"127.0.0.1:9187\", got {:?}", e.admin_addr));
    }
    if !(e.default_layer_thickness_um > 0.0) {
        c.err("engine.default_layer_thickness_um", "expected a positive number of µm");
    }
}

fn check_windows(c: &mut Checker<'_>, w: &WindowsConfig) {
    if !(w.grid_cell_mm > 0.0) {
        c.err("windows.grid_cell_mm", "expected a positive size in mm");
    }
    if !(w.plate_mm > 0.0) {
        c.err("windows.plate_mm", "expected a positive size in mm");
    } else if w.grid_cell_mm > 0.0 && w.plate_mm / w.grid_cell_mm > 4096.0 {
        c.err("windows.grid_cell_mm", "expected at most 4096 cells across the plate");
    }
    if Channel::parse(&w.grid_channel).is_none() {
        c.err("windows.grid_channel", channel_expected(&w.grid_channel));
    }
    let mut seen = HashSet::new();
    for (i, t) in w.time.iter().enumerate() {
        let key = format!("windows.time[{i}]");
        if !seen.insert(t.name.clone()) {
            c.err(&format!("{key}.name"), format!("duplicate window name {:?}", t.name));
        }
        if Channel::parse(&t.channel).is_none() {
            c.err(&format!("{key}.channel"), channel_expected(&t.channel));
        }
        match t.kind {
            TimeWindowKind::Tumbling => positive(c, &format!("{key}.size_ms"), t.size_ms),
            TimeWindowKind::Sliding => {
                positive(c, &format!("{key}.size_ms"), t.size_ms);
                positive(c, &format!("{key}.slide_ms"), t.slide_ms);
                if t.slide_ms > 0 && t.size_ms % t.slide_ms != 0 {
                    c.err(&format!("{key}.slide_ms"), "expected a divisor of size_ms");
                }
            }
            TimeWindowKind::Session => positive(c, &format!("{key}.gap_ms"), t.gap_ms),
        }
    }
}

/// Why a rule's channel is refused, if it is. Any name that is not a sample channel or
/// `energy_density_j_mm3` reads machine-log values, so a misspelt channel would silently become
/// a log rule that never fires: a name within two edits of a known one (or equal to it but for
/// case, spaces or dashes) is refused with a hint; `log:<name>` takes any log value as it is.
fn rule_channel_problem(ch: &str) -> Option<String> {
    if let Some(log) = ch.strip_prefix(crate::analytics::rules::LOG_PREFIX) {
        return log.is_empty().then(|| "expected a machine-log value name after \"log:\"".to_owned());
    }
    if ch.is_empty() {
        return Some("expected a sample channel, a machine-log channel or energy_density_j_mm3".into());
    }
    if ch == "energy_density_j_mm3" || Channel::parse(ch).is_some() {
        return None;
    }
    let known = Channel::ALL.iter().map(|c| c.name()).chain(["energy_density_j_mm3"]);
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', ' '], "_");
    let wanted = norm(ch);
    let near = known.into_iter().find(|k| norm(k) == wanted || (ch.len() > 4 && edit_distance(&wanted, k) <= 2))?;
    Some(format!(
        "unknown channel {ch:?}: did you mean {near:?}? (a machine-log value this close to a channel name needs the prefix \"log:\", e.g. \"log:{ch}\")"
    ))
}

/// Levenshtein distance, for the did-you-mean hints of channel names (short strings).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn channel_expected(got: &str) -> String {
    let names: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
    format!("unknown channel {got:?}, expected one of: {}", names.join(", "))
}

fn check_simulator(c: &mut Checker<'_>, key: &str, s: &SimulatorConfig) {
    positive(c, &format!("{key}.machines"), u64::from(s.machines));
    positive(c, &format!("{key}.lasers"), u64::from(s.lasers));
    positive(c, &format!("{key}.sample_rate_hz"), u64::from(s.sample_rate_hz));
    positive(c, &format!("{key}.layers"), u64::from(s.layers));
    positive(c, &format!("{key}.layer_ms"), s.layer_ms);
    positive(c, &format!("{key}.block_ms"), s.block_ms);
    positive(c, &format!("{key}.batch_blocks"), s.batch_blocks as u64);
    if s.sample_rate_hz > 0 && s.block_ms > 0 && u64::from(s.sample_rate_hz) * s.block_ms / 1000 == 0 {
        c.err(&format!("{key}.block_ms"), "a block must hold at least one sample at sample_rate_hz");
    }
    if s.sample_rate_hz > 0 && 1_000_000_000 % u64::from(s.sample_rate_hz) != 0 {
        c.err(&format!("{key}.sample_rate_hz"), "expected a rate whose period is a whole number of ns (e.g. 100000)");
    }
    if crate::input::time::parse_rfc3339_ns(&s.start_time).is_none() {
        c.err(&format!("{key}.start_time"), "expected an RFC 3339 time such as \"2024-01-15T10:30:00Z\"");
    }
}

fn check_names<'a>(c: &mut Checker<'_>, what: &str, names: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut seen = HashSet::new();
    for (key, name) in names {
        if !seen.insert(name.to_owned()) {
            c.err(&format!("{key}.name"), format!("duplicate name {name:?} among {what}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_topology_loads() {
        let t = load(DEMO_TOML, "demo.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.sources.is_empty() && !t.sinks.is_empty());
    }

    #[test]
    fn every_error_at_once_with_lines() {
        let text = "name = \"x\"\n[engine]\nwatermark_bound_ms = \"fast\"\n\n[[sources]]\nname = \"a\"\ntype = \"simulatr\"\n\n[[sinks]]\nname = \"o\"\ntype = \"file\"\npathh = \"x\"\n";
        let errs = load(text, "t.toml", Path::new(".")).unwrap_err().0;
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, vec![(3, "engine.watermark_bound_ms"), (7, "sources[0].type"), (12, "sinks[0].pathh")], "{errs:?}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = load("name = \"x\"\n[engine\n", "t.toml", Path::new(".")).unwrap_err().0;
        assert_eq!(errs[0].line, 2, "{errs:?}");
    }

    #[test]
    fn a_misspelt_rule_channel_is_refused_with_a_hint() {
        let rule = |ch: &str| format!("name = \"x\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"o\"\ntype = \"null\"\n[[rules]]\nname = \"r\"\nchannel = \"{ch}\"\nop = \">\"\nlimit = 1.0\n");
        for bad in ["temprature_c", "Temperature_C", "photodiode-on-axis", "energy_density_j_mm"] {
            let errs = load(&rule(bad), "t.toml", Path::new(".")).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!((errs[0].line, errs[0].key.as_str()), (10, "rules[0].channel"), "{bad}: {errs:?}");
            assert!(errs[0].message.contains("did you mean"), "{bad}: {}", errs[0].message);
        }
        for good in ["temperature_c", "temperature", "energy_density_j_mm3", "o2_ppm", "chamber_pressure_mbar", "log:temprature_c"] {
            load(&rule(good), "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert!(load(&rule("log:"), "t.toml", Path::new(".")).is_err());
    }
}
