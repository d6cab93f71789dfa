//! The HTTP admin API (actix-web, on its own thread and runtime), read-only:
//! - `/health/live` (also `/health`): the process answers;
//! - `/health/ready`: 200 when every source polls and holds partitions, every sink writes, no
//!   record waits too long to become durable and no watermark lags too far; else 503 with the
//!   reasons (docs/operations.md, "Health");
//! - `/metrics` (Prometheus text), `/builds` (live per-build counters as JSON).
//!
//! Bound to loopback by default. On any other address, every route but `/health/live` asks for
//! `Authorization: Bearer <token>` with the token from `MELTSTREAM_ADMIN_TOKEN`, and the engine
//! does not start without one.

use std::sync::Arc;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use meltstream_actors::engine_stats::EngineStats;

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

/// Serves the admin API on `addr` in a background thread.
pub fn serve(addr: &str, prom: Option<PrometheusHandle>, stats: Arc<EngineStats>) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let token = required_token(&addr)?;
    let listener = std::net::TcpListener::bind(addr)?;
    std::thread::Builder::new().name("admin-api".into()).spawn(move || {
        let sys = actix_web::rt::System::new();
        let res = sys.block_on(async move {
            let prom = web::Data::new(prom);
            let stats = web::Data::new(stats);
            let expected = token.map(|t| format!("Bearer {t}"));
            HttpServer::new(move || {
                let expected = expected.clone();
                App::new()
                    .app_data(prom.clone())
                    .app_data(stats.clone())
                    .wrap_fn(move |req, srv| {
                        let allowed = req.path() == "/health/live"
                            || expected.as_deref().is_none_or(|want| req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(want));
                        let call = if allowed { Ok(srv.call(req)) } else { Err(req) };
                        async move {
                            match call {
                                Ok(f) => f.await.map(ServiceResponse::map_into_left_body),
                                Err(req) => Ok(req.into_response(HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Bearer")).body("a bearer token is required\n")).map_into_right_body()),
                            }
                        }
                    })
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
