//! `http`: the receiver every MCP Gateway component already talks to. `POST /metrics` decodes
//! the request, judges each metric's shape alone and hands the batch to the pipeline;
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
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use mcp_metrics_plugin::{
    Ack, Batch, BoxError, BuildContext, CancellationToken, Consumer, Delivery, Outcome, Problem,
    Receiver, Refusal, Request, RequestContext, ServiceControl, async_trait, telemetry,
};
use serde_json::json;
use tokio::net::TcpListener;

use wire::{body_refusal, decode_metric, decode_request, outcome_reply, refusal_reply, request_id};

pub struct HttpReceiver {
    config: HttpConfig,
    listener: TcpListener,
    id: String,
    ops: Option<Arc<ops::Ops>>,
    control: Arc<dyn ServiceControl>,
}

struct App {
    id: String,
    config: HttpConfig,
    next: Arc<dyn Consumer>,
    in_flight: tokio::sync::Semaphore,
    ops: Option<Arc<ops::Ops>>,
    control: Arc<dyn ServiceControl>,
}

impl HttpReceiver {
    /// Binds now, so a taken port fails start-up rather than a request.
    async fn bind(cx: &BuildContext, config: HttpConfig) -> Result<HttpReceiver, BoxError> {
        let address = format!("{}:{}", config.host, config.port);
        let listener = cx
            .listeners
            .bind(&cx.id, &address)
            .and_then(TcpListener::from_std)
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let ops = match &config.database {
            Some(database) => Some(Arc::new(ops::Ops::start(cx, database).await?)),
            None => None,
        };
        Ok(HttpReceiver {
            config,
            listener,
            id: cx.id.clone(),
            ops,
            control: cx.control.clone(),
        })
    }
}

#[async_trait]
impl Receiver for HttpReceiver {
    async fn run(
        self: Box<Self>,
        next: Arc<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<(), BoxError> {
        let body_limit =
            usize::try_from(self.config.max_request_size.as_u64()).unwrap_or(usize::MAX);
        let app = Arc::new(App {
            in_flight: tokio::sync::Semaphore::new(self.config.max_concurrent_requests),
            id: self.id.clone(),
            config: self.config,
            next,
            ops: self.ops,
            control: self.control,
        });
        let router = Router::new()
            .route("/metrics", post(post_metrics))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .merge(ops::routes())
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(middleware::from_fn_with_state(app.clone(), limit_in_flight))
            .with_state(app);
        tracing::info!(receiver = %self.id, address = %self.listener.local_addr()?, "listening");
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
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
        Err(_) => {
            let refusal = Refusal::unavailable("too many requests in flight; retry shortly", 1);
            refusal_reply(&refusal, &request_id())
        }
    }
}

async fn post_metrics(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = request_id();
    let (started, mut points) = (std::time::Instant::now(), 0);
    let reply = match take_metrics(&app, &headers, body, &request_id, &mut points).await {
        Ok((total, outcome)) => {
            let rejected = outcome.rejected.len();
            telemetry::receiver_points(&app.id, total - rejected, rejected);
            outcome_reply(total, outcome, &request_id)
        }
        Err(refusal) => {
            tracing::debug!(%request_id, %refusal, "request refused");
            telemetry::receiver_points(&app.id, 0, points);
            refusal_reply(&refusal, &request_id)
        }
    };
    telemetry::receiver_request(&app.id, reply.status().as_u16(), started.elapsed());
    reply
}

/// Decodes the request and hands it to the pipeline; returns how many metrics it had and what
/// the pipeline said. `points` learns how many it had as soon as that is known.
async fn take_metrics(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &Arc<str>,
    points: &mut usize,
) -> Result<(usize, Outcome), Refusal> {
    let received_at = Utc::now();
    let body = body.map_err(body_refusal)?;
    check_content_type(headers)?;
    let wire = decode_request(&body)?;
    let total = wire.metrics.len();
    *points = total;
    let limit = app.config.max_metrics_per_request;
    if total > limit {
        return Err(Refusal::new(
            413,
            "too_many_metrics",
            format!(
                "{total} metrics in one request; at most {limit} allowed, send them in several requests"
            ),
        ));
    }
    let mut metrics = Vec::with_capacity(total);
    let mut outcome = Outcome::default();
    for (index, raw) in wire.metrics.iter().enumerate() {
        match decode_metric(index, raw, received_at) {
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
        api_key: headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        key: None,
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
    outcome.merge(app.next.consume(Batch::new(request, ack)).await?);
    if let Some(delivered) = delivered {
        wait_for_delivery(delivered, app.config.acknowledgement_timeout)
            .await
            .map_err(|mut refusal| {
                refusal.headers.append(&mut outcome.headers);
                refusal
            })?;
    }
    Ok((total, outcome))
}

async fn wait_for_delivery(
    delivered: mcp_metrics_plugin::AckReceiver,
    timeout: std::time::Duration,
) -> Result<(), Refusal> {
    match tokio::time::timeout(timeout, delivered).await {
        Ok(Ok(Delivery::Delivered)) => Ok(()),
        Ok(Ok(Delivery::Failed(reason))) => Err(Refusal::unavailable(
            format!("metrics could not be stored: {reason}"),
            5,
        )),
        // The sender cannot vanish without sending: dropping it is what sends.
        Ok(Err(_)) => Ok(()),
        Err(_) => Err(Refusal::unavailable(
            "metrics were not stored in time; they may still be, so a retry can duplicate them",
            5,
        )),
    }
}

/// JSON, or no content type at all (some clients omit it); anything else is a mistake worth
/// telling the client about.
fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
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
        Err(Refusal::new(
            415,
            "unsupported_media_type",
            format!("Content-Type {media_type:?} is not JSON; send application/json"),
        ))
    }
}

/// Healthy while the service can take metrics; otherwise 503 with what is wrong, by component.
async fn health(State(app): State<Arc<App>>) -> Response {
    let problems = app.control.health();
    let status = if problems.is_empty() {
        "healthy"
    } else {
        "unhealthy"
    };
    status_reply(status, "metrics-collection", &problems)
}

/// Ready while traffic is welcome: no queue is full and the service is not stopping.
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
    let refusal = Refusal::new(
        404,
        "not_found",
        format!("no endpoint {method} {}", uri.path()),
    );
    refusal_reply(&refusal, &request_id())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let refusal = Refusal::new(
        405,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    );
    refusal_reply(&refusal, &request_id())
}
