//! Threshold rules (`temperature_c > 1700`) evaluated on sample columns, machine-log values and
//! per-layer energy density, with an event-time cooldown so that a hot spot of a thousand
//! samples raises one alert, not a thousand. Every exceedance is still counted in the layer
//! summary (`rule_hits`), so counts stay exact and order-independent.

use crate::input::event::{Channel, TimeNs};
use crate::topology::rules_config::RuleConfig;

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl CmpOp {
    /// Parses `>`, `>=`, `<`, `<=`.
    pub fn parse(s: &str) -> Option<CmpOp> {
        Some(match s {
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            _ => return None,
        })
    }

    /// True when `v op limit` holds.
    #[inline]
    pub fn fires(self, v: f64, limit: f64) -> bool {
        match self {
            CmpOp::Gt => v > limit,
            CmpOp::Ge => v >= limit,
            CmpOp::Lt => v < limit,
            CmpOp::Le => v <= limit,
        }
    }
}

/// What a rule looks at.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleTarget {
    /// A sample channel, per sample.
    Sample(Channel),
    /// A machine-log channel by name, per log record.
    Log(String),
    /// The layer's energy density per laser, at layer close.
    EnergyDensity,
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// What it looks at.
    pub target: RuleTarget,
    /// Comparison.
    pub op: CmpOp,
    /// Limit.
    pub limit: f64,
    /// f32 copy of the limit for the per-sample scan.
    limit_f32: f32,
    /// Cooldown in event time.
    pub cooldown_ns: i64,
}

/// Prefix that makes a rule channel a machine-log value whatever its name (`log:o2_ppm`).
pub const LOG_PREFIX: &str = "log:";

impl Rule {
    /// Compiles a checked rule config.
    pub fn compile(c: &RuleConfig) -> Rule {
        let target = match c.channel.as_str() {
            "energy_density_j_mm3" => RuleTarget::EnergyDensity,
            ch if ch.starts_with(LOG_PREFIX) => RuleTarget::Log(ch[LOG_PREFIX.len()..].to_owned()),
            ch => match Channel::parse(ch) {
                Some(ch) => RuleTarget::Sample(ch),
                None => RuleTarget::Log(ch.to_owned()),
            },
        };
        Rule {
            name: c.name.clone(),
            target,
            op: CmpOp::parse(&c.op).unwrap_or(CmpOp::Gt),
            limit: c.limit,
            limit_f32: c.limit as f32,
            cooldown_ns: c.cooldown_ms as i64 * 1_000_000,
        }
    }

    /// Index of the first value of `vs` that fires, and the number that fire.
    #[inline]
    pub fn scan(&self, vs: &[f32]) -> (Option<usize>, u64) {
        let l = self.limit_f32;
        let (mut first, mut n) = (None, 0u64);
        macro_rules! go {
            ($cmp:expr) => {
                for (i, &v) in vs.iter().enumerate() {
                    if $cmp(v, l) {
                        n += 1;
                        if first.is_none() {
                            first = Some(i);
                        }
                    }
                }
            };
        }
        // The f32 comparison must agree with the f64 one for the recorded value: compare in
        // f64 only on the rare hits to stay exact at the limit.
        let lim = self.limit;
        match self.op {
            CmpOp::Gt => go!(|v: f32, l: f32| v >= l && f64::from(v) > lim),
            CmpOp::Ge => go!(|v: f32, l: f32| v >= l && f64::from(v) >= lim || f64::from(v) >= lim && v < l),
            CmpOp::Lt => go!(|v: f32, l: f32| v <= l && f64::from(v) < lim),
            CmpOp::Le => go!(|v: f32, l: f32| v <= l && f64::from(v) <= lim || f64::from(v) <= lim && v > l),
        }
        (first, n)
    }
}

/// Event-time cooldown of one rule for one (build, laser): an alert is admitted when it is at
/// least `cooldown` away, in event time, from the last admitted one (either side, so that an
/// out-of-order sample does not re-arm it).
///
/// The cooldown is scoped (to a layer, for sample rules): a new scope starts fresh. That makes
/// the alerts of a layer a function of that layer's records alone, so that a replay from the
/// start of an open layer after a crash raises exactly the alerts of an uninterrupted run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cooldown {
    last_ns: Option<TimeNs>,
    scope: u32,
}

impl Cooldown {
    /// Event time of the last alert admitted, while its cooldown runs.
    pub fn last(&self) -> Option<TimeNs> {
        self.last_ns
    }

    /// A cooldown running since an alert at `last_ns` in `scope` (a replay resumes it).
    pub fn running(last_ns: TimeNs, scope: u32) -> Cooldown {
        Cooldown { last_ns: Some(last_ns), scope }
    }

    /// Ends the cooldown: the next exceedance is admitted.
    pub fn reset(&mut self) {
        *self = Cooldown::default();
    }

    /// True (and remembers `t_ns`) when an alert at `t_ns` in `scope` may be raised.
    pub fn admit(&mut self, t_ns: TimeNs, cooldown_ns: i64, scope: u32) -> bool {
        if scope != self.scope {
            self.scope = scope;
            self.last_ns = None;
        }
        match self.last_ns {
            Some(l) if t_ns.abs_diff(l) < cooldown_ns.max(1) as u64 => false,
            _ => {
                self.last_ns = Some(t_ns);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(op: &str, limit: f64) -> Rule {
        Rule::compile(&RuleConfig { name: "r".into(), channel: "temperature".into(), op: op.into(), limit, cooldown_ms: 1 })
    }

    #[test]
    fn seed_rule_fires_above_1700_only() {
        let r = rule(">", 1700.0);
        assert_eq!(r.target, RuleTarget::Sample(Channel::TemperatureC));
        assert_eq!(r.scan(&[1650.5, 1700.0, 1750.0, 1800.0]), (Some(2), 2));
        let r = rule("<=", 1700.0);
        assert_eq!(r.scan(&[1650.5, 1700.0, 1750.0]), (Some(0), 2));
        // limit not representable in f32: 0.1 as f32 > 0.1
        let r = rule(">", 0.1);
        assert_eq!(r.scan(&[0.1f32]).1, 1);
    }

    #[test]
    fn cooldown_admits_once_per_period() {
        let mut c = Cooldown::default();
        assert!(c.admit(0, 100, 1));
        assert!(!c.admit(50, 100, 1));
        assert!(c.admit(100, 100, 1));
        assert!(c.admit(1_000_000, 100, 1));
        assert!(!c.admit(999_950, 100, 1), "out of order within the period");
        assert!(c.admit(999_960, 100, 2), "a new layer starts fresh");
    }
}
