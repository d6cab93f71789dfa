//! Temporary stub, replaced by the real simulator.
use crate::batch::{InputId, RecordBatch};
use crate::topology::SimulatorConfig;
/// Stub.
pub struct Simulator;
impl Simulator {
    /// Stub.
    pub fn new(_c: &SimulatorConfig, _i: InputId) -> Simulator { Simulator }
    /// Stub.
    pub fn next_batch(&mut self) -> Option<RecordBatch> { None }
}
/// Stub.
pub fn write_json_lines(_b: &RecordBatch, _out: &mut String) {}
impl Simulator {
    /// Stub.
    pub fn ground_truth(&self) -> &[u8] { &[] }
}
