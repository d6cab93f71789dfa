//! The router's `input_quality` records: each input's windows of event time (counted by
//! `pipeline::input_quality`, which explains why a replay counts the same), emitted when they
//! close; after each batch, the open window goes to the progress board, which stores the one at
//! the resume offset with the offsets.

use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::event::{input_name, InputId};
use meltstream_engine::offset_ledger::HoldSet;
use meltstream_engine::pipeline::input_quality::{window_start, ClosedWindow};
use meltstream_engine::records::{Emitted, InputQuality, OutputRecord};

use crate::ports::inputs::source_index;
use crate::ports::messages::CommitMsg;

use super::RouterState;

impl RouterState {
    /// Counts `batch` (its `max_t_before` set) and emits the windows it closed; the input's
    /// first batch of this run starts from what the run it replaces stored.
    pub(super) async fn observe_quality(&mut self, batch: &RecordBatch, origin: i64) {
        let Some(q) = self.quality.as_mut() else { return };
        let span = batch.span;
        if !q.knows(span.input) {
            if let Some(s) = self.args.board.take_restored_quality(span.input) {
                if s.at == span.first_offset {
                    q.restore(span.input, s);
                } else {
                    tracing::warn!(input = span.input, stored_at = s.at, reading_from = span.first_offset, "the stored input-quality window is not where this run reads from; its window starts empty");
                }
            }
        }
        let closed = q.observe(batch, &batch.max_t_before);
        self.args.board.observe_quality(span.input, q.snapshot(span.input, span.next_offset));
        let records = closed.into_iter().map(|w| (w, span.seq)).collect();
        self.emit_quality(records, origin).await;
    }

    /// Closes the window of an input that ended.
    pub(super) async fn finish_quality(&mut self, input: InputId) {
        let Some(q) = self.quality.as_mut() else { return };
        let closed: Vec<(ClosedWindow, u64)> = q.finish(input).into_iter().collect();
        self.emit_quality(closed, crate::ports::clock::now_wall_ns()).await;
    }

    /// Forgets the windows of revoked inputs: their next owner counts them from the stored one.
    pub(super) fn forget_quality(&mut self, inputs: &[InputId]) {
        if let Some(q) = self.quality.as_mut() {
            for i in inputs {
                q.forget(*i);
            }
        }
    }

    /// Emits closed windows, each holding the batch (`seq`) whose record closed it.
    async fn emit_quality(&mut self, closed: Vec<(ClosedWindow, u64)>, origin: i64) {
        if closed.is_empty() {
            return;
        }
        let min = self.args.settings.verdict.min_data_quality;
        let mut records = Vec::with_capacity(closed.len());
        for (w, seq) in closed {
            let label = self.input_label(w.input);
            let c = &w.counts;
            let score = c.score();
            metrics::gauge!("meltstream_input_quality_score", "input" => label).set(score);
            let (topic, partition) = self.args.board.partition_of(w.input).map_or((None, None), |(t, p)| (Some(t), Some(p)));
            let source = self.args.dead_letters.source_names.get(source_index(w.input)).cloned().unwrap_or_default();
            let record = InputQuality {
                source,
                input: input_name(w.input),
                topic,
                partition,
                window_start: window_start(w.start_ns),
                window_start_ns: w.start_ns,
                window_end_ns: w.end_ns,
                records: c.records,
                samples: c.samples,
                blocks: c.blocks,
                layer_events: c.layer_events,
                logs: c.logs,
                dead_letters: c.dead_letter_total(),
                dead_letters_by_reason: c.dead_letters.clone(),
                dead_letter_rate: c.dead_letter_rate(),
                late_samples: c.late_samples,
                late_rate: c.late_rate(),
                max_disorder_ms: c.max_disorder_ns as f64 / 1e6,
                score,
                below_threshold: score < min,
            };
            records.push(Emitted { record: OutputRecord::InputQuality(record), hold: HoldSet::one((w.input, seq)), origin_wall_ns: origin, position: Some((w.input, w.closed_at)) });
        }
        let plan = self.args.outputs.plan(records);
        let _ = self.args.commit.cast(CommitMsg::Emitted(plan.deliveries.clone()));
        self.args.outputs.send(plan).await;
    }
}
