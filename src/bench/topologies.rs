//! The bench topologies: `benches/r1.toml`, `benches/r2.toml` and `benches/kafka-pg.toml`,
//! embedded in the binary (so `meltstream bench` runs from any directory) or read from a path
//! (`--topology FILE`), and the command-line overrides applied to them before a run.
//!
//! Never builds a topology from strings: what a bench runs is the file, plus the overrides it
//! prints.

use std::path::Path;

use meltstream_engine::topology::{self, Pace, SimulatorConfig, SinkKind, SourceKind, Topology};

/// `benches/r1.toml`.
pub const R1: &str = include_str!("../../benches/r1.toml");
/// `benches/r2.toml`.
pub const R2: &str = include_str!("../../benches/r2.toml");
/// `benches/kafka-pg.toml`.
pub const KAFKA_PG: &str = include_str!("../../benches/kafka-pg.toml");

/// Loads `file`, or else the embedded text of `benches/<name>` (`embedded`); returns the
/// topology and where it came from.
pub fn load(embedded: &str, name: &str, file: Option<&Path>) -> anyhow::Result<(Topology, String)> {
    let (res, origin) = match file {
        Some(f) => (topology::load_file(f), f.display().to_string()),
        None => {
            let origin = format!("benches/{name} (embedded)");
            (topology::load(embedded, &origin, Path::new(".")), origin)
        }
    };
    let t = res.map_err(|errs| anyhow::anyhow!("{errs}\n{} error(s) in the bench topology", errs.0.len()))?;
    Ok((t, origin))
}

/// Command-line overrides of a bench topology; `None`/`false` leaves the file's value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    /// `samples` of the first `type = "r1"` source.
    pub samples: Option<u64>,
    /// `machines` of the first simulator source.
    pub machines: Option<u32>,
    /// `layers` of the first simulator source.
    pub layers: Option<u32>,
    /// `pace = "real"` on the first simulator source.
    pub real_pace: bool,
}

impl Overrides {
    /// Applies the overrides to `t`; returns what it changed, one `key = value` each.
    pub fn apply(&self, t: &mut Topology) -> anyhow::Result<Vec<String>> {
        let mut changed = Vec::new();
        if let Some(n) = self.samples {
            let (name, r1) = t
                .sources
                .iter_mut()
                .find_map(|s| match &mut s.kind {
                    SourceKind::R1(c) => Some((s.name.clone(), c)),
                    _ => None,
                })
                .ok_or_else(|| anyhow::anyhow!("--samples needs a source of type \"r1\" in the bench topology"))?;
            r1.samples = n;
            changed.push(format!("sources[{name}].samples = {n}"));
        }
        if self.machines.is_some() || self.layers.is_some() || self.real_pace {
            let name = t.sources.iter().find(|s| matches!(s.kind, SourceKind::Simulator(_))).map(|s| s.name.clone()).unwrap_or_default();
            let sim = simulator_mut(t).ok_or_else(|| anyhow::anyhow!("--machines, --layers and --real-pace need a simulator source in the bench topology"))?;
            changed.extend(self.apply_to_simulator(sim).into_iter().map(|c| format!("sources[{name}].{c}")));
        }
        Ok(changed)
    }

    /// Applies `machines`, `layers` and `real_pace` to a simulator's configuration; returns
    /// what it changed.
    pub fn apply_to_simulator(&self, sim: &mut SimulatorConfig) -> Vec<String> {
        let mut changed = Vec::new();
        if let Some(m) = self.machines {
            sim.machines = m;
            changed.push(format!("machines = {m}"));
        }
        if let Some(l) = self.layers {
            sim.layers = l;
            changed.push(format!("layers = {l}"));
        }
        if self.real_pace {
            sim.pace = Pace::Real;
            changed.push("pace = \"real\"".to_owned());
        }
        changed
    }
}

/// Renames `t` to `name`, with the defaults that follow the name: a Kafka source's consumer
/// group (`meltstream-<name>`) and a PostgreSQL sink's pipeline (`<name>`) where the file left
/// them unset. Returns what it changed.
pub fn rename(t: &mut Topology, name: &str) -> Vec<String> {
    let old = std::mem::replace(&mut t.name, name.to_owned());
    let mut changed = vec![format!("name = {name:?}")];
    for s in &mut t.sources {
        if let SourceKind::Kafka(k) = &mut s.kind {
            if k.group_id == format!("meltstream-{old}") {
                k.group_id = format!("meltstream-{name}");
                changed.push(format!("sources[{}].group_id = {:?}", s.name, k.group_id));
            }
        }
    }
    for s in &mut t.sinks {
        if let SinkKind::Postgres(p) = &mut s.kind {
            if p.pipeline == old {
                p.pipeline = name.to_owned();
                changed.push(format!("sinks[{}].pipeline = {name:?}", s.name));
            }
        }
    }
    changed
}

/// The first simulator source of `t`.
pub fn simulator_mut(t: &mut Topology) -> Option<&mut SimulatorConfig> {
    t.sources.iter_mut().find_map(|s| match &mut s.kind {
        SourceKind::Simulator(c) => Some(c),
        _ => None,
    })
}

/// The input of the kafka-pg bench: the simulator source of the embedded `benches/r2.toml`,
/// with the `machines` and `layers` overrides (its pace does not matter: the producer writes
/// as fast as the broker takes it).
pub fn r2_input(overrides: &Overrides) -> anyhow::Result<SimulatorConfig> {
    let (mut t, origin) = load(R2, "r2.toml", None)?;
    let sim = simulator_mut(&mut t).ok_or_else(|| anyhow::anyhow!("{origin} has no simulator source"))?;
    Overrides { samples: None, real_pace: false, ..*overrides }.apply_to_simulator(sim);
    Ok(sim.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_topologies_load() {
        for (text, name) in [(R1, "r1.toml"), (R2, "r2.toml"), (KAFKA_PG, "kafka-pg.toml")] {
            load(text, name, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn overrides_change_only_what_they_name() {
        let (mut t, _) = load(R2, "r2.toml", None).expect("r2");
        let before = t.clone();
        let changed = Overrides { machines: Some(3), real_pace: true, ..Default::default() }.apply(&mut t).expect("apply");
        assert_eq!(changed, ["sources[fleet].machines = 3", "sources[fleet].pace = \"real\""]);
        let sim = simulator_mut(&mut t).expect("sim");
        assert_eq!((sim.machines, sim.layers, sim.pace), (3, 2, Pace::Real));
        sim.machines = 8;
        sim.pace = Pace::Fast;
        assert_eq!(t, before);
        let (mut r1, _) = load(R1, "r1.toml", None).expect("r1");
        assert!(Overrides { machines: Some(1), ..Default::default() }.apply(&mut r1).is_err());
        assert_eq!(Overrides { samples: Some(5), ..Default::default() }.apply(&mut r1).expect("samples"), ["sources[r1].samples = 5"]);
    }
}
