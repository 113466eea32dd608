"""What a client has done with the metrics it was given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ClientStats:
    """A consistent snapshot (`MetricsClient.stats`). Every emitted metric is in exactly one of
    `sent`, `rejected`, `dropped` and `pending`."""

    emitted: int
    """Metrics given to `emit` (and the `emit_*_metric` methods)."""
    sent: int
    """Metrics the service accepted (a 200 and counted in its `accepted`)."""
    rejected: int
    """Metrics the service refused (a 4xx other than 429, or listed in a 200's `errors`), or that
    could not be encoded as JSON. Refusals are not retried: the same request would be refused
    again."""
    dropped: int
    """Metrics this client gave up on: the oldest, when `max_buffer` were waiting; those emitted
    after `close()`; those still unsent when `close()`'s timeout ran out."""
    retried: int
    """Requests sent again (after a 429 or 503, a 5xx, a connection error or a timeout)."""
    requests: int
    """`POST /metrics` requests made, retries included."""
    pending: int
    """Metrics waiting to be sent, the batch being sent included."""
    last_error: Optional[str]
    """The last failure, e.g. `"429 rate_limit_exceeded: ..."` or `"ConnectError: ..."`."""
