//! The dashboard's JSON API (read-only; `docs/dashboard.md`): the fleet, one build, a layer's
//! map, SPC charts, alerts, the engine. Each answer is built from what the engine published last;
//! only a layer older than the live view keeps, and CT defects, are read from the results store.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use meltstream_actors::engine_stats::{EngineStats, LatencyKind, LatencyStage};

use super::Dashboard;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// The fleet: one entry per build the engine has seen.
pub fn fleet_json(d: &Dashboard) -> Value {
    let live = d.stats.live.builds();
    let details: Vec<Value> = d
        .stats
        .builds()
        .into_iter()
        .map(|(id, c)| {
            let rate = d.rate(&id, c.samples);
            let l = live.get(&id);
            let (verdict, quality) = d.stats.live.latest(&id);
            let verdict = verdict.map_or(Value::Null, |(layer, v)| json!({"layer": layer, "value": v}));
            let quality = quality.map_or(Value::Null, |(layer, q)| json!({"layer": layer, "value": q}));
            json!({
                "build_id": id,
                "machine": l.and_then(|l| l.machine.clone()),
                "layer": c.layer,
                "layers_closed": c.layers_closed,
                "samples": c.samples,
                "samples_per_s": rate,
                "anomalies": c.anomalies,
                "late_samples": c.late_samples,
                "verdict": verdict,
                "data_quality": quality,
                "ended": l.is_some_and(|l| l.ended),
            })
        })
        .collect();
    json!({"builds": details, "watermark_ns": d.stats.watermark_ns.load(std::sync::atomic::Ordering::Relaxed), "time_ns": now_ns()})
}

/// `GET /api/fleet`.
pub async fn fleet(d: web::Data<Dashboard>) -> HttpResponse {
    HttpResponse::Ok().json(fleet_json(&d))
}

/// `GET /api/builds/{id}`.
pub async fn build(d: web::Data<Dashboard>, id: web::Path<String>) -> HttpResponse {
    match d.stats.live.build_detail(&id) {
        Some(mut b) => {
            if let Some(c) = d.stats.builds().get(id.as_str()) {
                b["samples"] = json!(c.samples);
                b["layer"] = json!(c.layer);
            }
            b["store"] = json!(d.store.is_some());
            HttpResponse::Ok().json(b)
        }
        None => HttpResponse::NotFound().json(json!({"error": format!("no live results for build {id}")})),
    }
}

/// `GET /api/builds/{id}/layers/{layer}/grid`: the live map, else the stored one; with the
/// anomalies placed on it and the CT defects fused into that layer (from the store).
pub async fn grid(d: web::Data<Dashboard>, path: web::Path<(String, u32)>) -> HttpResponse {
    let (id, layer) = path.into_inner();
    let (mut body, source) = match d.stats.live.grid(&id, layer) {
        Some((g, placed)) => {
            let cells: Vec<[f64; 3]> = g.cells.iter().map(|c| [f64::from(c.ix), f64::from(c.iy), c.mean]).collect();
            (json!({"channel": g.channel, "cell_mm": g.cell_mm, "cells_per_side": g.cells_per_side, "revision": g.revision, "cells": cells, "anomalies": placed}), "live")
        }
        None => match stored_grid(&d, &id, layer).await {
            Ok(Some(v)) => (v, "store"),
            Ok(None) => return HttpResponse::NotFound().json(json!({"error": format!("no grid map of build {id} layer {layer}")})),
            Err(e) => return HttpResponse::ServiceUnavailable().json(json!({"error": e})),
        },
    };
    body["build_id"] = json!(id);
    body["layer"] = json!(layer);
    body["source"] = json!(source);
    body["ct_defects"] = json!(ct_defects(&d, &id, layer).await);
    HttpResponse::Ok().json(body)
}

/// A layer's map as the store holds it (its last revision), with its positioned anomalies.
async fn stored_grid(d: &Dashboard, id: &str, layer: u32) -> Result<Option<Value>, String> {
    let Some(store) = &d.store else { return Ok(None) };
    let ev = store.read_evidence(id).await?;
    let Some(g) = ev.grids.iter().filter(|g| g.layer == layer).max_by_key(|g| g.revision) else { return Ok(None) };
    let side = g.cells.iter().map(|c| c.ix.max(c.iy) + 1).max().unwrap_or(1);
    let side = d.stats.live.grid_side(id).unwrap_or(side).max(side);
    let cells: Vec<[f64; 3]> = g.cells.iter().map(|c| [f64::from(c.ix), f64::from(c.iy), c.mean]).collect();
    let placed: Vec<Value> = ev
        .anomalies
        .iter()
        .filter(|a| a.layer == Some(layer))
        .filter_map(|a| Some(json!({"rule": a.rule, "value": a.value, "x_mm": a.x_mm?, "y_mm": a.y_mm?})))
        .take(meltstream_actors::live_view::ANOMALIES_PER_LAYER)
        .collect();
    Ok(Some(json!({"channel": null, "cell_mm": g.cell_mm, "cells_per_side": side, "revision": g.revision, "cells": cells, "anomalies": placed})))
}

