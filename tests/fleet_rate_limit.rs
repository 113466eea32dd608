//! Rate limits across replicas: three real `mcp-metrics` processes share one real PostgreSQL
//! database (`rate_limit` with its `fleet` policy); a key's limit holds for the three together,
//! within 10 %, and each replica still admits alone while PostgreSQL is down.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::postgres::PostgresServer;
use common::{ServiceProcess, mcp_metrics, metric, metrics_request, request_of, spawn_service};
use mcp_metrics_store::Database;

/// A replica: the key check, the fleet-wide limit and the metrics, all in one PostgreSQL
/// database (`DB`), named once as an extension, as the shipped `pipelines.yaml` does.
const REPLICA: &str = "
extensions:
  database: {url: DB}
receivers:
  http: {host: 127.0.0.1, port: 0, database: database}
processors:
  auth: {database: database, refresh_interval: 1s}
  rate_limit: {database: database, retry_interval: 200ms}
  validate: {}
exporters:
  database: {database: database, retention_days: 0}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, rate_limit, validate], exporters: [database]}
";

const LIMIT: u32 = 600;

struct Replica {
    _dir: tempfile::TempDir,
    _process: ServiceProcess,
    address: String,
    log: mpsc::Receiver<String>,
}

fn start_replicas(url: &str, count: usize) -> Vec<Replica> {
    (0..count)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("pipelines.yaml");
            std::fs::write(&config, REPLICA.replace("DB", url)).unwrap();
            let (process, address, log) = spawn_service(
                mcp_metrics(dir.path())
                    .args(["run", "--config"])
                    .arg(&config),
            );
            Replica {
                _dir: dir,
                _process: process,
                address,
                log,
            }
        })
        .collect()
}

/// A key limited to `LIMIT` a minute, made with the CLI as an operator would.
fn create_key(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = mcp_metrics(dir.path())
        .args(["keys", "create", "--database", url, "--service", "svc"])
        .args(["--rate-limit", &LIMIT.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout.lines().last().unwrap().trim().to_owned()
}

/// What one replica answered during a flood.
#[derive(Debug, Default, Clone, Copy)]
struct Answers {
    admitted: u64,
    limited: u64,
}

/// `connections` clients per replica send requests one after another, as fast as each is
/// answered, for `seconds`; the answers per replica and how long the flood took.
async fn flood(
    addresses: &[String],
    key: &str,
    connections: usize,
    seconds: f64,
) -> (Vec<Answers>, f64) {
    let body = request_of("svc", vec![metric("custom")]);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut clients = Vec::new();
    for (replica, address) in addresses.iter().enumerate() {
        for _ in 0..connections {
            let (address, key, body) = (address.clone(), key.to_owned(), body.clone());
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut answers = Answers::default();
                while Instant::now() < until {
                    let response = metrics_request(&client, &address, &key, &body)
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => answers.admitted += 1,
                        429 => {
                            assert!(response.headers().contains_key("retry-after"));
                            answers.limited += 1;
                        }
                        other => panic!(
                            "replica {replica} answered {other}: {}",
                            response.text().await.unwrap()
                        ),
                    }
                }
                (replica, answers)
            }));
        }
    }
    let mut per_replica = vec![Answers::default(); addresses.len()];
    for client in clients {
        let (replica, answers) = client.await.unwrap();
        per_replica[replica].admitted += answers.admitted;
        per_replica[replica].limited += answers.limited;
    }
    (per_replica, started.elapsed().as_secs_f64())
}

/// What one replica alone admits of a fresh key in `seconds`: the burst, then the refill.
fn one_replica_admits(seconds: f64) -> f64 {
    f64::from(LIMIT) + f64::from(LIMIT) / 60.0 * seconds
}

fn total(answers: &[Answers]) -> u64 {
    answers.iter().map(|a| a.admitted).sum()
}

