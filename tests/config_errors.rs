//! A bad config is refused at start-up with every problem at once, each with its place.

mod common;

use std::process::Command;
use std::time::Duration;

use mcp_metrics::config::{ConfigError, ConfigErrors};

fn env(name: &str) -> Option<String> {
    (name == "SET_VAR").then(|| "set".to_owned())
}

fn errors_of(yaml: &str) -> Vec<ConfigError> {
    match mcp_metrics::parse(yaml, "pipelines.yaml", &env) {
        Ok(_) => panic!("config should be refused"),
        Err(ConfigErrors { errors, .. }) => errors,
    }
}

fn find<'a>(errors: &'a [ConfigError], place: &str, needle: &str) -> &'a ConfigError {
    errors
        .iter()
        .find(|e| e.place == place && e.message.contains(needle))
        .unwrap_or_else(|| panic!("no error at {place} containing {needle:?} in {errors:#?}"))
}

const BROKEN: &str = "\
receivers:
  http:
    prot: 8890
    hots: localhost
    max_concurrent_requests: ${env:UNSET_LIMIT}
processors:
  validate:
    max_depth: deep
  bogus: {}
exporters:
  sqlit: {}
  sqlite:
    path: ${env:UNSET_DB_PATH}
  sqlite/spare: {}
service:
  pipelines:
    metrics:
      receivers: [htp]
      processors: [validate, auth]
      exporters: [sqlite]
    empty:
      processors: [validate]
";

#[test]
fn every_problem_is_reported_at_once_with_its_place() {
    let errors = errors_of(BROKEN);

    let typo = find(&errors, "receivers.http.prot", "unknown field `prot`");
    assert!(typo.message.contains("did you mean `port`?"), "{typo:?}");
    assert_eq!(typo.line, Some(3));
    // The second typo in the same component is reported too.
    let typo = find(&errors, "receivers.http.hots", "unknown field `hots`");
    assert!(typo.message.contains("did you mean `host`?"), "{typo:?}");
    assert_eq!(typo.line, Some(4));
    // An unset variable is one error, not a wrong type besides.
    find(
        &errors,
        "receivers.http.max_concurrent_requests",
        "UNSET_LIMIT is not set",
    );
    assert!(
        !errors
            .iter()
            .any(|e| e.place.ends_with("max_concurrent_requests") && e.message.contains("type")),
        "{errors:?}"
    );

    let mistyped = find(&errors, "processors.validate.max_depth", "invalid type");
    assert_eq!(mistyped.line, Some(8));

    let unknown = find(
        &errors,
        "processors.bogus",
        "unknown processor type `bogus`",
    );
    assert!(
        unknown
            .message
            .contains("known types: auth, batch, enrich, filter, rate_limit, validate"),
        "{unknown:?}"
    );
    assert_eq!(unknown.line, Some(9));

    let close = find(&errors, "exporters.sqlit", "unknown exporter type `sqlit`");
    assert!(
        close.message.contains("did you mean `sqlite`?"),
        "{close:?}"
    );

    let unset = find(
        &errors,
        "exporters.sqlite.path",
        "UNSET_DB_PATH is not set and has no default",
    );
    assert_eq!(unset.line, Some(13));

    let undefined = find(
        &errors,
        "service.pipelines.metrics.receivers",
        "receiver `htp` is not defined",
    );
    assert!(
        undefined.message.contains("did you mean `http`?"),
        "{undefined:?}"
    );
    find(
        &errors,
        "service.pipelines.metrics.processors",
        "processor `auth` is not defined",
    );
    find(
        &errors,
        "service.pipelines.empty.receivers",
        "needs at least one receiver",
    );
    find(
        &errors,
        "service.pipelines.empty.exporters",
        "needs at least one exporter",
    );
}

#[test]
fn yaml_syntax_errors_give_the_line() {
    let errors = errors_of("receivers:\n  http: {port: 1\nexporters: {}\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.starts_with("not valid YAML"),
        "{errors:?}"
    );
    assert!(errors[0].line.is_some());
}

#[test]
fn unknown_sections_and_pipeline_keys_are_errors() {
    let yaml = "\
receivers: {http: {}}
exporter: {}
exporters: {sqlite: {}}
service:
  pipelines:
    metrics: {receivers: [http], exporters: [sqlite], procesors: []}
";
    let errors = errors_of(yaml);
    let section = find(&errors, "exporter", "unknown section");
    assert!(
        section.message.contains("did you mean `exporters`?"),
        "{section:?}"
    );
    let key = find(
        &errors,
        "service.pipelines.metrics",
        "unknown field `procesors`",
    );
    assert!(
        key.message.contains("did you mean `processors`?"),
        "{key:?}"
    );
}

