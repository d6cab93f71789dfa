//! The engine's wall clock: arrival and latency stamps. Never used for event time, which comes
//! from the records.

/// Wall clock, ns since the epoch.
pub fn now_wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
