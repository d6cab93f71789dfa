//! Threshold rules on samples and machine-log values (`temperature_c > 1700`, `o2_ppm > 1000`):
//! an alert as soon as a block or log record exceeds a limit, without waiting for any window,
//! with an event-time cooldown per rule and laser. It also counts every exceedance of a block in
//! [`Block::rule_hits`], for the layer statistics downstream, so counts stay exact whatever the
//! cooldown. Energy-density rules judge closed layers in their own operator.
//!
//! A cooldown is state that decides what is emitted, so a replay must meet it as the run it
//! replaces did. While it runs it holds the batch of the alert that started it (the resume
//! offset cannot pass it, so a replay reads that alert again and starts the same cooldown); it
//! ends when the watermark passes its end. It is also recorded (`CooldownRun`): once it ended,
//! the resume offset may pass its alert while records it suppressed are not durable yet, and a
//! replay from between the two starts with it. Log rules and samples without a layer thus no
//! longer keep one cooldown for ever.
//!
//! It must never allocate per sample, nor raise an alert for a value that does not exceed its
//! rule's limit.

use crate::input::batch::{RecordBatch, COL_X, COL_Y};
use crate::input::event::NO_LAYER;
use crate::pipeline::build_book::{BuildBook, BuildSettings};
use crate::pipeline::operator::{Block, Ctx, Operator};
use crate::records::{Anomaly, Emitted, OutputRecord};
use crate::analytics::rules::{CmpOp, Cooldown, Rule, RuleTarget};
use crate::input::time::format_rfc3339;
use crate::input::event::TimeNs;
use crate::offset_ledger::{Hold, HoldSet};

/// Lasers per build for which rule cooldowns are tracked (laser numbers above share the last).
const MAX_LASERS: usize = 65;

/// The sample and log rules of one build, with their cooldowns.
#[derive(Debug)]
pub struct ThresholdRules {
    /// Per rule and laser.
    cooldowns: Vec<Cooldown>,
    /// Running cooldowns: slot, end (event time) and the batch of the alert that started it.
    running: Vec<(usize, TimeNs, Option<Hold>)>,
    /// Cooldowns started by the record in progress (slot, alert time, scope, offset), recorded
    /// in the book once its rules are done (reused: no allocation per record).
    started: Vec<(u32, TimeNs, u32, u64)>,
}

impl ThresholdRules {
    /// No alert raised yet.
    pub fn new(s: &BuildSettings) -> ThresholdRules {
        ThresholdRules { cooldowns: vec![Cooldown::default(); s.rules.len() * MAX_LASERS], running: Vec::new(), started: Vec::new() }
    }

    /// Admits an alert at `t` in `slot` when its cooldown allows; `at` is the alert record's
    /// offset and batch. A new cooldown holds that batch and is recorded
    /// ([`ThresholdRules::record_started`]).
    fn admit(&mut self, slot: usize, t: TimeNs, cooldown_ns: i64, scope: u32, at: (u64, Option<Hold>)) -> bool {
        if !self.cooldowns[slot].admit(t, cooldown_ns, scope) {
            return false;
        }
        self.start(slot, t, cooldown_ns, at.1);
        self.started.push((slot as u32, t, scope, at.0));
        true
    }

    /// Records in the book the cooldowns the record in progress started.
    fn record_started(&mut self, book: &mut BuildBook) {
        for (slot, t, scope, from) in self.started.drain(..) {
            book.record_cooldown_start(slot, t, scope, from);
        }
    }

    fn start(&mut self, slot: usize, t: TimeNs, cooldown_ns: i64, hold: Option<Hold>) {
        let end = t.saturating_add(cooldown_ns.max(1));
        match self.running.iter_mut().find(|r| r.0 == slot) {
            Some(r) => *r = (slot, end, hold),
            None => self.running.push((slot, end, hold)),
        }
    }
}

/// The comparison as written in a record (`>`, `<=`, …).
pub fn op_str(rule: &Rule) -> String {
    match rule.op {
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
    }
    .to_owned()
}

