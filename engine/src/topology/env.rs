//! `${VAR}` expansion in connection strings (brokers, URLs), applied by the code that connects,
//! at build time, so that a checked topology never holds a secret. Reads the environment only.

/// Expands `${VAR}` and `${VAR:-default}` in `s` from the environment (an unset variable
/// without a default expands to nothing).
pub fn expand_env(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &rest[i + 2..i + j];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => out.push_str(&v),
            _ => out.push_str(default.unwrap_or("")),
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}
