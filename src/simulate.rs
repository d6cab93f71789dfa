//! `meltstream simulate`: the simulated fleet of a topology as JSON lines, with the injected
//! anomalies' ground truth and the CT defect list its builds would get.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// Writes the fleet `cfg` to `out` (`-`: stdout), its ground truth to `truth` and its CT list to
/// `ct` (a long-running fleet: one build per machine).
pub fn write(cfg: &meltstream_engine::topology::SimulatorConfig, out: &PathBuf, truth: Option<&PathBuf>, ct: Option<&PathBuf>) -> anyhow::Result<()> {
    let mut cfg = cfg.clone();
    cfg.builds_per_machine = cfg.builds_per_machine.max(1);
    let mut sim = meltstream_engine::simulator::Simulator::new(&cfg, 0);
    let mut w: Box<dyn Write> = if out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?))
    };
    let mut s = String::new();
    while let Some(b) = sim.next_batch() {
        s.clear();
        meltstream_engine::input::encode::write_json_lines(&b, &mut s);
        w.write_all(s.as_bytes())?;
    }
    w.flush()?;
    if let Some(p) = truth {
        let mut f = std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?);
        for a in sim.ground_truth() {
            serde_json::to_writer(&mut f, a)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    if let Some(p) = ct {
        write_ct_list(&sim, p)?;
    }
    Ok(())
}

/// Writes the simulator's CT defect list: CSV for a `.csv` name, JSON lines otherwise.
fn write_ct_list(sim: &meltstream_engine::simulator::Simulator, p: &PathBuf) -> anyhow::Result<()> {
    let defects: Vec<_> = sim.ct_defects().into_iter().map(|d| d.defect).collect();
    let mut s = String::new();
    if p.extension().is_some_and(|e| e == "csv") {
        meltstream_engine::fusion::ct::write_csv(&defects, &mut s);
    } else {
        for d in &defects {
            s.push_str(&serde_json::to_string(d)?);
            s.push('\n');
        }
    }
    std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))
}

