//! A bad config is refused at start-up with every problem at once, each with its place.

use std::process::Command;

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