#[test]
fn a_config_without_pipelines_is_refused() {
    let errors = errors_of("receivers: {http: {}}\nexporters: {sqlite: {}}\n");
    find(&errors, "service", "service.pipelines");
}

#[test]
fn unused_components_warn_without_failing() {
    let yaml = "\
receivers: {http: {}}
processors: {validate: {}}
exporters: {sqlite: {}, sqlite/spare: {path: x.db}}
service:
  pipelines:
    metrics: {receivers: [http], exporters: [sqlite]}
";
    let config = mcp_metrics::parse(yaml, "pipelines.yaml", &env).unwrap();
    assert!(
        config
            .warnings
            .contains(&"processors.validate is defined but no pipeline uses it".to_owned())
    );
    assert!(
        config
            .warnings
            .contains(&"exporters.sqlite/spare is defined but no pipeline uses it".to_owned())
    );
}

#[test]
fn env_defaults_and_values_reach_the_components() {
    let yaml = "\
receivers: {http: {port: '${env:NO_SUCH_PORT:-9999}', host: '${env:SET_VAR}'}}
exporters: {sqlite: {}}
service: {pipelines: {metrics: {receivers: [http], exporters: [sqlite]}}}
";
    let effective = mcp_metrics::config::effective(yaml, "pipelines.yaml", &env).unwrap();
    let effective: serde_yaml::Value = serde_yaml::from_str(&effective).unwrap();
    let http = &effective["receivers"]["http"];
    assert_eq!(http["port"], serde_yaml::Value::from(9999), "{effective:?}");
    assert_eq!(
        http["host"],
        serde_yaml::Value::from("set"),
        "{effective:?}"
    );
}

#[test]
fn the_shipped_pipelines_yaml_is_valid_with_no_environment() {
    let config = mcp_metrics::parse(
        mcp_metrics::config::EMBEDDED_DEFAULT,
        "pipelines.yaml",
        &|_| None,
    )
    .unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn validate_command_exits_1_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, BROKEN).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mcp-metrics"))
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("UNSET_DB_PATH")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has 11 errors"), "{stderr}");
    assert!(
        stderr.contains(":3: receivers.http.prot: unknown field `prot`"),
        "{stderr}"
    );

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, mcp_metrics::config::EMBEDDED_DEFAULT).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mcp-metrics"))
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_start_up_failure_leaves_nothing_running() {
    // The port is taken: the service must fail to start and leave no half-built pipeline.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "receivers: {{http: {{host: 127.0.0.1, port: {port}}}}}\nexporters: {{sqlite: {{path: '{}'}}}}\nservice: {{pipelines: {{m: {{receivers: [http], exporters: [sqlite]}}}}}}\n",
        dir.path().join("m.db").display()
    );
    let config = mcp_metrics::parse(&yaml, "pipelines.yaml", &env).unwrap();
    let error = mcp_metrics::Service::start(config)
        .await
        .err()
        .expect("start fails");
    assert!(
        format!("{error:#}").contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{error:#}"
    );
}

/// A component names the database by an extension's id; a misspelt id is an error at start-up,
/// never a new SQLite file of that name, and a known one is shared by every component.
#[tokio::test]
async fn a_database_named_by_an_unknown_extension_id_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = |reference: &str| {
        format!(
            "extensions:\n  database: {{url: '{}/metrics.db'}}\n\
             receivers:\n  http: {{host: 127.0.0.1, port: 0}}\n\
             processors:\n  auth: {{database: {reference}}}\n\
             exporters:\n  database: {{database: database}}\n\
             service:\n  pipelines:\n    metrics: {{receivers: [http], processors: [auth], exporters: [database]}}\n",
            dir.path().display()
        )
    };
    let misspelt = mcp_metrics::parse(&config("databse"), "pipelines.yaml", &env).unwrap();
    let error = match mcp_metrics::Service::start(misspelt).await {
        Ok(_) => panic!("a misspelt extension id must not start"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("no extension `databse`"), "{error}");
    assert!(!dir.path().join("databse").exists());

    let known = mcp_metrics::parse(&config("database"), "pipelines.yaml", &env).unwrap();
    let service = mcp_metrics::Service::start(known).await.unwrap();
    assert!(dir.path().join("metrics.db").exists());
    service.shutdown().await.unwrap();
}

