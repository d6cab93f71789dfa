//! The PostgreSQL sink's error classes: which failures a retry may fix ([`SinkError::Retryable`]:
//! I/O, a closed connection, timeouts, SQLSTATE classes 08, 40, 53, 57) and which it will not
//! ([`SinkError::Fatal`]), each logged with its SQLSTATE. Never decides anything else.

use deadpool_postgres::PoolError;

use crate::sinks::writer::SinkError;

/// True when retrying `e` may succeed: I/O, a closed connection, a timeout, or SQLSTATE class
/// 08, 40, 53 or 57.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return matches!(code.code().get(..2), Some("08" | "40" | "53" | "57"));
    }
    // Not a server error: an I/O (or connect) error carries an io::Error as its source, and a
    // timeout has none but says so.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().starts_with("timeout")
}

pub(super) fn sqlstate(e: &tokio_postgres::Error) -> &str {
    e.code().map_or("none", |c| c.code())
}

/// Classifies a database error of `stage` in sink `sink`, logging it.
pub(super) fn db_error(sink: &str, stage: &str, e: &tokio_postgres::Error) -> SinkError {
    let retry = is_transient(e);
    tracing::warn!(sink, stage, sqlstate = sqlstate(e), retryable = retry, error = %e, "PostgreSQL sink failed");
    let message = format!("{stage}: {e} (SQLSTATE {})", sqlstate(e));
    if retry {
        SinkError::Retryable { sink: sink.to_owned(), message }
    } else {
        SinkError::Fatal { sink: sink.to_owned(), message }
    }
}

/// Classifies a failure of sink `sink` to get a connection, logging it.
pub(super) fn pool_error(sink: &str, e: PoolError) -> SinkError {
    let (retry, state) = match &e {
        PoolError::Backend(b) => (is_transient(b), sqlstate(b).to_owned()),
        PoolError::Timeout(_) => (true, "none".to_owned()),
        PoolError::PostCreateHook(_) => (true, "none".to_owned()),
        PoolError::Closed | PoolError::NoRuntimeSpecified => (false, "none".to_owned()),
    };
    tracing::warn!(sink, stage = "connect", sqlstate = %state, retryable = retry, error = %e, "PostgreSQL sink cannot connect");
    let message = format!("cannot connect to PostgreSQL: {e} (SQLSTATE {state})");
    if retry {
        SinkError::Retryable { sink: sink.to_owned(), message }
    } else {
        SinkError::Fatal { sink: sink.to_owned(), message }
    }
}

/// A failure of sink `sink` that is not the server's (a value that does not fit), logged.
pub(super) fn fatal(sink: &str, message: String) -> SinkError {
    tracing::warn!(sink, sqlstate = "none", retryable = false, error = %message, "PostgreSQL sink failed");
    SinkError::Fatal { sink: sink.to_owned(), message }
}
