//! The fault harness's checker: what a pipeline wrote to every sink, and a readable difference
//! between two runs.
//!
//! A snapshot holds the PostgreSQL result tables of one pipeline (each row as JSON, without the
//! write time, the pipeline and the input topic, which differ between runs by design) and the
//! alert topic read with `read_committed` (each alert with its source position, the
//! `meltstream-position` header without the topic). Two snapshots are compared row by row,
//! paired by each table's key, and every difference is listed: rows only in one run, rows whose
//! key is in both with different values (field by field), and alerts missing, extra or repeated.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};

use crate::support::services::{end_offsets, read_committed_with};

/// The result tables and their keys (without `pipeline`), in the order they are reported.
/// `progress` and `schema_version` are the engine's own bookkeeping, not results.
pub const TABLES: &[(&str, &[&str])] = &[
    ("layer_summaries", &["build_id", "layer", "laser", "revision"]),
    ("grid_maps", &["build_id", "layer", "revision"]),
    ("window_results", &["build_id", "window", "window_start_ns"]),
    ("anomalies", &["build_id", "rule", "laser_key", "time_ns"]),
    ("dead_letters", &["source", "input", "kafka_offset"]),
    ("late_records", &["build_id", "source_offset", "t0_ns", "laser"]),
    ("spc_signals", &["build_id", "spc", "laser", "layer", "rule"]),
    ("layer_verdicts", &["build_id", "layer"]),
    ("build_reports", &["build_id"]),
    ("data_quality", &["build_id", "layer"]),
];

/// Columns left out of the comparison: set by the database at write time, or naming the run.
const NOT_COMPARED: &[&str] = &["pipeline", "written_at", "topic"];

/// Lines shown per category of difference.
const SHOWN: usize = 20;

/// Everything one pipeline wrote.
pub struct Snapshot {
    /// Table → key → row (JSON object without the columns above).
    pub tables: BTreeMap<&'static str, BTreeMap<String, serde_json::Value>>,
    /// Rows whose key appeared twice (impossible with the primary keys; kept to be sure).
    pub repeated_keys: Vec<String>,
    /// Alerts as `partition:offset <record JSON without topic>`, sorted, repeats kept.
    pub alerts: Vec<String>,
}

impl Snapshot {
    pub fn count(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    /// Rows of `table` for which `pred` holds.
    pub fn rows_where(&self, table: &str, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.tables.get(table).map_or(0, |t| t.values().filter(|r| pred(r)).count())
    }
}

/// Reads what `pipeline` wrote to `schema` and to `alerts_topic`.
pub async fn snapshot(db_url: &str, schema: &str, pipeline: &str, brokers: &str, alerts_topic: &str) -> Snapshot {
    let c = connect(db_url).await;
    let present: Vec<String> = c
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1", &[&schema])
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut tables = BTreeMap::new();
    let mut repeated_keys = Vec::new();
    for (table, key) in TABLES {
        if !present.iter().any(|p| p == table) {
            continue;
        }
        let mut drop = String::new();
        for col in NOT_COMPARED {
            let _ = write!(drop, " - '{col}'");
        }
        let q = format!("SELECT (to_jsonb(t){drop})::text FROM {schema}.{table} t WHERE pipeline = $1");
        let mut rows = BTreeMap::new();
        for r in c.query(&q, &[&pipeline]).await.unwrap_or_else(|e| panic!("read {schema}.{table}: {e}")) {
            let text: String = r.get(0);
            let v: serde_json::Value = serde_json::from_str(&text).expect("row JSON");
            let k = key_of(&v, key);
            if rows.insert(k.clone(), v).is_some() {
                repeated_keys.push(format!("{table}: {k}"));
            }
        }
        tables.insert(*table, rows);
    }
    Snapshot { tables, repeated_keys, alerts: read_alerts(brokers, alerts_topic) }
}

fn key_of(row: &serde_json::Value, key: &[&str]) -> String {
    key.iter().map(|k| format!("{k}={}", short(&row[*k], 60))).collect::<Vec<_>>().join(" ")
}

/// A PostgreSQL client; retries for two minutes, since the server is shared and may be
/// restarting (the harness's own fault, or another test's).
async fn connect(url: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) if Instant::now() > deadline => panic!("cannot connect to PostgreSQL for two minutes to read the results: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The end offsets of `topic`, retried for two minutes while the broker is away.
fn ends_of(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match std::panic::catch_unwind(|| end_offsets(brokers, topic)) {
            Ok(e) if !e.is_empty() => return e,
            _ if Instant::now() > deadline => return end_offsets(brokers, topic),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Every committed record of the alert topic with its source position, read with
/// `read_committed`.
fn read_alerts(brokers: &str, topic: &str) -> Vec<String> {
    let mut out = read_committed_with(brokers, topic, &ends_of(brokers, topic), Duration::from_secs(120), |m| {
        let position = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "meltstream-position").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())))
            .unwrap_or_else(|| "no-position".to_owned());
        // `<topic>:<partition>:<offset>`: the topic names the run.
        let position = position.rsplitn(3, ':').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(":");
        let mut v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(m.payload().unwrap_or_default())).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("topic");
        }
        format!("{position} {v}")
    });
    out.sort();
    out
}

/// The difference between a reference and another run: empty when they are the same.
pub struct Diff {
    /// One line per table and for the alerts, equal or not.
    pub summary: Vec<String>,
    /// The differences, for printing.
    pub details: String,
    pub differs: bool,
}

