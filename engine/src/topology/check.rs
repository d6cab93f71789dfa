//! Checking a parsed topology: each component's bounds (positive sizes, known channels, valid
//! addresses) and the graph as a whole (unique names, sinks for every policy that needs one, one
//! Kafka source per Kafka sink). Every problem is collected with its file:line and key, none
//! stops the others; nothing here parses TOML or builds anything.

use std::collections::HashSet;

use serde::de::DeserializeOwned;

use crate::analytics::rules::{CmpOp, LOG_PREFIX};
use crate::input::event::Channel;
use crate::topology::build_info_config::BuildInfoConfig;
use crate::topology::engine_config::{EngineConfig, LatePolicy};
use crate::topology::positions::Positions;
use crate::topology::rules_config::RuleConfig;
use crate::topology::sinks::{RecordKind, SinkConfig, SinkKind};
use crate::fusion::FusionParams;
use crate::topology::verdict_config::VerdictConfig;
use crate::topology::spc_config::{SpcBaselineKind, SpcChartKind, SpcConfig, SpcStatistic, ENERGY_DENSITY_CHANNEL};
use crate::topology::sources::{CtSourceConfig, SimulatorConfig, SourceConfig, SourceKind};
use crate::topology::windows_config::{TimeWindowKind, WindowsConfig};
use crate::topology::errors::ConfigError;

/// Collects errors while checking one file.
pub(super) struct Checker<'a> {
    pub(super) file: &'a str,
    pub(super) pos: Positions,
    pub(super) errors: Vec<ConfigError>,
}

impl Checker<'_> {
    pub(super) fn err(&mut self, key: &str, message: impl Into<String>) {
        let line = self.pos.line(key);
        self.errors.push(ConfigError { file: self.file.to_owned(), line, key: key.to_owned(), message: message.into() });
    }

    /// Deserializes `value` as `T`, reporting a failure at the precise key.
    pub(super) fn de<T: DeserializeOwned>(&mut self, prefix: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let msg = e.into_inner().to_string();
                // toml appends "in `key`" on a second line; the key is reported on its own.
                let msg = msg.lines().next().unwrap_or_default().trim().to_string();
                self.err(&join_key(prefix, &inner), msg);
                None
            }
        }
    }
}