/// Every component that takes numbers, wired; [`config_with`] sets keys in it.
const NUMBERS: &str = "
receivers:
  http: {host: 127.0.0.1, port: 0, database: ./metrics.db}
processors:
  auth: {database: ./metrics.db}
  validate: {}
  batch: {}
exporters:
  sqlite: {path: ./metrics.db}
  prometheus: {host: 127.0.0.1, port: 0}
  otlp: {endpoint: 'http://127.0.0.1:4318'}
service:
  pipelines:
    metrics:
      receivers: [http]
      processors: [auth, validate, batch]
      exporters: [sqlite, prometheus, otlp]
";

/// [`NUMBERS`] with each `(place, key, value)` set: `place` is a component
/// (`processors.batch`), an engine setting (`exporters.sqlite.sending_queue`) or `service`;
/// `value` is YAML.
fn config_with(settings: &[(&str, &str, &str)]) -> String {
    let mut root: serde_yaml::Value = serde_yaml::from_str(NUMBERS).unwrap();
    for (place, key, value) in settings {
        let mut at = &mut root;
        for part in place.split('.') {
            let map = at.as_mapping_mut().unwrap();
            at = map
                .entry(part.into())
                .or_insert_with(|| serde_yaml::Mapping::new().into());
        }
        let value: serde_yaml::Value = serde_yaml::from_str(value).unwrap();
        at.as_mapping_mut().unwrap().insert((*key).into(), value);
    }
    serde_yaml::to_string(&root).unwrap()
}

