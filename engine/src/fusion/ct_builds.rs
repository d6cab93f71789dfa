//! The CT defects a streaming `ct` source has read, grouped per build and deduplicated by
//! defect id, with the builds whose set changed since they were last fused. What a build is
//! fused with is a function of the set of records read, never of when they arrived.

use std::collections::{BTreeMap, BTreeSet};

use super::ct::CtDefect;

/// Defects per build, and the builds to fuse again.
#[derive(Clone, Debug, Default)]
pub struct CtBuilds {
    builds: BTreeMap<String, BTreeMap<String, CtDefect>>,
    dirty: BTreeSet<String>,
}

impl CtBuilds {
    /// Adds a defect; a second record with the same (build, defect id) replaces the first (a
    /// revised CT list). False when it changes nothing (a replay).
    pub fn add(&mut self, d: CtDefect) -> bool {
        let defects = self.builds.entry(d.build_id.clone()).or_default();
        if defects.get(&d.defect_id) == Some(&d) {
            return false;
        }
        self.dirty.insert(d.build_id.clone());
        defects.insert(d.defect_id.clone(), d);
        true
    }

    /// Whether some build changed since it was last fused.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The builds that changed, in order, each with all its defects (by defect id).
    pub fn dirty(&self) -> Vec<(String, Vec<CtDefect>)> {
        self.dirty.iter().map(|b| (b.clone(), self.builds.get(b).map(|m| m.values().cloned().collect()).unwrap_or_default())).collect()
    }

    /// Marks `build` fused.
    pub fn fused(&mut self, build: &str) {
        self.dirty.remove(build);
    }

    /// Defects held, all builds.
    pub fn len(&self) -> usize {
        self.builds.values().map(BTreeMap::len).sum()
    }

    /// No defect held.
    pub fn is_empty(&self) -> bool {
        self.builds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fusion::ct::parse_json;

    fn d(build: &str, id: &str, x: f64) -> CtDefect {
        parse_json(format!(r#"{{"build_id":"{build}","defect_id":"{id}","x_mm":{x},"y_mm":0,"z_mm":0.1,"diameter_um":100,"type":"crack"}}"#).as_bytes()).expect("defect")
    }

    #[test]
    fn defects_group_per_build_replays_change_nothing_and_revisions_replace() {
        let mut b = CtBuilds::default();
        assert!(b.add(d("b2", "2", 1.0)) && b.add(d("b1", "9", 1.0)) && b.add(d("b2", "1", 1.0)));
        let dirty = b.dirty();
        assert_eq!(dirty.iter().map(|(k, v)| (k.as_str(), v.len())).collect::<Vec<_>>(), vec![("b1", 1), ("b2", 2)]);
        assert_eq!(dirty[1].1.iter().map(|d| d.defect_id.as_str()).collect::<Vec<_>>(), vec!["1", "2"], "by defect id, whatever the arrival order");
        b.fused("b1");
        b.fused("b2");
        assert!(!b.add(d("b2", "2", 1.0)), "a replayed record changes nothing");
        assert!(!b.has_dirty());
        assert!(b.add(d("b2", "2", 5.0)), "a revised record replaces its defect");
        assert_eq!(b.dirty()[0].1[1].x_mm, 5.0);
        assert_eq!(b.len(), 3);
    }
}
