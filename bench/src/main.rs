//! `mcp-metrics-bench`: starts the real service on loopback with a temporary database, drives
//! `POST /metrics` from N connections for a set time with batches of 1 and of 100 mixed metrics,
//! and reports throughput, latency, errors, the server's peak RSS and CPU, and whether the rows in
//! SQLite equal the metrics acknowledged. In the same run it measures the ceiling: how fast this
//! machine's SQLite takes the same rows without HTTP. Every figure is the median of `--runs`.

mod load;
mod server;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

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
    /// Measure only the SQLite ceiling, for `--seconds`.
    #[arg(long)]
    pub ceiling_only: bool,
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
    pub startup_ms: f64,
    pub acknowledged: u64,
    pub stored: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    if options.ceiling_only {
        for rows in [100, MERGED] {
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
    for &batch in &options.batches {
        let mut runs = Vec::new();
        let mut ceilings = Vec::new();
        let dir = tempfile::tempdir()?;
        for run in 0..options.runs {
            let figures = match &options.url {
                Some(url) => {
                    load::drive(
                        url,
                        options.key.as_deref().unwrap_or_default(),
                        batch,
                        &options,
                        None,
                    )
                    .await?
                }
                None => server::measure(&options, dir.path(), batch).await?,
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
        }
        report(batch, &runs, &ceilings, options.url.is_none());
    }
    Ok(())
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
