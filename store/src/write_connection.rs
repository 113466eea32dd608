//! The writer's connection and its `INSERT` statements, which bind text where it lies.
//!
//! rusqlite binds every text as `SQLITE_TRANSIENT`: SQLite copies the value into an allocation
//! of its own and frees it when the binding is cleared. `callgrind` put that at 10 % of the
//! writer's instructions, a copy of every string of every row. A row's values outlive the one
//! execution they are bound for, so these statements bind them `SQLITE_STATIC` and clear the
//! bindings before the values can go.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::ptr::{self, NonNull};

use rusqlite::Connection;
use rusqlite::ffi;

use crate::columns::Field;

/// A write connection with the `INSERT`s prepared on it.
pub(crate) struct WriteConnection {
    /// Declared before `connection`, so the statements are finalized before it closes.
    inserts: Inserts,
    connection: Connection,
}

/// Prepared `INSERT`s of one connection, by table and rows per statement.
pub(crate) struct Inserts {
    database: *mut ffi::sqlite3,
    statements: HashMap<(&'static str, usize), Insert>,
}

struct Insert(NonNull<ffi::sqlite3_stmt>);

impl WriteConnection {
    pub(crate) fn new(connection: Connection) -> WriteConnection {
        // SAFETY: the handle is used only while `connection` is open, which it is for as long
        // as `self`, whose statements it finalizes first.
        let database = unsafe { connection.handle() };
        WriteConnection {
            inserts: Inserts {
                database,
                statements: HashMap::new(),
            },
            connection,
        }
    }

    /// The connection, for transactions and other statements, beside the inserts. The
    /// connection must not be replaced through it: the statements belong to this one.
    pub(crate) fn parts(&mut self) -> (&mut Connection, &mut Inserts) {
        (&mut self.connection, &mut self.inserts)
    }
}

impl Inserts {
    /// Runs the `INSERT` known as `key`, with one value per parameter; `sql` makes its text
    /// the first time, when it is prepared for this connection.
    pub(crate) fn execute(
        &mut self,
        key: (&'static str, usize),
        sql: impl FnOnce() -> String,
        values: &[Field<'_>],
    ) -> rusqlite::Result<()> {
        let statement = match self.statements.get(&key) {
            Some(insert) => insert.0.as_ptr(),
            None => {
                let insert = self.prepare(&sql())?;
                let statement = insert.0.as_ptr();
                self.statements.insert(key, insert);
                statement
            }
        };
        let result = self.bind(statement, values).and_then(|()| {
            // SAFETY: a statement of this open connection, its values bound and alive.
            match unsafe { ffi::sqlite3_step(statement) } {
                ffi::SQLITE_DONE => Ok(()),
                code => Err(self.error(code)),
            }
        });
        // SAFETY: as above. Unbound before `values` can go: SQLite holds pointers into them.
        unsafe {
            ffi::sqlite3_reset(statement);
            ffi::sqlite3_clear_bindings(statement);
        }
        result
    }

    fn prepare(&self, sql: &str) -> rusqlite::Result<Insert> {
        let length = c_int::try_from(sql.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
        })?;
        let mut statement = ptr::null_mut();
        // SAFETY: the open connection's handle, and `length` bytes of `sql`.
        let code = unsafe {
            ffi::sqlite3_prepare_v3(
                self.database,
                sql.as_ptr().cast::<c_char>(),
                length,
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut statement,
                ptr::null_mut(),
            )
        };
        if code != ffi::SQLITE_OK {
            return Err(self.error(code));
        }
        NonNull::new(statement).map(Insert).ok_or_else(|| {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_MISUSE),
                Some(format!("no statement in {sql:?}")),
            )
        })
    }

    /// Binds each value to its parameter; text is bound where it lies (`SQLITE_STATIC`).
    fn bind(
        &self,
        statement: *mut ffi::sqlite3_stmt,
        values: &[Field<'_>],
    ) -> rusqlite::Result<()> {
        // SAFETY: here and below, a statement of the open connection; each text is bound where
        // it lies, and `execute` clears the bindings before `values` can be dropped.
        let parameters = unsafe { ffi::sqlite3_bind_parameter_count(statement) };
        if usize::try_from(parameters) != Ok(values.len()) {
            return Err(rusqlite::Error::InvalidParameterCount(
                values.len(),
                parameters as usize,
            ));
        }
        for (index, value) in (1..).zip(values) {
            let code = unsafe {
                match value {
                    Field::Text(Some(text)) => ffi::sqlite3_bind_text64(
                        statement,
                        index,
                        // An empty text's pointer may dangle; SQLite is given one that does not.
                        if text.is_empty() {
                            c"".as_ptr()
                        } else {
                            text.as_ptr().cast::<c_char>()
                        },
                        text.len() as ffi::sqlite3_uint64,
                        ffi::SQLITE_STATIC(),
                        ffi::SQLITE_UTF8 as _,
                    ),
                    Field::Real(Some(real)) => ffi::sqlite3_bind_double(statement, index, *real),
                    Field::Integer(Some(integer)) => {
                        ffi::sqlite3_bind_int64(statement, index, *integer)
                    }
                    Field::Bool(Some(bool)) => {
                        ffi::sqlite3_bind_int64(statement, index, i64::from(*bool))
                    }
                    Field::Text(None)
                    | Field::Real(None)
                    | Field::Integer(None)
                    | Field::Bool(None) => ffi::sqlite3_bind_null(statement, index),
                }
            };
            if code != ffi::SQLITE_OK {
                return Err(self.error(code));
            }
        }
        Ok(())
    }

    /// The error `code` with the connection's message, as rusqlite gives it.
    fn error(&self, code: c_int) -> rusqlite::Error {
        // SAFETY: SQLite's message for the open connection, a C string it owns.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.database)) };
        rusqlite::Error::SqliteFailure(
            ffi::Error::new(code),
            Some(message.to_string_lossy().into_owned()),
        )
    }
}

impl Drop for Insert {
    fn drop(&mut self) {
        // SAFETY: prepared on a connection still open (see `WriteConnection`), finalized once.
        unsafe { ffi::sqlite3_finalize(self.0.as_ptr()) };
    }
}
