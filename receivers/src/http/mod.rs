//! `http`: the receiver every MCP Gateway component already talks to. `POST /metrics` has the
//! pipelines judge the request from its head (key, rate limit, room), then checks its size and
//! type, and only then reads and decodes the body, judges each metric's shape alone and hands the
//! batch on;
//! `GET /health` and `GET /ready` say whether the service takes metrics; the operator endpoints
//! are in `ops`. Every refusal, the framework's own included, answers with the contract's JSON
//! error body and a request id.

mod config;
mod ops;
mod wire;

pub use config::HttpConfig;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use mcp_metrics_plugin::{
    Ack, Admitted, Batch, BoxError, BuildContext, CancellationToken, Delivery, Outcome, Pipelines,
    Problem, RateLimitState, Reason, Receiver, Request, RequestContext, RequestHead,
    ServiceControl, Telemetry, async_trait,
};
use serde_json::json;
use tokio::net::TcpListener;

use wire::{
    HttpError, decode_metric, decode_request, error_reply, idempotency_key, idempotent_request_id,
    outcome_reply, request_id,
};

pub struct HttpReceiver {
    config: HttpConfig,
    listener: TcpListener,
    id: String,
    ops: Option<Arc<ops::Ops>>,
    control: Arc<dyn ServiceControl>,
    telemetry: Telemetry,
}

struct App {
    id: String,
    config: HttpConfig,
    pipelines: Arc<dyn Pipelines>,
    in_flight: tokio::sync::Semaphore,
    ops: Option<Arc<ops::Ops>>,
    control: Arc<dyn ServiceControl>,
    telemetry: Telemetry,
}

impl HttpReceiver {
    /// Binds now, so a taken port fails start-up rather than a request.
    async fn bind(
        cx: &BuildContext,
        control: Arc<dyn ServiceControl>,
        config: HttpConfig,
    ) -> Result<HttpReceiver, BoxError> {
        let address = format!("{}:{}", config.host, config.port);
        let listener = cx
            .listeners
            .bind(&cx.id, &address)
            .and_then(TcpListener::from_std)
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let ops = match &config.database {
            Some(database) => Some(Arc::new(
                ops::Ops::start(cx, control.clone(), database).await?,
            )),
            None => None,
        };
        Ok(HttpReceiver {
            config,
            listener,
            id: cx.id.clone(),
            ops,
            control,
            telemetry: cx.telemetry.clone(),
        })
    }
}

