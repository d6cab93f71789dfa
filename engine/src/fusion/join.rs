//! The join of a build's CT defects with its in-situ evidence, read back from where results are
//! durable (so it works long after the build's actor is gone).
//!
//! Evidence is grouped into *flags*: one per layer and source (an anomaly rule, the grid map,
//! an SPC chart), each with its geometry — points (anomalies with x/y), rectangles (grid cells
//! whose robust z-score against their layer lies beyond `cell_z`, and the signals of SPC charts
//! on grid cells), or the whole layer (anomalies without x/y, signals of SPC charts on a laser:
//! they name a laser, not a place). Layer-less alerts
//! (machine-log rules), `grid_deviation` alerts and SPC alerts (`spc:<chart>:<test>`: their cells
//! and signals are already evidence) are not flags.
//!
//! A defect in layer L is *detected* when a flag of layers L − k … L + k has geometry within
//! `tolerance_mm` of it (the whole layer always is); a flag is *confirmed* when a detectable CT
//! defect lies there in the same sense (a pore below in-situ resolution explains no signal). Recall = detected ÷ detectable defects (equivalent diameter ≥
//! `min_diameter_um`); precision = confirmed ÷ flags (DESIGN §6).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytics::grid::{cell_z_scores, GRID_DEVIATION_RULE};
use crate::records::{GridCell, OutputRecord};

use super::ct::CtDefect;

/// Most evidence items a fused defect lists (nearest first).
pub const MAX_EVIDENCE: usize = 16;

/// How the join matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FusionParams {
    /// Layers either side of a defect's layer whose evidence counts.
    pub layers_k: u32,
    /// Spatial tolerance (CT registration error plus melt-pool size), mm.
    pub tolerance_mm: f64,
    /// A grid cell is evidence when its robust z-score against its layer exceeds this.
    pub cell_z: f64,
    /// Defects smaller than this (equivalent diameter, µm) are below in-situ resolution: fused
    /// and reported, but not counted in recall.
    pub min_diameter_um: f64,
    /// Layer thickness, µm (the build's, from its layer events or metadata).
    pub thickness_um: f64,
    /// Height of the plate surface in the CT frame, mm.
    pub z0_mm: f64,
    /// A CT defect list `meltstream run` fuses when a run ends by itself (its sources ended):
    /// `"simulator"` for the list the topology's simulator writes, or a file (relative to the
    /// topology). Unset: only `meltstream fuse` fuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_list: Option<String>,
}

impl FusionParams {
    /// These parameters for `build`: with the layer thickness of its description in
    /// `build_info_dir` (`[build_info] dir`), when there is one and it gives one.
    pub fn for_build(&self, build_info_dir: Option<&std::path::Path>, build: &str) -> FusionParams {
        let mut p = self.clone();
        if let Some(t) = build_info_dir.and_then(|d| crate::input::build_info::load(d, build).ok().flatten()).and_then(|i| i.layer_thickness_um) {
            p.thickness_um = t;
        }
        p
    }
}

impl Default for FusionParams {
    fn default() -> Self {
        FusionParams { layers_k: 1, tolerance_mm: 1.0, cell_z: 4.0, min_diameter_um: 50.0, thickness_um: 30.0, z0_mm: 0.0, ct_list: None }
    }
}

/// An alert, as fusion needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct EvAnomaly {
    /// Layer (layer-less alerts are no evidence).
    pub layer: Option<u32>,
    /// Rule.
    pub rule: String,
    /// Value that fired.
    pub value: f64,
    /// Position, when known.
    pub x_mm: Option<f64>,
    /// Same, y.
    pub y_mm: Option<f64>,
}

/// A grid map, as fusion needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct EvGrid {
    /// Layer.
    pub layer: u32,
    /// Revision (the latest of a layer is used).
    pub revision: u32,
    /// Cell edge, mm.
    pub cell_mm: f64,
    /// Its cells.
    pub cells: Vec<GridCell>,
}

/// An SPC signal, as fusion needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct EvSpc {
    /// Layer.
    pub layer: u32,
    /// Chart name.
    pub spc: String,
    /// The charted value.
    pub value: f64,
    /// The cell of a cell chart: centre x, centre y and edge, mm.
    pub cell: Option<(f64, f64, f64)>,
}

