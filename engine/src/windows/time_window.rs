//! Event-time windows inside one build: tumbling, sliding and session, over one channel.
//! A window closes when the watermark reaches its end; a sample whose every window is already
//! closed is late and handed back to the caller's late policy.

use std::collections::BTreeMap;

use crate::input::event::{Channel, TimeNs};
use crate::offset_ledger::{Hold, HoldSet};
use crate::records::WindowResult;
use crate::analytics::stats::RunningStats;
use crate::input::time::format_rfc3339;
use crate::topology::windows_config::{TimeWindowConfig, TimeWindowKind};

/// A compiled time-window spec.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeWindowSpec {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: TimeWindowKind,
    /// Channel aggregated.
    pub channel: Channel,
    /// Size, ns (tumbling, sliding).
    pub size_ns: i64,
    /// Slide, ns (sliding; equals size for tumbling).
    pub slide_ns: i64,
    /// Gap, ns (session).
    pub gap_ns: i64,
}

impl TimeWindowSpec {
    /// Compiles a checked config.
    pub fn compile(c: &TimeWindowConfig) -> TimeWindowSpec {
        let ms = 1_000_000i64;
        let size_ns = c.size_ms as i64 * ms;
        TimeWindowSpec {
            name: c.name.clone(),
            kind: c.kind,
            channel: Channel::parse(&c.channel).unwrap_or(Channel::PhotodiodeOnAxis),
            size_ns,
            slide_ns: if c.kind == TimeWindowKind::Sliding { c.slide_ms as i64 * ms } else { size_ns },
            gap_ns: c.gap_ms as i64 * ms,
        }
    }
}

#[derive(Clone, Debug)]
struct Win {
    end_ns: TimeNs,
    stats: RunningStats,
    hold: HoldSet,
}

/// Indices `i` of a block (t = t0 + i·dt, i < len) with `start ≤ t < end`.
pub fn index_range(t0: TimeNs, dt: i64, len: usize, start: TimeNs, end: TimeNs) -> std::ops::Range<usize> {
    if dt <= 0 {
        return if t0 >= start && t0 < end { 0..len.min(1) } else { 0..0 };
    }
    let ceil_div = |a: i64, b: i64| -> i64 { a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0) };
    let lo = ceil_div(start - t0, dt).clamp(0, len as i64) as usize;
    let hi = ceil_div(end - t0, dt).clamp(0, len as i64) as usize;
    lo..hi.max(lo)
}

/// The open windows of one spec in one build.
#[derive(Clone, Debug)]
pub struct TimeWindowState {
    spec: TimeWindowSpec,
    /// Open windows by start.
    open: BTreeMap<TimeNs, Win>,
    /// Windows ending at or before this are closed.
    closed_until: TimeNs,
}


impl TimeWindowState {
    /// No open window.
    pub fn new(spec: TimeWindowSpec) -> TimeWindowState {
        TimeWindowState { spec, open: BTreeMap::new(), closed_until: TimeNs::MIN }
    }

    /// The spec.
    pub fn spec(&self) -> &TimeWindowSpec {
        &self.spec
    }

    /// Adds a block's values of the spec's channel; returns the number of late samples.
    pub fn push(&mut self, t0: TimeNs, dt: i64, vs: &[f32], hold: Option<Hold>) -> u64 {
        if vs.is_empty() {
            return 0;
        }
        let t_last = t0 + dt * (vs.len() as i64 - 1);
        match self.spec.kind {
            TimeWindowKind::Tumbling | TimeWindowKind::Sliding => {
                // Tumbling is sliding with slide = size. Window k is [k·slide, k·slide + size).
                let (size, slide) = (self.spec.size_ns, self.spec.slide_ns);
                let first_k = (t0 - size).div_euclid(slide) + 1;
                let last_k = t_last.div_euclid(slide);
                for k in first_k..=last_k {
                    let start = k * slide;
                    let end = start + size;
                    if end <= self.closed_until {
                        continue;
                    }
                    let r = if first_k == last_k { 0..vs.len() } else { index_range(t0, dt, vs.len(), start, end) };
                    if r.is_empty() {
                        continue;
                    }
                    let w = self.open.entry(start).or_insert_with(|| Win { end_ns: end, stats: RunningStats::default(), hold: HoldSet::default() });
                    w.stats.push_slice(&vs[r]);
                    if let Some(h) = hold {
                        w.hold.add(h);
                    }
                }
                // A sample is late when even the newest window holding it is closed:
                // ⌊t/slide⌋·slide + size ≤ closed_until ⟺ t < (⌊(closed_until − size)/slide⌋ + 1)·slide.
                if self.closed_until == TimeNs::MIN {
                    return 0;
                }
                let threshold = ((self.closed_until - size).div_euclid(slide) + 1) * slide;
                index_range(t0, dt, vs.len(), TimeNs::MIN / 2, threshold).len() as u64
            }
            TimeWindowKind::Session => {
                let gap = self.spec.gap_ns;
                if dt > gap {
                    // Samples further apart than the gap: each is its own session candidate.
                    let mut late = 0;
                    for (i, v) in vs.iter().enumerate() {
                        late += self.push_session(t0 + dt * i as i64, t0 + dt * i as i64, std::slice::from_ref(v), hold);
                    }
                    late
                } else {
                    self.push_session(t0, t_last, vs, hold)
                }
            }
        }
    }

