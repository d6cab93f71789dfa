//! `[windows]`: the layer window's grid map settings and the `[[windows.time]]` event-time
//! windows (tumbling, sliding, session) with their defaults. Plain serde structs; the windows
//! themselves are in `crate::windows`, their bounds are checked in `check`.

use serde::Deserialize;

/// Kind of a time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeWindowKind {
    /// Fixed, adjacent windows of `size_ms`.
    Tumbling,
    /// Windows of `size_ms` every `slide_ms`.
    Sliding,
    /// Activity separated by gaps longer than `gap_ms`.
    Session,
}

/// One time window inside each build (`[[windows.time]]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowConfig {
    /// Name, written in each result.
    pub name: String,
    /// Kind.
    pub kind: TimeWindowKind,
    /// Channel aggregated.
    pub channel: String,
    /// Size (tumbling, sliding), ms.
    #[serde(default)]
    pub size_ms: u64,
    /// Slide (sliding), ms.
    #[serde(default)]
    pub slide_ms: u64,
    /// Gap (session), ms.
    #[serde(default)]
    pub gap_ms: u64,
}

/// Windows (`[windows]`).
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// Grid cell size, mm.
    pub grid_cell_mm: f64,
    /// Build plate size (square), mm; samples outside `[0, plate_mm)` are counted, not mapped.
    pub plate_mm: f64,
    /// Channel averaged in the grid map.
    pub grid_channel: String,
    /// Raise a `grid_deviation` alert for a layer whose map holds a cell this many robust σ from
    /// the layer's cells (see `analytics::grid::cell_z_scores`); none when unset.
    pub grid_deviation_z: Option<f64>,
    /// Time windows inside each build.
    pub time: Vec<TimeWindowConfig>,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig { grid_cell_mm: 10.0, plate_mm: 400.0, grid_channel: "photodiode_on_axis".into(), grid_deviation_z: None, time: Vec::new() }
    }
}
