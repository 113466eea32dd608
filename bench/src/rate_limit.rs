//! `rate-limit`: what the `rate_limit` processor costs per request with the `fleet` policy
//! against the `local` one. The real processor, built from its config as the service builds it,
//! judges request heads from 8 tasks at once; the `fleet` one leases from a real PostgreSQL
//! (a fresh database on the `--postgres` server). The loads:
//! - within the limit: 64 keys, 1000 requests each, all admitted, at the default limit (1000 a
//!   minute: the fleet policy leases once every 5 requests) and at 60,000 a minute (once every
//!   300);
//! - over the limit: one key at the default limit flooded with 128,000 requests: after its 1000,
//!   all refused.
//!
//! Reported per request: wall time, this process's CPU and the PostgreSQL server's CPU (every
//! process of its cluster), medians of `--runs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use mcp_metrics_plugin::{KeyInfo, Processor, ProcessorConfig, RequestHead};
use mcp_metrics_processors::rate_limit::{Policy, RateLimitConfig};

use crate::median_of;

const TASKS: usize = 8;
const KEYS: usize = 64;
const PER_KEY: usize = 1000;
const FLOOD: usize = 128_000;

/// Key ids no run has used (the database is a fresh one), so every run starts with full shared
/// buckets.
static NEXT_KEY: AtomicI64 = AtomicI64::new(1);

#[derive(Clone, Copy, Debug)]
enum Load {
    /// Keys at this limit a minute.
    WithinLimit(u32),
    OverLimit,
}

#[derive(Default, Clone, Copy)]
struct Figures {
    wall_ns: f64,
    cpu_ns: f64,
    postgres_cpu_ns: f64,
    admitted: f64,
}

pub async fn report(postgres: &str, runs: usize) -> anyhow::Result<()> {
    println!(
        "rate limiter, {TASKS} tasks judging heads at once, medians of {runs} runs (per request)"
    );
    let postmaster = postmaster_pid(postgres).await?;
    for load in [
        Load::WithinLimit(1000),
        Load::WithinLimit(60_000),
        Load::OverLimit,
    ] {
        let mut by_policy = Vec::new();
        for policy in [Policy::Local, Policy::Fleet] {
            let mut figures = Vec::new();
            for _ in 0..runs {
                figures.push(measure(postgres, postmaster, policy, load).await?);
            }
            let median = |f: fn(&Figures) -> f64| median_of(figures.iter().map(f).collect());
            let median = Figures {
                wall_ns: median(|f| f.wall_ns),
                cpu_ns: median(|f| f.cpu_ns),
                postgres_cpu_ns: median(|f| f.postgres_cpu_ns),
                admitted: median(|f| f.admitted),
            };
            println!(
                "  {load:?}, {policy:?}: {:.2} µs wall, {:.2} µs CPU here, {:.2} µs PostgreSQL \
                 CPU, {:.0} admitted",
                median.wall_ns / 1e3,
                median.cpu_ns / 1e3,
                median.postgres_cpu_ns / 1e3,
                median.admitted
            );
            by_policy.push(median);
        }
        let (local, fleet) = (by_policy[0], by_policy[1]);
        println!(
            "  {load:?}: fleet / local = {:.2} wall, {:.2} CPU (here + PostgreSQL)",
            fleet.wall_ns / local.wall_ns,
            (fleet.cpu_ns + fleet.postgres_cpu_ns) / (local.cpu_ns + local.postgres_cpu_ns)
        );
    }
    Ok(())
}

async fn measure(
    postgres: &str,
    postmaster: u32,
    policy: Policy,
    load: Load,
) -> anyhow::Result<Figures> {
    let config = RateLimitConfig {
        database: Some(postgres.to_owned()),
        policy: Some(policy),
        ..RateLimitConfig::default()
    };
    let cx = crate::build_context("rate_limit");
    let shutdown = cx.shutdown.clone();
    let processor = config
        // Nothing follows the rate limiter here.
        .build(&cx, Arc::new(crate::Kept::default()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys: Vec<i64> = match load {
        Load::WithinLimit(_) => (0..KEYS)
            .map(|_| NEXT_KEY.fetch_add(1, Ordering::Relaxed))
            .collect(),
        Load::OverLimit => vec![NEXT_KEY.fetch_add(1, Ordering::Relaxed)],
    };
    let (requests, limit) = match load {
        Load::WithinLimit(limit) => (KEYS * PER_KEY, Some(limit)),
        Load::OverLimit => (FLOOD, None),
    };

    let postgres_before = cluster_cpu(postmaster);
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (processor, keys) = (processor.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            for request in (task..requests).step_by(TASKS) {
                if judge(&*processor, keys[request % keys.len()], limit).await {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await?;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self") - cpu_before;
    let postgres_cpu = cluster_cpu(postmaster).since(&postgres_before);
    shutdown.cancel();

    let per_request = |seconds: f64| seconds * 1e9 / requests as f64;
    Ok(Figures {
        wall_ns: per_request(wall),
        cpu_ns: per_request(cpu),
        postgres_cpu_ns: per_request(postgres_cpu),
        admitted: admitted as f64,
    })
}

/// One request's head judged; `limit` is the key's own (none: the default).
async fn judge(processor: &dyn Processor, key: i64, limit: Option<u32>) -> bool {
    let mut head = RequestHead {
        credential: Some("bench".into()),
        key: Some(KeyInfo {
            id: key,
            service_name: "bench".into(),
            rate_limit: limit,
            is_admin: false,
        }),
        ..RequestHead::default()
    };
    processor.admit(&mut head).await.is_ok()
}

/// The PostgreSQL server's main process, the parent of every backend.
async fn postmaster_pid(url: &str) -> anyhow::Result<u32> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut connection)
        .await?;
    connection.close().await?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).map_err(|e| {
        anyhow::anyhow!("the PostgreSQL server must run on this machine to count its CPU: {e}")
    })?;
    stat_fields(&stat)
        .get(1)
        .and_then(|ppid| ppid.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no parent in /proc/{backend}/stat"))
}

/// CPU seconds of the postmaster and each of its children, by process.
struct ClusterCpu(HashMap<u32, f64>);

fn cluster_cpu(postmaster: u32) -> ClusterCpu {
    let mut cpu = HashMap::new();
    cpu.insert(postmaster, cpu_seconds(&postmaster.to_string()));
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat_fields(&stat).get(1) == Some(&postmaster.to_string().as_str()) {
            cpu.insert(pid, cpu_seconds(&pid.to_string()));
        }
    }
    ClusterCpu(cpu)
}

impl ClusterCpu {
    /// CPU used since `before`, by the processes alive now (a backend started since counts in
    /// full).
    fn since(&self, before: &ClusterCpu) -> f64 {
        self.0
            .iter()
            .map(|(pid, now)| now - before.0.get(pid).copied().unwrap_or(0.0))
            .sum()
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces): state, ppid, ...
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect()
}

/// CPU seconds process `pid` (`self` for this one) has run, all its threads: the scheduler's
/// nanoseconds (`schedstat`), not `stat`'s 10 ms ticks, which are too coarse for a run of the
/// local policy.
fn cpu_seconds(pid: &str) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter();
    let nanoseconds: u64 = tasks
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanoseconds as f64 / 1e9
}
