//! Energy-density rules: when a layer closes, each laser's volumetric energy density (from the
//! layer's parameters or, failing them, from its measured power, speed and hatch) is judged
//! once against every `energy_density_j_mm3` rule. Its alerts go ahead of the layer's
//! summaries, so a sink that takes both writes the alert first.
//!
//! It must never judge a layer twice (revisions by late samples are not judged again).

use crate::input::batch::RecordBatch;
use crate::pipeline::build_book::BuildBook;
use crate::pipeline::operator::{Ctx, LayerResult, Operator};
use crate::pipeline::threshold_rules::op_str;
use crate::records::{Anomaly, Emitted, OutputRecord};
use crate::analytics::rules::RuleTarget;
use crate::input::time::format_rfc3339;

/// The energy-density rules of one build.
#[derive(Debug, Default)]
pub struct EnergyDensityRules;

impl Operator for EnergyDensityRules {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_layer_result(&mut self, r: &LayerResult, book: &mut BuildBook, out: &mut Vec<Emitted>) {
        if !r.first() || !book.settings.rules.iter().any(|x| x.target == RuleTarget::EnergyDensity) {
            return;
        }
        let Some(w) = book.window(r.layer) else { return };
        let end = w.end_ns();
        let mut fired = 0;
        // The lasers with samples, as in the layer's summaries.
        for laser in w.lasers.iter().enumerate().filter(|(_, a)| a.sample_count() > 0).map(|(l, _)| l) {
            let by_style = w.energy_by_style(laser as u8, book.settings.default_thickness_um, book.info.as_deref());
            let Some(e) = by_style.get("core").or_else(|| by_style.values().next()).copied() else { continue };
            for rule in book.settings.rules.iter().filter(|x| x.target == RuleTarget::EnergyDensity && x.op.fires(e, x.limit)) {
                fired += 1;
                let a = Anomaly {
                    build_id: book.build.to_string(),
                    layer: Some(r.layer),
                    laser: Some(laser as u8),
                    time: format_rfc3339(end),
                    time_ns: end,
                    rule: rule.name.clone(),
                    channel: "energy_density_j_mm3".into(),
                    value: e,
                    op: op_str(rule),
                    limit: rule.limit,
                    x_mm: None,
                    y_mm: None,
                };
                out.push(Emitted { record: OutputRecord::Anomaly(a), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
            }
        }
        book.counters.anomalies += fired;
    }
}
