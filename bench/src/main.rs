//! `mcp-metrics-bench`: starts the real service on loopback with a temporary database, drives
//! `POST /metrics` from N connections for a set time with batches of 1 and of 100 mixed metrics,
//! and reports throughput, latency, errors, the server's peak RSS and CPU, and whether the rows in
//! SQLite equal the metrics acknowledged. In the same run it measures the ceiling: how fast this
//! machine's SQLite takes the same rows without HTTP. Every figure is the median of `--runs`.

mod floor;
mod load;
mod postgres;
mod rate_limit;
mod server;
mod wire;

use load::Load;
use server::{Caller, Mode};
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mcp_metrics_plugin::{
    Batch, BuildContext, CancellationToken, Consumer, Outcome, Refusal, async_trait,
};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for mcp-metrics")]
pub struct Options {
    /// The service binary (build it with `cargo build --release`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/mcp-metrics"))]
    pub server: PathBuf,
    /// Drive an already running service instead (with --key); no server figures then.
    #[arg(long, requires = "key")]
    pub url: Option<String>,
    #[arg(long)]
    pub key: Option<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Runs per scenario; figures are medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Metrics per request, one scenario each.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub batches: Vec<usize>,
    /// Measure only the SQLite ceiling, for `--seconds`, at 1 to 5000 metrics per transaction.
    #[arg(long)]
    pub ceiling_only: bool,
    /// Scenarios to run: `overload` (every batch size, clients resending every refusal at
    /// once), `refusal` (a wrong key, flat out: the CPU a refusal costs), `steady` (a steady
    /// `--steady-rate`: CPU and memory at an ordinary load), `durable` (each overload run again
    /// with `acknowledgements: true`, right after it; named alone, it runs the overload too);
    /// with `--postgres`, `postgres` and `rate-limit` (see there).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "overload,durable,refusal,steady"
    )]
    pub scenarios: Vec<String>,
    /// Metrics per second of the steady scenario, in requests of 100.
    #[arg(long, default_value_t = 10_000)]
    pub steady_rate: u64,
    /// A PostgreSQL server (`postgres://user@host:port/db`, a user that may create databases):
    /// adds the `postgres` scenario, two replicas on a fresh database of it, batches of 100,
    /// against COPY and the service's own writer in the same run; and the `rate-limit` one, the
    /// rate limiter's cost per request with the fleet policy against the local one (the server
    /// on this machine, whose CPU is counted too). Name one in `--scenarios` for it alone.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Be the refusal floor's server on this loopback port instead (see `floor`).
    #[arg(long = &floor::FLAG[2..], hide = true)]
    pub refusal_floor_port: Option<u16>,
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
pub struct RunFigures {
    pub requests_per_second: f64,
    pub metrics_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: Vec<(String, u64)>,
    pub peak_rss_mb: f64,
    pub cpu_percent: f64,
    /// CPU seconds the service used during the load.
    pub cpu_seconds: f64,
    /// Requests not answered 200.
    pub refused: u64,
    /// How long the load ran.
    pub seconds: f64,
    pub startup_ms: f64,
    pub acknowledged: u64,
    pub stored: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    if let Some(port) = options.refusal_floor_port {
        return floor::serve(port).await;
    }
    if options.ceiling_only {
        for rows in [1, 16, 32, 100, MERGED] {
            let rate = workload::sqlite_ceiling(rows, Duration::from_secs(options.seconds)).await?;
            println!("SQLite ceiling, {rows} metrics per transaction: {rate:.0} metrics/s");
        }
        return Ok(());
    }
    println!(
        "machine: {} cores, {}; load generator and service share it",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!(
        "{} connections, {} s per run, {} runs per scenario, medians\n",
        options.connections, options.seconds, options.runs
    );
    let runs_of = |load: Load, caller: Caller| {
        let options = options.clone();
        async move {
            let dir = tempfile::tempdir()?;
            let mut runs = Vec::new();
            for _ in 0..options.runs {
                let mode = Mode::Default;
                runs.push(server::measure(&options, dir.path(), load, caller, mode).await?);
            }
            anyhow::Ok(runs)
        }
    };
    let wants = |name: &str| options.scenarios.iter().any(|s| s == name);
    // --postgres adds both PostgreSQL scenarios, unless one is named.
    let one_named = wants("postgres") || wants("rate-limit");
    let postgres_wants = |name: &str| options.postgres.is_some() && (wants(name) || !one_named);
    if wants("rate-limit") && options.postgres.is_none() {
        anyhow::bail!("the rate-limit scenario needs --postgres postgres://user@host:port/db");
    }
    if let (true, Some(server)) = (postgres_wants("rate-limit"), &options.postgres) {
        let name = format!("mcp_metrics_bench_{}_rate_limit", std::process::id());
        rate_limit::report(
            &postgres::fresh_database(server, &name).await?,
            options.runs,
        )
        .await?;
    }
    if wants("refusal") && options.url.is_none() {
        for &batch in &options.batches {
            let load = Load::flat_out(batch, &options);
            let mut service = Vec::new();
            let mut floor = Vec::new();
            // Alternating, so both see the same moments of a noisy machine.
            for _ in 0..options.runs {
                let dir = tempfile::tempdir()?;
                let (caller, mode) = (Caller::WrongKey, Mode::Default);
                service.push(server::measure(&options, dir.path(), load, caller, mode).await?);
                floor.push(floor::measure(load).await?);
            }
            report_refusals(batch, &service, &floor);
        }
    }
    if wants("steady") && options.url.is_none() {
        // Four connections, each at a quarter of the rate.
        let requests_per_second = options.steady_rate as f64 / 100.0;
        let load = Load {
            pace: Some(Duration::from_secs_f64(4.0 / requests_per_second)),
            connections: 4,
            ..Load::flat_out(100, &options)
        };
        report_steady(&options, &runs_of(load, Caller::Keyed).await?);
    }
    if let (true, Some(server)) = (postgres_wants("postgres"), &options.postgres) {
        postgres::scenario(&options, server, 100).await?;
    }
    // Durable runs are measured against the default mode's, so naming it runs both.
    let batches = if wants("overload") || wants("durable") {
        options.batches.clone()
    } else {
        Vec::new()
    };
    for &batch in &batches {
        let mut runs = Vec::new();
        let mut durable = Vec::new();
        let mut ceilings = Vec::new();
        let dir = tempfile::tempdir()?;
        for run in 0..options.runs {
            let figures = match &options.url {
                Some(url) => {
                    load::drive(
                        url,
                        options.key.as_deref().unwrap_or_default(),
                        Load::flat_out(batch, &options),
                        None,
                    )
                    .await?
                }
                None => {
                    let load = Load::flat_out(batch, &options);
                    let (keyed, mode) = (Caller::Keyed, Mode::Default);
                    server::measure(&options, dir.path(), load, keyed, mode).await?
                }
            };
            let ceiling_time = Duration::from_secs(options.seconds.min(3));
            let ceiling = workload::sqlite_ceiling(100, ceiling_time).await?;
            let merged_ceiling = workload::sqlite_ceiling(MERGED, ceiling_time).await?;
            println!(
                "  run {}: {:.0} req/s, {:.0} metrics/s, p99 {:.2} ms, rss {:.1} MB, rows {}/{}, ceiling {:.0} metrics/s",
                run + 1,
                figures.requests_per_second,
                figures.metrics_per_second,
                figures.p99_ms,
                figures.peak_rss_mb,
                figures.stored,
                figures.acknowledged,
                ceiling
            );
            runs.push(figures);
            ceilings.push((ceiling, merged_ceiling));
            if wants("durable") && options.url.is_none() {
                // Right after the default run, in the same conditions.
                let load = Load::flat_out(batch, &options);
                let durable_dir = tempfile::tempdir()?;
                let (keyed, mode) = (Caller::Keyed, Mode::Durable);
                durable
                    .push(server::measure(&options, durable_dir.path(), load, keyed, mode).await?);
            }
        }
        report(batch, &runs, &ceilings, options.url.is_none());
        if !durable.is_empty() {
            report_durable(batch, &runs, &durable);
        }
    }
    Ok(())
}

/// Durable mode against the default mode, run by run.
fn report_durable(batch: usize, default: &[RunFigures], durable: &[RunFigures]) {
    let median = |runs: &[RunFigures], f: &dyn Fn(&RunFigures) -> f64| {
        median_of(runs.iter().map(f).collect())
    };
    let requests = |r: &RunFigures| r.requests_per_second;
    let metrics = |r: &RunFigures| r.metrics_per_second;
    println!(
        "durable mode, batch of {batch} (median of {}):",
        durable.len()
    );
    println!(
        "  requests/s        {:>12.0}   durable / default mode: {:.2}",
        median(durable, &requests),
        median(durable, &requests) / median(default, &requests)
    );
    println!(
        "  metrics/s         {:>12.0}   durable / default mode: {:.2}",
        median(durable, &metrics),
        median(durable, &metrics) / median(default, &metrics)
    );
    println!(
        "  latency p50/p99/p999 ms  {:.2} / {:.2} / {:.2}",
        median(durable, &|r| r.p50_ms),
        median(durable, &|r| r.p99_ms),
        median(durable, &|r| r.p999_ms)
    );
    let missing: i64 = durable
        .iter()
        .map(|r| (r.acknowledged as i64 - r.stored).max(0))
        .sum();
    println!("  acknowledged metrics missing from SQLite: {missing}");
    println!();
}

/// The most metrics the service's exporter queue merges into one transaction (`batch_max_size`).
const MERGED: usize = 5000;

fn report(batch: usize, runs: &[RunFigures], ceilings: &[(f64, f64)], local: bool) {
    let median = |f: &dyn Fn(&RunFigures) -> f64| median(runs.iter().map(f).collect());
    let ceiling = median_of(ceilings.iter().map(|c| c.0).collect());
    let merged_ceiling = median_of(ceilings.iter().map(|c| c.1).collect());
    let metrics = median(&|r| r.metrics_per_second);
    println!("batch of {batch} metrics (median of {}):", runs.len());
    println!(
        "  requests/s        {:>12.0}",
        median(&|r| r.requests_per_second)
    );
    println!("  metrics/s         {:>12.0}", metrics);
    println!(
        "  latency p50/p99/p999 ms  {:.2} / {:.2} / {:.2}",
        median(&|r| r.p50_ms),
        median(&|r| r.p99_ms),
        median(&|r| r.p999_ms)
    );
    println!(
        "  SQLite ceiling    {:>12.0} metrics/s (same rows, 100 per transaction, no HTTP)",
        ceiling
    );
    println!("  service/ceiling   {:>12.2}", metrics / ceiling);
    println!(
        "  SQLite ceiling    {:>12.0} metrics/s ({MERGED} per transaction, as the service merges)",
        merged_ceiling
    );
    println!("  service/ceiling   {:>12.2}", metrics / merged_ceiling);
    let mut errors: Vec<String> = runs
        .iter()
        .flat_map(|r| r.errors.iter().map(|(k, n)| format!("{k}: {n}")))
        .collect();
    errors.dedup();
    println!(
        "  errors            {}",
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    );
    if local {
        println!(
            "  server peak RSS   {:>12.1} MB",
            median(&|r| r.peak_rss_mb)
        );
        println!(
            "  server CPU        {:>12.0} % of one core",
            median(&|r| r.cpu_percent)
        );
        println!(
            "  server CPU per accepted metric {:>6.2} µs (all its work, refusals included)",
            median(&|r| r.cpu_seconds / r.acknowledged.max(1) as f64 * 1e6)
        );
        println!(
            "  refused requests/s {:>11.0}",
            median(&|r| r.refused as f64 / r.seconds)
        );
        println!(
            "  startup→healthy   {:>12.1} ms (existing database)",
            median_of(runs.iter().skip(1).map(|r| r.startup_ms).collect())
        );
        let missing: i64 = runs
            .iter()
            .map(|r| (r.acknowledged as i64 - r.stored).max(0))
            .sum();
        let extra: i64 = runs
            .iter()
            .map(|r| (r.stored - r.acknowledged as i64).max(0))
            .sum();
        println!(
            "  acknowledged metrics missing from SQLite: {missing}; rows beyond those acknowledged: {extra}"
        );
    }
    println!();
}

/// What a refusal from the head costs the service: its CPU over the requests it refused.
fn report_refusals(batch: usize, runs: &[RunFigures], floor: &[RunFigures]) {
    let median = |f: &dyn Fn(&RunFigures) -> f64| median(runs.iter().map(f).collect());
    let per_refusal = |r: &RunFigures| r.cpu_seconds / r.refused.max(1) as f64 * 1e6;
    let floor_per_refusal = median_of(floor.iter().map(per_refusal).collect());
    println!(
        "refusals: a wrong key, bodies of {batch} metrics, flat out (median of {}):",
        runs.len()
    );
    println!(
        "  refused requests/s {:>11.0}",
        median(&|r| r.refused as f64 / r.seconds)
    );
    println!(
        "  server CPU per refused request {:>6.2} µs",
        median(&per_refusal)
    );
    println!(
        "  floor: a bare axum server answering the same 401, {:.2} µs ({:.0} refused/s); service / floor {:.2}",
        floor_per_refusal,
        median_of(floor.iter().map(|r| r.refused as f64 / r.seconds).collect()),
        median(&per_refusal) / floor_per_refusal
    );
    println!(
        "  server CPU        {:>12.0} % of one core",
        median(&|r| r.cpu_percent)
    );
    println!();
}

/// An ordinary steady load: what the service costs while it keeps up.
fn report_steady(options: &Options, runs: &[RunFigures]) {
    let median = |f: &dyn Fn(&RunFigures) -> f64| median(runs.iter().map(f).collect());
    println!(
        "steady: {} metrics/s in requests of 100 from 4 connections (median of {}):",
        options.steady_rate,
        runs.len()
    );
    println!(
        "  metrics/s         {:>12.0}",
        median(&|r| r.metrics_per_second)
    );
    println!(
        "  server CPU        {:>12.1} % of one core",
        median(&|r| r.cpu_percent)
    );
    println!(
        "  server peak RSS   {:>12.1} MB",
        median(&|r| r.peak_rss_mb)
    );
    println!(
        "  latency p50/p99 ms {:.2} / {:.2}",
        median(&|r| r.p50_ms),
        median(&|r| r.p99_ms)
    );
    println!();
}

fn median(values: Vec<f64>) -> f64 {
    median_of(values)
}

pub fn median_of(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// What the service tells a component it builds, for one built here alone.
pub fn build_context(id: &str) -> BuildContext {
    BuildContext {
        id: id.into(),
        shutdown: CancellationToken::new(),
        listeners: Default::default(),
        telemetry: Default::default(),
        extensions: Default::default(),
    }
}

/// The end of a pipeline built here alone: keeps the last batch that reaches it.
#[derive(Default)]
pub struct Kept(std::sync::Mutex<Option<Batch>>);

impl Kept {
    pub fn take(&self) -> Option<Batch> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait]
impl Consumer for Kept {
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(batch);
        Ok(Outcome::default())
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median_of(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median_of(vec![]).is_nan());
    }
}