/// A build's in-situ results, as stored.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// Its alerts.
    pub anomalies: Vec<EvAnomaly>,
    /// Its grid maps (every revision).
    pub grids: Vec<EvGrid>,
    /// Its SPC signals.
    pub spc: Vec<EvSpc>,
    /// Height of each layer's top above the plate, µm (from its layer events' `z_um`): maps a
    /// defect's z to its layer when known, before the thickness does.
    pub layer_tops_um: BTreeMap<u32, i64>,
}

impl Evidence {
    /// Nothing stored for the build (no layer, alert, grid map or SPC signal).
    pub fn is_empty(&self) -> bool {
        self.anomalies.is_empty() && self.grids.is_empty() && self.spc.is_empty() && self.layer_tops_um.is_empty()
    }

    /// Adds what a result record holds (anomalies, grids, SPC signals, layer tops).
    pub fn add(&mut self, r: &OutputRecord) {
        match r {
            OutputRecord::Anomaly(a) => self.anomalies.push(EvAnomaly { layer: a.layer, rule: a.rule.clone(), value: a.value, x_mm: a.x_mm, y_mm: a.y_mm }),
            OutputRecord::Grid(g) => self.grids.push(EvGrid { layer: g.layer, revision: g.revision, cell_mm: g.cell_mm, cells: g.cells.clone() }),
            OutputRecord::SpcSignal(s) => self.spc.push(EvSpc { layer: s.layer, spc: s.spc.clone(), value: s.value, cell: s.cell.map(|c| (c.x_mm, c.y_mm, c.size_mm)) }),
            OutputRecord::LayerSummary(s) => {
                if let Some(z) = s.z_um {
                    self.layer_tops_um.insert(s.layer, z);
                }
            }
            _ => {}
        }
    }

    /// The layer holding height `z_mm`: the lowest layer whose top is at or above it, when
    /// layer heights are known; ⌊(z − z₀) / thickness⌋ otherwise.
    pub fn layer_of(&self, d: &CtDefect, p: &FusionParams) -> Option<u32> {
        if self.layer_tops_um.is_empty() {
            return d.layer(p.thickness_um, p.z0_mm);
        }
        let z_um = (d.z_mm - p.z0_mm) * 1000.0;
        self.layer_tops_um.iter().find(|(_, top)| **top as f64 >= z_um).map(|(l, _)| *l)
    }
}

/// Where a flag lies in its layer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Geom {
    Layer,
    Point(f64, f64),
    Rect(f64, f64, f64, f64),
}

impl Geom {
    /// Distance of (x, y) from it, mm (`None`: the whole layer).
    fn distance(self, x: f64, y: f64) -> Option<f64> {
        match self {
            Geom::Layer => None,
            Geom::Point(px, py) => Some((px - x).hypot(py - y)),
            Geom::Rect(x0, y0, x1, y1) => Some((x0 - x).max(x - x1).max(0.0).hypot((y0 - y).max(y - y1).max(0.0))),
        }
    }
}

#[derive(Clone, Debug)]
struct Item {
    geom: Geom,
    value: f64,
}

/// One piece of evidence near a defect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceItem {
    /// `anomaly:<rule>`, `grid` or `spc:<chart>`.
    pub source: String,
    /// Its layer.
    pub layer: u32,
    /// Where it lies (a point's position or a cell's centre), mm; absent for layer-wide evidence.
    pub x_mm: Option<f64>,
    /// Same, y.
    pub y_mm: Option<f64>,
    /// Distance from the defect, mm; absent for layer-wide evidence.
    pub distance_mm: Option<f64>,
    /// The alert's value, the cell's z-score, or the SPC statistic.
    pub value: f64,
}

/// A CT defect with the in-situ evidence found for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusedDefect {
    /// The defect as the CT listed it.
    pub defect: CtDefect,
    /// Its layer (from 0).
    pub layer: u32,
    /// Equivalent diameter ≥ `min_diameter_um`.
    pub detectable: bool,
    /// Some evidence lies within the tolerance.
    pub detected: bool,
    /// Evidence items within the tolerance (nearest first, at most [`MAX_EVIDENCE`]).
    pub evidence: Vec<EvidenceItem>,
    /// All evidence items within the tolerance.
    pub evidence_count: u32,
}

