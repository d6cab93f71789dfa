//! Where a sample enters: the event types, the columnar batch they travel in, RFC 3339 time, the
//! JSON decoder that turns source records into batches (its wire record, flat parser and reject
//! reasons), and the encoder that writes batches back as JSON lines. Nothing here aggregates,
//! holds state across batches, or knows about actors or sockets.
//!
//! Imports flow downwards: `event` ← `reject` ← `batch` ← `wire` ← `flat_parser` ← `decode`.

pub mod batch;
pub mod build_info;
pub mod decode;
pub mod encode;
pub mod event;
pub mod flat_parser;
pub mod reject;
pub mod time;
pub mod wire;
