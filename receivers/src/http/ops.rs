//! The operator endpoints the deployed Python service has, behind the same API-key check:
//! `GET /rate-limit`, `POST /flush`, and, for admin keys, retention policies, preview and
//! cleanup, and database stats and size.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use mcp_metrics_plugin::{BoxError, BuildContext, KeyInfo, RateLimitState, Reason, ServiceControl};
use mcp_metrics_store::{Database, MAX_RETENTION_DAYS, metric_table};
use serde::Deserialize;
use serde_json::{Value, json};

use super::wire::{HttpError, body_refusal, error_reply, request_id, success_reply};
use super::{App, admit};

/// How long `POST /flush` waits for the exporters.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// What the operator endpoints act on. Callers are checked by the pipelines' own admission
/// (the `auth` processor's key cache), never by a second key check of their own.
pub struct Ops {
    database: Database,
    control: Arc<dyn ServiceControl>,
}

impl Ops {
    pub async fn start(
        cx: &BuildContext,
        control: Arc<dyn ServiceControl>,
        database: &str,
    ) -> Result<Ops, BoxError> {
        let database = Database::named(database, cx).await?;
        Ok(Ops { database, control })
    }
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/rate-limit", get(rate_limit))
        .route("/flush", post(flush))
        .route("/admin/retention/policies", get(policies))
        .route("/admin/retention/policies/{table}", put(set_policy))
        .route("/admin/retention/preview", get(preview))
        .route("/admin/retention/cleanup", post(cleanup))
        .route("/admin/database/stats", get(stats))
        .route("/admin/database/size", get(size))
        .route("/admin/reload", post(reload))
}

async fn reload(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        match ops.control.reload().await {
            Ok(summary) => Ok(json!({"message": summary})),
            Err(errors) => Err(HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                errors,
            )),
        }
    })
    .await
}

/// Runs `answer` for a caller the pipelines would admit (spending nothing) with an active key (an
/// admin key if `admin`), and replies.
async fn guarded<F, Fut>(app: &App, headers: &HeaderMap, admin: bool, answer: F) -> Response
where
    F: FnOnce(Arc<Ops>, KeyInfo, Option<RateLimitState>) -> Fut,
    Fut: Future<Output = Result<Value, HttpError>>,
{
    let request_id = request_id();
    let Some(ops) = app.ops.clone() else {
        let error = HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "operator endpoints need `database` set on the http receiver",
        );
        return error_reply(&error, &request_id, None);
    };
    let result = async {
        let (key, standing) = authenticate(app, headers).await?;
        if admin && !key.is_admin {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs an admin key (keys create --admin)",
            ));
        }
        answer(ops, key, standing).await
    }
    .await;
    match result {
        Ok(body) => success_reply(body, &request_id),
        Err(error) => error_reply(&error, &request_id, None),
    }
}

/// The caller's key, as the pipelines' admission found it, and its rate-limit standing.
async fn authenticate(
    app: &App,
    headers: &HeaderMap,
) -> Result<(KeyInfo, Option<RateLimitState>), HttpError> {
    let admitted = admit(app, headers, true).await.map_err(HttpError::from)?;
    let head = admitted.head();
    match &head.key {
        Some(key) => Ok((key.clone(), head.standing)),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "operator endpoints need the auth processor in a pipeline of this receiver",
        )),
    }
}

fn database_error(error: sqlx::Error) -> HttpError {
    tracing::error!(%error, "admin endpoint: database error");
    HttpError::unavailable(format!("database error: {error}"), Duration::from_secs(5))
}

/// The caller's standing as the pipelines would judge a request of its now, spending nothing.
async fn rate_limit(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, false, |_, key, state| async move {
        let (limit, remaining, reset) = (
            state.map(|s| s.limit),
            state.map(|s| s.remaining),
            state.map(|s| s.reset_seconds),
        );
        Ok(json!({
            "service": key.service_name,
            "limit": limit,
            "remaining": remaining,
            "reset_seconds": reset,
            "rate_limited": state.is_some(),
            // The Python service's names for the same, which its operators' scripts read.
            "rate_limit": limit,
            "available_tokens": remaining,
            "reset_time_seconds": reset,
        }))
    })
    .await
}

/// Hands on what the processors hold. Each call spends one of the caller's rate-limit tokens,
/// as a `POST /metrics` would: a loop of flushes cannot break every batch into tiny transactions.
async fn flush(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admit(&app, &headers, false).await
        && let Reason::RateLimited { standing, .. } = refusal.reason
    {
        return error_reply(&HttpError::from(refusal), &request_id(), Some(standing));
    }
    guarded(&app, &headers, false, |ops, _, _| async move {
        if ops.control.flush(FLUSH_TIMEOUT).await {
            Ok(json!({"message": "everything held was handed to the exporters and exported"}))
        } else {
            Err(HttpError::unavailable(
                "flush did not finish in 30 s; exporters are behind",
                Duration::from_secs(5),
            ))
        }
    })
    .await
}

async fn policies(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        let policies = ops
            .database
            .retention_policies()
            .await
            .map_err(database_error)?;
        let policies: Vec<Value> = policies
            .into_iter()
            .map(|p| {
                json!({
                    "table_name": p.table_name, "retention_days": p.retention_days,
                    "is_active": p.is_active, "set_by": p.set_by, "updated_at": p.updated_at,
                })
            })
            .collect();
        Ok(json!({"policies": policies}))
    })
    .await
}

