//! Build metadata: what was planned for a build (machine, material, layer thickness, the
//! parameters and regions of each build style, each laser's field, the operator's notes), read
//! from one file per build, TOML or JSON, named after the build (`<dir>/<build_id>.toml` or
//! `.json`; topology key `[build_info] dir`).
//!
//! It is joined to the build when the build's actor starts (and again at each restart, so a
//! description must be in place before its build starts and not change during it):
//! - energy density per style uses the planned parameters of a laser whose layer events carry
//!   none, and the planned layer thickness before `[engine] default_layer_thickness_um`;
//! - the build report carries it, with the planned energy density per style;
//! - CT fusion maps a defect's z to its layer with the planned thickness when the stored layer
//!   heights are missing, and places a laser's layer-wide SPC evidence on the laser's field.
//!
//! Vendors' build files (`.mtt`, `.cli`, `.slm`) are not read: they need the vendors' libraries
//! (libSLM for `.mtt`); export what is needed into this format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analytics::energy::energy_density_j_mm3;

/// A rectangle on the build plate, mm: `[x0, y0, x1, y1]` with `x0 < x1`, `y0 < y1`.
pub type RectMm = [f64; 4];

/// The planned parameters of one build style (for every laser, or one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StylePlan {
    /// Style (`core`, `contour`, `skin`, …).
    pub style: String,
    /// Only this laser (1-based); every laser when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub laser: Option<u8>,
    /// Laser power, W.
    pub power_w: f64,
    /// Scan speed, mm/s.
    pub scan_speed_mm_s: f64,
    /// Hatch spacing, mm.
    pub hatch_spacing_mm: f64,
    /// Layer thickness, µm, when it differs from the build's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_thickness_um: Option<f64>,
    /// Where on the plate the style is exposed (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_mm: Option<RectMm>,
}

/// The field a laser scans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaserField {
    /// Laser, 1-based.
    pub laser: u8,
    /// Its field on the plate.
    pub field_mm: RectMm,
}

/// One build's description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// The build it describes (must match the file name).
    pub build_id: String,
    /// Machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Material (alloy, powder lot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material: Option<String>,
    /// Layer thickness, µm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_thickness_um: Option<f64>,
    /// Planned parameters per style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub styles: Vec<StylePlan>,
    /// Each laser's field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lasers: Vec<LaserField>,
    /// Operator's notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl BuildInfo {
    /// Parses a description (`json` or TOML) and checks it; the message names what is wrong.
    pub fn parse(text: &str, json: bool) -> Result<BuildInfo, String> {
        let info: BuildInfo = if json { serde_json::from_str(text).map_err(|e| e.to_string())? } else { toml::from_str(text).map_err(|e| e.to_string())? };
        info.check()?;
        Ok(info)
    }

    fn check(&self) -> Result<(), String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.build_id.is_empty() || self.build_id.len() > crate::input::event::MAX_BUILD_ID_BYTES {
            return Err("build_id: expected a non-empty id of at most 256 bytes".into());
        }
        if self.layer_thickness_um.is_some_and(|t| !positive(t)) {
            return Err("layer_thickness_um: expected a positive thickness in µm".into());
        }
        for (i, s) in self.styles.iter().enumerate() {
            if s.style.is_empty() {
                return Err(format!("styles[{i}].style: expected a style name"));
            }
            for (key, v) in [("power_w", s.power_w), ("scan_speed_mm_s", s.scan_speed_mm_s), ("hatch_spacing_mm", s.hatch_spacing_mm)] {
                if !positive(v) {
                    return Err(format!("styles[{i}].{key}: expected a positive number"));
                }
            }
            if s.layer_thickness_um.is_some_and(|t| !positive(t)) {
                return Err(format!("styles[{i}].layer_thickness_um: expected a positive thickness in µm"));
            }
            if s.laser == Some(0) {
                return Err(format!("styles[{i}].laser: lasers are numbered from 1"));
            }
            if let Some(r) = s.region_mm {
                check_rect(&r).map_err(|e| format!("styles[{i}].region_mm: {e}"))?;
            }
        }
        for (i, l) in self.lasers.iter().enumerate() {
            if l.laser == 0 {
                return Err(format!("lasers[{i}].laser: lasers are numbered from 1"));
            }
            check_rect(&l.field_mm).map_err(|e| format!("lasers[{i}].field_mm: {e}"))?;
        }
        Ok(())
    }

    /// The planned energy density of each style a laser (1-based) exposes, J/mm³: its own
    /// entries, else those for every laser.
    pub fn planned_energy_by_style(&self, laser: u8, default_thickness_um: f64) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        // Entries for every laser first, so that a laser's own entry replaces them.
        for s in self.styles.iter().filter(|s| s.laser.is_none()).chain(self.styles.iter().filter(|s| s.laser == Some(laser))) {
            let t = s.layer_thickness_um.or(self.layer_thickness_um).unwrap_or(default_thickness_um);
            let e = energy_density_j_mm3(s.power_w, s.scan_speed_mm_s, s.hatch_spacing_mm, t / 1000.0);
            if e.is_finite() {
                m.insert(s.style.clone(), e);
            }
        }
        m
    }

    /// The planned energy density per style, J/mm³: the mean over the style's entries (one for
    /// every laser, or one per laser with its own parameters).
    pub fn planned_energy(&self, default_thickness_um: f64) -> BTreeMap<String, f64> {
        let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
        for s in &self.styles {
            let t = s.layer_thickness_um.or(self.layer_thickness_um).unwrap_or(default_thickness_um);
            let e = energy_density_j_mm3(s.power_w, s.scan_speed_mm_s, s.hatch_spacing_mm, t / 1000.0);
            if e.is_finite() {
                let x = sums.entry(s.style.clone()).or_default();
                x.0 += e;
                x.1 += 1;
            }
        }
        sums.into_iter().map(|(k, (s, n))| (k, s / f64::from(n))).collect()
    }

    /// The field of a laser (1-based), when given.
    pub fn field(&self, laser: u8) -> Option<RectMm> {
        self.lasers.iter().find(|l| l.laser == laser).map(|l| l.field_mm)
    }
}

