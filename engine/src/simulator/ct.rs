//! The CT defect list a simulated build would get: for each planted anomaly that damages the
//! part, defects where its melt was (drawn from the laser paths of the affected layer), plus small
//! gas pores everywhere that no in-situ signal can see. Fogging (a signal artefact) and O2 rises
//! leave none, so their in-situ flags stay unconfirmed. Positions carry the CT's registration
//! error (±0.2 mm). Drawn from its own generator: the sample stream does not depend on it.

use serde::Serialize;

use crate::fusion::ct::{CtDefect, DefectType};

use super::kinds::AnomalyKind;
use super::machine::{Machine, Setup};
use super::model::{SplitMix, THICKNESS_UM};

/// Random gas pores per build layer (15–45 µm, below in-situ resolution).
const PORES_PER_LAYER: u32 = 3;
/// Tries to find a sample position inside a region before giving up on a defect.
const TRIES: u32 = 4000;
/// Registration error of the simulated CT, mm (each of x and y).
const REGISTRATION_MM: f64 = 0.2;

/// A simulated CT defect with what caused it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimDefect {
    /// As the CT lists it.
    #[serde(flatten)]
    pub defect: CtDefect,
    /// The planted anomaly behind it (`None`: a random gas pore).
    pub cause: Option<AnomalyKind>,
    /// Whether in-situ monitoring can be expected to see it (planted, not a random pore).
    pub detectable: bool,
}

/// Defects (count, type, diameter range µm) one layer of a planted anomaly leaves.
fn damage(kind: AnomalyKind) -> Option<(u32, DefectType, (f64, f64))> {
    Some(match kind {
        AnomalyKind::HotSpot => (3, DefectType::Keyhole, (100.0, 250.0)),
        AnomalyKind::PowerDrop => (4, DefectType::LackOfFusion, (150.0, 400.0)),
        AnomalyKind::LackOfFusion => (5, DefectType::LackOfFusion, (150.0, 400.0)),
        AnomalyKind::RecoaterStreak => (4, DefectType::LackOfFusion, (150.0, 350.0)),
        AnomalyKind::GasFlowShadow => (2, DefectType::LackOfFusion, (100.0, 300.0)),
        AnomalyKind::PowerDrift => (1, DefectType::LackOfFusion, (100.0, 250.0)),
        AnomalyKind::O2Rise | AnomalyKind::Fogging => return None,
    })
}

impl Machine {
    /// Adds the CT defects of the layer just started (its lasers and regions are set).
    pub(super) fn plan_ct(&mut self, s: &Setup, drift_factors: &[Option<f64>]) {
        let k = self.layer;
        let n = s.samples_per_layer;
        if n == 0 || self.lasers.is_empty() {
            return;
        }
        let plans: Vec<_> = self.plans.iter().filter(|p| p.covers(k)).copied().collect();
        for p in plans {
            let Some((count, ty, size)) = damage(p.kind) else { continue };
            // A drifting laser damages the part only once it has lost more than 10 %.
            if p.kind == AnomalyKind::PowerDrift && drift_factors.get(usize::from(p.laser).wrapping_sub(1)).copied().flatten().is_none_or(|f| f > 0.9) {
                continue;
            }
            for i in 0..count {
                // The first defect of a hot spot or a power drop lies where it begins (where a
                // sample rule alerts); the others anywhere in it.
                let at = if i == 0 { self.ct_start(p.kind, p.laser, n) } else { None };
                if let Some((x, y)) = at.or_else(|| self.ct_position(p.kind, p.laser, n)) {
                    self.push_defect(x, y, ty, size, Some(p.kind));
                }
            }
        }
        for _ in 0..PORES_PER_LAYER {
            let j = self.ct_rng.below(self.lasers.len() as u64) as usize;
            let (x, y) = self.lasers[j].raster.position(self.ct_rng.below(n));
            self.push_defect(x, y, DefectType::GasPore, (15.0, 45.0), None);
        }
    }

