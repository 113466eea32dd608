//! The least a refusal can cost on this machine: a bare axum server, on tokio's default runtime
//! as the service is, that answers every `POST /metrics` with the service's 401 (the same
//! status, headers and body length) and does nothing else: no key to look up, no request id to
//! draw, no telemetry, no timeouts. The bench runs it as a process of its own, with the same
//! refusal load as the service, in the same run, so the service's figure can be read against it.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::load::Load;
use crate::{RunFigures, server};

/// The flag that makes the bench binary this server instead (hidden from `--help`).
pub const FLAG: &str = "--refusal-floor-port";

/// The service's answer to a wrong key, byte for byte but for its request id's digits.
const BODY: &str = r#"{"status":"error","error":"invalid_api_key","message":"API key is invalid or expired","request_id":"req_0000000000000000"}"#;

/// Serves the floor on loopback `port` until the process is stopped.
pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let app = Router::new()
        .route("/metrics", post(refuse))
        .route("/health", get(|| async { "ok" }));
    axum::serve(listener, app).await?;
    Ok(())
}

async fn refuse() -> impl IntoResponse {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        BODY,
    )
}

/// The floor driven by `load` from a wrong key: its CPU over what it refused, as for the service.
pub async fn measure(load: Load) -> anyhow::Result<RunFigures> {
    let port = server::free_port()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([FLAG, &port.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let measured = async {
        server::wait_healthy(&url, &mut child).await?;
        server::drive_counting_cpu(child.id(), &url, server::WRONG_KEY, load, None).await
    }
    .await;
    // Stopped whatever happened: it would otherwise outlive the bench.
    let _ = child.kill();
    child.wait()?;
    measured
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_body_is_as_long_as_the_services() {
        // request_id() in the receiver: "req_" and 16 hex digits.
        let reply: serde_json::Value = serde_json::from_str(super::BODY).unwrap();
        assert_eq!(reply["request_id"].as_str().unwrap().len(), 4 + 16);
        assert_eq!(super::BODY.len(), 122);
    }
}
