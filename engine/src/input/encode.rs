//! The decoder's inverse: writes a [`RecordBatch`] as JSON lines in the wire format the decoder
//! reads (blocks as `{"type":"block",...}`, layer events as `{"type":"layer",...}`, logs as
//! `{"type":"log",...}`). Used by `meltstream simulate`, the benches and the tests to feed the
//! simulator's output through the real decode path. It never drops or reorders a sample and
//! never writes dead letters.

use std::fmt::Write as _;

use crate::input::batch::{BlockHeader, RecordBatch, ABSENT, COL_X, COL_Y};
use crate::input::event::{Channel, LayerEvent, LayerPhase, LogRecord, NO_LAYER};

/// Writes a batch as JSON lines in the decoder's wire format (blocks as {"type":"block",...}, layer events as {"type":"layer",...}, logs as {"type":"log",...}); appends to `out`.
///
/// Records are merged by event time (logs, then layer events, then blocks at equal times).
/// Dead letters are not written.
pub fn write_json_lines(batch: &RecordBatch, out: &mut String) {
    let (mut bi, mut li, mut gi) = (0, 0, 0);
    loop {
        let kg = batch.logs.get(gi).map(|r| (r.t_ns, 0u8));
        let kl = batch.layers.get(li).map(|e| (e.t_ns, 1u8));
        let kb = batch.blocks.get(bi).map(|h| (h.t0_ns, 2u8));
        let Some((_, which)) = [kg, kl, kb].into_iter().flatten().min() else { break };
        match which {
            0 => {
                write_log(&batch.logs[gi], out);
                gi += 1;
            }
            1 => {
                write_layer(&batch.layers[li], out);
                li += 1;
            }
            _ => {
                write_block(batch, &batch.blocks[bi], out);
                bi += 1;
            }
        }
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn write_block(batch: &RecordBatch, h: &BlockHeader, out: &mut String) {
    let name = batch.builds.get(h.build as usize).map(|b| &**b).unwrap_or("");
    out.push_str("{\"type\":\"block\",");
    match name.strip_prefix("sensor:") {
        Some(sensor) if h.layer == NO_LAYER => {
            out.push_str("\"sensor_id\":");
            push_json_str(out, sensor);
        }
        _ => {
            out.push_str("\"build_id\":");
            push_json_str(out, name);
            if h.layer != NO_LAYER {
                let _ = write!(out, ",\"layer\":{}", h.layer);
            }
        }
    }
    let _ = write!(out, ",\"laser\":{},\"t0_ns\":{},\"dt_ns\":{}", h.laser, h.t0_ns, h.dt_ns);
    let names = Channel::ALL.iter().map(|c| (c.index(), c.name())).chain([(COL_X, "x_mm"), (COL_Y, "y_mm")]);
    for (slot, col) in names {
        if h.offsets[slot] == ABSENT {
            continue;
        }
        let Some(vals) = batch.column(h, slot) else { continue };
        let _ = write!(out, ",\"{col}\":[");
        for (i, v) in vals.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if v.is_finite() {
                let _ = write!(out, "{v}");
            } else {
                out.push_str("null");
            }
        }
        out.push(']');
    }
    out.push_str("}\n");
}

fn write_layer(e: &LayerEvent, out: &mut String) {
    let phase = match e.phase {
        LayerPhase::Start => "start",
        LayerPhase::End => "end",
        LayerPhase::RecoatStart => "recoat_start",
        LayerPhase::RecoatEnd => "recoat_end",
        LayerPhase::BuildEnd => "build_end",
    };
    out.push_str("{\"type\":\"layer\",\"build_id\":");
    push_json_str(out, &e.build);
    let _ = write!(out, ",\"layer\":{},\"phase\":\"{phase}\",\"t_ns\":{}", e.layer, e.t_ns);
    if let Some(z) = e.z_um {
        let _ = write!(out, ",\"z_um\":{z}");
    }
    if !e.params.is_empty() {
        out.push_str(",\"params\":[");
        for (i, p) in e.params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"laser\":{},\"style\":", p.laser);
            push_json_str(out, &p.style);
            out.push_str(",\"power_w\":");
            push_f64(out, p.power_w);
            out.push_str(",\"scan_speed_mm_s\":");
            push_f64(out, p.scan_speed_mm_s);
            out.push_str(",\"hatch_spacing_mm\":");
            push_f64(out, p.hatch_spacing_mm);
            out.push_str(",\"layer_thickness_um\":");
            push_f64(out, p.layer_thickness_um);
            out.push('}');
        }
        out.push(']');
    }
    out.push_str("}\n");
}

fn write_log(r: &LogRecord, out: &mut String) {
    out.push_str("{\"type\":\"log\",\"build_id\":");
    push_json_str(out, &r.build);
    let _ = write!(out, ",\"t_ns\":{},\"values\":{{", r.t_ns);
    for (i, (k, v)) in r.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, k);
        out.push(':');
        push_f64(out, *v);
    }
    out.push_str("}}\n");
}

/// The seed's one-event JSON message (DESIGN §1) `i` of a deterministic series with varying
/// builds, layers, times and temperatures: the input of the JSON decode benches.
pub fn seed_event_json(i: usize) -> String {
    format!(
        r#"{{"build_id": "build_{:03}", "layer": {}, "timestamp": "2024-01-15T10:30:{:02}.{:06}Z", "temperature": {:.1}, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}}"#,
        i % 50,
        45 + i / 20_000,
        (i / 1_000_000) % 60,
        i % 1_000_000,
        1600.0 + (i % 1000) as f64 * 0.1
    )
}
