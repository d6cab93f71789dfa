//! Data quality per input (a file, a simulator, a Kafka partition): what arrived on it in each
//! window of event time, what of it was rejected, and what came behind the input's watermark.
//!
//! # Windows and replay
//! A window is `[k·W, (k+1)·W)` of the input's *running maximum event time*: a record belongs to
//! the window of the largest event time seen on the input up to and including it (a dead letter,
//! which has no time, to that of the largest before it). The records of an input arrive in
//! offset order, so the windows and what they count are a function of the input alone, whatever
//! the batch boundaries. A window closes when a record's running maximum enters a later window,
//! or when the input ends.
//!
//! Nothing is held for an open window: after every batch the router leaves a
//! [`QualitySnapshot`] of the input's open window on the progress board, and the one at the
//! resume offset is stored with the offsets (`PartitionState`). A replay starts from it and
//! counts what the run it replaces counted; a closed window's record carries the position of the
//! record that closed it, so one already durable is dropped on replay.

use std::collections::{BTreeMap, HashMap};

use crate::input::batch::RecordBatch;
use crate::input::event::{InputId, TimeNs};
use crate::input::time::format_rfc3339;

/// What one closed window of one input counted; the router names its input and makes it a
/// record.
#[derive(Clone, Debug, PartialEq)]
pub struct ClosedWindow {
    /// The input.
    pub input: InputId,
    /// Window start, ns.
    pub start_ns: TimeNs,
    /// Window end (exclusive), ns.
    pub end_ns: TimeNs,
    /// Offset of the record that closed it (the first of the next window), or of the input's
    /// last record when the input ended: the record's position.
    pub closed_at: u64,
    /// What it counted.
    pub counts: Counts,
}

/// What a window of an input counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Source records (distinct offsets), dead letters included.
    pub records: u64,
    /// Samples (in sample blocks).
    pub samples: u64,
    /// Sample blocks.
    pub blocks: u64,
    /// Layer events.
    pub layer_events: u64,
    /// Machine-log records.
    pub logs: u64,
    /// Records rejected when decoding, per reason (`invalid_json`, `wrong_schema`, …).
    pub dead_letters: BTreeMap<String, u64>,
    /// Samples whose event time lay behind the input's watermark when they arrived (the largest
    /// event time before them minus the watermark bound).
    pub late_samples: u64,
    /// The largest lag of a sample behind the largest event time before it, ns (the input's
    /// out-of-orderness).
    pub max_disorder_ns: i64,
    /// Offset of the last record counted (to count records, not blocks).
    #[serde(default)]
    last_offset: Option<u64>,
}

impl Counts {
    /// Dead letters, all reasons.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// Dead letters ÷ records.
    pub fn dead_letter_rate(&self) -> f64 {
        ratio(self.dead_letter_total(), self.records)
    }

    /// Late samples ÷ samples.
    pub fn late_rate(&self) -> f64 {
        ratio(self.late_samples, self.samples)
    }

    /// The window's score, 0–1: the share of records decoded times the share of samples on
    /// time.
    pub fn score(&self) -> f64 {
        (1.0 - self.dead_letter_rate()) * (1.0 - self.late_rate())
    }

