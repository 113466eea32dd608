//! Issue 14, item 5: credentials in URLs masked in `--print-config` and the logs; database files
//! created `0600` in a `0700` folder; `POST /flush` counted against the caller's rate limit.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

#[test]
fn credentials_in_the_otlp_endpoint_are_masked_in_print_config_and_the_log() {
    let printed = print_config(&[("OTEL_OTLP_ENDPOINT", "http://user:hunter2@127.0.0.1:9")]);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("http://********@127.0.0.1:9"), "{printed}");

    // Started, the service logs the endpoint it pushes to without them.
    let dir = tempfile::tempdir().unwrap();
    let mut child = mcp_metrics(dir.path())
        .arg("run")
        .env("OTEL_OTLP_ENDPOINT", "http://user:hunter2@127.0.0.1:9")
        .env("METRICS_SERVICE_HOST", "127.0.0.1")
        .env("METRICS_SERVICE_PORT", "0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (sender, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = log.recv_timeout(Duration::from_secs(20)) {
        let started = line.contains("receiver=http") && line.contains("address=");
        lines.push(line);
        if started {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines.extend(log.try_iter());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pushing over OTLP") && l.contains("http://********@127.0.0.1:9")),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains("hunter2")), "{lines:?}");
}

#[tokio::test]
async fn the_database_and_its_folder_are_private_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("data").join("nested");
    let path = folder.join("metrics.db");
    let store = mcp_metrics_store::Store::open(&path).await.unwrap();
    store.create_key("svc", None, false).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    assert_eq!(mode(&path), 0o600);
    let wal = folder.join("metrics.db-wal");
    assert!(wal.exists());
    assert_eq!(mode(&wal), 0o600);
}

#[tokio::test]
async fn flush_spends_the_caller_s_rate_limit() {
    let config = edited(
        &default_pipeline_with(
            "  validate: {}",
            "  rate_limit: {default_limit: 3}\n  validate: {}",
        ),
        "processors: [auth, validate]",
        "processors: [auth, rate_limit, validate]",
    );
    let svc = TestService::with_config(&config).await;
    let key = svc.key("svc").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = svc.call("POST", "/flush", &key, None).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert_eq!(reply.error(), "rate_limit_exceeded");
            assert!(reply.headers.contains_key("retry-after"));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // And a POST /metrics of the same key is now over its limit too.
    let reply = svc
        .post(Some(&key), &request_of("svc", vec![metric("custom")]))
        .await;
    assert_eq!(reply.status, 429);
}
