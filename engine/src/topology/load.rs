//! Loading a topology: parse the TOML once keeping positions, deserialize each component
//! through the registry (the `match` on `type` in [`parse_source`] and [`parse_sink`]), run every
//! check, and fill the defaults that depend on the topology's name. Returns a [`Topology`] only
//! when no error was found; nothing here starts anything.

use std::path::Path;

use serde::Deserialize;

use crate::topology::build_info_config::BuildInfoConfig;
use crate::topology::check::{check_build_info, check_ct_source, check_engine, check_graph, check_simulator, check_spc, check_fusion, check_verdict, check_windows, positive, Checker};
use crate::topology::spc_config::SpcConfig;
use crate::fusion::FusionParams;
use crate::topology::verdict_config::VerdictConfig;
use crate::topology::engine_config::EngineConfig;
use crate::topology::positions::{line_of, Positions};
use crate::topology::rules_config::RuleConfig;
use crate::topology::sinks::{AirflowSinkConfig, FileSinkConfig, KafkaSinkConfig, PostgresSinkConfig, RecordKind, RedisSinkConfig, SinkConfig, SinkKind, SqliteSinkConfig, WebhookSinkConfig};
use crate::topology::sources::{CtSourceConfig, FileSourceConfig, KafkaSourceConfig, R1Config, SimulatorConfig, SourceConfig, SourceKind};
use crate::topology::windows_config::WindowsConfig;
use crate::topology::errors::{ConfigError, ConfigErrors};
use crate::topology::graph::Topology;

/// Reads and checks a topology file.
pub fn load_file(path: &Path) -> Result<Topology, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError { file: file.clone(), line: 0, key: String::new(), message: format!("cannot read: {e}") }])
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load(&text, &file, &base)
}

