//! The operator's dashboard, served by the admin server (`src/admin.rs`) at `/`: static pages
//! built into the binary (`src/dashboard/assets/`, no build step), the read-only JSON API behind
//! them (`/api/…`, [`api`]) and the live event stream (`/api/events`, [`events`]).
//! `docs/dashboard.md` documents the routes.
//!
//! Reads only what the engine publishes ([`EngineStats`]: counters, the live view, the gauges)
//! and, for layers older than the live view keeps, the results store. Never writes anything
//! but a browser session.
//!
//! # Authentication
//! Off loopback the API asks for the bearer token. A browser cannot put a header on an
//! `EventSource`, so the page trades the token once for a session cookie: `POST /api/session`
//! with `Authorization: Bearer <token>` sets `meltstream_session` (random, `HttpOnly`,
//! `SameSite=Strict`, 12 h), which the API then takes in place of the header. The token never
//! goes into a URL, a log line or the page's storage.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};

use meltstream_actors::engine_stats::EngineStats;
use meltstream_actors::sinks::results_store::ResultsStore;

mod api;
mod events;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "meltstream_session";
/// A session's lifetime.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 64;

/// Browser sessions opened with the bearer token.
#[derive(Default)]
pub struct Sessions {
    ids: Mutex<VecDeque<(String, Instant)>>,
}

impl Sessions {
    /// Opens a session: its id, 32 random bytes in hex.
    fn open(&self) -> std::io::Result<String> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.retain(|(_, t)| t.elapsed() < SESSION_TTL);
        while ids.len() >= MAX_SESSIONS {
            ids.pop_front();
        }
        ids.push_back((id.clone(), Instant::now()));
        Ok(id)
    }

    /// True when `id` names an open session.
    pub fn valid(&self, id: &str) -> bool {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        // Compared in full whatever the first difference (no early exit on a prefix).
        ids.iter().any(|(s, t)| t.elapsed() < SESSION_TTL && s.len() == id.len() && s.bytes().zip(id.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
    }
}

/// True for what any client may fetch: the page and its assets (they hold no data).
pub fn is_public(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

/// What the dashboard's handlers share.
pub struct Dashboard {
    /// The engine's counters, live view and gauges.
    pub stats: Arc<EngineStats>,
    /// The topology's results store, for layers the live view no longer keeps.
    pub store: Option<ResultsStore>,
    /// Browser sessions.
    pub sessions: Arc<Sessions>,
    /// Per build: when its samples were last counted, how many, and the rate then (samples/s).
    rates: Mutex<BTreeMap<String, (Instant, u64, f64)>>,
}

impl Dashboard {
    /// A dashboard over `stats`.
    pub fn new(stats: Arc<EngineStats>, store: Option<ResultsStore>, sessions: Arc<Sessions>) -> Dashboard {
        Dashboard { stats, store, sessions, rates: Mutex::new(BTreeMap::new()) }
    }

    /// `build`'s samples per second, over at least the last second.
    fn rate(&self, build: &str, samples: u64) -> f64 {
        let mut m = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match m.get_mut(build) {
            None => {
                m.insert(build.to_owned(), (now, samples, 0.0));
                0.0
            }
            Some((t, n, r)) => {
                let dt = now.duration_since(*t).as_secs_f64();
                if dt >= 1.0 {
                    *r = samples.saturating_sub(*n) as f64 / dt;
                    *t = now;
                    *n = samples;
                }
                *r
            }
        }
    }
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        web::get().to(|| async { HttpResponse::Ok().content_type($type).insert_header(("Cache-Control", "no-cache")).body(include_str!(concat!("dashboard/assets/", $name))) })
    };
}

/// Adds the dashboard's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", asset!("index.html", "text/html; charset=utf-8"))
        .route("/assets/app.js", asset!("app.js", "text/javascript; charset=utf-8"))
        .route("/assets/charts.js", asset!("charts.js", "text/javascript; charset=utf-8"))
        .route("/assets/style.css", asset!("style.css", "text/css; charset=utf-8"))
        .route("/api/session", web::post().to(open_session))
        .route("/api/fleet", web::get().to(api::fleet))
        .route("/api/builds/{id}", web::get().to(api::build))
        .route("/api/builds/{id}/layers/{layer}/grid", web::get().to(api::grid))
        .route("/api/builds/{id}/spc", web::get().to(api::spc))
        .route("/api/alerts", web::get().to(api::alerts))
        .route("/api/engine", web::get().to(api::engine))
        .route("/api/events", web::get().to(events::stream));
}

/// `POST /api/session`: reached only with the bearer token (the admin server checked it) or
/// on loopback; sets the session cookie.
async fn open_session(d: web::Data<Dashboard>) -> HttpResponse {
    match d.sessions.open() {
        Ok(id) => HttpResponse::NoContent().insert_header(("Set-Cookie", format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs()))).finish(),
        Err(e) => HttpResponse::InternalServerError().body(format!("cannot open a session: {e}\n")),
    }
}