/// Waits until the replica has logged a line containing `text`.
fn wait_for_log(replica: &Replica, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match replica.log.recv_timeout(left) {
            Ok(line) if line.contains(text) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("replica {} did not log {text:?}", replica.address);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_one_keys_limit_within_ten_percent() {
    let server = PostgresServer::start();
    let url = server.create_database("fleet_limit");
    let key = create_key(&url);
    let replicas = start_replicas(&url, 3);
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();

    let (answers, seconds) = flood(&addresses, &key, 4, 20.0).await;

    let admitted = total(&answers) as f64;
    let alone = one_replica_admits(seconds);
    eprintln!(
        "fleet of 3 admitted {admitted} in {seconds:.1} s (one replica alone: {alone:.0}); \
         per replica {answers:?}"
    );
    assert!(
        admitted <= alone * 1.1,
        "the fleet admitted {admitted}, over 10 % more than one replica alone ({alone:.0})"
    );
    assert!(
        admitted >= alone * 0.9,
        "the fleet admitted {admitted}, over 10 % less than one replica alone ({alone:.0})"
    );
    for (replica, answers) in answers.iter().enumerate() {
        assert!(
            answers.admitted > 0 && answers.limited > 0,
            "replica {replica} took part: {answers:?}"
        );
    }

    // Each replica tells a sensible standing: within the limit, none left once limited.
    let client = reqwest::Client::new();
    let body = request_of("svc", vec![metric("custom")]);
    let reply = metrics_request(&client, &addresses[0], &key, &body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| -> u64 { reply.headers()[name].to_str().unwrap().parse().unwrap() };
    assert_eq!(header("x-ratelimit-limit"), u64::from(LIMIT));
    assert!(header("x-ratelimit-remaining") <= u64::from(LIMIT / 10));
    assert!(header("x-ratelimit-reset") <= 60);

    // GET /rate-limit reads the shared bucket: nearly empty after the flood.
    let standing: serde_json::Value = client
        .get(format!("http://{}/rate-limit", addresses[1]))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(standing["limit"], LIMIT, "{standing}");
    assert!(
        standing["remaining"].as_u64().unwrap() <= u64::from(LIMIT / 10),
        "{standing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_limit_alone_while_postgres_is_down_and_together_again_after() {
    let server = PostgresServer::start();
    let url = server.create_database("fleet_fallback");
    let key = create_key(&url);
    let replicas = start_replicas(&url, 3);
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();

    // Each replica leases from the shared bucket, and leaves nearly all of it.
    let client = reqwest::Client::new();
    let body = request_of("svc", vec![metric("custom")]);
    for address in &addresses {
        let reply = metrics_request(&client, address, &key, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
    }
    let store = match Database::open(&url).await.unwrap() {
        Database::Postgres(store) => store,
        Database::Sqlite(_) => unreachable!(),
    };
    let buckets: i64 = sqlx::query_scalar("SELECT count(*) FROM rate_limit_buckets")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(buckets, 1, "one shared bucket for the key");
    store.close().await;

    server.stop();
    let (down, seconds) = flood(&addresses, &key, 2, 2.0).await;
    for replica in &replicas {
        wait_for_log(
            replica,
            "cannot lease from PostgreSQL",
            Duration::from_secs(5),
        );
    }
    eprintln!("PostgreSQL down for {seconds:.1} s: per replica {down:?}");
    // Each replica at the key's full limit, alone: far more than the fleet's share, never more
    // than one replica's limit (plus what it had leased).
    for (replica, answers) in down.iter().enumerate() {
        let most = one_replica_admits(seconds) + f64::from(LIMIT) / 100.0;
        assert!(
            answers.admitted as f64 > f64::from(LIMIT) / 2.0,
            "replica {replica} still admits, alone: {answers:?}"
        );
        assert!(
            answers.admitted as f64 <= most,
            "replica {replica} still limits: {answers:?}, at most {most:.0}"
        );
    }

    server.start_again();
    for replica in &replicas {
        wait_for_log(replica, "PostgreSQL answers again", Duration::from_secs(10));
    }
    // Together again: the shared bucket, refilled meanwhile, holds for the three at once.
    let (again, seconds) = flood(&addresses, &key, 2, 2.0).await;
    let admitted = total(&again) as f64;
    let alone = one_replica_admits(seconds);
    eprintln!("PostgreSQL back: {admitted} admitted in {seconds:.1} s (alone: {alone:.0})");
    assert!(admitted <= alone * 1.1, "{again:?}, one alone {alone:.0}");
}

/// The lease statement under contention: 16 connections taking one token at a time never get
/// more than the bucket gave (the burst and the refill), and get all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_grant_a_token_twice() {
    let server = PostgresServer::start();
    let url = server.create_database("fleet_leases");
    let database = Database::open(&url).await.unwrap();
    let Database::Postgres(store) = &database else {
        unreachable!()
    };
    let started = Instant::now();
    let mut takers = Vec::new();
    for taker in 0..16 {
        // Two stores (two URLs), so the leases come through four connections.
        let store = if taker % 2 == 0 {
            store.clone()
        } else {
            mcp_metrics_store::PgStore::open(&format!("{url}?application_name=taker"))
                .await
                .unwrap()
        };
        takers.push(tokio::spawn(async move {
            let mut granted = 0;
            loop {
                let lease = store.lease_tokens(7, LIMIT, 1).await.unwrap();
                granted += lease.granted;
                if lease.granted == 0 {
                    return granted;
                }
            }
        }));
    }
    let mut granted = 0;
    for taker in takers {
        granted += taker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = one_replica_admits(elapsed);
    assert!(
        f64::from(granted) <= most && granted >= LIMIT,
        "granted {granted} in {elapsed:.2} s; the bucket gave {most:.1}"
    );
    let left: HashMap<i64, f64> =
        sqlx::query_as::<_, (i64, f64)>("SELECT key_id, tokens FROM rate_limit_buckets")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert!(left[&7] < 1.0, "{left:?}");
}
