//! The operator dashboard (`deploy/grafana/`) and the Prometheus rules (`deploy/prometheus/`)
//! against the real thing: the real service on loopback, a real Prometheus (Debian's package)
//! scraping it every second and evaluating the rules, a mix of metrics of every type with some
//! failing, some rate-limited and some refused. Every PromQL expression of the dashboard and of
//! the rules must parse, name only series that exist, and (panels and recording rules) return
//! data. `promtool` checks and unit-tests the rules.
//!
//! Prometheus and promtool must be installed (`apt-get install prometheus`, as `.ci/run` does):
//! these tests fail without them, they do not skip.
//!
//! The service's own telemetry is per process, so one test here runs a service: the ignored
//! `screenshots` helper runs the same traffic for longer and photographs Prometheus's graph page
//! for the README (`cargo test --test operator_dashboard -- --ignored screenshots`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const DASHBOARD: &str = "deploy/grafana/dashboards/mcp-metrics.json";
const RULES: &str = "deploy/prometheus/rules/mcp-metrics.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests/mcp-metrics.rules.test.yml";

/// The scrape job's name: the rules' McpMetricsDown and the dashboard look for it.
const JOB: &str = "mcp-metrics";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_file(path)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn read_yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo_file(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `promtool` with `args` in the repository; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): install Debian's prometheus package")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------------
// What the dashboard and the rules contain.

/// A PromQL expression and where it comes from.
struct Expression {
    origin: String,
    expr: String,
    /// A panel target's legend (`{{exporter}} gave up (points)`).
    legend: String,
}

/// The dashboard's panels, rows' nested panels included.
fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, into: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            into.push(panel);
            walk(&panel["panels"], into);
        }
    }
    let mut panels = Vec::new();
    walk(&dashboard["panels"], &mut panels);
    panels
}

/// Every panel target's expression, by panel.
fn panel_expressions(dashboard: &Value) -> Vec<(String, Vec<Expression>)> {
    dashboard_panels(dashboard)
        .into_iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            let targets = panel["targets"].as_array().unwrap();
            let expressions = targets
                .iter()
                .map(|target| Expression {
                    origin: format!("panel {title:?} target {}", target["refId"]),
                    expr: target["expr"].as_str().unwrap().to_owned(),
                    legend: target["legendFormat"].as_str().unwrap_or("").to_owned(),
                })
                .collect();
            (title, expressions)
        })
        .collect()
}

/// The dashboard's query variables: name and `label_values(...)` query.
fn template_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|variable| variable["type"] == "query")
        .map(|variable| {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .unwrap();
            (variable["name"].as_str().unwrap().to_owned(), query.into())
        })
        .collect()
}

/// A variable's `label_values(selector, label)` or `label_values(label)` as PromQL giving one
/// series per value.
fn label_values_query(query: &str) -> String {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    match inner.rsplit_once(',') {
        Some((selector, label)) => format!("group by ({}) ({})", label.trim(), selector.trim()),
        None => format!("group by ({0}) ({{{0}!=\"\"}})", inner.trim()),
    }
}

/// Grafana's variables in `expr` replaced: `$service` and `$server` by `values`, the interval
/// variables by fixed windows. Any other variable fails.
fn substitute(expr: &str, values: &BTreeMap<&str, String>) -> String {
    let mut text = expr.to_owned();
    for (name, window) in [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
    ] {
        text = text.replace(&format!("${{{name}}}"), window);
        text = text.replace(&format!("${name}"), window);
    }
    for (name, value) in values {
        text = text.replace(&format!("${{{name}}}"), value);
        text = text.replace(&format!("${name}"), value);
    }
    let unknown = text
        .match_indices('$')
        .any(|(at, _)| text[at + 1..].starts_with(|c: char| c.is_alphabetic() || c == '{'));
    assert!(!unknown, "a variable the test does not know: {expr}");
    text
}

/// The rules file's rules: (`record` or `alert`, name, expression).
fn rules() -> Vec<(String, String, String)> {
    let rules = read_yaml(RULES);
    let mut found = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap().to_owned();
            let (kind, name) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                (Some(name), None) => ("record", name),
                (None, Some(name)) => ("alert", name),
                _ => panic!("a rule is a recording rule or an alert: {rule:?}"),
            };
            found.push((kind.to_owned(), name.to_owned(), expr));
        }
    }
    found
}