/// Parses and checks a topology from `text`; `file` names it in errors, `base_dir` resolves
/// relative source paths.
pub fn load(text: &str, file: &str, base_dir: &Path) -> Result<Topology, ConfigErrors> {
    // One parse: toml_edit keeps every key's span for the positions, and the same document is
    // then deserialized into a plain table (exactly what `toml::from_str` does inside).
    let not_toml = |message: &str, span: Option<std::ops::Range<usize>>| {
        let line = span.map(|s| line_of(text, s.start)).unwrap_or(0);
        ConfigErrors(vec![ConfigError { file: file.to_owned(), line, key: String::new(), message: format!("not valid TOML: {message}") }])
    };
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| not_toml(e.message(), e.span()))?;
    let pos = Positions::new(text, doc.as_table());
    let root = toml::Table::deserialize(toml_edit::de::Deserializer::from(doc)).map_err(|e| not_toml(e.message(), e.span()))?;
    let mut c = Checker { file, pos, errors: Vec::new() };
    let known = ["name", "engine", "sources", "windows", "rules", "spc", "verdict", "fusion", "build_info", "sinks"];
    for k in root.keys() {
        if !known.contains(&k.as_str()) {
            c.err(k, format!("unknown top-level key, expected one of: {}", known.join(", ")));
        }
    }
    let name = match root.get("name") {
        Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            c.err("name", "expected a non-empty string");
            String::new()
        }
        None => "unnamed".into(),
    };
    let engine: EngineConfig = match root.get("engine") {
        Some(v) => c.de("engine", v.clone()).unwrap_or_default(),
        None => EngineConfig::default(),
    };
    let windows: WindowsConfig = match root.get("windows") {
        Some(v) => c.de("windows", v.clone()).unwrap_or_default(),
        None => WindowsConfig::default(),
    };
    let sources = array_of_tables(&mut c, &root, "sources")
        .into_iter()
        .filter_map(|(key, t)| parse_source(&mut c, &key, t))
        .collect::<Vec<_>>();
    let sinks = array_of_tables(&mut c, &root, "sinks")
        .into_iter()
        .filter_map(|(key, t)| parse_sink(&mut c, &key, t))
        .collect::<Vec<_>>();
    let rules = array_of_tables(&mut c, &root, "rules")
        .into_iter()
        .filter_map(|(key, t)| c.de::<RuleConfig>(&key, toml::Value::Table(t)).map(|r| (key, r)))
        .collect::<Vec<_>>();

    let fusion: FusionParams = match root.get("fusion") {
        Some(v) => c.de("fusion", v.clone()).unwrap_or_default(),
        None => FusionParams::default(),
    };
    check_fusion(&mut c, &fusion);
    let build_info: BuildInfoConfig = match root.get("build_info") {
        Some(v) => c.de("build_info", v.clone()).unwrap_or_default(),
        None => BuildInfoConfig::default(),
    };
    check_build_info(&mut c, &build_info, base_dir);
    let verdict: VerdictConfig = match root.get("verdict") {
        Some(v) => c.de("verdict", v.clone()).unwrap_or_default(),
        None => VerdictConfig::default(),
    };
    let spc = array_of_tables(&mut c, &root, "spc")
        .into_iter()
        .filter_map(|(key, t)| c.de::<SpcConfig>(&key, toml::Value::Table(t)).map(|r| (key, r)))
        .collect::<Vec<_>>();

    check_engine(&mut c, &engine);
    check_spc(&mut c, &spc, &windows.grid_channel);
    check_verdict(&mut c, &verdict, &rules, &spc);
    check_windows(&mut c, &windows);
    if !root.contains_key("sources") {
        c.err("sources", "a topology needs at least one [[sources]] entry");
    }
    if !root.contains_key("sinks") {
        c.err("sinks", "a topology needs at least one [[sinks]] entry");
    }
    check_graph(&mut c, &engine, &sources, &sinks, &rules);
    let has_store = sinks.iter().any(|(_, s)| matches!(s.kind, SinkKind::Postgres(_) | SinkKind::Sqlite(_)));
    if let Some((key, _)) = sources.iter().find(|(_, s)| matches!(s.kind, SourceKind::Ct(_))) {
        if !has_store {
            c.err(&format!("{key}.type"), "a ct source reads the builds' evidence from, and writes its fusion results to, a results store: add a postgres or sqlite sink");
        }
    }
    for (key, _) in spc.iter().filter(|(_, s)| s.baseline == crate::topology::SpcBaselineKind::Reference) {
        if !has_store {
            c.err(&format!("{key}.baseline"), "baseline = \"reference\" reads the reference build's stored baselines (table spc_baselines) from the first postgres or sqlite sink: add one");
        }
    }
    if let Some(list) = &fusion.ct_list {
        if !sinks.iter().any(|(_, s)| matches!(s.kind, SinkKind::Postgres(_) | SinkKind::Sqlite(_))) {
            c.err("fusion.ct_list", "fusion reads the results back from where they are durable: add a postgres or sqlite sink");
        }
        if list == "simulator" && !sources.iter().any(|(_, s)| matches!(s.kind, SourceKind::Simulator(_))) {
            c.err("fusion.ct_list", "\"simulator\" names the CT list of the topology's simulator source, and there is none");
        }
    }
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|e| e.line);
        return Err(ConfigErrors(c.errors));
    }
    let mut sources: Vec<SourceConfig> = sources.into_iter().map(|(_, s)| s).collect();
    for s in &mut sources {
        match &mut s.kind {
            SourceKind::Kafka(k) if k.group_id.is_empty() => k.group_id = format!("meltstream-{name}"),
            SourceKind::Ct(k) if k.group_id.is_empty() && k.path.is_none() => k.group_id = format!("meltstream-ct-{name}"),
            _ => {}
        }
    }
    let mut sinks: Vec<SinkConfig> = sinks.into_iter().map(|(_, s)| s).collect();
    for s in &mut sinks {
        match &mut s.kind {
            SinkKind::Postgres(p) if p.pipeline.is_empty() => p.pipeline = name.clone(),
            SinkKind::Sqlite(p) if p.pipeline.is_empty() => p.pipeline = name.clone(),
            SinkKind::Webhook(w) if w.key_prefix.is_empty() => w.key_prefix = name.clone(),
            SinkKind::Airflow(a) if a.run_id_prefix.is_empty() => a.run_id_prefix = name.clone(),
            SinkKind::Kafka(k) if k.transactional_id.is_empty() => k.transactional_id = format!("meltstream-{name}-{}", s.name),
            _ => {}
        }
    }
    Ok(Topology { name, base_dir: base_dir.to_path_buf(), engine, sources, windows, rules: rules.into_iter().map(|(_, r)| r).collect(), spc: spc.into_iter().map(|(_, s)| s).collect(), verdict, fusion, sinks, build_info, instance: None })
}

