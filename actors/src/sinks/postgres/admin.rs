//! Administrative functions over the PostgreSQL sink's tables, outside any running engine:
//! empty a pipeline (`meltstream reset`), count its rows, and (tests) run a query. Never used
//! on the data path.

use std::collections::BTreeMap;

use super::connection::connect;
use super::schema::{quote_ident, TABLES};

/// Whether `schema` holds meltstream's tables (at any version).
async fn has_tables(client: &tokio_postgres::Client, schema: &str) -> Result<bool, String> {
    let version_table = format!("{}.schema_version", quote_ident(schema));
    let row = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&version_table]).await.map_err(|e| format!("cannot inspect schema {schema}: {e}"))?;
    row.try_get(0).map_err(|e| format!("cannot inspect schema {schema}: {e}"))
}

/// Deletes every row of `pipeline` (results, dead letters, late records and progress) from the
/// tables in `schema`, in one transaction, so that the pipeline starts over; returns the number
/// of rows deleted (0 when the schema holds no meltstream tables). Used by `meltstream reset`.
pub async fn reset_pipeline(url: &str, schema: &str, pipeline: &str) -> Result<u64, String> {
    let mut client = connect(url).await?;
    if !has_tables(&client, schema).await? {
        return Ok(0);
    }
    let s = quote_ident(schema);
    let tx = client.transaction().await.map_err(|e| format!("cannot begin: {e}"))?;
    let mut deleted = 0;
    for table in TABLES {
        deleted += tx.execute(&format!("DELETE FROM {s}.{table} WHERE pipeline = $1"), &[&pipeline]).await.map_err(|e| format!("cannot delete from {schema}.{table}: {e}"))?;
    }
    tx.commit().await.map_err(|e| format!("cannot commit: {e}"))?;
    Ok(deleted)
}

/// Rows of `pipeline` per table in `schema` (every table, including `progress`; an empty map
/// when the schema holds no meltstream tables).
pub async fn row_counts(url: &str, schema: &str, pipeline: &str) -> Result<BTreeMap<String, u64>, String> {
    let client = connect(url).await?;
    let mut counts = BTreeMap::new();
    if !has_tables(&client, schema).await? {
        return Ok(counts);
    }
    let s = quote_ident(schema);
    for table in TABLES {
        let row = client.query_one(&format!("SELECT count(*) FROM {s}.{table} WHERE pipeline = $1"), &[&pipeline]).await.map_err(|e| format!("cannot count {schema}.{table}: {e}"))?;
        let n: i64 = row.try_get(0).map_err(|e| format!("cannot count {schema}.{table}: {e}"))?;
        counts.insert(table.to_owned(), n.max(0) as u64);
    }
    Ok(counts)
}

/// Runs `sql` (one or more statements, simple query protocol) and returns the rows of its
/// results as text: for tests that inspect or clean up what a sink wrote, and for
/// `bench kafka-pg --processes`, which watches the stored progress.
pub async fn query_text(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let client = connect(url).await?;
    let messages = client.simple_query(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    let rows = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect();
    Ok(rows)
}

