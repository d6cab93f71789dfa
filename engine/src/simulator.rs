//! The simulated fleet: deterministic PBF-LB/M machines that stream melt-pool sample blocks,
//! layer events and machine-log records, optionally with injected anomalies whose ground
//! truth is kept, so that what the engine reports can be checked against what was planted.
//!
//! # Model
//! Machine `i` (from 1) runs build `{build_prefix}{i:03}`, starting a few deterministic
//! milliseconds after `start_time` so that the machines interleave. Each layer is a `start`
//! event (with the laser parameters), `layer_ms` of exposure during which every laser emits
//! `sample_rate_hz` samples in blocks of `block_ms`, an `end` event, and a recoat
//! (`recoat_start`, `recoat_end`) before the next layer; the last layer is followed by
//! `build_end`. Machine-log records (`o2_ppm`, `chamber_pressure_mbar`, `gas_flow_m3_h`,
//! `plate_temp_c`) come every 250 ms of event time.
//!
//! Each laser scans its own field of the 400 × 400 mm plate (2 × 2 fields for 4 lasers) in a
//! serpentine raster at its scan speed (1.2 m/s: 12 µm per 10 µs sample). A real layer takes
//! minutes; so that a simulated layer of a few seconds still covers the whole field, the
//! layer's scan lines are spread over the field (line pitch = field height / lines per layer,
//! never less than the hatch spacing). Normal values stay well inside the demo rules:
//! `laser_power_w` ≈ 270–290 W, `photodiode_on_axis` ≈ 2000 (< 2300), `temperature_c` ≈ 1600
//! (< 1660), `o2_ppm` ≈ 200, energy density ≈ 70 J/mm³.
//!
//! # Anomalies
//! With `anomalies = true`, machine `i` gets anomaly kind `i mod 4` (hot spot, power drop, O2
//! rise, lack of fusion) on layer `min(1, layers - 1)`, and machine 1 also gets a hot spot on
//! another laser; lasers, regions and times are drawn from the seed. A 3-machine fleet thus
//! holds every kind. [`Simulator::ground_truth`] lists each anomaly once its first affected
//! record has been generated, with half-open times `[start_ns, end_ns)`.
//!
//! # Cost
//! Generating a block allocates nothing: the columns are computed into reusable scratch
//! buffers (then copied into the batch arena by `push_block`), and the noise is read from a
//! precomputed table at random offsets, so a sample costs a few multiply-adds.
//!
//! # Layout
//! `model` (the physics), `anomalies` (what is planted and its ground truth), `machine` (one
//! machine's state machine), `fleet` (the [`Simulator`]: machines merged in event time), and
//! `r1` (the R1 workload generator). The JSON writer is [`crate::input::encode`].

pub mod anomalies;
pub mod ct;
pub mod fleet;
pub mod kinds;
mod machine;
mod model;
pub mod r1;
pub mod score;

pub use anomalies::{AnomalyKind, InjectedAnomaly};
pub use fleet::Simulator;
