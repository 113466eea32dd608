//! The writer's thread has a connection of its own: what it commits is seen by the pool's
//! connections, survives the checkpoint they run at shutdown, and is in the file when it is
//! opened again. Its commits are folded into the file by a thread of their own.

mod common;

use std::time::{Duration, Instant};

use mcp_metrics_plugin::{Batch, Metric, MetricType};
use mcp_metrics_store::{Database, Store};

fn metrics(count: usize) -> Batch {
    metrics_carrying(count, Default::default())
}

/// `count` metrics, each with `metadata`.
fn metrics_carrying(count: usize, metadata: serde_json::Map<String, serde_json::Value>) -> Batch {
    common::batch(count, |index, now| Metric {
        index,
        metric_type: MetricType::Custom,
        timestamp: now,
        value: 1.0,
        duration_ms: None,
        dimensions: Default::default(),
        metadata: metadata.clone(),
    })
}

#[tokio::test]
async fn committed_rows_survive_the_shutdown_checkpoint() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.db");
        let store = Store::open(&path).await.unwrap();
        // Writes through the pool before and after, as the key check makes them.
        store.create_key("before", None, false).await.unwrap();
        store.write_batch(&metrics(1)).await.unwrap();
        store.create_key("after", None, false).await.unwrap();
        assert_eq!(store.row_counts().await.unwrap()["metrics"], 1);
        Database::Sqlite(store.clone()).checkpoint().await.unwrap();
        drop(store);
        let store = Store::open(&path).await.unwrap();
        let counts = store.row_counts().await.unwrap();
        assert_eq!(counts["metrics"], 1, "round {round}");
    }
}

#[tokio::test]
async fn commits_are_folded_into_the_file_while_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let store = Store::open(&path).await.unwrap();
    let file_size = || std::fs::metadata(&path).unwrap().len();
    let before = file_size();
    // A few dozen pages: far from any size at which SQLite checkpoints on the commit itself.
    store.write_batch(&metrics(500)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while file_size() <= before {
        assert!(
            Instant::now() < deadline,
            "the rows stayed in the log: the file is still {before} bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.row_counts().await.unwrap()["metrics"], 500);
}

/// The writer lets go of a batch's requests before it answers, so that the caller, which holds
/// them too, frees their metrics: the writer's thread is what every commit waits on, and freeing
/// a batch's metrics there took 6 % of its samples in the benchmark's steady load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_holds_no_request_once_it_has_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("metrics.db")).await.unwrap();
    let batch = metrics(1);
    for write in 0..500 {
        store.write_batch(&batch).await.unwrap();
        assert_eq!(
            std::sync::Arc::strong_count(&batch.requests[0]),
            1,
            "write {write}: the writer still held the request after answering"
        );
    }
}

/// Under writes that never pause, the log still starts over near its limit (10,000 pages): the
/// checkpoint thread copies it and the writer copies the rest between two batches. SQLite starts
/// the log over only when a write begins with all of it copied, so without that last step the
/// log would grow to the backstop (40,000 pages), where a commit copies it all while its clients
/// wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_near_its_limit_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let store = Store::open(&path).await.unwrap();
    let log = dir.path().join("metrics.db-wal");
    let frame = 24 + 4096;
    // About a page of log for each row: 50,000 pages in all, past the backstop.
    let metadata = serde_json::json!({ "note": "x".repeat(3_000) });
    let batch = metrics_carrying(250, metadata.as_object().unwrap().clone());
    let mut largest = 0;
    for _ in 0..200 {
        store.write_batch(&batch).await.unwrap();
        largest = largest.max(std::fs::metadata(&log).unwrap().len() / frame);
    }
    assert!(
        (10_000..25_000).contains(&largest),
        "the log grew to {largest} pages"
    );
    assert_eq!(store.row_counts().await.unwrap()["metrics"], 50_000);
}
