//! A build actor's inbound queue: a bounded channel of batch parts from the router, and one
//! pending watermark beside it.
//!
//! The router is the only sender; the build actor the only receiver. Neither ever waits on a
//! lock the other holds for longer than a few loads and stores: the channel is tokio's bounded
//! mpsc, and the pending watermark sits behind a mutex held only to read or replace it.
//!
//! # Watermarks, coalesced and in order
//! A watermark must reach a build after every batch the router sent it before the watermark
//! was computed, and before every batch sent after. Advances are coalesced: at most one is
//! pending per build, the latest wins (a build that is busy or idle does not collect one item
//! per advance). The pending watermark rides on the next batch sent to the build
//! ([`QueuedBatch::watermark_before`], applied before that batch's data), or, when no batch
//! follows, the build actor takes it once it has received every batch sent before it (the
//! pending watermark remembers how many that is).
//!
//! # Latency stamps
//! A pending watermark keeps the wall time at which the first advance coalesced into it was
//! computed: a window closed by it was passed by the watermark no earlier than that, so
//! window-close latency measured from it is never understated.
//!
//! # Backpressure
//! The channel's capacity is the build's credit: the router waits for room before sending, so
//! a slow build holds the router, which holds the sources. Every queued part also carries its
//! permit of the engine's memory budget ([`crate::memory_budget`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use meltstream_engine::input::batch::RecordBatch;

use crate::memory_budget::MemoryPermit;
use crate::ports::messages::StampedWatermark;

/// One batch part for one build.
pub struct QueuedBatch {
    /// A watermark to apply before this batch's data: the advances since the previous batch.
    pub watermark_before: Option<StampedWatermark>,
    /// The build's part of a source batch.
    pub batch: Arc<RecordBatch>,
    /// Its share of the memory budget, released once it is processed and its results are
    /// with the sinks.
    pub permit: Option<MemoryPermit>,
    /// Wall clock when its source read it, ns.
    pub origin_wall_ns: i64,
}

#[derive(Default)]
struct Pending {
    wm: Option<StampedWatermark>,
    /// Batches sent before it.
    after: u64,
}

/// The router's end of a build's queue.
pub struct BuildQueue {
    tx: mpsc::Sender<QueuedBatch>,
    pending: Mutex<Pending>,
    /// Batches sent so far (written by the router only).
    sent: AtomicU64,
    /// A `Wake` is in the build actor's mailbox or being handled.
    wake_pending: AtomicBool,
}

/// The build actor's end of its queue: kept with the build's state, so that a restarted actor
/// finds it as it was.
pub struct QueueReceiver {
    rx: mpsc::Receiver<QueuedBatch>,
    /// Batches received so far.
    received: u64,
}

/// What the build actor takes next.
pub enum Next {
    /// A batch (with the watermark to apply before it).
    Batch(QueuedBatch),
    /// A watermark that follows everything received.
    Watermark(StampedWatermark),
    /// Nothing for now.
    Empty,
}

/// A queue holding at most `capacity` batches.
pub fn build_queue(capacity: usize) -> (Arc<BuildQueue>, QueueReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let q = BuildQueue { tx, pending: Mutex::new(Pending::default()), sent: AtomicU64::new(0), wake_pending: AtomicBool::new(false) };
    (Arc::new(q), QueueReceiver { rx, received: 0 })
}

impl BuildQueue {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Held only for a read or a replace: a panic cannot leave it half-written.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a batch part, waiting for room (backpressure); false when the build actor's end
    /// is gone. The pending watermark, if any, goes with it.
    pub async fn send(&self, mut item: QueuedBatch) -> bool {
        let permit = match self.tx.reserve().await {
            Ok(p) => p,
            Err(_) => return false,
        };
        // Taken only once room is reserved, so that the watermark and the batch enter together.
        item.watermark_before = self.pending().wm.take();
        self.sent.fetch_add(1, Ordering::Release);
        permit.send(item);
        true
    }

    /// Records a watermark advance: replaces the pending one (keeping its earlier stamp).
    pub fn advance(&self, wm: StampedWatermark) {
        let sent = self.sent.load(Ordering::Acquire);
        let mut p = self.pending();
        p.wm = Some(match p.wm {
            Some(old) => StampedWatermark {
                wm: wm.wm.max(old.wm),
                computed_wall_ns: old.computed_wall_ns.min(wm.computed_wall_ns),
                ahead_of_data: old.ahead_of_data || wm.ahead_of_data,
                position: old.position.max(wm.position),
            },
            None => wm,
        });
        p.after = sent;
    }