impl Operator for ThresholdRules {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    /// Machine-log rules.
    fn on_log(&mut self, batch: &RecordBatch, i: usize, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        {
            let rec = &batch.logs[i];
            for (ri, rule) in book.settings.rules.iter().enumerate() {
                let RuleTarget::Log(name) = &rule.target else { continue };
                for (k, v) in rec.values.iter().filter(|(k, _)| &**k == name.as_str()) {
                    if rule.op.fires(*v, rule.limit) && self.admit(ri * MAX_LASERS, rec.t_ns, rule.cooldown_ns, NO_LAYER, (rec.source_offset, ctx.hold)) {
                        book.counters.anomalies += 1;
                        let a = Anomaly {
                            build_id: book.build.to_string(),
                            layer: None,
                            laser: None,
                            time: format_rfc3339(rec.t_ns),
                            time_ns: rec.t_ns,
                            rule: rule.name.clone(),
                            channel: k.to_string(),
                            value: *v,
                            op: op_str(rule),
                            limit: rule.limit,
                            x_mm: None,
                            y_mm: None,
                        };
                        out.push(Emitted { record: OutputRecord::Anomaly(a), hold: ctx.hold_set(), origin_wall_ns: ctx.origin_wall_ns, position: ctx.position(rec.source_offset) });
                    }
                }
            }
        }
        self.record_started(book);
    }

    /// Sample rules: alerts first, and the block's exceedance counts.
    fn on_block(&mut self, block: &mut Block<'_>, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let (batch, h) = (block.batch, block.h);
        for (ri, rule) in book.settings.rules.iter().enumerate() {
            let RuleTarget::Sample(ch) = rule.target else { continue };
            let Some(vs) = batch.column(&h, ch.index()) else { continue };
            let (first, count) = rule.scan(vs);
            block.rule_hits[ri] = count;
            let Some(j) = first else { continue };
            let t = h.t0_ns + h.dt_ns * j as i64;
            let slot = ri * MAX_LASERS + usize::from(h.laser).min(MAX_LASERS - 1);
            if self.admit(slot, t, rule.cooldown_ns, h.layer, (h.source_offset, ctx.hold)) {
                book.counters.anomalies += 1;
                let xy = |c: usize| batch.column(&h, c).map(|v| f64::from(v[j]));
                let a = Anomaly {
                    build_id: book.build.to_string(),
                    layer: (h.layer != NO_LAYER).then_some(h.layer),
                    laser: (h.laser != 0).then_some(h.laser),
                    time: format_rfc3339(t),
                    time_ns: t,
                    rule: rule.name.clone(),
                    channel: ch.name().to_owned(),
                    value: f64::from(vs[j]),
                    op: op_str(rule),
                    limit: rule.limit,
                    x_mm: xy(COL_X),
                    y_mm: xy(COL_Y),
                };
                out.push(Emitted { record: OutputRecord::Anomaly(a), hold: ctx.hold_set(), origin_wall_ns: ctx.origin_wall_ns, position: ctx.position(h.source_offset) });
            }
        }
        self.record_started(book);
    }

    /// Ends the cooldowns the watermark has passed.
    fn on_watermark(&mut self, wm: TimeNs, book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {
        let cooldowns = &mut self.cooldowns;
        self.running.retain(|&(slot, end, _)| {
            if end <= wm {
                cooldowns[slot].reset();
                book.record_cooldown_end(slot as u32);
                false
            } else {
                true
            }
        });
    }

    /// Starts the cooldowns an earlier run recorded as running where this one starts reading.
    fn resume(&mut self, book: &BuildBook) {
        for c in book.resumed_cooldowns() {
            let slot = c.slot as usize;
            let Some(rule) = book.settings.rules.get(slot / MAX_LASERS) else { continue };
            if slot < self.cooldowns.len() {
                self.cooldowns[slot] = Cooldown::running(c.alert_ns, c.scope);
                self.start(slot, c.alert_ns, rule.cooldown_ns, None);
            }
        }
    }

    fn holds_into(&self, acc: &mut HoldSet) {
        for h in self.running.iter().filter_map(|r| r.2) {
            acc.add(h);
        }
    }
}