/// `(place, key, value, message)`: a value out of its key's range and what is said of it. The
/// ranges are generous; some values past them did harm when they were taken: 2^64-1 seconds added
/// to the clock panicked every request (`admission_wait`, `max_future_skew`), the batch's
/// flushing task (`timeout`) or an exporter's worker (`linger`), a zero `watch_interval` panicked
/// the service at start, a `max_concurrent_requests` past 2^61 panicked the receiver.
#[rustfmt::skip]
const OUT_OF_RANGE: &[(&str, &str, &str, &str)] = &[
    ("receivers.http", "max_request_size", "1023", "max_request_size: must be from 1KiB to 1GiB"),
    ("receivers.http", "max_request_size", "2GiB", "max_request_size: must be from 1KiB to 1GiB"),
    ("receivers.http", "max_metrics_per_request", "0", "max_metrics_per_request: must be from 1 to 1000000"),
    ("receivers.http", "max_metrics_per_request", "1000001", "max_metrics_per_request: must be from 1 to 1000000"),
    ("receivers.http", "max_concurrent_requests", "0", "max_concurrent_requests: must be from 1 to 100000"),
    ("receivers.http", "max_concurrent_requests", "18446744073709551615", "max_concurrent_requests: must be from 1 to 100000"),
    ("receivers.http", "acknowledgement_timeout", "0s", "acknowledgement_timeout: must be from 1ms to 1h"),
    ("receivers.http", "acknowledgement_timeout", "1000000000000s", "acknowledgement_timeout: must be from 1ms to 1h"),
    ("receivers.http", "header_read_timeout", "3601s", "header_read_timeout: must be from 1ms to 1h"),
    ("receivers.http", "body_read_timeout", "0s", "body_read_timeout: must be from 1ms to 1h"),
    ("receivers.http", "max_connections", "100001", "max_connections: must be from 1 to 100000"),
    ("processors.auth", "refresh_interval", "0s", "refresh_interval: must be from 1ms to 1h"),
    ("processors.auth", "refresh_interval", "1000000000000s", "refresh_interval: must be from 1ms to 1h"),
    ("processors.validate", "max_service_length", "0", "max_service_length: must be from 1 to 1024"),
    ("processors.validate", "max_version_length", "1025", "max_version_length: must be from 1 to 1024"),
    ("processors.validate", "max_instance_id_length", "0", "max_instance_id_length: must be from 1 to 1024"),
    ("processors.validate", "max_attributes", "0", "max_attributes: must be from 1 to 10000"),
    ("processors.validate", "max_attributes", "10001", "max_attributes: must be from 1 to 10000"),
    ("processors.validate", "max_depth", "65", "max_depth: must be from 0 to 64"),
    ("processors.validate", "max_attributes_bytes", "15", "max_attributes_bytes: must be from 16 to 16777216"),
    ("processors.validate", "max_attributes_bytes", "16777217", "max_attributes_bytes: must be from 16 to 16777216"),
    ("processors.validate", "max_future_skew", "366d", "max_future_skew: must be from 0 to 365d"),
    ("processors.validate", "max_future_skew", "18446744073709551615s", "max_future_skew: must be from 0 to 365d"),
    ("processors.batch", "send_batch_size", "0", "send_batch_size: must be from 1 to 10000000"),
    ("processors.batch", "send_batch_size", "10000001", "send_batch_size: must be from 1 to 10000000"),
    ("processors.batch", "timeout", "0s", "timeout: must be from 1ms to 1h"),
    ("processors.batch", "timeout", "18446744073709551615s", "timeout: must be from 1ms to 1h"),
    ("processors.batch", "send_batch_max_size", "10000001", "send_batch_max_size: must be 0 or from send_batch_size to 10000000"),
    ("processors.batch", "queue_size", "10000001", "queue_size: must be from 1 to 10000000"),
    ("exporters.sqlite", "retention_interval", "0s", "retention_interval: must be from 1ms to 30d"),
    ("exporters.sqlite", "retention_interval", "31d", "retention_interval: must be from 1ms to 30d"),
    ("exporters.prometheus", "cardinality_limit", "0", "cardinality_limit: must be from 1 to 1000000"),
    ("exporters.prometheus", "max_concurrent_scrapes", "1001", "max_concurrent_scrapes: must be from 1 to 1000"),
    ("exporters.prometheus", "header_read_timeout", "0s", "header_read_timeout: must be from 1ms to 1h"),
    ("exporters.prometheus", "max_connections", "0", "max_connections: must be from 1 to 100000"),
    ("exporters.otlp", "export_interval", "86400001", "export_interval: must be from 1ms to 1d"),
    ("exporters.otlp", "export_interval", "1000000000000s", "export_interval: must be from 1ms to 1d"),
    ("exporters.otlp", "timeout", "0s", "timeout: must be from 1ms to 1h"),
    ("exporters.otlp", "timeout", "18446744073709551615s", "timeout: must be from 1ms to 1h"),
    ("exporters.otlp", "max_retries", "101", "max_retries: must be from 0 to 100"),
    ("exporters.otlp", "cardinality_limit", "1000001", "cardinality_limit: must be from 1 to 1000000"),
    ("exporters.sqlite.sending_queue", "queue_size", "0", "queue_size: must be from 1 to 10000000"),
    ("exporters.sqlite.sending_queue", "queue_size", "10000001", "queue_size: must be from 1 to 10000000"),
    ("exporters.sqlite.sending_queue", "num_consumers", "0", "num_consumers: must be from 1 to 1000"),
    ("exporters.sqlite.sending_queue", "num_consumers", "1001", "num_consumers: must be from 1 to 1000"),
    ("exporters.sqlite.sending_queue", "batch_max_size", "0", "batch_max_size: must be from 1 to 10000000"),
    ("exporters.sqlite.sending_queue", "batch_max_size", "10000001", "batch_max_size: must be from 1 to 10000000"),
    ("exporters.sqlite.sending_queue", "linger", "18446744073709551615s", "linger: must be from 0 to 1h"),
    ("exporters.prometheus.retry_on_failure", "initial_interval", "0s", "initial_interval: must be from 1ms to 1h"),
    ("exporters.sqlite.retry_on_failure", "max_interval", "3601s", "max_interval: must be from 1ms to 1h"),
    ("exporters.sqlite.retry_on_failure", "max_elapsed_time", "31d", "max_elapsed_time: must be from 0 to 30d"),
    ("service", "shutdown_timeout", "0s", "shutdown_timeout: must be from 1ms to 1h"),
    ("service", "shutdown_timeout", "1000000000000s", "shutdown_timeout: must be from 1ms to 1h"),
    ("service", "export_failure_threshold", "31d", "export_failure_threshold: must be from 0 to 30d"),
    ("service", "watch_interval", "0s", "watch_interval: must be from 1ms to 1h"),
    ("service", "watch_interval", "1000000000000s", "watch_interval: must be from 1ms to 1h"),
    ("service", "admission_wait", "61s", "admission_wait: must be from 0 to 1m"),
    ("service", "admission_wait", "18446744073709551615s", "admission_wait: must be from 0 to 1m"),
];

