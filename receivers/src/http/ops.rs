//! The operator endpoints the deployed Python service has, behind the same API-key check:
//! `GET /rate-limit`, `POST /flush`, and, for admin keys, retention policies, preview and
//! cleanup, and database stats and size.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post, put};
use mcp_metrics_plugin::{
    BoxError, BuildContext, KeyInfo, Refusal, RequestContext, ServiceControl,
};
use mcp_metrics_store::{KeyCache, Store, metric_table};
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::wire::{refusal_reply, request_id, success_reply};

/// How long `POST /flush` waits for the exporters.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Ops {
    store: Arc<Store>,
    keys: Arc<KeyCache>,
    control: Arc<dyn ServiceControl>,
}

impl Ops {
    pub async fn start(cx: &BuildContext, database: &std::path::Path) -> Result<Ops, BoxError> {
        let store = Store::open(database).await?;
        let keys =
            KeyCache::start(store.clone(), Duration::from_secs(2), cx.shutdown.clone()).await?;
        Ok(Ops {
            store,
            keys,
            control: cx.control.clone(),
        })
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
    guarded(&app, &headers, true, |ops, _| async move {
        match ops.control.reload().await {
            Ok(summary) => Ok(json!({"message": summary})),
            Err(errors) => Err(Refusal::new(422, "invalid_config", errors)),
        }
    })
    .await
}

/// Runs `answer` for a caller with an active key (an admin key if `admin`), and replies.
async fn guarded<F, Fut>(app: &App, headers: &HeaderMap, admin: bool, answer: F) -> Response
where
    F: FnOnce(Arc<Ops>, KeyInfo) -> Fut,
    Fut: Future<Output = Result<Value, Refusal>>,
{
    let request_id = request_id();
    let Some(ops) = app.ops.clone() else {
        let refusal = Refusal::new(
            404,
            "not_found",
            "operator endpoints need `database` set on the http receiver",
        );
        return refusal_reply(&refusal, &request_id);
    };
    let result = async {
        let key = authenticate(&ops, headers).await?;
        if admin && !key.is_admin {
            return Err(Refusal::new(
                403,
                "forbidden",
                "this endpoint needs an admin key (keys create --admin)",
            ));
        }
        answer(ops, key).await
    }
    .await;
    match result {
        Ok(body) => success_reply(body, &request_id),
        Err(refusal) => refusal_reply(&refusal, &request_id),
    }
}

async fn authenticate(ops: &Ops, headers: &HeaderMap) -> Result<KeyInfo, Refusal> {
    let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
        return Err(Refusal::new(
            401,
            "missing_api_key",
            "API key is required in the X-API-Key header",
        ));
    };
    match ops.keys.lookup(key).await {
        Ok(Some(info)) => Ok(info),
        Ok(None) => Err(Refusal::new(
            401,
            "invalid_api_key",
            "API key is invalid or expired",
        )),
        Err(error) => {
            tracing::error!(%error, "cannot check API key");
            Err(Refusal::unavailable(
                "cannot check the API key right now",
                1,
            ))
        }
    }
}

fn database_error(error: sqlx::Error) -> Refusal {
    tracing::error!(%error, "admin endpoint: database error");
    Refusal::unavailable(format!("database error: {error}"), 5)
}

async fn rate_limit(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, false, |ops, key| async move {
        let context = RequestContext {
            request_id: String::new(),
            service: key.service_name.clone(),
            version: None,
            instance_id: None,
            received_at: chrono::Utc::now(),
            api_key: None,
            key: Some(key.clone()),
        };
        let state = ops.control.rate_limit(&context);
        Ok(json!({
            "service": key.service_name,
            "limit": state.map(|s| s.limit),
            "remaining": state.map(|s| s.remaining),
            "reset_seconds": state.map(|s| s.reset_seconds),
            "rate_limited": state.is_some(),
        }))
    })
    .await
}

async fn flush(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, false, |ops, _| async move {
        if ops.control.flush(FLUSH_TIMEOUT).await {
            Ok(json!({"message": "everything held was handed to the exporters and exported"}))
        } else {
            Err(Refusal::unavailable(
                "flush did not finish in 30 s; exporters are behind",
                5,
            ))
        }
    })
    .await
}

async fn policies(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, true, |ops, _| async move {
        let policies = ops
            .store
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyUpdate {
    retention_days: u32,
    #[serde(default = "active")]
    is_active: bool,
}

fn active() -> bool {
    true
}

async fn set_policy(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(table): Path<String>,
    body: Bytes,
) -> Response {
    guarded(&app, &headers, true, |ops, _| async move {
        let table = known_table(&table)?;
        let update: PolicyUpdate = serde_json::from_slice(&body).map_err(|e| {
            Refusal::new(422, "invalid_request", format!("body must be {{\"retention_days\": N, \"is_active\": bool}}: {e}"))
        })?;
        ops.store
            .set_retention_policy(table, update.retention_days, update.is_active)
            .await
            .map_err(database_error)?;
        Ok(json!({"table_name": table, "retention_days": update.retention_days, "is_active": update.is_active}))
    })
    .await
}

#[derive(Deserialize)]
struct RetentionQuery {
    table_name: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn preview(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<RetentionQuery>,
) -> Response {
    guarded(&app, &headers, true, |ops, _| {
        retention(ops, query.table_name, true)
    })
    .await
}

async fn cleanup(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<RetentionQuery>,
) -> Response {
    let dry_run = query.dry_run;
    guarded(&app, &headers, true, |ops, _| {
        retention(ops, query.table_name, dry_run)
    })
    .await
}

async fn retention(ops: Arc<Ops>, table: Option<String>, dry_run: bool) -> Result<Value, Refusal> {
    let table = table.as_deref().map(known_table).transpose()?;
    let runs = ops
        .store
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
    guarded(&app, &headers, true, |ops, _| async move {
        let tables = ops.store.table_stats().await.map_err(database_error)?;
        let tables: Vec<Value> = tables
            .into_iter()
            .map(|t| json!({"table_name": t.table_name, "rows": t.rows, "oldest": t.oldest, "newest": t.newest}))
            .collect();
        Ok(json!({"tables": tables}))
    })
    .await
}

async fn size(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    guarded(&app, &headers, true, |ops, _| async move {
        let size = ops.store.size().await.map_err(database_error)?;
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

fn known_table(name: &str) -> Result<&'static str, Refusal> {
    metric_table(name).ok_or_else(|| {
        Refusal::new(
            404,
            "unknown_table",
            format!(
                "no metrics table {name:?}; tables: {}",
                mcp_metrics_store::METRIC_TABLES.join(", ")
            ),
        )
    })
}
