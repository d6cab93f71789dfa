//! CT defect lists: what a CT scan of a finished part reports, days after its build, and the
//! one decoder every way of reading them shares (a JSON object per line, from a file or a Kafka
//! message; or a CSV file with a header row naming the same fields).

use serde::{Deserialize, Serialize};

/// What a CT scan classified a defect as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectType {
    /// A small round pore from trapped gas.
    GasPore,
    /// A pore from an unstable, too deep keyhole melt pool (too much energy).
    Keyhole,
    /// An irregular void of unmelted powder (too little energy).
    LackOfFusion,
    /// A crack.
    Crack,
}

impl DefectType {
    /// Its name in CT lists.
    pub fn name(self) -> &'static str {
        match self {
            DefectType::GasPore => "gas_pore",
            DefectType::Keyhole => "keyhole",
            DefectType::LackOfFusion => "lack_of_fusion",
            DefectType::Crack => "crack",
        }
    }
}

/// One defect of a CT defect list, in the build frame (mm, z up from the build plate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtDefect {
    /// Build.
    pub build_id: String,
    /// The CT's id of the defect (unique within its build).
    pub defect_id: String,
    /// x, mm.
    pub x_mm: f64,
    /// y, mm.
    pub y_mm: f64,
    /// Height above the plate, mm.
    pub z_mm: f64,
    /// Volume, mm³ (or `diameter_um`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mm3: Option<f64>,
    /// Equivalent diameter, µm (or `volume_mm3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diameter_um: Option<f64>,
    /// Type.
    #[serde(rename = "type")]
    pub defect_type: DefectType,
    /// The CT's confidence in [0, 1], when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

impl CtDefect {
    /// Equivalent diameter in µm: given, or that of a sphere of `volume_mm3`.
    pub fn equivalent_diameter_um(&self) -> Option<f64> {
        self.diameter_um.or_else(|| self.volume_mm3.map(|v| 1000.0 * (6.0 * v / std::f64::consts::PI).cbrt()))
    }

    /// The layer (from 0) holding height `z_mm` for a layer thickness and a plate height `z0_mm`:
    /// ⌊(z − z₀) / thickness⌋ (DESIGN §6 counts from 1: the same layer).
    pub fn layer(&self, thickness_um: f64, z0_mm: f64) -> Option<u32> {
        let l = ((self.z_mm - z0_mm) * 1000.0 / thickness_um).floor();
        (thickness_um > 0.0 && l.is_finite() && l >= 0.0 && l <= f64::from(u32::MAX)).then_some(l as u32)
    }

    fn check(self) -> Result<CtDefect, String> {
        if self.build_id.is_empty() || self.defect_id.is_empty() {
            return Err("build_id and defect_id must not be empty".into());
        }
        if ![self.x_mm, self.y_mm, self.z_mm].iter().all(|v| v.is_finite()) {
            return Err("x_mm, y_mm and z_mm must be finite numbers".into());
        }
        if self.equivalent_diameter_um().is_none_or(|d| !(d >= 0.0 && d.is_finite())) {
            return Err("expected diameter_um or volume_mm3 (a non-negative number)".into());
        }
        if self.confidence.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
            return Err("confidence must lie in [0, 1]".into());
        }
        Ok(self)
    }
}

/// One CT defect from a JSON object (a line of a JSON-lines file, or a Kafka message).
pub fn parse_json(bytes: &[u8]) -> Result<CtDefect, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let d: CtDefect = serde_path_to_error::deserialize(&mut de).map_err(|e| match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })?;
    d.check()
}

/// The header of a CSV defect list: the field names, in its order.
#[derive(Clone, Debug)]
pub struct CsvHeader(Vec<String>);

impl CsvHeader {
    /// From the first line of the file.
    pub fn parse(line: &str) -> Result<CsvHeader, String> {
        let names: Vec<String> = line.split(',').map(|s| s.trim().to_owned()).collect();
        for need in ["build_id", "defect_id", "x_mm", "y_mm", "z_mm", "type"] {
            if !names.iter().any(|n| n == need) {
                return Err(format!("the CSV header lacks `{need}` (it has: {})", names.join(", ")));
            }
        }
        Ok(CsvHeader(names))
    }

    /// One defect from a data row: its cells become a JSON object (numbers where the field is
    /// numeric, empty cells absent) that [`parse_json`] decodes.
    pub fn parse_row(&self, line: &str) -> Result<CtDefect, String> {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != self.0.len() {
            return Err(format!("expected {} cells, found {}", self.0.len(), cells.len()));
        }
        let mut obj = serde_json::Map::new();
        for (name, cell) in self.0.iter().zip(cells) {
            if cell.is_empty() {
                continue;
            }
            let v = match name.as_str() {
                "build_id" | "defect_id" | "type" => serde_json::Value::String(cell.to_owned()),
                _ => match cell.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                    Some(n) => serde_json::Value::Number(n),
                    None => return Err(format!("{name}: expected a number, found `{cell}`")),
                },
            };
            obj.insert(name.clone(), v);
        }
        parse_json(&serde_json::to_vec(&obj).map_err(|e| e.to_string())?)
    }
}