/// Compares `got` with `reference`.
pub fn compare(reference: &Snapshot, got: &Snapshot) -> Diff {
    let mut summary = Vec::new();
    let mut details = String::new();
    let mut differs = false;
    for (table, _) in TABLES {
        let empty = BTreeMap::new();
        let (r, g) = (reference.tables.get(table).unwrap_or(&empty), got.tables.get(table).unwrap_or(&empty));
        if r.is_empty() && g.is_empty() && !reference.tables.contains_key(table) {
            continue;
        }
        let only_ref: Vec<&String> = r.keys().filter(|k| !g.contains_key(*k)).collect();
        let only_got: Vec<&String> = g.keys().filter(|k| !r.contains_key(*k)).collect();
        let changed: Vec<&String> = r.keys().filter(|k| g.get(*k).is_some_and(|v| v != &r[*k])).collect();
        if only_ref.is_empty() && only_got.is_empty() && changed.is_empty() {
            summary.push(format!("{table}: {} rows, same", r.len()));
            continue;
        }
        differs = true;
        summary.push(format!(
            "{table}: reference {} rows, chaos {} rows; {} only in reference, {} only in chaos, {} with the same key and other values",
            r.len(),
            g.len(),
            only_ref.len(),
            only_got.len(),
            changed.len()
        ));
        let _ = writeln!(details, "--- {table} (key: {})", TABLES.iter().find(|t| t.0 == *table).map_or(String::new(), |t| t.1.join(", ")));
        list(&mut details, "only in reference", &only_ref, |k| format!("{k}: {}", row_gist(&r[*k])));
        list(&mut details, "only in chaos", &only_got, |k| format!("{k}: {}", row_gist(&g[*k])));
        list(&mut details, "same key, other values (reference → chaos)", &changed, |k| format!("{k}: {}", fields_diff(&r[*k], &g[*k])));
    }
    if !got.repeated_keys.is_empty() {
        differs = true;
        list(&mut details, "rows repeated in chaos", &got.repeated_keys.iter().collect::<Vec<_>>(), |k| (*k).clone());
    }

    let (r, g) = (multiset(&reference.alerts), multiset(&got.alerts));
    let only_ref: Vec<&String> = r.keys().filter(|a| !g.contains_key(*a)).copied().collect();
    let only_got: Vec<&String> = g.keys().filter(|a| !r.contains_key(*a)).copied().collect();
    let repeated: Vec<String> = g.iter().filter(|(a, n)| **n > 1 && r.get(*a).is_none_or(|m| m < *n)).map(|(a, n)| format!("×{n} (reference ×{}) {a}", r.get(a).copied().unwrap_or(0))).collect();
    if only_ref.is_empty() && only_got.is_empty() && repeated.is_empty() {
        summary.push(format!("alert topic: {} alerts, same", reference.alerts.len()));
    } else {
        differs = true;
        summary.push(format!(
            "alert topic: reference {} alerts, chaos {}; {} only in reference, {} only in chaos, {} repeated in chaos",
            reference.alerts.len(),
            got.alerts.len(),
            only_ref.len(),
            only_got.len(),
            repeated.len()
        ));
        let _ = writeln!(details, "--- alert topic (read_committed; partition:offset of the source record, then the record)");
        list(&mut details, "only in reference", &only_ref, |a| short_str(a, 300));
        list(&mut details, "only in chaos", &only_got, |a| short_str(a, 300));
        list(&mut details, "repeated in chaos", &repeated.iter().collect::<Vec<_>>(), |a| short_str(a, 300));
    }
    Diff { summary, details, differs }
}

fn multiset(v: &[String]) -> BTreeMap<&String, usize> {
    let mut m: BTreeMap<&String, usize> = BTreeMap::new();
    for a in v {
        *m.entry(a).or_default() += 1;
    }
    m
}

fn list<T>(out: &mut String, what: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {what} ({}):", items.len());
    for i in items.iter().take(SHOWN) {
        let _ = writeln!(out, "    {}", line(i));
    }
    if items.len() > SHOWN {
        let _ = writeln!(out, "    … {} more", items.len() - SHOWN);
    }
}

/// A row in a few words: its scalar columns (the large JSON columns left out).
fn row_gist(row: &serde_json::Value) -> String {
    let Some(o) = row.as_object() else { return short(row, 200) };
    let parts: Vec<String> = o.iter().filter(|(_, v)| !v.is_object() && !v.is_array()).map(|(k, v)| format!("{k}={}", short(v, 60))).collect();
    short_str(&parts.join(" "), 400)
}

/// The leaves where two rows differ, `path: reference → chaos`, at most eight.
fn fields_diff(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let mut out = Vec::new();
    leaf_diff("", a, b, true, &mut out);
    if out.is_empty() {
        leaf_diff("", a, b, false, &mut out);
    }
    let n = out.len();
    let mut s = out.into_iter().take(8).collect::<Vec<_>>().join("; ");
    if n > 8 {
        let _ = write!(s, "; … {} more fields", n - 8);
    }
    s
}

/// `skip_record`: leave out the layer summary's `record` column, which repeats the other columns
/// as one JSON (looked at only when nothing else differs).
fn leaf_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, skip_record: bool, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if skip_record && path.is_empty() && k == "record" {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                leaf_diff(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), skip_record, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                leaf_diff(&format!("{path}[{i}]"), u, v, skip_record, out);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let first = x.iter().zip(y).position(|(u, v)| u != v).unwrap_or(x.len().min(y.len()));
            let at = |v: &Vec<Value>| v.get(first).map_or("none".to_owned(), |e| short(e, 80));
            out.push(format!("{path}: {} items → {}; first difference at [{first}]: {} → {}", x.len(), y.len(), at(x), at(y)));
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {} → {}", short(a, 60), short(b, 60))),
    }
}

fn short(v: &serde_json::Value, n: usize) -> String {
    match v {
        serde_json::Value::String(s) => short_str(s, n),
        v => short_str(&v.to_string(), n),
    }
}

fn short_str(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
