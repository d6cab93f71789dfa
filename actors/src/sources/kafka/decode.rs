//! The Kafka source's per-partition decoding: the raw batch a partition's messages are copied
//! into, and the decode task that turns each into a record batch, in order, on tokio's blocking
//! pool, and hands it to the router with its credit.

use tokio::sync::watch;

use meltstream_engine::input::batch::{RecordBatch, SourceSpan};
use meltstream_engine::input::decode::{DecodeLimits, Decoder};
use meltstream_engine::input::event::InputId;
use meltstream_engine::input::reject::{DeadLetter, RejectReason};

use crate::ports::clock::now_wall_ns;
use crate::ports::credits::SourceCredit;
use crate::ports::source_ctx::SourceCtx;

use super::KafkaSourceArgs;

/// A raw batch holds at most this many bytes (a batch of large messages closes early, so that
/// one decode takes milliseconds and memory stays bounded by the credits).
pub(super) const RAW_BATCH_BYTES: usize = 4 << 20;

/// Payloads of one partition as read, not yet decoded.
#[derive(Default)]
pub(super) struct RawBatch {
    /// Wall clock when its first message was read, ns (alert latency starts there).
    pub(super) first_read_wall_ns: i64,
    pub(super) bytes: Vec<u8>,
    /// (offset, start in `bytes`, length); an empty payload has length 0.
    pub(super) msgs: Vec<(u64, usize, usize)>,
}

/// What a partition's decode task is handed: the raw batch, its sequence number and its credit
/// (a place in the source queue and the raw bytes' memory).
pub(super) type DecodeJob = (RawBatch, u64, SourceCredit);

/// A batch being filled for one partition, and its decode task.
pub(super) struct Pending {
    pub(super) raw: RawBatch,
    pub(super) seq: u64,
    pub(super) jobs: tokio::sync::mpsc::Sender<DecodeJob>,
    pub(super) worker: tokio::task::JoinHandle<()>,
}

impl Pending {
    /// A partition's pending batch, with its decode task (ordering: one task, FIFO jobs). The
    /// job queue is bounded by the source queue's size: every job holds one of its credits.
    pub(super) fn new(args: &KafkaSourceArgs, input: InputId, stop: &watch::Receiver<bool>) -> Pending {
        let (jobs, rx) = tokio::sync::mpsc::channel(args.queue_batches.max(1));
        let worker = tokio::spawn(decode_worker(input, args.limits, args.ctx.clone(), rx, stop.clone()));
        Pending { raw: RawBatch::default(), seq: 0, jobs, worker }
    }
}

/// Decodes a partition's raw batches in order and hands them to the router. After a stop, what
/// is still queued is dropped (never committed, so read again on restart).
async fn decode_worker(
    input: InputId,
    limits: DecodeLimits,
    ctx: SourceCtx,
    mut jobs: tokio::sync::mpsc::Receiver<DecodeJob>,
    stop: watch::Receiver<bool>,
) {
    let mut decoder = Decoder::new(input, limits);
    while let Some((raw, seq, credit)) = jobs.recv().await {
        if *stop.borrow() {
            break;
        }
        // Decoding a batch takes milliseconds of CPU: on the blocking pool, so that the OS
        // shares the cores between it and the runtime's workers, and actors (window closes,
        // sinks) are not held up behind it.
        let done = tokio::task::spawn_blocking(move || {
            let batch = decode_raw(&mut decoder, input, &raw, seq);
            (decoder, (batch, raw.first_read_wall_ns))
        })
        .await;
        let Ok((d, (batch, read_wall_ns))) = done else { break };
        decoder = d;
        if !ctx.send_credited(batch, credit, read_wall_ns) {
            break;
        }
    }
}

/// Decodes one raw batch into a record batch tagged with its offsets.
fn decode_raw(decoder: &mut Decoder, input: InputId, raw: &RawBatch, seq: u64) -> RecordBatch {
    let mut b = RecordBatch::with_capacity(raw.msgs.len());
    let first = raw.msgs.first().map_or(0, |m| m.0);
    let next = raw.msgs.last().map_or(first, |m| m.0 + 1);
    b.span = SourceSpan { input, seq, first_offset: first, next_offset: next };
    let now = now_wall_ns();
    for &(offset, start, len) in &raw.msgs {
        if len == 0 {
            b.records += 1;
            b.dead.push(DeadLetter::new(input, offset, RejectReason::Schema("empty message".into()), b""));
        } else {
            decoder.decode(&raw.bytes[start..start + len], offset, now, &mut b);
        }
    }
    b
}
