//! The Kafka sink's stored format: the metadata string committed with each source offset
//! (`meltstream:v1:et=<offset>:tx=<run>-<n>:out=<partition>@<offset>,…:st=<replay state JSON>`,
//! the state last since JSON has colons), the position header
//! every record carries, and the spans of committed transactions that the `out` field is
//! computed from. Pure parsing and formatting; no client here.

use std::collections::BTreeMap;

use meltstream_engine::pipeline::decisions::PartitionState;

use crate::progress::{Checkpoint, Progress, StoredProgress, TopicPartition};

/// The header that carries a record's source position.
pub(super) const POSITION_HEADER: &str = "meltstream-position";

/// Where a committed transaction's records went, and the source positions they came from.
#[derive(Clone, Debug, Default)]
pub(super) struct TxSpan {
    /// First output offset per output partition.
    pub(super) first_out: BTreeMap<i32, i64>,
    /// Highest source offset per source partition.
    pub(super) max_pos: BTreeMap<TopicPartition, u64>,
}

impl TxSpan {
    /// True when `c` covers the span's positions of source partition `tp` (or it has none): a
    /// replay of `tp` drops them by emitted-through.
    pub(super) fn covers(&self, tp: &TopicPartition, c: &Checkpoint) -> bool {
        self.max_pos.get(tp).is_none_or(|&o| c.entries.iter().any(|(t, p)| t == tp && o < p.emitted_through))
    }

    /// True when `c` covers every position of the span.
    pub(super) fn covered_by(&self, c: &Checkpoint) -> bool {
        self.max_pos.keys().all(|tp| self.covers(tp, c))
    }
}

/// The `out` field: the lowest first offset per output partition over `spans`.
fn out_field(spans: &[&TxSpan]) -> String {
    let mut low: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in spans.iter().flat_map(|s| s.first_out.iter()) {
        low.entry(*p).and_modify(|x| *x = (*x).min(*o)).or_insert(*o);
    }
    low.iter().map(|(p, o)| format!("{p}@{o}")).collect::<Vec<_>>().join(",")
}

/// The offsets a transaction commits: per source partition, its progress and its `out` field
/// (where a restart reads the topic back from: the committed transactions in `spans`, this one
/// included, whose records of that partition `checkpoint` does not cover).
///
/// Only partitions assigned to this process get offsets: the spans read back at start hold
/// every partition's records, and another process owns the rest (writing its partitions'
/// offsets from here would move them back to what this run read at start). An assigned
/// partition with records but no progress on the board yet keeps the progress read at start
/// (`stored`, checked current at assignment), or, without one, 0.
pub(super) fn offset_entries(checkpoint: &Checkpoint, spans: &[&TxSpan], stored: &StoredProgress) -> Vec<(TopicPartition, Progress, String)> {
    let mut entries = checkpoint.entries.clone();
    for tp in spans.iter().flat_map(|s| s.max_pos.keys()) {
        if checkpoint.assignments.contains_key(tp) && !entries.iter().any(|(t, _)| t == tp) {
            entries.push((tp.clone(), stored.get(tp).copied().unwrap_or(Progress { resume: 0, emitted_through: 0 })));
        }
    }
    entries
        .into_iter()
        .map(|(tp, p)| {
            let ahead: Vec<&TxSpan> = spans.iter().copied().filter(|s| !s.covers(&tp, checkpoint)).collect();
            let out = out_field(&ahead);
            (tp, p, out)
        })
        .collect()
}

/// Parses an `out` field.
fn parse_out(v: &str) -> BTreeMap<i32, i64> {
    v.split(',').filter_map(|e| e.split_once('@')).filter_map(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?))).collect()
}

/// Parses a position header.
pub(super) fn parse_position(v: &[u8]) -> Option<(TopicPartition, u64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (rest, offset) = s.rsplit_once(':')?;
    let (topic, partition) = rest.rsplit_once(':')?;
    Some(((topic.to_owned(), partition.parse().ok()?), offset.parse().ok()?))
}

/// The fields of the metadata string written with an offset.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Metadata<'a> {
    pub(super) et: Option<u64>,
    pub(super) tx: Option<&'a str>,
    pub(super) out: BTreeMap<i32, i64>,
    pub(super) st: Option<&'a str>,
}

