//! Serving an axum router the way a listener exposed to hostile clients must be served: a cap on
//! open connections, a deadline for a request's head (which also closes idle keep-alive
//! connections), a deadline for its body, and a graceful stop. `axum::serve` offers none of them
//! (hyper's HTTP/1 header-read timeout is silently off without a timer), so this drives hyper's
//! HTTP/1 connection itself, with `TokioTimer`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The bounds every connection of a listener is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From when a connection opens, or its previous answer is sent, until the next request's
    /// head is complete; past it the connection is closed. So it is also the idle keep-alive
    /// timeout.
    pub header_read_timeout: Duration,
    /// From when a request's head is complete until its whole body is read; past it the body
    /// fails with [`BodyTimeout`] and the connection is closed after the answer.
    pub body_read_timeout: Duration,
    /// Most connections open at once; past it, new ones wait in the listen backlog until one
    /// closes (the timeouts above make sure one does).
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting, lets the
/// requests in flight finish, closes idle connections, and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
            // A router is always ready, so it is called without `poll_ready`.
            tower_service::Service::call(&mut router.clone(), request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A request body that fails with [`BodyTimeout`] when it is not complete by its deadline.
struct Deadline {
    body: Incoming,
    deadline: tokio::time::Instant,
    /// Made only once the body is waited for: most bodies arrive with their head, so most
    /// requests (every refusal among them) never need one, nor its allocation.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    after: Duration,
}

impl Deadline {
    fn new(body: Incoming, after: Duration) -> Deadline {
        Deadline {
            body,
            deadline: tokio::time::Instant::now() + after,
            sleep: None,
            after,
        }
    }
}

/// A request body was not complete by the listener's `body_read_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body was not complete within {} ms",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl BodyTimeout {
    /// Whether `error`, or an error it wraps, is a body timeout.
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(error) = current {
            if error.is::<BodyTimeout>() {
                return true;
            }
            current = error.source();
        }
        false
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
