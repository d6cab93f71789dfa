//! The SQLite sink's buffered rows: each record turned into the values of its table's columns
//! (in `schema::TABLES` order), checked on the way: a value SQLite cannot hold as it is (an
//! unsigned count beyond a signed 64-bit `INTEGER`, a NaN, which SQLite would store as NULL) is
//! refused before anything is buffered. Never any I/O.

use rusqlite::types::Value;

use meltstream_engine::input::time::format_rfc3339;
use meltstream_engine::records::{OutputRecord, SpcCell};

use super::schema::TABLES;

/// The buffered rows of every table, indexed like `schema::TABLES`.
#[derive(Default)]
pub(super) struct Rows {
    tables: [Vec<Vec<Value>>; TABLES.len()],
}

impl Rows {
    /// Buffers the row of `record`; on an error nothing was buffered.
    pub(super) fn push(&mut self, record: &OutputRecord) -> Result<(), String> {
        let (table, row) = row(record)?;
        debug_assert_eq!(row.len(), TABLES[table].columns.len(), "row of {}", TABLES[table].name);
        self.tables[table].push(row);
        Ok(())
    }

    /// Moves `other`'s rows to the end of these.
    pub(super) fn append(&mut self, other: &mut Rows) {
        for (mine, theirs) in self.tables.iter_mut().zip(other.tables.iter_mut()) {
            mine.append(theirs);
        }
    }

    pub(super) fn clear(&mut self) {
        self.tables.iter_mut().for_each(Vec::clear);
    }

    /// Rows buffered, over every table.
    pub(super) fn len(&self) -> usize {
        self.tables.iter().map(Vec::len).sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tables.iter().all(Vec::is_empty)
    }

    /// Per table (index into `schema::TABLES`), its rows.
    pub(super) fn per_table(&self) -> impl Iterator<Item = (usize, &[Vec<Value>])> {
        self.tables.iter().enumerate().map(|(i, rows)| (i, rows.as_slice()))
    }
}

/// An unsigned integer as SQLite's signed 64-bit `INTEGER`.
pub(super) fn integer(v: u64, what: &str) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("{what} {v} does not fit a SQLite INTEGER"))
}

fn int(v: u64, what: &str) -> Result<Value, String> {
    integer(v, what).map(Value::Integer)
}

fn real(v: f64, what: &str) -> Result<Value, String> {
    if v.is_nan() {
        return Err(format!("{what} is NaN, which SQLite stores as NULL"));
    }
    Ok(Value::Real(v))
}

fn opt_real(v: Option<f64>, what: &str) -> Result<Value, String> {
    v.map_or(Ok(Value::Null), |v| real(v, what))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_string(v).map(Value::Text).map_err(|e| format!("cannot encode JSON: {e}"))
}

/// The time of `ns` as the records write it (RFC 3339 UTC, microseconds).
fn time(ns: i64) -> Value {
    Value::Text(format_rfc3339(ns))
}

/// A cell's columns (index, centre x, centre y, edge): nulls for a laser's chart.
fn cell_values(c: Option<&SpcCell>) -> (Value, Value, Value, Value) {
    match c {
        Some(c) => (Value::Integer(c.index.into()), Value::Real(c.x_mm), Value::Real(c.y_mm), Value::Real(c.size_mm)),
        None => (Value::Null, Value::Null, Value::Null, Value::Null),
    }
}

