//! The HTTP admin API (actix-web, on its own thread and runtime): `/health`, `/metrics`
//! (Prometheus text), `/builds` (live per-build counters as JSON).

use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use meltstream_actors::engine_stats::EngineStats;

/// Installs the Prometheus recorder for the `metrics` crate.
pub fn install_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// Serves the admin API on `addr` in a background thread.
pub fn serve(addr: &str, prom: Option<PrometheusHandle>, stats: Arc<EngineStats>) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let listener = std::net::TcpListener::bind(addr)?;
    std::thread::Builder::new().name("admin-api".into()).spawn(move || {
        let sys = actix_web::rt::System::new();
        let res = sys.block_on(async move {
            let prom = web::Data::new(prom);
            let stats = web::Data::new(stats);
            HttpServer::new(move || {
                App::new()
                    .app_data(prom.clone())
                    .app_data(stats.clone())
                    .route("/health", web::get().to(|| async { HttpResponse::Ok().body("ok\n") }))
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
