//! The operator's dashboard in a real browser: `meltstream run` on a demo-like topology at real
//! pace, headless Chromium (Debian's package; scripts/services/chromium.sh installs it) loads
//! each page and the test reads the DOM it rendered: the fleet lists the builds, the layer map
//! drew its cells, an injected anomaly is in the alert feed, the SPC charts show their limits,
//! the engine page lists the build queues. Screenshots of the three pages go to
//! `target/dashboard-test/` (and the build page to `docs/img/dashboard.png` when
//! `MELTSTREAM_UPDATE_SCREENSHOT=1`). Also, over plain HTTP: off loopback the API asks for the
//! token, which buys a session cookie that the event stream accepts.
//!
//! The browser loads each page afresh (`--dump-dom` after a 1.5 s virtual-time budget, which a
//! pending request pauses): the page draws from the JSON API and opens its event stream 2 s
//! later, so these loads see the page as the API drew it; the event stream itself is checked
//! over HTTP below.
//!
//! No timing is asserted: every wait polls until a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Engine(Child);
impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One HTTP/1.1 request on `port`: (status, head, body); `None` while nothing answers. Reads
/// at most `limit` bytes (an event stream never ends).
fn http(port: u16, method: &str, path: &str, headers: &str, limit: usize) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = vec![0u8; limit];
    let mut n = 0;
    while n < limit {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) if n > 0 => break,
            Err(_) => return None,
        }
        if std::str::from_utf8(&buf[..n]).is_ok_and(|t| t.contains("event: fleet")) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").map_or((text.clone(), String::new()), |(h, b)| (h.to_owned(), b.to_owned()));
    Some((status, head, body))
}

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("MELTSTREAM_CHROMIUM") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/chromium.sh");
    let out = Command::new(&script).arg("path").stderr(Stdio::inherit()).output().unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "no Chromium: run scripts/services/chromium.sh as root (it installs Debian's chromium package)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs headless Chromium on `url` with `args` and returns its stdout; killed after 90 s.
fn browse(chrome: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let mut child = Command::new(chrome)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000", "--virtual-time-budget=1500", "--run-all-compositor-stages-before-draw"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", chrome.display()));
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return reader.join().unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap_or_default()
}

/// The value of the first `attr="…"` in `dom`.
fn attr<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(&format!("{attr}=\""))? + attr.len() + 2;
    dom[at..].split('"').next()
}

