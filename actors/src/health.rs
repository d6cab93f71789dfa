//! What `/health/ready` judges: each source (polling? holding partitions?), each sink (its last
//! write or flush succeeded? how long have records waited to become durable?) and the watermark
//! (how far behind the freshest event time it stands). Sources and sinks report here as they
//! work (once per tick or flush, never per record); [`Health::readiness`] turns the reports into
//! the reasons the engine is not ready, if any.
//!
//! Lives in [`crate::engine_stats::EngineStats`], so it outlasts an engine restart: a restarting
//! engine reports its sources as starting again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// A source's state as it reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SourceState {
    /// Created, not reading yet.
    Starting,
    /// Reading; a Kafka source says how many partitions it holds.
    Running {
        /// Partitions held (Kafka), `None` for other sources.
        #[serde(skip_serializing_if = "Option::is_none")]
        partitions: Option<usize>,
    },
    /// Read to its end (a finite source): nothing more to judge.
    Ended,
}

/// One source's report.
#[derive(Clone, Debug, Serialize)]
pub struct SourceHealth {
    /// Its state.
    #[serde(flatten)]
    pub state: SourceState,
    /// Wall time of its last report, ns (a polling source reports every few ms).
    pub reported_wall_ns: i64,
}

/// One sink's report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SinkHealth {
    /// The last failure of a write or flush that has not succeeded since (the sink retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    /// Since when, wall ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since_wall_ns: Option<i64>,
    /// Wall time of its last durable flush, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_durable_wall_ns: Option<i64>,
    /// Since when records have waited to become durable (none waiting: `None`), wall ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_since_wall_ns: Option<i64>,
}

/// The bounds readiness is judged against.
#[derive(Clone, Copy, Debug)]
pub struct ReadyBounds {
    /// Records may wait this long to become durable, ns.
    pub max_commit_age_ns: i64,
    /// The watermark may stand this far behind the freshest event time, ns.
    pub max_watermark_lag_ns: i64,
    /// A running source reports at least this often, ns.
    pub max_report_age_ns: i64,
}

/// The engine's health reports.
#[derive(Debug, Default)]
pub struct Health {
    sources: Mutex<BTreeMap<String, SourceHealth>>,
    sinks: Mutex<BTreeMap<String, SinkHealth>>,
    /// Per input (its name): how far its watermark stands behind its freshest event time, ns.
    lags: Mutex<BTreeMap<String, i64>>,
    bounds: Mutex<Option<ReadyBounds>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    /// Sets the bounds (the engine does, from `[engine]`, as it starts).
    pub fn set_bounds(&self, b: ReadyBounds) {
        *lock(&self.bounds) = Some(b);
    }

    /// A source reports its state.
    pub fn source(&self, name: &str, state: SourceState, now_ns: i64) {
        let mut m = lock(&self.sources);
        match m.get_mut(name) {
            Some(s) => {
                s.state = state;
                s.reported_wall_ns = now_ns;
            }
            None => {
                m.insert(name.to_owned(), SourceHealth { state, reported_wall_ns: now_ns });
            }
        }
    }

    /// A sink is there (before its first flush).
    pub fn sink_started(&self, name: &str) {
        lock(&self.sinks).entry(name.to_owned()).or_default();
    }

    /// A sink's write or flush failed (it retries).
    pub fn sink_failing(&self, name: &str, error: &str, now_ns: i64) {
        let mut m = lock(&self.sinks);
        let s = m.entry(name.to_owned()).or_default();
        s.failing = Some(error.to_owned());
        s.failing_since_wall_ns.get_or_insert(now_ns);
    }

    /// A sink's write succeeded: whatever failed before works again.
    pub fn sink_writing(&self, name: &str, now_ns: i64) {
        let mut m = lock(&self.sinks);
        let s = m.entry(name.to_owned()).or_default();
        s.failing = None;
        s.failing_since_wall_ns = None;
        s.waiting_since_wall_ns.get_or_insert(now_ns);
    }

    /// A sink's flush made everything it held durable.
    pub fn sink_durable(&self, name: &str, now_ns: i64) {
        let mut m = lock(&self.sinks);
        let s = m.entry(name.to_owned()).or_default();
        s.failing = None;
        s.failing_since_wall_ns = None;
        s.last_durable_wall_ns = Some(now_ns);
        s.waiting_since_wall_ns = None;
    }

