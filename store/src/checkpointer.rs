//! WAL checkpoints on a thread of their own. SQLite folds its write-ahead log into the database
//! file inside the commit that crosses `wal_autocheckpoint`: the writer copied pages and waited
//! for two fsyncs while the batches behind it, and in durable mode their clients, waited too.
//! Here the writer nudges this thread after each commit; it checkpoints PASSIVE (never taking
//! the write lock, so the writer goes on meanwhile), at most once per [`PAUSE`], so pages that
//! many small commits rewrite are copied once; at most once per [`QUIET_PAUSE`] while the writer
//! is lightly loaded (see [`pause_after`]). SQLite starts the log over only when a write
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

/// The least time from one checkpoint to the next while the writer takes fewer than
/// [`QUIET_REQUESTS_PER_SECOND`] requests holding fewer than [`QUIET_ROWS_PER_SECOND`] rows.
const QUIET_PAUSE: Duration = Duration::from_secs(1);

/// A steady 10,000 metrics a second are 100 requests of 100. Under an overload (the benchmark's,
/// on a 2-core VM) either count is far higher: batches of 1 are 25,000 requests a second or
/// more (15,000 in durable mode), batches of 100 are 75,000 rows a second or more.
const QUIET_REQUESTS_PER_SECOND: f64 = 300.0;
const QUIET_ROWS_PER_SECOND: f64 = 20_000.0;

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
    /// What was committed since the last pass began.
    written: Written,
    /// The thread waits for a commit (not pausing, not checkpointing).
    idle: bool,
    stopped: bool,
}

impl Signal {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nudge(&self, requests: usize, rows: usize) {
        let mut state = self.state();
        state.committed = true;
        state.written.requests += requests;
        state.written.rows += rows;
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

    /// `requests` holding `rows` were committed: checkpoint soon.
    pub(crate) fn nudge(&self, requests: usize, rows: usize) {
        self.signal.nudge(requests, rows);
    }

    /// Stops at once, between checkpoints; what is left in the log stays for the next one (the
    /// store's closing checkpoint, or the next start).
    pub(crate) fn stop(self) {
        self.signal.stop();
        let _ = self.thread.join();
    }
}

/// Requests and their rows committed since the last pass began.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Written {
    requests: usize,
    rows: usize,
}

fn run(path: &Path, signal: &Signal) {
    let mut connection = None;
    let mut last_pass = Instant::now();
    while let Some(written) = wait_for_commit(signal) {
        let started = Instant::now();
        let next_pass = started + pause_after(written, started - last_pass);
        last_pass = started;
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

/// How long to wait after a pass, given what was written in the `since_last` before it. While
/// the writer is lightly loaded (the steady load) a longer pause lets the pages that many
/// commits rewrite (an index's leaves, above all) be copied once instead of four times. Under
/// load the pause stays short, so that each pass stays short too: longer ones raised the
/// overload's p99. Neither the log's growth (2,300 to 2,700 pages a second in the steady load,
/// 3,200 to 6,500 in the overload), the rows alone (25,000 a second under an overload of batches
/// of 1) nor the writer's busy time (12 % against 25 %) tell the two apart with room to spare;
/// requests and rows together do.
fn pause_after(written: Written, since_last: Duration) -> Duration {
    let seconds = since_last.max(PAUSE).as_secs_f64();
    let requests = written.requests as f64 / seconds;
    let rows = written.rows as f64 / seconds;
    if requests < QUIET_REQUESTS_PER_SECOND && rows < QUIET_ROWS_PER_SECOND {
        QUIET_PAUSE
    } else {
        PAUSE
    }
}

/// Waits until something is committed (at once if it was meanwhile), and takes what was
/// written since the last time: `None` once stopped.
fn wait_for_commit(signal: &Signal) -> Option<Written> {
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
    let written = std::mem::take(&mut state.written);
    (!state.stopped).then_some(written)
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
        let nudger = soon(&signal, |signal| signal.nudge(1, 1));
        // Should the nudge not wake it, a stop does, and the wait says so.
        let watchdog = signal.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            watchdog.stop();
        });
        assert!(
            wait_for_commit(&signal).is_some(),
            "the commit did not wake the thread"
        );
        nudger.join().unwrap();
        // Committed while the thread was busy: the next wait returns at once, with both commits'
        // requests and rows since the last.
        signal.nudge(16, 16);
        signal.nudge(4, 400);
        let written = Written {
            requests: 20,
            rows: 416,
        };
        assert_eq!(wait_for_commit(&signal), Some(written));
        assert!(!signal.state().committed && !signal.state().idle);
    }

    #[test]
    fn a_commit_during_the_pause_is_kept_for_the_next_pass() {
        let signal = Signal::default();
        signal.nudge(1, 1);
        assert!(wait_for_commit(&signal).is_some());
        signal.nudge(1, 1);
        assert!(pause(Instant::now() + Duration::from_millis(10), &signal));
        assert!(
            signal.state().committed,
            "the pass after the pause copies it"
        );
    }

    #[test]
    fn the_pause_is_long_only_while_the_writer_is_lightly_loaded() {
        let second = Duration::from_secs(1);
        let after = |requests, rows, since| pause_after(Written { requests, rows }, since);
        // The steady load: 100 requests of 100 metrics a second.
        assert_eq!(after(100, 10_000, second), QUIET_PAUSE);
        // The first pass after a quiet while.
        assert_eq!(after(1, 1, Duration::from_secs(60)), QUIET_PAUSE);
        // Batches of 1, in either mode: few rows, many requests.
        assert_eq!(after(15_000, 15_000, second), PAUSE);
        // Batches of 100: few requests, many rows.
        assert_eq!(after(750, 75_000, second), PAUSE);
        assert_eq!(after(100, 50_000, second), PAUSE);
        // A quarter second's requests are not taken for a second's.
        assert_eq!(after(100, 1_000, PAUSE), PAUSE);
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
        assert!(wait_for_commit(&signal).is_none());
    }
}