/// A build's fusion in numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FusionSummary {
    /// Build.
    pub build_id: String,
    /// CT defects of the build.
    pub defects: u32,
    /// Of those, the detectable ones.
    pub detectable: u32,
    /// Detectable defects detected (true positives).
    pub detected: u32,
    /// Detectable defects without evidence (false negatives).
    pub missed: u32,
    /// Defects below `min_diameter_um` that nevertheless have evidence.
    pub detected_small: u32,
    /// Defects above the build's last layer (or below the plate): not fused.
    pub outside_layers: u32,
    /// In-situ flags (layer × source).
    pub flags: u32,
    /// Flags with a CT defect there.
    pub confirmed_flags: u32,
    /// Flags without (false positives, or defects the CT missed).
    pub unconfirmed_flags: u32,
    /// detected ÷ detectable (1 when nothing is detectable).
    pub recall: f64,
    /// confirmed ÷ flags (1 when nothing was flagged).
    pub precision: f64,
    /// Per defect type: [detected, detectable].
    pub by_type: BTreeMap<String, [u32; 2]>,
    /// Unconfirmed flags per source.
    pub unconfirmed_by_source: BTreeMap<String, u32>,
    /// The parameters of the join.
    pub params: FusionParams,
}

/// The flags of a build: per layer, per source, the items.
fn flags(ev: &Evidence, p: &FusionParams) -> BTreeMap<u32, BTreeMap<String, Vec<Item>>> {
    let mut f: BTreeMap<u32, BTreeMap<String, Vec<Item>>> = BTreeMap::new();
    for a in &ev.anomalies {
        // Grid deviation and SPC alerts repeat evidence their cells and signals already give.
        let Some(layer) = a.layer.filter(|_| a.rule != GRID_DEVIATION_RULE && !a.rule.starts_with("spc:")) else { continue };
        let geom = match (a.x_mm, a.y_mm) {
            (Some(x), Some(y)) => Geom::Point(x, y),
            _ => Geom::Layer,
        };
        f.entry(layer).or_default().entry(format!("anomaly:{}", a.rule)).or_default().push(Item { geom, value: a.value });
    }
    let mut latest: BTreeMap<u32, &EvGrid> = BTreeMap::new();
    for g in &ev.grids {
        if latest.get(&g.layer).is_none_or(|o| o.revision < g.revision) {
            latest.insert(g.layer, g);
        }
    }
    for (layer, g) in latest {
        for (c, z) in g.cells.iter().zip(cell_z_scores(&g.cells)) {
            let Some(z) = z.filter(|z| z.abs() > p.cell_z) else { continue };
            let (x0, y0) = (f64::from(c.ix) * g.cell_mm, f64::from(c.iy) * g.cell_mm);
            f.entry(layer).or_default().entry("grid".into()).or_default().push(Item { geom: Geom::Rect(x0, y0, x0 + g.cell_mm, y0 + g.cell_mm), value: z });
        }
    }
    for s in &ev.spc {
        let geom = match s.cell {
            Some((x, y, size)) => Geom::Rect(x - size / 2.0, y - size / 2.0, x + size / 2.0, y + size / 2.0),
            None => Geom::Layer,
        };
        f.entry(s.layer).or_default().entry(format!("spc:{}", s.spc)).or_default().push(Item { geom, value: s.value });
    }
    f
}

