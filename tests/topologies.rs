//! Every topology in `topologies/` and every bench topology in `benches/` passes the check; every broken one in
//! `tests/topologies/invalid/` is refused with exactly the errors its `# expect-error:` lines
//! list (`LINE KEY`), all at once.

use std::path::Path;

use meltstream_engine::topology;

/// Checks every `.toml` file in `dir` (relative to the repository); returns how many.
fn check_dir(dir: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            topology::load_file(&p).unwrap_or_else(|errs| panic!("{errs}"));
            n += 1;
        }
    }
    n
}

#[test]
fn shipped_topologies_pass_check() {
    assert!(check_dir("topologies") >= 1);
}

#[test]
fn bench_topologies_pass_check() {
    // r1.toml, r2.toml, kafka-pg.toml, which `meltstream bench` embeds.
    assert!(check_dir("benches") >= 3);
}

#[test]
fn broken_topologies_are_refused_with_positions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topologies/invalid");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("invalid dir") {
        let p = e.expect("entry").path();
        let text = std::fs::read_to_string(&p).expect("read");
        let expect: Vec<(usize, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-error: "))
            .map(|l| {
                let (line, key) = l.split_once(' ').expect("LINE KEY");
                (line.parse().expect("line number"), key.trim().to_owned())
            })
            .collect();
        assert!(!expect.is_empty(), "{} has no expect-error line", p.display());
        let errs = topology::load_file(&p).expect_err("must be refused").0;
        let got: Vec<(usize, String)> = errs.iter().map(|e| (e.line, e.key.clone())).collect();
        assert_eq!(got, expect, "{}: {errs:?}", p.display());
        assert!(errs.iter().all(|e| e.file == p.display().to_string() && !e.message.is_empty()));
        n += 1;
    }
    assert!(n >= 3);
}