/// The fields of a CSV defect list in the order `write_csv` writes them: the columns of a CSV
/// row that comes without a header (a Kafka message).
pub const CSV_FIELDS: &str = "build_id,defect_id,x_mm,y_mm,z_mm,volume_mm3,diameter_um,type,confidence";

/// The one decoder of CT records, for a file's lines and a topic's messages alike: a JSON
/// object, a CSV header (a row naming `build_id` and `defect_id`; the rows after it follow its
/// order), or a CSV row (in the last header's order, [`CSV_FIELDS`] before any header).
#[derive(Clone, Debug, Default)]
pub struct CtDecoder {
    header: Option<CsvHeader>,
}

impl CtDecoder {
    /// One line or message: a defect, nothing (blank, or a header), or why it is malformed.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Option<CtDefect>, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text.starts_with('{') {
            return parse_json(text.as_bytes()).map(Some);
        }
        let cells: Vec<&str> = text.split(',').map(str::trim).collect();
        if cells.contains(&"build_id") && cells.contains(&"defect_id") {
            self.header = Some(CsvHeader::parse(text)?);
            return Ok(None);
        }
        match &self.header {
            Some(h) => h.parse_row(text).map(Some),
            None => CsvHeader::parse(CSV_FIELDS)?.parse_row(text).map(Some),
        }
    }
}

/// Reads a defect list (JSON lines, or CSV with a header row; see [`CtDecoder`]). Bad rows are
/// returned apart (line number from 1, error), never fatal.
pub fn read_list(text: &str) -> (Vec<CtDefect>, Vec<(usize, String)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut decoder = CtDecoder::default();
    for (i, l) in text.lines().enumerate() {
        match decoder.decode(l.as_bytes()) {
            Ok(Some(d)) => good.push(d),
            Ok(None) => {}
            Err(e) => bad.push((i + 1, e)),
        }
    }
    (good, bad)
}

/// Writes defects as CSV with a header (the fields of [`CtDefect`]).
pub fn write_csv(defects: &[CtDefect], out: &mut String) {
    use std::fmt::Write;
    out.push_str(CSV_FIELDS);
    out.push('\n');
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for d in defects {
        let _ = writeln!(out, "{},{},{},{},{},{},{},{},{}", d.build_id, d.defect_id, d.x_mm, d.y_mm, d.z_mm, opt(d.volume_mm3), opt(d.diameter_um), d.defect_type.name(), opt(d.confidence));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_csv_read_the_same_defect() {
        let json = r#"{"build_id":"b1","defect_id":"d7","x_mm":10.5,"y_mm":20.0,"z_mm":0.95,"diameter_um":120.0,"type":"keyhole"}"#;
        let d = parse_json(json.as_bytes()).expect("json");
        let mut csv = String::new();
        write_csv(std::slice::from_ref(&d), &mut csv);
        let (back, bad) = read_list(&csv);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, vec![d.clone()]);
        assert_eq!(d.layer(30.0, 0.0), Some(31), "0.95 mm over 30 µm layers lies in layer 31 (from 0)");
    }

    #[test]
    fn bad_rows_are_reported_with_their_line_and_the_rest_is_read() {
        let text = "build_id,defect_id,x_mm,y_mm,z_mm,volume_mm3,type\nb,1,1,2,3,0.001,gas_pore\nb,2,x,2,3,0.001,gas_pore\nb,3,1,2,3,,crack\nb,4,1,2,3,0.002,void\n";
        let (good, bad) = read_list(text);
        assert_eq!(good.len(), 1);
        assert!((good[0].equivalent_diameter_um().expect("d") - 124.07).abs() < 0.01);
        let lines: Vec<usize> = bad.iter().map(|b| b.0).collect();
        assert_eq!(lines, vec![3, 4, 5], "{bad:?}");
        assert!(bad[0].1.contains("x_mm") && bad[1].1.contains("diameter_um") && bad[2].1.contains("void"), "{bad:?}");
        assert!(read_list("{\"build_id\":1}\n").1[0].1.contains("build_id"));
    }

    #[test]
    fn messages_decode_as_json_or_csv_rows_with_or_without_a_header() {
        let mut dec = CtDecoder::default();
        let row = dec.decode(b"b,7,1,2,0.5,,120,crack,0.9").expect("row").expect("a defect");
        assert_eq!((row.defect_id.as_str(), row.diameter_um, row.confidence), ("7", Some(120.0), Some(0.9)));
        assert_eq!(dec.decode(b"type,defect_id,build_id,x_mm,y_mm,z_mm,diameter_um").expect("header"), None);
        let row = dec.decode(b"keyhole,8,b,1,2,0.5,80").expect("row").expect("a defect");
        assert_eq!((row.defect_id.as_str(), row.defect_type), ("8", DefectType::Keyhole));
        assert!(dec.decode(b"\xff\xfe").is_err());
        assert!(dec.decode(b"{\"build_id\":\"b\"}").is_err());
        assert_eq!(dec.decode(b"  ").expect("blank"), None);
    }
}
