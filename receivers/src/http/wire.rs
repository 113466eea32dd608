//! The wire contract: the request body as clients send it, the replies they expect, and how a
//! refusal of the plugin API is said in HTTP.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use mcp_metrics_plugin::{
    Metric, MetricType, Outcome, RateLimitState, Reason, Refusal, Rejection, RequestHead,
    parse_timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The body of `POST /metrics`.
pub struct WireRequest<'a> {
    pub service: String,
    pub version: Option<String>,
    pub instance_id: Option<String>,
    pub metrics: Vec<SentMetric<'a>>,
}

/// A metric as the body holds it: read with the body, or kept raw to be read alone by
/// [`decode_metric`] (see [`decode_request`]).
pub enum SentMetric<'a> {
    Read(WireMetric<'a>),
    Raw(&'a RawValue),
}

/// The body's fields, its metrics as `M`.
#[derive(Deserialize)]
struct Body<M> {
    service: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
    metrics: Vec<M>,
}

impl<M> Body<M> {
    fn into_wire<'a>(self, sent: fn(M) -> SentMetric<'a>) -> WireRequest<'a> {
        WireRequest {
            service: self.service,
            version: self.version,
            instance_id: self.instance_id,
            metrics: self.metrics.into_iter().map(sent).collect(),
        }
    }
}

/// The fewest bytes a metric takes in a body (`type` and `value` are required), so a body holds
/// at most its length over this many metrics.
const SHORTEST_METRIC: usize = r#"{"type":"","value":0}"#.len();

/// One metric as sent; its type is read where it lies in the body unless it holds escapes (serde
/// borrows a `Cow` field, not one inside an `Option`).
#[derive(Deserialize)]
pub struct WireMetric<'a> {
    #[serde(rename = "type", borrow)]
    metric_type: Cow<'a, str>,
    #[serde(default)]
    timestamp: Option<String>,
    value: f64,
    #[serde(default)]
    duration_ms: Option<f64>,
    #[serde(default)]
    dimensions: Option<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// A request refused as a whole, as HTTP says it: a status, the contract's `error` and message,
/// and when the client may try again.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl HttpError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            error,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503: the service cannot take this right now.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> HttpError {
        HttpError {
            retry_after: Some(retry_after),
            ..HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                message,
            )
        }
    }

    pub fn invalid(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
}

impl From<Refusal> for HttpError {
    fn from(refusal: Refusal) -> HttpError {
        let (status, error, retry_after) = match refusal.reason {
            Reason::MissingCredential => (StatusCode::UNAUTHORIZED, "missing_api_key", None),
            Reason::InvalidCredential => (StatusCode::UNAUTHORIZED, "invalid_api_key", None),
            Reason::ServiceMismatch => (StatusCode::FORBIDDEN, "service_mismatch", None),
            Reason::Forbidden => (StatusCode::FORBIDDEN, "forbidden", None),
            Reason::RateLimited { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                Some(retry_after),
            ),
            Reason::Busy { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some(retry_after),
            ),
            Reason::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", None),
            Reason::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", None),
        };
        HttpError {
            status,
            error,
            message: refusal.message,
            retry_after,
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error,
            self.message
        )
    }
}

/// Reads the whole body, or says why it cannot be read at all. Nearly every body is read in one
/// pass, its metrics with it. A body with a metric of the wrong shape is read again with each
/// metric kept raw, so that [`decode_metric`] rejects the bad ones alone; so is a body long enough
/// to hold more than `most_metrics` metrics, so that a request of too many is refused before one
/// of them is read.
///
/// The body is checked to be UTF-8 once, as a whole: read from bytes, serde_json checks each
/// string on its own, 8 % of the HTTP workers' instructions for bodies of 100 metrics.
pub fn decode_request(body: &[u8], most_metrics: usize) -> Result<WireRequest<'_>, HttpError> {
    if body.len() / SHORTEST_METRIC <= most_metrics
        && let Ok(text) = std::str::from_utf8(body)
        && let Ok(request) = serde_json::from_str::<Body<WireMetric>>(text)
    {
        return Ok(request.into_wire(SentMetric::Read));
    }
    decode_raw(body)
}