fn array_of_tables(c: &mut Checker<'_>, root: &toml::Table, key: &str) -> Vec<(String, toml::Table)> {
    match root.get(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                toml::Value::Table(t) => Some((format!("{key}[{i}]"), t.clone())),
                _ => {
                    c.err(&format!("{key}[{i}]"), "expected a table");
                    None
                }
            })
            .collect(),
        Some(_) => {
            c.err(key, format!("expected an array of tables ([[{key}]])"));
            Vec::new()
        }
    }
}

fn take_name_and_type(c: &mut Checker<'_>, key: &str, t: &mut toml::Table, types: &[&str]) -> Option<(String, String)> {
    let name = match t.remove("name") {
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => {
            c.err(&format!("{key}.name"), "expected a non-empty string");
            None
        }
        None => {
            c.err(key, "missing `name`");
            None
        }
    };
    let ty = match t.remove("type") {
        Some(toml::Value::String(s)) if types.contains(&s.as_str()) => Some(s),
        Some(toml::Value::String(s)) => {
            c.err(&format!("{key}.type"), format!("unknown type {s:?}, expected one of: {}", types.join(", ")));
            None
        }
        Some(_) => {
            c.err(&format!("{key}.type"), format!("expected a string, one of: {}", types.join(", ")));
            None
        }
        None => {
            c.err(key, format!("missing `type`, expected one of: {}", types.join(", ")));
            None
        }
    };
    Some((name?, ty?))
}

/// The source registry: one arm per source type.
fn parse_source(c: &mut Checker<'_>, key: &str, mut t: toml::Table) -> Option<(String, SourceConfig)> {
    let (name, ty) = take_name_and_type(c, key, &mut t, &["simulator", "file", "r1", "kafka", "ct"])?;
    let v = toml::Value::Table(t);
    let kind = match ty.as_str() {
        "simulator" => {
            let s: SimulatorConfig = c.de(key, v)?;
            check_simulator(c, key, &s);
            SourceKind::Simulator(s)
        }
        "r1" => {
            let r: R1Config = c.de(key, v)?;
            positive(c, &format!("{key}.builds"), r.builds as u64);
            positive(c, &format!("{key}.batch_samples"), r.batch_samples as u64);
            SourceKind::R1(r)
        }
        "file" => {
            let f: FileSourceConfig = c.de(key, v)?;
            if f.batch_records == 0 {
                c.err(&format!("{key}.batch_records"), "expected a positive number");
            }
            SourceKind::File(f)
        }
        "kafka" => {
            let k: KafkaSourceConfig = c.de(key, v)?;
            if k.brokers.trim().is_empty() {
                c.err(&format!("{key}.brokers"), "expected `host:port[,host:port...]`");
            }
            if k.topics.is_empty() || k.topics.iter().any(|t| t.is_empty()) {
                c.err(&format!("{key}.topics"), "expected at least one non-empty topic name");
            }
            if k.topics.len() > 256 {
                c.err(&format!("{key}.topics"), "at most 256 topics per source");
            }
            positive(c, &format!("{key}.batch_records"), k.batch_records as u64);
            positive(c, &format!("{key}.linger_ms"), k.linger_ms);
            positive(c, &format!("{key}.prefetch_kib"), k.prefetch_kib);
            SourceKind::Kafka(k)
        }
        "ct" => {
            let ct: CtSourceConfig = c.de(key, v)?;
            check_ct_source(c, key, &ct);
            SourceKind::Ct(ct)
        }
        _ => return None,
    };
    Some((key.to_owned(), SourceConfig { name, kind }))
}

