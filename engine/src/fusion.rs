//! CT defect fusion: CT defect lists (`ct`) joined with the in-situ evidence of their layers
//! (`join`), as `meltstream fuse` runs it over a build whose results are durable in PostgreSQL
//! or the embedded SQLite store, and a streaming `ct` source as its defects arrive (`ct_builds`
//! holds them per build). Pure: reading the store and writing the results is the
//! caller's.

pub mod ct;
pub mod ct_builds;
pub mod join;

pub use ct::{CtDefect, DefectType};
pub use join::{fuse, Evidence, FusedDefect, FusionParams, FusionSummary};
