//! Redis sink: the live state of each build for dashboards and other services, and its alerts
//! on a pub/sub channel (the seed's real-time counters). Each flush runs the buffered commands
//! in one MULTI/EXEC.
//!
//! Keys (`p` = `key_prefix`):
//! - `p:builds`: set of build ids;
//! - `p:build:<id>`: hash `layer` and `window_end` (the newest layer summarised), `verdict`,
//!   `verdict_layer`, `data_quality` (of the newest judged layer), `anomalies` (count), `state`
//!   (`running`, `ended`) and, once ended, `layers_ok`, `layers_warn`, `layers_fail`;
//! - `p:build:<id>:verdicts`: hash layer → verdict;
//! - `p:build:<id>:anomalies`: sorted set of the build's alerts (member: the record's key,
//!   score: its event time in ms).
//!
//! Exactly once in effect: a replay after a crash writes the same values again. The layer
//! fields only move forward (a late revision of an older layer leaves them), and an alert is
//! counted and published only when its key is new to the build's set, so a replayed alert is
//! neither counted nor published twice. An ended build's keys expire after `ENDED_TTL_S`.

use meltstream_engine::records::{Emitted, OutputRecord};
use meltstream_engine::topology::RedisSinkConfig;

use crate::progress::Checkpoint;
use crate::sinks::writer::{SinkError, SinkWriter};

/// Seconds an ended build's keys are kept.
pub const ENDED_TTL_S: u64 = 7 * 24 * 3600;

/// HSET the fields ARGV[3..] of KEYS[1] only when field ARGV[1] moves forward to ARGV[2].
const FORWARD: &str = "local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1') \
    if tonumber(ARGV[2]) >= cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3)) end return 0";

/// Adds alert ARGV[2] (score ARGV[1]) to KEYS[1]; when it is new, counts it in KEYS[2] and
/// publishes ARGV[4] on channel ARGV[3].
const ALERT: &str = "if redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) == 1 then \
    redis.call('HINCRBY', KEYS[2], 'anomalies', 1) redis.call('PUBLISH', ARGV[3], ARGV[4]) end return 0";

/// Writes build state and alerts to Redis.
pub struct RedisSink {
    name: String,
    config: RedisSinkConfig,
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    pipe: redis::Pipeline,
    queued: usize,
}

impl RedisSink {
    /// A sink for `config` (the URL expanded); connects on its first flush.
    pub fn new(name: &str, config: RedisSinkConfig) -> Result<RedisSink, String> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| format!("redis url {:?}: {e}", config.url))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        Ok(RedisSink { name: name.to_owned(), config, client, conn: None, pipe, queued: 0 })
    }

    fn key(&self, build: &str) -> String {
        format!("{}:build:{build}", self.config.key_prefix)
    }

    fn forward(&mut self, build: &str, field: &str, at: i64, rest: &[(&str, String)]) {
        let key = self.key(build);
        let cmd = self.pipe.cmd("EVAL").arg(FORWARD).arg(1).arg(key).arg(field).arg(at);
        for (f, v) in rest {
            cmd.arg(*f).arg(v);
        }
        cmd.ignore();
    }

    fn queue(&mut self, r: &OutputRecord) -> Result<(), SinkError> {
        let p = self.config.key_prefix.clone();
        let build = match r {
            OutputRecord::LayerSummary(s) => &s.build_id,
            OutputRecord::LayerVerdict(v) => &v.build_id,
            OutputRecord::DataQuality(q) => &q.build_id,
            OutputRecord::BuildReport(b) => &b.build_id,
            OutputRecord::Anomaly(a) => &a.build_id,
            _ => return Ok(()),
        }
        .clone();
        let key = self.key(&build);
        self.pipe.cmd("SADD").arg(format!("{p}:builds")).arg(&build).ignore();
        self.pipe.cmd("HSETNX").arg(&key).arg("state").arg("running").ignore();
        match r {
            OutputRecord::LayerSummary(s) => self.forward(&build, "layer", i64::from(s.layer), &[("window_end", s.window_end.clone())]),
            OutputRecord::LayerVerdict(v) => {
                self.pipe.cmd("HSET").arg(format!("{key}:verdicts")).arg(v.layer).arg(&v.verdict).ignore();
                let mut rest = vec![("verdict", v.verdict.clone())];
                if let Some(q) = v.data_quality {
                    rest.push(("data_quality", format!("{q:.4}")));
                }
                self.forward(&build, "verdict_layer", i64::from(v.layer), &rest);
            }
            OutputRecord::DataQuality(q) => self.forward(&build, "data_quality_layer", i64::from(q.layer), &[("data_quality", format!("{:.4}", q.score))]),
            OutputRecord::BuildReport(b) => {
                self.pipe
                    .cmd("HSET")
                    .arg(&key)
                    .arg("state")
                    .arg("ended")
                    .arg("layers_ok")
                    .arg(b.layers_ok)
                    .arg("layers_warn")
                    .arg(b.layers_warn)
                    .arg("layers_fail")
                    .arg(b.layers_fail)
                    .ignore();
                for k in [key.clone(), format!("{key}:verdicts"), format!("{key}:anomalies")] {
                    self.pipe.cmd("EXPIRE").arg(k).arg(ENDED_TTL_S).ignore();
                }
            }
            OutputRecord::Anomaly(a) => {
                let member = r.key();
                let body = serde_json::json!({"key": member, "anomaly": a}).to_string();
                self.pipe
                    .cmd("EVAL")
                    .arg(ALERT)
                    .arg(2)
                    .arg(format!("{key}:anomalies"))
                    .arg(&key)
                    .arg(a.time_ns / 1_000_000)
                    .arg(&member)
                    .arg(&self.config.channel)
                    .arg(body)
                    .ignore();
            }
            _ => {}
        }
        self.queued += 1;
        Ok(())
    }

    fn retryable(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError::Retryable { sink: self.name.clone(), message: format!("{what}: {e}") }
    }
}

impl SinkWriter for RedisSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        for e in records {
            self.queue(&e.record)?;
        }
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        if self.queued == 0 {
            return Ok(());
        }
        if self.conn.is_none() {
            let c = self.client.get_multiplexed_async_connection().await.map_err(|e| self.retryable(&format!("cannot connect to {}", self.config.url), e))?;
            self.conn = Some(c);
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        match self.pipe.query_async::<()>(conn).await {
            Ok(()) => {
                self.pipe.clear();
                self.queued = 0;
                Ok(())
            }
            Err(e) => {
                // The transaction did not run (or its outcome is unknown: every command in it
                // can run twice). Connect again for the retry.
                self.conn = None;
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
                    Err(self.retryable("MULTI/EXEC failed", e))
                } else {
                    Err(SinkError::Fatal { sink: self.name.clone(), message: format!("MULTI/EXEC failed: {e}") })
                }
            }
        }
    }

    fn discard(&mut self) {
        self.pipe.clear();
        self.queued = 0;
    }
}
