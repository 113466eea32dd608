//! WAL checkpoints on a thread of their own. SQLite folds its write-ahead log into the database
//! file inside the commit that crosses `wal_autocheckpoint`: the writer copied pages and waited
//! for two fsyncs while the batches behind it, and in durable mode their clients, waited too.
//! Here the writer nudges this thread after each commit; it checkpoints PASSIVE (never taking
//! the write lock, so the writer goes on meanwhile), at most once per [`PAUSE`], so pages that
//! many small commits rewrite are copied once; at most once per [`QUIET_PAUSE`] while the writer
//! is lightly loaded (see [`pause_after`]).
//!
//! SQLite starts the log over only when a write begins with all of it copied, which a busy
//! writer never allows. So once the log reaches [`LOG_LIMIT_PAGES`] this thread passes at once,
//! pause or not, and then asks the writer to copy, between two batches, what was committed
//! during the pass: a few milliseconds of commits. The writer used to checkpoint inside the
//! commit that crossed the limit, syncing up to a quarter second of log while every client in
//! durable mode waited: 19 to 28 ms at a time, 3 to 8 % of the wall clock under durable
//! batches of 1 (`perf trace`). It still does at [`BACKSTOP_PAGES`], should this thread fall
//! behind or be gone.

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

/// The log's size, in pages, at which this thread passes at once and the writer then finishes
/// the pass, so that the log starts over (SQLite checkpoints at 1,000 by default).
pub(crate) const LOG_LIMIT_PAGES: u32 = 10_000;

/// The log's size, in pages, at which a connection checkpoints inside its commit whatever this
/// thread does.
pub(crate) const BACKSTOP_PAGES: u32 = 4 * LOG_LIMIT_PAGES;

/// At the log's limit, what a pass may leave for the writer to copy (4 MiB of log, a
/// millisecond or two of syncing); past it the thread passes again at once, up to
/// [`PASSES_AT_LIMIT`] times.
const LEFT_FOR_WRITER_PAGES: u32 = 1_000;
const PASSES_AT_LIMIT: u32 = 3;

pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
    thread: JoinHandle<()>,
}

/// What the writer tells the thread. A nudge wakes it while it waits for a commit, and during
/// its pause only when the log reaches its limit: there a wake would only note the nudge and
/// sleep again, and durable mode's small commits made that 2,000 thread switches a second,
/// taken from the writer and the HTTP workers.
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
    /// The log's size, in pages, after the writer's latest commit.
    log_pages: u32,
    /// A pass found the log at its limit: the writer is to copy the rest.
    finish_wanted: bool,
    /// The writer was asked to, and the log has not started over since: what it holds is left
    /// to the pauses' passes (a reader may be keeping it).
    limit_handled: bool,
    /// The thread waits for a commit (not pausing, not checkpointing).
    idle: bool,
    /// The thread waits out its pause.
    pausing: bool,
    stopped: bool,
}

impl State {
    /// The log reached its limit and the writer was not yet asked to finish a pass: pass now.
    fn log_at_limit(&self) -> bool {
        self.log_pages >= LOG_LIMIT_PAGES && !self.limit_handled
    }

    /// After the `passes`th pass in a row to find the log at its limit, which left it `copied`
    /// pages copied: asks the writer to copy the rest, unless much was committed during the pass
    /// and the thread may pass again at once (false).
    fn hand_over(&mut self, copied: i64, passes: u32) -> bool {
        let left = i64::from(self.log_pages) - copied;
        if self.committed && left > i64::from(LEFT_FOR_WRITER_PAGES) && passes < PASSES_AT_LIMIT {
            return false;
        }
        self.finish_wanted = true;
        self.limit_handled = true;
        true
    }
}

impl Signal {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nudge(&self, requests: usize, rows: usize, log_pages: u32) {
        let mut state = self.state();
        state.committed = true;
        state.written.requests += requests;
        state.written.rows += rows;
        state.log_pages = log_pages;
        if log_pages < LOG_LIMIT_PAGES {
            state.limit_handled = false;
        }
        if state.idle || (state.pausing && state.log_at_limit()) {
            self.changed.notify_one();
        }
    }

