//! The seed's own example, end to end with real services: its two messages (and the same
//! reading at 1750), sent to `ispm-monitoring` with Python's confluent-kafka, run through the
//! shipped `topologies/kafka-postgres.toml`, become rows in PostgreSQL; 1750 becomes an anomaly
//! row and an alert record on the `ispm-alerts` topic.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::services::{env, pg, read_committed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_messages_become_rows_and_an_alert() {
    let brokers = env("KAFKA_BOOTSTRAP");
    let db_url = env("DATABASE_URL");
    let python = env("MELTSTREAM_PYTHON");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("meltstream-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");

    let sent = Command::new(&python)
        .arg(root.join("scripts/examples/send_seed_example.py"))
        .args(["--brokers", &brokers, "--topic", "ispm-monitoring"])
        .status()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(sent.success(), "sending the seed's messages with confluent-kafka failed");

    let log = std::fs::File::create(dir.join("engine.log")).expect("log");
    // Killed when dropped: a failing test must not leave the engine running (it would hold the
    // admin port and the consumer group for the next run).
    let mut child = KillOnDrop(Command::new(env!("CARGO_BIN_EXE_meltstream"))
        .arg("run")
        .arg("--quiet")
        .arg(root.join("topologies/kafka-postgres.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn meltstream"));

    let c = pg(&db_url).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (summaries, anomalies) = loop {
        let count = |q: &'static str| {
            let c = &c;
            async move { c.query_one(q, &[]).await.map(|r| r.get::<_, i64>(0)).unwrap_or(0) }
        };
        let s = count("SELECT count(*) FROM meltstream.layer_summaries WHERE pipeline = 'kafka-postgres' AND build_id = 'build_001' AND layer = 45").await;
        let a = count("SELECT count(*) FROM meltstream.anomalies WHERE pipeline = 'kafka-postgres' AND build_id = 'build_001' AND value = 1750 AND rule = 'overheat'").await;
        if s > 0 && a > 0 {
            break (s, a);
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("engine exited early with {st}; log in {}", dir.display());
        }
        assert!(Instant::now() < deadline, "no rows for the seed's messages after 90 s (summaries {s}, anomalies {a}); log in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(summaries >= 1 && anomalies == 1, "one anomaly row for the reading at 1750: {anomalies}");
    let row = c
        .query_one("SELECT sample_count FROM meltstream.layer_summaries WHERE pipeline = 'kafka-postgres' AND build_id = 'build_001' AND layer = 45 ORDER BY revision DESC LIMIT 1", &[])
        .await
        .expect("summary row");
    assert!(row.get::<_, i64>(0) >= 2, "both build_001 readings are in layer 45's summary");
    let dead = c
        .query_one("SELECT count(*) FROM meltstream.dead_letters WHERE pipeline = 'kafka-postgres'", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .expect("dead letters");
    assert_eq!(dead, 0, "the seed's messages (and its sensor variant) are accepted, not dead-lettered");

    let alerts = read_committed(&brokers, "ispm-alerts");
    assert!(
        alerts.iter().any(|a| a.contains("\"build_id\":\"build_001\"") && a.contains("\"value\":1750")),
        "an alert record for 1750 on ispm-alerts: {alerts:?}"
    );

    while !std::fs::read_to_string(dir.join("engine.log")).unwrap_or_default().contains("engine started") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let term = Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status().expect("kill");
    assert!(term.success());
    assert_eq!(child.0.wait().expect("wait").code(), Some(0), "exit status after SIGTERM; log in {}", dir.display());
}

/// An engine child process, killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
