//! Sources: actors that read or generate records, decode them into batches and hand them to the
//! router through a [`crate::ports::source_ctx::SourceCtx`], with its credits.
//!
//! A source knows the tree only through the messages in `ports`; it never imports `tree/`.

pub mod ct;
pub mod file;
pub mod kafka;
pub mod simulator;
