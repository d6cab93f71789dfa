//! What the HTTP sinks (`webhook`, `airflow`) share: the client, and what an answer means for
//! the record it carried.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;

/// A client with `headers` on every request and a per-request `timeout_ms`.
pub fn client(headers: &BTreeMap<String, String>, timeout_ms: u64) -> Result<reqwest::Client, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
        let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
        map.insert(name, value);
    }
    reqwest::Client::builder().default_headers(map).timeout(Duration::from_millis(timeout_ms)).build().map_err(|e| format!("http client: {e}"))
}

/// What an answer means for the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Taken (2xx).
    Taken,
    /// Worth asking again later: 408, 429, 5xx.
    Retry,
    /// Refused for good: any other status.
    Refused,
}

/// The meaning of `status` for a record.
pub fn answer(status: StatusCode) -> Answer {
    if status.is_success() {
        Answer::Taken
    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS {
        Answer::Retry
    } else {
        Answer::Refused
    }
}

/// Logs a record the receiver refused for good and counts it in `counter{sink,status}`.
pub async fn refused(counter: &'static str, sink: &str, key: &str, resp: reqwest::Response) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    tracing::warn!(sink = %sink, %key, %status, response = %text.chars().take(300).collect::<String>(), "the receiver refused the record for good; skipped");
    metrics::counter!(counter, "sink" => sink.to_owned(), "status" => status.as_u16().to_string()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(answer(StatusCode::OK), Answer::Taken);
        assert_eq!(answer(StatusCode::CREATED), Answer::Taken);
        assert_eq!(answer(StatusCode::SERVICE_UNAVAILABLE), Answer::Retry);
        assert_eq!(answer(StatusCode::TOO_MANY_REQUESTS), Answer::Retry);
        assert_eq!(answer(StatusCode::REQUEST_TIMEOUT), Answer::Retry);
        assert_eq!(answer(StatusCode::BAD_REQUEST), Answer::Refused);
        assert_eq!(answer(StatusCode::UNPROCESSABLE_ENTITY), Answer::Refused);
    }
}
