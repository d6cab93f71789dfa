//! The topology schema (sources, windows, rules, sinks, engine settings) and its two-pass
//! loading: parse the TOML keeping positions, then check the whole graph and report *every*
//! error at once with file, line, key and what was expected. Nothing here starts anything;
//! `actors` builds a running engine only from a [`Topology`] that passed [`load`].
//!
//! Components are chosen by their `type` key through one explicit registry (the `match` in
//! [`parse_source`] and [`parse_sink`]); each component's config is a `serde` struct with
//! `deny_unknown_fields` and documented defaults. `docs/topology.md` documents every key.
//!
//! # Layout
//! The config types, one file per component (`engine_config`, `sources`, `sinks`,
//! `windows_config`, `build_info_config`, `rules_config`, `spc_config`, `verdict_config`), own no logic; `graph` holds the checked [`Topology`] and
//! `errors` what is wrong with one; `positions` maps keys to lines; `load` parses and runs the
//! registry; `check` validates. This file only declares them and re-exports what callers use
//! (the files below never import it).


pub mod build_info_config;
pub mod check;
pub mod engine_config;
pub mod env;
pub mod errors;
pub mod graph;
pub mod load;
pub mod positions;
pub mod rules_config;
pub mod sinks;
pub mod sources;
pub mod spc_config;
pub mod verdict_config;
pub mod windows_config;

pub use engine_config::{EngineConfig, LatePolicy, WhenFull};
pub use env::expand_env;
pub use errors::{ConfigError, ConfigErrors};
pub use graph::Topology;
pub use load::{load, load_file};
pub use rules_config::RuleConfig;
pub use sinks::{AirflowSinkConfig, FileSinkConfig, KafkaSinkConfig, NullSinkConfig, PostgresSinkConfig, RecordKind, RedisSinkConfig, SinkConfig, SinkKind, SqliteSinkConfig, WebhookSinkConfig};
pub use sources::{CtSourceConfig, FileSourceConfig, KafkaSourceConfig, Pace, R1Config, SimulatorConfig, SourceConfig, SourceKind};
pub use spc_config::{SpcBaselineKind, SpcChartKind, SpcConfig, SpcStatistic};
pub use verdict_config::VerdictConfig;
pub use windows_config::{TimeWindowConfig, TimeWindowKind, WindowsConfig};

/// The embedded default topology (`topologies/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../topologies/demo.toml");
