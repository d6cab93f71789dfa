//! The unit of the data path: a columnar batch of sample blocks plus the rare layer and log
//! events, tagged with the source span (input, sequence, offsets) it was decoded from.
//!
//! A batch costs a handful of allocations whatever the number of samples in it: every sample
//! column lives in one `f32` arena and a block is a header with offsets into it. A single-sample
//! message (the seed's format) is a block of length one.
//!
//! # Backpressure
//! Batches are what bounded queues count: the router and the build actors hold at most a
//! configured number of them, so memory is bounded by `queue capacity × batch size`.

use std::sync::Arc;

use crate::input::event::{BuildId, Channel, InputId, LayerEvent, LogRecord, TimeNs, N_CHANNELS};
use crate::input::reject::DeadLetter;

/// Where a batch came from: the input, the batch's sequence number on that input, and the
/// half-open range of source offsets it covers (lines of a file, Kafka offsets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSpan {
    /// The input.
    pub input: InputId,
    /// Sequence number of this batch on its input, from 0, without gaps.
    pub seq: u64,
    /// First source offset covered.
    pub first_offset: u64,
    /// One past the last source offset covered: committing this resumes after the batch.
    pub next_offset: u64,
}

/// Column slot of x (mm) in [`BlockHeader::offsets`].
pub const COL_X: usize = N_CHANNELS;
/// Column slot of y (mm) in [`BlockHeader::offsets`].
pub const COL_Y: usize = N_CHANNELS + 1;
/// Number of column slots per block.
pub const N_COLS: usize = N_CHANNELS + 2;
/// Offset value meaning "this block does not carry this column".
pub const ABSENT: u32 = u32::MAX;

/// One block of equally spaced samples of one laser of one layer of one build.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockHeader {
    /// Index into [`RecordBatch::builds`].
    pub build: u32,
    /// Layer index.
    pub layer: u32,
    /// Laser index (1-based; 0 when the message named none).
    pub laser: u8,
    /// Event time of the first sample.
    pub t0_ns: TimeNs,
    /// Spacing between samples (0 for a single sample).
    pub dt_ns: i64,
    /// Number of samples.
    pub len: u32,
    /// Start of each column in [`RecordBatch::data`], or [`ABSENT`].
    pub offsets: [u32; N_COLS],
    /// Source offset of the record the block came from.
    pub source_offset: u64,
}

impl BlockHeader {
    /// Event time of the last sample.
    pub fn t_last_ns(&self) -> TimeNs {
        self.t0_ns + self.dt_ns * (i64::from(self.len.max(1)) - 1)
    }
}

/// A batch of decoded records.
#[derive(Debug, Default)]
pub struct RecordBatch {
    /// Where it came from.
    pub span: SourceSpan,
    /// Builds referenced by the blocks (small; blocks index into it).
    pub builds: Vec<BuildId>,
    /// Sample blocks.
    pub blocks: Vec<BlockHeader>,
    /// The column arena.
    pub data: Vec<f32>,
    /// Layer events.
    pub layers: Vec<LayerEvent>,
    /// Machine-log records.
    pub logs: Vec<LogRecord>,
    /// Records that could not be decoded, with their reason.
    pub dead: Vec<DeadLetter>,
    /// Largest event time in the batch (for the watermark), `TimeNs::MIN` if none.
    pub max_t_ns: TimeNs,
    /// Number of source records the batch was decoded from (including dead letters).
    pub records: u64,
    /// The input's largest event time before each record, as steps `(from_offset, max)`: a
    /// record at offset `o` has the `max` of the last step with `from_offset ≤ o` (see
    /// [`RecordBatch::max_t_steps`]). Set by the router on every part of a batch, so that a
    /// build applies its input's watermark record by record, whatever the batch boundaries.
    /// Empty: no per-record watermark.
    pub max_t_before: Arc<Vec<(u64, TimeNs)>>,
}

/// Columns of a block being appended: pass `None` for an absent column.
#[derive(Default, Clone, Copy)]
pub struct BlockColumns<'a> {
    /// Per-channel values, indexed by [`Channel::index`].
    pub channels: [Option<&'a [f32]>; N_CHANNELS],
    /// x positions in mm.
    pub x_mm: Option<&'a [f32]>,
    /// y positions in mm.
    pub y_mm: Option<&'a [f32]>,
}