/// The CT defects fused into `layer` of `id` (none without a store or a fusion).
async fn ct_defects(d: &Dashboard, id: &str, layer: u32) -> Vec<Value> {
    let Some(store) = &d.store else { return Vec::new() };
    let rows = store.records(id, "fused_defects").await.unwrap_or_default();
    rows.iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .filter(|f| f["layer"].as_u64() == Some(u64::from(layer)))
        .map(|f| json!({"defect_id": f["defect"]["defect_id"], "x_mm": f["defect"]["x_mm"], "y_mm": f["defect"]["y_mm"], "diameter_um": f["defect"]["diameter_um"], "type": f["defect"]["defect_type"], "detected": f["detected"]}))
        .collect()
}

/// `GET /api/builds/{id}/spc`.
pub async fn spc(d: web::Data<Dashboard>, id: web::Path<String>) -> HttpResponse {
    match d.stats.live.spc(&id) {
        Some(v) => HttpResponse::Ok().json(v),
        None => HttpResponse::NotFound().json(json!({"error": format!("no live results for build {id}")})),
    }
}

/// `GET /api/alerts?after=<seq>`.
pub async fn alerts(d: web::Data<Dashboard>, q: web::Query<std::collections::HashMap<String, String>>) -> HttpResponse {
    let after = q.get("after").and_then(|s| s.parse().ok()).unwrap_or(0);
    HttpResponse::Ok().json(json!({"alerts": d.stats.live.alerts_after(after), "last_seq": d.stats.live.last_alert_seq()}))
}

macro_rules! quantiles_ms {
    ($h:expr) => {
        match $h {
            Some(h) => json!({"count": h.len(), "p50_ms": h.value_at_quantile(0.5) as f64 / 1e3, "p99_ms": h.value_at_quantile(0.99) as f64 / 1e3}),
            None => Value::Null,
        }
    };
}

/// The engine: queues and credits, memory budget, watermark and lags, sinks, restarts, dead
/// letters.
pub fn engine_json(d: &Dashboard) -> Value {
    let s = &d.stats;
    let queues: serde_json::Map<String, Value> = s.gauges.queues().into_iter().map(|(b, (depth, cap))| (b, json!({"depth": depth, "capacity": cap, "credits": cap - depth.min(cap)}))).collect();
    let memory: Vec<Value> = s.gauges.budget().into_iter().map(|(stage, used, cap)| json!({"stage": stage, "in_use_kib": used, "share_kib": cap})).collect();
    let health = s.health.snapshot();
    let sinks: serde_json::Map<String, Value> = s
        .gauges
        .sink_commits()
        .into_iter()
        .map(|(name, (n, p50, p99, max))| {
            let state = health["sinks"].get(&name).cloned().unwrap_or(Value::Null);
            (name, json!({"flushes": n, "commit_p50_ms": p50 as f64 / 1e3, "commit_p99_ms": p99 as f64 / 1e3, "commit_max_ms": max as f64 / 1e3, "health": state}))
        })
        .collect();
    let wm = s.watermark_ns.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "queues": queues,
        "memory_budget": memory,
        "watermark_ns": wm,
        "watermark_lag_s": health["watermark_lag_s"],
        "consumer_lag": s.gauges.consumer_lags(),
        "committed_offsets": s.committed(),
        "sinks": sinks,
        "sources": health["sources"],
        "restarts": EngineStats::get(&s.restarts),
        "samples": EngineStats::get(&s.samples),
        "records_durable": EngineStats::get(&s.records_durable),
        "dropped_batches": EngineStats::get(&s.dropped_batches),
        "dead_letters": EngineStats::get(&s.dead_letters),
        "dead_letters_by_reason": s.live.dead_letters_by_reason(),
        "latency": {
            "alert_durable": quantiles_ms!(s.latencies(LatencyKind::Alert, LatencyStage::Durable)),
            "window_close_durable": quantiles_ms!(s.latencies(LatencyKind::WindowClose, LatencyStage::Durable)),
        },
        "not_ready": s.health.readiness(now_ns()),
        "time_ns": now_ns(),
    })
}

/// `GET /api/engine`.
pub async fn engine(d: web::Data<Dashboard>) -> HttpResponse {
    HttpResponse::Ok().json(engine_json(&d))
}
