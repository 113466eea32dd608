"""What the client does with each answer of the service: flush on close, 429 and 503 waited out
and sent again, a revoked key logged once and dropped, per-metric rejections logged."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import datetime, timezone
from typing import Callable, List

import httpx
import pytest

from mcp_metrics_client import MetricsClient
from mcp_service import MetricsService, wait_until


def seqs(service: MetricsService, name: str) -> List[int]:
    rows = service.query(
        "SELECT json_extract(dimensions, '$.seq') FROM metrics WHERE service = ? ORDER BY 1", (name,)
    )
    return [row[0] for row in rows]


def test_close_flushes_everything_buffered_with_each_type_in_its_table(service: MetricsService) -> None:
    key = service.key("flush")

    async def run() -> MetricsClient:
        # Nothing is due before close(): the batch is never full and the interval is a minute.
        async with MetricsClient(
            service.url, key.value, "flush", batch_size=1000, flush_interval=60
        ) as client:
            for i in range(250):
                await client.emit_auth_metric(
                    i % 2 == 0, "jwt", 1.0 + i, "mcpgw", f"user_{i}", None if i % 2 == 0 else "403"
                )
                await client.emit_discovery_metric(
                    "weather tools", 5, 20.0, top_k_services=3, top_n_tools=10,
                    embedding_time_ms=4.5, faiss_search_time_ms=1.5,
                )
                await client.emit_tool_metric(
                    "get_weather", "weather", True, 100.0, input_size_bytes=128, output_size_bytes=1024
                )
            client.emit("custom", 2.5, dimensions={"job": "reindex"})
            assert (client.stats.requests, client.stats.pending) == (0, 751)
        return client

    client = asyncio.run(run())
    stats = client.stats
    assert (stats.sent, stats.pending, stats.dropped, stats.rejected) == (751, 0, 0, 0), stats
    service.stop()

    assert service.rows("flush") == 751
    assert service.query(
        "SELECT success, method, server, user_hash, error_code FROM auth_metrics WHERE user_hash = 'user_1'"
    ) == [(0, "jwt", "mcpgw", "user_1", "403")]
    assert service.query(
        "SELECT COUNT(*), query, results_count, top_k_services, top_n_tools, embedding_time_ms,"
        " faiss_search_time_ms FROM discovery_metrics"
    ) == [(250, "weather tools", 5, 3, 10, 4.5, 1.5)]
    assert service.query(
        "SELECT COUNT(*), tool_name, server_path, server_name, success, input_size_bytes,"
        " output_size_bytes FROM tool_metrics"
    ) == [(250, "get_weather", "/weather", "weather", 1, 128, 1024)]
    # Timestamps are when emit was called (not when the batch went), in UTC.
    (oldest, newest), = service.query("SELECT MIN(timestamp), MAX(timestamp) FROM metrics")
    now = datetime.now(timezone.utc)
    for stamp in (oldest, newest):
        age = now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert 0 <= age.total_seconds() < 60, stamp


def test_a_revoked_key_logs_one_clear_error_and_drops_the_batch_without_raising(
    service: MetricsService, caplog: pytest.LogCaptureFixture
) -> None:
    key = service.key("revoked")
    client = MetricsClient(service.url, key.value, "revoked", batch_size=10)
    for i in range(10):
        client.emit("custom", 1.0, dimensions={"seq": i})
    wait_until(lambda: client.stats.sent == 10, 10, "the first batch to be delivered")

    service.revoke(key)
    wait_until(
        lambda: httpx.post(
            f"{service.url}/metrics", headers={"X-API-Key": key.value}, json={"service": "x", "metrics": []}
        ).status_code == 401,
        10,
        "the service to refuse the revoked key",
    )
    with caplog.at_level(logging.DEBUG, logger="mcp_metrics_client"):
        for batch in range(1, 4):
            for i in range(10):
                client.emit("custom", 1.0, dimensions={"seq": 10 * batch + i})
            wait_until(lambda: client.stats.rejected == 10 * batch, 10, f"batch {batch} to be refused")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "401 invalid_api_key" in errors[0] and "10 metrics dropped" in errors[0], errors
    stats = client.stats
    # Each refused batch was sent once, never again.
    assert (stats.sent, stats.rejected, stats.requests, stats.retried) == (10, 30, 4, 0), stats
    assert stats.last_error is not None and stats.last_error.startswith("401 invalid_api_key: ")
    assert client.close_sync() is True
    service.stop()
    assert service.rows("revoked") == 10


def test_over_the_rate_limit_it_waits_retry_after_and_sends_the_same_batch_again(
    service: MetricsService, figure: Callable[[str], None]
) -> None:
    # A burst of 120 requests, then 2 a second: 124 single-metric requests need 429s unless the
    # first 120 took over 2 s.
    key = service.key("limited", rate_limit=120)
    client = MetricsClient(service.url, key.value, "limited", batch_size=1)
    started = time.monotonic()
    for i in range(124):
        client.emit("custom", 1.0, dimensions={"seq": i})
    wait_until(lambda: client.stats.sent == 124, 20, "every metric to be accepted")
    elapsed = time.monotonic() - started
    stats = client.stats
    figure(f"124 single-metric requests against a 120/minute key: {elapsed:.2f} s, {stats.retried} retries")
    assert stats.rejected == 0 and stats.dropped == 0, stats
    # It waited Retry-After (1 s, for 2 more requests) each time instead of hammering.
    assert 1 <= stats.retried <= 5 and elapsed >= 1.0, (stats, elapsed)
    assert stats.last_error is not None and stats.last_error.startswith("429 rate_limit_exceeded"), stats
    assert client.close_sync() is True
    service.stop()
    assert seqs(service, "limited") == list(range(124))  # each once


def test_a_full_service_answers_503_and_the_batch_is_sent_again_once_there_is_room(
    make_service: Callable[..., MetricsService],
) -> None:
    service = make_service(
        ", sending_queue: {queue_size: 40, batch_max_size: 10},"
        " retry_on_failure: {initial_interval: 100ms, max_interval: 500ms}"
    )
    key = service.key("full")
    # Another writer holds the database: exports stall and the exporter's queue fills.
    blocker = sqlite3.connect(service.db, isolation_level=None, timeout=10)
    blocker.execute("BEGIN EXCLUSIVE")
    client = MetricsClient(service.url, key.value, "full", batch_size=20, flush_interval=0.05)
    for i in range(200):
        client.emit("custom", 1.0, dimensions={"seq": i})
    wait_until(
        lambda: (client.stats.last_error or "").startswith("503 service_unavailable"), 10, "a 503"
    )
    blocker.execute("ROLLBACK")
    blocker.close()
    wait_until(lambda: client.stats.sent == 200, 20, "every metric to be accepted")
    assert client.stats.retried >= 1 and client.stats.rejected == 0, client.stats
    assert client.close_sync() is True
    service.stop()
    assert seqs(service, "full") == list(range(200))


def test_a_partly_refused_batch_logs_each_refused_metric(
    service: MetricsService, caplog: pytest.LogCaptureFixture
) -> None:
    key = service.key("partial")
    client = MetricsClient(service.url, key.value, "partial", batch_size=4)
    with caplog.at_level(logging.WARNING, logger="mcp_metrics_client"):
        client.emit("custom", 1.0, dimensions={"seq": 0})
        client.emit("no_such_type", 1.0)  # refused by the service
        client.emit("custom", float("nan"))  # not JSON: left out by the client
        client.emit("custom", 2.0, dimensions={"seq": 1})
        assert client.close_sync() is True
    stats = client.stats
    assert (stats.sent, stats.rejected, stats.requests) == (2, 2, 1), stats
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected 1 of 3 metrics: metrics[1]" in logged and "no_such_type" in logged, logged
    assert "custom metric not sent: Out of range float values" in logged, logged
    service.stop()
    assert seqs(service, "partial") == [0, 1]
