//! The binary as a newcomer uses it: keys from the CLI, `run` with no flags on the built-in
//! default, SIGTERM.

mod common;

use std::process::Command;

use common::{mcp_metrics, metrics_request, proc_status, spawn_service, terminate};
use serde_json::json;

fn stdout_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn keys_are_created_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let created = stdout_of(mcp_metrics(dir.path()).args([
        "keys",
        "create",
        "--service",
        "auth-server",
        "--rate-limit",
        "50",
    ]));
    let key = created.lines().last().unwrap();
    assert!(
        key.starts_with("mcp_metrics_") && key.len() == "mcp_metrics_".len() + 43,
        "{created}"
    );

    let listed = stdout_of(mcp_metrics(dir.path()).args(["keys", "list"]));
    let row = listed.lines().nth(1).expect("one key listed");
    assert!(
        row.contains("auth-server") && row.contains("yes") && row.contains("50"),
        "{listed}"
    );
    assert!(!listed.contains(key), "the key itself is never shown again");

    stdout_of(mcp_metrics(dir.path()).args(["keys", "revoke", "1"]));
    let listed = stdout_of(mcp_metrics(dir.path()).args(["keys", "list"]));
    assert!(listed.lines().nth(1).unwrap().contains(" no "), "{listed}");

    let output = mcp_metrics(dir.path())
        .args(["keys", "revoke", "99"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no key with id 99"));

    // A limit of 0 would refuse every request: it is refused, and no key is made.
    let output = mcp_metrics(dir.path())
        .args(["keys", "create", "--service", "svc", "--rate-limit", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate-limit"));
    let listed = stdout_of(mcp_metrics(dir.path()).args(["keys", "list"]));
    assert!(!listed.contains("svc"), "{listed}");
}

#[test]
fn components_lists_every_built_in_type_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let listed = stdout_of(mcp_metrics(dir.path()).arg("components"));
    for expected in [
        "  http:",
        "  auth:",
        "  validate:",
        "  sqlite:",
        "port: 8890",
        "refresh_interval: 2s",
        "queue_size:",
        "  filter:",
        "  stdout: prints every batch to standard output (example plugin crate)",
        "verbosity: basic",
    ] {
        assert!(
            listed.contains(expected),
            "{expected:?} missing from:\n{listed}"
        );
    }
}

#[tokio::test]
async fn run_with_no_flags_serves_the_contract_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let created =
        stdout_of(mcp_metrics(dir.path()).args(["keys", "create", "--service", "auth-server"]));
    let key = created.lines().last().unwrap().to_owned();
    // No retention: the contract's example metric is from 2024.
    let (mut child, address, _log) = spawn_service(
        mcp_metrics(dir.path())
            .env("METRICS_SERVICE_HOST", "127.0.0.1")
            .env("METRICS_SERVICE_PORT", "0")
            .env("METRICS_RETENTION_DAYS", "0"),
    );

    // Transparent huge pages are off: a touched byte of the heap must not cost 2 MiB.
    let status = proc_status(child.id());
    assert!(status.contains("THP_enabled:\t0"), "{status}");

    let client = reqwest::Client::new();
    let body = json!({
        "service": "auth-server", "version": "1.0.0", "instance_id": "auth-01",
        "metrics": [{"type": "auth_request", "timestamp": "2024-01-15T10:30:00Z", "value": 1.0, "duration_ms": 45.2,
                     "dimensions": {"method": "jwt", "success": true, "server": "mcpgw", "user_hash": "user_abc123"},
                     "metadata": {"error_code": null, "request_size": 1024, "response_size": 512}}]
    });
    let mut accepted = 0;
    for _ in 0..20 {
        let reply = metrics_request(&client, &address, &key, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let reply: serde_json::Value = reply.json().await.unwrap();
        accepted += reply["accepted"].as_i64().unwrap();
    }
    assert_eq!(terminate(&mut child), 0);

    // Everything acknowledged is in the default database file, in both tables.
    let store = mcp_metrics_store::Store::open(dir.path().join("data/metrics.db"))
        .await
        .unwrap();
    let counts = store.row_counts().await.unwrap();
    assert_eq!(counts["metrics"], accepted);
    assert_eq!(counts["auth_metrics"], accepted);
}

#[tokio::test]
async fn the_health_command_tells_a_healthy_service_from_none() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback address other than 127.0.0.1, as a container might listen on its own IP.
    let (mut child, address, _log) = spawn_service(
        mcp_metrics(dir.path())
            .env("METRICS_SERVICE_HOST", "127.0.0.2")
            .env("METRICS_SERVICE_PORT", "0"),
    );
    let port = address.rsplit_once(':').unwrap().1;
    // As a container's HEALTHCHECK runs it: no URL, the service's own environment.
    let healthy = mcp_metrics(dir.path())
        .arg("health")
        .env("METRICS_SERVICE_HOST", "127.0.0.2")
        .env("METRICS_SERVICE_PORT", port)
        .output()
        .unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("\"healthy\""));
    assert_eq!(terminate(&mut child), 0);

    let gone = mcp_metrics(dir.path())
        .args(["health", "--url", &format!("http://{address}/health")])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("unhealthy"));
}
