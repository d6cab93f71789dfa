//! The offset ledger: which source offsets may be committed, given what is still in flight,
//! what sits in open windows and what has been emitted but is not yet durable.
//!
//! Every batch is registered with the number of parts (one per build it was split into) that
//! must release it. Build actors report, per input, the lowest batch sequence that still feeds
//! one of their open windows (their *window hold*); an emitted record holds its batch until every
//! sink it went to has made it durable (*result holds*). The committable offset of an input is the
//! end of the longest prefix of batches that nothing holds. It must never run ahead of a result
//! (DESIGN §3.2): replaying from a committed offset rebuilds every open window completely.

use std::collections::{BTreeMap, HashMap};

use crate::input::batch::SourceSpan;
use crate::input::event::InputId;

/// A claim on a batch: (input, batch sequence).
pub type Hold = (InputId, u64);

/// Who holds windows open (a build actor), as a number chosen by the caller.
pub type HolderId = u64;

#[derive(Debug, Default)]
struct InputLedger {
    /// Registered batches not yet retired: seq → (next_offset, parts still processing).
    batches: BTreeMap<u64, (u64, u32)>,
    /// Lowest seq held by each holder's open windows.
    window_holds: HashMap<HolderId, u64>,
    /// Emitted, not yet durable: seq → count.
    result_holds: BTreeMap<u64, u32>,
    /// Offset committed last (next offset to read).
    committed: Option<u64>,
    emitted_through: Option<u64>,
}

impl InputLedger {
    /// Lowest batch that is still being processed or whose results are not durable.
    fn results_frontier(&self) -> u64 {
        let pending = self.batches.iter().find(|(_, (_, parts))| *parts > 0).map(|(s, _)| *s);
        let result = self.result_holds.keys().next().copied();
        [pending, result].into_iter().flatten().min().unwrap_or(u64::MAX)
    }

    /// Lowest batch that must be read again after a crash: the results frontier, or the first
    /// batch of a window still open.
    fn frontier(&self) -> u64 {
        let window = self.window_holds.values().min().copied().unwrap_or(u64::MAX);
        self.results_frontier().min(window)
    }
}

/// Tracks every input's batches and holds.
#[derive(Debug, Default)]
pub struct OffsetLedger {
    inputs: BTreeMap<InputId, InputLedger>,
}

impl OffsetLedger {
    /// An empty ledger.
    pub fn new() -> OffsetLedger {
        OffsetLedger::default()
    }

    /// Registers a batch that `parts` consumers will each release once.
    pub fn register(&mut self, span: SourceSpan, parts: u32) {
        let l = self.inputs.entry(span.input).or_default();
        l.batches.insert(span.seq, (span.next_offset, parts));
    }

    /// Forgets `input` (its partition went to another process): its batches and holds no
    /// longer count, and nothing of it is committed from here.
    pub fn forget(&mut self, input: InputId) {
        self.inputs.remove(&input);
    }

    /// One consumer is done processing batch `hold`.
    pub fn release(&mut self, hold: Hold) {
        if let Some(l) = self.inputs.get_mut(&hold.0) {
            if let Some((_, parts)) = l.batches.get_mut(&hold.1) {
                *parts = parts.saturating_sub(1);
            }
        }
    }

    /// Sets (or, with `None`, clears) `holder`'s window hold on `input`.
    pub fn set_window_hold(&mut self, holder: HolderId, input: InputId, seq: Option<u64>) {
        let l = self.inputs.entry(input).or_default();
        match seq {
            Some(s) => {
                l.window_holds.insert(holder, s);
            }
            None => {
                l.window_holds.remove(&holder);
            }
        }
    }

    /// Clears every window hold of `holder` (the build ended or was flushed).
    pub fn drop_holder(&mut self, holder: HolderId) {
        for l in self.inputs.values_mut() {
            l.window_holds.remove(&holder);
        }
    }

