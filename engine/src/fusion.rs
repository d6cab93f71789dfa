//! CT defect fusion: CT defect lists (`ct`) joined with the in-situ evidence of their layers
//! (`join`), as `meltstream fuse` runs it over a build whose results are durable in PostgreSQL
//! or the embedded SQLite store. Pure: reading the store and writing the results is the
//! caller's.

pub mod ct;
pub mod join;

pub use ct::{CtDefect, DefectType};
pub use join::{fuse, Evidence, FusedDefect, FusionParams, FusionSummary};