    /// An input's watermark lag.
    pub fn input_lag(&self, input: &str, lag_ns: i64) {
        lock(&self.lags).insert(input.to_owned(), lag_ns);
    }

    /// An input that went away (a revoked partition): no lag of its own any more.
    pub fn input_gone(&self, input: &str) {
        lock(&self.lags).remove(input);
    }

    /// Everything reported, for `/health/ready`'s body.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "sources": *lock(&self.sources),
            "sinks": *lock(&self.sinks),
            "watermark_lag_s": lock(&self.lags).iter().map(|(k, v)| (k.clone(), *v as f64 / 1e9)).collect::<BTreeMap<_, _>>(),
        })
    }

    /// Why the engine is not ready at `now_ns` (empty: ready). Without bounds (no engine has
    /// started yet): not ready.
    pub fn readiness(&self, now_ns: i64) -> Vec<String> {
        let Some(b) = *lock(&self.bounds) else { return vec!["the engine has not started".into()] };
        let mut why = Vec::new();
        let secs = |ns: i64| ns as f64 / 1e9;
        for (name, s) in lock(&self.sources).iter() {
            match s.state {
                SourceState::Starting => why.push(format!("source {name}: starting")),
                SourceState::Running { partitions: Some(0) } => why.push(format!("source {name}: no partitions assigned")),
                SourceState::Running { partitions: Some(_) } if now_ns - s.reported_wall_ns > b.max_report_age_ns => {
                    why.push(format!("source {name}: not polling (last report {:.1} s ago)", secs(now_ns - s.reported_wall_ns)))
                }
                _ => {}
            }
        }
        for (name, s) in lock(&self.sinks).iter() {
            if let Some(e) = &s.failing {
                let since = s.failing_since_wall_ns.map_or(0.0, |t| secs(now_ns - t));
                why.push(format!("sink {name}: failing for {since:.1} s: {e}"));
            } else if let Some(t) = s.waiting_since_wall_ns.filter(|t| now_ns - t > b.max_commit_age_ns) {
                why.push(format!("sink {name}: records have waited {:.1} s to become durable (bound {:.0} s)", secs(now_ns - t), secs(b.max_commit_age_ns)));
            }
        }
        for (input, lag) in lock(&self.lags).iter().filter(|(_, l)| **l > b.max_watermark_lag_ns) {
            why.push(format!("input {input}: watermark {:.1} s behind its data (bound {:.0} s)", secs(*lag), secs(b.max_watermark_lag_ns)));
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn readiness_names_every_reason_and_clears_when_they_go() {
        let h = Health::default();
        assert_eq!(h.readiness(0), vec!["the engine has not started".to_string()]);
        h.set_bounds(ReadyBounds { max_commit_age_ns: 30 * S, max_watermark_lag_ns: 60 * S, max_report_age_ns: 10 * S });
        h.source("ispm", SourceState::Starting, 0);
        h.sink_started("pg");
        assert_eq!(h.readiness(S), vec!["source ispm: starting".to_string()]);
        h.source("ispm", SourceState::Running { partitions: Some(0) }, S);
        assert_eq!(h.readiness(S), vec!["source ispm: no partitions assigned".to_string()]);
        h.source("ispm", SourceState::Running { partitions: Some(4) }, S);
        h.sink_writing("pg", S);
        assert!(h.readiness(2 * S).is_empty());
        h.sink_failing("pg", "connection refused", 3 * S);
        h.input_lag("ispm/0", 90 * S);
        let why = h.readiness(15 * S);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].starts_with("source ispm: not polling"), "{why:?}");
        assert_eq!(why[1], "sink pg: failing for 12.0 s: connection refused");
        assert!(why[2].starts_with("input ispm/0: watermark 90.0 s behind"), "{why:?}");
        h.source("ispm", SourceState::Running { partitions: Some(4) }, 15 * S);
        h.sink_durable("pg", 15 * S);
        h.input_lag("ispm/0", S);
        assert!(h.readiness(16 * S).is_empty());
        // Records that wait too long to become durable.
        h.sink_writing("pg", 6 * S);
        h.source("ispm", SourceState::Ended, 40 * S);
        assert_eq!(h.readiness(40 * S), vec!["sink pg: records have waited 34.0 s to become durable (bound 30 s)".to_string()]);
    }
}