/// The metadata string of an offset: emitted-through `et`, transaction `tx`, the `out` field and
/// the partition's replay state when the whole fits in `max_bytes` (brokers refuse a commit whose
/// metadata is over their `offset.metadata.max.bytes`); false when the state was left out.
pub(super) fn format_metadata(et: u64, tx: &str, out: &str, state: Option<&PartitionState>, max_bytes: usize) -> (String, bool) {
    let mut md = format!("meltstream:v1:et={et}:tx={tx}");
    if !out.is_empty() {
        md.push_str(":out=");
        md.push_str(out);
    }
    let Some(state) = state else { return (md, true) };
    let json = state.to_json();
    if md.len() + 4 + json.len() > max_bytes {
        return (md, false);
    }
    md.push_str(":st=");
    md.push_str(&json);
    (md, true)
}

/// Parses the metadata string written with an offset.
pub(super) fn parse_metadata(s: &str) -> Metadata<'_> {
    let mut m = Metadata::default();
    let body = s.strip_prefix("meltstream:v1:").unwrap_or("");
    let (body, st) = match body.find("st=") {
        Some(i) if i == 0 || body[..i].ends_with(':') => (body[..i].trim_end_matches(':'), Some(&body[i + 3..])),
        _ => (body, None),
    };
    m.st = st;
    for part in body.split(':') {
        if let Some(v) = part.strip_prefix("et=") {
            m.et = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("tx=") {
            m.tx = Some(v);
        } else if let Some(v) = part.strip_prefix("out=") {
            m.out = parse_out(v);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::{offset_entries, parse_metadata, parse_position, TxSpan};
    use crate::progress::{Checkpoint, Progress, StoredProgress};
    use std::collections::BTreeMap;

    /// The spans read back at start hold other processes' partitions: they get no offsets from
    /// here (that moved their offsets back to what this run read at start), and each assigned
    /// partition's `out` names only the transactions with records of it not covered yet.
    #[test]
    fn offsets_only_for_assigned_partitions_each_with_its_own_read_back_anchor() {
        let tp = |p: i32| ("in".to_owned(), p);
        let at_start = TxSpan { first_out: [(0, 100)].into(), max_pos: [(tp(0), 50), (tp(1), 70), (tp(7), 9)].into() };
        let this_tx = TxSpan { first_out: [(0, 300)].into(), max_pos: [(tp(1), 90)].into() };
        let checkpoint = Checkpoint {
            entries: vec![(tp(0), Progress { resume: 40, emitted_through: 60 })],
            assignments: [(tp(0), 1), (tp(1), 1)].into(),
            ..Default::default()
        };
        let stored: StoredProgress = [(tp(1), Progress { resume: 65, emitted_through: 66 }), (tp(7), Progress { resume: 1, emitted_through: 1 })].into();
        let got = offset_entries(&checkpoint, &[&at_start, &this_tx], &stored);
        assert_eq!(
            got,
            vec![
                (tp(0), Progress { resume: 40, emitted_through: 60 }, String::new()),
                (tp(1), Progress { resume: 65, emitted_through: 66 }, "0@100".to_owned()),
            ],
            "partition 7 is another process's; 0 is covered (50 < 60); 1 has records from offset 100 of the output on"
        );
    }

    #[test]
    fn metadata_round_trip() {
        let m = parse_metadata("meltstream:v1:et=42:tx=9-3");
        assert_eq!((m.et, m.tx), (Some(42), Some("9-3")));
        let m = parse_metadata("meltstream:v1:et=42:tx=9-3:out=0@17,2@5");
        assert_eq!(m.out, BTreeMap::from([(0, 17), (2, 5)]));
        let m = parse_metadata(r#"meltstream:v1:et=42:tx=9-3:st={"mt":5,"b":{"x:y":{}}}"#);
        assert_eq!((m.et, m.st), (Some(42), Some(r#"{"mt":5,"b":{"x:y":{}}}"#)));
        assert_eq!(parse_position(b"ispm-monitoring:3:1234"), Some((("ispm-monitoring".to_owned(), 3), 1234)));
        assert_eq!(parse_metadata(""), Default::default());
        assert_eq!(parse_metadata("someone else's"), Default::default());
    }
}
