//! The HTTP admin API (actix-web, on its own thread and runtime), read-only:
//! - `/health/live` (also `/health`): the process answers;
//! - `/health/ready`: 200 when every source polls and holds partitions, every sink writes, no
//!   record waits too long to become durable and no watermark lags too far; else 503 with the
//!   reasons (docs/operations.md, "Health");
//! - `/metrics` (Prometheus text), `/builds` (live per-build counters as JSON);
//! - `/` and `/api/…`: the operator's dashboard ([`crate::dashboard`], docs/dashboard.md).
//!
//! Bound to loopback by default. On any other address, every route but `/health/live` and the
//! dashboard's static page asks for `Authorization: Bearer <token>` with the token from
//! `MELTSTREAM_ADMIN_TOKEN` (or a session cookie the page obtained with it), and the engine does
//! not start without one.

use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use meltstream_actors::engine_stats::EngineStats;
use meltstream_actors::sinks::results_store::ResultsStore;

use crate::dashboard::{self, Dashboard, Sessions};

/// The environment variable holding the admin API's bearer token.
pub const TOKEN_ENV: &str = "MELTSTREAM_ADMIN_TOKEN";

/// Installs the Prometheus recorder for the `metrics` crate.
pub fn install_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// The token a request must carry on `addr`: none on loopback; on any other address the one in
/// [`TOKEN_ENV`], which must then be set.
fn required_token(addr: &std::net::SocketAddr) -> anyhow::Result<Option<String>> {
    if addr.ip().is_loopback() {
        return Ok(None);
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.is_empty() => Ok(Some(t)),
        _ => anyhow::bail!("admin_addr {addr} is not loopback: set {TOKEN_ENV} to the bearer token the admin API must ask for"),
    }
}

fn ready(stats: &EngineStats) -> HttpResponse {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let reasons = stats.health.readiness(now);
    let body = serde_json::json!({"ready": reasons.is_empty(), "reasons": reasons, "status": stats.health.snapshot()});
    if reasons.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// True when `req` may be answered: a public path, or the token (header or session) when one is
/// required.
fn allowed(req: &actix_web::dev::ServiceRequest, expected: Option<&str>, sessions: &Sessions) -> bool {
    let Some(want) = expected else { return true };
    req.path() == "/health/live"
        || dashboard::is_public(req.path())
        || req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(want)
        || req.headers().get_all("cookie").filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).filter_map(|c| c.trim().split_once('=')).any(|(k, v)| k == dashboard::SESSION_COOKIE && sessions.valid(v))
}

/// Serves the admin API on `addr` in a background thread; the dashboard reads past layers from
/// `store` when there is one.
pub fn serve(addr: &str, prom: Option<PrometheusHandle>, stats: Arc<EngineStats>, store: Option<ResultsStore>) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let token = required_token(&addr)?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("admin_addr {addr}: {e}"))?;
    // The first line a user sees.
    println!("dashboard: http://{addr}/  (health: /health/ready, metrics: /metrics)");
    std::thread::Builder::new().name("admin-api".into()).spawn(move || {
        let sys = actix_web::rt::System::new();
        let res = sys.block_on(async move {
            let prom = web::Data::new(prom);
            let sessions = Arc::new(Sessions::default());
            let dash = web::Data::new(Dashboard::new(stats.clone(), store, sessions.clone()));
            let stats = web::Data::new(stats);
            let expected = token.map(|t| format!("Bearer {t}"));
            HttpServer::new(move || {
                let expected = expected.clone();
                let sessions = sessions.clone();
                App::new()
                    .app_data(prom.clone())
                    .app_data(stats.clone())
                    .app_data(dash.clone())
                    .wrap_fn(move |req, srv| {
                        let call = if allowed(&req, expected.as_deref(), &sessions) { Ok(srv.call(req)) } else { Err(req) };
                        async move {
                            match call {
                                Ok(f) => f.await.map(ServiceResponse::map_into_left_body),
                                Err(req) => Ok(req.into_response(HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Bearer")).body("a bearer token is required\n")).map_into_right_body()),
                            }
                        }
                    })
                    .configure(dashboard::configure)
                    .route("/health", web::get().to(|| async { HttpResponse::Ok().body("ok\n") }))
                    .route("/health/live", web::get().to(|| async { HttpResponse::Ok().body("ok\n") }))
                    .route("/health/ready", web::get().to(|s: web::Data<Arc<EngineStats>>| async move { ready(&s) }))
                    .route(
                        "/metrics",
                        web::get().to(|p: web::Data<Option<PrometheusHandle>>| async move {
                            HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(p.as_ref().as_ref().map(|h| h.render()).unwrap_or_default())
                        }),
                    )
                    .route(
                        "/builds",
                        web::get().to(|s: web::Data<Arc<EngineStats>>| async move {
                            let builds: serde_json::Map<String, serde_json::Value> = s
                                .builds()
                                .into_iter()
                                .map(|(b, c)| {
                                    (b, serde_json::json!({"layer": c.layer, "samples": c.samples, "anomalies": c.anomalies, "late_samples": c.late_samples, "layers_closed": c.layers_closed}))
                                })
                                .collect();
                            HttpResponse::Ok().json(builds)
                        }),
                    )
            })
            .workers(1)
            .listen(listener)?
            .run()
            .await
        });
        if let Err(e) = res {
            tracing::error!(error = %e, "admin API stopped");
        }
    })?;
    Ok(())
}
