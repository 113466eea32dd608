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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The least time from one checkpoint to the next.
const PAUSE: Duration = Duration::from_millis(250);

/// The log's size, in pages, at which the writer checkpoints itself (SQLite's default is 1000).
pub(crate) const BACKSTOP_PAGES: u32 = 10_000;

pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
    thread: JoinHandle<()>,
}

/// What the writer tells the thread. A nudge wakes it only while it waits for a commit: during
/// its pause a wake would only note the nudge and sleep again, and durable mode's small commits
/// made that 2,000 thread switches a second, taken from the writer and the HTTP workers.
#[derive(Default)]
struct Signal {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Something was committed since the last pass began.
    committed: bool,
    /// The thread waits for a commit (not pausing, not checkpointing).
    idle: bool,
    stopped: bool,
}

impl Signal {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nudge(&self) {
        let mut state = self.state();
        state.committed = true;
        if state.idle {
            self.changed.notify_one();
        }
    }

    fn stop(&self) {
        self.state().stopped = true;
        self.changed.notify_one();
    }
}

impl Checkpointer {
    pub(crate) fn start(path: PathBuf) -> std::io::Result<Checkpointer> {
        let signal = Arc::new(Signal::default());
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let signal = signal.clone();
                move || run(&path, &signal)
            })?;
        Ok(Checkpointer { signal, thread })
    }

    /// Something was committed: checkpoint soon.
    pub(crate) fn nudge(&self) {
        self.signal.nudge();
    }

    /// Stops at once, between checkpoints; what is left in the log stays for the next one (the
    /// store's closing checkpoint, or the next start).
    pub(crate) fn stop(self) {
        self.signal.stop();
        let _ = self.thread.join();
    }
}

fn run(path: &Path, signal: &Signal) {
    let mut connection = None;
    while wait_for_commit(signal) {
        let next_pass = Instant::now() + PAUSE;
        if let Err(error) = checkpoint(&mut connection, path) {
            // Nothing is lost: the log stays until a later pass copies it.
            tracing::debug!(%error, "background checkpoint failed; the next one tries again");
            connection = None;
        }
        // What is committed during the pause waits for the next pass.
        if !pause(next_pass, signal) {
            return;
        }
    }
}

/// Waits until something is committed (at once if it was meanwhile): false once stopped.
fn wait_for_commit(signal: &Signal) -> bool {
    let mut state = signal.state();
    state.idle = true;
    while !state.committed && !state.stopped {
        state = signal
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner());
    }
    state.idle = false;
    state.committed = false;
    !state.stopped
}

/// Sleeps until `until`: false if stopped meanwhile.
fn pause(until: Instant, signal: &Signal) -> bool {
    let mut state = signal.state();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if state.stopped || left.is_zero() {
            return !state.stopped;
        }
        state = signal
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `then` on another thread after a moment, so the caller is waiting by then.
    fn soon(signal: &Arc<Signal>, then: fn(&Signal)) -> JoinHandle<()> {
        let signal = signal.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            then(&signal);
        })
    }

    #[test]
    fn a_commit_wakes_a_waiting_thread_and_one_made_before_is_not_missed() {
        let signal = Arc::new(Signal::default());
        let nudger = soon(&signal, Signal::nudge);
        // Should the nudge not wake it, a stop does, and the wait says so.
        let watchdog = signal.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            watchdog.stop();
        });
        assert!(
            wait_for_commit(&signal),
            "the commit did not wake the thread"
        );
        nudger.join().unwrap();
        // Committed while the thread was busy: the next wait returns at once.
        signal.nudge();
        assert!(wait_for_commit(&signal));
        assert!(!signal.state().committed && !signal.state().idle);
    }

    #[test]
    fn a_commit_during_the_pause_is_kept_for_the_next_pass() {
        let signal = Signal::default();
        signal.nudge();
        assert!(wait_for_commit(&signal));
        signal.nudge();
        assert!(pause(Instant::now() + Duration::from_millis(10), &signal));
        assert!(
            signal.state().committed,
            "the pass after the pause copies it"
        );
    }

    #[test]
    fn a_stop_ends_a_pause_and_a_wait_at_once() {
        let signal = Arc::new(Signal::default());
        let long = Duration::from_secs(60);
        let started = Instant::now();
        let stopper = soon(&signal, Signal::stop);
        assert!(!pause(started + long, &signal));
        assert!(started.elapsed() < long, "the pause ran out instead");
        stopper.join().unwrap();
        assert!(!wait_for_commit(&signal));
    }
}
