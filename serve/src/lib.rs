//! Serving an axum router the way a listener exposed to hostile clients must be served: a cap on
//! open connections, a deadline for a request's head (which also closes idle keep-alive
//! connections), a deadline for its body, and a graceful stop. `axum::serve` offers none of them,
//! so this drives hyper's HTTP/1 connection itself.

mod head_deadline;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use head_deadline::{Answer, HeadDeadline};

/// The bounds every connection of a listener is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From when a connection opens until its first byte, and from then (or from its previous
    /// answer) until the next request's head is complete; past it the connection is closed. So it
    /// is also the idle keep-alive timeout.
    pub header_read_timeout: Duration,
    /// From when a request's head is complete until its whole body is read; past it the body
    /// fails with [`BodyTimeout`] and the connection is closed after the answer.
    pub body_read_timeout: Duration,
    /// Most connections open at once; past it, new ones wait in the listen backlog until one
    /// closes (the timeouts above make sure one does).
    pub max_connections: usize,
}

/// Once a stop has come, how long a connection that has sent nothing yet gets for its first byte:
/// a request already on its way when the stop came arrives within a round trip, and a connection
/// opened ahead of need (a client's warm pool) should not hold the stop for `header_read_timeout`.
pub const FIRST_BYTE_AFTER_STOP: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting, lets the
/// requests in flight finish, gives a connection that has sent nothing yet
/// [`FIRST_BYTE_AFTER_STOP`] for its request, closes idle connections, and returns once every
/// connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The head's deadline is kept by `HeadDeadline`, with no timer made for each request.
    builder.header_read_timeout(None).keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        // The stop comes first: a connection accepted after it would only be closed unanswered,
        // while left in the backlog it goes to whoever serves the socket next (a reload's new
        // receiver).
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let (stream, _) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_timeout = limits.body_read_timeout;
        let head = HeadDeadline::start(limits.header_read_timeout);
        let answers = head.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            answers.answering();
            let request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
            // A router is always ready, so it is called without `poll_ready`.
            let answer = tower_service::Service::call(&mut router.clone(), request);
            let answers = answers.clone();
            async move {
                let response = answer.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| answers.answer(body)))
            }
        });
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, service, &builder, &head, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection until it closes or, once `shutdown` is cancelled, until the request in
/// progress (or the first one, if it is on its way) is answered.
async fn serve_connection<S>(
    stream: TcpStream,
    service: S,
    builder: &hyper::server::conn::http1::Builder,
    head: &HeadDeadline,
    shutdown: CancellationToken,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Answer<Body>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Told to stop, hyper closes unanswered a connection it has read nothing from, yet one
    // accepted just before a stop may have its request on the way. So hyper gets the connection
    // once its first byte is in (a peek: readiness alone can be spurious) or it closed, and is
    // polled before the stop is looked at, so that it has read what came. A client that sends
    // nothing is let go at the head's deadline, where hyper would let it go too, or a moment
    // after a stop.
    let mut first_byte = [0; 1];
    let stopped_a_moment_ago = async {
        shutdown.cancelled().await;
        tokio::time::sleep(FIRST_BYTE_AFTER_STOP).await;
    };
    tokio::select! {
        biased;
        _ = stream.peek(&mut first_byte) => {}
        _ = head.overdue() => return,
        _ = stopped_a_moment_ago => return,
    }
    head.restart();
    // A head overdue closes the connection, however far hyper got with it.
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        biased;
        ended = connection.as_mut() => ended,
        _ = head.overdue() => return,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                ended = connection.as_mut() => ended,
                _ = head.overdue() => return,
            }
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "connection closed");
    }
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

// The tests read `/proc/net/tcp` to see a connection accepted.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(header_read_timeout: Duration) -> Limits {
        Limits {
            header_read_timeout,
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10,
        }
    }

    type JoinHandle = tokio::task::JoinHandle<()>;

    /// Serves a router answering `GET /` with "ok", opens a connection that the serving loop
    /// accepts, then stops the loop: the client's end and the loop's task.
    async fn accepted_then_stopped(header_read_timeout: Duration) -> (TcpStream, JoinHandle) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(
            TcpListener::from_std(listener).unwrap(),
            router,
            limits(header_read_timeout),
            shutdown.clone(),
        ));
        let client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        accepted(port, &client).await;
        shutdown.cancel();
        (client, served)
    }

    /// Waits until the serving loop has accepted `client`'s connection to `port`: the server's
    /// end is established (`/proc/net/tcp` state 01) and the listen backlog is empty again (the
    /// listening line's `rx_queue`; addresses as a little-endian Linux prints them).
    async fn accepted(port: u16, client: &TcpStream) {
        let client_port = client.local_addr().unwrap().port();
        let (server_end, listening) = (
            format!("0100007F:{port:04X} 0100007F:{client_port:04X} 01"),
            format!("0100007F:{port:04X} 00000000:0000 0A 00000000:00000000"),
        );
        for _ in 0..5000 {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            if table.contains(&server_end) && table.contains(&listening) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the connection from port {client_port} was never accepted");
    }

    #[tokio::test]
    async fn a_connection_accepted_just_before_the_stop_still_gets_its_answer() {
        let (mut client, served) = accepted_then_stopped(Duration::from_secs(10)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with("ok"), "{answer:?}");
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_holds_a_stop_a_moment_not_a_head_deadline() {
        let (mut client, served) = accepted_then_stopped(Duration::from_secs(600)).await;
        tokio::time::timeout(FIRST_BYTE_AFTER_STOP * 10, served)
            .await
            .expect("the stop waited for the head deadline")
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
}
