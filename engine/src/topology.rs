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
//! `windows_config`, `rules_config`), own no logic; `positions` maps keys to lines; `load`
//! parses and runs the registry; `check` validates. This file keeps the [`Topology`] and the
//! errors, and re-exports what callers use.

use std::fmt;
use std::path::PathBuf;

pub mod check;
pub mod engine_config;
pub mod env;
pub mod load;
pub mod positions;
pub mod rules_config;
pub mod sinks;
pub mod sources;
pub mod windows_config;

pub use engine_config::{EngineConfig, LatePolicy, WhenFull};
pub use env::expand_env;
pub use load::{load, load_file};
pub use rules_config::RuleConfig;
pub use sinks::{FileSinkConfig, KafkaSinkConfig, NullSinkConfig, PostgresSinkConfig, RecordKind, SinkConfig, SinkKind};
pub use sources::{FileSourceConfig, KafkaSourceConfig, Pace, R1Config, SimulatorConfig, SourceConfig, SourceKind};
pub use windows_config::{TimeWindowConfig, TimeWindowKind, WindowsConfig};

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
