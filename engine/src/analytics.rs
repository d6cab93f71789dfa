//! The arithmetic over samples: order-independent running statistics, the x/y grid map, energy
//! density, threshold rules, and statistical process control on per-layer values. Pure
//! functions and accumulators; they never decide when a window closes (that is `windows`) and
//! never see a batch's offsets.

pub mod energy;
pub mod grid;
pub mod rules;
pub mod spc;
pub mod spc_spec;
pub mod stats;
