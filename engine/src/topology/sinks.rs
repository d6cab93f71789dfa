//! `[[sinks]]`: the record kinds a sink can take, the config struct of each sink type (file,
//! null, PostgreSQL, SQLite, Kafka) with their defaults, and [`SinkKind`], the tagged set of them. Plain
//! serde structs; which `type` picks which struct is the registry in `load`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
    /// SPC out-of-control points (`[[spc]]`).
    SpcSignal,
    /// SPC phase I baselines (`[[spc]]`), once per chart, build and laser or cell.
    SpcBaseline,
    /// Verdicts on closed layers.
    LayerVerdict,
    /// Summaries of ended builds.
    BuildReport,
    /// Data quality of closed layers.
    DataQuality,
    /// Data quality per input and window of event time.
    InputQuality,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 12] = [
        RecordKind::LayerSummary,
        RecordKind::Grid,
        RecordKind::Window,
        RecordKind::Anomaly,
        RecordKind::DeadLetter,
        RecordKind::Late,
        RecordKind::SpcSignal,
        RecordKind::LayerVerdict,
        RecordKind::BuildReport,
        RecordKind::DataQuality,
        RecordKind::SpcBaseline,
        RecordKind::InputQuality,
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
            RecordKind::SpcSignal => "spc_signal",
            RecordKind::LayerVerdict => "layer_verdict",
            RecordKind::BuildReport => "build_report",
            RecordKind::DataQuality => "data_quality",
            RecordKind::InputQuality => "input_quality",
            RecordKind::SpcBaseline => "spc_baseline",
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

/// `type = "sqlite"` sink: an embedded SQLite database file with the PostgreSQL sink's tables,
/// written in batches, each flush one transaction together with the source progress. One
/// engine process owns the file at a time.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// Database file (relative to the working directory); created with its directory.
    pub path: PathBuf,
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
    /// Largest offset metadata string written (progress, transaction and the partition's replay
    /// state), bytes; at most the brokers' `offset.metadata.max.bytes` (4096 by default). A
    /// state that does not fit is left out (counted and logged).
    #[serde(default = "default_metadata_max_bytes")]
    pub metadata_max_bytes: usize,
}

fn default_metadata_max_bytes() -> usize {
    4000
}

fn alert_kinds() -> Vec<RecordKind> {
    vec![RecordKind::Anomaly]
}

/// `type = "redis"` sink: the latest state of each build in Redis hashes, and alerts published
/// on a channel (docs/topology.md). Idempotent state, at-least-once alerts.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// Server URL (`redis://host:port/db`); `${VAR}` and `${VAR:-default}` are expanded.
    pub url: String,
    /// Prefix of every key (`<prefix>:build:<build_id>`, …).
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// Channel the alerts are published on.
    #[serde(default = "default_redis_channel")]
    pub channel: String,
    /// Record kinds taken: `layer_summary`, `layer_verdict`, `data_quality`, `build_report`
    /// update the build's state, `anomaly` is recorded and published.
    #[serde(default = "redis_kinds")]
    pub records: Vec<RecordKind>,
    /// Flush (one MULTI/EXEC) at least this often, ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
}

fn default_redis_prefix() -> String {
    "meltstream".into()
}

fn default_redis_channel() -> String {
    "meltstream:alerts".into()
}

fn redis_kinds() -> Vec<RecordKind> {
    vec![RecordKind::LayerSummary, RecordKind::LayerVerdict, RecordKind::DataQuality, RecordKind::BuildReport, RecordKind::Anomaly]
}

/// `type = "webhook"` sink: each record POSTed as JSON to a URL, with an idempotency key.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// Endpoint (`http://` or `https://`); `${VAR}` and `${VAR:-default}` are expanded.
    pub url: String,
    /// Extra request headers (values expanded like `url`), e.g. `Authorization`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Record kinds posted.
    #[serde(default = "alert_kinds")]
    pub records: Vec<RecordKind>,
    /// Prefix of the idempotency keys (default: the topology's name).
    #[serde(default)]
    pub key_prefix: String,
    /// Timeout of one request, ms.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Post at least this often, ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}

/// `type = "airflow"` sink: one DAG run per record, triggered through Airflow 3's REST API, with
/// a run id derived from the record's key, so that a replay starts no second run.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AirflowSinkConfig {
    /// Base URL of the Airflow API server (`http://127.0.0.1:8080`); `${VAR}` and
    /// `${VAR:-default}` are expanded.
    #[serde(default = "default_airflow_url")]
    pub url: String,
    /// The DAG triggered.
    pub dag_id: String,
    /// User for `POST /auth/token` (expanded like `url`).
    #[serde(default = "default_airflow_username")]
    pub username: String,
    /// Its password (expanded like `url`; keep it in the environment).
    #[serde(default = "default_airflow_password")]
    pub password: String,
    /// Record kinds that start a run: `anomaly`, `spc_signal`, `layer_verdict`, `build_report`.
    #[serde(default = "alert_kinds")]
    pub records: Vec<RecordKind>,
    /// Of `layer_verdict` records, the verdicts that start a run.
    #[serde(default = "default_airflow_verdicts")]
    pub verdicts: Vec<String>,
    /// Prefix of the run ids (default: the topology's name).
    #[serde(default)]
    pub run_id_prefix: String,
    /// Strings added to every run's conf under `context` (where the results are, say).
    #[serde(default)]
    pub context: std::collections::BTreeMap<String, String>,
    /// Timeout of one request, ms.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Trigger at least this often, ms.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
}

fn default_airflow_url() -> String {
    "${AIRFLOW_URL:-http://127.0.0.1:8080}".into()
}

fn default_airflow_username() -> String {
    "${AIRFLOW_USERNAME}".into()
}

fn default_airflow_password() -> String {
    "${AIRFLOW_PASSWORD}".into()
}

fn default_airflow_verdicts() -> Vec<String> {
    vec!["fail".into()]
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
    /// SQLite database file.
    Sqlite(SqliteSinkConfig),
    /// Kafka topic, transactional.
    Kafka(KafkaSinkConfig),
    /// Redis: live state and an alert channel.
    Redis(RedisSinkConfig),
    /// HTTP POST per record.
    Webhook(WebhookSinkConfig),
    /// An Airflow DAG run per record.
    Airflow(AirflowSinkConfig),
}

impl SinkKind {
    /// The record kinds this sink takes.
    pub fn records(&self) -> &[RecordKind] {
        match self {
            SinkKind::File(c) => &c.records,
            SinkKind::Null(c) => &c.records,
            SinkKind::Postgres(c) => &c.records,
            SinkKind::Sqlite(c) => &c.records,
            SinkKind::Kafka(c) => &c.records,
            SinkKind::Redis(c) => &c.records,
            SinkKind::Webhook(c) => &c.records,
            SinkKind::Airflow(c) => &c.records,
        }
    }
}

/// A named sink.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SinkConfig {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: SinkKind,
}