    /// Where a hot spot (the path's first sample in the cell) or a power drop (its first sample)
    /// begins.
    fn ct_start(&self, kind: AnomalyKind, laser: u8, n: u64) -> Option<(f64, f64)> {
        let ll = &self.lasers[usize::from(laser).checked_sub(1)?];
        match kind {
            AnomalyKind::HotSpot => {
                let h = ll.hot.as_ref()?;
                (0..n).map(|i| ll.raster.position(i)).find(|&(x, y)| x >= f64::from(h.x0) && x < f64::from(h.x1) && y >= f64::from(h.y0) && y < f64::from(h.y1))
            }
            AnomalyKind::PowerDrop => ll.drop.as_ref().map(|d| ll.raster.position(d.from)),
            _ => None,
        }
    }

    /// Where a defect of `kind` on `laser` (1-based; 0 machine-wide) melted: a sample position
    /// inside what the anomaly affected.
    fn ct_position(&mut self, kind: AnomalyKind, laser: u8, n: u64) -> Option<(f64, f64)> {
        let j = usize::from(laser).checked_sub(1);
        match kind {
            AnomalyKind::HotSpot => {
                let ll = &self.lasers[j?];
                let h = ll.hot.as_ref()?;
                let inside = |(x, y): (f64, f64)| x >= f64::from(h.x0) && x < f64::from(h.x1) && y >= f64::from(h.y0) && y < f64::from(h.y1);
                let raster = ll.raster;
                (0..TRIES).map(|_| raster.position(self.ct_rng.below(n))).find(|p| inside(*p))
            }
            AnomalyKind::PowerDrop => {
                let ll = &self.lasers[j?];
                let d = ll.drop.as_ref()?;
                let (from, to, raster) = (d.from, d.to, ll.raster);
                Some(raster.position(from + self.ct_rng.below(to - from)))
            }
            AnomalyKind::LackOfFusion | AnomalyKind::PowerDrift => {
                let raster = self.lasers[j?].raster;
                Some(raster.position(self.ct_rng.below(n)))
            }
            AnomalyKind::RecoaterStreak | AnomalyKind::GasFlowShadow => {
                let r = self.plans.iter().find(|p| p.kind == kind && p.covers(self.layer)).and_then(|p| p.region())?;
                let inside = |(x, y): (f64, f64)| x >= f64::from(r.x0) && x < f64::from(r.x1) && y >= f64::from(r.y0) && y < f64::from(r.y1);
                (0..TRIES).find_map(|_| {
                    let j = self.ct_rng.below(self.lasers.len() as u64) as usize;
                    Some(self.lasers[j].raster.position(self.ct_rng.below(n))).filter(|p| inside(*p))
                })
            }
            AnomalyKind::O2Rise | AnomalyKind::Fogging => None,
        }
    }

    fn push_defect(&mut self, x: f64, y: f64, ty: DefectType, (lo, hi): (f64, f64), cause: Option<AnomalyKind>) {
        let rng: &mut SplitMix = &mut self.ct_rng;
        let t_mm = THICKNESS_UM / 1000.0;
        let z = (f64::from(self.layer) + 0.2 + 0.6 * rng.unit()) * t_mm;
        let d = lo + (hi - lo) * rng.unit();
        let (ex, ey) = (REGISTRATION_MM * rng.sym(), REGISTRATION_MM * rng.sym());
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let defect = CtDefect {
            build_id: self.build.to_string(),
            defect_id: format!("ct-{:05}", self.ct.len() + 1),
            x_mm: round(x + ex),
            y_mm: round(y + ey),
            z_mm: round(z),
            volume_mm3: None,
            diameter_um: Some(d.round()),
            defect_type: ty,
            confidence: None,
        };
        self.ct.push(SimDefect { defect, cause, detectable: cause.is_some() });
    }
}