/// Reads the body with each metric kept raw.
fn decode_raw(body: &[u8]) -> Result<WireRequest<'_>, HttpError> {
    match serde_json::from_slice::<Body<&RawValue>>(body) {
        Ok(request) => Ok(request.into_wire(SentMetric::Raw)),
        Err(error) if error.is_data() => Err(HttpError::invalid(format!("request body: {error}"))),
        Err(error) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {error}"),
        )),
    }
}

/// 408: the body did not arrive within the listener's `body_read_timeout`; the connection is
/// closed after the answer.
pub fn body_timeout(error: &(dyn std::error::Error + 'static)) -> HttpError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message = cause.to_string();
        source = cause.source();
    }
    HttpError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
}

/// Why a body could not be read: too large, too slow, or cut off.
pub fn body_refusal(rejection: BytesRejection) -> HttpError {
    if mcp_metrics_serve::BodyTimeout::is_cause_of(&rejection) {
        return body_timeout(&rejection);
    }
    let status = rejection.status();
    let error = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request_too_large"
    } else {
        "unreadable_body"
    };
    HttpError::new(status, error, rejection.body_text())
}

/// Reads one metric; `received_at` stands in for a missing timestamp.
pub fn decode_metric(
    index: usize,
    sent: SentMetric,
    received_at: DateTime<Utc>,
) -> Result<Metric, Rejection> {
    let reject = |reason: String| Rejection {
        index,
        reason: format!("metrics[{index}]: {reason}"),
    };
    let wire = match sent {
        SentMetric::Read(wire) => wire,
        SentMetric::Raw(raw) => {
            serde_json::from_str(raw.get()).map_err(|error| reject(without_position(&error)))?
        }
    };
    let metric_type = MetricType::from_name(&wire.metric_type).ok_or_else(|| {
        let known: Vec<&str> = MetricType::ALL.iter().map(|t| t.as_str()).collect();
        reject(format!(
            "type: unknown metric type {:?}; known: {}",
            wire.metric_type,
            known.join(", ")
        ))
    })?;
    let timestamp = match wire.timestamp.as_deref() {
        None => received_at,
        Some(text) => parse_timestamp(text).map_err(|e| reject(format!("timestamp: {e}")))?,
    };
    Ok(Metric {
        index,
        metric_type,
        timestamp,
        value: wire.value,
        duration_ms: wire.duration_ms,
        dimensions: wire.dimensions.unwrap_or_default(),
        metadata: wire.metadata.unwrap_or_default(),
    })
}

/// serde_json's message without " at line 1 column 30", which means nothing inside one metric.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// The contract's success reply, fields in the contract's order.
#[derive(Serialize)]
struct SuccessReply<'a> {
    status: &'static str,
    accepted: usize,
    rejected: usize,
    errors: Vec<&'a str>,
    request_id: &'a str,
}

/// The contract's error reply; a request whose metrics were all rejected also says why each was.
#[derive(Serialize)]
struct ErrorReply<'a> {
    status: &'static str,
    error: &'a str,
    message: &'a str,
    request_id: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    judged: Option<Judged<'a>>,
}

#[derive(Serialize)]
struct Judged<'a> {
    accepted: usize,
    rejected: usize,
    errors: Vec<&'a str>,
}

/// The contract's error reply, with the caller's rate-limit standing when it is known.
pub fn error_reply(
    error: &HttpError,
    request_id: &str,
    standing: Option<RateLimitState>,
) -> Response {
    let body = ErrorReply {
        status: "error",
        error: error.error,
        message: &error.message,
        request_id,
        judged: None,
    };
    let mut response = reply(error.status, body, standing);
    if error.status == StatusCode::REQUEST_TIMEOUT {
        // The rest of a body that came too slowly is not waited for: the connection ends here.
        response
            .headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
    }
    if let Some(wait) = error.retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(seconds.max(1)));
    }
    response
}

