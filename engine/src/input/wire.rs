//! The shape of one JSON record on the wire, shared by both parsers of the decoder: serde's
//! (which refuses unknown fields) and the hand-written flat parser. Every record kind (sample,
//! block, layer event, machine log) uses the same struct, so a field of one kind in another is
//! still a known field and the decoder, not the parser, says what is wrong. No validation here.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use crate::input::event::{LaserParams, LayerPhase};

/// One JSON record as it is on the wire; every kind shares it so that unknown fields are refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) build_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) sensor_id: Option<Cow<'a, str>>,
    pub(super) layer: Option<i64>,
    pub(super) laser: Option<i64>,
    #[serde(borrow)]
    pub(super) timestamp: Option<Cow<'a, str>>,
    pub(super) t_ns: Option<i64>,
    // single-sample fields (seed names, and names with units)
    pub(super) temperature: Option<f64>,
    pub(super) temperature_c: Option<Vec1<f32>>,
    pub(super) laser_power: Option<f64>,
    pub(super) laser_power_w: Option<Vec1<f32>>,
    pub(super) scan_speed: Option<f64>,
    pub(super) scan_speed_mm_s: Option<Vec1<f32>>,
    pub(super) hatch_spacing: Option<f64>,
    pub(super) hatch_spacing_mm: Option<Vec1<f32>>,
    pub(super) pressure: Option<f64>,
    pub(super) pressure_mbar: Option<Vec1<f32>>,
    pub(super) photodiode_on_axis: Option<Vec1<f32>>,
    pub(super) photodiode_off_axis: Option<Vec1<f32>>,
    pub(super) x_mm: Option<Vec1<f32>>,
    pub(super) y_mm: Option<Vec1<f32>>,
    // blocks
    pub(super) t0_ns: Option<i64>,
    pub(super) dt_ns: Option<i64>,
    pub(super) flags: Option<Vec<u8>>,
    // layer events
    pub(super) phase: Option<LayerPhase>,
    pub(super) z_um: Option<i64>,
    pub(super) params: Option<Vec<LaserParams>>,
    // machine log
    pub(super) values: Option<HashMap<String, f64>>,
}

/// A number or an array of numbers: single samples carry scalars, blocks carry arrays.
///
/// Deserialized by hand: serde's `untagged` would first copy the whole array into its generic
/// `Content` tree (an allocation per number) and then try each variant in turn, which made
/// decoding a block several times slower.
pub(super) enum Vec1<T> {
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

impl Vec1<f32> {
    pub(super) fn as_slice(&self) -> &[f32] {
        match self {
            Vec1::One(v) => std::slice::from_ref(v),
            Vec1::Many(v) => v,
        }
    }
}
