//! JSON-lines replay: reads a file line by line, decodes each line (the seed's format, blocks,
//! layer events, logs) into batches. A line's offset is its 0-based line number.
//!
//! A line longer than `max_record_bytes` is never held whole in memory: its bytes are counted,
//! skipped, and it becomes a `too_large` dead letter.

use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncBufReadExt, BufReader};

use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::decode::{DecodeLimits, Decoder};
use meltstream_engine::input::reject::{DeadLetter, RejectReason};

use crate::ports::clock::now_wall_ns;
use crate::ports::source_ctx::SourceCtx;

/// Messages of the file source.
pub enum FileSourceMsg {
    /// Read the next batch.
    Pump,
    /// Stop early (shutdown).
    Stop,
}

/// Arguments.
pub struct FileSourceArgs {
    /// Link to the engine.
    pub ctx: SourceCtx,
    /// The file.
    pub path: PathBuf,
    /// Records per batch.
    pub batch_records: usize,
    /// Decoding limits.
    pub limits: DecodeLimits,
}

/// State.
pub struct FileSourceState {
    args: FileSourceArgs,
    reader: BufReader<tokio::fs::File>,
    decoder: Decoder,
    line: u64,
    seq: u64,
    line_buf: Vec<u8>,
    done: bool,
}

/// The file source actor.
pub struct FileSource;

enum Line {
    Eof,
    Ok,
    TooLong(usize),
}

impl FileSourceState {
    /// Reads one line into `line_buf`, refusing to hold more than the limit.
    async fn read_line(&mut self) -> std::io::Result<Line> {
        self.line_buf.clear();
        let limit = self.args.limits.max_record_bytes;
        let mut total = 0usize;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(if total == 0 { Line::Eof } else if total > limit { Line::TooLong(total) } else { Line::Ok });
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            total += chunk.len();
            if total <= limit {
                self.line_buf.extend_from_slice(chunk);
            } else {
                self.line_buf.clear();
            }
            let used = found.unwrap_or(buf.len());
            self.reader.consume(used);
            if found.is_some() {
                return Ok(if total > limit { Line::TooLong(total) } else { Line::Ok });
            }
        }
    }
}

impl Actor for FileSource {
    type Msg = FileSourceMsg;
    type State = FileSourceState;
    type Arguments = FileSourceArgs;

    async fn pre_start(&self, myself: ActorRef<FileSourceMsg>, args: FileSourceArgs) -> Result<FileSourceState, ActorProcessingErr> {
        let file = tokio::fs::File::open(&args.path).await.map_err(|e| format!("source {}: cannot open {}: {e}", args.ctx.name, args.path.display()))?;
        let decoder = Decoder::new(args.ctx.input, args.limits);
        let _ = myself.cast(FileSourceMsg::Pump);
        Ok(FileSourceState { args, reader: BufReader::with_capacity(1 << 20, file), decoder, line: 0, seq: 0, line_buf: Vec::new(), done: false })
    }

    async fn handle(&self, myself: ActorRef<FileSourceMsg>, msg: FileSourceMsg, st: &mut FileSourceState) -> Result<(), ActorProcessingErr> {
        if st.done {
            return Ok(());
        }
        let stop = matches!(msg, FileSourceMsg::Stop);
        let mut batch = RecordBatch::with_capacity(st.args.batch_records);
        batch.span.input = st.args.ctx.input;
        batch.span.seq = st.seq;
        batch.span.first_offset = st.line;
        let now = now_wall_ns();
        let mut eof = stop;
        while !eof && (batch.records as usize) < st.args.batch_records {
            match st.read_line().await.map_err(|e| format!("source {}: read error at line {}: {e}", st.args.ctx.name, st.line))? {
                Line::Eof => eof = true,
                Line::TooLong(n) => {
                    batch.records += 1;
                    let reason = RejectReason::TooLarge { bytes: n, limit: st.args.limits.max_record_bytes };
                    batch.dead.push(DeadLetter::new(st.args.ctx.input, st.line, reason, b""));
                    st.line += 1;
                }
                Line::Ok => {
                    let raw = std::mem::take(&mut st.line_buf);
                    let trimmed = raw.strip_suffix(b"\r").unwrap_or(&raw);
                    if trimmed.iter().all(u8::is_ascii_whitespace) {
                        // Blank lines carry nothing; their offset still counts.
                        batch.records += 1;
                    } else {
                        st.decoder.decode(trimmed, st.line, now, &mut batch);
                    }
                    st.line_buf = raw;
                    st.line += 1;
                }
            }
        }
        batch.span.next_offset = st.line;
        if batch.records > 0 {
            st.seq += 1;
            if !st.args.ctx.send(batch, now).await {
                eof = true;
            }
        }
        if eof {
            st.done = true;
            tracing::info!(source = %st.args.ctx.name, lines = st.line, "file source finished");
            st.args.ctx.ended();
            myself.stop(None);
        } else {
            let _ = myself.cast(FileSourceMsg::Pump);
        }
        Ok(())
    }
}