/// The table of `record` (index into `schema::TABLES`) and its row.
fn row(record: &OutputRecord) -> Result<(usize, Vec<Value>), String> {
    let i = |v: i64| Value::Integer(v);
    let cell = cell_values(match record {
        OutputRecord::SpcSignal(s) => s.cell.as_ref(),
        _ => None,
    });
    Ok(match record {
        OutputRecord::LayerSummary(s) => (
            0,
            vec![
                text(&s.build_id),
                i(s.layer.into()),
                i(s.laser.into()),
                i(s.revision.into()),
                time(s.window_start_ns),
                i(s.window_start_ns),
                time(s.window_end_ns),
                i(s.window_end_ns),
                s.z_um.map_or(Value::Null, i),
                int(s.sample_count, "sample_count")?,
                int(s.late_count, "late_count")?,
                opt_real(s.energy_density_j_mm3, "energy_density_j_mm3")?,
                json(&s.energy_density_by_style_j_mm3)?,
                json(&s.channels)?,
                json(&s.rule_hits)?,
                json(record)?,
            ],
        ),
        OutputRecord::Grid(g) => (
            1,
            vec![text(&g.build_id), i(g.layer.into()), i(g.revision.into()), text(&g.channel), real(g.cell_mm, "cell_mm")?, i(g.cells_per_side.into()), int(g.outside_count, "outside_count")?, json(&g.cells)?],
        ),
        OutputRecord::Window(w) => (
            2,
            vec![
                text(&w.build_id),
                text(&w.window),
                text(&w.window_kind),
                text(&w.channel),
                time(w.window_start_ns),
                i(w.window_start_ns),
                time(w.window_end_ns),
                i(w.window_end_ns),
                int(w.count, "count")?,
                real(w.mean, "mean")?,
                real(w.min, "min")?,
                real(w.max, "max")?,
                real(w.std_dev, "std_dev")?,
            ],
        ),
        OutputRecord::Anomaly(a) => (
            3,
            vec![
                text(&a.build_id),
                a.layer.map_or(Value::Null, |l| i(l.into())),
                a.laser.map_or(Value::Null, |l| i(l.into())),
                i(a.laser.map_or(-1, i64::from)),
                time(a.time_ns),
                i(a.time_ns),
                text(&a.rule),
                text(&a.channel),
                real(a.value, "value")?,
                text(&a.op),
                real(a.limit, "limit")?,
                opt_real(a.x_mm, "x_mm")?,
                opt_real(a.y_mm, "y_mm")?,
            ],
        ),
        OutputRecord::DeadLetter(d) => (
            4,
            vec![
                text(&d.source),
                i(d.input.into()),
                d.topic.as_deref().map_or(Value::Null, text),
                d.partition.map_or(Value::Null, |p| i(p.into())),
                int(d.offset, "offset")?,
                text(&d.reason_kind),
                text(&d.reason),
                text(&d.raw_prefix),
            ],
        ),
        OutputRecord::Late(l) => (
            5,
            vec![
                text(&l.build_id),
                l.layer.map_or(Value::Null, |v| i(v.into())),
                i(l.laser.into()),
                i(l.t0_ns),
                int(l.sample_count, "sample_count")?,
                int(l.offset, "offset")?,
                i(l.watermark_ns),
            ],
        ),
        OutputRecord::SpcSignal(s) => (
            6,
            vec![
                text(&s.build_id),
                text(&s.spc),
                text(&s.chart),
                text(&s.channel),
                text(&s.statistic),
                i(s.laser.into()),
                i(s.layer.into()),
                time(s.time_ns),
                i(s.time_ns),
                text(&s.rule),
                real(s.value, "value")?,
                real(s.charted, "charted")?,
                real(s.centre, "centre")?,
                real(s.lower, "lower")?,
                real(s.upper, "upper")?,
                real(s.baseline_centre, "baseline_centre")?,
                real(s.baseline_sigma, "baseline_sigma")?,
                json(&s.layers)?,
                cell.0,
                cell.1,
                cell.2,
                cell.3,
            ],
        ),
        OutputRecord::LayerVerdict(v) => (
            7,
            vec![text(&v.build_id), i(v.layer.into()), text(&v.verdict), json(&v.reasons)?, time(v.time_ns), i(v.time_ns), int(v.sample_count, "sample_count")?, json(record)?],
        ),
        OutputRecord::BuildReport(r) => (
            8,
            vec![text(&r.build_id), time(r.time_ns), i(r.time_ns), i(r.layers.into()), i(r.layers_ok.into()), i(r.layers_warn.into()), i(r.layers_fail.into()), json(record)?],
        ),
        OutputRecord::DataQuality(q) => (9, vec![text(&q.build_id), i(q.layer.into()), time(q.time_ns), i(q.time_ns), real(q.score, "score")?, json(record)?]),
        OutputRecord::SpcBaseline(b) => {
            let cell = cell_values(b.cell.as_ref());
            let head = [text(&b.build_id), text(&b.spc), text(&b.chart), text(&b.channel), text(&b.statistic), i(b.laser.into()), cell.0, cell.1, cell.2, cell.3];
            let tail = [i(b.layer.into()), time(b.time_ns), i(b.time_ns), real(b.centre, "centre")?, real(b.sigma, "sigma")?, i(b.layers_used.into())];
            (10, head.into_iter().chain(tail).collect())
        }
        OutputRecord::InputQuality(q) => (
            11,
            vec![
                text(&q.source),
                i(q.input.into()),
                q.topic.as_deref().map_or(Value::Null, text),
                q.partition.map_or(Value::Null, |p| i(p.into())),
                time(q.window_start_ns),
                i(q.window_start_ns),
                i(q.window_end_ns),
                int(q.records, "records")?,
                int(q.samples, "samples")?,
                int(q.dead_letters, "dead_letters")?,
                json(&q.dead_letters_by_reason)?,
                int(q.late_samples, "late_samples")?,
                real(q.max_disorder_ms, "max_disorder_ms")?,
                real(q.score, "score")?,
                i(q.below_threshold.into()),
            ],
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meltstream_engine::records::{Anomaly, LateRecord};

    fn anomaly(value: f64, laser: Option<u8>) -> OutputRecord {
        OutputRecord::Anomaly(Anomaly {
            build_id: "b".into(),
            layer: Some(3),
            laser,
            time: String::new(),
            time_ns: 1_500_000_000,
            rule: "r".into(),
            channel: "temperature_c".into(),
            value,
            op: ">".into(),
            limit: 1.0,
            x_mm: None,
            y_mm: None,
        })
    }

    #[test]
    fn a_row_has_its_tables_columns_and_a_laser_key() {
        let (table, cols) = row(&anomaly(2.0, None)).expect("row");
        assert_eq!(TABLES[table].name, "anomalies");
        assert_eq!(cols.len(), TABLES[table].columns.len());
        assert_eq!(cols[2], Value::Null, "laser");
        assert_eq!(cols[3], Value::Integer(-1), "laser_key of no laser");
        assert_eq!(cols[4], Value::Text("1970-01-01T00:00:01.500000Z".into()), "time from time_ns");
        assert_eq!(row(&anomaly(2.0, Some(7))).expect("row").1[3], Value::Integer(7));
    }

    #[test]
    fn what_sqlite_cannot_hold_is_refused_and_nothing_buffered() {
        let mut rows = Rows::default();
        let err = rows.push(&anomaly(f64::NAN, None)).expect_err("NaN");
        assert!(err.contains("NaN"), "{err}");
        let late = LateRecord { build_id: "b".into(), layer: None, laser: 0, t0_ns: 0, sample_count: u64::MAX, offset: 1, watermark_ns: 0 };
        let err = rows.push(&OutputRecord::Late(late)).expect_err("u64::MAX");
        assert!(err.contains("does not fit a SQLite INTEGER"), "{err}");
        assert!(rows.is_empty());
        rows.push(&anomaly(f64::INFINITY, None)).expect("an infinity is a REAL");
        assert_eq!(rows.len(), 1);
    }
}
