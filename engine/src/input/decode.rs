//! JSON decoding of source records into a [`RecordBatch`]: the seed's single-sample messages
//! (with `build_id`/`layer`, or with `sensor_id`/`pressure`), 1 ms sample blocks, layer events
//! and machine-log records.
//!
//! Decoding never panics on any bytes: a record that cannot be used becomes a [`DeadLetter`]
//! naming its reason, and the rest of the batch is unaffected. It allocates per record, never
//! per sample.
//!
//! A record up to [`FLAT_MAX_BYTES`] is first tried on the hand-written flat parser
//! ([`crate::input::flat_parser`]); whatever it declines goes through serde_json into the same
//! [`Wire`] record, so both paths validate alike here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::input::batch::{BlockColumns, RecordBatch};
use crate::input::event::{BuildId, Channel, InputId, LayerEvent, LogRecord, TimeNs, MAX_BUILD_ID_BYTES, MAX_LAYER, N_CHANNELS, NO_LAYER};
use crate::input::flat_parser::{parse_flat, FLAT_MAX_BYTES};
use crate::input::reject::{DeadLetter, RejectReason};
use crate::input::time::parse_rfc3339_ns;
use crate::input::wire::Wire;

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest accepted record in bytes.
    pub max_record_bytes: usize,
    /// Largest accepted block length in samples.
    pub max_block_samples: usize,
    /// How far ahead of the wall clock an event time may be, in ns.
    pub max_future_ns: i64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_record_bytes: 1 << 20, max_block_samples: 100_000, max_future_ns: 86_400 * 1_000_000_000 }
    }
}

/// Decodes JSON records into batches; keeps the interned build ids.
#[derive(Debug)]
pub struct Decoder {
    input: InputId,
    limits: DecodeLimits,
    builds: HashMap<String, BuildId>,
    /// The last build interned: a partition keyed by build mostly repeats it.
    last: Option<BuildId>,
}

impl Decoder {
    /// A decoder for records of `input`.
    pub fn new(input: InputId, limits: DecodeLimits) -> Decoder {
        Decoder { input, limits, builds: HashMap::new(), last: None }
    }

    /// The interned id of `name`.
    pub fn intern(&mut self, name: &str) -> BuildId {
        if let Some(b) = self.last.as_ref().filter(|b| &***b == name) {
            return b.clone();
        }
        if let Some(b) = self.builds.get(name) {
            self.last = Some(b.clone());
            return b.clone();
        }
        if self.builds.len() > 100_000 {
            // A cache, not a registry: an attacker naming endless builds must not grow it forever.
            self.builds.clear();
        }
        let b: BuildId = Arc::from(name);
        self.builds.insert(name.to_owned(), b.clone());
        self.last = Some(b.clone());
        b
    }

    /// Decodes one record at `offset` into `batch`; a rejected record becomes a dead letter in
    /// `batch.dead`. `now_ns` is the wall clock, for the future-timestamp check.
    pub fn decode(&mut self, raw: &[u8], offset: u64, now_ns: TimeNs, batch: &mut RecordBatch) {
        batch.records += 1;
        if let Err(reason) = self.decode_inner(raw, offset, now_ns, batch) {
            batch.dead.push(DeadLetter::new(self.input, offset, reason, raw));
        }
    }

