//! `meltstream reset TOPOLOGY`: makes a pipeline start over. Deletes the rows and the stored
//! progress of its PostgreSQL and SQLite sinks (one transaction per sink; an SQLite file an
//! engine still owns is refused) and the offsets of its Kafka consumer groups (where the Kafka
//! sinks store their progress). Records already in a Kafka output topic stay there. Run it with
//! the engine stopped.

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use meltstream_actors::sinks::postgres::admin::reset_pipeline;
use meltstream_actors::sinks::sqlite::admin::reset_pipeline as reset_sqlite_pipeline;
use meltstream_engine::topology::{expand_env, SinkKind, SourceKind, Topology};

/// Resets every store of `t`; prints what it did.
pub fn run(t: &Topology) -> anyhow::Result<()> {
    for s in &t.sinks {
        if let SinkKind::Sqlite(q) = &s.kind {
            let n = reset_sqlite_pipeline(&q.path, &q.pipeline).map_err(|e| anyhow::anyhow!("sink {}: {e}", s.name))?;
            println!("sink {}: deleted {n} rows of pipeline {:?} in {}", s.name, q.pipeline, q.path.display());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().context("runtime")?;
    rt.block_on(async {
        for s in &t.sinks {
            if let SinkKind::Postgres(p) = &s.kind {
                let n = reset_pipeline(&expand_env(&p.url), &p.schema, &p.pipeline).await.map_err(|e| anyhow::anyhow!("sink {}: {e}", s.name))?;
                println!("sink {}: deleted {n} rows of pipeline {:?} in schema {}", s.name, p.pipeline, p.schema);
            }
        }
        for s in &t.sources {
            if let SourceKind::Kafka(k) = &s.kind {
                let admin: AdminClient<DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", expand_env(&k.brokers)).create().with_context(|| format!("source {}: Kafka admin client", s.name))?;
                let res = admin.delete_groups(&[k.group_id.as_str()], &AdminOptions::new()).await.with_context(|| format!("source {}: deleting group {}", s.name, k.group_id))?;
                for r in res {
                    match r {
                        Ok(g) => println!("source {}: deleted consumer group {g} and its offsets", s.name),
                        // Nothing stored (never run, or reset already): nothing to delete.
                        Err((g, rdkafka::types::RDKafkaErrorCode::GroupIdNotFound)) => println!("source {}: consumer group {g} does not exist; no offsets to delete", s.name),
                        Err((g, code)) => anyhow::bail!(
                            "source {}: cannot delete consumer group {g}: {code} (a group with members, including a static member whose session has not expired yet, cannot be deleted: stop the engine and retry after session.timeout.ms)",
                            s.name
                        ),
                    }
                }
            }
        }
        anyhow::Ok(())
    })
}
