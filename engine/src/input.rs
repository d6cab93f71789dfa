//! Where a sample enters: the event types, the columnar batch they travel in, RFC 3339 time, and
//! the JSON decoder that turns source records into batches (with its reject reasons). Nothing
//! here aggregates, holds state across batches, or knows about actors or sockets.

pub mod batch;
pub mod decode;
pub mod event;
pub mod time;