fn topology(dir: &Path, port: u16, addr: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("info")).expect("dir");
    for (b, m) in [("sim-001", "EOS M400-4 #1"), ("sim-002", "EOS M400-4 #2")] {
        std::fs::write(dir.join("info").join(format!("{b}.toml")), format!("build_id = \"{b}\"\nmachine = \"{m}\"\n")).expect("info");
    }
    let t = format!(
        r#"name = "dashboard"
[engine]
admin_addr = "{addr}:{port}"
watermark_bound_ms = 50
summary_interval_ms = 0
[build_info]
dir = "info"
[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 2
sample_rate_hz = 5000
layers = 400
layer_ms = 600
recoat_ms = 200
seed = 7
pace = "real"
anomalies = true
anomaly_rate_per_layer = 1.0
anomaly_from_layer = 2
[windows]
grid_cell_mm = 20.0
plate_mm = 400.0
grid_channel = "photodiode_on_axis"
[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = 500
[[rules]]
name = "overheat"
channel = "temperature_c"
op = ">"
limit = 1700.0
[[rules]]
name = "power_drop"
channel = "laser_power_w"
op = "<"
limit = 150.0
[[spc]]
name = "temp_shewhart"
channel = "temperature_c"
chart = "shewhart"
baseline_layers = 5
[[spc]]
name = "pd_cusum"
channel = "photodiode_on_axis"
chart = "cusum"
baseline_layers = 5
[[sinks]]
name = "alerts"
type = "file"
path = "anomalies.jsonl"
records = ["anomaly"]
flush_ms = 10
[[sinks]]
name = "store"
type = "sqlite"
path = "results.sqlite"
records = ["layer_summary", "grid", "anomaly", "spc_signal", "layer_verdict", "build_report", "data_quality"]
"#
    );
    let path = dir.join("dashboard.toml");
    std::fs::write(&path, t).expect("topology");
    path
}

fn start(dir: &Path, port: u16, addr: &str, token: Option<&str>) -> Engine {
    let file = topology(dir, port, addr);
    let log = std::fs::File::create(dir.join("engine.log")).expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_meltstream"));
    c.arg("run").arg(&file).arg("--quiet").current_dir(dir).stdout(Stdio::null()).stderr(log);
    if let Some(t) = token {
        c.env("MELTSTREAM_ADMIN_TOKEN", t);
    }
    Engine(c.spawn().expect("meltstream run"))
}

/// Polls `what` (a page's DOM) until `ok`, or fails with the last DOM.
fn until(what: &str, deadline: Instant, mut dom: impl FnMut() -> String, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    while Instant::now() < deadline {
        last = dom();
        if ok(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: never rendered as expected; last DOM:\n{}", &last[..last.len().min(4000)]);
}

#[test]
fn dashboard_pages_render_live_results_in_headless_chromium() {
    let chrome = chromium();
    let dir = std::env::temp_dir().join(format!("meltstream-dashboard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-test");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let port = free_port();
    let _engine = start(&dir, port, "127.0.0.1", None);
    let base = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(240);
    // The engine is up and both builds have results.
    while Instant::now() < deadline {
        if let Some((200, _, body)) = http(port, "GET", "/api/fleet", "", 1 << 20) {
            if body.contains("sim-001") && body.contains("sim-002") && body.contains("\"data_quality\":{") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let profile = dir.join("chrome");
    let dom = |url: &str| browse(&chrome, &profile, url, &["--dump-dom"]);

    let fleet = until("fleet page", deadline, || dom(&base), |d| attr(d, "data-builds") == Some("2") && d.contains("data-kind=\"anomaly\""));
    assert!(fleet.contains("EOS M400-4 #1"), "the machine from the build's description is listed");
    assert!(fleet.contains("data-build=\"sim-001\"") && fleet.contains("data-build=\"sim-002\""));

    let build_url = format!("{base}#/build/sim-001");
    let build = until("build page", deadline, || dom(&build_url), |d| {
        attr(d, "data-cells").and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c > 0)
            && d.find("id=\"spc\"").and_then(|i| attr(&d[i..], "data-limits")).and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c > 0)
            && d.contains("data-kind=\"anomaly\"")
    });
    assert!(build.contains("class=\"limit\""), "the SPC limits are drawn");
    assert!(build.contains("class=\"centre\""), "the SPC centre line is drawn");

    let engine_url = format!("{base}#/engine");
    until("engine page", deadline, || dom(&engine_url), |d| attr(d, "data-queues").and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c > 0) && d.contains("id=\"memory\""));

    for (name, url) in [("fleet", base.clone()), ("build", build_url.clone()), ("engine", engine_url.clone())] {
        let png = shots.join(format!("{name}.png"));
        browse(&chrome, &profile, &url, &[&format!("--screenshot={}", png.display())]);
        assert!(std::fs::metadata(&png).is_ok_and(|m| m.len() > 10_000), "screenshot {} was not written", png.display());
    }
    if std::env::var("MELTSTREAM_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&img).expect("docs/img");
        std::fs::copy(shots.join("build.png"), img.join("dashboard.png")).expect("copy screenshot");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn off_loopback_the_token_buys_a_session_cookie_that_the_event_stream_takes() {
    let dir = std::env::temp_dir().join(format!("meltstream-dashboard-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let _engine = start(&dir, port, "0.0.0.0", Some("s3cret"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut page = None;
    while Instant::now() < deadline && page.is_none() {
        page = http(port, "GET", "/", "", 1 << 20).filter(|(s, _, _)| *s == 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(page.is_some_and(|(_, _, b)| b.contains("/assets/app.js")), "the page itself is public");
    assert_eq!(http(port, "GET", "/api/fleet", "", 1 << 16).map(|r| r.0), Some(401));
    assert_eq!(http(port, "GET", "/api/events", "", 1 << 16).map(|r| r.0), Some(401));
    assert_eq!(http(port, "POST", "/api/session", "Authorization: Bearer wrong\r\n", 1 << 16).map(|r| r.0), Some(401));
    let (status, head, _) = http(port, "POST", "/api/session", "Authorization: Bearer s3cret\r\n", 1 << 16).expect("session");
    assert_eq!(status, 204);
    let cookie = head.lines().find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: "))).expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value");
    assert_eq!(http(port, "GET", "/api/fleet", &format!("Cookie: {pair}\r\n"), 1 << 20).map(|r| r.0), Some(200));
    let (status, head, body) = http(port, "GET", "/api/events", &format!("Cookie: {pair}\r\n"), 1 << 16).expect("events");
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    assert!(body.contains("event: fleet"), "{body}");
    assert_eq!(http(port, "GET", "/api/fleet", "Cookie: meltstream_session=00\r\n", 1 << 16).map(|r| r.0), Some(401));
    let _ = std::fs::remove_dir_all(&dir);
}