fn join_key(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty() || inner == ".") {
        (_, true) => prefix.to_owned(),
        (true, false) => inner.to_owned(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

pub(super) fn positive(c: &mut Checker<'_>, key: &str, v: u64) {
    if v == 0 {
        c.err(key, "expected a positive number");
    }
}

pub(super) fn check_engine(c: &mut Checker<'_>, e: &EngineConfig) {
    positive(c, "engine.watermark_interval_ms", e.watermark_interval_ms);
    positive(c, "engine.input_idle_timeout_ms", e.input_idle_timeout_ms);
    positive(c, "engine.build_idle_timeout_ms", e.build_idle_timeout_ms);
    positive(c, "engine.layer_gap_timeout_ms", e.layer_gap_timeout_ms);
    positive(c, "engine.input_quality_window_ms", e.input_quality_window_ms);
    positive(c, "engine.memory_budget_mb", e.memory_budget_mb);
    positive(c, "engine.source_queue_batches", e.source_queue_batches as u64);
    positive(c, "engine.sink_queue_records", e.sink_queue_records as u64);
    positive(c, "engine.max_restart_window_s", e.max_restart_window_s);
    positive(c, "engine.max_record_bytes", e.max_record_bytes as u64);
    if e.allowed_lateness_ms > 0 && e.late_policy != LatePolicy::Update {
        c.err("engine.allowed_lateness_ms", "only meaningful with late_policy = \"update\"");
    }
    if !e.admin_addr.is_empty() && e.admin_addr.parse::<std::net::SocketAddr>().is_err() {
        c.err("engine.admin_addr", format!("expected host:port such as \"127.0.0.1:9187\", got {:?}", e.admin_addr));
    }
    if !(e.default_layer_thickness_um > 0.0) {
        c.err("engine.default_layer_thickness_um", "expected a positive number of µm");
    }
}

pub(super) fn check_windows(c: &mut Checker<'_>, w: &WindowsConfig) {
    if !(w.grid_cell_mm > 0.0) {
        c.err("windows.grid_cell_mm", "expected a positive size in mm");
    }
    if !(w.plate_mm > 0.0) {
        c.err("windows.plate_mm", "expected a positive size in mm");
    } else if w.grid_cell_mm > 0.0 && w.plate_mm / w.grid_cell_mm > 4096.0 {
        c.err("windows.grid_cell_mm", "expected at most 4096 cells across the plate");
    }
    if w.grid_deviation_z.is_some_and(|z| !(z > 0.0 && z.is_finite())) {
        c.err("windows.grid_deviation_z", "expected a positive number of σ");
    }
    if Channel::parse(&w.grid_channel).is_none() {
        c.err("windows.grid_channel", channel_expected(&w.grid_channel));
    }
    let mut seen = HashSet::new();
    for (i, t) in w.time.iter().enumerate() {
        let key = format!("windows.time[{i}]");
        if !seen.insert(t.name.clone()) {
            c.err(&format!("{key}.name"), format!("duplicate window name {:?}", t.name));
        }
        if Channel::parse(&t.channel).is_none() {
            c.err(&format!("{key}.channel"), channel_expected(&t.channel));
        }
        match t.kind {
            TimeWindowKind::Tumbling => positive(c, &format!("{key}.size_ms"), t.size_ms),
            TimeWindowKind::Sliding => {
                positive(c, &format!("{key}.size_ms"), t.size_ms);
                positive(c, &format!("{key}.slide_ms"), t.slide_ms);
                if t.slide_ms > 0 && t.size_ms % t.slide_ms != 0 {
                    c.err(&format!("{key}.slide_ms"), "expected a divisor of size_ms");
                }
            }
            TimeWindowKind::Session => positive(c, &format!("{key}.gap_ms"), t.gap_ms),
        }
    }
}

/// Why a rule's channel is refused, if it is. Any name that is not a sample channel or
/// `energy_density_j_mm3` reads machine-log values, so a misspelt channel would silently become
/// a log rule that never fires: a name within two edits of a known one (or equal to it but for
/// case, spaces or dashes) is refused with a hint; `log:<name>` takes any log value as it is.
pub(super) fn rule_channel_problem(ch: &str) -> Option<String> {
    if let Some(log) = ch.strip_prefix(LOG_PREFIX) {
        return log.is_empty().then(|| "expected a machine-log value name after \"log:\"".to_owned());
    }
    if ch.is_empty() {
        return Some("expected a sample channel, a machine-log channel or energy_density_j_mm3".into());
    }
    if ch == "energy_density_j_mm3" || Channel::parse(ch).is_some() {
        return None;
    }
    let known = Channel::ALL.iter().map(|c| c.name()).chain(["energy_density_j_mm3"]);
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', ' '], "_");
    let wanted = norm(ch);
    let near = known.into_iter().find(|k| norm(k) == wanted || (ch.len() > 4 && strsim::levenshtein(&wanted, k) <= 2))?;
    Some(format!(
        "unknown channel {ch:?}: did you mean {near:?}? (a machine-log value this close to a channel name needs the prefix \"log:\", e.g. \"log:{ch}\")"
    ))
}

fn channel_expected(got: &str) -> String {
    let names: Vec<&str> = Channel::ALL.iter().map(|c| c.name()).collect();
    format!("unknown channel {got:?}, expected one of: {}", names.join(", "))
}

/// A `ct` source reads a file or a topic, never both.
pub(super) fn check_ct_source(c: &mut Checker<'_>, key: &str, s: &CtSourceConfig) {
    let kafka = s.brokers.is_some() || s.topic.is_some();
    match (&s.path, kafka) {
        (Some(_), true) => c.err(key, "expected either `path` (a CT list file) or `brokers` and `topic` (a Kafka topic), not both"),
        (None, false) => c.err(key, "expected `path` (a CT list file, JSON lines or CSV) or `brokers` and `topic` (a Kafka topic)"),
        (Some(p), false) if p.as_os_str().is_empty() => c.err(&format!("{key}.path"), "expected a file path"),
        _ => {}
    }
    if kafka {
        if s.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
            c.err(&format!("{key}.brokers"), "expected `host:port[,host:port...]` (a Kafka ct source needs `brokers` and `topic`)");
        }
        if s.topic.as_deref().is_none_or(str::is_empty) {
            c.err(&format!("{key}.topic"), "expected a non-empty topic name (a Kafka ct source needs `brokers` and `topic`)");
        }
        positive(c, &format!("{key}.quiet_ms"), s.quiet_ms);
    } else if s.stop_at_end || !s.properties.is_empty() || !s.group_id.is_empty() {
        c.err(key, "`group_id`, `stop_at_end` and `properties` apply to a Kafka ct source only (a file ends at its end)");
    }
}

pub(super) fn check_simulator(c: &mut Checker<'_>, key: &str, s: &SimulatorConfig) {
    positive(c, &format!("{key}.machines"), u64::from(s.machines));
    positive(c, &format!("{key}.lasers"), u64::from(s.lasers));
    positive(c, &format!("{key}.sample_rate_hz"), u64::from(s.sample_rate_hz));
    positive(c, &format!("{key}.layers"), u64::from(s.layers));
    positive(c, &format!("{key}.layer_ms"), s.layer_ms);
    positive(c, &format!("{key}.block_ms"), s.block_ms);
    positive(c, &format!("{key}.batch_blocks"), s.batch_blocks as u64);
    if !(s.power_drift_pct_per_layer >= 0.0 && s.power_drift_pct_per_layer < 100.0) {
        c.err(&format!("{key}.power_drift_pct_per_layer"), "expected a percentage per layer in [0, 100)");
    }
    if !(s.block_loss_pct >= 0.0 && s.block_loss_pct < 100.0) {
        c.err(&format!("{key}.block_loss_pct"), "expected a percentage of blocks in [0, 100)");
    }
    if !(s.anomaly_rate_per_layer >= 0.0 && s.anomaly_rate_per_layer <= 16.0) {
        c.err(&format!("{key}.anomaly_rate_per_layer"), "expected anomalies per layer in [0, 16]");
    }
    if s.anomaly_rate_per_layer > 0.0 && s.anomaly_kinds.is_empty() {
        c.err(&format!("{key}.anomaly_kinds"), "expected at least one kind when anomaly_rate_per_layer > 0");
    }
    if s.sample_rate_hz > 0 && s.block_ms > 0 && u64::from(s.sample_rate_hz) * s.block_ms / 1000 == 0 {
        c.err(&format!("{key}.block_ms"), "a block must hold at least one sample at sample_rate_hz");
    }
    if s.sample_rate_hz > 0 && 1_000_000_000 % u64::from(s.sample_rate_hz) != 0 {
        c.err(&format!("{key}.sample_rate_hz"), "expected a rate whose period is a whole number of ns (e.g. 100000)");
    }
    if crate::input::time::parse_rfc3339_ns(&s.start_time).is_none() {
        c.err(&format!("{key}.start_time"), "expected an RFC 3339 time such as \"2024-01-15T10:30:00Z\"");
    }
}

pub(super) fn check_names<'a>(c: &mut Checker<'_>, what: &str, names: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut seen = HashSet::new();
    for (key, name) in names {
        if !seen.insert(name.to_owned()) {
            c.err(&format!("{key}.name"), format!("duplicate name {name:?} among {what}"));
        }
    }
}

