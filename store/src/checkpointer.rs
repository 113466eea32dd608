//! WAL checkpoints on a thread of their own. SQLite folds its write-ahead log into the database
//! file inside the commit that crosses `wal_autocheckpoint`: the writer copied pages and waited
//! for two fsyncs while the batches behind it, and in durable mode their clients, waited too.
//! Here the writer nudges this thread after each commit; it checkpoints PASSIVE (never taking
//! the write lock, so the writer goes on meanwhile), at most once per [`PAUSE`], so pages that
//! many small commits rewrite are copied once. SQLite starts the log over only when a write
//! begins with all of it copied, which a busy writer may never allow: so the writer still
//! checkpoints itself once the log reaches [`BACKSTOP_PAGES`], copying only what this thread
//! has not.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The least time from one checkpoint to the next.
const PAUSE: Duration = Duration::from_millis(250);

/// The log's size, in pages, at which the writer checkpoints itself (SQLite's default is 1000).
pub(crate) const BACKSTOP_PAGES: u32 = 10_000;

pub(crate) struct Checkpointer {
    nudge: SyncSender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub(crate) fn start(path: PathBuf) -> std::io::Result<Checkpointer> {
        // One nudge waiting is as good as many.
        let (nudge, nudges) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&path, &nudges))?;
        Ok(Checkpointer { nudge, thread })
    }

    /// Something was committed: checkpoint soon.
    pub(crate) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Stops at once, between checkpoints; what is left in the log stays for the next one (the
    /// store's closing checkpoint, or the next start).
    pub(crate) fn stop(self) {
        drop(self.nudge);
        let _ = self.thread.join();
    }
}

fn run(path: &Path, nudges: &Receiver<()>) {
    let mut connection = None;
    let mut committed = nudges.recv().is_ok();
    while committed {
        let next_pass = Instant::now() + PAUSE;
        if let Err(error) = checkpoint(&mut connection, path) {
            // Nothing is lost: the log stays until a later pass copies it.
            tracing::debug!(%error, "background checkpoint failed; the next one tries again");
            connection = None;
        }
        // What is committed during the pause waits for the next pass.
        committed = match pause(next_pass, nudges) {
            Some(true) => true,
            Some(false) => nudges.recv().is_ok(),
            None => false,
        };
    }
}

/// Waits until `until`: whether something was committed meanwhile; None once the writer stops.
fn pause(until: Instant, nudges: &Receiver<()>) -> Option<bool> {
    let mut committed = false;
    loop {
        match nudges.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(()) => committed = true,
            Err(RecvTimeoutError::Timeout) => return Some(committed),
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn checkpoint(connection: &mut Option<Connection>, path: &Path) -> rusqlite::Result<()> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(Connection::open(path)?),
    };
    // One row: busy, pages in the log, pages copied; a pass cut short leaves the rest to the next.
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
