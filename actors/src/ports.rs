//! What sources, sinks and the tree all need, below all three: the messages that cross rooms,
//! a source's link to the engine, input ids and the wall clock.
//!
//! Imports flow one way: `sources/` and `sinks/` use this module and never `tree/`; `tree/` uses
//! all of them. Nothing here imports any other room, and the files here never import this
//! parent (it only declares them).

pub mod clock;
pub mod credits;
pub mod inputs;
pub mod messages;
pub mod source_ctx;
