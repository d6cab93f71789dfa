//! `[[rules]]`: a threshold rule as written in the topology (channel, comparison, limit,
//! cooldown). Plain serde struct with no logic: `crate::analytics::rules` compiles it, and
//! `check` validates it; this file imports neither.

use serde::Deserialize;

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
