//! The `postgres` scenario: batches through two replicas sharing one PostgreSQL database, against
//! the ceiling measured in the same run: the same rows bulk-loaded by one client with COPY (the
//! service's writer), and with UNNEST arrays, the other way measured.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_metrics_store::{Database, PgWrite};
use sqlx::Connection;

use crate::load::{self, Load};
use crate::server::{self, wait_healthy};
use crate::{Options, RunFigures, median_of, workload};

/// Metrics per transaction in the ceilings: what the service's exporter queue merges at most.
const MERGED: usize = 5000;

struct Run {
    service: RunFigures,
    copy: f64,
    unnest: f64,
}

pub async fn scenario(options: &Options, server_url: &str, batch: usize) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for run in 0..options.runs {
        let name = |what: &str| format!("mcp_metrics_bench_{}_{what}_{run}", std::process::id());
        let ceiling_time = Duration::from_secs(options.seconds.min(3));
        let copy = ceiling(
            &fresh_database(server_url, &name("copy")).await?,
            PgWrite::Copy,
            ceiling_time,
        )
        .await?;
        let unnest = ceiling(
            &fresh_database(server_url, &name("unnest")).await?,
            PgWrite::Unnest,
            ceiling_time,
        )
        .await?;
        let service = two_replicas(
            options,
            &fresh_database(server_url, &name("service")).await?,
            batch,
        )
        .await?;
        println!(
            "  run {}: {:.0} metrics/s through two replicas, rows {}/{}; COPY {:.0}, UNNEST {:.0} metrics/s",
            run + 1,
            service.metrics_per_second,
            service.stored,
            service.acknowledged,
            copy,
            unnest
        );
        runs.push(Run {
            service,
            copy,
            unnest,
        });
    }
    let median = |f: &dyn Fn(&Run) -> f64| median_of(runs.iter().map(f).collect());
    let service = median(&|r| r.service.metrics_per_second);
    let (copy, unnest) = (median(&|r| r.copy), median(&|r| r.unnest));
    println!(
        "postgres: batch of {batch} through two replicas (median of {}):",
        runs.len()
    );
    println!("  metrics/s         {service:>12.0}");
    println!(
        "  latency p50/p99 ms {:.2} / {:.2}",
        median(&|r| r.service.p50_ms),
        median(&|r| r.service.p99_ms)
    );
    println!(
        "  COPY ceiling      {copy:>12.0} metrics/s (same rows, {MERGED} per transaction, one client; the service's writer)"
    );
    println!(
        "  UNNEST            {unnest:>12.0} metrics/s (same rows, INSERT ... SELECT FROM UNNEST)"
    );
    println!("  UNNEST / COPY     {:>12.2}", unnest / copy);
    println!("  service/ceiling   {:>12.2}", service / copy);
    let missing: i64 = runs
        .iter()
        .map(|r| (r.service.acknowledged as i64 - r.service.stored).max(0))
        .sum();
    println!("  acknowledged metrics missing from PostgreSQL: {missing}");
    println!();
    Ok(())
}

/// A new, empty database on the server `url` names; its URL.
pub async fn fresh_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let create = format!("CREATE DATABASE {name}");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut connection)
        .await?;
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Metrics per second one client writes with `method`, `MERGED` per transaction.
async fn ceiling(url: &str, method: PgWrite, duration: Duration) -> anyhow::Result<f64> {
    let Database::Postgres(store) = Database::open(url).await? else {
        bail!("{url} is not PostgreSQL");
    };
    let mut batch = workload::batch(MERGED, chrono::Utc::now()).await?;
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < duration {
        store.write_batch_with(&batch, method).await?;
        written += batch.len();
        for metric in &mut Arc::make_mut(&mut batch.requests[0]).metrics {
            metric.timestamp += chrono::Duration::milliseconds(10);
        }
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

/// Two replicas of the service on `database`, each driven by half the connections.
async fn two_replicas(
    options: &Options,
    database: &str,
    batch: usize,
) -> anyhow::Result<RunFigures> {
    let store = Database::open(database).await?;
    let (_, key) = store
        .create_key("auth-server", Some(u32::MAX), false)
        .await?;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(start_replica(options, database).await?);
    }
    let half = Load {
        connections: (options.connections / 2).max(1),
        ..Load::flat_out(batch, options)
    };
    let drives = replicas
        .iter()
        .map(|(_, url, _)| load::drive(url, &key, half, None));
    let halves = futures::future::try_join_all(drives).await?;
    for (mut child, _, _dir) in replicas {
        server::stop(&mut child, "a replica")?;
    }
    let stored = store.row_counts().await?["metrics"];
    store.close().await;
    let sum = |f: &dyn Fn(&RunFigures) -> f64| halves.iter().map(f).sum::<f64>();
    let mut latencies: Vec<f64> = halves.iter().map(|h| h.p50_ms).collect();
    let p50 = median_of(std::mem::take(&mut latencies));
    Ok(RunFigures {
        requests_per_second: sum(&|h| h.requests_per_second),
        metrics_per_second: sum(&|h| h.metrics_per_second),
        p50_ms: p50,
        p99_ms: halves.iter().map(|h| h.p99_ms).fold(0.0, f64::max),
        acknowledged: halves.iter().map(|h| h.acknowledged).sum(),
        stored,
        ..RunFigures::default()
    })
}

/// A replica on the embedded default config (run in an empty folder, so no `pipelines.yaml` is
/// found), with DATABASE_URL set.
async fn start_replica(
    options: &Options,
    database: &str,
) -> anyhow::Result<(Child, String, tempfile::TempDir)> {
    let port = server::free_port()?;
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(&options.server)
        .arg("run")
        .current_dir(dir.path())
        .env("DATABASE_URL", database)
        .env("METRICS_SERVICE_HOST", "127.0.0.1")
        .env("METRICS_SERVICE_PORT", port.to_string())
        .env("OTEL_PROMETHEUS_PORT", "0")
        .env("FLUSH_INTERVAL_SECONDS", "1")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("starting a replica")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url, &mut child).await?;
    Ok((child, url, dir))
}
