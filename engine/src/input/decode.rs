//! JSON decoding of source records into a [`RecordBatch`]: the seed's single-sample messages
//! (with `build_id`/`layer`, or with `sensor_id`/`pressure`), 1 ms sample blocks, layer events
//! and machine-log records.
//!
//! Decoding never panics on any bytes: a record that cannot be used becomes a [`DeadLetter`]
//! naming its reason, and the rest of the batch is unaffected. It allocates per record, never
//! per sample.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::input::batch::{BlockColumns, InputId, RecordBatch};
use crate::input::event::{BuildId, Channel, LaserParams, LayerEvent, LayerPhase, LogRecord, TimeNs, N_CHANNELS};
use crate::input::time::parse_rfc3339_ns;

/// Layer index used for records that name no layer (the seed's sensor messages): they feed
/// time windows and rules but no layer window.
pub const NO_LAYER: u32 = u32::MAX;

/// Why a record was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RejectReason {
    /// Not JSON at all, or truncated.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON, but not a record meltstream knows (missing or unknown fields, wrong types).
    #[error("wrong schema: {0}")]
    Schema(String),
    /// A value outside its domain (negative layer, non-finite number, mismatched block columns).
    #[error("out of range: {0}")]
    Range(String),
    /// Larger than the configured record limit.
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the record.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Event time further in the future than the configured skew allows.
    #[error("timestamp {t} is more than {max_future_s} s ahead of the wall clock")]
    Future {
        /// The offending time, RFC 3339.
        t: String,
        /// The allowed skew in seconds.
        max_future_s: i64,
    },
    /// The record made an actor fail; it was set aside so that it cannot fail it again.
    #[error("poison record: {0}")]
    Poison(String),
    /// A layer `end` for a build with no open layer: its first record, or one for a build
    /// whose layers are all closed.
    #[error("unknown build: {0}")]
    UnknownBuild(String),
    /// A layer `end` for a layer of a known build that has no open window: never started and
    /// without samples, or already final.
    #[error("unknown layer: {0}")]
    UnknownLayer(String),
}

impl RejectReason {
    /// A short stable label for metrics (`reason` label).
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::Json(_) => "invalid_json",
            RejectReason::Schema(_) => "wrong_schema",
            RejectReason::Range(_) => "out_of_range",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::Future { .. } => "future_timestamp",
            RejectReason::Poison(_) => "poison",
            RejectReason::UnknownBuild(_) => "unknown_build",
            RejectReason::UnknownLayer(_) => "unknown_layer",
        }
    }
}

/// A rejected record, with where it came from and why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Input it came from.
    pub input: InputId,
    /// Source offset (line number, Kafka offset).
    pub offset: u64,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The first bytes of the record, lossily as UTF-8 (at most [`DEAD_LETTER_PREFIX`] bytes).
    pub raw_prefix: String,
}

/// How much of a rejected record is kept in its dead letter.
pub const DEAD_LETTER_PREFIX: usize = 512;

impl DeadLetter {
    /// A dead letter for `raw` at `offset`.
    pub fn new(input: InputId, offset: u64, reason: RejectReason, raw: &[u8]) -> DeadLetter {
        let cut = raw.len().min(DEAD_LETTER_PREFIX);
        DeadLetter { input, offset, reason, raw_prefix: String::from_utf8_lossy(&raw[..cut]).into_owned() }
    }
}

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

/// One JSON record as it is on the wire; every kind shares it so that unknown fields are refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    build_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sensor_id: Option<Cow<'a, str>>,
    layer: Option<i64>,
    laser: Option<i64>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    t_ns: Option<i64>,
    // single-sample fields (seed names, and names with units)
    temperature: Option<f64>,
    temperature_c: Option<Vec1<f32>>,
    laser_power: Option<f64>,
    laser_power_w: Option<Vec1<f32>>,
    scan_speed: Option<f64>,
    scan_speed_mm_s: Option<Vec1<f32>>,
    hatch_spacing: Option<f64>,
    hatch_spacing_mm: Option<Vec1<f32>>,
    pressure: Option<f64>,
    pressure_mbar: Option<Vec1<f32>>,
    photodiode_on_axis: Option<Vec1<f32>>,
    photodiode_off_axis: Option<Vec1<f32>>,
    x_mm: Option<Vec1<f32>>,
    y_mm: Option<Vec1<f32>>,
    // blocks
    t0_ns: Option<i64>,
    dt_ns: Option<i64>,
    flags: Option<Vec<u8>>,
    // layer events
    phase: Option<LayerPhase>,
    z_um: Option<i64>,
    params: Option<Vec<LaserParams>>,
    // machine log
    values: Option<HashMap<String, f64>>,
}

