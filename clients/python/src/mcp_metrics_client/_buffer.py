"""The bounded buffer between the callers and the sender thread, and the ledger of what became
of every metric. One lock guards both, so `snapshot()` always adds up."""

from __future__ import annotations

import threading
from collections import deque
from typing import Deque, List, Optional

from ._wire import Metric
from .stats import ClientStats


class MetricBuffer:
    def __init__(self, max_size: int, batch_size: int) -> None:
        self._max_size = max_size
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._batch_ready = threading.Condition(self._lock)
        self._queue: Deque[Metric] = deque()
        # The batch the sender holds counts against max_size too: the bound is on everything
        # not yet delivered, so memory is bounded and the drop count is exact.
        self._in_flight = 0
        self._closed = False
        self._emitted = 0
        self._sent = 0
        self._rejected = 0
        self._dropped = 0
        self._retried = 0
        self._requests = 0
        self._last_error: Optional[str] = None

    # The callers' side: any thread, never blocks for longer than the lock is held.

    def put(self, metric: Metric) -> bool:
        """Queues a metric, dropping the oldest waiting one when full. False once closed."""
        with self._lock:
            self._emitted += 1
            if self._closed:
                self._dropped += 1
                return False
            queue = self._queue
            if len(queue) + self._in_flight >= self._max_size:
                self._dropped += 1
                if not queue:  # everything held is in flight: the newest is the one to lose
                    return True
                queue.popleft()
            queue.append(metric)
            if len(queue) == self._batch_size:
                self._batch_ready.notify()
            return True

    def close(self) -> None:
        """Refuses further metrics; what is queued may still be taken, without waiting."""
        with self._lock:
            self._closed = True
            self._batch_ready.notify_all()

    # The sender's side.

    def take(self, wait: float) -> List[Metric]:
        """Up to a batch of metrics, waiting up to `wait` seconds for a full one (not at all once
        closed). Empty if none came. They are in flight until `settle`."""
        with self._lock:
            queue = self._queue
            if len(queue) < self._batch_size and not self._closed:
                self._batch_ready.wait(wait)
            batch = [queue.popleft() for _ in range(min(len(queue), self._batch_size))]
            self._in_flight = len(batch)
            return batch

    def settle(self, sent: int = 0, rejected: int = 0, dropped: int = 0) -> None:
        """What became of the batch in flight."""
        with self._lock:
            self._sent += sent
            self._rejected += rejected
            self._dropped += dropped
            self._in_flight = 0

    def abandon(self) -> int:
        """Drops everything queued (a close that ran out of time); returns how many."""
        with self._lock:
            count = len(self._queue)
            self._queue.clear()
            self._dropped += count
            return count

    def count_request(self, retry: bool) -> None:
        with self._lock:
            self._requests += 1
            if retry:
                self._retried += 1

    def note_error(self, error: str) -> None:
        with self._lock:
            self._last_error = error

    @property
    def closed(self) -> bool:
        return self._closed

    def snapshot(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                emitted=self._emitted,
                sent=self._sent,
                rejected=self._rejected,
                dropped=self._dropped,
                retried=self._retried,
                requests=self._requests,
                pending=len(self._queue) + self._in_flight,
                last_error=self._last_error,
            )
