//! What the integration tests share: a real service on a loopback port with a real SQLite file
//! in a temporary folder, and a real HTTP client; and a real PostgreSQL server (`postgres`).
#![allow(dead_code)]

pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mcp_metrics::Service;
use mcp_metrics_store::Store;
use serde_json::{Value, json};

/// A running service and the folder its files live in.
pub struct TestService {
    pub service: Option<Service>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

/// The default pipeline, listening on a free loopback port, storing in `{dir}/metrics.db`.
/// `{dir}` in a config stands for the test's temporary folder. No batching, so tests need not
/// wait for a timeout; no retention, so the contract's 2024 example rows stay.
pub const DEFAULT_PIPELINE: &str = "
receivers:
  http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}
processors:
  auth: {database: '{dir}/metrics.db', refresh_interval: 200ms}
  validate: {}
exporters:
  sqlite: {path: '{dir}/metrics.db', retention_days: 0}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, validate], exporters: [sqlite]}
";

/// The default pipeline with one part changed; fails if that part is not in it, so a test never
/// runs on a config other than the one it means.
pub fn default_pipeline_with(part: &str, replacement: &str) -> String {
    edited(DEFAULT_PIPELINE, part, replacement)
}

/// `config` with `part` replaced; fails if `part` is not in it.
pub fn edited(config: &str, part: &str, replacement: &str) -> String {
    assert!(config.contains(part), "{part:?} is not in the config");
    config.replace(part, replacement)
}

impl TestService {
    pub async fn start() -> TestService {
        TestService::with_config(DEFAULT_PIPELINE).await
    }

    /// Starts a service from config text; `{dir}` is replaced by a fresh temporary folder.
    pub async fn with_config(yaml: &str) -> TestService {
        let dir = tempfile::tempdir().unwrap();
        TestService::in_dir(dir, yaml).await
    }

