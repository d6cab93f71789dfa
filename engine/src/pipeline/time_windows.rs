//! The build's event-time windows (tumbling, sliding, session) as an operator: feeds every
//! block to each window spec, counts the samples that come too late for all their windows,
//! and emits the windows a watermark completes — after the layer windows it closes — or, at
//! the end, every window still open.
//!
//! It must never emit a window before the watermark reaches its end (except at the end of
//! input), nor drop a late sample without counting it.

use crate::input::batch::RecordBatch;
use crate::input::event::TimeNs;
use crate::offset_ledger::HoldSet;
use crate::pipeline::build_book::{BuildBook, BuildSettings};
use crate::pipeline::operator::{Block, Ctx, Operator};
use crate::records::{Emitted, OutputRecord};
use crate::windows::time_window::TimeWindowState;

/// The open time windows of one build, per spec.
#[derive(Debug)]
pub struct TimeWindows {
    specs: Vec<TimeWindowState>,
}

impl TimeWindows {
    /// No window open.
    pub fn new(s: &BuildSettings) -> TimeWindows {
        TimeWindows { specs: s.time_windows.iter().cloned().map(TimeWindowState::new).collect() }
    }

    fn close(&mut self, wm: TimeNs, book: &BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let mut results = Vec::new();
        for tw in &mut self.specs {
            tw.close(wm, &book.build, &mut results);
        }
        for (r, hold) in results {
            out.push(Emitted { record: OutputRecord::Window(r), hold, origin_wall_ns: ctx.origin_wall_ns, position: None });
        }
    }
}

impl Operator for TimeWindows {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_block(&mut self, block: &mut Block<'_>, book: &mut BuildBook, ctx: &Ctx, _out: &mut Vec<Emitted>) {
        let h = &block.h;
        for tw in &mut self.specs {
            if let Some(vs) = block.batch.column(h, tw.spec().channel.index()) {
                book.counters.late_samples += tw.push(h.t0_ns, h.dt_ns, vs, ctx.hold);
            }
        }
    }

    fn on_watermark(&mut self, wm: TimeNs, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.close(wm, book, ctx, out);
    }

    fn on_close(&mut self, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.close(TimeNs::MAX, book, ctx, out);
    }

    fn holds_into(&self, acc: &mut HoldSet) {
        for tw in &self.specs {
            tw.holds_into(acc);
        }
    }

    fn open_windows(&self) -> usize {
        self.specs.iter().map(TimeWindowState::open_count).sum()
    }
}
