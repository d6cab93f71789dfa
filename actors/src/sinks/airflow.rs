//! Airflow sink: one DAG run per chosen record (an anomaly, an SPC signal, a failed layer, a
//! build report), triggered through Airflow 3's REST API:
//! `POST {url}/api/v2/dags/{dag_id}/dagRuns` with `{"dag_run_id", "logical_date": null,
//! "conf": {"kind", "key", "record", "context"}}`, authorised by a bearer token from
//! `POST {url}/auth/token` (user and password from the topology, which takes them from the
//! environment).
//!
//! The run id is a function of the record's key ([`run_id`]), so a replay after a crash asks for
//! the same run again; Airflow answers 409 (the run exists), which counts as done: a record
//! starts one run, crash or not. A flush triggers what was written since the last one, in order:
//! - 200/201: triggered; 409: already triggered (by this process before a crash);
//! - 401: the token expired: a new one is fetched and the request sent again;
//! - 404 (the DAG is not parsed yet, or named wrong), 403, 408, 429, 5xx, a timeout, no
//!   connection: the flush fails as retryable; the sink actor retries with backoff, and
//!   `/health/ready` reports the sink failing meanwhile;
//! - any other status (400, 422: Airflow refuses the request for good): logged, counted in
//!   `meltstream_airflow_refused_total{sink,status}` and skipped.

use std::collections::VecDeque;

use meltstream_engine::records::{Emitted, OutputRecord};
use meltstream_engine::topology::AirflowSinkConfig;
use reqwest::StatusCode;

use crate::progress::Checkpoint;
use crate::sinks::http::{self, Answer};
use crate::sinks::writer::{SinkError, SinkWriter};

/// Longest run id Airflow stores.
const MAX_RUN_ID: usize = 250;

/// The DAG run id of the record with `key`: `<prefix>__<key, with every character Airflow does
/// not allow in a run id as `_`>__<16 hex digits of FNV-1a of the key>`. The hash keeps apart
/// two keys that differ only where characters were replaced; the id stays within 250 characters.
pub fn run_id(prefix: &str, key: &str) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '~' | ':' | '+' | '-') { c } else { '_' }).collect::<String>();
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let prefix = clean(&prefix.chars().take(100).collect::<String>());
    let mut body = clean(key);
    body.truncate(MAX_RUN_ID - prefix.len() - 2 - 2 - 16);
    format!("{prefix}__{body}__{hash:016x}")
}

/// Test hook: with `MELTSTREAM_FAULT_ABORT_AFTER_AIRFLOW_RUNS=n`, the process aborts right after
/// Airflow took the n-th run this process triggered: the runs exist, the progress that covers
/// their records is not stored yet, so a restart triggers them again. `tests/airflow_sink.rs`
/// uses it. Only in builds with the `fault-injection` feature (the tests'), never in a release
/// binary.
#[cfg(feature = "fault-injection")]
fn fault_abort_after(n: u64) {
    crate::sinks::writer::fault_abort_at("MELTSTREAM_FAULT_ABORT_AFTER_AIRFLOW_RUNS", n, "after a triggered DAG run");
}

/// Triggers a DAG run per record.
pub struct AirflowSink {
    name: String,
    /// Runs triggered by this process (the fault hook counts them).
    triggered: u64,
    config: AirflowSinkConfig,
    client: reqwest::Client,
    token: Option<String>,
    /// (run id, request body) of the runs not triggered yet, in order.
    queue: VecDeque<(String, Vec<u8>)>,
}

impl AirflowSink {
    /// A sink for `config` (URL and credentials expanded).
    pub fn new(name: &str, mut config: AirflowSinkConfig) -> Result<AirflowSink, String> {
        while config.url.ends_with('/') {
            config.url.pop();
        }
        if config.username.is_empty() || config.password.is_empty() {
            return Err("no Airflow credentials: set username and password (by default ${AIRFLOW_USERNAME} and ${AIRFLOW_PASSWORD})".into());
        }
        let client = http::client(&Default::default(), config.timeout_ms)?;
        Ok(AirflowSink { name: name.to_owned(), triggered: 0, config, client, token: None, queue: VecDeque::new() })
    }