/// The series names an expression reads (the service's `mcp_...` series, recorded series and
/// `up`): identifiers outside string literals.
fn series_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut flush = |word: &mut String| {
        if word.starts_with("mcp_") || word == "up" {
            names.insert(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            flush(&mut word);
            while let Some(inner) = chars.next() {
                if inner == '\\' {
                    chars.next();
                } else if inner == c {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word);
        }
    }
    flush(&mut word);
    names
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus.

/// A Prometheus process with its own configuration and storage in a temporary folder, killed
/// when dropped.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    client: reqwest::Client,
}

/// A free loopback port (free when asked: another process may take it before it is used).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `mcp-metrics` and evaluating the
    /// rules every second; returns once it is ready.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  \
             - job_name: {JOB}\n    \
             static_configs: [{{targets: ['{target}']}}]\n",
            rules = repo_file(RULES).display(),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus cannot run ({e}): install Debian's prometheus package")
            });
        let mut prometheus = Prometheus {
            child,
            dir,
            url: format!("http://{address}"),
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return prometheus;
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the service's target has been scraped (Prometheus takes up to 5 s to pick
    /// up its targets).
    async fn scraping(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let up = format!("up{{job=\"{JOB}\"}} == 1");
        while self.query(&up).await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no scrape:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: its result vector, or Prometheus's error (a parse error, say).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let reply: Value = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if reply["status"] != "success" {
            return Err(format!("{}: {}", reply["errorType"], reply["error"]));
        }
        Ok(reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every series name Prometheus holds, recorded ones included.
    async fn names(&self) -> BTreeSet<String> {
        let reply: Value = self
            .client
            .get(format!("{}/api/v1/label/__name__/values", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a query result has a series with a finite value (not an empty or NaN-only answer).
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

// ---------------------------------------------------------------------------------------------
// The service and its traffic.

/// Every metric type through `sqlite`, the scrape endpoint (a low cardinality limit, so its
/// overflow series shows) and an OTLP exporter pushing every second to a port nobody listens
/// on; and through a second pipeline to a SQLite file that can be made to fail
/// (`sqlite/archive`: a small queue, retries that give up after a second). The archive has a
/// pipeline of its own, with no batch, so its queue is where that pipeline's room is reserved:
/// a decoded request that finds no room there counts in
/// `mcp_metrics_exporter_enqueue_failed_metric_points_total`.
fn config(dead_port: u16) -> String {
    format!(
        "
receivers:
  http: {{host: 127.0.0.1, port: 0, database: '{{dir}}/metrics.db'}}
processors:
  auth: {{database: '{{dir}}/metrics.db', refresh_interval: 200ms}}
  rate_limit: {{}}
  validate: {{}}
exporters:
  sqlite: {{path: '{{dir}}/metrics.db', retention_days: 0}}
  sqlite/archive:
    path: '{{dir}}/archive.db'
    retention_days: 0
    sending_queue: {{queue_size: 40}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 1s}}
  prometheus: {{host: 127.0.0.1, port: 0, cardinality_limit: 50}}
  otlp: {{endpoint: 'http://127.0.0.1:{dead_port}', export_interval: 1s, timeout: 500ms, max_retries: 0}}
service:
  pipelines:
    metrics:
      receivers: [http]
      processors: [auth, rate_limit, validate]
      exporters: [sqlite, prometheus, otlp]
    archive:
      receivers: [http]
      processors: [auth, rate_limit, validate]
      exporters: [sqlite/archive]
"
    )
}

/// The services the traffic comes from, as a Grafana multi-value selection of them reads.
const SERVICES: &str = "(auth-server|mcpgw|registry)";
/// The server the concrete pass selects.
const SERVER: &str = "mcpgw";

struct Traffic {
    svc: TestService,
    auth_server: String,
    mcpgw: String,
    registry: String,
    /// The registry's second key, limited to 5 requests a minute.
    limited: String,
    wave: usize,
    /// Replies by status.
    statuses: BTreeMap<u16, usize>,
}

impl Traffic {
    async fn start() -> Traffic {
        let svc = TestService::with_config(&config(free_port())).await;
        let store = svc.store().await;
        let (_, limited) = store.create_key("registry", Some(5), false).await.unwrap();
        Traffic {
            auth_server: svc.key("auth-server").await,
            mcpgw: svc.key("mcpgw").await,
            registry: svc.key("registry").await,
            limited,
            svc,
            wave: 0,
            statuses: BTreeMap::new(),
        }
    }

    fn scrape_target(&self) -> SocketAddr {
        let service = self.svc.service.as_ref().unwrap();
        service.exporter_addr("prometheus").unwrap()
    }

    async fn post(&mut self, key: &str, service: &str, metrics: Vec<Value>) {
        let reply = self
            .svc
            .post(Some(key), &request_of(service, metrics))
            .await;
        *self.statuses.entry(reply.status).or_default() += 1;
    }

    /// One round of what the gateway's components send, with failures in it: auth requests
    /// (a quarter failing), tool executions (some failing with and without an error code),
    /// discoveries (some finding nothing), registry operations, health checks, protocol
    /// latencies, custom metrics; a metric of an unknown type (rejected), a wrong key (401) and
    /// a key over its rate limit (429).
    async fn wave(&mut self) {
        let i = self.wave;
        self.wave += 1;
        let (auth_server, mcpgw, registry, limited) = (
            self.auth_server.clone(),
            self.mcpgw.clone(),
            self.registry.clone(),
            self.limited.clone(),
        );
        let auth = |method: &str, success: bool, server: &str, ms: f64| {
            json!({"type": "auth_request", "value": 1.0, "duration_ms": ms,
                   "dimensions": {"method": method, "success": success, "server": server,
                                  "user_hash": format!("user_{}", i % 3)},
                   "metadata": {"error_code": if success { Value::Null } else { json!("401") }}})
        };
        let auth_requests = vec![
            auth("jwt", true, "mcpgw", 12.0 + (i % 7) as f64),
            auth("jwt", true, "currenttime", 30.0 + (i % 5) as f64),
            auth("api_key", true, "mcpgw", 4.0),
            auth("oauth2", false, "mcpgw", 180.0 + (i % 11) as f64 * 10.0),
        ];
        self.post(&auth_server, "auth-server", auth_requests).await;

        let tool = |tool: &str, server: &str, success: bool, ms: f64| {
            json!({"type": "tool_execution", "value": 1.0, "duration_ms": ms,
                   "dimensions": {"tool_name": tool, "server_path": format!("/{server}"),
                                  "server_name": server, "success": success},
                   "metadata": {"input_size_bytes": 128, "output_size_bytes": 1024}})
        };
        let mut failed_with_code = tool("get_weather", "mcpgw", false, 2400.0);
        failed_with_code["dimensions"]["error_code"] = json!("500");
        let mut failed_field_style = tool("current_time", "currenttime", false, 900.0);
        failed_field_style["metadata"]["error_code"] = json!("504");
        let mcpgw_metrics = vec![
            tool("get_weather", "mcpgw", true, 250.0 + (i % 9) as f64 * 20.0),
            tool("intelligent_tool_finder", "mcpgw", true, 90.0),
            tool("current_time", "currenttime", true, 15.0),
            failed_with_code,
            failed_field_style,
            json!({"type": "protocol_latency", "value": 1.0, "duration_ms": 20.0 + (i % 4) as f64 * 15.0,
                   "dimensions": {"method": "tools/call"}}),
            json!({"type": "health_check", "value": 1.0, "duration_ms": 2.0,
                   "dimensions": {"server": "mcpgw", "status": "healthy"}}),
            json!({"type": "custom", "value": 3.0, "dimensions": {"name": "cache_hits"}}),
            // Rejected alone: not a metric type.
            json!({"type": "nonsense", "value": 1.0}),
        ];
        self.post(&mcpgw, "mcpgw", mcpgw_metrics).await;

        let registry_metrics = vec![
            json!({"type": "tool_discovery", "value": 1.0, "duration_ms": 80.0 + (i % 6) as f64 * 10.0,
                   "dimensions": {"query": "weather tools", "results_count": 5, "top_k_services": 3}}),
            json!({"type": "tool_discovery", "value": 1.0, "duration_ms": 140.0,
                   "dimensions": {"query": "quantum tools", "results_count": 0, "top_k_services": 3}}),
            json!({"type": "registry_operation", "value": 1.0, "duration_ms": 8.0,
                   "dimensions": {"operation": "list", "success": true}}),
            json!({"type": "registry_operation", "value": 1.0, "duration_ms": 35.0,
                   "dimensions": {"operation": "register", "success": !i.is_multiple_of(4)}}),
            json!({"type": "health_check", "value": 1.0, "duration_ms": 3.0,
                   "dimensions": {"server": "currenttime", "status": if i.is_multiple_of(5) { "unhealthy" } else { "healthy" }}}),
        ];
        self.post(&registry, "registry", registry_metrics).await;

        // Refused as a whole: a wrong key, and a key past its limit of 5 a minute.
        self.post("mcp_metrics_wrong", "registry", vec![metric("custom"); 2])
            .await;
        for _ in 0..2 {
            let flood = vec![json!({"type": "registry_operation", "value": 1.0,
                                     "dimensions": {"operation": "heartbeat", "success": true}})];
            self.post(&limited, "registry", flood).await;
        }
    }

    /// Metrics past the label limits: one with more dimensions than a series may carry, and more
    /// custom label sets than the cardinality limit.
    async fn past_label_limits(&mut self) {
        let dimensions: serde_json::Map<String, Value> =
            (0..40).map(|d| (format!("d{d:02}"), json!("x"))).collect();
        let wide = vec![json!({"type": "custom", "value": 1.0, "dimensions": dimensions})];
        let mcpgw = self.mcpgw.clone();
        self.post(&mcpgw, "mcpgw", wide).await;
        for chunk in 0..6 {
            let many = (0..10)
                .map(|n| json!({"type": "custom", "value": 1.0, "dimensions": {"name": format!("c{chunk}{n}")}}))
                .collect();
            self.post(&mcpgw, "mcpgw", many).await;
        }
    }

    /// Makes every write to the archive's `metrics` table fail (or succeed again): its exports
    /// give up after their retries, its queue fills and requests get 503 meanwhile.
    async fn archive_fails(&self, fail: bool) {
        use sqlx::Connection;
        let url = format!(
            "sqlite://{}",
            self.svc.dir.path().join("archive.db").display()
        );
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let statement = if fail {
            "CREATE TRIGGER refuse_writes BEFORE INSERT ON metrics \
             BEGIN SELECT RAISE(ABORT, 'the archive refuses writes'); END"
        } else {
            "DROP TRIGGER refuse_writes"
        };
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .unwrap();
    }

    /// The traffic with the archive failing, for at least `seconds` and until `prometheus` has
    /// seen its queue over 80% full and its exports given up on.
    async fn failing_phase(&mut self, prometheus: &Prometheus, seconds: u64) {
        self.archive_fails(true).await;
        let started = Instant::now();
        let seen = "max_over_time(mcp_metrics_exporter_queue_size{exporter=\"sqlite/archive\"}[1m]) > 32 \
                    and increase(mcp_metrics_exporter_send_failed_metric_points_total[1m]) > 0";
        loop {
            self.wave().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(seconds)
                && !prometheus.query(seen).await.unwrap().is_empty()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(seconds + 20),
                "Prometheus did not see the archive fail: {:?}",
                self.statuses
            );
        }
        self.archive_fails(false).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// The alerts the test's traffic provokes: each one's expression must have held at some moment.
const PROVOKED: [&str; 6] = [
    "McpMetricsExporterFailing",
    "McpMetricsOtlpPushFailing",
    "McpMetricsQueueNearlyFull",
    "McpMetricsRefusedShareHigh",
    "McpMetricsServiceRateLimited",
    "McpGatewayAuthFailureRatioHigh",
];

/// Runs expressions against Prometheus, noting what is wrong with them.
struct Checker<'a> {
    prometheus: &'a Prometheus,
    /// Every series name Prometheus holds.
    names: BTreeSet<String>,
    problems: Vec<String>,
    checked: usize,
}

impl Checker<'_> {
    /// The expression's result. A series name Prometheus does not hold is a problem; a parse
    /// error panics at once (waiting does not mend it).
    async fn run(&mut self, origin: &str, expr: &str) -> Vec<Value> {
        self.checked += 1;
        for name in series_names(expr) {
            if !self.names.contains(&name) {
                self.problems
                    .push(format!("{origin}: no series {name} in Prometheus"));
            }
        }
        self.prometheus
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("{origin}: Prometheus refuses {expr:?}: {e}"))
    }
}

/// What is still wrong with the dashboard and rules against `prometheus`'s data now, and how
/// many expressions were checked.
async fn problems(prometheus: &Prometheus) -> (Vec<String>, usize) {
    let dashboard = read_json(DASHBOARD);
    let mut checker = Checker {
        prometheus,
        names: prometheus.names().await,
        problems: Vec::new(),
        checked: 0,
    };

    // Every panel target, with the variables at All and at concrete values (these catch a
    // filter on a label the series lacks, which `.*` would not).
    let all = BTreeMap::from([("service", ".*".to_owned()), ("server", ".*".to_owned())]);
    let concrete = BTreeMap::from([
        ("service", SERVICES.to_owned()),
        ("server", SERVER.to_owned()),
    ]);
    for (_, expressions) in panel_expressions(&dashboard) {
        for expression in &expressions {
            for (pass, values) in [("all", &all), ("concrete", &concrete)] {
                let expr = substitute(&expression.expr, values);
                let origin = format!("{} ({pass} values)", expression.origin);
                if !has_data(&checker.run(&origin, &expr).await) {
                    checker
                        .problems
                        .push(format!("{origin}: no data for {expr}"));
                }
            }
        }
    }
    // The variables offer the concrete values.
    for (name, query) in template_queries(&dashboard) {
        let origin = format!("variable {name}");
        let result = checker.run(&origin, &label_values_query(&query)).await;
        let offered: BTreeSet<&str> = result
            .iter()
            .filter_map(|series| series["metric"][&name].as_str())
            .collect();
        let wanted = concrete[name.as_str()].trim_matches(['(', ')']);
        for value in wanted.split('|') {
            if !offered.contains(value) {
                checker
                    .problems
                    .push(format!("{origin}: {value} not among {offered:?}"));
            }
        }
    }
    // Every rule: recording rules have data; the provoked alerts' expressions held at some
    // moment of the last 2 minutes; the service is not down.
    for (kind, name, expr) in rules() {
        let origin = format!("{kind} {name}");
        let result = checker.run(&origin, &expr).await;
        if kind == "record" && !has_data(&result) {
            checker.problems.push(format!("{origin}: no data"));
        }
        if kind == "alert" {
            let held = format!("count_over_time(({expr})[2m:1s])");
            let held = !checker.run(&origin, &held).await.is_empty();
            if PROVOKED.contains(&name.as_str()) && !held {
                checker
                    .problems
                    .push(format!("{origin}: never held, though the test provokes it"));
            }
            if name == "McpMetricsDown" && !result.is_empty() {
                checker
                    .problems
                    .push(format!("{origin}: holds while the service runs"));
            }
        }
    }
    (checker.problems, checker.checked)
}

#[tokio::test]
async fn every_dashboard_and_rule_expression_runs_against_the_service() {
    let started = Instant::now();
    let mut traffic = Traffic::start().await;
    let prometheus = Prometheus::start(traffic.scrape_target()).await;
    prometheus.scraping().await;

    // Normal traffic, then the archive failing, then normal traffic again until Prometheus has
    // every series the dashboard and the rules read.
    for _ in 0..5 {
        traffic.wave().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    traffic.past_label_limits().await;
    traffic.failing_phase(&prometheus, 3).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let checked = loop {
        traffic.wave().await;
        let (problems, checked) = problems(&prometheus).await;
        if problems.is_empty() {
            break checked;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}, replies {:?}:\n{}",
            started.elapsed(),
            traffic.statuses,
            problems.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for status in [200, 401, 429, 503] {
        assert!(
            traffic.statuses.contains_key(&status),
            "the traffic got {status}: {:?}",
            traffic.statuses
        );
    }
    eprintln!(
        "{checked} expressions checked against Prometheus; replies {:?}; {:?} in all",
        traffic.statuses,
        started.elapsed()
    );
    traffic.svc.shutdown().await;
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // The unit tests cover every alert, both firing and not firing.
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in read_yaml(RULE_TESTS)["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            match case["exp_alerts"].as_sequence() {
                Some(alerts) if !alerts.is_empty() => firing.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    let alerts: BTreeSet<String> = rules()
        .into_iter()
        .filter(|(kind, _, _)| kind == "alert")
        .map(|(_, name, _)| name)
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    assert_eq!(firing, alerts, "alerts tested firing");
    assert_eq!(quiet, alerts, "alerts tested not firing");
    for name in PROVOKED {
        assert!(alerts.contains(name), "{name}");
    }
}

#[test]
fn the_dashboard_has_what_grafana_provisioning_needs() {
    let dashboard = read_json(DASHBOARD);
    let uid = dashboard["uid"].as_str().expect("a uid");
    assert!(!uid.is_empty() && uid.len() <= 40, "{uid}");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());

    // A data source variable of type prometheus, and the service and server variables.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let expected_datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    for name in ["service", "server"] {
        let variable = variable(name);
        assert_eq!(variable["type"], "query", "{name}");
        assert_eq!(variable["datasource"], expected_datasource, "{name}");
        assert_eq!(variable["includeAll"], true, "{name}");
        assert_eq!(variable["allValue"], ".*", "{name}");
    }

    let panels = dashboard_panels(&dashboard);
    assert!(panels.len() > 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title");
        assert!(!title.is_empty());
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id"
        );
        let grid = &panel["gridPos"];
        let (x, w, h) = (grid["x"].as_u64(), grid["w"].as_u64(), grid["h"].as_u64());
        let (Some(x), Some(w), Some(h)) = (x, w, h) else {
            panic!("{title}: gridPos {grid}");
        };
        assert!(
            w > 0 && h > 0 && x + w <= 24 && grid["y"].is_u64(),
            "{title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(panel["type"].is_string(), "{title}");
        assert_eq!(panel["datasource"], expected_datasource, "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"], expected_datasource, "{title}");
            assert!(ref_ids.insert(target["refId"].as_str().expect("a refId")));
            let expr = target["expr"].as_str().expect("an expr");
            assert!(!expr.trim().is_empty(), "{title}");
        }
    }
}

/// For the README: the same traffic for several minutes, then Prometheus's graph page of the
/// main panels' queries, photographed by headless Chromium into `docs/images/`. The pictures
/// show the last `SCREENSHOT_MINUTES` (4) minutes, after 5 minutes of warming up (the rates are
/// over 5 minutes); the archive fails twice in them.
#[tokio::test]
#[ignore = "takes minutes and needs chromium; run by hand to refresh the README's pictures"]
async fn screenshots() {
    let shown: u64 = std::env::var("SCREENSHOT_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(4);
    let mut traffic = Traffic::start().await;
    let prometheus = Prometheus::start(traffic.scrape_target()).await;
    prometheus.scraping().await;
    traffic.past_label_limits().await;
    let started = Instant::now();
    let warm_up = Duration::from_secs(5 * 60);
    let length = warm_up + Duration::from_secs(shown * 60);
    let shown_length = length - warm_up;
    let mut failures = [warm_up + shown_length / 4, warm_up + shown_length * 5 / 8]
        .into_iter()
        .peekable();
    while started.elapsed() < length {
        if failures.next_if(|at| started.elapsed() >= *at).is_some() {
            traffic.failing_phase(&prometheus, 20).await;
        }
        traffic.wave().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let dashboard = read_json(DASHBOARD);
    let all = BTreeMap::from([("service", ".*".to_owned()), ("server", ".*".to_owned())]);
    let shots = [
        (
            "auth-requests",
            "Auth requests per second by method and result",
        ),
        ("auth-latency", "Auth latency p50 / p95 / p99"),
        (
            "tool-executions",
            "Tool executions per second by server and tool",
        ),
        ("tool-errors", "Tool errors per second by error code"),
        ("ingestion", "Metric points accepted and refused per second"),
        ("refusals", "Requests per second by status (why refused)"),
        ("queue-fill", "Exporter queue fill"),
        ("export-failures", "Export failures per second"),
    ];
    let panels = panel_expressions(&dashboard);
    let images = repo_file("docs/images");
    std::fs::create_dir_all(&images).unwrap();
    for (file, title) in shots {
        let (_, expressions) = panels
            .iter()
            .find(|(t, _)| t == title)
            .unwrap_or_else(|| panic!("panel {title}"));
        let expr = one_graph(expressions, &all);
        let range = format!("{shown}m");
        let url = format!(
            "{}/classic/graph?g0.expr={}&g0.tab=0&g0.range_input={range}",
            prometheus.url,
            encode(&expr)
        );
        let profile = tempfile::tempdir().unwrap();
        let out = images.join(format!("{file}.png"));
        let status = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--virtual-time-budget=5000",
                "--window-size=1200,860",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={}", out.display()))
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("chromium runs");
        assert!(status.success(), "chromium for {title}");
        eprintln!("{} ({title})", out.display());
    }
    traffic.svc.shutdown().await;
}

/// A panel's targets as one expression for one graph: a single target as it is; several each
/// labelled `line` by its legend (`p95`; `gave up (points)` for `{{exporter}} gave up (points)`).
fn one_graph(expressions: &[Expression], values: &BTreeMap<&str, String>) -> String {
    let [only] = expressions else {
        return expressions
            .iter()
            .map(|e| {
                let line = e.legend.rsplit("}}").next().unwrap().trim();
                let expr = substitute(&e.expr, values);
                format!("label_replace({expr}, \"line\", \"{line}\", \"\", \"\")")
            })
            .collect::<Vec<_>>()
            .join(" or ");
    };
    substitute(&only.expr, values)
}

/// Percent-encoding for a query string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