    fn decode_inner(&mut self, raw: &[u8], offset: u64, now_ns: TimeNs, batch: &mut RecordBatch) -> Result<(), RejectReason> {
        if raw.len() > self.limits.max_record_bytes {
            return Err(RejectReason::TooLarge { bytes: raw.len(), limit: self.limits.max_record_bytes });
        }
        // The seed's flat one-sample messages take a hand-written path; anything it does not
        // handle exactly as serde would (escapes, arrays, other fields, wrong types, duplicates,
        // malformed JSON) falls back to serde_json, which also words the errors.
        let mut w = Wire::default();
        if raw.len() > FLAT_MAX_BYTES || !parse_flat(raw, &mut w) {
            w = serde_json::from_slice(raw).map_err(|e| {
                if e.is_data() {
                    RejectReason::Schema(e.to_string())
                } else {
                    RejectReason::Json(e.to_string())
                }
            })?;
        }
        let t_ns = match (&w.timestamp, w.t_ns, w.t0_ns) {
            (Some(ts), None, None) => {
                parse_rfc3339_ns(ts).ok_or_else(|| RejectReason::Schema(format!("`timestamp` is not RFC 3339: {ts:?}")))?
            }
            (None, Some(t), None) | (None, None, Some(t)) => t,
            (None, None, None) => return Err(RejectReason::Schema("missing `timestamp` (or `t_ns`/`t0_ns`)".into())),
            _ => return Err(RejectReason::Schema("give exactly one of `timestamp`, `t_ns`, `t0_ns`".into())),
        };
        if t_ns > now_ns.saturating_add(self.limits.max_future_ns) {
            return Err(RejectReason::Future {
                t: crate::input::time::format_rfc3339(t_ns),
                max_future_s: self.limits.max_future_ns / 1_000_000_000,
            });
        }
        let layer = match w.layer {
            Some(l) if l < 0 => return Err(RejectReason::Range(format!("`layer` must be ≥ 0, got {l}"))),
            Some(l) if l > i64::from(MAX_LAYER) => {
                return Err(RejectReason::Range(format!("`layer` {l} is above {MAX_LAYER}, the largest every sink can store (a PostgreSQL int)")))
            }
            Some(l) => Some(l as u32),
            None => None,
        };
        let laser = match w.laser {
            Some(l) if !(0..=64).contains(&l) => return Err(RejectReason::Range(format!("`laser` must be 0..=64, got {l}"))),
            Some(l) => l as u8,
            None => 0,
        };
        let build = match (&w.build_id, &w.sensor_id) {
            (Some(b), _) if b.is_empty() => return Err(RejectReason::Schema("`build_id` is empty".into())),
            (Some(b), _) if b.len() > MAX_BUILD_ID_BYTES => {
                return Err(RejectReason::Range(format!("`build_id` of {} bytes is longer than {MAX_BUILD_ID_BYTES}", b.len())))
            }
            (Some(b), _) => self.intern(b),
            (None, Some(s)) if s.len() + "sensor:".len() > MAX_BUILD_ID_BYTES => {
                return Err(RejectReason::Range(format!("`sensor_id` of {} bytes is longer than {}", s.len(), MAX_BUILD_ID_BYTES - "sensor:".len())))
            }
            (None, Some(s)) => self.intern(&format!("sensor:{s}")),
            (None, None) => return Err(RejectReason::Schema("missing `build_id` (or `sensor_id`)".into())),
        };
        match w.kind.as_deref() {
            None | Some("sample") | Some("block") => self.samples(&w, build, layer, laser, t_ns, offset, batch),
            Some("layer") => {
                let phase = w.phase.ok_or_else(|| RejectReason::Schema("layer event without `phase`".into()))?;
                let layer = layer.ok_or_else(|| RejectReason::Schema("layer event without `layer`".into()))?;
                let params = w.params.unwrap_or_default();
                for p in &params {
                    let vals = [p.power_w, p.scan_speed_mm_s, p.hatch_spacing_mm, p.layer_thickness_um];
                    if vals.iter().any(|v| !v.is_finite() || *v < 0.0) {
                        return Err(RejectReason::Range(format!("laser {} parameters must be finite and ≥ 0", p.laser)));
                    }
                }
                batch.push_layer(LayerEvent { build, layer, phase, t_ns, z_um: w.z_um, params, source_offset: offset });
                Ok(())
            }
            Some("log") => {
                let values = w.values.ok_or_else(|| RejectReason::Schema("log record without `values`".into()))?;
                let mut vals: Vec<(Arc<str>, f64)> = Vec::with_capacity(values.len());
                for (k, v) in values {
                    if !v.is_finite() {
                        return Err(RejectReason::Range(format!("log value `{k}` is not finite")));
                    }
                    vals.push((Arc::from(k.as_str()), v));
                }
                vals.sort_by(|a, b| a.0.cmp(&b.0));
                batch.push_log(LogRecord { build, t_ns, values: vals, source_offset: offset });
                Ok(())
            }
            Some(other) => Err(RejectReason::Schema(format!("unknown record type {other:?}; expected sample, block, layer or log"))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn samples(
        &mut self,
        w: &Wire<'_>,
        build: BuildId,
        layer: Option<u32>,
        laser: u8,
        t_ns: TimeNs,
        offset: u64,
        batch: &mut RecordBatch,
    ) -> Result<(), RejectReason> {
        let layer = match (layer, &w.build_id) {
            (Some(l), _) => l,
            (None, None) => NO_LAYER,
            (None, Some(_)) => return Err(RejectReason::Schema("sample without `layer`".into())),
        };
        // Seed scalars: scan_speed is in m/s on the wire; everything downstream is mm/s.
        let seed = [
            (Channel::TemperatureC, w.temperature.map(|v| v as f32)),
            (Channel::LaserPowerW, w.laser_power.map(|v| v as f32)),
            (Channel::ScanSpeedMmS, w.scan_speed.map(|v| (v * 1000.0) as f32)),
            (Channel::HatchSpacingMm, w.hatch_spacing.map(|v| v as f32)),
            (Channel::PressureMbar, w.pressure.map(|v| v as f32)),
        ];
        let mut seed_buf = [(Channel::TemperatureC, 0f32); 5];
        let mut n_seed = 0;
        for (c, v) in seed {
            if let Some(v) = v {
                seed_buf[n_seed] = (c, v);
                n_seed += 1;
            }
        }
        let seed_vals = &seed_buf[..n_seed];
        let named = [
            (Channel::TemperatureC, &w.temperature_c),
            (Channel::PhotodiodeOnAxis, &w.photodiode_on_axis),
            (Channel::PhotodiodeOffAxis, &w.photodiode_off_axis),
            (Channel::LaserPowerW, &w.laser_power_w),
            (Channel::ScanSpeedMmS, &w.scan_speed_mm_s),
            (Channel::HatchSpacingMm, &w.hatch_spacing_mm),
            (Channel::PressureMbar, &w.pressure_mbar),
        ];
        let mut cols = BlockColumns::default();
        let mut len: Option<usize> = None;
        let mut check = |name: &str, v: &[f32]| -> Result<(), RejectReason> {
            match len {
                None => len = Some(v.len()),
                Some(l) if l != v.len() => {
                    return Err(RejectReason::Range(format!("column `{name}` has {} values, expected {l}", v.len())))
                }
                _ => {}
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(RejectReason::Range(format!("column `{name}` value {i} is not finite")));
            }
            Ok(())
        };
        for (c, v) in named {
            if let Some(v) = v {
                if seed_vals.iter().any(|(sc, _)| *sc == c) {
                    return Err(RejectReason::Schema(format!("`{}` given twice (short and unit-suffixed names)", c.name())));
                }
                check(c.name(), v.as_slice())?;
                cols.channels[c.index()] = Some(v.as_slice());
            }
        }
        for (c, v) in seed_vals {
            check(c.name(), std::slice::from_ref(v))?;
        }
        if let Some(x) = &w.x_mm {
            check("x_mm", x.as_slice())?;
            cols.x_mm = Some(x.as_slice());
        }
        if let Some(y) = &w.y_mm {
            check("y_mm", y.as_slice())?;
            cols.y_mm = Some(y.as_slice());
        }
        if let Some(f) = &w.flags {
            if len.is_some_and(|l| l != f.len()) {
                return Err(RejectReason::Range(format!("`flags` has {} values, expected {len:?}", f.len())));
            }
        }
        let Some(n) = len.filter(|n| *n > 0) else {
            return Err(RejectReason::Schema("a sample record carries no channel values".into()));
        };
        if n > self.limits.max_block_samples {
            return Err(RejectReason::Range(format!("block of {n} samples exceeds {}", self.limits.max_block_samples)));
        }
        let dt_ns = w.dt_ns.unwrap_or(0);
        if n > 1 && dt_ns <= 0 {
            return Err(RejectReason::Range("a block of several samples needs `dt_ns` > 0".into()));
        }
        // The last sample's time must be a time too (every sink stores times as i64 ns).
        if dt_ns.checked_mul(n as i64 - 1).and_then(|d| t_ns.checked_add(d)).is_none() {
            return Err(RejectReason::Range(format!("a block of {n} samples every {dt_ns} ns from {t_ns} ns ends beyond the year 2262")));
        }
        if seed_vals.is_empty() {
            batch.push_block(&build, layer, laser, t_ns, dt_ns, n as u32, cols, offset);
        } else {
            // Scalars live on this stack frame; copy them into owned one-element columns.
            let mut owned = [0f32; N_CHANNELS];
            for (c, v) in seed_vals {
                owned[c.index()] = *v;
            }
            let mut cols2 = cols;
            for (c, _) in seed_vals {
                cols2.channels[c.index()] = Some(std::slice::from_ref(&owned[c.index()]));
            }
            batch.push_block(&build, layer, laser, t_ns, dt_ns, n as u32, cols2, offset);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: TimeNs = 1_800_000_000_000_000_000;

    fn decode(s: &str) -> RecordBatch {
        let mut d = Decoder::new(0, DecodeLimits::default());
        let mut b = RecordBatch::with_capacity(16);
        d.decode(s.as_bytes(), 7, NOW, &mut b);
        b
    }

    #[test]
    fn seed_example_as_written() {
        let b = decode(
            r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00Z",
 "temperature": 1650.5, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}"#,
        );
        assert!(b.dead.is_empty(), "{:?}", b.dead);
        let h = b.blocks[0];
        assert_eq!((&*b.builds[0], h.layer, h.len), ("build_001", 45, 1));
        assert_eq!(b.column(&h, Channel::TemperatureC.index()), Some(&[1650.5f32][..]));
        assert_eq!(b.column(&h, Channel::ScanSpeedMmS.index()), Some(&[1200.0f32][..]));
        assert_eq!(h.t0_ns, 1_705_314_600_000_000_000);
    }

    #[test]
    fn seed_sensor_variant() {
        let b = decode(r#"{"sensor_id": "pyro_3", "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5, "pressure": 1013.2}"#);
        assert!(b.dead.is_empty(), "{:?}", b.dead);
        assert_eq!(&*b.builds[0], "sensor:pyro_3");
        assert_eq!(b.blocks[0].layer, NO_LAYER);
        assert_eq!(b.column(&b.blocks[0], Channel::PressureMbar.index()), Some(&[1013.2f32][..]));
    }

    #[test]
    fn block_and_layer_and_log() {
        let b = decode(r#"{"type":"block","build_id":"b","layer":3,"laser":2,"t0_ns":1000,"dt_ns":10000,"x_mm":[1,2],"y_mm":[3,4],"photodiode_on_axis":[10,11],"laser_power_w":[200,201]}"#);
        assert!(b.dead.is_empty(), "{:?}", b.dead);
        assert_eq!(b.blocks[0].len, 2);
        assert_eq!(b.max_t_ns, 11_000);
        let b = decode(r#"{"type":"layer","build_id":"b","layer":3,"phase":"start","t_ns":5,"z_um":90,"params":[{"laser":1,"power_w":200,"scan_speed_mm_s":1000,"hatch_spacing_mm":0.1,"layer_thickness_um":30}]}"#);
        assert!(b.dead.is_empty(), "{:?}", b.dead);
        assert_eq!(b.layers[0].params[0].style, "core");
        let b = decode(r#"{"type":"log","build_id":"b","t_ns":5,"values":{"o2_ppm":120.5}}"#);
        assert!(b.dead.is_empty(), "{:?}", b.dead);
        assert_eq!(b.logs[0].values[0].1, 120.5);
    }

    #[test]
    fn rejects_with_reasons() {
        let cases = [
            (r#"{"build_id": "b", "layer": 4"#, "invalid_json"),
            (r#"{"build_id": "b", "layer": "four", "timestamp": "2024-01-15T10:30:00Z", "temperature": 1}"#, "wrong_schema"),
            (r#"{"build_id": "b", "layer": NaN, "timestamp": "2024-01-15T10:30:00Z", "temperature": 1}"#, "invalid_json"),
            (r#"{"build_id": "b", "layer": -1, "timestamp": "2024-01-15T10:30:00Z", "temperature": 1}"#, "out_of_range"),
            (r#"{"build_id":"b1","layer":3000000000,"timestamp":"2024-01-15T10:30:00.001Z","temperature":1750.5}"#, "out_of_range"),
            (r#"{"type":"block","build_id":"b","layer":3,"t0_ns":1,"dt_ns":9000000000000000000,"photodiode_on_axis":[10,11,12]}"#, "out_of_range"),
            (r#"{"build_id": "b", "layer": 1, "timestamp": "2024-01-15T10:30:00Z", "temperature": 1, "colour": 3}"#, "wrong_schema"),
            (r#"{"build_id": "b", "layer": 1, "timestamp": "2999-01-15T10:30:00Z", "temperature": 1}"#, "future_timestamp"),
            (r#"{"build_id": "b", "layer": 1, "timestamp": "2024-01-15T10:30:00Z"}"#, "wrong_schema"),
            (r#"{"type":"block","build_id":"b","layer":3,"t0_ns":1,"dt_ns":10,"x_mm":[1,2],"photodiode_on_axis":[10]}"#, "out_of_range"),
        ];
        for (raw, label) in cases {
            let b = decode(raw);
            assert_eq!(b.dead.len(), 1, "{raw}");
            assert_eq!(b.dead[0].reason.label(), label, "{raw}: {}", b.dead[0].reason);
            assert_eq!(b.dead[0].offset, 7);
            assert!(b.blocks.is_empty());
        }
        let big = format!(r#"{{"build_id":"b","pad":"{}"}}"#, "x".repeat(10 << 20));
        assert_eq!(decode(&big).dead[0].reason.label(), "too_large");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let mut d = Decoder::new(0, DecodeLimits::default());
            let mut b = RecordBatch::with_capacity(4);
            d.decode(&bytes, 0, NOW, &mut b);
            proptest::prop_assert_eq!(b.dead.len() + usize::from(!b.is_empty()), 1);
        }

        #[test]
        fn never_panics_on_json_like(s in r#"\{("[a-z_]{1,12}": ?(-?[0-9]{1,4}(\.[0-9])?|"[a-zA-Z0-9:\-T]{0,24}"|\[[0-9, ]{0,12}\]|null),? ?){0,8}\}"#) {
            let mut d = Decoder::new(0, DecodeLimits::default());
            let mut b = RecordBatch::with_capacity(4);
            d.decode(s.as_bytes(), 0, NOW, &mut b);
            proptest::prop_assert_eq!(b.dead.len() + usize::from(!b.is_empty()), 1);
        }
    }
}