#[async_trait]
impl Receiver for HttpReceiver {
    async fn run(
        self: Box<Self>,
        pipelines: Arc<dyn Pipelines>,
        shutdown: CancellationToken,
    ) -> Result<(), BoxError> {
        let body_limit =
            usize::try_from(self.config.max_request_size.as_u64()).unwrap_or(usize::MAX);
        let app = Arc::new(App {
            in_flight: tokio::sync::Semaphore::new(self.config.max_concurrent_requests),
            id: self.id.clone(),
            config: self.config,
            pipelines,
            ops: self.ops,
            control: self.control,
            telemetry: self.telemetry,
        });
        let limits = mcp_metrics_serve::Limits {
            header_read_timeout: app.config.header_read_timeout,
            body_read_timeout: app.config.body_read_timeout,
            max_connections: app.config.max_connections,
        };
        // Data and operator traffic is bounded by the in-flight limit; health and readiness are
        // not, so they never queue behind it. `POST /metrics` takes its permit and reads its body
        // within `max_request_size` itself, sparing the busiest path a middleware's boxing and
        // the extension map a body limit layer makes for each request.
        let operator = ops::routes()
            .layer(DefaultBodyLimit::max(body_limit))
            .route_layer(middleware::from_fn_with_state(app.clone(), limit_in_flight));
        let router = Router::new()
            .route("/metrics", post(post_metrics))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .merge(operator)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(app);
        tracing::info!(receiver = %self.id, address = %self.listener.local_addr()?, "listening");
        mcp_metrics_serve::serve(self.listener, router, limits, shutdown).await;
        Ok(())
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// Refuses a request when too many are in flight, before its body is read.
async fn limit_in_flight(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    match app.in_flight.try_acquire() {
        Ok(_permit) => next.run(request).await,
        Err(_) => too_many_in_flight(),
    }
}

fn too_many_in_flight() -> Response {
    let refusal = HttpError::unavailable(
        "too many requests in flight; retry shortly",
        std::time::Duration::from_secs(1),
    );
    error_reply(&refusal, &request_id(), None)
}

async fn post_metrics(State(app): State<Arc<App>>, request: axum::extract::Request) -> Response {
    let Ok(_permit) = app.in_flight.try_acquire() else {
        return too_many_in_flight();
    };
    let mut request_id = request_id();
    let started = std::time::Instant::now();
    let received_at = Utc::now();
    let (head, body) = request.into_parts();
    let mut judged = Judged::default();
    let result = match judge_head(&app, &head.headers, &mut judged).await {
        Ok(admitted) => {
            if let Some(key) = &judged.idempotency_key {
                // A resend is answered with the first one's id, as with all else of its answer.
                request_id = idempotent_request_id(admitted.head(), key);
            }
            take_metrics(&app, admitted, body, &request_id, received_at, &mut judged).await
        }
        Err(error) => {
            discard(body, app.config.max_request_size.as_u64());
            Err(error)
        }
    };
    let reply = match result {
        Ok((total, outcome)) => {
            let rejected = outcome.rejected.len();
            app.telemetry
                .receiver_points(&app.id, total - rejected, rejected);
            outcome_reply(total, outcome, &request_id, judged.standing)
        }
        Err(error) => {
            tracing::debug!(%request_id, %error, "request refused");
            app.telemetry.receiver_points(&app.id, 0, judged.points);
            error_reply(&error, &request_id, judged.standing)
        }
    };
    app.telemetry
        .receiver_request(&app.id, reply.status().as_u16(), started.elapsed());
    reply
}

/// What is known of a request by the time it is answered.
#[derive(Default)]
struct Judged {
    /// Its metrics, once decoded.
    points: usize,
    /// The caller's rate-limit standing, once judged.
    standing: Option<RateLimitState>,
    /// The client's `Idempotency-Key`, once checked.
    idempotency_key: Option<String>,
}

/// Everything the head tells, cheapest refusal first: the pipelines' admission (key, rate limit,
/// room), then the body's declared size and its type.
async fn judge_head(
    app: &App,
    headers: &HeaderMap,
    judged: &mut Judged,
) -> Result<Box<dyn Admitted>, HttpError> {
    let admitted = admit(app, headers, false).await.map_err(|refusal| {
        if let Reason::RateLimited { standing, .. } = refusal.reason {
            judged.standing = Some(standing);
        }
        HttpError::from(refusal)
    })?;
    judged.standing = admitted.head().standing;
    check_content_length(headers, app.config.max_request_size.as_u64())?;
    check_content_type(headers)?;
    judged.idempotency_key = idempotency_key(headers)?;
    Ok(admitted)
}

/// Reads and decodes the body of an admitted request and hands its metrics on; returns how many
/// metrics it had and what the pipelines said.
async fn take_metrics(
    app: &App,
    admitted: Box<dyn Admitted>,
    body: Body,
    request_id: &Arc<str>,
    received_at: chrono::DateTime<Utc>,
    judged: &mut Judged,
) -> Result<(usize, Outcome), HttpError> {
    let body = read_body(body, app.config.max_request_size.as_u64()).await?;
    let limit = app.config.max_metrics_per_request;
    let wire = decode_request(&body, limit)?;
    let total = wire.metrics.len();
    judged.points = total;
    if total > limit {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_metrics",
            format!(
                "{total} metrics in one request; at most {limit} allowed, send them in several requests"
            ),
        ));
    }
    let mut metrics = Vec::with_capacity(total);
    let mut outcome = Outcome::default();
    for (index, sent) in wire.metrics.into_iter().enumerate() {
        match decode_metric(index, sent, received_at) {
            Ok(metric) => metrics.push(metric),
            Err(rejection) => outcome.rejected.push(rejection),
        }
    }
    let context = RequestContext {
        request_id: request_id.to_string(),
        service: wire.service,
        version: wire.version,
        instance_id: wire.instance_id,
        received_at,
        key: admitted.head().key.clone(),
        idempotency_key: judged.idempotency_key.take(),
    };
    let request = Request {
        context: Arc::new(context),
        metrics,
    };
    let (ack, delivered) = if app.config.acknowledgements {
        let (ack, delivered) = Ack::new();
        (Some(ack), Some(delivered))
    } else {
        (None, None)
    };
    outcome.merge(admitted.deliver(Batch::new(request, ack)).await?);
    if let Some(delivered) = delivered {
        wait_for_delivery(delivered, app.config.acknowledgement_timeout).await?;
    }
    Ok((total, outcome))
}

