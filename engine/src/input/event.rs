//! Typed events of a PBF-LB/M monitoring stream: melt-pool samples (singly or in 1 ms blocks),
//! layer events with process parameters, machine-log records.
//!
//! Samples never exist as one struct per sample on the hot path: they live in the columns of a
//! [`crate::input::batch::RecordBatch`]. The types here are the rare, per-layer and per-second events.

use std::sync::Arc;

/// Event time in nanoseconds since the Unix epoch (UTC).
pub type TimeNs = i64;

/// A build's identifier, cheap to clone (interned by the decoder and the simulator).
pub type BuildId = Arc<str>;

/// Identifies one input of a topology: one file, one simulator, one Kafka partition.
pub type InputId = u64;

/// The part of an input id that names the input itself (the low 32 bits). A Kafka partition's
/// id carries, above it, which assignment of the partition to this process its records were
/// read under, so that records of an earlier assignment still in flight are told apart after a
/// rebalance; records name the input by this part.
pub fn input_name(input: InputId) -> u32 {
    input as u32
}

/// Layer index used for records that name no layer (the seed's sensor messages): they feed
/// time windows and rules but no layer window.
pub const NO_LAYER: u32 = u32::MAX;

/// The largest layer index a record may carry: what every sink can store (a PostgreSQL `int`).
/// The decoder refuses larger ones, so that no sink ever meets a layer it cannot write.
pub const MAX_LAYER: u32 = i32::MAX as u32;

/// The longest `build_id` (bytes) a record may carry: a key for every sink, a label for metrics.
pub const MAX_BUILD_ID_BYTES: usize = 256;

/// Melt-pool channels a sample may carry. Units are in the names, as in the output records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Channel {
    /// Pyrometer melt-pool temperature in °C (the seed's `temperature`).
    TemperatureC = 0,
    /// On-axis photodiode intensity, counts.
    PhotodiodeOnAxis = 1,
    /// Off-axis photodiode intensity, counts.
    PhotodiodeOffAxis = 2,
    /// Commanded or measured laser power in W.
    LaserPowerW = 3,
    /// Scan speed in mm/s (the seed's `scan_speed` is in m/s and is converted on decoding).
    ScanSpeedMmS = 4,
    /// Hatch spacing in mm.
    HatchSpacingMm = 5,
    /// Chamber pressure in mbar, as carried by the seed's sensor messages.
    PressureMbar = 6,
}

/// Number of [`Channel`]s.
pub const N_CHANNELS: usize = 7;

impl Channel {
    /// Every channel, in column order.
    pub const ALL: [Channel; N_CHANNELS] = [
        Channel::TemperatureC,
        Channel::PhotodiodeOnAxis,
        Channel::PhotodiodeOffAxis,
        Channel::LaserPowerW,
        Channel::ScanSpeedMmS,
        Channel::HatchSpacingMm,
        Channel::PressureMbar,
    ];

    /// The channel's name in topologies and output records.
    pub fn name(self) -> &'static str {
        match self {
            Channel::TemperatureC => "temperature_c",
            Channel::PhotodiodeOnAxis => "photodiode_on_axis",
            Channel::PhotodiodeOffAxis => "photodiode_off_axis",
            Channel::LaserPowerW => "laser_power_w",
            Channel::ScanSpeedMmS => "scan_speed_mm_s",
            Channel::HatchSpacingMm => "hatch_spacing_mm",
            Channel::PressureMbar => "pressure_mbar",
        }
    }

    /// Parses a channel name; the seed's short names (`temperature`, `laser_power`, …) are accepted too.
    pub fn parse(name: &str) -> Option<Channel> {
        Some(match name {
            "temperature_c" | "temperature" => Channel::TemperatureC,
            "photodiode_on_axis" | "pd_on_axis" => Channel::PhotodiodeOnAxis,
            "photodiode_off_axis" | "pd_off_axis" => Channel::PhotodiodeOffAxis,
            "laser_power_w" | "laser_power" => Channel::LaserPowerW,
            "scan_speed_mm_s" => Channel::ScanSpeedMmS,
            "hatch_spacing_mm" | "hatch_spacing" => Channel::HatchSpacingMm,
            "pressure_mbar" | "pressure" => Channel::PressureMbar,
            _ => return None,
        })
    }

    /// The column index of this channel.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What happened to a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerPhase {
    /// Exposure of the layer begins.
    Start,
    /// Exposure of the layer is over: its window may close once the watermark passes this time.
    End,
    /// The recoater starts spreading the next layer's powder.
    RecoatStart,
    /// The recoater is done.
    RecoatEnd,
    /// The build is over: the build actor flushes and stops.
    BuildEnd,
}

/// Process parameters of one laser for one layer and build style.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaserParams {
    /// Laser index, 1-based as on the machines.
    pub laser: u8,
    /// Build style or region (`core`, `contour`, `skin`, …).
    #[serde(default = "default_style")]
    pub style: String,
    /// Laser power in W.
    pub power_w: f64,
    /// Scan speed in mm/s.
    pub scan_speed_mm_s: f64,
    /// Hatch spacing in mm.
    pub hatch_spacing_mm: f64,
    /// Layer thickness in µm.
    pub layer_thickness_um: f64,
}

fn default_style() -> String {
    "core".to_string()
}

impl LaserParams {
    /// Volumetric energy density E = P / (v · h · t) in J/mm³.
    pub fn energy_density_j_mm3(&self) -> f64 {
        crate::analytics::energy::energy_density_j_mm3(
            self.power_w,
            self.scan_speed_mm_s,
            self.hatch_spacing_mm,
            self.layer_thickness_um / 1000.0,
        )
    }
}

/// A layer event of one build.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerEvent {
    /// The build it belongs to.
    pub build: BuildId,
    /// Layer index (0-based).
    pub layer: u32,
    /// What happened.
    pub phase: LayerPhase,
    /// When, in event time.
    pub t_ns: TimeNs,
    /// Platform height of the layer in integer µm, when known.
    pub z_um: Option<i64>,
    /// Parameters per laser and style, usually on `Start`.
    pub params: Vec<LaserParams>,
    /// Source offset of the record it came from.
    pub source_offset: u64,
}

/// A machine-log record (~1 Hz): O2, pressure, gas flow, temperatures.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    /// The build it belongs to.
    pub build: BuildId,
    /// When, in event time.
    pub t_ns: TimeNs,
    /// Channel name (units in the name, e.g. `o2_ppm`) and value.
    pub values: Vec<(Arc<str>, f64)>,
    /// Source offset of the record it came from.
    pub source_offset: u64,
}
