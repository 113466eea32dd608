"""The contract's wire format: a batch of buffered metrics as a `POST /metrics` body, and what
a reply says (the error body, `Retry-After`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import httpx


class Metric(NamedTuple):
    """One `emit`, as buffered. The time is taken at the call (a metric may be sent seconds
    later) and formatted only when sent, off the caller's path."""

    at: float  # time.time()
    type: str
    value: float
    duration_ms: Optional[float]
    dimensions: Optional[Mapping[str, Any]]
    metadata: Optional[Mapping[str, Any]]


def metric_json(metric: Metric) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "type": metric.type,
        "timestamp": datetime.fromtimestamp(metric.at, timezone.utc).isoformat(),
        "value": metric.value,
    }
    if metric.duration_ms is not None:
        body["duration_ms"] = metric.duration_ms
    if metric.dimensions is not None:
        body["dimensions"] = metric.dimensions
    if metric.metadata is not None:
        body["metadata"] = metric.metadata
    return body


def _dumps(value: Any) -> str:
    # NaN and infinities are not JSON: the service would refuse the whole request as malformed.
    # Values JSON has no type for (datetime, UUID, ...) are sent as their str().
    return json.dumps(value, allow_nan=False, default=str, separators=(",", ":"))


def encode_batch(
    head: Mapping[str, Any], metrics: Sequence[Metric]
) -> Tuple[Optional[bytes], List[str]]:
    """The request body for `metrics` under `head` (service, version, instance_id), and why any
    metric was left out. None when no metric could be encoded."""
    try:
        return _dumps({**head, "metrics": [metric_json(m) for m in metrics]}).encode(), []
    except (TypeError, ValueError):
        pass
    # One bad metric must not cost the batch: encode them one by one and leave it out.
    parts: List[str] = []
    problems: List[str] = []
    for metric in metrics:
        try:
            parts.append(_dumps(metric_json(metric)))
        except (TypeError, ValueError) as error:
            problems.append(f"{metric.type} metric not sent: {error}")
    if not parts:
        return None, problems
    body = _dumps(dict(head))[:-1] + ',"metrics":[' + ",".join(parts) + "]}"
    return body.encode(), problems


def reply_json(response: httpx.Response) -> Dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def refusal(response: httpx.Response) -> Tuple[str, str]:
    """The contract's `error` and `message` of a refused request (or what stands in for them)."""
    body = reply_json(response)
    error = body.get("error") or f"http_{response.status_code}"
    message = body.get("message") or response.text[:200] or response.reason_phrase
    return str(error), str(message)


def retry_after(response: httpx.Response) -> Optional[float]:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), or None if absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
