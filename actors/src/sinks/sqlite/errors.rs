//! The SQLite sink's error classes: which failures a retry may fix ([`SinkError::Retryable`]:
//! the database busy or locked by a reader's write, I/O errors, a full disk, out of memory) and
//! which it will not ([`SinkError::Fatal`]: a schema or constraint fault, a corrupt or
//! read-only file, a file it cannot open), each logged with SQLite's extended result code.
//! Never decides anything else.

use rusqlite::ErrorCode;

use crate::sinks::writer::SinkError;

/// True when retrying `e` may succeed.
pub(super) fn is_transient(e: &rusqlite::Error) -> bool {
    match e.sqlite_error_code() {
        Some(code) => matches!(
            code,
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure | ErrorCode::DiskFull | ErrorCode::OutOfMemory | ErrorCode::FileLockingProtocolFailed | ErrorCode::OperationInterrupted
        ),
        None => false,
    }
}

/// SQLite's extended result code of `e` (`SQLITE_BUSY_SNAPSHOT` = 517, …), if it has one.
fn extended_code(e: &rusqlite::Error) -> Option<i32> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.extended_code),
        _ => None,
    }
}

/// Classifies a database error of `stage` in sink `sink`, logging it.
pub(super) fn db_error(sink: &str, stage: &str, e: &rusqlite::Error) -> SinkError {
    let retry = is_transient(e);
    let code = extended_code(e).map_or_else(|| "none".to_owned(), |c| c.to_string());
    tracing::warn!(sink, stage, sqlite_code = %code, retryable = retry, error = %e, "SQLite sink failed");
    let message = format!("{stage}: {e} (SQLite result code {code})");
    if retry {
        SinkError::Retryable { sink: sink.to_owned(), message }
    } else {
        SinkError::Fatal { sink: sink.to_owned(), message }
    }
}

/// A failure of sink `sink` that is not SQLite's (a value that does not fit, a file it cannot
/// lock), logged.
pub(super) fn fatal(sink: &str, message: String) -> SinkError {
    tracing::warn!(sink, sqlite_code = "none", retryable = false, error = %message, "SQLite sink failed");
    SinkError::Fatal { sink: sink.to_owned(), message }
}

/// A transient failure of sink `sink` that is not SQLite's, logged.
pub(super) fn retryable(sink: &str, message: String) -> SinkError {
    tracing::warn!(sink, sqlite_code = "none", retryable = true, error = %message, "SQLite sink failed");
    SinkError::Retryable { sink: sink.to_owned(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("x".into()))
    }

    #[test]
    fn busy_and_io_are_retryable_schema_and_constraint_faults_are_not() {
        assert!(matches!(db_error("s", "insert", &failure(rusqlite::ffi::SQLITE_BUSY)), SinkError::Retryable { .. }));
        assert!(matches!(db_error("s", "insert", &failure(rusqlite::ffi::SQLITE_IOERR_FSYNC)), SinkError::Retryable { .. }));
        assert!(matches!(db_error("s", "insert", &failure(rusqlite::ffi::SQLITE_FULL)), SinkError::Retryable { .. }));
        match db_error("s", "insert", &failure(rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL)) {
            SinkError::Fatal { message, .. } => assert!(message.contains("1299"), "{message}"),
            other => panic!("expected fatal, got {other:?}"),
        }
        assert!(matches!(db_error("s", "insert", &failure(rusqlite::ffi::SQLITE_ERROR)), SinkError::Fatal { .. }));
        assert!(matches!(db_error("s", "open", &failure(rusqlite::ffi::SQLITE_CORRUPT)), SinkError::Fatal { .. }));
        assert!(matches!(db_error("s", "read", &rusqlite::Error::QueryReturnedNoRows), SinkError::Fatal { .. }));
    }
}