/// Every number at the top of its range, as [`config_with`] takes them.
#[rustfmt::skip]
const LARGEST: &[(&str, &str, &str)] = &[
    ("receivers.http", "max_request_size", "1GiB"),
    ("receivers.http", "max_metrics_per_request", "1000000"),
    ("receivers.http", "max_concurrent_requests", "100000"),
    ("receivers.http", "acknowledgement_timeout", "1h"),
    ("receivers.http", "header_read_timeout", "1h"),
    ("receivers.http", "body_read_timeout", "1h"),
    ("receivers.http", "max_connections", "100000"),
    ("processors.auth", "refresh_interval", "1h"),
    ("processors.validate", "max_service_length", "1024"),
    ("processors.validate", "max_version_length", "1024"),
    ("processors.validate", "max_instance_id_length", "1024"),
    ("processors.validate", "max_attributes", "10000"),
    ("processors.validate", "max_depth", "64"),
    ("processors.validate", "max_attributes_bytes", "16777216"),
    ("processors.validate", "max_future_skew", "365d"),
    ("processors.batch", "send_batch_size", "10000000"),
    ("processors.batch", "timeout", "1h"),
    ("processors.batch", "send_batch_max_size", "10000000"),
    ("processors.batch", "queue_size", "10000000"),
    ("exporters.sqlite", "retention_interval", "30d"),
    ("exporters.prometheus", "cardinality_limit", "1000000"),
    ("exporters.prometheus", "max_scrape_size", "1GiB"),
    ("exporters.prometheus", "metric_expiration", "30d"),
    ("exporters.prometheus", "max_concurrent_scrapes", "1000"),
    ("exporters.prometheus", "header_read_timeout", "1h"),
    ("exporters.prometheus", "body_read_timeout", "1h"),
    ("exporters.prometheus", "max_connections", "100000"),
    ("exporters.otlp", "export_interval", "1d"),
    ("exporters.otlp", "timeout", "1h"),
    ("exporters.otlp", "max_retries", "100"),
    ("exporters.otlp", "cardinality_limit", "1000000"),
    ("exporters.sqlite.sending_queue", "queue_size", "10000000"),
    ("exporters.sqlite.sending_queue", "num_consumers", "1000"),
    ("exporters.sqlite.sending_queue", "batch_max_size", "10000000"),
    ("exporters.sqlite.sending_queue", "linger", "1h"),
    ("exporters.sqlite.retry_on_failure", "initial_interval", "1h"),
    ("exporters.sqlite.retry_on_failure", "max_interval", "1h"),
    ("exporters.sqlite.retry_on_failure", "max_elapsed_time", "30d"),
    ("service", "shutdown_timeout", "1h"),
    ("service", "export_failure_threshold", "30d"),
    ("service", "watch_interval", "1h"),
    ("service", "admission_wait", "1m"),
];

/// Every number at the bottom of its range.
#[rustfmt::skip]
const SMALLEST: &[(&str, &str, &str)] = &[
    ("receivers.http", "max_request_size", "1KiB"),
    ("receivers.http", "max_metrics_per_request", "1"),
    ("receivers.http", "max_concurrent_requests", "1"),
    ("receivers.http", "acknowledgement_timeout", "1ms"),
    ("processors.auth", "refresh_interval", "1ms"),
    ("processors.validate", "max_service_length", "1"),
    ("processors.validate", "max_attributes", "1"),
    ("processors.validate", "max_depth", "0"),
    ("processors.validate", "max_attributes_bytes", "16"),
    ("processors.validate", "max_future_skew", "0s"),
    ("processors.batch", "send_batch_size", "1"),
    ("processors.batch", "timeout", "1ms"),
    ("processors.batch", "queue_size", "1"),
    ("exporters.sqlite", "retention_interval", "1ms"),
    ("exporters.otlp", "export_interval", "1"),
    ("exporters.otlp", "timeout", "1ms"),
    ("exporters.otlp", "max_retries", "0"),
    ("exporters.sqlite.sending_queue", "queue_size", "1"),
    ("exporters.sqlite.sending_queue", "num_consumers", "1"),
    ("exporters.sqlite.sending_queue", "batch_max_size", "1"),
    ("exporters.sqlite.sending_queue", "linger", "0s"),
    ("exporters.sqlite.retry_on_failure", "initial_interval", "1ms"),
    ("exporters.sqlite.retry_on_failure", "max_interval", "1ms"),
    ("service", "shutdown_timeout", "1ms"),
    ("service", "export_failure_threshold", "0s"),
    ("service", "watch_interval", "1ms"),
    ("service", "admission_wait", "0s"),
];

