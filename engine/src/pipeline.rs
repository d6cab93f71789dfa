//! The operators of a build and the chain that runs them: what the build actor calls with
//! batches, watermarks and the end of input. Pure computation: no actors, channels or I/O
//! here; the runtime in `actors` decides when the hooks run.
//!
//! [`build_pipeline`] is the chain; [`operator`] the trait every stage implements;
//! [`build_book`] what the stages of one build share; the rest are the stages, one per
//! concern.

pub mod build_book;
pub mod build_settings;
pub mod build_pipeline;
pub mod decisions;
pub mod energy_density;
pub mod grid_map;
pub mod input_quality;
pub mod late_samples;
pub mod layer_stats;
pub mod operator;
pub mod spc_charts;
#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod spc_cells_tests;
pub mod threshold_rules;
pub mod time_windows;
pub mod verdicts;
