//! RFC 3339 timestamps to and from event-time nanoseconds, without allocation.

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
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
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
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
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
    fn round_trip() {
        for t in [0i64, 1_705_314_600_123_456_000, -86_400_000_000_000, 4_102_444_800_000_000_000] {
            assert_eq!(parse_rfc3339_ns(&format_rfc3339(t)), Some(t));
        }
    }
}
