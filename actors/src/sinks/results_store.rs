//! Where a topology's results are durable (its first PostgreSQL or SQLite sink), read back and
//! written apart from the data path: by the batch commands (`meltstream fuse`, `export`) and by
//! the streaming `ct` source, which all fuse a build through [`ResultsStore::fuse_build`] — one
//! read of the evidence, one join, one transaction replacing the build's fusion rows.
//!
//! Every call is async: PostgreSQL's natively, SQLite's on tokio's blocking pool
//! (`spawn_blocking`), so an actor awaiting one never blocks its runtime thread. The batch
//! commands `block_on` them.

use std::path::PathBuf;

use meltstream_engine::fusion::{fuse, CtDefect, Evidence, FusedDefect, FusionParams, FusionSummary};
use meltstream_engine::topology::{expand_env, SinkKind, Topology};

use super::{postgres, sqlite};

/// Where a topology's results are durable.
#[derive(Clone, Debug)]
pub enum ResultsStore {
    /// A PostgreSQL sink's schema.
    Postgres {
        /// Connection URL (expanded).
        url: String,
        /// Schema.
        schema: String,
        /// Pipeline name the rows carry.
        pipeline: String,
    },
    /// A SQLite sink's database file.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// Pipeline name the rows carry.
        pipeline: String,
    },
}

/// Runs a blocking SQLite call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("the SQLite task failed: {e}"))?
}

impl ResultsStore {
    /// The first PostgreSQL or SQLite sink of `t`.
    pub fn of(t: &Topology) -> Option<ResultsStore> {
        t.sinks.iter().find_map(|s| match &s.kind {
            SinkKind::Postgres(p) => Some(ResultsStore::Postgres { url: expand_env(&p.url), schema: p.schema.clone(), pipeline: p.pipeline.clone() }),
            SinkKind::Sqlite(q) => Some(ResultsStore::Sqlite { path: q.path.clone(), pipeline: q.pipeline.clone() }),
            _ => None,
        })
    }

    /// The evidence of `build`.
    pub async fn read_evidence(&self, build: &str) -> Result<Evidence, String> {
        match self {
            ResultsStore::Postgres { url, schema, pipeline } => postgres::fusion::read_evidence(url, schema, pipeline, build).await,
            ResultsStore::Sqlite { path, pipeline } => {
                let (path, pipeline, build) = (path.clone(), pipeline.clone(), build.to_owned());
                blocking(move || sqlite::fusion::read_evidence(&path, &pipeline, &build)).await
            }
        }
    }

    /// Replaces `build`'s fused defects and fusion summary, in one transaction.
    pub async fn write_fusion(&self, build: &str, fused: Vec<FusedDefect>, summary: FusionSummary) -> Result<(Vec<FusedDefect>, FusionSummary), String> {
        match self {
            ResultsStore::Postgres { url, schema, pipeline } => postgres::fusion::write_fusion(url, schema, pipeline, build, &fused, &summary).await.map(|()| (fused, summary)),
            ResultsStore::Sqlite { path, pipeline } => {
                let (path, pipeline, build) = (path.clone(), pipeline.clone(), build.to_owned());
                blocking(move || sqlite::fusion::write_fusion(&path, &pipeline, &build, &fused, &summary).map(|()| (fused, summary))).await
            }
        }
    }

    /// Fuses `build`: reads its evidence, joins `defects` (those of other builds are ignored)
    /// and replaces its fusion rows (a build without stored evidence is fused all the same, every
    /// defect undetected, and a warning logged). A deterministic function of the defects and the stored
    /// evidence, so running it again (a replay, a revised list) is idempotent.
    pub async fn fuse_build(&self, build: &str, defects: &[CtDefect], params: &FusionParams) -> Result<(Vec<FusedDefect>, FusionSummary), String> {
        let ev = self.read_evidence(build).await?;
        if ev.is_empty() {
            // Fused all the same (every defect undetected): a later fusion replaces it.
            tracing::warn!(build_id = build, "no in-situ evidence stored for this build: its CT defects are fused as undetected");
        }
        let (fused, summary) = fuse(build, defects, &ev, params);
        self.write_fusion(build, fused, summary).await
    }

    /// The builds with layer results.
    pub async fn builds(&self) -> Result<Vec<String>, String> {
        match self {
            ResultsStore::Postgres { url, schema, pipeline } => postgres::fusion::builds(url, schema, pipeline).await,
            ResultsStore::Sqlite { path, pipeline } => {
                let (path, pipeline) = (path.clone(), pipeline.clone());
                blocking(move || sqlite::fusion::builds(&path, &pipeline)).await
            }
        }
    }

    /// The records (JSON) of `build` in `table`.
    pub async fn records(&self, build: &str, table: &str) -> Result<Vec<String>, String> {
        match self {
            ResultsStore::Postgres { url, schema, pipeline } => postgres::fusion::records(url, schema, pipeline, build, table).await,
            ResultsStore::Sqlite { path, pipeline } => {
                let (path, pipeline, build, table) = (path.clone(), pipeline.clone(), build.to_owned(), table.to_owned());
                blocking(move || sqlite::fusion::records(&path, &pipeline, &build, &table)).await
            }
        }
    }

    /// `build`'s SPC signals: (layer, laser, chart, rule).
    pub async fn spc_rows(&self, build: &str) -> Result<Vec<(u32, u8, String, String)>, String> {
        match self {
            ResultsStore::Postgres { url, schema, pipeline } => postgres::fusion::spc_rows(url, schema, pipeline, build).await,
            ResultsStore::Sqlite { path, pipeline } => {
                let (path, pipeline, build) = (path.clone(), pipeline.clone(), build.to_owned());
                blocking(move || sqlite::fusion::spc_rows(&path, &pipeline, &build)).await
            }
        }
    }
}