fn check_rect(r: &RectMm) -> Result<(), String> {
    if r.iter().all(|v| v.is_finite()) && r[0] < r[2] && r[1] < r[3] {
        Ok(())
    } else {
        Err("expected [x0, y0, x1, y1] in mm with x0 < x1 and y0 < y1".into())
    }
}

/// The description file of `build` in `dir`, if there is one (`.toml` before `.json`).
pub fn file_of(dir: &Path, build: &str) -> Option<PathBuf> {
    // A build id is a key, not a path: one with a separator or `..` names no file.
    if build.contains(['/', '\\']) || build.starts_with('.') {
        return None;
    }
    ["toml", "json"].iter().map(|ext| dir.join(format!("{build}.{ext}"))).find(|p| p.is_file())
}

/// Reads the description of `build` from `dir`: `Ok(None)` when there is none.
pub fn load(dir: &Path, build: &str) -> Result<Option<BuildInfo>, String> {
    let Some(path) = file_of(dir, build) else { return Ok(None) };
    read(&path).map(Some).and_then(|info| match info {
        Some(i) if i.build_id != build => Err(format!("{}: describes build {:?}, not {build:?}", path.display(), i.build_id)),
        other => Ok(other),
    })
}

/// Reads and checks one description file.
pub fn read(path: &Path) -> Result<BuildInfo, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = path.extension().is_some_and(|e| e == "json");
    BuildInfo::parse(&text, json).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every description in `dir` (files ending in `.toml` or `.json`), each checked, keyed by
/// build: what `meltstream check` validates. Errors name their file.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, BuildInfo>, Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "json")).collect();
    paths.sort();
    let (mut out, mut errors) = (BTreeMap::new(), Vec::new());
    for p in paths {
        match read(&p) {
            Ok(i) if p.file_stem().is_some_and(|s| s.to_string_lossy() == i.build_id) => {
                out.insert(i.build_id.clone(), i);
            }
            Ok(i) => errors.push(format!("{}: describes build {:?}; name the file {}.toml or {0}.json", p.display(), i.build_id, i.build_id)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
build_id = "b1"
machine = "M400-4 #2"
material = "316L lot 7"
layer_thickness_um = 40.0
notes = "reused powder"

[[styles]]
style = "core"
power_w = 280.0
scan_speed_mm_s = 1000.0
hatch_spacing_mm = 0.1

[[styles]]
style = "core"
laser = 2
power_w = 320.0
scan_speed_mm_s = 1000.0
hatch_spacing_mm = 0.1

[[styles]]
style = "contour"
power_w = 150.0
scan_speed_mm_s = 500.0
hatch_spacing_mm = 0.1
layer_thickness_um = 30.0
region_mm = [0.0, 0.0, 10.0, 10.0]

[[lasers]]
laser = 1
field_mm = [0.0, 0.0, 200.0, 200.0]
"#;

    #[test]
    fn planned_energy_takes_a_lasers_own_style_over_the_common_one() {
        let i = BuildInfo::parse(TOML, false).unwrap();
        let l1 = i.planned_energy_by_style(1, 30.0);
        assert!((l1["core"] - 70.0).abs() < 1e-9, "{l1:?}");
        assert!((l1["contour"] - 100.0).abs() < 1e-9, "{l1:?}");
        assert!((i.planned_energy_by_style(2, 30.0)["core"] - 80.0).abs() < 1e-9);
        assert_eq!(i.field(1), Some([0.0, 0.0, 200.0, 200.0]));
        assert_eq!(i.field(2), None);
        // JSON says the same.
        let j = BuildInfo::parse(&serde_json::to_string(&i).unwrap(), true).unwrap();
        assert_eq!(i, j);
    }

    #[test]
    fn a_bad_description_says_where() {
        for (text, want) in [
            ("build_id = \"b\"\nlayer_thickness_um = -1.0", "layer_thickness_um"),
            ("build_id = \"b\"\n[[styles]]\nstyle = \"core\"\npower_w = 0.0\nscan_speed_mm_s = 1.0\nhatch_spacing_mm = 0.1", "styles[0].power_w"),
            ("build_id = \"b\"\n[[lasers]]\nlaser = 1\nfield_mm = [5.0, 0.0, 1.0, 1.0]", "lasers[0].field_mm"),
            ("build_id = \"b\"\nmachin = \"x\"", "unknown field"),
        ] {
            let e = BuildInfo::parse(text, false).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn files_are_found_by_build_and_must_name_it() {
        let dir = std::env::temp_dir().join(format!("meltstream-build-info-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b1.toml"), TOML).unwrap();
        std::fs::write(dir.join("b2.json"), r#"{"build_id":"other"}"#).unwrap();
        assert_eq!(load(&dir, "b1").unwrap().unwrap().machine.as_deref(), Some("M400-4 #2"));
        assert!(load(&dir, "b2").unwrap_err().contains("not \"b2\""));
        assert_eq!(load(&dir, "b3").unwrap(), None);
        assert_eq!(load(&dir, "../b1").unwrap(), None);
        let errs = read_dir(&dir).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
