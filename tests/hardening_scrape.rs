//! Issue 14, item 3: a scrape with a budget. The real binary on loopback: one key posts the worst
//! label payloads it can for every metric type (each series at the label bounds, every character
//! of its values one the text format escapes, values written at their longest) while four
//! scrapes run at once, over and over. Every scrape stays within `max_scrape_size` (the default)
//! and the process under 300 MB resident. Once the abuser stops, its series and the overflow
//! series expire after `metric_expiration` (2 s here), and a new legitimate series shows under
//! its own labels.

mod common;

#[path = "common/exposition.rs"]
mod exposition;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const CONFIG: &str = "
receivers:
  http: {host: 127.0.0.1, port: 0, database: ./metrics.db, acknowledgements: true}
processors:
  auth: {database: ./metrics.db}
  rate_limit: {}
  validate: {}
  enrich: {}
exporters:
  sqlite: {path: ./metrics.db, retention_days: 0}
  prometheus: {host: 127.0.0.1, port: 0, metric_expiration: 2s, max_concurrent_scrapes: 4}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, rate_limit, validate, enrich], exporters: [sqlite, prometheus]}
";

/// The `prometheus` exporter's default `max_scrape_size`, 8 MiB.
const MAX_SCRAPE_BYTES: usize = 8 << 20;

/// New series in each of the abuser's requests.
const PER_POST: usize = 200;

const TYPES: [&str; 7] = [
    "auth_request",
    "tool_discovery",
    "tool_execution",
    "registry_operation",
    "health_check",
    "protocol_latency",
    "custom",
];

/// The abuser's service name: 50 characters (the most `validate` takes), each escaped in the
/// exposition, and not the key's own service, so its series carry `authenticated_service` too.
fn abuser_service() -> String {
    "\"".repeat(50)
}

/// A metric whose series is as costly as a series can be: seven dimensions of 256 characters
/// that each take two bytes in the exposition, up to the 2 KiB a series' labels may take; its
/// value and duration are numbers the text format writes with 300-odd digits. `n` makes the
/// series new.
fn worst_metric(metric_type: &str, n: usize) -> Value {
    let dimensions: serde_json::Map<String, Value> = (0..7)
        .map(|d| {
            let value = format!("{n:08}{}", "\"\\\n".repeat(83))[..256].to_owned();
            (format!("d{d}"), json!(value))
        })
        .collect();
    json!({
        "type": metric_type,
        "value": 2.225_073_858_507_201e-308,
        "duration_ms": 1.234_567_890_123_456_7e-300,
        "dimensions": dimensions,
    })
}

/// The value of one series in a scrape's text, labels sorted by name as the exporter writes
/// them; a quick look that does not read the whole (large) exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels = labels.to_vec();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let prefix = format!("{name}{{{}}} ", labels.join(","));
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().unwrap())
}

/// How many sample lines of a scrape's text are of business series (not the service's own
/// telemetry): a quick look that does not read the whole exposition.
fn business_lines(text: &str) -> usize {
    text.lines()
        .filter(|line| line.starts_with("mcp_") && !line.starts_with("mcp_metrics_"))
        .count()
}

