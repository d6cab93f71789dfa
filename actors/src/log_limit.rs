//! Keeps logs readable under a flood: per key (a dead letter's reason), the first few events of
//! each minute are logged one by one, the rest only counted; the count is logged as one summary
//! line when the minute is over (at the key's next event) or when the engine stops. Metrics and
//! records keep every event: this only spares the log.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `suppressed` events of its key went unlogged in the window that just ended (log
    /// that first).
    Log {
        /// Events of the key not logged in the previous window.
        suppressed: u64,
    },
    /// Count it only.
    Suppress,
}

struct Slot {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// A rate limit per key.
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl Default for LogLimiter {
    /// Five lines per key and minute.
    fn default() -> Self {
        LogLimiter::new(5, Duration::from_secs(60))
    }
}

impl LogLimiter {
    /// `per_window` lines per key and `window`.
    pub fn new(per_window: u32, window: Duration) -> LogLimiter {
        LogLimiter { per_window, window, slots: Mutex::new(BTreeMap::new()) }
    }

    /// One event of `key` at `now`.
    pub fn admit(&self, key: &str, now: Instant) -> Admit {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(key.to_owned()).or_insert(Slot { started: now, logged: 0, suppressed: 0 });
        let mut ended = 0;
        if now.duration_since(slot.started) >= self.window {
            ended = std::mem::take(&mut slot.suppressed);
            slot.started = now;
            slot.logged = 0;
        }
        if slot.logged < self.per_window {
            slot.logged += 1;
            Admit::Log { suppressed: ended }
        } else {
            slot.suppressed += 1;
            Admit::Suppress
        }
    }

    /// The counts not logged yet, per key (the engine stops: say them now), cleared.
    pub fn drain(&self) -> Vec<(String, u64)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let out = slots.iter_mut().filter(|(_, s)| s.suppressed > 0).map(|(k, s)| (k.clone(), std::mem::take(&mut s.suppressed))).collect();
        slots.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_and_counts_the_rest() {
        let l = LogLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let admitted: Vec<Admit> = (0..4000).map(|_| l.admit("not_json", t0)).collect();
        assert_eq!(admitted.iter().filter(|a| matches!(a, Admit::Log { .. })).count(), 3);
        // Another reason has its own budget.
        assert_eq!(l.admit("bad_type", t0), Admit::Log { suppressed: 0 });
        // A minute later: the count of the last minute comes with the next line.
        assert_eq!(l.admit("not_json", t0 + Duration::from_secs(61)), Admit::Log { suppressed: 3997 });
        l.admit("not_json", t0 + Duration::from_secs(61));
        l.admit("not_json", t0 + Duration::from_secs(61));
        assert_eq!(l.admit("not_json", t0 + Duration::from_secs(61)), Admit::Suppress);
        assert_eq!(l.drain(), vec![("not_json".to_string(), 1)]);
        assert!(l.drain().is_empty());
    }
}