impl RecordBatch {
    /// An empty batch with room for `samples` samples.
    pub fn with_capacity(samples: usize) -> RecordBatch {
        RecordBatch { data: Vec::with_capacity(samples * 4), max_t_ns: TimeNs::MIN, ..Default::default() }
    }

    /// The steps of [`RecordBatch::max_t_before`] for this batch, the input's largest event
    /// time before it being `base`: one step per record that raises it (blocks, layer events and
    /// logs, in offset order).
    pub fn max_t_steps(&self, base: TimeNs) -> Vec<(u64, TimeNs)> {
        let mut steps = vec![(self.span.first_offset, base)];
        let (mut b, mut e, mut l) = (0, 0, 0);
        let mut cur = base;
        loop {
            let ob = self.blocks.get(b).map(|h| (h.source_offset, h.t_last_ns()));
            let oe = self.layers.get(e).map(|v| (v.source_offset, v.t_ns));
            let ol = self.logs.get(l).map(|r| (r.source_offset, r.t_ns));
            let Some((o, t)) = [ob, oe, ol].into_iter().flatten().min_by_key(|x| x.0) else { break };
            if ob.is_some_and(|x| x.0 == o) {
                b += 1;
            } else if oe.is_some_and(|x| x.0 == o) {
                e += 1;
            } else {
                l += 1;
            }
            if t > cur {
                cur = t;
                match steps.last_mut() {
                    Some(last) if last.0 == o + 1 => last.1 = cur,
                    _ => steps.push((o + 1, cur)),
                }
            }
        }
        steps
    }

    /// The input's largest event time before the record at `offset` (`MIN` without steps).
    /// `cursor` makes a walk in offset order cost O(1) per record.
    pub fn max_t_before(&self, offset: u64, cursor: &mut usize) -> TimeNs {
        let s = &self.max_t_before;
        if s.is_empty() {
            return TimeNs::MIN;
        }
        if *cursor >= s.len() || s[*cursor].0 > offset {
            *cursor = 0;
        }
        while *cursor + 1 < s.len() && s[*cursor + 1].0 <= offset {
            *cursor += 1;
        }
        if s[*cursor].0 > offset {
            TimeNs::MIN
        } else {
            s[*cursor].1
        }
    }

