//! The hand-written single-pass parser for flat JSON records (the seed's one-sample messages and
//! sample blocks): string, number and number-array values of known keys, no escapes, no
//! nesting. It answers only when its result is exactly serde's, and gives up (returns false) on
//! anything else, so the decoder falls back to serde_json; it never rejects a record itself.

use std::borrow::Cow;

use crate::input::wire::{Vec1, Wire};

/// Messages up to this size are tried on the flat path first.
pub(super) const FLAT_MAX_BYTES: usize = 256 << 10;

/// Parses a flat JSON object of the seed's one-sample shape or of a sample block (string,
/// number and number-array values of the keys below, no escapes) into `w`: false whenever
/// serde's result could differ, so that the caller falls back to serde_json (and overwrites
/// `w`). One pass, no generic field dispatch, no `Option` wrapper per field.
pub(super) fn parse_flat<'a>(raw: &'a [u8], w: &mut Wire<'a>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::wire::Vec1;

    proptest::proptest! {
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
