//! `GET /api/events`: the dashboard's live feed as server-sent events (`text/event-stream`).
//!
//! Once a second it looks at the live view: a `fleet` event when anything changed, one `alert`
//! event per new alert (its `id` is the alert's number, so a reconnecting `EventSource` resumes
//! with `Last-Event-ID`), an `engine` event every other second, and a comment every 15 s of
//! silence (proxies close idle streams). Nothing is queued per client: a client that reads
//! slowly holds only its own stream, which polls the shared state when it is read.
//!
//! # Shutdown
//! A stream ends when its client goes away (actix drops it) or the admin server stops.

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};

use super::api::{engine_json, fleet_json};
use super::Dashboard;

struct Cursor {
    d: web::Data<Dashboard>,
    after: u64,
    version: Option<u64>,
    ticks: u64,
    quiet: u64,
}

fn event(out: &mut String, name: &str, id: Option<u64>, data: &serde_json::Value) {
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
}

async fn next(mut c: Cursor) -> Option<(Result<Bytes, std::convert::Infallible>, Cursor)> {
    if c.ticks > 0 {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    }
    c.ticks += 1;
    let mut out = String::new();
    if c.ticks == 1 {
        out.push_str("retry: 2000\n\n");
    }
    let v = c.d.stats.live.version();
    if c.version != Some(v) || c.ticks % 2 == 1 {
        // Also every other second unchanged: samples/s and the current layer move without results.
        c.version = Some(v);
        event(&mut out, "fleet", None, &fleet_json(&c.d));
    }
    for a in c.d.stats.live.alerts_after(c.after) {
        c.after = a.seq;
        event(&mut out, "alert", Some(a.seq), &serde_json::json!(a));
    }
    if c.ticks % 2 == 1 {
        event(&mut out, "engine", None, &engine_json(&c.d));
    }
    if out.is_empty() {
        c.quiet += 1;
        if c.quiet >= 15 {
            c.quiet = 0;
            out.push_str(": keepalive\n\n");
        }
    } else {
        c.quiet = 0;
    }
    Some((Ok(Bytes::from(out)), c))
}

/// `GET /api/events[?after=<alert seq>]`: alerts after `Last-Event-ID` (a reconnect), else after
/// `after` (what the page fetched from `/api/alerts`), else only new ones.
pub async fn stream(d: web::Data<Dashboard>, req: HttpRequest, q: web::Query<std::collections::HashMap<String, String>>) -> HttpResponse {
    let resume = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
    let after = resume.or_else(|| q.get("after").and_then(|s| s.parse().ok())).unwrap_or_else(|| d.stats.live.last_alert_seq());
    let cursor = Cursor { d, after, version: None, ticks: 0, quiet: 0 };
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::stream::unfold(cursor, next))
}
