//! Where each key of a topology file is: dotted key paths (`sources[1].path`) mapped to the
//! line they start on, read from the spans of the one toml_edit parse `load` makes, so that
//! every error names its file:line. Only positions; it never parses or judges a value.

use std::collections::BTreeMap;

/// Positions of keys, from a span-keeping parse.
pub(super) struct Positions {
    text: String,
    spans: BTreeMap<String, usize>,
}

impl Positions {
    /// The positions of every key of `root`, parsed from `text` with spans kept.
    pub(super) fn new(text: &str, root: &toml_edit::Table) -> Positions {
        let mut spans = BTreeMap::new();
        walk_table(root, "", &mut spans);
        Positions { text: text.to_owned(), spans }
    }

    /// Line of `key`, or of its nearest ancestor that has a position.
    pub(super) fn line(&self, key: &str) -> usize {
        let mut k = key.to_owned();
        loop {
            if let Some(&off) = self.spans.get(&k) {
                return line_of(&self.text, off);
            }
            match k.rfind(['.', '[']) {
                Some(i) => k.truncate(i),
                None => return 0,
            }
        }
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn walk_table(t: &toml_edit::Table, prefix: &str, spans: &mut BTreeMap<String, usize>) {
    for (k, item) in t.iter() {
        let path = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
        let off = t.key(k).and_then(|key| key.span()).map(|s| s.start).or_else(|| item.span().map(|s| s.start));
        if let Some(off) = off {
            spans.insert(path.clone(), off);
        }
        walk_item(item, &path, spans);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, spans: &mut BTreeMap<String, usize>) {
    match item {
        toml_edit::Item::Table(t) => walk_table(t, path, spans),
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(s) = t.span() {
                    spans.insert(p.clone(), s.start);
                }
                walk_table(t, &p, spans);
            }
        }
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            for (k, v) in t.iter() {
                let p = format!("{path}.{k}");
                if let Some(s) = t.key(k).and_then(|key| key.span()).or_else(|| v.span()) {
                    spans.insert(p, s.start);
                }
            }
        }
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                if let Some(s) = v.span() {
                    spans.insert(format!("{path}[{i}]"), s.start);
                }
            }
        }
        _ => {}
    }
}