    /// Records emitted, `count` deliveries of records built from batch `hold`.
    pub fn emitted(&mut self, hold: Hold, count: u32) {
        if count > 0 {
            *self.inputs.entry(hold.0).or_default().result_holds.entry(hold.1).or_default() += count;
        }
    }

    /// `count` deliveries of records from batch `hold` are durable.
    pub fn durable(&mut self, hold: Hold, count: u32) {
        if let Some(l) = self.inputs.get_mut(&hold.0) {
            if let Some(c) = l.result_holds.get_mut(&hold.1) {
                *c = c.saturating_sub(count);
                if *c == 0 {
                    l.result_holds.remove(&hold.1);
                }
            }
        }
    }

    /// The offset of `input` that may be committed now, if it moved since the last call.
    pub fn advance(&mut self, input: InputId) -> Option<u64> {
        let l = self.inputs.get_mut(&input)?;
        let frontier = l.frontier();
        let mut next = None;
        while let Some((&seq, &(next_offset, _))) = l.batches.iter().next() {
            if seq >= frontier {
                break;
            }
            next = Some(next_offset);
            l.batches.remove(&seq);
        }
        // Batches below the commit frontier are gone; those between it and the results
        // frontier are still listed.
        let rf = l.results_frontier();
        if let Some((_, &(n, _))) = l.batches.range(..rf).next_back() {
            l.emitted_through = l.emitted_through.max(Some(n));
        }
        if let Some(n) = next {
            l.emitted_through = l.emitted_through.max(Some(n));
        }
        let n = next?;
        if l.committed.is_some_and(|c| c >= n) {
            return None;
        }
        l.committed = Some(n);
        Some(n)
    }

    /// The offset below which every record of `input` has been processed and every result it
    /// produced is durable (open windows aside): a replay must not emit a positioned result
    /// (an alert, a dead letter) below it again. Never below [`OffsetLedger::committed`].
    /// A window that closes later may still emit a result held below it: window results are
    /// told apart by their keys, not by their position.
    pub fn emitted_through(&self, input: InputId) -> Option<u64> {
        self.inputs.get(&input).and_then(|l| l.emitted_through)
    }

    /// Every input seen.
    pub fn inputs(&self) -> Vec<InputId> {
        self.inputs.keys().copied().collect()
    }

    /// Advances every input; returns the inputs whose committable offset moved.
    pub fn advance_all(&mut self) -> Vec<(InputId, u64)> {
        let ids: Vec<InputId> = self.inputs.keys().copied().collect();
        ids.into_iter().filter_map(|i| self.advance(i).map(|o| (i, o))).collect()
    }

    /// The last offset committed on `input`.
    pub fn committed(&self, input: InputId) -> Option<u64> {
        self.inputs.get(&input).and_then(|l| l.committed)
    }

