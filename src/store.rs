//! Where a topology's results are durable (its first PostgreSQL or SQLite sink), read back and
//! written by the batch commands: `meltstream fuse` and `meltstream export`.

use std::path::PathBuf;

use meltstream_actors::sinks::{postgres, sqlite};
use meltstream_engine::fusion::{Evidence, FusedDefect, FusionSummary};
use meltstream_engine::topology::{expand_env, SinkKind, Topology};

/// Where a topology's results are durable.
pub enum Store {
    Postgres { url: String, schema: String, pipeline: String },
    Sqlite { path: PathBuf, pipeline: String },
}

impl Store {
    /// The first PostgreSQL or SQLite sink of `t`.
    pub fn of(t: &Topology) -> Option<Store> {
        t.sinks.iter().find_map(|s| match &s.kind {
            SinkKind::Postgres(p) => Some(Store::Postgres { url: expand_env(&p.url), schema: p.schema.clone(), pipeline: p.pipeline.clone() }),
            SinkKind::Sqlite(q) => Some(Store::Sqlite { path: q.path.clone(), pipeline: q.pipeline.clone() }),
            _ => None,
        })
    }

    pub fn read(&self, rt: &tokio::runtime::Runtime, build: &str) -> Result<Evidence, String> {
        match self {
            Store::Postgres { url, schema, pipeline } => rt.block_on(postgres::fusion::read_evidence(url, schema, pipeline, build)),
            Store::Sqlite { path, pipeline } => sqlite::fusion::read_evidence(path, pipeline, build),
        }
    }

    pub fn write(&self, rt: &tokio::runtime::Runtime, build: &str, fused: &[FusedDefect], summary: &FusionSummary) -> Result<(), String> {
        match self {
            Store::Postgres { url, schema, pipeline } => rt.block_on(postgres::fusion::write_fusion(url, schema, pipeline, build, fused, summary)),
            Store::Sqlite { path, pipeline } => sqlite::fusion::write_fusion(path, pipeline, build, fused, summary),
        }
    }
}

impl Store {
    /// The builds with layer results.
    pub fn builds(&self, rt: &tokio::runtime::Runtime) -> Result<Vec<String>, String> {
        match self {
            Store::Postgres { url, schema, pipeline } => rt.block_on(postgres::fusion::builds(url, schema, pipeline)),
            Store::Sqlite { path, pipeline } => sqlite::fusion::builds(path, pipeline),
        }
    }

    /// The records (JSON) of `build` in `table`.
    pub fn records(&self, rt: &tokio::runtime::Runtime, build: &str, table: &str) -> Result<Vec<String>, String> {
        match self {
            Store::Postgres { url, schema, pipeline } => rt.block_on(postgres::fusion::records(url, schema, pipeline, build, table)),
            Store::Sqlite { path, pipeline } => sqlite::fusion::records(path, pipeline, build, table),
        }
    }

    /// `build`'s SPC signals: (layer, laser, chart, rule).
    pub fn spc_rows(&self, rt: &tokio::runtime::Runtime, build: &str) -> Result<Vec<(u32, u8, String, String)>, String> {
        match self {
            Store::Postgres { url, schema, pipeline } => rt.block_on(postgres::fusion::spc_rows(url, schema, pipeline, build)),
            Store::Sqlite { path, pipeline } => sqlite::fusion::spc_rows(path, pipeline, build),
        }
    }
}