/// The contract's success reply, or a 422 when not one metric could be taken.
pub fn outcome_reply(
    total: usize,
    mut outcome: Outcome,
    request_id: &str,
    standing: Option<RateLimitState>,
) -> Response {
    outcome.rejected.sort_by_key(|r| r.index);
    let rejected = outcome.rejected.len();
    let accepted = total - rejected;
    let errors: Vec<&str> = outcome.rejected.iter().map(|r| r.reason.as_str()).collect();
    if accepted == 0 && rejected > 0 {
        let message = format!("all {rejected} metrics were rejected; see errors");
        let body = ErrorReply {
            status: "error",
            error: "no_valid_metrics",
            message: &message,
            request_id,
            judged: Some(Judged {
                accepted,
                rejected,
                errors,
            }),
        };
        return reply(StatusCode::UNPROCESSABLE_ENTITY, body, standing);
    }
    let body = SuccessReply {
        status: "success",
        accepted,
        rejected,
        errors,
        request_id,
    };
    reply(StatusCode::OK, body, standing)
}

/// A 200 for the operator endpoints: the contract's `status` and `request_id` around `body`.
pub fn success_reply(mut body: Value, request_id: &str) -> Response {
    if let Some(fields) = body.as_object_mut() {
        fields.insert("status".into(), Value::from("success"));
        fields.insert("request_id".into(), Value::from(request_id));
    }
    reply(StatusCode::OK, body, None)
}

/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until the bucket is full) go with
/// every answer to a caller whose standing is known.
fn reply(status: StatusCode, body: impl Serialize, standing: Option<RateLimitState>) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Some(standing) = standing {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(standing.limit));
        headers.insert(
            "x-ratelimit-remaining",
            HeaderValue::from(standing.remaining),
        );
        headers.insert(
            "x-ratelimit-reset",
            HeaderValue::from(standing.reset_seconds),
        );
    }
    response
}

/// A fresh request id in the contract's shape: `req_` and 16 random lower-case hex digits. Every
/// request gets one, refusals too, so it is written without the formatting machinery (a tenth of
/// the instructions).
pub fn request_id() -> Arc<str> {
    let mut id = *b"req_0000000000000000";
    hex::encode_to_slice(rand::random::<u64>().to_be_bytes(), &mut id[4..])
        .expect("16 digits for 8 bytes");
    std::str::from_utf8(&id).expect("ASCII").into()
}

