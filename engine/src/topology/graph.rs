//! A checked topology: the whole graph of sources, windows, rules and sinks with the engine's
//! settings, as `load` returns it once every check passed.

use std::path::PathBuf;

use crate::topology::build_info_config::BuildInfoConfig;
use crate::topology::engine_config::EngineConfig;
use crate::topology::rules_config::RuleConfig;
use crate::topology::sinks::{SinkConfig, SinkKind};
use crate::topology::spc_config::SpcConfig;
use crate::fusion::FusionParams;
use crate::topology::verdict_config::VerdictConfig;
use crate::topology::sources::{SourceConfig, SourceKind};
use crate::topology::windows_config::WindowsConfig;

/// A checked topology.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Topology {
    /// Its name.
    pub name: String,
    /// Directory of the file it was loaded from (relative paths of file sources resolve here).
    pub base_dir: PathBuf,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Sources.
    pub sources: Vec<SourceConfig>,
    /// Windows.
    pub windows: WindowsConfig,
    /// Rules.
    pub rules: Vec<RuleConfig>,
    /// Statistical process control charts on per-layer statistics.
    pub spc: Vec<SpcConfig>,
    /// How closed layers are judged.
    pub verdict: VerdictConfig,
    /// How `meltstream fuse` joins CT defects with the results (`[fusion]`).
    pub fusion: FusionParams,
    /// Sinks.
    pub sinks: Vec<SinkConfig>,
    /// Where the builds' descriptions are (`[build_info]`).
    pub build_info: BuildInfoConfig,
    /// The engine instance this process is (see [`Topology::for_instance`]); `None` for a
    /// single process.
    pub instance: Option<String>,
}

impl Topology {
    /// Makes every simulator source finite and fast (`meltstream run --once`): a machine that
    /// runs builds without end runs one, and a real-time pace becomes `fast`.
    pub fn run_once(&mut self) {
        for s in &mut self.sources {
            if let SourceKind::Simulator(c) = &mut s.kind {
                if c.builds_per_machine == 0 {
                    c.builds_per_machine = 1;
                }
                c.pace = crate::topology::sources::Pace::Fast;
            }
        }
    }

    /// The fusion parameters of `build`: `[fusion]`, with the layer thickness of the build's
    /// description when it gives one (a description that cannot be read gives nothing here;
    /// the engine logged it when the build ran).
    pub fn fusion_params(&self, build: &str) -> FusionParams {
        self.fusion.for_build(self.build_info.dir.as_ref().map(|d| self.base_dir.join(d)).as_deref(), build)
    }

    /// The description of `build` (`[build_info] dir`), if the topology has a directory and it
    /// holds one; an error names the file and what is wrong.
    pub fn build_info(&self, build: &str) -> Result<Option<crate::input::build_info::BuildInfo>, String> {
        match &self.build_info.dir {
            Some(dir) => crate::input::build_info::load(&self.base_dir.join(dir), build),
            None => Ok(None),
        }
    }

    /// Makes this topology the one of engine instance `id`, one of several processes running the
    /// same file in one consumer group (`meltstream run --instance ID`, or `MELTSTREAM_INSTANCE`):
    /// each Kafka source's static member id (`group.instance.id`, unless its `properties` set
    /// one) becomes `<group>-<source>-<id>` and each Kafka sink's transactional id gets `-<id>`
    /// appended, so that the processes share the group's partitions and fence only a
    /// predecessor of the same instance, never each other. `id` is 1 to 64 of `A–Z a–z 0–9 . _ -`.
    pub fn for_instance(&mut self, id: &str) -> Result<(), String> {
        let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(format!("instance id {id:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -"));
        }
        for s in &mut self.sources {
            if let SourceKind::Kafka(k) = &mut s.kind {
                let member = format!("{}-{}-{id}", k.group_id, s.name);
                k.properties.entry("group.instance.id".to_owned()).or_insert(member);
            }
        }
        for s in &mut self.sinks {
            if let SinkKind::Kafka(k) = &mut s.kind {
                k.transactional_id = format!("{}-{id}", k.transactional_id);
            }
        }
        self.instance = Some(id.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{load, SinkKind, SourceKind};

    const TWO_KAFKAS: &str = r#"name = "cell"
[[sources]]
name = "ispm"
type = "kafka"
brokers = "127.0.0.1:9092"
topics = ["ispm"]
[[sinks]]
name = "alerts"
type = "kafka"
brokers = "127.0.0.1:9092"
topic = "alerts"
"#;

    #[test]
    fn an_instance_id_derives_the_member_and_transactional_ids() {
        let mut t = load(TWO_KAFKAS, "cell.toml", std::path::Path::new(".")).expect("topology");
        t.for_instance("p2").expect("a good id");
        let SourceKind::Kafka(k) = &t.sources[0].kind else { panic!("kafka source") };
        assert_eq!(k.properties.get("group.instance.id").map(String::as_str), Some("meltstream-cell-ispm-p2"));
        let SinkKind::Kafka(k) = &t.sinks[0].kind else { panic!("kafka sink") };
        assert_eq!(k.transactional_id, "meltstream-cell-alerts-p2");
        assert_eq!(t.instance.as_deref(), Some("p2"));
        for bad in ["", "a b", "x/y", &"x".repeat(65)] {
            assert!(t.clone().for_instance(bad).is_err(), "{bad:?} refused");
        }
    }
}