    /// Total samples in the batch.
    pub fn sample_count(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.len)).sum()
    }

    /// True when the batch carries nothing but possibly dead letters.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.layers.is_empty() && self.logs.is_empty()
    }

    /// Index of `build` in [`RecordBatch::builds`], adding it if new.
    pub fn build_index(&mut self, build: &BuildId) -> u32 {
        // Batches hold few builds: a linear scan beats hashing here. A decoder interns its build
        // ids, so the same build is nearly always the same `Arc`: compare pointers first, names
        // only when that fails (ids of another decoder).
        if let Some(i) = self.builds.iter().position(|b| Arc::ptr_eq(b, build)) {
            return i as u32;
        }
        if let Some(i) = self.builds.iter().position(|b| b == build) {
            return i as u32;
        }
        self.builds.push(build.clone());
        (self.builds.len() - 1) as u32
    }

    /// Appends a block; every present column must have `len` values.
    #[allow(clippy::too_many_arguments)]
    pub fn push_block(
        &mut self,
        build: &BuildId,
        layer: u32,
        laser: u8,
        t0_ns: TimeNs,
        dt_ns: i64,
        len: u32,
        cols: BlockColumns<'_>,
        source_offset: u64,
    ) {
        let build = self.build_index(build);
        let mut offsets = [ABSENT; N_COLS];
        let mut put = |slot: usize, v: Option<&[f32]>, data: &mut Vec<f32>| {
            if let Some(v) = v {
                debug_assert_eq!(v.len(), len as usize);
                offsets[slot] = data.len() as u32;
                data.extend_from_slice(v);
            }
        };
        for c in Channel::ALL {
            put(c.index(), cols.channels[c.index()], &mut self.data);
        }
        put(COL_X, cols.x_mm, &mut self.data);
        put(COL_Y, cols.y_mm, &mut self.data);
        let h = BlockHeader { build, layer, laser, t0_ns, dt_ns, len, offsets, source_offset };
        self.max_t_ns = self.max_t_ns.max(h.t_last_ns());
        self.blocks.push(h);
    }

    /// Appends a layer event.
    pub fn push_layer(&mut self, ev: LayerEvent) {
        self.max_t_ns = self.max_t_ns.max(ev.t_ns);
        self.layers.push(ev);
    }

    /// Appends a machine-log record.
    pub fn push_log(&mut self, rec: LogRecord) {
        self.max_t_ns = self.max_t_ns.max(rec.t_ns);
        self.logs.push(rec);
    }

    /// The values of column `slot` of `block`, if present.
    pub fn column(&self, block: &BlockHeader, slot: usize) -> Option<&[f32]> {
        let off = block.offsets[slot];
        if off == ABSENT {
            return None;
        }
        self.data.get(off as usize..off as usize + block.len as usize)
    }

    /// Splits the batch into one batch per build, in first-seen order, moving rather than
    /// copying when it holds a single build. Dead letters stay with the returned remainder.
    pub fn split_by_build(mut self) -> (Vec<(BuildId, RecordBatch)>, Vec<DeadLetter>) {
        let dead = std::mem::take(&mut self.dead);
        let mut names: Vec<BuildId> = self.builds.clone();
        for l in &self.layers {
            if !names.contains(&l.build) {
                names.push(l.build.clone());
            }
        }
        for r in &self.logs {
            if !names.contains(&r.build) {
                names.push(r.build.clone());
            }
        }
        if names.len() <= 1 {
            return (names.into_iter().next().map(|n| vec![(n, self)]).unwrap_or_default(), dead);
        }
        let span = self.span;
        let mut out: Vec<(BuildId, RecordBatch)> = names
            .iter()
            .map(|n| {
                let mut b = RecordBatch::with_capacity(0);
                b.span = span;
                b.max_t_before = self.max_t_before.clone();
                b.builds.push(n.clone());
                (n.clone(), b)
            })
            .collect();
        let pos = |name: &BuildId| names.iter().position(|n| n == name).unwrap_or(0);
        for h in &self.blocks {
            let (_, dst) = &mut out[h.build as usize];
            let mut nh = *h;
            nh.build = 0;
            for slot in 0..N_COLS {
                if h.offsets[slot] != ABSENT {
                    nh.offsets[slot] = dst.data.len() as u32;
                    let s = h.offsets[slot] as usize;
                    dst.data.extend_from_slice(&self.data[s..s + h.len as usize]);
                }
            }
            dst.max_t_ns = dst.max_t_ns.max(nh.t_last_ns());
            dst.blocks.push(nh);
        }
        for l in self.layers.drain(..) {
            out[pos(&l.build)].1.push_layer(l);
        }
        for r in self.logs.drain(..) {
            out[pos(&r.build)].1.push_log(r);
        }
        (out, dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn split_keeps_every_sample_with_its_build() {
        let (a, b): (BuildId, BuildId) = (Arc::from("a"), Arc::from("b"));
        let mut batch = RecordBatch::with_capacity(8);
        let mut cols = BlockColumns::default();
        cols.channels[0] = Some(&[1.0, 2.0]);
        batch.push_block(&a, 1, 1, 10, 5, 2, cols, 0);
        cols.channels[0] = Some(&[3.0, 4.0]);
        batch.push_block(&b, 2, 1, 20, 5, 2, cols, 1);
        cols.channels[0] = Some(&[5.0, 6.0]);
        batch.push_block(&a, 1, 1, 30, 5, 2, cols, 2);
        let (parts, dead) = batch.split_by_build();
        assert!(dead.is_empty());
        assert_eq!(parts.len(), 2);
        let (ref name, ref pa) = parts[0];
        assert_eq!(&**name, "a");
        let vals: Vec<f32> = pa.blocks.iter().flat_map(|h| pa.column(h, 0).unwrap().to_vec()).collect();
        assert_eq!(vals, vec![1.0, 2.0, 5.0, 6.0]);
        assert_eq!(pa.max_t_ns, 35);
        let pb = &parts[1].1;
        assert_eq!(pb.column(&pb.blocks[0], 0).unwrap(), &[3.0, 4.0]);
    }
}