/// Joins one build's CT `defects` with its `evidence`.
pub fn fuse(build_id: &str, defects: &[CtDefect], evidence: &Evidence, p: &FusionParams) -> (Vec<FusedDefect>, FusionSummary) {
    let flags = flags(evidence, p);
    let near = |layer: u32| flags.range(layer.saturating_sub(p.layers_k)..=layer.saturating_add(p.layers_k));
    let within = |d: Option<f64>| d.is_none_or(|d| d <= p.tolerance_mm);
    let mut confirmed: BTreeMap<(u32, &str), bool> = flags.iter().flat_map(|(l, m)| m.keys().map(move |s| ((*l, s.as_str()), false))).collect();
    let mut fused = Vec::with_capacity(defects.len());
    let mut s = FusionSummary { build_id: build_id.to_owned(), params: p.clone(), ..FusionSummary::default() };
    for d in defects.iter().filter(|d| d.build_id == build_id) {
        let Some(layer) = evidence.layer_of(d, p) else {
            s.outside_layers += 1;
            continue;
        };
        let detectable = d.equivalent_diameter_um().is_some_and(|e| e >= p.min_diameter_um);
        let mut items = Vec::new();
        for (fl, sources) in near(layer) {
            for (source, its) in sources {
                let mut hit = false;
                for it in its {
                    let dist = it.geom.distance(d.x_mm, d.y_mm);
                    if within(dist) {
                        hit = true;
                        let (x, y) = match it.geom {
                            Geom::Layer => (None, None),
                            Geom::Point(x, y) => (Some(x), Some(y)),
                            Geom::Rect(x0, y0, x1, y1) => (Some((x0 + x1) / 2.0), Some((y0 + y1) / 2.0)),
                        };
                        items.push(EvidenceItem { source: source.clone(), layer: *fl, x_mm: x, y_mm: y, distance_mm: dist, value: it.value });
                    }
                }
                // A pore below in-situ resolution cannot explain a flag.
                if hit && detectable {
                    confirmed.insert((*fl, source.as_str()), true);
                }
            }
        }
        let detected = !items.is_empty();
        items.sort_by(|a, b| {
            let key = |e: &EvidenceItem| (e.distance_mm.unwrap_or(f64::INFINITY), e.layer.abs_diff(layer));
            let (ka, kb) = (key(a), key(b));
            ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1)).then_with(|| a.source.cmp(&b.source))
        });
        let count = items.len() as u32;
        items.truncate(MAX_EVIDENCE);
        s.defects += 1;
        let t = s.by_type.entry(d.defect_type.name().to_owned()).or_default();
        if detectable {
            s.detectable += 1;
            t[1] += 1;
            if detected {
                s.detected += 1;
                t[0] += 1;
            }
        } else if detected {
            s.detected_small += 1;
        }
        fused.push(FusedDefect { defect: d.clone(), layer, detectable, detected, evidence: items, evidence_count: count });
    }
    s.missed = s.detectable - s.detected;
    s.flags = confirmed.len() as u32;
    s.confirmed_flags = confirmed.values().filter(|c| **c).count() as u32;
    s.unconfirmed_flags = s.flags - s.confirmed_flags;
    for ((_, source), _) in confirmed.iter().filter(|(_, c)| !**c) {
        let key = source.split_once(':').map_or(*source, |(k, _)| k).to_owned();
        *s.unconfirmed_by_source.entry(if key == "grid" { key } else { (*source).to_owned() }).or_default() += 1;
    }
    let ratio = |a: u32, b: u32| if b == 0 { 1.0 } else { f64::from(a) / f64::from(b) };
    s.recall = ratio(s.detected, s.detectable);
    s.precision = ratio(s.confirmed_flags, s.flags);
    (fused, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fusion::ct::DefectType;
    use crate::records::{Anomaly, GridMap};

    fn defect(id: &str, x: f64, y: f64, layer: u32, d_um: f64) -> CtDefect {
        CtDefect { build_id: "b".into(), defect_id: id.into(), x_mm: x, y_mm: y, z_mm: (f64::from(layer) + 0.5) * 0.03, volume_mm3: None, diameter_um: Some(d_um), defect_type: DefectType::Keyhole, confidence: None }
    }

    fn anomaly(layer: u32, rule: &str, at: Option<(f64, f64)>) -> Anomaly {
        Anomaly { build_id: "b".into(), layer: Some(layer), laser: Some(1), time: String::new(), time_ns: 0, rule: rule.into(), channel: "c".into(), value: 1.0, op: ">".into(), limit: 0.0, x_mm: at.map(|p| p.0), y_mm: at.map(|p| p.1) }
    }

    #[test]
    fn defects_meet_nearby_evidence_and_flags_their_defects() {
        // Layer 10: a 10 × 10 grid of 20 mm cells at 2000, one cold cell at (3, 4).
        let mut cells: Vec<GridCell> = (0..100).map(|i| GridCell { ix: i % 10, iy: i / 10, count: 500, mean: 2000.0 + f64::from(i % 7) }).collect();
        cells[43].mean = 1400.0;
        let grid = GridMap { build_id: "b".into(), layer: 10, revision: 0, channel: "c".into(), cell_mm: 20.0, cells_per_side: 20, outside_count: 0, cells };
        let mut ev = Evidence::default();
        let records = [anomaly(20, "hot_spot", Some((100.0, 100.0))), anomaly(30, "lack_of_fusion", None), anomaly(40, "hot_spot", Some((5.0, 5.0)))];
        records.into_iter().map(OutputRecord::Anomaly).chain([OutputRecord::Grid(grid)]).for_each(|r| ev.add(&r));
        let defects = [
            defect("in-cell", 65.0, 85.0, 10, 150.0),      // inside cell (3, 4): 60–80 × 80–100
            defect("next-layer", 80.5, 85.0, 11, 150.0),   // 0.5 mm off the cell, one layer up
            defect("near-point", 100.6, 100.0, 21, 150.0), // 0.6 mm from the hot spot
            defect("far", 150.0, 150.0, 20, 150.0),        // 50 mm away
            defect("layer-wide", 300.0, 300.0, 29, 150.0), // layer 30's LOF has no position
            defect("tiny", 300.0, 10.0, 5, 20.0),          // below resolution, no evidence
        ];
        let (fused, s) = fuse("b", &defects, &ev, &FusionParams::default());
        let detected: Vec<&str> = fused.iter().filter(|f| f.detected).map(|f| f.defect.defect_id.as_str()).collect();
        assert_eq!(detected, vec!["in-cell", "next-layer", "near-point", "layer-wide"]);
        assert_eq!(fused[0].evidence[0].source, "grid");
        assert_eq!(fused[0].evidence[0].distance_mm, Some(0.0));
        assert!(fused[0].evidence[0].value < -4.0);
        assert_eq!((s.defects, s.detectable, s.detected, s.missed), (6, 5, 4, 1));
        // Flags: grid@10, hot_spot@20, lack_of_fusion@30 confirmed; hot_spot@40 not.
        assert_eq!((s.flags, s.confirmed_flags), (4, 3));
        assert_eq!(s.unconfirmed_by_source.get("anomaly:hot_spot"), Some(&1));
        assert!((s.recall - 0.8).abs() < 1e-12 && (s.precision - 0.75).abs() < 1e-12);
    }

    /// A signal of a chart on grid cells is evidence where its cell lies, not over the layer;
    /// a laser chart's signal still covers its layer.
    #[test]
    fn a_cell_chart_signal_flags_its_cell() {
        let mut ev = Evidence::default();
        ev.spc.push(EvSpc { layer: 5, spc: "cells".into(), value: 1400.0, cell: Some((30.0, 50.0, 20.0)) });
        ev.spc.push(EvSpc { layer: 8, spc: "lasers".into(), value: 1400.0, cell: None });
        let defects = [defect("in", 39.5, 59.0, 5, 150.0), defect("beside", 41.5, 50.0, 5, 150.0), defect("far", 300.0, 300.0, 8, 150.0)];
        let (fused, s) = fuse("b", &defects, &ev, &FusionParams::default());
        let detected: Vec<&str> = fused.iter().filter(|f| f.detected).map(|f| f.defect.defect_id.as_str()).collect();
        assert_eq!(detected, vec!["in", "far"], "the cell spans 20–40 × 40–60 mm, tolerance 1 mm");
        assert_eq!((fused[0].evidence[0].x_mm, fused[0].evidence[0].y_mm, fused[0].evidence[0].distance_mm), (Some(30.0), Some(50.0), Some(0.0)));
        assert_eq!(fused[2].evidence[0].distance_mm, None);
        assert_eq!((s.flags, s.confirmed_flags), (2, 2));
    }
}
