"""Fixtures: the package from the source tree (no install needed), the real service binary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

CLIENT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CLIENT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mcp_service import MetricsService  # noqa: E402


@pytest.fixture(scope="session")
def binary() -> Path:
    """The `mcp-metrics` binary; `cargo test` passes it. Missing is a failure, not a skip."""
    path = os.environ.get("MCP_METRICS_BIN")
    if not path:
        pytest.fail(
            "MCP_METRICS_BIN is not set: run `cargo test --workspace`, or "
            "`MCP_METRICS_BIN=target/debug/mcp-metrics python3 -m pytest clients/python/tests`"
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"MCP_METRICS_BIN={path} is not an executable")
    return Path(path).resolve()


@pytest.fixture
def make_service(binary: Path, tmp_path: Path) -> Iterator[Callable[..., MetricsService]]:
    """Starts services (in folders of their own); any still running at the end is killed."""
    started: List[MetricsService] = []

    def make(sqlite_options: str = "") -> MetricsService:
        folder = tmp_path / f"service{len(started)}"
        folder.mkdir()
        service = MetricsService(binary, folder, sqlite_options)
        started.append(service)
        service.start()
        return service

    yield make
    for service in started:
        service.kill()


@pytest.fixture
def service(make_service: Callable[..., MetricsService]) -> MetricsService:
    return make_service()


# Figures the tests measured (rates, counts, timings), shown after the run even when it passes.
_figures: List[str] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    def record(line: str) -> None:
        _figures.append(f"{request.node.name}: {line}")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _figures:
        terminalreporter.section("measured")
        for line in _figures:
            terminalreporter.write_line(line)
