//! Connections of the PostgreSQL sink: the pool a sink writes through, and single connections
//! for the administrative functions. Timeouts are set here so that an unreachable server is a
//! retryable error within seconds, never a hang.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// Connections per sink.
const POOL_SIZE: usize = 4;

/// Timeout of a TCP connection attempt (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection pool of a sink writing to the database at `url`; nothing connects yet.
pub(super) fn pool(url: &str) -> Result<Pool, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("meltstream");
    }
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT * 2))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| format!("cannot create the connection pool: {e}"))
}

/// One connection outside any pool (for the administrative functions).
pub(super) async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(NoTls).await.map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection failed");
        }
    });
    Ok(client)
}

