//! Sinks: the sink actor, which batches records and acknowledges them once durable, and the
//! writers it drives (file and null, PostgreSQL, SQLite, Kafka).
//!
//! A sink knows the tree only through the messages in `ports`; it never imports `tree/`.

pub mod file;
pub mod kafka;
pub mod postgres;
pub mod sink_actor;
pub mod sqlite;
pub mod writer;
