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
