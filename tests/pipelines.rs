//! Wiring: fan-out and fan-in, named components of one type, end-to-end acknowledgements, and
//! the database's migrations.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn one_receiver_feeds_two_pipelines_and_two_named_exporters() {
    let mut svc = TestService::with_config(
        "
receivers:
  http: {host: 127.0.0.1, port: 0}
processors:
  auth: {database: '{dir}/metrics.db'}
  validate: {}
exporters:
  sqlite: {path: '{dir}/metrics.db', retention_days: 0}
  sqlite/copy: {path: '{dir}/copy.db'}
service:
  pipelines:
    primary: {receivers: [http], processors: [auth, validate], exporters: [sqlite, sqlite/copy]}
    archive: {receivers: [http], processors: [auth], exporters: [sqlite/copy]}
",
    )
    .await;
    let key = svc.key("svc").await;
    let body = request_of(
        "svc",
        vec![
            metric("auth_request"),
            metric("custom"),
            json!({"type": "custom", "value": 1, "duration_ms": -1}),
        ],
    );
    let reply = svc.post(Some(&key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A metric rejected by any pipeline is reported rejected.
    assert_eq!(reply.body["accepted"], 2);
    assert_eq!(reply.body["rejected"], 1);
    svc.shutdown().await;

    let primary = mcp_metrics_store::Store::open(svc.dir.path().join("metrics.db"))
        .await
        .unwrap();
    assert_eq!(primary.row_counts().await.unwrap()["metrics"], 2);
    // The copy gets the primary pipeline's 2 and the archive pipeline's 3 (it does not validate).
    let copy = mcp_metrics_store::Store::open(svc.dir.path().join("copy.db"))
        .await
        .unwrap();
    assert_eq!(copy.row_counts().await.unwrap()["metrics"], 5);
    assert_eq!(copy.row_counts().await.unwrap()["auth_metrics"], 2);
}

#[tokio::test]
async fn with_acknowledgements_a_200_means_committed() {
    let svc = TestService::with_config(&default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}",
        "http: {host: 127.0.0.1, port: 0, acknowledgements: true}",
    ))
    .await;
    let key = svc.key("svc").await;
    let store = svc.store().await;
    for round in 1..=5 {
        let reply = svc
            .post(
                Some(&key),
                &request_of("svc", vec![metric("tool_execution"); 10]),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        // No waiting: the rows are there when the reply is.
        let counts = store.row_counts().await.unwrap();
        assert_eq!(counts["metrics"], round * 10);
        assert_eq!(counts["tool_metrics"], round * 10);
    }
}

#[tokio::test]
async fn a_filter_routes_auth_metrics_and_the_rest_to_two_files() {
    let mut svc = TestService::with_config(
        "
receivers:
  http: {host: 127.0.0.1, port: 0}
processors:
  auth: {database: '{dir}/metrics.db'}
  filter/auth: {include: {metric_types: [auth_request]}}
  filter/rest: {exclude: {metric_types: [auth_request]}}
exporters:
  sqlite/auth: {path: '{dir}/auth.db', retention_days: 0}
  sqlite/rest: {path: '{dir}/rest.db', retention_days: 0}
service:
  pipelines:
    auth: {receivers: [http], processors: [auth, filter/auth], exporters: [sqlite/auth]}
    rest: {receivers: [http], processors: [auth, filter/rest], exporters: [sqlite/rest]}
",
    )
    .await;
    let key = svc.key("svc").await;
    let body = request_of(
        "svc",
        vec![
            metric("auth_request"),
            metric("tool_execution"),
            metric("auth_request"),
            metric("custom"),
            metric("health_check"),
        ],
    );
    let reply = svc.post(Some(&key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 5, "filtered is not rejected");
    svc.shutdown().await;
    let counts = |file: &'static str| {
        let path = svc.dir.path().join(file);
        async move {
            mcp_metrics_store::Store::open(path)
                .await
                .unwrap()
                .row_counts()
                .await
                .unwrap()
        }
    };
    let auth = counts("auth.db").await;
    assert_eq!(
        (auth["metrics"], auth["auth_metrics"], auth["tool_metrics"]),
        (2, 2, 0)
    );
    let rest = counts("rest.db").await;
    assert_eq!(
        (rest["metrics"], rest["auth_metrics"], rest["tool_metrics"]),
        (3, 0, 1)
    );
}

#[test]
fn a_filter_with_an_unknown_metric_type_is_a_config_error() {
    let yaml = "
receivers: {http: {}}
processors: {filter: {include: {metric_types: [auth_reqest]}}}
exporters: {sqlite: {}}
service: {pipelines: {m: {receivers: [http], processors: [filter], exporters: [sqlite]}}}
";
    let errors = mcp_metrics::parse(yaml, "pipelines.yaml", &|_| None)
        .err()
        .unwrap()
        .errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .place
            .starts_with("processors.filter.include.metric_types"),
        "{errors:?}"
    );
    assert!(
        errors[0].message.contains("did you mean `auth_request`?"),
        "{errors:?}"
    );
}

#[test]
fn a_filter_with_an_empty_match_is_a_config_error() {
    let yaml = "
receivers: {http: {}}
processors: {filter: {exclude: {}}}
exporters: {sqlite: {}}
service: {pipelines: {m: {receivers: [http], processors: [filter], exporters: [sqlite]}}}
";
    let errors = mcp_metrics::parse(yaml, "pipelines.yaml", &|_| None)
        .err()
        .expect("`exclude: {}` would drop every metric")
        .errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].place, "processors.filter", "{errors:?}");
    assert!(
        errors[0].message.starts_with("exclude: give at least one"),
        "{errors:?}"
    );
}