    /// Marks a `Wake` as due; true when the caller must send it (none is pending).
    pub fn needs_wake(&self) -> bool {
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// After a restart of the build actor: its `Wake` died with its mailbox; the new one sends
    /// itself one.
    pub fn rearm_wake(&self) {
        self.wake_pending.store(true, Ordering::Release);
    }

    /// The build actor found nothing to do: clears the wake flag. True when something arrived
    /// meanwhile and the actor must go on (it owns the flag again).
    pub fn idle(&self, rx: &QueueReceiver) -> bool {
        self.wake_pending.store(false, Ordering::Release);
        if rx.rx.is_empty() && self.pending().wm.is_none() {
            return false;
        }
        // Something came in between: the actor goes on, and owns the flag again (a Wake the
        // router may have sent meanwhile finds nothing to do, which is harmless).
        self.wake_pending.store(true, Ordering::Release);
        true
    }

    /// Batches waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }
}

impl crate::engine_gauges::QueueFill for BuildQueue {
    fn depth(&self) -> usize {
        BuildQueue::depth(self)
    }

    fn capacity(&self) -> usize {
        BuildQueue::capacity(self)
    }
}

impl QueueReceiver {
    /// The next thing to do, in order: a queued batch, else the pending watermark once every
    /// batch sent before it has been received.
    pub fn next(&mut self, q: &BuildQueue) -> Next {
        match self.rx.try_recv() {
            Ok(b) => {
                self.received += 1;
                Next::Batch(b)
            }
            Err(_) => {
                let mut p = q.pending();
                if p.wm.is_some() && p.after <= self.received {
                    p.wm.take().map_or(Next::Empty, Next::Watermark)
                } else {
                    Next::Empty
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meltstream_engine::input::event::TimeNs;

    fn part(seq: u64) -> QueuedBatch {
        let mut b = RecordBatch::default();
        b.span.seq = seq;
        QueuedBatch { watermark_before: None, batch: Arc::new(b), permit: None, origin_wall_ns: 0 }
    }

    fn wm(t: TimeNs, at: i64) -> StampedWatermark {
        StampedWatermark { wm: t, computed_wall_ns: at, ahead_of_data: false, position: None }
    }

    #[tokio::test]
    async fn watermarks_coalesce_and_never_overtake_the_data_sent_before_them() {
        let (q, mut rx) = build_queue(4);
        q.advance(wm(10, 1));
        q.advance(wm(20, 2));
        // Latest value, earliest stamp; nothing sent before it, so it is due at once.
        assert!(matches!(rx.next(&q), Next::Watermark(w) if w == wm(20, 1)));
        assert!(matches!(rx.next(&q), Next::Empty));
        assert!(q.send(part(1)).await);
        q.advance(wm(30, 3));
        // The watermark follows batch 1: it rides on batch 2, or comes after batch 1.
        assert!(q.send(part(2)).await);
        match rx.next(&q) {
            Next::Batch(b) => {
                assert_eq!(b.batch.span.seq, 1);
                assert!(b.watermark_before.is_none());
            }
            _ => panic!("batch 1 first"),
        }
        match rx.next(&q) {
            Next::Batch(b) => {
                assert_eq!(b.batch.span.seq, 2);
                assert_eq!(b.watermark_before, Some(wm(30, 3)));
            }
            _ => panic!("batch 2 with the watermark"),
        }
        assert!(matches!(rx.next(&q), Next::Empty));
    }

    #[tokio::test]
    async fn a_watermark_waits_for_a_batch_sent_before_it_that_is_not_received_yet() {
        let (q, mut rx) = build_queue(4);
        // The race this guards: the receiver saw an empty queue, then the router sent batch 1
        // and advanced. Here the advance is recorded as following one batch that the receiver
        // has not taken.
        *q.pending() = Pending { wm: Some(wm(5, 1)), after: 1 };
        assert!(matches!(rx.next(&q), Next::Empty), "not due before batch 1");
        rx.received = 1;
        assert!(matches!(rx.next(&q), Next::Watermark(w) if w.wm == 5));
    }

    #[tokio::test]
    async fn the_wake_flag_is_taken_back_when_work_arrived_meanwhile() {
        let (q, rx) = build_queue(2);
        assert!(q.needs_wake());
        assert!(!q.needs_wake(), "one wake at a time");
        assert!(!q.idle(&rx), "nothing queued: the actor may sleep");
        assert!(q.needs_wake());
        q.advance(wm(1, 1));
        assert!(q.idle(&rx), "a watermark is pending: go on");
    }
}
