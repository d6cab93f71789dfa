//! Restart intensity, as in Erlang/OTP: at most `max_restarts` restarts within `window`;
//! beyond that a supervisor escalates instead of restarting again.

use std::collections::VecDeque;

/// Remembers recent restarts.
#[derive(Clone, Debug)]
pub struct RestartBudget {
    max: u32,
    window_ns: i64,
    recent: VecDeque<i64>,
}

impl RestartBudget {
    /// At most `max` restarts within `window_ns`.
    pub fn new(max: u32, window_ns: i64) -> RestartBudget {
        RestartBudget { max, window_ns, recent: VecDeque::new() }
    }

    /// Records a restart at `now_ns`; false when it exceeds the budget (escalate).
    pub fn allow(&mut self, now_ns: i64) -> bool {
        while self.recent.front().is_some_and(|&t| now_ns - t >= self.window_ns) {
            self.recent.pop_front();
        }
        self.recent.push_back(now_ns);
        self.recent.len() <= self.max as usize
    }

    /// Restarts within the current window.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_in_t_then_escalate() {
        let mut b = RestartBudget::new(2, 100);
        assert!(b.allow(0));
        assert!(b.allow(10));
        assert!(!b.allow(20), "third within 100 ns");
        assert!(b.allow(200), "window moved on");
    }
}
