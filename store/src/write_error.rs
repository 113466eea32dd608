//! Why metric rows could not be written, and whether trying again can help: a busy or locked
//! database, a server that is down, a full disk or an I/O fault may clear; a constraint or a
//! value the column cannot take will not.

use std::fmt;

#[derive(Debug)]
pub struct WriteError {
    message: String,
    retryable: bool,
}

impl WriteError {
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The writer is gone: the store was closed.
    pub(crate) fn closed() -> WriteError {
        WriteError {
            message: "the database was closed".into(),
            retryable: true,
        }
    }

    /// Writing the batch panicked: a bug, which trying the same batch again would repeat.
    pub(crate) fn panicked(panic: &(dyn std::any::Any + Send)) -> WriteError {
        let what = mcp_metrics_plugin::panic_message(panic).unwrap_or("no message");
        WriteError {
            message: format!("writing the batch panicked: {what}"),
            retryable: false,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "database: {}", self.message)
    }
}

impl std::error::Error for WriteError {}

/// What the exporter queue needs to know: retry, or give the batch up.
impl From<WriteError> for mcp_metrics_plugin::ExportError {
    fn from(error: WriteError) -> Self {
        let message = error.to_string();
        if error.retryable {
            Self::retryable(message)
        } else {
            Self::permanent(message)
        }
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(error: sqlx::Error) -> WriteError {
        let retryable = match &error {
            sqlx::Error::Database(db) => db.kind() == sqlx::error::ErrorKind::Other,
            sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => false,
            _ => true,
        };
        WriteError {
            message: error.to_string(),
            retryable,
        }
    }
}

impl From<rusqlite::Error> for WriteError {
    fn from(error: rusqlite::Error) -> WriteError {
        use rusqlite::Error;
        use rusqlite::ffi::{
            SQLITE_CONSTRAINT_CHECK, SQLITE_CONSTRAINT_FOREIGNKEY, SQLITE_CONSTRAINT_NOTNULL,
            SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE,
        };
        let retryable = match &error {
            // The rows themselves break a rule. Any other failure may clear, a trigger's
            // RAISE(ABORT) included (an operator holding writes back), as sqlx classifies them.
            Error::SqliteFailure(failure, _) => !matches!(
                failure.extended_code,
                SQLITE_CONSTRAINT_UNIQUE
                    | SQLITE_CONSTRAINT_PRIMARYKEY
                    | SQLITE_CONSTRAINT_FOREIGNKEY
                    | SQLITE_CONSTRAINT_NOTNULL
                    | SQLITE_CONSTRAINT_CHECK
            ),
            Error::ToSqlConversionFailure(_) | Error::InvalidParameterCount(..) => false,
            _ => true,
        };
        WriteError {
            message: error.to_string(),
            retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    #[test]
    fn only_rows_that_break_a_rule_are_not_retried() {
        let failure =
            |code| WriteError::from(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
        assert!(failure(ffi::SQLITE_BUSY).retryable());
        assert!(failure(ffi::SQLITE_FULL).retryable());
        assert!(failure(ffi::SQLITE_CONSTRAINT_TRIGGER).retryable());
        assert!(!failure(ffi::SQLITE_CONSTRAINT_NOTNULL).retryable());
        assert!(!WriteError::from(sqlx::Error::Encode("bad".into())).retryable());
        assert!(WriteError::from(sqlx::Error::PoolTimedOut).retryable());
        let panic = std::panic::catch_unwind(|| panic!("a bug")).unwrap_err();
        let panicked = WriteError::panicked(panic.as_ref());
        assert!(!panicked.retryable());
        assert!(
            panicked.to_string().ends_with("panicked: a bug"),
            "{panicked}"
        );
    }
}
