//! `meltstream run` stops on SIGTERM: it drains, flushes its files and exits 0; a broken
//! topology is refused with exit code 2 before anything starts.

use std::process::Command;
use std::time::Duration;

#[test]
fn sigterm_drains_flushes_and_exits_zero() {
    let dir = std::env::temp_dir().join(format!("meltstream-sig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let topo = dir.join("t.toml");
    std::fs::write(
        &topo,
        format!(
            r#"name = "sig"
[engine]
summary_interval_ms = 0
[[sources]]
name = "fleet"
type = "simulator"
machines = 1
layers = 1000
layer_ms = 100
recoat_ms = 10
pace = "real"
[[sinks]]
name = "out"
type = "file"
path = "{}"
records = ["layer_summary"]
"#,
            dir.join("out.jsonl").display()
        ),
    )
    .expect("write topology");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(&topo).spawn().expect("spawn meltstream");
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let out = std::fs::read_to_string(dir.join("out.jsonl")).expect("results flushed");
    assert!(out.lines().count() >= 4, "layer summaries written before exit: {out}");
}

#[test]
fn broken_topology_exits_2_and_starts_nothing() {
    let dir = std::env::temp_dir().join(format!("meltstream-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let topo = dir.join("bad.toml");
    std::fs::write(&topo, "[[sources]]\nname = \"a\"\ntype = \"nope\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg(&topo).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3: `sources[0].type`"), "{err}");
}

/// 4,000 malformed lines: every one is a dead-letter record and counted, but the log holds a
/// few lines per reason and a summary, not 4,000 warnings.
#[test]
fn a_flood_of_bad_input_keeps_the_log_readable() {
    let dir = std::env::temp_dir().join(format!("meltstream-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut input = String::new();
    for i in 0..4000 {
        input.push_str(if i % 2 == 0 { "this is not json\n" } else { "{\"build_id\": 7}\n" });
    }
    std::fs::write(dir.join("in.jsonl"), input).expect("input");
    let topo = dir.join("t.toml");
    std::fs::write(
        &topo,
        format!("name = \"flood\"\n[engine]\nsummary_interval_ms = 0\n[[sources]]\nname = \"in\"\ntype = \"file\"\npath = \"in.jsonl\"\n[[sinks]]\nname = \"dead\"\ntype = \"file\"\npath = \"{}\"\nrecords = [\"dead_letter\"]\n", dir.join("dead.jsonl").display()),
    )
    .expect("topology");
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(&topo).env("RUST_LOG", "info").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without the colours' escape sequences.
    let raw = String::from_utf8_lossy(&out.stderr);
    let mut log = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            log.push(c);
        }
    }
    let dead = std::fs::read_to_string(dir.join("dead.jsonl")).expect("dead letters");
    assert_eq!(dead.lines().count(), 4000, "every bad line is a dead-letter record");
    let one_by_one = log.lines().filter(|l| l.contains("dead letter ") || l.ends_with("dead letter")).count();
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("not logged one by one")).collect();
    assert!((1..=20).contains(&one_by_one), "{one_by_one} dead-letter lines:\n{log}");
    assert!(!summaries.is_empty(), "a summary says how many were not logged:\n{log}");
    let suppressed: u64 = summaries.iter().filter_map(|l| l.split("suppressed=").nth(1)).filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()).sum();
    assert_eq!(suppressed + one_by_one as u64, 4000, "{summaries:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