/// The checks across components: unique names, valid rules, sinks that take records, one Kafka
/// source for a Kafka sink, one SQLite sink per database file, a late sink when the late policy
/// needs one. `sources`, `sinks` and
/// `rules` carry their key (`sinks[1]`).
pub(super) fn check_graph(c: &mut Checker<'_>, engine: &EngineConfig, sources: &[(String, SourceConfig)], sinks: &[(String, SinkConfig)], rules: &[(String, RuleConfig)]) {
    check_names(c, "sources", sources.iter().map(|(k, s)| (k.as_str(), s.name.as_str())));
    check_names(c, "sinks", sinks.iter().map(|(k, s)| (k.as_str(), s.name.as_str())));
    check_names(c, "rules", rules.iter().map(|(k, r)| (k.as_str(), r.name.as_str())));
    for (key, r) in rules {
        if CmpOp::parse(&r.op).is_none() {
            c.err(&format!("{key}.op"), format!("unknown comparison {:?}, expected one of \">\", \">=\", \"<\", \"<=\"", r.op));
        }
        if !r.limit.is_finite() {
            c.err(&format!("{key}.limit"), "expected a finite number");
        }
        if let Some(msg) = rule_channel_problem(&r.channel) {
            c.err(&format!("{key}.channel"), msg);
        }
    }
    for (key, s) in sinks {
        if s.kind.records().is_empty() {
            c.err(&format!("{key}.records"), "expected at least one record kind");
        }
    }
    let kafka_sources = sources.iter().filter(|(_, s)| matches!(s.kind, SourceKind::Kafka(_))).count();
    for (key, s) in sinks {
        if matches!(s.kind, SinkKind::Kafka(_)) && kafka_sources != 1 {
            c.err(&format!("{key}.type"), format!("a Kafka sink commits the offsets of exactly one Kafka source's group; this topology has {kafka_sources}"));
        }
    }
    // A database file has one owner (the sink's lock): a second sink on it could never start.
    let mut files = HashSet::new();
    for (key, s) in sinks {
        if let SinkKind::Sqlite(q) = &s.kind {
            if !files.insert(q.path.clone()) {
                c.err(&format!("{key}.path"), format!("another sqlite sink already writes {:?}; a database file takes one sink (give this one its own file)", q.path.display().to_string()));
            }
        }
    }
    let late_needs_sink = engine.late_policy == LatePolicy::LateSink;
    if late_needs_sink && !sinks.iter().any(|(_, s)| s.kind.records().contains(&RecordKind::Late)) {
        c.err("engine.late_policy", "\"late_sink\" needs a sink whose `records` include \"late\"");
    }
}

