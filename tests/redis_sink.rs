//! The `redis` sink against a real Redis server (Debian's redis-server, started by
//! scripts/services/redis.sh): each build's live state in hashes and its alerts published on
//! the channel, once each; a second run over the same input (what a replay after a crash
//! writes) changes nothing and publishes nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn redis_url() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services/redis.sh");
    let st = Command::new(&script).arg("start").status().unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(st.success(), "redis.sh start failed: redis-server is needed (the script installs Debian's package as root)");
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379/".into())
}

/// Listens on `channel` until told to stop; the messages' payloads.
fn listen(url: &str, channel: &str, stop: Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let (url, channel, out) = (url.to_owned(), channel.to_owned(), got.clone());
    let h = std::thread::spawn(move || {
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut con = client.get_connection().expect("connection");
        let mut ps = con.as_pubsub();
        ps.subscribe(&channel).expect("subscribe");
        ps.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        tx.send(()).expect("subscribed");
        while !stop.load(Ordering::SeqCst) {
            if let Ok(m) = ps.get_message() {
                out.lock().unwrap().push(m.get_payload::<String>().expect("payload"));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the listener subscribed");
    (h, got)
}

fn run(topology: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(topology).env("RUST_LOG", "warn").output().expect("run meltstream");
    assert!(out.status.success(), "meltstream failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn build_state_and_alerts_reach_redis_once() {
    let url = redis_url();
    let tag = format!("t{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("meltstream-redis-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let channel = format!("{tag}:alerts");
    let topology = dir.join("redis.toml");
    std::fs::write(
        &topology,
        format!(
            r#"name = "redis"
[engine]
summary_interval_ms = 0
{fleet}[[rules]]
name = "lack_of_fusion"
channel = "energy_density_j_mm3"
op = "<"
limit = 40.0
[[sinks]]
name = "live"
type = "redis"
url = "{url}"
key_prefix = "{tag}"
channel = "{channel}"
flush_ms = 50
[[sinks]]
name = "file"
type = "file"
path = "{file}"
records = ["anomaly", "layer_verdict"]
"#,
            fleet = support::alerting_fleet(20),
            file = dir.join("out.jsonl").display()
        ),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (listener, published) = listen(&url, &channel, stop.clone());
    run(&topology);
    // What the file sink got, per build: alert keys and verdicts.
    let mut alerts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("out.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let b = v["build_id"].as_str().unwrap().to_owned();
        if v.get("rule").is_some() {
            // The record's key, as `OutputRecord::key` makes it.
            let key = format!("anomaly/{b}/{}/{:?}/{}", v["rule"].as_str().unwrap(), v["laser"].as_u64(), v["time_ns"]);
            alerts.entry(b).or_default().insert(key);
        } else {
            verdicts.entry(b).or_default().insert(v["layer"].as_u64().unwrap() as u32, v["verdict"].as_str().unwrap().to_owned());
        }
    }
    let total: usize = alerts.values().map(BTreeSet::len).sum();
    assert!(total >= 5, "the run raised alerts to check ({total})");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let check = |con: &mut redis::Connection| {
        let builds: BTreeSet<String> = redis::cmd("SMEMBERS").arg(format!("{tag}:builds")).query(con).unwrap();
        assert_eq!(builds, ["sim-001", "sim-002"].iter().map(|s| s.to_string()).collect());
        for b in &builds {
            let key = format!("{tag}:build:{b}");
            let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query(con).unwrap();
            assert_eq!(h.get("state").map(String::as_str), Some("ended"), "{b}: {h:?}");
            assert_eq!(h.get("layer").map(String::as_str), Some("19"), "{b}: {h:?}");
            assert_eq!(h.get("verdict_layer").map(String::as_str), Some("19"), "{b}: {h:?}");
            let n_alerts = alerts.get(b).map_or(0, BTreeSet::len);
            assert_eq!(h.get("anomalies").map(String::as_str).unwrap_or("0"), n_alerts.to_string(), "{b}: {h:?}");
            let per_layer: BTreeMap<u32, String> = redis::cmd("HGETALL").arg(format!("{key}:verdicts")).query(con).unwrap();
            assert_eq!(&per_layer, &verdicts[b], "{b}: verdicts per layer");
            let members: BTreeSet<String> = redis::cmd("ZRANGE").arg(format!("{key}:anomalies")).arg(0).arg(-1).query(con).unwrap();
            assert_eq!(members, alerts.get(b).cloned().unwrap_or_default(), "{b}: alert keys");
            let ttl: i64 = redis::cmd("TTL").arg(&key).query(con).unwrap();
            assert!(ttl > 0, "{b}: an ended build's keys expire ({ttl})");
        }
    };
    check(&mut con);
    // The same input again, as a replay would bring it: same state, no new publication.
    std::fs::remove_file(dir.join("out.jsonl")).unwrap();
    run(&topology);
    check(&mut con);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    listener.join().unwrap();
    let published = published.lock().unwrap().clone();
    let keys: Vec<String> = published.iter().map(|p| serde_json::from_str::<serde_json::Value>(p).unwrap()["key"].as_str().unwrap().to_owned()).collect();
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), total, "every alert published once, across both runs");
    assert_eq!(distinct.len(), total);
    let _ = redis::cmd("DEL").arg(format!("{tag}:builds")).query::<()>(&mut con);
    let _ = std::fs::remove_dir_all(&dir);
}
