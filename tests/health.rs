//! `/health/ready` against a real PostgreSQL server: ready while the engine writes, 503 with the
//! sink's reason once the server is stopped, ready again once it is back. The test runs its own
//! throwaway cluster (scripts/services/postgres.sh on another port and directory), so stopping it
//! disturbs no other test. Also: the admin API off loopback asks for a bearer token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PG_PORT: &str = "15441";

fn services_dir() -> PathBuf {
    std::env::temp_dir().join(format!("meltstream-health-{}", std::process::id()))
}

fn pg(cmd: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/postgres.sh");
    let st = Command::new(&script)
        .arg(cmd)
        .env("PG_PORT", PG_PORT)
        .env("MELTSTREAM_SERVICES_DIR", services_dir())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(st.success(), "postgres.sh {cmd} failed: PostgreSQL's server binaries are needed (the script installs Debian's package as root)");
}

/// Stops the engine (and the cluster, when the test has one), whatever happens.
struct Cleanup(Option<Child>, bool);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.1 {
            return;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/postgres.sh");
        let _ = Command::new(&script).arg("stop").env("PG_PORT", PG_PORT).env("MELTSTREAM_SERVICES_DIR", services_dir()).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// GET `path` on `port`: (status, body); `None` while nothing answers.
fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Polls `/health/ready` until `want` (with a body that satisfies `check`), or fails.
fn await_ready(port: u16, want: u16, check: impl Fn(&str) -> bool, what: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = get(port, "/health/ready", None) {
            if status == want && check(&body) {
                return body;
            }
            last = Some((status, body));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: /health/ready never answered {want} as expected; last answer {last:?}; engine log {}", log.display());
}

fn spawn(topology: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_meltstream"))
        .arg("run")
        .arg("--quiet")
        .arg(topology)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn meltstream")
}

#[test]
fn readiness_follows_the_results_store() {
    let _ = std::fs::remove_dir_all(services_dir());
    pg("start");
    let mut guard = Cleanup(None, true);
    let dir = services_dir().join("engine");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let topology = dir.join("health.toml");
    std::fs::write(
        &topology,
        format!(
            r#"name = "health"
[engine]
admin_addr = "127.0.0.1:{port}"
summary_interval_ms = 0
ready_max_commit_age_s = 30

[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 2
sample_rate_hz = 2000
layers = 2000
layer_ms = 200
recoat_ms = 50
pace = "real"

[[sinks]]
name = "pg"
type = "postgres"
url = "postgres://postgres@127.0.0.1:{PG_PORT}/meltstream"
schema = "health"
records = ["layer_summary", "anomaly"]
flush_ms = 100
"#
        ),
    )
    .unwrap();
    let log = dir.join("engine.log");
    guard.0 = Some(spawn(&topology, &log, &[]));
    // Live at once; ready once the sink has written.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/health/live", None).is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < deadline, "/health/live never answered; log {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = await_ready(port, 200, |b| b.contains("\"ready\":true") && b.contains("last_durable_wall_ns"), "while writing", &log);
    assert!(body.contains("\"fleet\""), "{body}");
    // PostgreSQL goes away: not ready, and the reason names the sink.
    pg("stop-server");
    let body = await_ready(port, 503, |b| b.contains("sink pg: failing"), "with PostgreSQL stopped", &log);
    assert!(body.contains("\"ready\":false"), "{body}");
    // Back: ready again.
    pg("start-server");
    await_ready(port, 200, |b| b.contains("\"ready\":true"), "with PostgreSQL back", &log);
    let engine = guard.0.as_mut().expect("engine");
    assert!(engine.try_wait().expect("try_wait").is_none(), "the engine kept running; log {}", log.display());
}

#[test]
fn off_loopback_the_admin_api_asks_for_a_bearer_token() {
    let dir = std::env::temp_dir().join(format!("meltstream-health-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let topology = dir.join("token.toml");
    std::fs::write(
        &topology,
        format!(
            "name = \"token\"\n[engine]\nadmin_addr = \"0.0.0.0:{port}\"\nsummary_interval_ms = 0\n[[sources]]\nname = \"fleet\"\ntype = \"simulator\"\nmachines = 1\nlasers = 1\nsample_rate_hz = 1000\nlayers = 1000\nlayer_ms = 200\npace = \"real\"\n[[sinks]]\nname = \"none\"\ntype = \"null\"\n"
        ),
    )
    .unwrap();
    // No token: the engine does not start, and says why.
    let log = dir.join("no-token.log");
    let mut child = spawn(&topology, &log, &[("MELTSTREAM_ADMIN_TOKEN", "")]);
    let status = child.wait().expect("wait");
    assert!(!status.success(), "started without a token");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("MELTSTREAM_ADMIN_TOKEN"), "the error names the variable: {text}");
    // With one: only `/health/live` answers without it.
    let log = dir.join("token.log");
    let guard = Cleanup(Some(spawn(&topology, &log, &[("MELTSTREAM_ADMIN_TOKEN", "s3cret")])), false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/health/live", None).is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < deadline, "/health/live never answered; log {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(port, "/builds", None).map(|r| r.0), Some(401));
    assert_eq!(get(port, "/builds", Some("wrong")).map(|r| r.0), Some(401));
    assert_eq!(get(port, "/builds", Some("s3cret")).map(|r| r.0), Some(200));
    assert_eq!(get(port, "/metrics", Some("s3cret")).map(|r| r.0), Some(200));
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
