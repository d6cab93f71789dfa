//! Webhook sink: each record POSTed as JSON (`{"kind", "key", "record"}`) to a URL, in order,
//! with an `Idempotency-Key` header the receiver deduplicates on.
//!
//! The key is `<key_prefix>/<record key>` (`anomaly/<build>/<rule>/<laser>/<event time>`, …):
//! a function of the record, so a replay after a crash sends the same key again; delivery is at
//! least once, and exactly once for a receiver that honours the key. A flush posts what was
//! written since the last one:
//! - 2xx: delivered;
//! - 408, 429, 5xx, a timeout, no connection: the flush fails as retryable, and the sink actor
//!   retries with backoff from the first record not delivered (the ones delivered are not posted
//!   again in this run);
//! - any other status (the receiver refuses the record for good): logged, counted in
//!   `meltstream_webhook_refused_total{sink,status}`, and skipped, so that one record never
//!   halts the pipeline.

use std::time::Duration;

use meltstream_engine::records::{Emitted, OutputRecord};
use meltstream_engine::topology::WebhookSinkConfig;

use crate::progress::Checkpoint;
use crate::sinks::writer::{SinkError, SinkWriter};

/// Posts records to a URL.
pub struct WebhookSink {
    name: String,
    config: WebhookSinkConfig,
    client: reqwest::Client,
    /// (idempotency key, body) of the records not delivered yet, in order.
    queue: std::collections::VecDeque<(String, Vec<u8>)>,
}

/// The body of one post.
pub fn body(r: &OutputRecord, key: &str) -> serde_json::Value {
    let kind = r.kind().name();
    serde_json::json!({"kind": kind, "key": key, "record": r})
}

impl WebhookSink {
    /// A sink for `config` (URL and headers expanded).
    pub fn new(name: &str, config: WebhookSinkConfig) -> Result<WebhookSink, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(WebhookSink { name: name.to_owned(), config, client, queue: Default::default() })
    }
}

impl SinkWriter for WebhookSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        for e in records {
            let key = format!("{}/{}", self.config.key_prefix, e.record.key());
            let body = serde_json::to_vec(&body(&e.record, &key)).map_err(|err| SinkError::Fatal { sink: self.name.clone(), message: err.to_string() })?;
            self.queue.push_back((key, body));
        }
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        while let Some((key, body)) = self.queue.front() {
            let sent = self
                .client
                .post(&self.config.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", key.as_str())
                .body(body.clone())
                .send()
                .await;
            let retry = |what: String| SinkError::Retryable { sink: self.name.clone(), message: what };
            match sent {
                Err(e) => return Err(retry(format!("POST {} ({key}): {e}", self.config.url))),
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        metrics::counter!("meltstream_webhook_posts_total", "sink" => self.name.clone()).increment(1);
                    } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                        return Err(retry(format!("POST {} ({key}): {status}", self.config.url)));
                    } else {
                        let text = resp.text().await.unwrap_or_default();
                        tracing::warn!(sink = %self.name, %key, %status, response = %text.chars().take(200).collect::<String>(), "the webhook refused the record; skipped");
                        metrics::counter!("meltstream_webhook_refused_total", "sink" => self.name.clone(), "status" => status.as_u16().to_string()).increment(1);
                    }
                }
            }
            self.queue.pop_front();
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.queue.clear();
    }
}
