//! The `webhook` sink against an HTTP receiver run by the test: every alert is posted with its
//! idempotency key, a receiver that fails (503) gets the same record again until it takes it,
//! and a second run over the same input (what a replay brings) sends the same keys again, so a
//! receiver that honours them sees each alert once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// What the receiver saw: (idempotency key, body) per accepted post, and the keys it failed once.
#[derive(Default)]
struct Seen {
    accepted: Vec<(String, serde_json::Value)>,
    failed_once: BTreeSet<String>,
}

/// A minimal HTTP/1.1 receiver: every third new key gets a 503 first.
fn receiver() -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut n = 0u64;
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut stream = stream;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let (mut len, mut key) = (0usize, String::new());
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let (name, value) = h.split_once(':').unwrap_or((&h, ""));
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => len = value.trim().parse().unwrap_or(0),
                        "idempotency-key" => key = value.trim().to_owned(),
                        _ => {}
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                let mut s = out.lock().unwrap();
                n += 1;
                let fail = n % 3 == 0 && !s.failed_once.contains(&key);
                let status = if fail {
                    s.failed_once.insert(key);
                    "503 Service Unavailable"
                } else {
                    s.accepted.push((key, serde_json::from_slice(&body).expect("JSON body")));
                    "200 OK"
                };
                drop(s);
                if write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").is_err() {
                    break;
                }
            }
        }
    });
    (port, seen)
}

fn run(topology: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(topology).env("RUST_LOG", "warn").output().expect("run meltstream");
    assert!(out.status.success(), "meltstream failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn alerts_are_posted_with_idempotency_keys_and_retried() {
    let (port, seen) = receiver();
    let dir = std::env::temp_dir().join(format!("meltstream-webhook-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let topology = dir.join("webhook.toml");
    std::fs::write(
        &topology,
        format!(
            r#"name = "hooks"
[engine]
summary_interval_ms = 0
{fleet}[[sinks]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{port}/alerts"
records = ["anomaly", "build_report"]
headers = {{ Authorization = "Bearer ${{HOOK_TOKEN:-t0ken}}" }}
flush_ms = 50
[[sinks]]
name = "file"
type = "file"
path = "{file}"
records = ["anomaly"]
"#,
            fleet = support::alerting_fleet(12),
            file = dir.join("out.jsonl").display()
        ),
    )
    .unwrap();
    run(&topology);
    let alerts: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("out.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(alerts.len() >= 5, "the run raised alerts to post ({})", alerts.len());
    let first: Vec<(String, serde_json::Value)> = seen.lock().unwrap().accepted.clone();
    let failed = seen.lock().unwrap().failed_once.len();
    assert!(failed > 0, "the receiver failed some posts, which were sent again");
    // Every alert and both build reports, each once, in the file sink's order.
    let posted_alerts: Vec<&serde_json::Value> = first.iter().filter(|(_, b)| b["kind"] == "anomaly").map(|(_, b)| &b["record"]).collect();
    assert_eq!(posted_alerts, alerts.iter().collect::<Vec<_>>(), "the alerts, in order, each once");
    assert_eq!(first.iter().filter(|(_, b)| b["kind"] == "build_report").count(), 2);
    let keys: BTreeSet<&String> = first.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), first.len(), "one key per record");
    for (k, b) in &first {
        assert_eq!(b["key"].as_str(), Some(k.as_str()), "the body carries its key");
        assert!(k.starts_with("hooks/"), "{k}");
    }
    // The same input again: the same keys, so a receiver that honours them takes nothing new.
    std::fs::remove_file(dir.join("out.jsonl")).unwrap();
    run(&topology);
    let all = seen.lock().unwrap().accepted.clone();
    let second: BTreeMap<&String, &serde_json::Value> = all[first.len()..].iter().map(|(k, b)| (k, b)).collect();
    assert_eq!(second.keys().copied().collect::<BTreeSet<_>>(), keys, "a replay sends the same keys");
    let _ = std::fs::remove_dir_all(&dir);
}
