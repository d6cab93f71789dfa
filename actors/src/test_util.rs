//! Test doubles shared by every test (feature `test_util`): a sink that collects, and a sink
//! that stalls until released.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meltstream_engine::records::{Emitted, OutputRecord};

use crate::progress::Checkpoint;
use crate::sinks::writer::{SinkError, SinkWriter};

/// Collects every record it is given; they count as durable on flush.
#[derive(Clone, Default)]
pub struct CollectSink {
    /// What was flushed.
    pub records: Arc<Mutex<Vec<OutputRecord>>>,
    pending: Vec<OutputRecord>,
}

impl CollectSink {
    /// A copy of the records made durable so far.
    pub fn take(&self) -> Vec<OutputRecord> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SinkWriter for CollectSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        self.pending.extend(records.iter().map(|r| r.record.clone()));
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).append(&mut self.pending);
        Ok(())
    }
}

/// A collecting sink whose flush blocks while `stalled` is set.
#[derive(Clone, Default)]
pub struct StallSink {
    /// The records made durable.
    pub inner: CollectSink,
    /// While true, flushes wait.
    pub stalled: Arc<AtomicBool>,
    /// Flushes that had to wait.
    pub waits: Arc<AtomicU64>,
}

impl SinkWriter for StallSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        self.inner.write(records).await
    }

    async fn flush(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        while self.stalled.load(Ordering::SeqCst) {
            self.waits.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.flush(checkpoint).await
    }
}
