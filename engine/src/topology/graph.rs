//! A checked topology: the whole graph of sources, windows, rules and sinks with the engine's
//! settings, as `load` returns it once every check passed.

use std::path::PathBuf;

use crate::topology::engine_config::EngineConfig;
use crate::topology::rules_config::RuleConfig;
use crate::topology::sinks::SinkConfig;
use crate::topology::sources::SourceConfig;
use crate::topology::windows_config::WindowsConfig;

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
