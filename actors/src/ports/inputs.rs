//! Input ids: how a Kafka partition and the source it belongs to are packed into one
//! [`InputId`], and unpacked again (dead letters name their source by it).

use meltstream_engine::input::event::InputId;

/// The input id of `partition` of the `topic`-th topic of source `source`.
pub fn kafka_input(source: usize, topic: usize, partition: i32) -> InputId {
    (((source as u32) + 1) << 24) | ((topic as u32 & 0xff) << 16) | (partition as u32 & 0xffff)
}

/// The index in the topology of the source that `input` belongs to.
pub fn source_index(input: InputId) -> usize {
    match input >> 24 {
        0 => input as usize,
        s => s as usize - 1,
    }
}