/// A number or an array of numbers: single samples carry scalars, blocks carry arrays.
///
/// Deserialized by hand: serde's `untagged` would first copy the whole array into its generic
/// `Content` tree (an allocation per number) and then try each variant in turn, which made
/// decoding a block several times slower.
enum Vec1<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de> Deserialize<'de> for Vec1<f32> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec1<f32>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or an array of numbers")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Vec1::One(v as f32))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Vec1::One(v as f32))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Vec1::One(v as f32))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(128).min(4096));
                while let Some(x) = seq.next_element::<f32>()? {
                    v.push(x);
                }
                Ok(Vec1::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Messages up to this size are tried on the flat path first.
const FLAT_MAX_BYTES: usize = 256 << 10;

/// Parses a flat JSON object of the seed's one-sample shape or of a sample block (string,
/// number and number-array values of the keys below, no escapes) into `w`: false whenever
/// serde's result could differ, so that the caller falls back to serde_json (and overwrites
/// `w`). One pass, no generic field dispatch, no `Option` wrapper per field.
fn parse_flat<'a>(raw: &'a [u8], w: &mut Wire<'a>) -> bool {
    parse_flat_inner(raw, w).is_some()
}

/// Sets a field read once; a second occurrence (which serde refuses) or a value of the wrong
/// type is `None`.
fn once<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v?);
    Some(())
}