/// The longest `Idempotency-Key` taken.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `Idempotency-Key` header, if sent: at most 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.iter().all(u8::is_ascii_graphic) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters \
                 (a UUID, say)"
            ),
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// The request id of every sending of one request: the same key from the same API key always
/// gets the same id, on any replica, so a resend is answered exactly like the first.
pub fn idempotent_request_id(head: &RequestHead, idempotency_key: &str) -> Arc<str> {
    use sha2::{Digest, Sha256};
    let key_id = head.key.as_ref().map_or(0, |key| key.id);
    let digest = Sha256::digest(format!("{key_id}\n{idempotency_key}").as_bytes());
    format!("req_{}", hex::encode(&digest[..8])).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_type_is_borrowed_from_the_body_unless_escaped() {
        let plain: WireMetric = serde_json::from_str(r#"{"type": "custom", "value": 1}"#).unwrap();
        assert!(matches!(plain.metric_type, Cow::Borrowed("custom")));
        let escaped: WireMetric =
            serde_json::from_str(r#"{"type": "cust\u006fm", "value": 1}"#).unwrap();
        assert!(matches!(escaped.metric_type, Cow::Owned(ref t) if t == "custom"));
    }

    #[test]
    fn a_body_is_utf_8_as_a_whole_or_malformed() {
        let body = r#"{"service": "s", "metrics": [{"type": "custom", "value": 1, "dimensions": {"city": "Zürich 🌧"}}]}"#;
        let request = decode_request(body.as_bytes(), 5_000).unwrap();
        let metric = decode_metric(0, request.metrics.into_iter().next().unwrap(), Utc::now());
        assert_eq!(metric.unwrap().dimensions["city"], "Zürich 🌧");

        let mut broken = body.as_bytes().to_vec();
        let at = body.find('ü').unwrap();
        broken[at + 1] = 0xff; // the second byte of `ü` is no longer a continuation byte
        let error = decode_request(&broken, 5_000).map(|_| ()).unwrap_err();
        assert_eq!(
            (error.status, error.error),
            (StatusCode::BAD_REQUEST, "malformed_json")
        );
        assert!(
            error.message.contains("invalid unicode"),
            "{}",
            error.message
        );
    }

    #[test]
    fn metrics_are_read_with_the_body_unless_one_is_bad_or_there_may_be_too_many() {
        let read = |body: &str, most| -> Vec<bool> {
            let request = decode_request(body.as_bytes(), most).unwrap();
            let metrics = request.metrics.iter();
            metrics.map(|m| matches!(m, SentMetric::Read(_))).collect()
        };
        let good = r#"{"type": "custom", "value": 1}"#;
        let two = format!(r#"{{"service": "s", "metrics": [{good}, {good}]}}"#);
        assert_eq!(read(&two, 5_000), [true, true]);
        // A bad metric: all are kept raw, and only the bad one is rejected.
        let bad = format!(r#"{{"service": "s", "metrics": [{good}, {{"type": "custom"}}]}}"#);
        assert_eq!(read(&bad, 5_000), [false, false]);
        let request = decode_request(bad.as_bytes(), 5_000).unwrap();
        let decoded: Vec<_> = (request.metrics.into_iter().enumerate())
            .map(|(i, sent)| decode_metric(i, sent, Utc::now()).map(|m| m.value))
            .collect();
        assert_eq!(decoded[0], Ok(1.0));
        assert_eq!(
            decoded[1].as_ref().unwrap_err().reason,
            "metrics[1]: missing field `value`"
        );
        // Long enough to hold more metrics than allowed: counted raw, before any is read.
        let shortest = r#"{"type":"","value":0}"#;
        let three = format!(
            r#"{{"service":"s","metrics":[{}]}}"#,
            [shortest; 3].join(",")
        );
        let room = three.len() / shortest.len();
        assert_eq!(read(&three, room), [true; 3]);
        assert_eq!(read(&three, room - 1), [false; 3]);
    }

    #[test]
    fn a_request_id_is_req_and_sixteen_lower_case_hex_digits() {
        let ids: Vec<_> = (0..64).map(|_| request_id()).collect();
        for id in &ids {
            let digits = id.strip_prefix("req_").unwrap_or_else(|| panic!("{id}"));
            assert_eq!(digits.len(), 16, "{id}");
            assert!(
                digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
        }
        // Random: 64 ids, and a digit of every kind somewhere among them.
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            64
        );
        let all: String = ids.iter().map(|id| &id[4..]).collect();
        assert!("0123456789abcdef".chars().all(|d| all.contains(d)), "{all}");
    }
}

/// The decoder against whatever a hostile client may send: it answers, never panics.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// What a body decodes to: its fields and each metric or its rejection, or the error.
    type Decoded = Result<(String, Option<String>, Vec<Result<Metric, Rejection>>), String>;

    fn decode_all(request: Result<WireRequest, HttpError>) -> Decoded {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let request = request.map_err(|e| e.to_string())?;
        let metrics = request.metrics.into_iter().enumerate();
        let metrics = metrics
            .map(|(i, sent)| decode_metric(i, sent, at))
            .collect();
        Ok((request.service, request.instance_id, metrics))
    }

    /// JSON-ish text: valid documents, near misses and plain noise.
    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<f64>().prop_map(|v| v.to_string()),
            "[a-z_]{0,12}".prop_map(|s| format!("{s:?}")),
            Just("\"2024-01-15T10:30:00\"".to_owned()),
            Just("{}".to_owned()),
            Just("[]".to_owned()),
            Just("1e999".to_owned()),
        ];
        let field = (
            "(type|value|timestamp|duration_ms|dimensions|metadata|x)",
            value,
        )
            .prop_map(|(key, value)| format!("{key:?}: {value}"));
        let metric =
            prop::collection::vec(field, 0..6).prop_map(|f| format!("{{{}}}", f.join(",")));
        let request =
            (prop::collection::vec(metric, 0..5), "[a-z]{0,60}").prop_map(|(metrics, service)| {
                format!(
                    "{{\"service\": {service:?}, \"metrics\": [{}]}}",
                    metrics.join(",")
                )
            });
        prop_oneof![
            request.prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..256),
        ]
    }

    /// Requests whose metrics are mostly of the right shape, each different, now and then one not.
    fn mostly_good_bodies() -> impl Strategy<Value = Vec<u8>> {
        let scalar = prop_oneof![
            any::<i32>().prop_map(|v| v.to_string()),
            (-1e6..1e6f64).prop_map(|v| v.to_string()),
            "[a-z\\\\\"é]{0,8}".prop_map(|s| format!("{s:?}")),
            Just("true".to_owned()),
            Just("null".to_owned()),
        ];
        let dimensions = prop::collection::btree_map("[a-z_.]{1,6}", scalar, 0..4).prop_map(|d| {
            let fields: Vec<String> = d.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
            format!("{{{}}}", fields.join(", "))
        });
        let metric = (
            prop_oneof![
                Just("custom"),
                Just("auth_request"),
                Just("tool_execution"),
                Just("nope")
            ],
            -1e9..1e9f64,
            prop::option::of(0.0..1e4f64),
            prop::option::of(prop_oneof![Just("2024-01-15T10:30:00Z"), Just("yesterday")]),
            prop::option::of(dimensions),
            // Now and then a value of the wrong type.
            prop::option::weighted(0.05, Just(r#", "duration_ms": "slow""#)),
        )
            .prop_map(|(kind, value, duration, timestamp, dimensions, broken)| {
                let mut fields = vec![
                    format!(r#""type": "{kind}""#),
                    format!(r#""value": {value}"#),
                ];
                fields.extend(duration.map(|d| format!(r#""duration_ms": {d}"#)));
                fields.extend(timestamp.map(|t| format!(r#""timestamp": "{t}""#)));
                fields.extend(dimensions.map(|d| format!(r#""dimensions": {d}"#)));
                format!("{{{}{}}}", fields.join(", "), broken.unwrap_or(""))
            });
        (
            prop::collection::vec(metric, 0..8),
            prop::option::of("[a-z0-9-]{1,10}"),
        )
            .prop_map(|(metrics, instance)| {
                let instance =
                    instance.map_or(String::new(), |i| format!(r#", "instance_id": "{i}""#));
                format!(
                    r#"{{"service": "s"{instance}, "metrics": [{}]}}"#,
                    metrics.join(", ")
                )
                .into_bytes()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn decoding_any_body_never_panics(body in bodies()) {
            let _ = decode_all(decode_request(&body, 5_000));
        }

        /// The one pass reads every body exactly as reading each metric alone does.
        #[test]
        fn one_pass_and_metric_by_metric_read_alike(body in prop_oneof![bodies(), mostly_good_bodies()]) {
            prop_assert_eq!(
                decode_all(decode_request(&body, 5_000)),
                decode_all(decode_raw(&body))
            );
        }
    }
}
