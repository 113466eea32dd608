//! Issue 12: the Python client library (`clients/python`) against the real binary. Its pytest
//! suite starts this build's `mcp-metrics` itself (named by `MCP_METRICS_BIN`) on loopback ports
//! with SQLite files in temporary folders; this test runs it, lets its output through, and fails
//! when it fails, or when Python, pytest or httpx is missing.

use std::process::Command;

#[test]
fn the_python_client_suite_passes_against_the_real_service() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let root = env!("CARGO_MANIFEST_DIR");

    let check = Command::new(&python)
        .args(["-c", "import pytest, httpx"])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {python}: {error}"));
    assert!(
        check.status.success(),
        "the Python client's tests need pytest and httpx (`{python} -m pip install pytest httpx`):\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The child inherits stdout and stderr, so pytest's progress shows as it runs.
    let status = Command::new(&python)
        .args(["-m", "pytest", "clients/python/tests", "-q"])
        .current_dir(root)
        .env("MCP_METRICS_BIN", env!("CARGO_BIN_EXE_mcp-metrics"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .unwrap_or_else(|error| panic!("cannot run {python}: {error}"));
    assert!(
        status.success(),
        "the Python client's tests failed (output above)"
    );
}