    fn record(&mut self, offset: u64) {
        if self.last_offset != Some(offset) {
            self.records += 1;
            self.last_offset = Some(offset);
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The open window of an input at a source offset: what a replay from that offset starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QualitySnapshot {
    /// The offset it stands at (the next record to read).
    pub at: u64,
    /// Window index, once a record with an event time came (records before it join the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    /// What the window counted so far.
    pub counts: Counts,
}

#[derive(Debug, Default)]
struct Open {
    index: Option<i64>,
    counts: Counts,
    /// Sequence of the last batch counted (the hold of a window closed at the input's end).
    last_seq: u64,
}

/// The open window of every input.
#[derive(Debug)]
pub struct InputQualityWindows {
    window_ns: i64,
    bound_ns: i64,
    open: HashMap<InputId, Open>,
}

/// One record of a batch, in offset order.
enum Item {
    Block(usize),
    Layer(usize),
    Log(usize),
    Dead(usize),
}

impl InputQualityWindows {
    /// Windows of `window_ns` of event time; lateness against a watermark `bound_ns` behind the
    /// largest event time.
    pub fn new(window_ns: i64, bound_ns: i64) -> InputQualityWindows {
        InputQualityWindows { window_ns: window_ns.max(1), bound_ns, open: HashMap::new() }
    }

    /// Counts `batch`, whose input's largest event time before each record is given by `steps`
    /// (see [`RecordBatch::max_t_steps`]); returns the windows it closed.
    pub fn observe(&mut self, batch: &RecordBatch, steps: &[(u64, TimeNs)]) -> Vec<ClosedWindow> {
        let input = batch.span.input;
        let mut items: Vec<(u64, Item)> = Vec::with_capacity(batch.blocks.len() + batch.layers.len() + batch.logs.len() + batch.dead.len());
        items.extend(batch.blocks.iter().enumerate().map(|(i, b)| (b.source_offset, Item::Block(i))));
        items.extend(batch.layers.iter().enumerate().map(|(i, e)| (e.source_offset, Item::Layer(i))));
        items.extend(batch.logs.iter().enumerate().map(|(i, r)| (r.source_offset, Item::Log(i))));
        items.extend(batch.dead.iter().enumerate().map(|(i, d)| (d.offset, Item::Dead(i))));
        // Stable: the blocks of one record keep their order.
        items.sort_by_key(|(o, _)| *o);
        let mut closed = Vec::new();
        let open = self.open.entry(input).or_default();
        open.last_seq = batch.span.seq;
        let mut step = 0;
        for (offset, item) in items {
            while step + 1 < steps.len() && steps[step + 1].0 <= offset {
                step += 1;
            }
            let before = steps.get(step).map_or(TimeNs::MIN, |s| s.1);
            let own = match item {
                Item::Block(i) => Some(batch.blocks[i].t_last_ns()),
                Item::Layer(i) => Some(batch.layers[i].t_ns),
                Item::Log(i) => Some(batch.logs[i].t_ns),
                Item::Dead(_) => None,
            };
            let running = own.map_or(before, |t| t.max(before));
            if running > TimeNs::MIN {
                let index = running.div_euclid(self.window_ns);
                match open.index {
                    None => open.index = Some(index),
                    Some(k) if index > k => {
                        let done = std::mem::replace(open, Open { index: Some(index), counts: Counts::default(), last_seq: batch.span.seq });
                        closed.push(close(input, self.window_ns, done, offset));
                    }
                    Some(_) => {}
                }
            }
            let c = &mut open.counts;
            c.record(offset);
            match item {
                Item::Block(i) => {
                    let b = &batch.blocks[i];
                    let n = u64::from(b.len.max(1));
                    c.blocks += 1;
                    c.samples += n;
                    if before > TimeNs::MIN {
                        c.max_disorder_ns = c.max_disorder_ns.max(before.saturating_sub(b.t0_ns));
                        c.late_samples += behind(b.t0_ns, b.dt_ns, n, before.saturating_sub(self.bound_ns));
                    }
                }
                Item::Layer(_) => c.layer_events += 1,
                Item::Log(_) => c.logs += 1,
                Item::Dead(i) => *c.dead_letters.entry(batch.dead[i].reason.label().to_owned()).or_default() += 1,
            }
        }
        closed
    }

    /// Closes the window of an input that ended; with the sequence of its last batch.
    pub fn finish(&mut self, input: InputId) -> Option<(ClosedWindow, u64)> {
        let open = self.open.remove(&input)?;
        let last = open.counts.last_offset?;
        let seq = open.last_seq;
        Some((close(input, self.window_ns, open, last), seq))
    }

    /// Forgets an input (its partition went to another process).
    pub fn forget(&mut self, input: InputId) {
        self.open.remove(&input);
    }

    /// True when `input` has an open window (counted or restored).
    pub fn knows(&self, input: InputId) -> bool {
        self.open.contains_key(&input)
    }

    /// The open window of `input` at offset `at` (after the batch ending there).
    pub fn snapshot(&self, input: InputId, at: u64) -> QualitySnapshot {
        self.open.get(&input).map_or(QualitySnapshot { at, ..Default::default() }, |o| QualitySnapshot { at, index: o.index, counts: o.counts.clone() })
    }

    /// Starts `input` from `s` (what the run this one replaces stored at the resume offset).
    pub fn restore(&mut self, input: InputId, s: QualitySnapshot) {
        self.open.insert(input, Open { index: s.index, counts: s.counts, last_seq: 0 });
    }
}

fn close(input: InputId, window_ns: i64, open: Open, closed_at: u64) -> ClosedWindow {
    let start_ns = open.index.map_or(TimeNs::MIN, |k| k.saturating_mul(window_ns));
    ClosedWindow { input, start_ns, end_ns: start_ns.saturating_add(window_ns), closed_at, counts: open.counts }
}

/// How many of the `n` samples `t0 + i·dt` lie before `wm`.
fn behind(t0: TimeNs, dt: i64, n: u64, wm: TimeNs) -> u64 {
    if t0 >= wm {
        0
    } else if dt <= 0 {
        n
    } else {
        (((wm - t0 - 1) / dt) as u64 + 1).min(n)
    }
}

/// The window start as RFC 3339 (for the record).
pub fn window_start(start_ns: TimeNs) -> String {
    format_rfc3339(start_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::batch::{BlockColumns, SourceSpan};
    use crate::input::event::BuildId;
    use crate::input::reject::{DeadLetter, RejectReason};

    const S: i64 = 1_000_000_000;

    /// A batch of one-sample records at `times` (offsets from `first`); `None` is a dead letter.
    fn batch(seq: u64, first: u64, times: &[Option<i64>]) -> RecordBatch {
        let mut b = RecordBatch::with_capacity(times.len());
        b.span = SourceSpan { input: 3, seq, first_offset: first, next_offset: first + times.len() as u64 };
        for (i, t) in times.iter().enumerate() {
            let o = first + i as u64;
            match t {
                Some(t) => {
                    let v = [1.0f32];
                    let mut cols = BlockColumns::default();
                    cols.channels[0] = Some(&v);
                    b.push_block(&BuildId::from("b1"), 1, 1, *t, 0, 1, cols, o);
                }
                None => b.dead.push(DeadLetter::new(3, o, RejectReason::Json("x".into()), b"{")),
            }
        }
        b.records = times.len() as u64;
        b
    }

    fn run(w: &mut InputQualityWindows, b: &RecordBatch, base: TimeNs) -> Vec<ClosedWindow> {
        let steps = b.max_t_steps(base);
        w.observe(b, &steps)
    }

    fn all(batches: &[RecordBatch]) -> Vec<ClosedWindow> {
        let mut w = InputQualityWindows::new(10 * S, S);
        let mut out = Vec::new();
        let mut base = TimeNs::MIN;
        for b in batches {
            out.extend(run(&mut w, b, base));
            base = base.max(b.max_t_ns);
        }
        out.extend(w.finish(3).map(|(c, _)| c));
        out
    }

    #[test]
    fn windows_count_records_dead_letters_and_late_samples_whatever_the_batches() {
        // 0..9 s in window 0 with a dead letter and a sample 3 s behind (late: bound 1 s);
        // 10..19 s in window 1.
        let times: Vec<Option<i64>> = vec![Some(0), Some(S), None, Some(5 * S), Some(2 * S), Some(9 * S), Some(10 * S), None, Some(12 * S), Some(19 * S)];
        let one = all(&[batch(1, 0, &times)]);
        let split = all(&[batch(1, 0, &times[..4]), batch(2, 4, &times[4..7]), batch(3, 7, &times[7..])]);
        assert_eq!(one.len(), 2);
        assert_eq!(one.iter().map(|w| (w.start_ns, w.counts.clone(), w.closed_at)).collect::<Vec<_>>(), split.iter().map(|w| (w.start_ns, w.counts.clone(), w.closed_at)).collect::<Vec<_>>(), "batch boundaries change nothing");
        let (a, b) = (&one[0].counts, &one[1].counts);
        assert_eq!((one[0].start_ns, one[0].closed_at), (0, 6), "closed by the record at offset 6 (10 s)");
        assert_eq!((a.records, a.samples, a.dead_letter_total(), a.late_samples), (6, 5, 1, 1));
        assert_eq!(a.max_disorder_ns, 3 * S);
        assert_eq!((b.records, b.samples, b.dead_letter_total(), b.late_samples), (4, 3, 1, 0));
        assert_eq!(one[1].closed_at, 9, "the last window closes at the input's last record");
        assert!((a.score() - (5.0 / 6.0) * (4.0 / 5.0)).abs() < 1e-12);
    }

    #[test]
    fn a_replay_from_any_batch_with_its_snapshot_counts_the_same() {
        let times: Vec<Option<i64>> = (0..30).map(|i| if i % 7 == 3 { None } else { Some(i * S) }).collect();
        let batches = [batch(1, 0, &times[..8]), batch(2, 8, &times[8..13]), batch(3, 13, &times[13..21]), batch(4, 21, &times[21..])];
        let full = all(&batches);
        for from in 1..batches.len() {
            // The run stores the snapshot after batch `from - 1` (the resume offset) ...
            let mut w = InputQualityWindows::new(10 * S, S);
            let mut base = TimeNs::MIN;
            let mut before = Vec::new();
            for b in &batches[..from] {
                before.extend(run(&mut w, b, base));
                base = base.max(b.max_t_ns);
            }
            let snap = w.snapshot(3, batches[from].span.first_offset);
            let snap: QualitySnapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
            // ... and a replay starts from it.
            let mut r = InputQualityWindows::new(10 * S, S);
            r.restore(3, snap);
            let mut out = before.clone();
            for b in &batches[from..] {
                out.extend(run(&mut r, b, base));
                base = base.max(b.max_t_ns);
            }
            out.extend(r.finish(3).map(|(c, _)| c));
            assert_eq!(out, full, "replay from batch {from}");
        }
    }

    #[test]
    fn an_input_without_records_closes_nothing() {
        let mut w = InputQualityWindows::new(10 * S, S);
        assert!(w.finish(3).is_none());
        w.restore(3, QualitySnapshot::default());
        assert!(w.knows(3));
        assert!(w.finish(3).is_none(), "a restored empty window counted nothing");
        w.restore(3, QualitySnapshot::default());
        w.forget(3);
        assert!(!w.knows(3));
    }

    #[test]
    fn samples_behind_a_watermark() {
        assert_eq!(behind(0, 10, 5, 25), 3, "0, 10, 20 before 25");
        assert_eq!(behind(0, 10, 5, 20), 2);
        assert_eq!(behind(30, 10, 5, 25), 0);
        assert_eq!(behind(0, 0, 1, 5), 1);
        assert_eq!(behind(0, 10, 2, 1000), 2);
    }
}
