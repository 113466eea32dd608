"""The background thread that turns the buffer into `POST /metrics` requests, and the delivery
policy: what each answer means for the batch (send again, drop, count)."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import httpx

from ._buffer import MetricBuffer
from ._wire import Metric, encode_batch, refusal, reply_json, retry_after

logger = logging.getLogger("mcp_metrics_client")

FIRST_BACKOFF = 0.1  # seconds before the first retry after a connection error or a 5xx


@dataclass(frozen=True)
class SenderSettings:
    url: str
    api_key: str
    head: Mapping[str, Any]  # service, version, instance_id: the part of the body all batches share
    timeout: float
    flush_interval: float
    max_backoff: float


def http_client(settings: SenderSettings) -> httpx.Client:
    """One connection, kept alive between batches. Made in the caller's thread, not the
    sender's: httpx imports parts of itself on first use, and a fork while another thread is
    importing leaves the child a half-initialised module."""
    return httpx.Client(
        timeout=settings.timeout,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        headers={"X-API-Key": settings.api_key, "Content-Type": "application/json"},
    )


class Sender:
    def __init__(self, buffer: MetricBuffer, settings: SenderSettings, http: httpx.Client) -> None:
        self._buffer = buffer
        self._settings = settings
        self._http = http
        self._closing = threading.Event()
        self._deadline: Optional[float] = None  # monotonic; set by close()
        self._logged: Set[Tuple[int, str]] = set()  # refusal kinds already logged
        self._outage_since: Optional[float] = None
        self._gave_up = False
        self._thread = threading.Thread(target=self._run, name="mcp-metrics-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float) -> bool:
        """Sends what is buffered, within `timeout` seconds; True if it all went."""
        self._deadline = time.monotonic() + timeout
        self._buffer.close()
        self._closing.set()
        self._thread.join(timeout)
        return not self._thread.is_alive() and not self._gave_up

    # The thread.

    def _run(self) -> None:
        settings = self._settings
        try:
            with self._http as http:
                while True:
                    batch = self._buffer.take(settings.flush_interval)
                    if batch:
                        self._deliver(http, batch)
                    elif self._buffer.closed:
                        return
        except Exception:  # a bug here must not go unseen, nor reach the application
            logger.exception("mcp-metrics client: the sender stopped; metrics are no longer sent")

    def _deliver(self, http: httpx.Client, batch: List[Metric]) -> None:
        body, problems = encode_batch(self._settings.head, batch)
        unencodable = len(problems)
        if problems:
            self._buffer.note_error(problems[0])
            logger.warning("mcp-metrics client: %s", "; ".join(problems[:5]))
        if body is None:
            self._buffer.settle(rejected=unencodable)
            return
        size = len(batch) - unencodable
        # The contract's Idempotency-Key: a service that keeps them stores a batch sent again
        # after a lost reply only once.
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        failures = 0
        while True:
            self._buffer.count_request(retry=failures > 0)
            try:
                response = http.post(self._settings.url, content=body, headers=headers)
            except httpx.HTTPError as error:  # connection refused or reset, timeouts
                failures += 1
                self._unreachable(error)
                wait = self._backoff(failures)
            else:
                status = response.status_code
                if status == 200:
                    self._accepted(response, size, unencodable)
                    return
                failures += 1
                if status in (429, 503) or status >= 500:
                    wait = self._retry_later(response, failures)
                else:
                    self._refused(response, size)
                    self._buffer.settle(rejected=size + unencodable)
                    return
            if not self._pause(wait):
                self._give_up(size + unencodable)
                return

    # Outcomes.

    def _accepted(self, response: httpx.Response, size: int, unencodable: int) -> None:
        if self._outage_since is not None:
            logger.info(
                "mcp-metrics client: the metrics service is reachable again after %.1f s",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        reply = reply_json(response)
        accepted = _count(reply.get("accepted"), size)
        rejected = _count(reply.get("rejected"), size - accepted)
        if rejected:
            errors = _errors(reply)
            self._buffer.note_error(f"200 with {rejected} rejected: {errors[:1]}")
            logger.warning(
                "mcp-metrics client: the service rejected %d of %d metrics: %s",
                rejected,
                size,
                "; ".join(str(e) for e in errors[:10]) + (" ..." if len(errors) > 10 else ""),
            )
        self._buffer.settle(sent=accepted, rejected=rejected + unencodable)

    def _refused(self, response: httpx.Response, size: int) -> None:
        """A 4xx other than 429: sending the batch again would be refused again."""
        error, message = refusal(response)
        text = f"{response.status_code} {error}: {message}"
        self._buffer.note_error(text)
        errors = _errors(reply_json(response))
        detail = f" ({'; '.join(str(e) for e in errors[:5])})" if errors else ""
        if response.status_code == 401:
            detail += " (check the client's API key, METRICS_API_KEY: it is missing, unknown or revoked)"
        first = self._first_of_kind(response.status_code, error)
        logger.log(
            logging.ERROR if first else logging.DEBUG,
            "mcp-metrics client: the metrics service refused a batch: %s%s; %d metrics dropped%s",
            text,
            detail,
            size,
            " (this kind of refusal is logged once; see client.stats)" if first else "",
        )

    def _retry_later(self, response: httpx.Response, failures: int) -> float:
        """A 429, 503 or other 5xx: how long to wait before sending the same batch again."""
        error, message = refusal(response)
        text = f"{response.status_code} {error}: {message}"
        self._buffer.note_error(text)
        after = retry_after(response)
        first = self._first_of_kind(response.status_code, error)
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "mcp-metrics client: %s; sending the batch again in %s",
            text,
            f"{after:g} s (Retry-After)" if after is not None else "a moment",
        )
        if after is None:
            return self._backoff(failures)
        # Jitter so that clients told the same Retry-After do not come back at once.
        return max(after, 0.05) * random.uniform(1.0, 1.2)

    def _unreachable(self, error: httpx.HTTPError) -> None:
        text = f"{type(error).__name__}: {error}"
        self._buffer.note_error(text)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "mcp-metrics client: cannot reach %s (%s); keeping metrics and retrying",
                self._settings.url,
                text,
            )

    def _give_up(self, size: int) -> None:
        """close()'s time ran out: the batch and what is still queued are dropped."""
        self._gave_up = True
        dropped = size + self._buffer.abandon()
        self._buffer.settle(dropped=size)
        logger.error(
            "mcp-metrics client: closing; %d metrics not delivered in time (last error: %s)",
            dropped,
            self._buffer.snapshot().last_error,
        )

    # Waiting.

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._settings.max_backoff, FIRST_BACKOFF * 2.0 ** min(failures - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    def _pause(self, seconds: float) -> bool:
        """Waits before a retry; False when close()'s deadline leaves no time for one."""
        until = time.monotonic() + seconds
        if not self._closing.wait(seconds):
            return True
        # Closing: retries go on, but only until the deadline.
        assert self._deadline is not None
        if until > self._deadline:
            return False
        time.sleep(max(0.0, until - time.monotonic()))
        return True

    def _first_of_kind(self, status: int, error: str) -> bool:
        kind = (status, error)
        if kind in self._logged:
            return False
        self._logged.add(kind)
        return True


def _count(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _errors(reply: Dict[str, Any]) -> List[Any]:
    errors = reply.get("errors")
    return errors if isinstance(errors, list) else []