/// How many series of the business counters (not the service's own telemetry) have `service`.
fn counter_series_of(scraped: &exposition::Exposition, service: &str) -> usize {
    scraped
        .families
        .keys()
        .filter(|name| name.starts_with("mcp_") && !name.starts_with("mcp_metrics_"))
        .filter(|name| name.ends_with("_total"))
        .flat_map(|name| scraped.series(name))
        .filter(|(labels, _)| labels.get("service").map(String::as_str) == Some(service))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abusive_key_cannot_blow_the_scrape_and_its_series_expire() {
    let (_dir, child, address, key, scrape_address) = spawn_with_config_scraped(CONFIG).await;
    let pid = child.id();
    let client = reqwest::Client::new();

    // The abuser: a request per metric type of 200 new worst-case series each (a 0.8 MB body),
    // round after round, until told to stop. Answers are sent once every exporter has the
    // metrics (`acknowledgements: true`), so what is answered is in the scrape.
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicUsize::new(0));
    let abuser = {
        let (client, address, key) = (client.clone(), address.clone(), key.clone());
        let (stop, posted) = (stop.clone(), posted.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for metric_type in TYPES {
                    let metrics: Vec<Value> = (n..n + PER_POST)
                        .map(|i| worst_metric(metric_type, i))
                        .collect();
                    n += PER_POST;
                    let body = json!({"service": abuser_service(), "metrics": metrics});
                    let reply = metrics_request(&client, &address, &key, &body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(reply.status(), 200, "{:?}", reply.text().await);
                    posted.fetch_add(PER_POST, Ordering::Relaxed);
                }
            }
        })
    };

    // Four scrapes at once, round after round, while the abuser posts; the resident size is
    // sampled meanwhile.
    let mut peak_rss: f64 = 0.0;
    let mut largest = 0;
    let started = Instant::now();
    let mut rounds = 0;
    let mut overflowed = [false; TYPES.len()];
    // The abuser's own series in the first scrape that showed any: they expire 2 s after their
    // last update, so the scrape after the abuse stops may already have none.
    let mut abuser_series = 0;
    // Until every type's overflow series has shown in a scrape: the abuser goes on posting, so
    // each is refreshed until then, where a slow machine may post a type's last batch between
    // two rounds of scrapes.
    while rounds < 3
        || posted.load(Ordering::Relaxed) < 2 * TYPES.len() * PER_POST
        || !overflowed.iter().all(|seen| *seen)
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the abuser posted {} metrics; overflow series seen, by type: {overflowed:?}",
            posted.load(Ordering::Relaxed)
        );
        let scrapes: Vec<_> = (0..4)
            .map(|_| {
                let (client, address) = (client.clone(), scrape_address.clone());
                tokio::spawn(async move { scrape(&client, &address).await })
            })
            .collect();
        while !scrapes.iter().all(|s| s.is_finished()) {
            peak_rss = peak_rss.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for scraped in scrapes {
            let text = scraped.await.unwrap();
            assert!(
                text.len() <= MAX_SCRAPE_BYTES,
                "a scrape of {} bytes",
                text.len()
            );
            largest = largest.max(text.len());
            if abuser_series == 0 {
                abuser_series = counter_series_of(&exposition::parse(&text), &abuser_service());
            }
            for (index, metric_type) in TYPES.into_iter().enumerate() {
                let overflow =
                    format!(r#"{{metric_type="{metric_type}",otel_metric_overflow="true"}}"#);
                overflowed[index] |= text.contains(&overflow);
            }
        }
        if posted.load(Ordering::Relaxed) > 0 {
            rounds += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    abuser.await.unwrap();

    // The scrape as it stands: valid, within the budget, which the abuse came near; the rest of
    // the abuse went to the overflow series of every type (seen above).
    let text = scrape(&client, &scrape_address).await;
    let scraped = exposition::parse(&text);
    assert!(text.len() <= MAX_SCRAPE_BYTES, "{}", text.len());
    largest = largest.max(text.len());
    assert!(
        largest > MAX_SCRAPE_BYTES / 10 * 9,
        "the abuse did not fill the budget: {largest} bytes"
    );
    abuser_series = abuser_series.max(counter_series_of(&scraped, &abuser_service()));
    assert!(abuser_series > 0);
    eprintln!(
        "{} worst-case metrics posted; {rounds} rounds of 4 concurrent scrapes; largest scrape \
         {largest} bytes of {MAX_SCRAPE_BYTES}; {abuser_series} abuser series shown; peak RSS \
         {peak_rss:.1} MiB",
        posted.load(Ordering::Relaxed)
    );
    assert!(peak_rss < 300.0, "{peak_rss:.1} MiB resident");

    // One more burst, of auth requests, fills the budget with fresh series: the costliest
    // first, then small ones (each cheaper than the legitimate series below) for the gap the
    // costly ones leave. A new legitimate series of another type, posted right after, is folded
    // into its type's overflow series (counted in the self-metric, which the abuser, stopped,
    // no longer moves for that type).
    let folded = |text: &str| {
        let cut = "mcp_metrics_exporter_cardinality_overflow_metric_points_total";
        let labels = [
            ("exporter", "prometheus"),
            ("metric_type", "tool_execution"),
        ];
        sample(text, cut, &labels).unwrap_or(0.0)
    };
    let before = folded(&scrape(&client, &scrape_address).await);
    let burst: Vec<Value> = (0..2 * PER_POST)
        .map(|i| worst_metric("auth_request", usize::MAX / 2 + i))
        .collect();
    let small: Vec<Value> = (0..100)
        .map(|i| json!({"type": "auth_request", "value": 1.0, "duration_ms": 1.0, "dimensions": {"d": i}}))
        .collect();
    for body in [
        json!({"service": abuser_service(), "metrics": burst}),
        json!({"service": "svc", "metrics": small}),
    ] {
        let reply = metrics_request(&client, &address, &key, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
    }
    let burst_done = Instant::now();
    let legitimate = json!({"service": "svc", "metrics": [
        {"type": "tool_execution", "value": 1.0, "duration_ms": 12.0, "dimensions": {"tool_name": "get_weather"}}
    ]});
    let own = [
        ("service", "svc"),
        ("metric_type", "tool_execution"),
        ("tool_name", "get_weather"),
    ];
    let overflow = [
        ("metric_type", "tool_execution"),
        ("otel_metric_overflow", "true"),
    ];
    let post_legitimate = || async {
        let reply = metrics_request(&client, &address, &key, &legitimate)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
    };
    post_legitimate().await;
    // Within the expiry of the burst, so its series still filled the budget.
    assert!(burst_done.elapsed() < Duration::from_secs(1));
    let text = scrape(&client, &scrape_address).await;
    assert_eq!(folded(&text), before + 1.0);
    assert_eq!(sample(&text, "mcp_tool_executions_total", &own), None);

    // The abuser's series and the overflow series expire 2 s after their last update; nothing
    // is posted meanwhile, so nothing keeps them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = Instant::now();
        let text = scrape(&client, &scrape_address).await;
        let left = business_lines(&text);
        if left == 0 {
            break;
        }
        assert!(
            asked < deadline,
            "{left} lines of series left 30 s after the abuse"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired_after = burst_done.elapsed();
    assert!(
        expired_after >= Duration::from_millis(1900),
        "expired after {expired_after:?}"
    );

    // A new legitimate series now has room: it shows under its own labels.
    post_legitimate().await;
    let scraped = exposition::parse(&scrape(&client, &scrape_address).await);
    assert_eq!(scraped.value("mcp_tool_executions_total", &own), Some(1.0));
    assert_eq!(
        scraped.value("mcp_tool_execution_duration_seconds_count", &own),
        Some(1.0)
    );
    assert_eq!(scraped.value("mcp_tool_executions_total", &overflow), None);
}

#[test]
fn the_budget_and_the_expiry_have_defaults_and_ranges() {
    let printed = print_config(&[]);
    let printed: Value = serde_yaml::from_str(&printed).unwrap();
    let prometheus = &printed["exporters"]["prometheus"];
    assert_eq!(prometheus["max_scrape_size"], "8.0 MiB");
    assert_eq!(prometheus["metric_expiration"], "5m");
    assert_eq!(prometheus["max_concurrent_scrapes"], 2);

    let config = |settings: &str| {
        format!(
            "
receivers:
  http: {{port: 0}}
exporters:
  prometheus: {{port: 0, {settings}}}
service:
  pipelines:
    metrics: {{receivers: [http], exporters: [prometheus]}}
"
        )
    };
    for (settings, message) in [
        (
            "max_scrape_size: 100KiB",
            "max_scrape_size: must be from 256KiB to 1GiB",
        ),
        (
            "max_scrape_size: 2GiB",
            "max_scrape_size: must be from 256KiB to 1GiB",
        ),
        (
            "metric_expiration: 500ms",
            "metric_expiration: must be from 1s to 30d",
        ),
        (
            "metric_expiration: 31days",
            "metric_expiration: must be from 1s to 30d",
        ),
    ] {
        let errors = match mcp_metrics::parse(&config(settings), "pipelines.yaml", &|_| None) {
            Ok(_) => panic!("{settings} was taken"),
            Err(errors) => errors.errors,
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].place, "exporters.prometheus");
        assert_eq!(errors[0].message, message);
        assert_eq!(errors[0].line, Some(5));
    }
    for settings in [
        "max_scrape_size: 256KiB, metric_expiration: 1s",
        "max_scrape_size: 1GiB, metric_expiration: 30days",
        "max_scrape_size: 4MB, metric_expiration: 1h",
    ] {
        mcp_metrics::parse(&config(settings), "pipelines.yaml", &|_| None)
            .unwrap_or_else(|errors| panic!("{settings}: {errors}"));
    }
}