/// Asks the pipelines to admit a request from its headers (`look_only`: only to learn what it
/// would be told).
async fn admit(
    app: &App,
    headers: &HeaderMap,
    look_only: bool,
) -> Result<Box<dyn Admitted>, mcp_metrics_plugin::Refusal> {
    let head = RequestHead {
        credential: credential(headers).map(str::to_owned),
        look_only,
        ..RequestHead::default()
    };
    app.pipelines.admit(head).await
}

/// The credential a request presents: its `X-API-Key`.
fn credential(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// How long the rest of a refused request's body is read for, at most.
const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and drops what is left of the body of a request answered from its head: its client,
/// still sending, then gets the answer rather than a reset connection, and the connection stays
/// open for the next request. Nothing is kept or decoded. What has arrived already is dropped
/// at once (a small body comes with its head); only a body still arriving gets a task, which
/// reads it for at most [`DISCARD_TIMEOUT`] and `limit` bytes, then closes the connection.
fn discard(body: Body, limit: u64) {
    use std::future::Future;
    use std::task::{Context, Waker};
    let mut draining = Box::pin(drain(body, limit));
    // What has arrived, without waiting: the task polls again with a waker of its own.
    let now = &mut Context::from_waker(Waker::noop());
    if draining.as_mut().poll(now).is_pending() {
        tokio::spawn(tokio::time::timeout(DISCARD_TIMEOUT, draining));
    }
}

/// Reads the body to its end, an error, or past `limit` bytes.
async fn drain(mut body: Body, limit: u64) {
    use http_body_util::BodyExt;
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |data| data.len() as u64);
        if read > limit {
            break;
        }
    }
}

/// A body its client says is larger than allowed is refused before it is read.
fn check_content_length(headers: &HeaderMap, limit: u64) -> Result<(), HttpError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) if length > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

fn too_large(limit: u64) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("request body is larger than max_request_size ({limit} bytes)"),
    )
}

/// Reads the body, at most `limit` bytes of it (a chunked body says its size only by ending).
async fn read_body(body: Body, limit: u64) -> Result<axum::body::Bytes, HttpError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_long = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_long {
            too_large(limit as u64)
        } else if mcp_metrics_serve::BodyTimeout::is_cause_of(&error) {
            wire::body_timeout(&error)
        } else {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read the request body: {error}"),
            )
        }
    })
}

async fn wait_for_delivery(
    delivered: mcp_metrics_plugin::AckReceiver,
    timeout: std::time::Duration,
) -> Result<(), HttpError> {
    let retry_after = std::time::Duration::from_secs(5);
    match tokio::time::timeout(timeout, delivered).await {
        Ok(Ok(Delivery::Delivered)) => Ok(()),
        Ok(Ok(Delivery::Failed(reason))) => Err(HttpError::unavailable(
            format!("metrics could not be stored: {reason}"),
            retry_after,
        )),
        // The sender cannot vanish without sending: dropping it is what sends.
        Ok(Err(_)) => Ok(()),
        Err(_) => Err(HttpError::unavailable(
            "metrics were not stored in time; they may still be, so a retry can duplicate them",
            retry_after,
        )),
    }
}

/// JSON, or no content type at all (some clients omit it); anything else is a mistake worth
/// telling the client about.
fn check_content_type(headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media_type = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let media_type = media_type.to_ascii_lowercase();
    if media_type == "application/json" || media_type.ends_with("+json") {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type {media_type:?} is not JSON; send application/json"),
        ))
    }
}

/// Liveness: healthy unless something a restart could cure or a person must see is wrong (exports
/// failing past the threshold); a busy service is still healthy. 503 names what is wrong.
async fn health(State(app): State<Arc<App>>) -> Response {
    let problems = app.control.health();
    let status = if problems.is_empty() {
        "healthy"
    } else {
        "unhealthy"
    };
    status_reply(status, "metrics-collection", &problems)
}

/// Readiness: traffic is welcome (no queue is full, no exporter failing, not stopping).
async fn ready(State(app): State<Arc<App>>) -> Response {
    let problems = app.control.readiness();
    let status = if problems.is_empty() {
        "ready"
    } else {
        "not_ready"
    };
    status_reply(status, "metrics-collection", &problems)
}

fn status_reply(status: &str, service: &str, problems: &[Problem]) -> Response {
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"status": status, "service": service});
    if !problems.is_empty() {
        let problems: Vec<_> = problems
            .iter()
            .map(|p| json!({"component": p.component, "problem": p.problem}))
            .collect();
        body["problems"] = json!(problems);
    }
    (code, axum::Json(body)).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let error = HttpError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {method} {}", uri.path()),
    );
    error_reply(&error, &request_id(), None)
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let error = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    );
    error_reply(&error, &request_id(), None)
}