/// Checks the `[[spc]]` charts: names unique, a sample channel (or energy density) with a
/// statistic it has (`cell_mean` only on the channel the grid map averages, `grid_channel`),
/// parameters in range, a baseline that can be had.
pub(super) fn check_spc(c: &mut Checker<'_>, spc: &[(String, SpcConfig)], grid_channel: &str) {
    check_names(c, "spc", spc.iter().map(|(k, s)| (k.as_str(), s.name.as_str())));
    for (key, s) in spc {
        let energy = s.channel == ENERGY_DENSITY_CHANNEL;
        if !energy && Channel::parse(&s.channel).is_none() {
            c.err(&format!("{key}.channel"), format!("{} or {ENERGY_DENSITY_CHANNEL:?}", channel_expected(&s.channel)));
        }
        match (energy, s.statistic) {
            (true, Some(st)) if st != SpcStatistic::Value => c.err(&format!("{key}.statistic"), format!("{ENERGY_DENSITY_CHANNEL} has one value per layer and laser (no grid cells): expected \"value\"")),
            (false, Some(SpcStatistic::Value)) => c.err(&format!("{key}.statistic"), "expected \"mean\", \"std_dev\" or \"cell_mean\" for a sample channel"),
            (false, Some(SpcStatistic::CellMean)) => {
                let (ch, grid) = (Channel::parse(&s.channel), Channel::parse(grid_channel));
                if ch.is_some() && ch != grid {
                    c.err(
                        &format!("{key}.statistic"),
                        format!("\"cell_mean\" charts the grid map's cells, and the grid map averages {grid_channel:?} ([windows] grid_channel), not {:?}: chart that channel or map this one", s.channel),
                    );
                }
                if s.min_cell_samples == 0 {
                    c.err(&format!("{key}.min_cell_samples"), "expected at least 1 sample");
                }
            }
            _ => {}
        }
        match s.chart {
            SpcChartKind::Shewhart => {}
            SpcChartKind::Ewma => {
                if !(s.lambda > 0.0 && s.lambda <= 1.0) {
                    c.err(&format!("{key}.lambda"), "expected λ in (0, 1]");
                }
                if !(s.l > 0.0 && s.l.is_finite()) {
                    c.err(&format!("{key}.l"), "expected a positive limit width in σ");
                }
            }
            SpcChartKind::Cusum => {
                if !(s.k >= 0.0 && s.k.is_finite()) {
                    c.err(&format!("{key}.k"), "expected a reference value ≥ 0 in σ");
                }
                if !(s.h > 0.0 && s.h.is_finite()) {
                    c.err(&format!("{key}.h"), "expected a positive decision interval in σ");
                }
            }
        }
        if s.reference_build.is_some() && s.baseline != SpcBaselineKind::Reference {
            c.err(&format!("{key}.reference_build"), "`reference_build` needs baseline = \"reference\"");
        }
        match s.baseline {
            SpcBaselineKind::FirstLayers | SpcBaselineKind::Reference => {
                // A reference build's laser or cell without a stored baseline falls back on phase I.
                if s.baseline_layers < 2 {
                    c.err(&format!("{key}.baseline_layers"), "expected at least 2 layers for phase I (σ comes from moving ranges)");
                }
                if s.centre.is_some() || s.sigma.is_some() {
                    c.err(key, "`centre` and `sigma` need baseline = \"given\"");
                }
                if s.baseline == SpcBaselineKind::Reference && s.reference_build.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    c.err(&format!("{key}.reference_build"), "baseline = \"reference\" needs the id of the reference build, e.g. reference_build = \"sim-001\"");
                }
            }
            SpcBaselineKind::Given => {
                if !s.centre.is_some_and(f64::is_finite) {
                    c.err(&format!("{key}.centre"), "baseline = \"given\" needs a finite `centre`");
                }
                if !s.sigma.is_some_and(|v| v > 0.0 && v.is_finite()) {
                    c.err(&format!("{key}.sigma"), "baseline = \"given\" needs a positive `sigma`");
                }
            }
        }
    }
}