    /// Whether the writer is to finish a pass; asks once per pass.
    fn take_finish(&self) -> bool {
        std::mem::take(&mut self.state().finish_wanted)
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

    /// `requests` holding `rows` were committed, leaving `log_pages` in the log: checkpoint
    /// soon.
    pub(crate) fn nudge(&self, requests: usize, rows: usize, log_pages: u32) {
        self.signal.nudge(requests, rows, log_pages);
    }

    /// Whether the writer is to checkpoint now, between batches: a pass found the log at its
    /// limit and copied all but what was committed during it. Asks once per such pass.
    pub(crate) fn take_finish(&self) -> bool {
        self.signal.take_finish()
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
    let mut passes_at_limit = 0;
    while let Some(written) = wait_for_commit(signal) {
        let started = Instant::now();
        let next_pass = started + pause_after(written, started - last_pass);
        last_pass = started;
        match checkpoint(&mut connection, path) {
            Ok(pass) if pass.log >= i64::from(LOG_LIMIT_PAGES) => {
                passes_at_limit += 1;
                if !signal.state().hand_over(pass.copied, passes_at_limit) {
                    continue;
                }
            }
            Ok(_) => {}
            Err(error) => {
                // Nothing is lost: the log stays until a later pass copies it.
                tracing::debug!(%error, "background checkpoint failed; the next one tries again");
                connection = None;
            }
        }
        passes_at_limit = 0;
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

/// Sleeps until `until`, or until the log reaches its limit: false if stopped meanwhile.
fn pause(until: Instant, signal: &Signal) -> bool {
    let mut state = signal.state();
    state.pausing = true;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if state.stopped || left.is_zero() || state.log_at_limit() {
            state.pausing = false;
            return !state.stopped;
        }
        state = signal
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// What a pass found: the log's size and how much of it is copied, in pages (both -1 when
/// another connection was checkpointing).
pub(crate) struct Pass {
    log: i64,
    copied: i64,
}

fn checkpoint(connection: &mut Option<Connection>, path: &Path) -> rusqlite::Result<Pass> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(Connection::open(path)?),
    };
    pass(connection)
}

/// One `PASSIVE` pass on `connection`, this thread's or the writer's finishing one.
pub(crate) fn pass(connection: &Connection) -> rusqlite::Result<Pass> {
    // One row: busy, pages in the log, pages copied; a pass cut short leaves the rest to the next.
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Pass {
            log: row.get(1)?,
            copied: row.get(2)?,
        })
    })
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
        let nudger = soon(&signal, |signal| signal.nudge(1, 1, 1));
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
        signal.nudge(16, 16, 1);
        signal.nudge(4, 400, 1);
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
        signal.nudge(1, 1, 1);
        assert!(wait_for_commit(&signal).is_some());
        signal.nudge(1, 1, 1);
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
    fn the_writer_copies_the_rest_once_little_is_left_or_the_passes_are_spent() {
        let limit = i64::from(LOG_LIMIT_PAGES);
        let mut state = State {
            log_pages: LOG_LIMIT_PAGES + 5_000,
            committed: true,
            ..State::default()
        };
        // The pass copied all it found, but much was committed meanwhile: pass again.
        assert!(!state.hand_over(limit, 1));
        assert!(!state.finish_wanted);
        state.log_pages = LOG_LIMIT_PAGES + 500;
        assert!(state.hand_over(limit, 2));
        assert!(state.finish_wanted && !state.log_at_limit());
        // However much is left after the last pass allowed.
        let mut state = State {
            log_pages: 3 * LOG_LIMIT_PAGES,
            committed: true,
            ..State::default()
        };
        assert!(state.hand_over(0, PASSES_AT_LIMIT));
        // Nothing committed during the pass (a reader kept the rest): passing again is no use.
        let mut state = State {
            log_pages: 2 * LOG_LIMIT_PAGES,
            ..State::default()
        };
        assert!(state.hand_over(0, 1));
    }

    #[test]
    fn the_log_at_its_limit_ends_a_pause_until_the_writer_is_asked_to_finish() {
        let signal = Arc::new(Signal::default());
        let long = Duration::from_secs(60);
        let started = Instant::now();
        let nudger = soon(&signal, |signal| signal.nudge(1, 1, LOG_LIMIT_PAGES));
        assert!(pause(started + long, &signal));
        assert!(started.elapsed() < long, "the pause ran out instead");
        nudger.join().unwrap();
        // The writer is asked once; the log at its limit cuts no pause short until it starts
        // over (a reader may hold it there).
        assert!(signal.state().hand_over(i64::from(LOG_LIMIT_PAGES), 1));
        assert!(signal.take_finish());
        assert!(!signal.take_finish(), "asked twice after one pass");
        signal.nudge(1, 1, LOG_LIMIT_PAGES + 100);
        assert!(!signal.state().log_at_limit());
        signal.nudge(1, 1, 10);
        signal.nudge(1, 1, LOG_LIMIT_PAGES);
        assert!(
            signal.state().log_at_limit(),
            "a log started over is watched again"
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
        assert!(wait_for_commit(&signal).is_none());
    }
}
