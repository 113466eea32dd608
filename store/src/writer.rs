//! The thread metric rows are written from. sqlx runs every SQLite statement on its driver's
//! thread and hands each result back: a round trip between threads per statement, which the
//! benchmark's profile put at 50–60 µs on a 2-core VM, more than the rows of a small
//! transaction cost. Here one thread owns the write connection and runs a whole transaction,
//! so a batch costs one hand-off there and one back, however many statements it takes. The
//! [`Checkpointer`]'s thread folds what it commits into the database file.

use std::cell::Cell;
use std::ffi::c_int;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use mcp_metrics_plugin::Request;
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::checkpointer::{self, BACKSTOP_PAGES, Checkpointer, LOG_LIMIT_PAGES};
use crate::rows::write_rows;
use crate::wal_vfs;
use crate::write_connection::WriteConnection;
use crate::write_error::WriteError;

/// How long a write waits for another writer's lock before it fails (and is retried).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Writer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Job {
    requests: Vec<Arc<Request>>,
    done: oneshot::Sender<Result<(), WriteError>>,
}

impl Writer {
    /// Starts the thread; it opens its connection with the first write.
    pub(crate) fn start(path: PathBuf) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let mut connection = None;
                let checkpointer = Checkpointer::start(path.clone())
                    .inspect_err(|error| {
                        tracing::warn!(%error, "no checkpoint thread: the writer checkpoints itself")
                    })
                    .ok();
                for Job { requests, done } in queue {
                    // A panic (a bug) fails its batch, not the thread and every write after it.
                    let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        write(&mut connection, &path, &requests)
                    }))
                    .unwrap_or_else(|panic| Err(WriteError::panicked(panic.as_ref())));
                    if written.is_err() {
                        // The connection may be what failed: open a fresh one next time.
                        connection = None;
                    } else if let Some(checkpointer) = &checkpointer {
                        let rows = requests.iter().map(|r| r.metrics.len()).sum();
                        checkpointer.nudge(requests.len(), rows, LOG_PAGES.get());
                    }
                    // The caller still holds these requests: let go of them before answering,
                    // so that the caller's thread frees them, not this one. Dropped after the
                    // answer, they were often the last references (the answer woke the caller
                    // first), and freeing their metrics took 6 % of this thread's samples in
                    // the steady load, on the path every commit waits on.
                    drop(requests);
                    let _ = done.send(written);
                    // After the answer: this batch's clients do not wait for it.
                    if let Some(connection) = &mut connection {
                        let finish = match &checkpointer {
                            Some(checkpointer) => checkpointer.take_finish(),
                            None => LOG_PAGES.get() >= LOG_LIMIT_PAGES,
                        };
                        if finish {
                            finish_checkpoint(connection);
                        }
                    }
                }
                if let Some(checkpointer) = checkpointer {
                    checkpointer.stop();
                }
            })?;
        Ok(Writer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Writes the requests' metrics in one transaction: all rows or none.
    pub(crate) async fn write(&self, requests: Vec<Arc<Request>>) -> Result<(), WriteError> {
        let (done, written) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send(Job { requests, done }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(WriteError::closed());
        }
        written.await.unwrap_or_else(|_| Err(WriteError::closed()))
    }

    /// Finishes the writes already sent, then closes the connection.
    pub(crate) async fn close(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn write(
    connection: &mut Option<WriteConnection>,
    path: &Path,
    requests: &[Arc<Request>],
) -> Result<(), WriteError> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(WriteConnection::new(open(path)?)),
    };
    Ok(write_rows(connection, requests)?)
}

thread_local! {
    /// The log's size in pages after the writer's latest commit, as SQLite told [`after_commit`].
    static LOG_PAGES: Cell<u32> = const { Cell::new(0) };
}

/// SQLite's hook after each commit of the writer's connection, with the log's size in pages.
/// It stands where `wal_autocheckpoint` would, so it keeps that backstop too.
fn after_commit(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    let pages = u32::try_from(pages).unwrap_or(0);
    LOG_PAGES.set(pages);
    if pages >= BACKSTOP_PAGES {
        // The checkpoint thread fell behind: copy inside the commit, as SQLite's own hook does.
        // A failure fails nothing; the next commit tries again.
        let _ = wal.checkpoint();
    }
    Ok(())
}

/// Copies what the checkpoint thread's pass left in the log; the next commit starts it over.
fn finish_checkpoint(connection: &mut WriteConnection) {
    let (connection, _) = connection.parts();
    if let Err(error) = checkpointer::pass(connection) {
        // Nothing is lost: the log stays until a later pass copies it.
        tracing::debug!(%error, "the writer's checkpoint failed; a later one tries again");
    }
}

/// The file the pool opened and migrated, with the pool's settings, checkpointing itself as
/// the [`Checkpointer`] asks (or, past [`BACKSTOP_PAGES`], in the commit).
fn open(path: &Path) -> rusqlite::Result<Connection> {
    wal_vfs::register()?;
    let connection =
        Connection::open_with_flags_and_vfs(path, OpenFlags::default(), wal_vfs::NAME)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA temp_store = memory; PRAGMA cache_size = -2000;",
    )?;
    connection.wal_hook(Some(after_commit));
    Ok(connection)
}

impl crate::Store {
    /// Writes every metric of the batch in one transaction: all rows or none.
    pub async fn write_batch(&self, batch: &mcp_metrics_plugin::Batch) -> Result<(), WriteError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.writer.write(batch.requests.clone()).await
    }
}

#[cfg(test)]
mod tests {
    /// `.cargo/config.toml` builds SQLite without the process-wide locks the writer does not
    /// need; a build that lost it (run from elsewhere, or the flags renamed) would still work,
    /// only slower, so nothing else would tell.
    #[test]
    fn sqlite_is_built_without_process_wide_locks() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let mut statement = connection.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "memory statistics lock every allocation: {options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "memory management shares one locked page cache: {options:?}"
        );
    }
}
