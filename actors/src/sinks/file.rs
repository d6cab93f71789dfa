//! JSON-lines file sink: one record per line, appended; `flush` writes the buffer out (and
//! fsyncs when asked), after which the records count as durable.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use meltstream_engine::records::Emitted;

use crate::progress::Checkpoint;
use crate::sinks::writer::{SinkError, SinkWriter};

/// Writes JSON lines to a file.
pub struct FileSink {
    name: String,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    buf: Vec<u8>,
    fsync: bool,
}

impl FileSink {
    /// A sink appending to `path` (created with its directory on first write).
    pub fn new(name: &str, path: PathBuf, fsync: bool) -> FileSink {
        FileSink { name: name.to_owned(), path, file: None, buf: Vec::with_capacity(1 << 16), fsync }
    }

    fn err(&self, what: &str, e: std::io::Error) -> SinkError {
        SinkError::Retryable { sink: self.name.clone(), message: format!("{what} {}: {e}", self.path.display()) }
    }
}

impl SinkWriter for FileSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        for r in records {
            serde_json::to_writer(&mut self.buf, &r.record).map_err(|e| SinkError::Fatal { sink: self.name.clone(), message: e.to_string() })?;
            self.buf.push(b'\n');
        }
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await.map_err(|e| self.err("cannot create directory for", e))?;
            }
            let f = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await.map_err(|e| self.err("cannot open", e))?;
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            if !self.buf.is_empty() {
                let r = f.write_all(&self.buf).await;
                if let Err(e) = r {
                    return Err(self.err("cannot write", e));
                }
                self.buf.clear();
            }
            let r = if self.fsync { f.sync_data().await } else { f.flush().await };
            if let Err(e) = r {
                return Err(self.err("cannot flush", e));
            }
        }
        Ok(())
    }
}

/// Discards records (they count as durable at once).
pub struct NullSink;

/// How often the null sink "flushes" (its actor's tick): what a durable-latency figure to it includes.
pub const NULL_SINK_FLUSH_MS: u64 = 50;

impl SinkWriter for NullSink {
    async fn write(&mut self, _records: &[Emitted]) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        Ok(())
    }
}
