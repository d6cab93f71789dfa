//! Input ids: how a Kafka partition, the source it belongs to and the assignment it was read
//! under are packed into one [`InputId`], and unpacked again (dead letters name their source by
//! it).

use meltstream_engine::input::event::InputId;

/// The input id of `partition` of the `topic`-th topic of source `source`, read under the
/// `assignment`-th assignment of partitions to this process (1, 2, …): the low 32 bits name the
/// partition ([`meltstream_engine::input::event::input_name`]), the high 32 the assignment, so
/// that records of a partition revoked and assigned again are never taken for the new ones.
pub fn kafka_input(source: usize, topic: usize, partition: i32, assignment: u32) -> InputId {
    let name = (((source as u32) + 1) << 24) | ((topic as u32 & 0xff) << 16) | (partition as u32 & 0xffff);
    ((assignment as u64) << 32) | name as u64
}

/// True for the input of a Kafka partition (other sources' inputs are their index).
pub fn is_partition(input: InputId) -> bool {
    (input as u32) >> 24 != 0
}

/// The index in the topology of the source that `input` (or its name) belongs to.
pub fn source_index(input: InputId) -> usize {
    let name = input as u32;
    match name >> 24 {
        0 => name as usize,
        s => s as usize - 1,
    }
}