    /// Number of batches still tracked on every input (for the admin API and tests).
    pub fn tracked_batches(&self) -> usize {
        self.inputs.values().map(|l| l.batches.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(seq: u64) -> SourceSpan {
        SourceSpan { input: 0, seq, first_offset: seq * 10, next_offset: seq * 10 + 10 }
    }

    #[test]
    fn open_window_blocks_commit_until_result_is_durable() {
        let mut l = OffsetLedger::new();
        l.register(span(0), 1);
        l.register(span(1), 1);
        // build 7 opens a window with batch 0, then processes both batches
        l.set_window_hold(7, 0, Some(0));
        l.release((0, 0));
        l.release((0, 1));
        assert_eq!(l.advance(0), None, "window open on batch 0");
        // the window closes: its result is emitted to 2 sinks
        l.emitted((0, 0), 2);
        l.set_window_hold(7, 0, None);
        assert_eq!(l.advance(0), None, "result not durable");
        l.durable((0, 0), 1);
        assert_eq!(l.advance(0), None, "one sink of two");
        l.durable((0, 0), 1);
        assert_eq!(l.advance(0), Some(20));
        assert_eq!(l.advance(0), None, "no change");
    }

    #[test]
    fn emitted_through_passes_open_windows_but_not_pending_results() {
        let mut l = OffsetLedger::new();
        for s in 0..4 {
            l.register(span(s), 1);
        }
        l.set_window_hold(7, 0, Some(0));
        l.release((0, 0));
        l.release((0, 1));
        l.emitted((0, 2), 1);
        l.release((0, 2));
        assert_eq!(l.advance(0), None, "window open on batch 0");
        assert_eq!(l.emitted_through(0), Some(20), "batch 2's alert is not durable");
        l.durable((0, 2), 1);
        l.advance(0);
        assert_eq!(l.emitted_through(0), Some(30), "batch 3 is still being processed");
        l.release((0, 3));
        l.set_window_hold(7, 0, None);
        assert_eq!(l.advance(0), Some(40));
        assert_eq!(l.emitted_through(0), Some(40));
    }

    proptest! {
        /// Random interleavings: the committed offset never passes a batch that is still held,
        /// and emitted-through never passes a batch still being processed or an alert (a result
        /// raised while its batch was processed) that is not durable yet.
        #[test]
        fn never_commits_past_a_hold(ops in proptest::collection::vec((0u8..4, 0u64..20), 1..200)) {
            let mut l = OffsetLedger::new();
            let mut registered = 0u64;
            let mut pending: Vec<u64> = Vec::new();      // batches not released
            let mut results: Vec<u64> = Vec::new();      // window results emitted, not durable
            let mut alerts: Vec<u64> = Vec::new();       // alerts emitted, not durable
            let mut window: Option<u64> = None;
            for (op, x) in ops {
                match op {
                    0 => { l.register(span(registered), 1); pending.push(registered); registered += 1; }
                    1 => if !pending.is_empty() {
                        let s = pending.remove((x as usize) % pending.len());
                        if window.is_none_or(|w| s < w) { window = Some(s); l.set_window_hold(1, 0, window); }
                        if x % 2 == 1 { l.emitted((0, s), 1); alerts.push(s); }
                        l.release((0, s));
                    },
                    2 => if let Some(w) = window.take() { l.emitted((0, w), 1); results.push(w); l.set_window_hold(1, 0, None); },
                    _ => {
                        let both = results.len() + alerts.len();
                        if both > 0 {
                            let i = (x as usize) % both;
                            let s = if i < results.len() { results.remove(i) } else { alerts.remove(i - results.len()) };
                            l.durable((0, s), 1);
                        }
                    }
                }
                l.advance(0);
                if let Some(c) = l.committed(0) {
                    let lowest_held = pending.iter().chain(results.iter()).chain(alerts.iter()).chain(window.iter()).min().copied();
                    if let Some(h) = lowest_held { prop_assert!(c <= h * 10, "committed {} past held batch {}", c, h); }
                }
                if let Some(f) = l.emitted_through(0) {
                    prop_assert!(l.committed(0).is_none_or(|c| c <= f), "emitted-through {} below the commit", f);
                    if let Some(h) = pending.iter().chain(alerts.iter()).min() {
                        prop_assert!(f <= h * 10, "emitted-through {} past unfinished batch {}", f, h);
                    }
                }
            }
        }
    }
}

/// The lowest batch held on each input by one window or record (usually a single input).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldSet(Vec<Hold>);

impl HoldSet {
    /// A set with one hold.
    pub fn one(h: Hold) -> HoldSet {
        HoldSet(vec![h])
    }

    /// Adds a hold, keeping the lowest sequence per input.
    pub fn add(&mut self, h: Hold) {
        match self.0.iter_mut().find(|x| x.0 == h.0) {
            Some(x) => x.1 = x.1.min(h.1),
            None => self.0.push(h),
        }
    }

    /// Adds every hold of `o`.
    pub fn merge(&mut self, o: &HoldSet) {
        for h in &o.0 {
            self.add(*h);
        }
    }

    /// The holds.
    pub fn iter(&self) -> impl Iterator<Item = &Hold> {
        self.0.iter()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