/// The query string; its values are read by the endpoints, so a bad one gets the contract's
/// error body rather than the framework's plain text.
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(query: Params) -> Result<HashMap<String, String>, HttpError> {
    query.map(|Query(params)| params).map_err(|rejection| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            rejection.body_text(),
        )
    })
}

/// A boolean as the Python service (FastAPI) reads one: true/false, 1/0, yes/no, on/off, t/f,
/// y/n, in any case.
fn boolean(name: &str, value: &str) -> Result<bool, HttpError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(HttpError::invalid(format!(
            "{name}: {value:?} is not a boolean (true or false)"
        ))),
    }
}

fn boolean_param(params: &HashMap<String, String>, name: &str) -> Result<Option<bool>, HttpError> {
    params.get(name).map(|v| boolean(name, v)).transpose()
}

/// `table_name`: one metrics table, or all of them when absent or empty.
fn table_param(params: &HashMap<String, String>) -> Result<Option<&'static str>, HttpError> {
    match params.get("table_name").map(|t| t.trim()) {
        None | Some("") => Ok(None),
        Some(name) => known_table(name).map(Some),
    }
}

/// A policy in a JSON body; the Python service takes the same as query parameters.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyUpdate {
    retention_days: Option<u32>,
    is_active: Option<bool>,
}

/// `(retention_days, is_active)` from the query or a JSON body; a query parameter wins.
fn policy_update(params: &HashMap<String, String>, body: &[u8]) -> Result<(u32, bool), HttpError> {
    let invalid = HttpError::invalid;
    let mut update = PolicyUpdate::default();
    if !body.trim_ascii().is_empty() {
        update = serde_json::from_slice(body).map_err(|e| invalid(format!("body: {e}")))?;
    }
    if let Some(days) = params.get("retention_days") {
        let days = days.trim().parse().map_err(|_| {
            invalid(format!(
                "retention_days: {days:?} is not a whole number of days"
            ))
        })?;
        update.retention_days = Some(days);
    }
    if let Some(active) = boolean_param(params, "is_active")? {
        update.is_active = Some(active);
    }
    let days = update.retention_days.ok_or_else(|| {
        invalid(
            "retention_days is required: ?retention_days=N&is_active=true, or a JSON body \
             {\"retention_days\": N, \"is_active\": true}"
                .into(),
        )
    })?;
    if days > MAX_RETENTION_DAYS {
        return Err(invalid(format!(
            "retention_days: {days} is more than {MAX_RETENTION_DAYS} (100 years); \
             0 keeps rows for ever"
        )));
    }
    Ok((days, update.is_active.unwrap_or(true)))
}

async fn set_policy(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    table: Result<Path<String>, PathRejection>,
    query: Params,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        let Path(table) = table.map_err(|r| {
            HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text())
        })?;
        let table = known_table(&table)?;
        let body = body.map_err(body_refusal)?;
        let (retention_days, is_active) = policy_update(&params(query)?, &body)?;
        ops.database
            .set_retention_policy(table, retention_days, is_active)
            .await
            .map_err(database_error)?;
        Ok(json!({"table_name": table, "retention_days": retention_days, "is_active": is_active}))
    })
    .await
}

async fn preview(State(app): State<Arc<App>>, headers: HeaderMap, query: Params) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        let params = params(query)?;
        retention(ops, table_param(&params)?, true).await
    })
    .await
}

async fn cleanup(State(app): State<Arc<App>>, headers: HeaderMap, query: Params) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        let params = params(query)?;
        let table = table_param(&params)?;
        // A dry run unless asked otherwise, as in the Python service: deleting takes intent.
        let dry_run = boolean_param(&params, "dry_run")?.unwrap_or(true);
        retention(ops, table, dry_run).await
    })
    .await
}

async fn retention(
    ops: Arc<Ops>,
    table: Option<&'static str>,
    dry_run: bool,
) -> Result<Value, HttpError> {
    let runs = ops
        .database
        .apply_retention(table, dry_run)
        .await
        .map_err(database_error)?;
    let tables: Vec<Value> = runs
        .iter()
        .map(|run| {
            let rows = if dry_run { "rows_to_delete" } else { "rows_deleted" };
            json!({"table_name": run.table_name, "retention_days": run.retention_days, "cutoff": run.cutoff, rows: run.rows})
        })
        .collect();
    let total: u64 = runs.iter().map(|run| run.rows).sum();
    Ok(json!({"dry_run": dry_run, "tables": tables, "total_rows": total}))
}

async fn stats(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        let tables = ops.database.table_stats().await.map_err(database_error)?;
        let tables: Vec<Value> = tables
            .into_iter()
            .map(|t| json!({"table_name": t.table_name, "rows": t.rows, "oldest": t.oldest, "newest": t.newest}))
            .collect();
        Ok(json!({"tables": tables}))
    })
    .await
}

async fn size(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, true, |ops, _, _| async move {
        let size = ops.database.size().await.map_err(database_error)?;
        Ok(json!({
            "path": size.path,
            "file_bytes": size.file_bytes,
            "wal_bytes": size.wal_bytes,
            "total_bytes": size.file_bytes + size.wal_bytes,
            "page_size": size.page_size,
            "page_count": size.page_count,
            "free_pages": size.free_pages,
        }))
    })
    .await
}

fn known_table(name: &str) -> Result<&'static str, HttpError> {
    metric_table(name).ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "unknown_table",
            format!(
                "no metrics table {name:?}; tables: {}",
                mcp_metrics_store::METRIC_TABLES.join(", ")
            ),
        )
    })
}