fn parse_flat_inner<'a>(raw: &'a [u8], w: &mut Wire<'a>) -> Option<()> {
    let mut p = Flat { b: raw, i: 0 };
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if p.peek()? == b'}' {
        return None;
    }
    loop {
        let key = p.raw_string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        match key {
            b"type" => once(&mut w.kind, p.str_value().map(Cow::Borrowed))?,
            b"build_id" => once(&mut w.build_id, p.str_value().map(Cow::Borrowed))?,
            b"sensor_id" => once(&mut w.sensor_id, p.str_value().map(Cow::Borrowed))?,
            b"timestamp" => once(&mut w.timestamp, p.str_value().map(Cow::Borrowed))?,
            b"layer" => once(&mut w.layer, p.int())?,
            b"laser" => once(&mut w.laser, p.int())?,
            b"t_ns" => once(&mut w.t_ns, p.int())?,
            b"t0_ns" => once(&mut w.t0_ns, p.int())?,
            b"dt_ns" => once(&mut w.dt_ns, p.int())?,
            b"temperature" => once(&mut w.temperature, p.float())?,
            b"laser_power" => once(&mut w.laser_power, p.float())?,
            b"scan_speed" => once(&mut w.scan_speed, p.float())?,
            b"hatch_spacing" => once(&mut w.hatch_spacing, p.float())?,
            b"pressure" => once(&mut w.pressure, p.float())?,
            b"temperature_c" => once(&mut w.temperature_c, p.column())?,
            b"photodiode_on_axis" => once(&mut w.photodiode_on_axis, p.column())?,
            b"photodiode_off_axis" => once(&mut w.photodiode_off_axis, p.column())?,
            b"laser_power_w" => once(&mut w.laser_power_w, p.column())?,
            b"scan_speed_mm_s" => once(&mut w.scan_speed_mm_s, p.column())?,
            b"hatch_spacing_mm" => once(&mut w.hatch_spacing_mm, p.column())?,
            b"pressure_mbar" => once(&mut w.pressure_mbar, p.column())?,
            b"x_mm" => once(&mut w.x_mm, p.column())?,
            b"y_mm" => once(&mut w.y_mm, p.column())?,
            _ => return None,
        }
        p.ws();
        match p.next()? {
            b',' => p.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    p.ws();
    (p.i == raw.len()).then_some(())
}

/// The cursor of [`parse_flat`].
struct Flat<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Flat<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// The bytes of a string without escapes or control characters (keys: compared as bytes).
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => return None,
                c if c < 0x20 => return None,
                _ => {}
            }
        }
        Some(&self.b[start..self.i - 1])
    }

    /// A string value, checked as UTF-8 (serde refuses invalid UTF-8 too).
    fn str_value(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        std::str::from_utf8(self.raw_string()?).ok()
    }

    /// Decimal digits: their count (at most 19 kept in `acc`, the rest only counted).
    fn digits(&mut self, acc: &mut u64) -> usize {
        let s = self.i;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            *acc = acc.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            self.i += 1;
        }
        self.i - s
    }

    /// A JSON number token, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as (negative,
    /// significant digits, their count, decimal exponent, integral): the value is
    /// `±digits × 10^exponent`. `None` for anything else, or when it does not end where a value
    /// ends.
    fn number(&mut self) -> Option<(bool, u64, usize, i32, bool)> {
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let mut m = 0u64;
        let int_digits = match self.peek()? {
            b'0' => {
                self.i += 1;
                1
            }
            b'1'..=b'9' => self.digits(&mut m),
            _ => return None,
        };
        let (mut frac_digits, mut exp, mut integral) = (0usize, 0i32, true);
        if self.peek() == Some(b'.') {
            self.i += 1;
            integral = false;
            frac_digits = self.digits(&mut m);
            if frac_digits == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            integral = false;
            let eneg = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    true
                }
                Some(b'+') => {
                    self.i += 1;
                    false
                }
                _ => false,
            };
            let mut e = 0u64;
            let n = self.digits(&mut e);
            if n == 0 {
                return None;
            }
            // Far out of any range we take; the caller falls back.
            let e = if n > 6 { 1_000_000 } else { e as i32 };
            exp = if eneg { -e } else { e };
        }
        if !matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']')) {
            return None;
        }
        Some((neg, m, int_digits + frac_digits, exp - frac_digits as i32, integral))
    }

    /// A block column: a number or an array of numbers, each read as `f32` the way serde does
    /// (the exact `f64`, then rounded once to `f32`).
    fn column(&mut self) -> Option<Vec1<f32>> {
        if self.peek()? != b'[' {
            return Some(Vec1::One(self.float()? as f32));
        }
        self.i += 1;
        self.ws();
        let mut v = Vec::with_capacity(128);
        if self.peek()? == b']' {
            self.i += 1;
            return Some(Vec1::Many(v));
        }
        loop {
            v.push(self.float()? as f32);
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b']' => return Some(Vec1::Many(v)),
                _ => return None,
            }
        }
    }

    /// An integer that fits `i64` (serde refuses a fraction or exponent for an integer field).
    fn int(&mut self) -> Option<i64> {
        match self.number()? {
            // serde_json reads `-0` as a float, which an integer field refuses.
            (true, 0, _, _, _) => None,
            // 19 digits never overflow `u64`; what does not fit `i64` goes to serde.
            (false, m, digits, 0, true) if digits <= 19 => i64::try_from(m).ok(),
            (true, m, digits, 0, true) if digits <= 19 => 0i64.checked_sub_unsigned(m),
            _ => None,
        }
    }

    /// A number with at most 15 significant digits and a decimal exponent within ±22. There
    /// Clinger's fast path is exact: the digits and the power of ten are exact doubles, and one
    /// correctly rounded multiplication or division gives the correctly rounded value, which
    /// is what serde_json computes too (the same bits). Other numbers go to serde_json, whose
    /// result can differ from the correctly rounded one by an ulp.
    fn float(&mut self) -> Option<f64> {
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21,
            1e22,
        ];
        let (neg, m, digits, exp, _) = self.number()?;
        if digits > 15 || !(-22..=22).contains(&exp) {
            return None;
        }
        let v = m as f64;
        let v = if exp >= 0 { v * POW10[exp as usize] } else { v / POW10[(-exp) as usize] };
        Some(if neg { -v } else { v })
    }
}

impl Vec1<f32> {
    fn as_slice(&self) -> &[f32] {
        match self {
            Vec1::One(v) => std::slice::from_ref(v),
            Vec1::Many(v) => v,
        }
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
            Some(l) if l >= i64::from(NO_LAYER) => return Err(RejectReason::Range(format!("`layer` {l} is too large"))),
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
            (Some(b), _) => self.intern(b),
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

        /// Wherever the flat path answers, it answers what serde would: same fields, same
        /// values. Keys, values, spacing and order are drawn around the seed's shape, with
        /// escapes, wrong types, duplicates, exponents and stray characters mixed in.
        #[test]
        fn flat_path_agrees_with_serde(s in r#"[ ]?\{( ?"(build_id|sensor_id|timestamp|type|layer|laser|t_ns|t0_ns|dt_ns|temperature|laser_power|scan_speed|hatch_spacing|pressure|x_mm|y_mm|photodiode_on_axis|temperature_c|flags|x)" ?: ?(-?(0|[1-9][0-9]{0,19})(\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?|"[a-zA-Z0-9:\\. _-]{0,16}"|\[ ?(-?[0-9]{1,6}(\.[0-9]{1,4})?, ?){0,4}(-?[0-9]{1,6}(\.[0-9]{1,4})?)? ?\]|true|null|01|1\.),?){0,9} ?\}[ ]?x?"#) {
            if let Some(fast) = flat(&s) {
                let slow: Wire<'_> = serde_json::from_str(&s).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("flat accepted what serde refuses ({e}): {s}")))?;
                proptest::prop_assert_eq!(wire_fields(&fast), wire_fields(&slow), "{}", s);
            }
        }
    }

