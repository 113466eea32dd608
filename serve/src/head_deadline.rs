//! The deadline for a connection's next request head. hyper's own `header_read_timeout` makes a
//! boxed sleep for every request, registers it in tokio's timer wheel while it waits for the head
//! and removes it once the head is in: 1.4 % of the instructions of a refused request (callgrind).
//! Here a connection has one deadline, moved with a clock read when an answer is sent, and one
//! timer, which, when it fires, looks whether the deadline moved since and sleeps again if so.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// No deadline: a request's head is in and it is being answered.
const ANSWERING: u64 = u64::MAX;

pub(crate) struct HeadDeadline {
    opened: Instant,
    timeout: Duration,
    /// When the next head must be complete, in nanoseconds from `opened`; or [`ANSWERING`].
    due: AtomicU64,
}

impl HeadDeadline {
    /// The first head is due `timeout` from now.
    pub(crate) fn start(timeout: Duration) -> Arc<HeadDeadline> {
        let deadline = HeadDeadline {
            opened: Instant::now(),
            timeout,
            due: AtomicU64::new(ANSWERING),
        };
        deadline.restart();
        Arc::new(deadline)
    }

    /// A head is in: none is due until its answer has been sent.
    pub(crate) fn answering(&self) {
        self.due.store(ANSWERING, Ordering::Relaxed);
    }

    /// The next head is due `timeout` from now: a connection's first byte came, or an answer
    /// has been sent.
    pub(crate) fn restart(&self) {
        let due = (Instant::now() + self.timeout).duration_since(self.opened);
        let nanos = u64::try_from(due.as_nanos()).unwrap_or(ANSWERING - 1);
        self.due.store(nanos, Ordering::Relaxed);
    }

    fn due(&self) -> Option<Instant> {
        match self.due.load(Ordering::Relaxed) {
            ANSWERING => None,
            nanos => Some(self.opened + Duration::from_nanos(nanos)),
        }
    }

    /// Resolves once a head is overdue.
    pub(crate) async fn overdue(&self) {
        loop {
            let now = Instant::now();
            let wake = match self.due() {
                Some(due) if due <= now => return,
                Some(due) => due,
                // A request is being answered: its answer restarts the clock; look again later.
                None => now + self.timeout,
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Wraps an answer's body so that the deadline restarts once hyper is done with it.
    pub(crate) fn answer<B>(self: &Arc<Self>, body: B) -> Answer<B> {
        Answer {
            body,
            deadline: self.clone(),
        }
    }
}

/// An answer's body: when hyper drops it, it was sent (or the connection failed), and hyper
/// reads the next head.
pub struct Answer<B> {
    body: B,
    deadline: Arc<HeadDeadline>,
}

impl<B> Drop for Answer<B> {
    fn drop(&mut self) {
        self.deadline.restart();
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_head_is_overdue_a_timeout_after_the_last_answer_not_while_answering() {
        let timeout = Duration::from_secs(10);
        let deadline = HeadDeadline::start(timeout);
        let started = Instant::now();
        // A request arrives after 4 s and is answered after 30 s more.
        let client = {
            let deadline = deadline.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                deadline.answering();
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(deadline.answer(()));
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = deadline.overdue() => {}
            _ = client => unreachable!(),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(4 + 30 + 10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_head_that_never_comes_is_overdue_after_the_timeout() {
        let started = Instant::now();
        HeadDeadline::start(Duration::from_secs(3)).overdue().await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