/// Checks `[verdict]`: the rules and charts it names exist.
pub(super) fn check_verdict(c: &mut Checker<'_>, v: &VerdictConfig, rules: &[(String, RuleConfig)], spc: &[(String, SpcConfig)]) {
    for (i, r) in v.fail_rules.iter().enumerate() {
        if !rules.iter().any(|(_, x)| &x.name == r) {
            c.err(&format!("verdict.fail_rules[{i}]"), format!("no rule named {r:?} in [[rules]]"));
        }
    }
    for (i, s) in v.fail_spc.iter().enumerate() {
        if !spc.iter().any(|(_, x)| &x.name == s) {
            c.err(&format!("verdict.fail_spc[{i}]"), format!("no chart named {s:?} in [[spc]]"));
        }
    }
    if v.min_rule_hits == 0 {
        c.err("verdict.min_rule_hits", "expected at least 1");
    }
    if !(0.0..=1.0).contains(&v.min_data_quality) {
        c.err("verdict.min_data_quality", "expected a score in [0, 1]");
    }
    if !(0.0..=1.0).contains(&v.fail_data_quality) || v.fail_data_quality > v.min_data_quality {
        c.err("verdict.fail_data_quality", "expected a score in [0, min_data_quality]");
    }
}

/// `[build_info]`: the directory exists and every description in it reads and checks.
pub(super) fn check_build_info(c: &mut Checker<'_>, b: &BuildInfoConfig, base_dir: &std::path::Path) {
    let Some(dir) = &b.dir else { return };
    if let Err(errors) = crate::input::build_info::read_dir(&base_dir.join(dir)) {
        for e in errors {
            c.err("build_info.dir", e);
        }
    }
}

/// `[fusion]`: sizes and tolerances are finite and non-negative, the thickness positive.
pub(super) fn check_fusion(c: &mut Checker<'_>, f: &FusionParams) {
    for (key, v) in [("tolerance_mm", f.tolerance_mm), ("cell_z", f.cell_z), ("min_diameter_um", f.min_diameter_um)] {
        if !(v >= 0.0 && v.is_finite()) {
            c.err(&format!("fusion.{key}"), "expected a non-negative number");
        }
    }
    if !(f.thickness_um > 0.0 && f.thickness_um.is_finite()) {
        c.err("fusion.thickness_um", "expected a positive layer thickness in µm");
    }
    if !f.z0_mm.is_finite() {
        c.err("fusion.z0_mm", "expected a number");
    }
}