    fn push_session(&mut self, lo: TimeNs, hi: TimeNs, vs: &[f32], hold: Option<Hold>) -> u64 {
        let gap = self.spec.gap_ns;
        if hi.saturating_add(gap) <= self.closed_until {
            return vs.len() as u64;
        }
        // Sessions are keyed by start; `end_ns` holds the last sample time. Merge every session
        // within `gap` of [lo, hi].
        let mut start = lo;
        let mut last = hi;
        let mut stats = RunningStats::default();
        let mut h = HoldSet::default();
        if let Some(x) = hold {
            h.add(x);
        }
        stats.push_slice(vs);
        let overlapping: Vec<TimeNs> = self
            .open
            .range(..=hi.saturating_add(gap))
            .filter(|(_, w)| w.end_ns.saturating_add(gap) >= lo)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            if let Some(w) = self.open.remove(&s) {
                start = start.min(s);
                last = last.max(w.end_ns);
                stats.merge(&w.stats);
                h.merge(&w.hold);
            }
        }
        self.open.insert(start, Win { end_ns: last, stats, hold: h });
        0
    }

    /// Closes the windows that `wm` completes, appending their results.
    pub fn close(&mut self, wm: TimeNs, build_id: &str, out: &mut Vec<(WindowResult, HoldSet)>) {
        let session = self.spec.kind == TimeWindowKind::Session;
        let gap = self.spec.gap_ns;
        let done: Vec<TimeNs> = self
            .open
            .iter()
            .filter(|(_, w)| if session { w.end_ns.saturating_add(gap) <= wm } else { w.end_ns <= wm })
            .map(|(s, _)| *s)
            .collect();
        for s in done {
            if let Some(w) = self.open.remove(&s) {
                let end = if session { w.end_ns.saturating_add(gap) } else { w.end_ns };
                out.push((self.result(build_id, s, end, &w.stats), w.hold));
            }
        }
        if !session || self.open.is_empty() {
            self.closed_until = self.closed_until.max(wm);
        } else {
            // A session still open may yet absorb samples older than the watermark.
            let oldest = self.open.keys().next().copied().unwrap_or(wm);
            self.closed_until = self.closed_until.max(wm.min(oldest.saturating_sub(gap)));
        }
    }

    fn result(&self, build_id: &str, start: TimeNs, end: TimeNs, s: &RunningStats) -> WindowResult {
        WindowResult {
            build_id: build_id.to_owned(),
            window: self.spec.name.clone(),
            window_kind: match self.spec.kind {
                TimeWindowKind::Tumbling => "tumbling",
                TimeWindowKind::Sliding => "sliding",
                TimeWindowKind::Session => "session",
            }
            .into(),
            channel: self.spec.channel.name().into(),
            window_start: format_rfc3339(start),
            window_start_ns: start,
            window_end: format_rfc3339(end),
            window_end_ns: end,
            count: s.count(),
            mean: s.mean(),
            min: s.min(),
            max: s.max(),
            std_dev: s.std_dev(),
        }
    }

    /// Adds the holds of the open windows to `acc`.
    pub fn holds_into(&self, acc: &mut HoldSet) {
        for w in self.open.values() {
            acc.merge(&w.hold);
        }
    }

    /// Number of open windows.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: TimeWindowKind, size: u64, slide: u64, gap: u64) -> TimeWindowSpec {
        TimeWindowSpec::compile(&TimeWindowConfig {
            name: "w".into(),
            kind,
            channel: "temperature".into(),
            size_ms: size,
            slide_ms: slide,
            gap_ms: gap,
        })
    }

    const MS: i64 = 1_000_000;

    #[test]
    fn index_ranges() {
        assert_eq!(index_range(0, 10, 10, 25, 55), 3..6);
        assert_eq!(index_range(0, 10, 10, -100, 0), 0..0);
        assert!(index_range(0, 10, 10, 95, 1000).is_empty());
        assert_eq!(index_range(5, 0, 1, 0, 10), 0..1);
    }

    #[test]
    fn tumbling_splits_a_block_across_windows() {
        let mut w = TimeWindowState::new(spec(TimeWindowKind::Tumbling, 1, 0, 0));
        // 4 samples 0.4 ms apart from 0.2 ms: 0.2, 0.6 in [0,1); 1.0, 1.4 in [1,2)
        w.push(MS / 5, 2 * MS / 5, &[1.0, 2.0, 3.0, 4.0], Some((0, 3)));
        let mut out = Vec::new();
        w.close(MS, "b", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.count, out[0].0.mean), (2, 1.5));
        assert_eq!(w.push(MS / 2, 0, &[9.0], None), 1, "late: [0,1) is closed");
        w.close(2 * MS, "b", &mut out);
        assert_eq!((out[1].0.count, out[1].0.mean, out[1].1.clone()), (2, 3.5, HoldSet::one((0, 3))));
    }

    #[test]
    fn sliding_counts_each_sample_in_size_over_slide_windows() {
        let mut w = TimeWindowState::new(spec(TimeWindowKind::Sliding, 4, 2, 0));
        w.push(5 * MS, 0, &[1.0], None); // in [2,6) and [4,8)
        let mut out = Vec::new();
        w.close(100 * MS, "b", &mut out);
        let starts: Vec<i64> = out.iter().map(|(r, _)| r.window_start_ns / MS).collect();
        assert_eq!(starts, vec![2, 4]);
    }

    #[test]
    fn sessions_merge_within_gap_and_close_after_it() {
        let mut w = TimeWindowState::new(spec(TimeWindowKind::Session, 0, 0, 10));
        w.push(0, MS, &[1.0, 1.0], None); // 0..1 ms
        w.push(30 * MS, MS, &[3.0], None); // separate
        w.push(8 * MS, MS, &[2.0], None); // joins the first (gap 10 ms)
        let mut out = Vec::new();
        w.close(18 * MS, "b", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.count, out[0].0.window_end_ns), (3, 18 * MS));
        w.close(i64::MAX, "b", &mut out);
        assert_eq!(out.len(), 2);
    }
}
