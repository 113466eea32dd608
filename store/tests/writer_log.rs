//! The writer gathers a commit's log writes in memory and writes them together when the commit's
//! last frame comes (`wal_vfs`). Other connections open the file with SQLite's own VFS, so what
//! the writer has answered must be in the file by then, whatever the commit's size.

mod common;

use mcp_metrics_plugin::{Batch, Metric, MetricType};
use mcp_metrics_store::Store;
use serde_json::json;

fn metrics(count: usize) -> Batch {
    common::batch(count, |index, now| Metric {
        index,
        metric_type: MetricType::AuthRequest,
        timestamp: now,
        value: 1.0,
        duration_ms: Some(12.5),
        dimensions: json!({"success": true, "user_hash": format!("user-{index}")})
            .as_object()
            .unwrap()
            .clone(),
        metadata: Default::default(),
    })
}

/// Commits of every size from 1 to 40 metrics, each read back through the pool at once: a
/// commit whose frames were still gathered when the writer answered would read as a short or
/// malformed log there.
#[tokio::test]
async fn each_commit_is_in_the_file_when_the_writer_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("metrics.db")).await.unwrap();
    let mut written = 0;
    for size in (1..=40).cycle().take(200) {
        store.write_batch(&metrics(size)).await.unwrap();
        written += size as i64;
        let counts = store.row_counts().await.unwrap();
        assert_eq!(counts["metrics"], written, "after a commit of {size}");
        assert_eq!(counts["auth_metrics"], written, "after a commit of {size}");
    }
}

/// A commit of thousands of rows makes megabytes of log, more than SQLite's own VFS writes in
/// one call: it goes out in pieces, all of it.
#[tokio::test]
async fn a_commit_larger_than_one_write_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let store = Store::open(&path).await.unwrap();
    store.write_batch(&metrics(5_000)).await.unwrap();
    let log = std::fs::metadata(path.with_extension("db-wal"))
        .unwrap()
        .len();
    assert!(
        log > 1 << 20,
        "a log of {log} bytes is too small to test this"
    );
    assert_eq!(store.row_counts().await.unwrap()["auth_metrics"], 5_000);
}
