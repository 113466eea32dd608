//! Driving `POST /metrics` from many connections for a set time, timing every request.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{Options, RunFigures, wire, workload};

/// What load to drive.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Metrics per request.
    pub batch: usize,
    pub connections: usize,
    pub seconds: u64,
    /// Each connection sends one request per `pace` (a steady rate); none: as fast as answers
    /// come back, every refusal sent again at once.
    pub pace: Option<Duration>,
}

impl Load {
    pub fn flat_out(batch: usize, options: &Options) -> Load {
        Load {
            batch,
            connections: options.connections,
            seconds: options.seconds,
            pace: None,
        }
    }
}

/// `load` on `url` (the service's base URL); `during` runs beside it (server sampling) and is
/// awaited at the end.
pub async fn drive(
    url: &str,
    key: &str,
    load: Load,
    during: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<RunFigures> {
    let batch = load.batch;
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(load.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..load.connections {
        let mut client = wire::Connection::new(&address);
        // A few requests per connection, so rows differ a little; made before the clock runs.
        let requests: Vec<Vec<u8>> = (0..4)
            .map(|i| wire::post_metrics(&address, key, &workload::body(batch, connection * 7 + i)))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            let mut accepted = 0u64;
            let mut sent = 0usize;
            let mut tick = load.pace.map(|pace| {
                let mut tick = tokio::time::interval(pace);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            while Instant::now() < deadline {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let request = &requests[sent % requests.len()];
                sent += 1;
                let began = Instant::now();
                match client.send(request, Duration::from_secs(10)).await {
                    Ok((status, text)) => {
                        let _ = latency.record(began.elapsed().as_micros() as u64);
                        if status == 200 {
                            let reply: serde_json::Value =
                                serde_json::from_slice(&text).unwrap_or_default();
                            accepted += reply["accepted"].as_u64().unwrap_or(0);
                        }
                        *statuses.entry(status.to_string()).or_default() += 1;
                    }
                    Err(error) => {
                        let kind = if error.kind() == std::io::ErrorKind::TimedOut {
                            "timeout"
                        } else {
                            "connection error"
                        };
                        *statuses.entry(kind.to_owned()).or_default() += 1;
                    }
                }
            }
            (latency, statuses, accepted)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut acknowledged = 0;
    for task in tasks {
        let (task_latency, task_statuses, accepted) = task.await?;
        latency.add(task_latency)?;
        for (status, count) in task_statuses {
            *statuses.entry(status).or_default() += count;
        }
        acknowledged += accepted;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(during) = during {
        during.abort();
    }
    let ok = statuses.get("200").copied().unwrap_or(0);
    let refused = statuses
        .iter()
        .filter(|(status, _)| *status != "200")
        .map(|(_, n)| n)
        .sum();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(RunFigures {
        requests_per_second: ok as f64 / elapsed,
        metrics_per_second: acknowledged as f64 / elapsed,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        errors: statuses
            .into_iter()
            .filter(|(status, _)| status != "200")
            .collect(),
        acknowledged,
        refused,
        seconds: elapsed,
        ..RunFigures::default()
    })
}
