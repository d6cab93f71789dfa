//! The kinds of anomaly the simulator can plant, named as topologies and the ground truth name
//! them. A leaf module: the topology's simulator keys and the simulator both use it.

use serde::{Deserialize, Serialize};

/// Kind of an injected anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A 20 × 20 mm cell of one laser's layer melts too hot: `photodiode_on_axis` > 3200 and `temperature_c` > 1750 in it.
    HotSpot,
    /// One laser's power falls to ≈ 100 W for a fifth of a layer.
    PowerDrop,
    /// Chamber oxygen rises above 1500 ppm for 2 s.
    O2Rise,
    /// One laser scans a layer so fast (2.8 m/s) that its energy density falls below 35 J/mm³.
    LackOfFusion,
    /// One laser's delivered power degrades layer after layer (`power_drift_pct_per_layer`):
    /// each affected layer is one entry, spanning the laser's whole layer.
    PowerDrift,
    /// The laser window fogs for three layers: every laser's photodiodes read 15 % low (a
    /// signal artefact: the melt is sound). One entry per affected layer.
    Fogging,
    /// A damaged recoater blade leaves a 12 mm wide band of thick powder across the whole
    /// plate (along y) for one layer: in it the photodiode reads 45 % low and the melt pool is
    /// 150 °C colder.
    RecoaterStreak,
    /// A 60 × 40 mm region in the shadow of the gas flow runs cold for three layers: photodiode
    /// 25 % low, 120 °C colder. One entry per affected layer.
    GasFlowShadow,
}

impl AnomalyKind {
    /// The kinds `anomaly_rate_per_layer` draws from by default (every kind but the drift,
    /// which has its own key).
    pub const LOCAL: [AnomalyKind; 7] = [
        AnomalyKind::HotSpot,
        AnomalyKind::PowerDrop,
        AnomalyKind::O2Rise,
        AnomalyKind::LackOfFusion,
        AnomalyKind::Fogging,
        AnomalyKind::RecoaterStreak,
        AnomalyKind::GasFlowShadow,
    ];

    /// Layers one planted anomaly of this kind lasts.
    pub fn layers(self) -> u32 {
        match self {
            AnomalyKind::Fogging | AnomalyKind::GasFlowShadow => 3,
            _ => 1,
        }
    }

    /// Whether it is machine-wide rather than one laser's.
    pub fn machine_wide(self) -> bool {
        matches!(self, AnomalyKind::O2Rise | AnomalyKind::Fogging | AnomalyKind::RecoaterStreak | AnomalyKind::GasFlowShadow)
    }
}
