//! The service under test: started from its release binary with the shipped `pipelines.yaml` on
//! loopback and a temporary database, sampled for RSS and CPU, stopped with SIGTERM, and its rows
//! counted against what it acknowledged.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_metrics_store::Store;

use crate::load::{self, Load};
use crate::{Options, RunFigures, workload};

/// Who sends the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A key with no practical rate limit.
    Keyed,
    /// A key the service does not know: every request is refused from its head.
    WrongKey,
}

/// How the service acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 once the metrics are held (the shipped default).
    Default,
    /// 200 once committed (`acknowledgements: true`).
    Durable,
}

/// A key no service knows.
pub const WRONG_KEY: &str = "mcp_metrics_not-a-key-this-service-knows";

pub async fn measure(
    options: &Options,
    dir: &Path,
    load: Load,
    caller: Caller,
    mode: Mode,
) -> anyhow::Result<RunFigures> {
    if !options.server.exists() {
        bail!(
            "no service binary at {}; run `cargo build --release` first",
            options.server.display()
        );
    }
    let database = dir.join("metrics.db");
    let key = match caller {
        Caller::Keyed => create_key(options, &database)?,
        Caller::WrongKey => WRONG_KEY.to_owned(),
    };
    let rows_before = rows(&database).await?;
    let port = free_port()?;
    let started = Instant::now();
    let mut child = Command::new(&options.server)
        .arg("run")
        .current_dir(dir)
        .env("METRICS_SERVICE_HOST", "127.0.0.1")
        .env("METRICS_SERVICE_PORT", port.to_string())
        .env("SQLITE_DB_PATH", &database)
        .env("OTEL_PROMETHEUS_PORT", "0")
        .env("FLUSH_INTERVAL_SECONDS", "1")
        .env(
            "METRICS_ACKNOWLEDGEMENTS",
            (mode == Mode::Durable).to_string(),
        )
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("starting the service")?;
    let url = format!("http://127.0.0.1:{port}");
    let startup = wait_healthy(&url, &mut child).await?;
    let startup_ms = (startup - started).as_secs_f64() * 1000.0;

    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_rss(child.id(), peak_rss.clone()));
    let mut figures = drive_counting_cpu(child.id(), &url, &key, load, Some(sampler)).await?;
    figures.peak_rss_mb = peak_rss.load(Ordering::Relaxed) as f64 / 1024.0;
    figures.startup_ms = startup_ms;

    stop(&mut child, "the service")?;
    figures.stored = rows(&database).await? - rows_before;
    Ok(figures)
}

/// A loopback port free now, for a server about to be started.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Drives `load` on `url` (see [`load::drive`]) and counts the CPU that process `pid`, the
/// server, spent meanwhile.
pub async fn drive_counting_cpu(
    pid: u32,
    url: &str,
    key: &str,
    load: Load,
    during: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<RunFigures> {
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut figures = load::drive(url, key, load, during).await?;
    figures.cpu_seconds = cpu_seconds(pid) - cpu_before;
    figures.cpu_percent = figures.cpu_seconds / started.elapsed().as_secs_f64() * 100.0;
    Ok(figures)
}

/// Stops a service process with SIGTERM; fails unless it exits cleanly.
pub fn stop(child: &mut Child, what: &str) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} exited with {status} on SIGTERM");
    }
    Ok(())
}

fn create_key(options: &Options, database: &Path) -> anyhow::Result<String> {
    let output = Command::new(&options.server)
        .args([
            "keys",
            "create",
            "--service",
            "auth-server",
            "--rate-limit",
            "4000000000",
            "--database",
        ])
        .arg(database)
        .output()?;
    let stdout = String::from_utf8(output.stdout)?;
    stdout
        .lines()
        .last()
        .map(str::to_owned)
        .context("keys create printed no key")
}

async fn rows(database: &Path) -> anyhow::Result<i64> {
    let store = Store::open(database).await?;
    let count = store.row_counts().await?["metrics"];
    workload::check_typed_rows(&store).await?;
    store.close().await;
    Ok(count)
}

/// When `/health` first answered 200.
pub async fn wait_healthy(url: &str, child: &mut Child) -> anyhow::Result<Instant> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(reply) = client.get(format!("{url}/health")).send().await
            && reply.status() == 200
        {
            return Ok(Instant::now());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the service exited during start-up: {status}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = child.kill();
    bail!("the service was not healthy within 20 s")
}

/// Keeps the highest VmRSS (KiB) seen, every 50 ms.
async fn sample_rss(pid: u32, peak: Arc<AtomicU64>) {
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0);
            peak.fetch_max(rss, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// User plus system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}
