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

use meltstream_engine::records::{Emitted, OutputRecord};
use meltstream_engine::topology::WebhookSinkConfig;

use crate::progress::Checkpoint;
use crate::sinks::http::{self, Answer};
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
        let client = http::client(&config.headers, config.timeout_ms)?;
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
                Ok(resp) => match http::answer(resp.status()) {
                    Answer::Taken => metrics::counter!("meltstream_webhook_posts_total", "sink" => self.name.clone()).increment(1),
                    Answer::Retry => return Err(retry(format!("POST {} ({key}): {}", self.config.url, resp.status()))),
                    Answer::Refused => http::refused("meltstream_webhook_refused_total", &self.name, key, resp).await,
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
