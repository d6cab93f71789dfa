//! `[verdict]`: how a closed layer is judged (ok / warn / fail) from its rule hits, SPC
//! signals and data quality. Plain serde struct; `crate::pipeline::verdicts` applies it, `check` validates it.

use serde::Deserialize;

/// Layer verdict settings (`[verdict]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictConfig {
    /// Rules (`[[rules]]` names) whose hit in a layer fails it; any other rule's hit warns.
    pub fail_rules: Vec<String>,
    /// SPC charts (`[[spc]]` names) whose signal in a layer fails it; any other chart's signal
    /// warns.
    pub fail_spc: Vec<String>,
    /// Exceedances of one sample rule in one layer (all lasers) from which the layer warns (or
    /// fails, for a rule in `fail_rules`).
    pub min_rule_hits: u64,
    /// Layers named in a build report's `worst_layers`.
    pub worst_layers: usize,
    /// A layer whose data quality (the lowest completeness of its lasers) is below this warns.
    pub min_data_quality: f64,
    /// Below this, it fails.
    pub fail_data_quality: f64,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig { fail_rules: Vec::new(), fail_spc: Vec::new(), min_rule_hits: 1, worst_layers: 10, min_data_quality: 0.98, fail_data_quality: 0.5 }
    }
}
