//! RFC 3339 timestamps to and from event-time nanoseconds, without allocation.
//!
//! Parsing is on the decoder's hot path (every seed-format message carries a `timestamp`), so
//! it is a single pass over fixed byte positions rather than a general date library; it is
//! still calendar-correct: month lengths and leap years, seconds 00–59 (a leap second `60`
//! cannot be placed on the event-time axis and is refused), offsets up to ±23:59.

use crate::input::event::TimeNs;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into nanoseconds since the Unix epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<TimeNs> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale = 100_000_000i64;
        while i < b.len() && b[i].is_ascii_digit() {
            frac_ns += i64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    // Beyond year 2262 nanoseconds overflow i64: saturate, so that such times read as "far future".
    Some(secs.saturating_mul(1_000_000_000).saturating_add(frac_ns))
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with microseconds.
pub fn format_rfc3339(t_ns: TimeNs) -> String {
    let secs = t_ns.div_euclid(1_000_000_000);
    let ns = t_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ns / 1000
    )
}

/// Days in month `m` (1–12) of year `y`, proleptic Gregorian.
#[inline]
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_timestamp() {
        // 2024-01-15T10:30:00Z = 1705314600 s (date -d @1705314600 -u)
        assert_eq!(parse_rfc3339_ns("2024-01-15T10:30:00Z"), Some(1_705_314_600_000_000_000));
        assert_eq!(parse_rfc3339_ns("2024-01-15T11:30:00.5+01:00"), Some(1_705_314_600_500_000_000));
        assert_eq!(format_rfc3339(1_705_314_600_000_001_000), "2024-01-15T10:30:00.000001Z");
        assert_eq!(parse_rfc3339_ns("2024-13-15T10:30:00Z"), None);
        assert_eq!(parse_rfc3339_ns("garbage"), None);
    }

    #[test]
    fn refuses_dates_and_times_that_do_not_exist() {
        for bad in [
            "2024-02-30T00:00:00Z",
            "2024-02-31T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-06-31T00:00:00Z",
            "2024-09-31T00:00:00Z",
            "2024-11-31T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "2024-01-15T24:00:00Z",
            "2024-01-15T10:60:00Z",
            "2024-01-15T10:30:60Z",
            "2016-12-31T23:59:60Z",
            "2024-01-15T10:30:00+24:00",
            "2024-01-15T10:30:00-01:60",
            "2024-01-15T10:30:00.Z",
            "2024-01-15T10:30:00",
        ] {
            assert_eq!(parse_rfc3339_ns(bad), None, "{bad}");
        }
        for good in ["2024-02-29T00:00:00Z", "2000-02-29T12:00:00Z", "2023-12-31T23:59:59.999999999Z", "2024-01-15T10:30:00-23:59"] {
            assert!(parse_rfc3339_ns(good).is_some(), "{good}");
        }
    }

    proptest::proptest! {
        /// A date-time parses exactly when it exists: the day is within its month (checked
        /// independently by normalising through the day count and back) and the second is
        /// below 60; what parses formats back to the same date and time.
        #[test]
        fn parses_exactly_the_existing_times(y in 1700i64..2260, m in 1i64..=12, d in 1i64..=31, h in 0i64..=23, mi in 0i64..=59, sec in 0i64..=60) {
            let text = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}Z");
            let exists = civil_from_days(days_from_civil(y, m, d)) == (y, m, d) && sec < 60;
            let got = parse_rfc3339_ns(&text);
            proptest::prop_assert_eq!(got.is_some(), exists, "{}", text);
            if let Some(t) = got {
                let back = format_rfc3339(t);
                proptest::prop_assert_eq!(&back[..19], &text[..19]);
            }
        }
    }

    #[test]
    fn round_trip() {
        for t in [0i64, 1_705_314_600_123_456_000, -86_400_000_000_000, 4_102_444_800_000_000_000] {
            assert_eq!(parse_rfc3339_ns(&format_rfc3339(t)), Some(t));
        }
    }
}