    fn flat(s: &str) -> Option<Wire<'_>> {
        let mut w = Wire::default();
        parse_flat(s.as_bytes(), &mut w).then_some(w)
    }

    fn wire_fields(w: &Wire<'_>) -> String {
        let v1 = |v: &Option<Vec1<f32>>| v.as_ref().map(|v| v.as_slice().to_vec());
        format!(
            "{:?}",
            (
                (&w.kind, &w.build_id, &w.sensor_id, &w.timestamp, w.layer, w.laser, w.t_ns),
                (w.temperature.map(f64::to_bits), w.laser_power.map(f64::to_bits), w.scan_speed.map(f64::to_bits), w.hatch_spacing.map(f64::to_bits), w.pressure.map(f64::to_bits)),
                (v1(&w.temperature_c), v1(&w.photodiode_on_axis), v1(&w.photodiode_off_axis), v1(&w.laser_power_w)),
                (v1(&w.scan_speed_mm_s), v1(&w.hatch_spacing_mm), v1(&w.pressure_mbar), v1(&w.x_mm), v1(&w.y_mm)),
                (w.t0_ns, w.dt_ns, w.phase.is_some(), w.values.is_some(), w.flags.is_some()),
            )
        )
    }

    /// Numbers of every shape (long fractions, exponents, negative, integral floats) parse to
    /// the same bits on both paths.
    #[test]
    fn flat_numbers_are_serde_numbers() {
        let mut x = 0x2545F4914F6CDD1Du64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut taken = 0;
        for _ in 0..20_000 {
            let sign = if next(2) == 0 { "-" } else { "" };
            let int_digits = 1 + next(15) as u32;
            let int = format!("{sign}{}", next(10u64.pow(int_digits)));
            let frac = if next(3) > 0 {
                let (digits, width) = (1 + next(17) as u32, 1 + next(3) as usize);
                format!(".{:0width$}", next(10u64.pow(digits)))
            } else {
                String::new()
            };
            let exp = if next(4) == 0 { format!("e{}{}", ["", "+", "-"][next(3) as usize], next(330)) } else { String::new() };
            let num = format!("{int}{frac}{exp}");
            let msg = format!(r#"{{"build_id":"b","layer":{},"t_ns":{},"temperature":{num},"pressure": {num} }}"#, next(1000), next(1 << 62));
            let slow: Result<Wire<'_>, _> = serde_json::from_str(&msg);
            match (flat(&msg), slow) {
                (Some(fast), Ok(slow)) => {
                    assert_eq!(wire_fields(&fast), wire_fields(&slow), "{msg}");
                    taken += 1;
                }
                (Some(_), Err(e)) => panic!("{msg}: the flat path accepts what serde refuses: {e}"),
                (None, _) => {}
            }
        }
        assert!(taken > 5_000, "the flat path took only {taken} of 20000");
    }

    #[test]
    fn the_seed_messages_take_the_flat_path() {
        let seed = r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00Z",
 "temperature": 1650.5, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}"#;
        let w = flat(seed).expect("the seed example is flat");
        assert_eq!((w.build_id.as_deref(), w.layer, w.temperature, w.scan_speed), (Some("build_001"), Some(45), Some(1650.5), Some(1.2)));
        assert!(flat(r#"{"sensor_id": "pyro_3", "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5, "pressure": 1013.2}"#).is_some());
        let block = r#"{"type":"block","build_id":"build_001","layer":45,"laser":2,"t0_ns":1705314600000000000,"dt_ns":10000,"x_mm":[120.0,120.012,120.024],"y_mm":[80.5,80.5,80.5],"laser_power_w":[280.1,279.8,280.4],"photodiode_on_axis":[2001,1998,2010]}"#;
        let w = flat(block).expect("a sample block is flat");
        let slow: Wire<'_> = serde_json::from_str(block).expect("serde");
        assert_eq!(wire_fields(&w), wire_fields(&slow));
        for other in [r#"{"build_id": "a\"b", "layer": 1}"#, r#"{"layer": 1, "layer": 2}"#, r#"{"layer": 1.0}"#, r#"{"layer": -0}"#, r#"{"layer": 1} x"#, r#"{"flags": [1]}"#, r#"{"x_mm": [1,]}"#] {
            assert!(flat(other).is_none(), "{other}");
        }
    }
}