    pub async fn in_dir(dir: tempfile::TempDir, yaml: &str) -> TestService {
        let text = yaml.replace("{dir}", dir.path().to_str().unwrap());
        let config = mcp_metrics::parse(&text, "test config", &|name| std::env::var(name).ok())
            .unwrap_or_else(|errors| panic!("{errors}"));
        let service = Service::start(config).await.expect("service starts");
        let addr = service
            .receiver_addr("http")
            .expect("http receiver listens");
        TestService {
            service: Some(service),
            dir,
            addr,
            client: reqwest::Client::new(),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("metrics.db")
    }

    pub async fn store(&self) -> std::sync::Arc<Store> {
        Store::open(self.db_path()).await.unwrap()
    }

    /// A fresh active key for `service`.
    pub async fn key(&self, service: &str) -> String {
        self.store()
            .await
            .create_key(service, None, false)
            .await
            .unwrap()
            .1
    }

    /// A fresh active admin key.
    pub async fn admin_key(&self) -> String {
        self.store()
            .await
            .create_key("ops", None, true)
            .await
            .unwrap()
            .1
    }

    /// `method path` with a key and an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("X-API-Key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    /// `GET /health`, polled until `wanted` holds of it or `within` passes; the last reply.
    pub async fn health_until(&self, within: Duration, wanted: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let response = self.client.get(self.url("/health")).send().await.unwrap();
            let reply = Reply::from(response).await;
            if wanted(&reply) || tokio::time::Instant::now() > deadline {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a JSON body to /metrics with a key; returns status, headers and parsed body.
    pub async fn post(&self, key: Option<&str>, body: &Value) -> Reply {
        let mut request = self.client.post(self.url("/metrics")).json(body);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    /// The body of a GET of `url`.
    pub async fn get_text(&self, url: &str) -> String {
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Rows in `table`, waiting up to 5 s for `expected` of them (exports are asynchronous).
    pub async fn rows_eventually(&self, table: &str, expected: i64) -> i64 {
        let store = self.store().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let count = store.row_counts().await.unwrap()[table];
            if count >= expected || tokio::time::Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the service the way SIGTERM does: drain, then return.
    pub async fn shutdown(&mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown().await.expect("clean shutdown");
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("reply is not JSON: {text:?}"));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Asserts the contract's error body and returns its `error`.
    pub fn error(&self) -> &str {
        assert_eq!(self.body["status"], "error", "{}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        assert!(
            self.body["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("req_")),
            "{}",
            self.body
        );
        self.body["error"].as_str().unwrap()
    }
}

/// The contract's example request.
pub fn example_request() -> Value {
    json!({
        "service": "auth-server",
        "version": "1.0.0",
        "instance_id": "auth-01",
        "metrics": [{
            "type": "auth_request",
            "timestamp": "2024-01-15T10:30:00Z",
            "value": 1.0,
            "duration_ms": 45.2,
            "dimensions": {"method": "jwt", "success": true, "server": "mcpgw", "user_hash": "user_abc123"},
            "metadata": {"error_code": null, "request_size": 1024, "response_size": 512}
        }]
    })
}

/// A request of `metrics` for `service`.
pub fn request_of(service: &str, metrics: Vec<Value>) -> Value {
    json!({"service": service, "metrics": metrics})
}

/// A simple valid metric of a type.
pub fn metric(metric_type: &str) -> Value {
    json!({"type": metric_type, "value": 1.0, "duration_ms": 12.5, "dimensions": {"k": "v"}})
}

/// A `POST /metrics` of `body` with `key` to a service process listening at `address`.
pub fn metrics_request(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    client
        .post(format!("http://{address}/metrics"))
        .header("X-API-Key", key)
        .json(body)
}

/// The `/proc/<pid>/status` of a process.
pub fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

/// The process's resident memory, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let kib: f64 = proc_status(pid)
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The text of the Prometheus scrape endpoint at `address`, which must answer 200.
pub async fn scrape(client: &reqwest::Client, address: &str) -> String {
    let reply = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    reply.text().await.unwrap()
}

/// The `mcp-metrics` binary, run in `dir`, with no database path from the environment and the
/// scrape endpoint on a free port (tests run side by side).
pub fn mcp_metrics(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-metrics"));
    command
        .current_dir(dir)
        .env_remove("SQLITE_DB_PATH")
        .env("OTEL_PROMETHEUS_PORT", "0")
        .env("RUST_LOG", "info");
    command
}

/// The real binary run on `config` (written as `pipelines.yaml` in a fresh folder, where
/// `./metrics.db` is), with a key for service `svc` that no rate limit gets in the way of:
/// the folder, the process, the http receiver's address and the key.
pub async fn spawn_with_config(
    config: &str,
) -> (tempfile::TempDir, ServiceProcess, String, String) {
    let (dir, child, mut addresses, key) = spawn_in_fresh_folder(config, &["receiver=http"]).await;
    (dir, child, addresses.remove(0), key)
}

/// [`spawn_with_config`], waiting for the logged address of each of `components`.
async fn spawn_in_fresh_folder(
    config: &str,
    components: &[&str],
) -> (tempfile::TempDir, ServiceProcess, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipelines.yaml");
    std::fs::write(&path, config).unwrap();
    let key = Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap()
        .create_key("svc", Some(1_000_000), false)
        .await
        .unwrap()
        .1;
    let (child, addresses, _log) = spawn_service_logging(
        mcp_metrics(dir.path()).args(["run", "--config"]).arg(&path),
        components,
    );
    (dir, child, addresses, key)
}

/// What `run --print-config` prints with `env` set, in a fresh folder; fails if it fails.
pub fn print_config(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = mcp_metrics(dir.path())
        .args(["run", "--print-config"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// [`spawn_with_config`], and the address of the scrape endpoint of exporter `prometheus`.
pub async fn spawn_with_config_scraped(
    config: &str,
) -> (tempfile::TempDir, ServiceProcess, String, String, String) {
    let components = ["receiver=http", "exporter=prometheus"];
    let (dir, child, mut addresses, key) = spawn_in_fresh_folder(config, &components).await;
    let scrape = addresses.pop().unwrap();
    let address = addresses.pop().unwrap();
    (dir, child, address, key, scrape)
}

/// Spawns the service and waits for the http receiver's address in its log; the log's lines
/// keep arriving on the returned channel.
pub fn spawn_service(command: &mut Command) -> (ServiceProcess, String, mpsc::Receiver<String>) {
    let (child, mut addresses, log) = spawn_service_logging(command, &["receiver=http"]);
    (child, addresses.pop().unwrap(), log)
}

/// Spawns the service and waits until it has logged the address of each component (as the log
/// names it: `receiver=http`), in that order; the log's lines keep arriving on the channel.
pub fn spawn_service_logging(
    command: &mut Command,
    components: &[&str],
) -> (ServiceProcess, Vec<String>, mpsc::Receiver<String>) {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let (lines, log) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut found: Vec<Option<String>> = vec![None; components.len()];
    while let Ok(line) = log.recv_timeout(Duration::from_secs(20)) {
        for (component, address) in components.iter().zip(&mut found) {
            let tagged = line.split_whitespace().any(|field| field == *component);
            if tagged && let Some(at) = line.find("address=") {
                let value = line[at + "address=".len()..].split_whitespace().next();
                *address = value.map(str::to_owned);
            }
        }
        if found.iter().all(Option::is_some) {
            return (
                ServiceProcess(child),
                found.into_iter().flatten().collect(),
                log,
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the service did not log the addresses of {components:?}");
}

/// A service process, killed if a test fails before stopping it (an orphan would keep the
/// test run's output open).
pub struct ServiceProcess(Child);

impl ServiceProcess {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM and returns the exit code.
pub fn terminate(process: &mut ServiceProcess) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    process
        .0
        .wait()
        .unwrap()
        .code()
        .expect("exited, not killed")
}

/// Another writer holding the database at `path` (as `BEGIN EXCLUSIVE`), until released.
pub struct DatabaseLock(sqlx::SqliteConnection);

impl DatabaseLock {
    pub async fn take(path: &Path) -> DatabaseLock {
        use sqlx::Connection;
        let url = format!("sqlite://{}", path.display());
        let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut connection)
            .await
            .unwrap();
        DatabaseLock(connection)
    }

    pub async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}