#[test]
fn every_number_out_of_its_range_is_refused_naming_its_key_and_line() {
    for (place, key, value, message) in OUT_OF_RANGE {
        let text = config_with(&[(place, key, value)]);
        let errors = errors_of(&text);
        let error = find(&errors, place, message);
        assert_eq!(error.message, *message, "{key}: {value}");
        let line = text
            .lines()
            .position(|line| line.trim_start().starts_with(&format!("{key}:")))
            .map(|index| index + 1);
        assert_eq!(error.line, line, "{key}: {value} in\n{text}");
        // Nothing else is said of a config with one bad number, save what that number breaks
        // besides (a send_batch_size past the largest queue_size).
        assert!(
            errors.iter().all(|e| e.place == *place),
            "{key}: {value}: {errors:#?}"
        );
    }
}

#[test]
fn every_number_at_either_end_of_its_range_is_taken() {
    let largest = config_with(LARGEST);
    mcp_metrics::parse(&largest, "pipelines.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    let smallest = config_with(SMALLEST);
    mcp_metrics::parse(&smallest, "pipelines.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn more_histogram_buckets_than_a_thousand_are_refused() {
    let bounds = |n: usize| {
        let bounds: Vec<String> = (1..=n).map(|b| b.to_string()).collect();
        format!("[{}]", bounds.join(", "))
    };
    for exporter in ["exporters.prometheus", "exporters.otlp"] {
        let text = config_with(&[(exporter, "histogram_buckets", &bounds(1001))]);
        let errors = errors_of(&text);
        find(&errors, exporter, "histogram_buckets: at most 1000 bounds");
        let text = config_with(&[(exporter, "histogram_buckets", &bounds(1000))]);
        mcp_metrics::parse(&text, "pipelines.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The largest values are not only taken but work: the real binary with every number at the top
/// of its range starts (every timer made, every background task's first round done), stores a
/// metric timestamped most of `max_future_skew` ahead, is scraped, is healthy, and stops cleanly,
/// its last OTLP push made under the largest `timeout`, with no panic logged anywhere. Several of
/// these durations are added to the clock in every request or in a background task.
#[tokio::test]
async fn the_service_works_with_every_number_at_its_largest() {
    // The OTLP endpoint refuses connections, so the push at shutdown fails at once.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("'http://{}'", refused.local_addr().unwrap());
    drop(refused);
    let mut settings = LARGEST.to_vec();
    settings.extend([
        ("receivers.http", "acknowledgements", "true"),
        ("exporters.otlp", "endpoint", endpoint.as_str()),
        // Retries of a refused push each wait their backoff; the range's top is shown above.
        ("exporters.otlp", "max_retries", "0"),
        ("service", "watch_config", "true"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipelines.yaml");
    std::fs::write(&path, config_with(&settings)).unwrap();
    let key = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap()
        .create_key("svc", None, false)
        .await
        .unwrap()
        .1;
    let (mut process, addresses, log) = common::spawn_service_logging(
        common::mcp_metrics(dir.path())
            .args(["run", "--config"])
            .arg(&path),
        &["receiver=http", "exporter=prometheus"],
    );
    let (address, scrape) = (&addresses[0], &addresses[1]);
    // A timer that panicked would leave a request unanswered: fail instead of waiting an hour.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let ahead = chrono::Utc::now() + chrono::TimeDelta::days(300);
    let body = serde_json::json!({"service": "svc", "metrics": [
        {"type": "custom", "value": 1.0, "timestamp": ahead.to_rfc3339(), "dimensions": {"k": "v"}}
    ]});
    let reply = common::metrics_request(&client, address, &key, &body)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    assert_eq!(status, 200, "{}", reply.text().await.unwrap());
    let scraped = common::scrape(&client, scrape).await;
    assert!(scraped.contains("service=\"svc\""), "{scraped}");
    let health = client
        .get(format!("http://{address}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    assert_eq!(common::terminate(&mut process), 0);
    let log: Vec<String> = log.iter().collect();
    assert!(
        !log.iter().any(|line| line.contains("panicked")),
        "{}",
        log.join("\n")
    );
    let stored = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap()
        .row_counts()
        .await
        .unwrap();
    assert_eq!(stored["metrics"], 1, "{stored:?}");
}
