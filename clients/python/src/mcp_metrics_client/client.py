"""`MetricsClient`: the gateway's metrics client (the design's `auth_server/metrics_client.py`),
with the same constructor and `emit_*_metric` coroutines, but an emit only queues the metric; a
background thread sends them in batches, honours `Retry-After`, retries what may succeed later,
keeps at most `max_buffer` waiting and flushes on `close()`."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Dict, Mapping, Optional, Type

from ._buffer import MetricBuffer
from ._sender import Sender, SenderSettings, http_client
from ._wire import Metric
from .stats import ClientStats

logger = logging.getLogger("mcp_metrics_client")

DEFAULT_URL = "http://localhost:8890"
MAX_METRICS_PER_REQUEST = 5000  # the service's default `max_metrics_per_request`


class MetricsClient:
    """Sends metrics to mcp-metrics without ever slowing down or failing its caller.

    `emit` (any thread) and the `emit_*_metric` coroutines (asyncio) only put the metric in a
    bounded buffer and return. A daemon thread, started at the first emit, sends up to
    `batch_size` metrics per `POST /metrics` every `flush_interval` seconds, or as soon as
    `batch_size` are waiting, over one kept-alive connection. Because it has its own thread, the
    client works the same in asyncio services, threaded ones and scripts, and a slow or absent
    service never blocks an event loop.
    """

    def __init__(
        self,
        metrics_url: Optional[str] = None,
        api_key: Optional[str] = None,
        service_name: str = "auth-server",
        timeout: float = 5.0,
        *,
        version: str = "1.0.0",
        instance_id: Optional[str] = None,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_buffer: int = 10_000,
        max_backoff: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        """`metrics_url` is the service's base URL (`METRICS_SERVICE_URL`, else
        http://localhost:8890); `api_key` its key (`METRICS_API_KEY`); `timeout` the time each
        request may take. `max_backoff` caps the wait between retries after connection errors;
        `close_timeout` is how long `close()` may take to send what is buffered."""
        if not 1 <= batch_size <= MAX_METRICS_PER_REQUEST:
            raise ValueError(f"batch_size must be 1 to {MAX_METRICS_PER_REQUEST}: {batch_size}")
        if max_buffer < batch_size:
            raise ValueError(f"max_buffer ({max_buffer}) must be at least batch_size ({batch_size})")
        if flush_interval <= 0 or timeout <= 0 or max_backoff <= 0 or close_timeout < 0:
            raise ValueError("flush_interval, timeout and max_backoff must be positive")
        base = metrics_url or os.getenv("METRICS_SERVICE_URL") or DEFAULT_URL
        self.metrics_url = f"{base.rstrip('/')}/metrics"
        self.api_key = api_key if api_key is not None else os.getenv("METRICS_API_KEY", "")
        self.service_name = service_name
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.close_timeout = close_timeout
        head = {"service": service_name, "version": version}
        if instance_id is not None:
            head["instance_id"] = instance_id
        self._settings = SenderSettings(
            url=self.metrics_url,
            api_key=self.api_key,
            head=head,
            timeout=timeout,
            flush_interval=flush_interval,
            max_backoff=max_backoff,
        )
        self._buffer = MetricBuffer(max_buffer, batch_size)
        self._http = http_client(self._settings)
        self._sender: Optional[Sender] = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._warned_closed = False
        _live_clients.add(self)

    # Emitting: cheap, never blocking on the network, never raising.

    def emit(
        self,
        type: str,
        value: float,
        duration_ms: Optional[float] = None,
        dimensions: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Queues one metric of a contract type (`auth_request`, `tool_discovery`,
        `tool_execution`, `registry_operation`, `health_check`, `protocol_latency`, `custom`).
        Safe to call from any thread; returns at once."""
        try:
            # Copies, so a caller reusing its dict does not change a metric already emitted.
            metric = Metric(
                time.time(),
                type,
                value,
                duration_ms,
                None if dimensions is None else dict(dimensions),
                None if metadata is None else dict(metadata),
            )
            if not self._buffer.put(metric):
                self._warn_closed()
            elif self._sender is None:
                self._start()
        except Exception:  # metrics never fail the caller's work
            logger.exception("mcp-metrics client: a metric could not be queued")

    async def emit_auth_metric(
        self,
        success: bool,
        method: str,
        duration_ms: float,
        server_name: Optional[str] = None,
        user_hash: Optional[str] = None,
        error_code: Optional[str] = None,
    ) -> None:
        """An `auth_request` (a row in `auth_metrics`), exactly as the design's client sends it."""
        self.emit(
            "auth_request",
            1.0,
            duration_ms,
            {
                "success": success,
                "method": method,
                "server": server_name or "unknown",
                "user_hash": user_hash or "",
            },
            {"error_code": error_code},
        )

    async def emit_discovery_metric(
        self,
        query: str,
        results_count: int,
        duration_ms: float,
        top_k_services: Optional[int] = None,
        top_n_tools: Optional[int] = None,
        embedding_time_ms: Optional[float] = None,
        faiss_search_time_ms: Optional[float] = None,
    ) -> None:
        """A `tool_discovery` (a row in `discovery_metrics`)."""
        dimensions = _present(
            query=query,
            results_count=results_count,
            top_k_services=top_k_services,
            top_n_tools=top_n_tools,
        )
        metadata = _present(
            embedding_time_ms=embedding_time_ms, faiss_search_time_ms=faiss_search_time_ms
        )
        self.emit("tool_discovery", 1.0, duration_ms, dimensions, metadata)

    async def emit_tool_metric(
        self,
        tool_name: str,
        server_name: str,
        success: bool,
        duration_ms: float,
        server_path: Optional[str] = None,
        error_code: Optional[str] = None,
        input_size_bytes: Optional[int] = None,
        output_size_bytes: Optional[int] = None,
    ) -> None:
        """A `tool_execution` (a row in `tool_metrics`); `server_path` defaults to
        `/{server_name}`, as the gateway mounts servers."""
        dimensions = {
            "tool_name": tool_name,
            "server_path": server_path or f"/{server_name}",
            "server_name": server_name,
            "success": success,
        }
        metadata = {"error_code": error_code}
        metadata.update(
            _present(input_size_bytes=input_size_bytes, output_size_bytes=output_size_bytes)
        )
        self.emit("tool_execution", 1.0, duration_ms, dimensions, metadata)

    async def emit_registry_metric(
        self,
        operation: str,
        success: bool,
        duration_ms: float,
        server_path: Optional[str] = None,
        error_code: Optional[str] = None,
    ) -> None:
        """A `registry_operation` (`list`, `register`, `toggle`, ...)."""
        dimensions = _present(operation=operation, success=success, server_path=server_path)
        self.emit("registry_operation", 1.0, duration_ms, dimensions, {"error_code": error_code})

    async def emit_health_metric(self, server_name: str, status: str, duration_ms: float) -> None:
        """A `health_check` of a server (`status` such as `ok`, `unhealthy`)."""
        self.emit("health_check", 1.0, duration_ms, {"server": server_name, "status": status})

    async def emit_protocol_latency_metric(
        self, method: str, duration_ms: float, server_name: Optional[str] = None
    ) -> None:
        """A `protocol_latency`: the time an MCP protocol exchange (`method`) took."""
        dimensions = {"method": method, "server": server_name or "unknown"}
        self.emit("protocol_latency", duration_ms / 1000.0, duration_ms, dimensions)

    # State and shutdown.

    @property
    def stats(self) -> ClientStats:
        """Sent, rejected, dropped, retried, pending, the last error."""
        return self._buffer.snapshot()

    def close_sync(self, timeout: Optional[float] = None) -> bool:
        """Sends what is buffered and stops, within `timeout` seconds (`close_timeout`). True if
        every metric was dealt with (sent, or refused by the service); what is left when time
        runs out is dropped and counted. Later emits are dropped. Blocks the calling thread:
        from asyncio code, `await close()`."""
        with self._start_lock:
            self._closed = True
            sender = self._sender
        if sender is None:  # never started: nothing was emitted
            self._buffer.close()
            self._http.close()
            return self._buffer.abandon() == 0
        return sender.close(self.close_timeout if timeout is None else timeout)

    async def close(self, timeout: Optional[float] = None) -> bool:
        """`close_sync` without blocking the event loop (the design's `await client.close()`)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.close_sync, timeout)

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close_sync()

    async def __aenter__(self) -> MetricsClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.close()

    def _start(self) -> None:
        with self._start_lock:
            if self._sender is None and not self._closed:
                sender = Sender(self._buffer, self._settings, self._http)
                sender.start()
                self._sender = sender

    def _warn_closed(self) -> None:
        if not self._warned_closed:
            self._warned_closed = True
            logger.warning("mcp-metrics client: emit after close(); metrics are dropped")

    def _at_exit(self) -> None:
        if self._sender is not None and not self._closed:
            self.close_sync()

    def _forget_parent(self) -> None:
        """In a forked child (gunicorn workers, multiprocessing): the parent's thread and
        buffer stay the parent's (it sends them); the child starts empty, with its own, and a
        connection of its own (the parent's is left alone: closing it here would not be ours)."""
        self._buffer = MetricBuffer(self.max_buffer, self.batch_size)
        self._sender = None
        self._start_lock = threading.Lock()
        if self._closed:
            self._buffer.close()
        else:
            self._http = http_client(self._settings)


def _present(**values: Any) -> Dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


# Every client flushes at interpreter exit (its thread is a daemon, so it would not otherwise
# get the chance) and starts afresh in a forked child.
_live_clients: "weakref.WeakSet[MetricsClient]" = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for client in list(_live_clients):
        client._at_exit()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._forget_parent()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
