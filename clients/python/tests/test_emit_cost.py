"""What an emit costs the caller: a few microseconds, and never a wait on the network."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from typing import Callable, List

from mcp_metrics_client import MetricsClient
from mcp_service import MetricsService

CALLS = 50_000


def median_us(samples: List[int]) -> float:
    return statistics.median(samples) / 1000


def test_an_emit_costs_under_20_us_with_the_service_stopped(
    service: MetricsService, figure: Callable[[str], None]
) -> None:
    key = service.key("cost")
    service.stop()
    client = MetricsClient(metrics_url=service.url, api_key=key.value, service_name="cost")
    dimensions = {"method": "jwt", "success": True, "server": "mcpgw"}
    samples = []
    for i in range(CALLS):
        started = time.perf_counter_ns()
        client.emit("auth_request", 1.0, 12.5, dimensions, {"seq": i})
        samples.append(time.perf_counter_ns() - started)

    async def awaited() -> List[int]:
        # The design's call sites: a plain `await` of an emit_*_metric returns at once too.
        samples = []
        for _ in range(CALLS // 10):
            started = time.perf_counter_ns()
            await client.emit_auth_metric(True, "jwt", 12.5, "mcpgw", "user_1")
            samples.append(time.perf_counter_ns() - started)
        return samples

    awaited_samples = asyncio.run(awaited())
    stats = client.stats
    figure(
        f"emit median {median_us(samples):.2f} µs (p99 {statistics.quantiles(samples, n=100)[98] / 1000:.1f} µs), "
        f"await emit_auth_metric median {median_us(awaited_samples):.2f} µs, over {CALLS} calls"
    )
    assert median_us(samples) < 20
    assert median_us(awaited_samples) < 20
    # Nothing could be sent: the newest max_buffer wait, the older ones were dropped, exactly.
    total = CALLS + CALLS // 10
    assert (stats.emitted, stats.sent, stats.pending) == (total, 0, client.max_buffer), stats
    assert stats.dropped == total - client.max_buffer
    assert stats.last_error is not None and "Connect" in stats.last_error, stats
    closing = time.monotonic()
    assert client.close_sync(timeout=0.3) is False  # nothing can be delivered: it says so
    assert time.monotonic() - closing < 2
    assert client.stats.dropped == total and client.stats.pending == 0


def test_emit_never_waits_on_the_network(figure: Callable[[str], None]) -> None:
    # A service that takes the connection and never answers: the sender is stuck in a request.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = MetricsClient(url, "key", "silent", timeout=5.0, batch_size=10)
        for i in range(10):  # a full batch: sent at once
            client.emit("custom", 1.0, dimensions={"seq": i})
        silent.settimeout(5)
        connection, _ = silent.accept()
        with connection:
            connection.settimeout(5)
            assert connection.recv(65536).startswith(b"POST /metrics")  # the request is in flight
            started = time.monotonic()
            samples = []
            for i in range(CALLS):
                before = time.perf_counter_ns()
                client.emit("custom", 1.0, dimensions={"seq": i})
                samples.append(time.perf_counter_ns() - before)
            elapsed = time.monotonic() - started
            figure(f"{CALLS} emits while a request hangs: {elapsed:.3f} s, median {median_us(samples):.2f} µs")
            assert elapsed < 1.0 and median_us(samples) < 20
            assert client.stats.requests == 1 and client.stats.sent == 0
            started = time.monotonic()
            assert client.close_sync(timeout=0.2) is False
            assert time.monotonic() - started < 1.0  # close() is bounded too