    fn takes(&self, r: &OutputRecord) -> bool {
        match r {
            OutputRecord::LayerVerdict(v) => self.config.verdicts.contains(&v.verdict),
            _ => true,
        }
    }

    fn retry(&self, message: String) -> SinkError {
        SinkError::Retryable { sink: self.name.clone(), message }
    }

    /// A bearer token, fetched when there is none.
    async fn token(&mut self) -> Result<String, SinkError> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let url = format!("{}/auth/token", self.config.url);
        let body = serde_json::json!({"username": self.config.username, "password": self.config.password});
        let resp = self.client.post(&url).json(&body).send().await.map_err(|e| self.retry(format!("POST {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(self.retry(format!("POST {url}: {status} {}", text.chars().take(200).collect::<String>())));
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| self.retry(format!("POST {url}: {e}")))?;
        let Some(t) = v.get("access_token").and_then(|t| t.as_str()) else {
            return Err(self.retry(format!("POST {url}: no access_token in the answer")));
        };
        self.token = Some(t.to_owned());
        Ok(t.to_owned())
    }
}

impl SinkWriter for AirflowSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        for e in records {
            if !self.takes(&e.record) {
                continue;
            }
            let key = e.record.key();
            let id = run_id(&self.config.run_id_prefix, &key);
            let mut conf = crate::sinks::webhook::body(&e.record, &key);
            conf["context"] = serde_json::json!(self.config.context);
            let request = serde_json::json!({"dag_run_id": id, "logical_date": null, "conf": conf, "note": format!("meltstream {key}")});
            let body = serde_json::to_vec(&request).map_err(|err| SinkError::Fatal { sink: self.name.clone(), message: err.to_string() })?;
            self.queue.push_back((id, body));
        }
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        let url = format!("{}/api/v2/dags/{}/dagRuns", self.config.url, self.config.dag_id);
        let mut renewed = false;
        while let Some((id, body)) = self.queue.front().cloned() {
            let token = self.token().await?;
            let sent = self.client.post(&url).bearer_auth(&token).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await;
            let resp = sent.map_err(|e| self.retry(format!("POST {url} ({id}): {e}")))?;
            let status = resp.status();
            match status {
                StatusCode::UNAUTHORIZED if !renewed => {
                    // Expired: once per flush, a new token and the same request again.
                    self.token = None;
                    renewed = true;
                    continue;
                }
                StatusCode::CONFLICT => {
                    // Triggered before a crash, whose progress did not cover the record yet.
                    tracing::info!(sink = %self.name, run_id = %id, "the DAG run exists already; not triggered again");
                    metrics::counter!("meltstream_airflow_runs_existing_total", "sink" => self.name.clone()).increment(1);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                    self.token = None;
                    let text = resp.text().await.unwrap_or_default();
                    return Err(self.retry(format!("POST {url} ({id}): {status} {}", text.chars().take(200).collect::<String>())));
                }
                _ => match http::answer(status) {
                    Answer::Taken => {
                        metrics::counter!("meltstream_airflow_runs_triggered_total", "sink" => self.name.clone()).increment(1);
                        self.triggered += 1;
                        #[cfg(feature = "fault-injection")]
                        fault_abort_after(self.triggered);
                    }
                    Answer::Retry => return Err(self.retry(format!("POST {url} ({id}): {status}"))),
                    Answer::Refused => http::refused("meltstream_airflow_refused_total", &self.name, &id, resp).await,
                },
            }
            self.queue.pop_front();
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_stable_allowed_and_distinct() {
        let a = run_id("demo", "anomaly/sim-001/hot_spot/1/1700000000000000000");
        assert_eq!(a, run_id("demo", "anomaly/sim-001/hot_spot/1/1700000000000000000"), "a function of the key");
        assert!(a.starts_with("demo__anomaly_sim-001_hot_spot_1_1700000000000000000__"), "{a}");
        let b = run_id("demo", "anomaly/sim_001/hot_spot/1/1700000000000000000");
        assert_ne!(a, b, "keys that differ only in replaced characters stay apart");
        let long = run_id(&"p".repeat(300), &"k/é".repeat(400));
        assert!(long.len() <= MAX_RUN_ID, "{}", long.len());
        for id in [&a, &b, &long] {
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "_.~:+-".contains(c)), "{id}");
        }
    }
}