/// The sink registry: one arm per sink type.
fn parse_sink(c: &mut Checker<'_>, key: &str, mut t: toml::Table) -> Option<(String, SinkConfig)> {
    let (name, ty) = take_name_and_type(c, key, &mut t, &["file", "null", "postgres", "sqlite", "kafka", "redis", "webhook", "airflow"])?;
    let v = toml::Value::Table(t);
    let kind = match ty.as_str() {
        "file" => {
            let f: FileSinkConfig = c.de(key, v)?;
            if f.flush_ms == 0 {
                c.err(&format!("{key}.flush_ms"), "expected a positive number of milliseconds");
            }
            SinkKind::File(f)
        }
        "null" => SinkKind::Null(c.de(key, v)?),
        "postgres" => {
            let p: PostgresSinkConfig = c.de(key, v)?;
            if p.url.trim().is_empty() {
                c.err(&format!("{key}.url"), "expected a connection URL such as \"postgres://user@host:5432/db\"");
            }
            if p.schema.is_empty() || !p.schema.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') || p.schema.starts_with(|ch: char| ch.is_ascii_digit()) {
                c.err(&format!("{key}.schema"), "expected an identifier (letters, digits, `_`, not starting with a digit)");
            }
            positive(c, &format!("{key}.flush_ms"), p.flush_ms);
            SinkKind::Postgres(p)
        }
        "sqlite" => {
            let p: SqliteSinkConfig = c.de(key, v)?;
            if p.path.as_os_str().is_empty() {
                c.err(&format!("{key}.path"), "expected a database file such as \"out/results.sqlite\"");
            }
            positive(c, &format!("{key}.flush_ms"), p.flush_ms);
            SinkKind::Sqlite(p)
        }
        "kafka" => {
            let k: KafkaSinkConfig = c.de(key, v)?;
            if k.brokers.trim().is_empty() {
                c.err(&format!("{key}.brokers"), "expected `host:port[,host:port...]`");
            }
            if k.topic.is_empty() {
                c.err(&format!("{key}.topic"), "expected a topic name");
            }
            for r in &k.records {
                if matches!(r, RecordKind::LayerSummary | RecordKind::Grid | RecordKind::Window | RecordKind::SpcSignal | RecordKind::LayerVerdict | RecordKind::BuildReport | RecordKind::DataQuality | RecordKind::InputQuality | RecordKind::SpcBaseline) {
                    c.err(
                        &format!("{key}.records"),
                        format!("{:?} cannot go to a Kafka sink exactly once (window results are deduplicated by key; a topic has none): use a postgres, sqlite or file sink; expected anomaly, dead_letter or late", r.name()),
                    );
                }
            }
            positive(c, &format!("{key}.flush_ms"), k.flush_ms);
            if k.metadata_max_bytes < 512 {
                c.err(&format!("{key}.metadata_max_bytes"), "expected at least 512 bytes (the progress and transaction need room)");
            }
            SinkKind::Kafka(k)
        }
        "redis" => {
            let r: RedisSinkConfig = c.de(key, v)?;
            if !r.url.starts_with("redis://") && !r.url.starts_with("rediss://") && !r.url.starts_with("${") {
                c.err(&format!("{key}.url"), "expected a URL such as \"redis://127.0.0.1:6379/0\"");
            }
            for k in &r.records {
                if !matches!(k, RecordKind::LayerSummary | RecordKind::LayerVerdict | RecordKind::DataQuality | RecordKind::BuildReport | RecordKind::Anomaly) {
                    c.err(&format!("{key}.records"), format!("{:?} is no live state: expected layer_summary, layer_verdict, data_quality, build_report or anomaly", k.name()));
                }
            }
            if r.key_prefix.is_empty() || r.channel.is_empty() {
                c.err(key, "key_prefix and channel must not be empty");
            }
            positive(c, &format!("{key}.flush_ms"), r.flush_ms);
            SinkKind::Redis(r)
        }
        "webhook" => {
            let w: WebhookSinkConfig = c.de(key, v)?;
            if !(w.url.starts_with("http://") || w.url.starts_with("https://") || w.url.starts_with("${")) {
                c.err(&format!("{key}.url"), "expected an http:// or https:// URL");
            }
            positive(c, &format!("{key}.flush_ms"), w.flush_ms);
            positive(c, &format!("{key}.timeout_ms"), w.timeout_ms);
            SinkKind::Webhook(w)
        }
        "airflow" => {
            let a: AirflowSinkConfig = c.de(key, v)?;
            if !(a.url.starts_with("http://") || a.url.starts_with("https://") || a.url.starts_with("${")) {
                c.err(&format!("{key}.url"), "expected the Airflow API server's http:// or https:// URL");
            }
            if a.dag_id.is_empty() || !a.dag_id.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')) {
                c.err(&format!("{key}.dag_id"), "expected a DAG id (letters, digits, `_`, `.`, `-`)");
            }
            for k in &a.records {
                if !matches!(k, RecordKind::Anomaly | RecordKind::SpcSignal | RecordKind::LayerVerdict | RecordKind::BuildReport) {
                    c.err(&format!("{key}.records"), format!("{:?} starts no DAG run: expected anomaly, spc_signal, layer_verdict or build_report", k.name()));
                }
            }
            for v in &a.verdicts {
                if !matches!(v.as_str(), "ok" | "warn" | "fail") {
                    c.err(&format!("{key}.verdicts"), format!("{v:?}: expected ok, warn or fail"));
                }
            }
            if !a.run_id_prefix.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')) {
                c.err(&format!("{key}.run_id_prefix"), "expected letters, digits, `_`, `.`, `-`");
            }
            positive(c, &format!("{key}.flush_ms"), a.flush_ms);
            positive(c, &format!("{key}.timeout_ms"), a.timeout_ms);
            SinkKind::Airflow(a)
        }
        _ => return None,
    };
    Some((key.to_owned(), SinkConfig { name, kind }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::DEMO_TOML;

    #[test]
    fn demo_topology_loads() {
        let t = load(DEMO_TOML, "demo.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.sources.is_empty() && !t.sinks.is_empty());
    }

    #[test]
    fn every_error_at_once_with_lines() {
        let text = "name = \"x\"\n[engine]\nwatermark_bound_ms = \"fast\"\n\n[[sources]]\nname = \"a\"\ntype = \"simulatr\"\n\n[[sinks]]\nname = \"o\"\ntype = \"file\"\npathh = \"x\"\n";
        let errs = load(text, "t.toml", Path::new(".")).unwrap_err().0;
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, vec![(3, "engine.watermark_bound_ms"), (7, "sources[0].type"), (12, "sinks[0].pathh")], "{errs:?}");
    }

    #[test]
    fn spc_charts_are_checked_with_lines() {
        let head = "name = \"x\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"o\"\ntype = \"null\"\n";
        let bad = format!(
            "{head}[[spc]]\nname = \"a\"\nchannel = \"temprature_c\"\n[[spc]]\nname = \"b\"\nchannel = \"energy_density_j_mm3\"\nstatistic = \"std_dev\"\n[[spc]]\nname = \"c\"\nchannel = \"temperature_c\"\nchart = \"ewma\"\nlambda = 1.5\n[[spc]]\nname = \"d\"\nchannel = \"temperature_c\"\nbaseline = \"given\"\ncentre = 1.0\n[[spc]]\nname = \"e\"\nchannel = \"temperature_c\"\nbaseline_layers = 1\n"
        );
        let errs = load(&bad, "t.toml", Path::new(".")).unwrap_err().0;
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, vec![(10, "spc[0].channel"), (14, "spc[1].statistic"), (19, "spc[2].lambda"), (20, "spc[3].sigma"), (28, "spc[4].baseline_layers")], "{errs:?}");
        let good = format!("{head}[[spc]]\nname = \"a\"\nchannel = \"energy_density_j_mm3\"\nchart = \"cusum\"\n");
        let t = load(&good, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.spc[0].statistic(), crate::topology::SpcStatistic::Value);
    }

    #[test]
    fn cell_charts_and_reference_baselines_are_checked() {
        let head = "name = \"x\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"o\"\ntype = \"null\"\n";
        let bad = format!(
            "{head}[[spc]]\nname = \"a\"\nchannel = \"temperature_c\"\nstatistic = \"cell_mean\"\n[[spc]]\nname = \"b\"\nchannel = \"energy_density_j_mm3\"\nstatistic = \"cell_mean\"\n[[spc]]\nname = \"c\"\nchannel = \"photodiode_on_axis\"\nbaseline = \"reference\"\n[[spc]]\nname = \"d\"\nchannel = \"photodiode_on_axis\"\nreference_build = \"x\"\n"
        );
        let errs = load(&bad, "t.toml", Path::new(".")).unwrap_err().0;
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, vec![(11, "spc[0].statistic"), (15, "spc[1].statistic"), (16, "spc[2].reference_build"), (19, "spc[2].baseline"), (23, "spc[3].reference_build")], "{errs:?}");
        assert!(errs[0].message.contains("grid_channel"), "{}", errs[0].message);
        assert!(errs[3].message.contains("postgres or sqlite sink"), "{}", errs[4].message);
        let good = "name = \"x\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"db\"\ntype = \"sqlite\"\npath = \"r.sqlite\"\n[[spc]]\nname = \"c\"\nchannel = \"photodiode_on_axis\"\nstatistic = \"cell_mean\"\nbaseline = \"reference\"\nreference_build = \"sim-001\"\n";
        let t = load(good, "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.spc[0].min_cell_samples, crate::analytics::grid::DEVIATION_MIN_COUNT);
    }

    #[test]
    fn a_sqlite_sink_loads_with_its_defaults_and_refuses_what_it_does_not_know() {
        let head = "name = \"cell\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"db\"\ntype = \"sqlite\"\n";
        let t = load(&format!("{head}path = \"out/results.sqlite\"\n"), "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let expected = SqliteSinkConfig { path: "out/results.sqlite".into(), pipeline: "cell".into(), records: RecordKind::ALL.to_vec(), flush_ms: 100 };
        assert_eq!(t.sinks[0].kind, SinkKind::Sqlite(expected), "the pipeline defaults to the topology's name");

        let errs = load(&format!("{head}path = \"r.sqlite\"\npathh = \"x\"\n"), "t.toml", Path::new(".")).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].key.as_str()), (9, "sinks[0].pathh"));
        assert_eq!(errs[0].message, "unknown field `pathh`, expected one of `path`, `pipeline`, `records`, `flush_ms`");

        let errs = load(&format!("{head}path = \"\"\nflush_ms = 0\n[[sinks]]\nname = \"db2\"\ntype = \"sqlite\"\npath = \"r.sqlite\"\n[[sinks]]\nname = \"db3\"\ntype = \"sqlite\"\npath = \"r.sqlite\"\n"), "t.toml", Path::new(".")).unwrap_err().0;
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, vec![(8, "sinks[0].path"), (9, "sinks[0].flush_ms"), (17, "sinks[2].path")], "{errs:?}");
        assert!(errs[2].message.contains("another sqlite sink already writes \"r.sqlite\""), "{}", errs[2].message);

        let errs = load(&format!("{head}pipeline = \"p\"\n"), "t.toml", Path::new(".")).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].key == "sinks[0]" && errs[0].message.contains("missing field `path`"), "{errs:?}");
    }

    #[test]
    fn an_airflow_sink_loads_with_its_defaults_and_refuses_what_starts_no_run() {
        let head = "name = \"plant\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"af\"\ntype = \"airflow\"\n";
        let t = load(&format!("{head}dag_id = \"quality\"\n"), "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        let SinkKind::Airflow(a) = &t.sinks[0].kind else { panic!("{:?}", t.sinks[0].kind) };
        assert_eq!((a.run_id_prefix.as_str(), a.records.as_slice(), a.verdicts.as_slice()), ("plant", &[RecordKind::Anomaly][..], &["fail".to_owned()][..]));
        assert_eq!((a.url.as_str(), a.username.as_str(), a.password.as_str()), ("${AIRFLOW_URL:-http://127.0.0.1:8080}", "${AIRFLOW_USERNAME}", "${AIRFLOW_PASSWORD}"));

        let bad = format!("{head}dag_id = \"a/b\"\nurl = \"ftp://x\"\nrecords = [\"grid\"]\nverdicts = [\"bad\"]\nflush_ms = 0\n");
        let errs = load(&bad, "t.toml", Path::new(".")).unwrap_err().0;
        let got: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(got, vec!["sinks[0].dag_id", "sinks[0].url", "sinks[0].records", "sinks[0].verdicts", "sinks[0].flush_ms"], "{errs:?}");
        assert!(errs[2].message.contains("starts no DAG run"), "{}", errs[2].message);

        let errs = load(&format!("{head}records = [\"anomaly\"]\n"), "t.toml", Path::new(".")).unwrap_err().0;
        assert!(errs[0].message.contains("missing field `dag_id`"), "{errs:?}");
    }

    #[test]
    fn build_descriptions_are_checked_before_anything_starts() {
        let dir = std::env::temp_dir().join(format!("meltstream-check-build-info-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("builds")).unwrap();
        std::fs::write(dir.join("builds/b1.toml"), "build_id = \"b1\"\nlayer_thickness_um = 30.0\n").unwrap();
        let text = "name = \"x\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"o\"\ntype = \"null\"\n[build_info]\ndir = \"builds\"\n";
        let t = load(text, "x.toml", &dir).expect("a good description");
        assert_eq!(t.build_info("b1").unwrap().and_then(|i| i.layer_thickness_um), Some(30.0));
        assert_eq!(t.fusion_params("b1").thickness_um, 30.0);
        std::fs::write(dir.join("builds/b2.json"), r#"{"build_id": "b2", "styles": [{"style": "core", "power_w": -1, "scan_speed_mm_s": 1, "hatch_spacing_mm": 1}]}"#).unwrap();
        let errs = load(text, "x.toml", &dir).unwrap_err().0;
        assert_eq!((errs.len(), errs[0].line, errs[0].key.as_str()), (1, 9, "build_info.dir"), "{errs:?}");
        assert!(errs[0].message.contains("b2.json") && errs[0].message.contains("styles[0].power_w"), "{errs:?}");
        let missing = load(&text.replace("\"builds\"", "\"nowhere\""), "x.toml", &dir).unwrap_err().0;
        assert!(missing[0].message.contains("nowhere"), "{missing:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = load("name = \"x\"\n[engine\n", "t.toml", Path::new(".")).unwrap_err().0;
        assert_eq!(errs[0].line, 2, "{errs:?}");
    }

    #[test]
    fn a_misspelt_rule_channel_is_refused_with_a_hint() {
        let rule = |ch: &str| format!("name = \"x\"\n[[sources]]\nname = \"a\"\ntype = \"simulator\"\n[[sinks]]\nname = \"o\"\ntype = \"null\"\n[[rules]]\nname = \"r\"\nchannel = \"{ch}\"\nop = \">\"\nlimit = 1.0\n");
        for bad in ["temprature_c", "Temperature_C", "photodiode-on-axis", "energy_density_j_mm"] {
            let errs = load(&rule(bad), "t.toml", Path::new(".")).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!((errs[0].line, errs[0].key.as_str()), (10, "rules[0].channel"), "{bad}: {errs:?}");
            assert!(errs[0].message.contains("did you mean"), "{bad}: {}", errs[0].message);
        }
        for good in ["temperature_c", "temperature", "energy_density_j_mm3", "o2_ppm", "chamber_pressure_mbar", "log:temprature_c"] {
            load(&rule(good), "t.toml", Path::new(".")).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert!(load(&rule("log:"), "t.toml", Path::new(".")).is_err());
    }
}
