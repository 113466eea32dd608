"""Drives one metrics client at a steady rate, the way the auth server's `/validate` does (a
fire-and-forget `asyncio.create_task(metrics_client.emit_auth_metric(...))` per request), then
closes it and prints what it saw as JSON.

Usage: load_driver.py new|original URL KEY SERVICE RATE SECONDS

`new` is this package's MetricsClient; `original` the design's client, kept as a fixture in
tests/clients/metrics_client.py at the repository root. The original's tasks can swamp the event
loop they share with the load, so a watchdog thread ends the run SECONDS + its timeout after the
start, printing how far it got: the last line of the output is the result either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Set

ORIGINAL = Path(__file__).resolve().parents[3] / "tests" / "clients" / "metrics_client.py"
DRAIN_SECONDS = 5.0  # the original client's own timeout: its requests end by then, one way or another


def original_client(url: str, key: str, service: str) -> Any:
    spec = importlib.util.spec_from_file_location("metrics_client", ORIGINAL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # It logs every refused request; thousands of lines would only hide the result.
    logging.getLogger("metrics_client").disabled = True
    return module.MetricsClient(url, key, service)


def watchdog(result: Dict[str, Any], client: Any, at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))
    result["cut_off"] = True
    result["delivered"] = getattr(client, "delivered", None)
    print(json.dumps(result), flush=True)
    os._exit(0)


async def drive(client: Any, rate: float, seconds: float, result: Dict[str, Any]) -> None:
    tasks: Set["asyncio.Task[None]"] = set()
    total = int(rate * seconds)
    emitted = 0
    start = time.monotonic()
    while emitted < total:
        due = min(total, int((time.monotonic() - start) * rate))
        while emitted < due:
            i = emitted
            task = asyncio.create_task(
                client.emit_auth_metric(
                    success=i % 5 != 0,
                    method="jwt",
                    duration_ms=10.0 + i % 100,
                    server_name="mcpgw",
                    user_hash=f"user_{i:06d}",
                    error_code=None if i % 5 else "401",
                )
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            emitted += 1
        result["emitted"] = emitted
        await asyncio.sleep(0.005)
    result["emit_seconds"] = time.monotonic() - start
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=DRAIN_SECONDS)
        for task in late:
            task.cancel()


async def main(mode: str, url: str, key: str, service: str, rate: float, seconds: float) -> None:
    if mode == "new":
        from mcp_metrics_client import MetricsClient

        client: Any = MetricsClient(metrics_url=url, api_key=key, service_name=service)
    else:
        client = original_client(url, key, service)
    result: Dict[str, Any] = {"emitted": 0, "cut_off": False}
    cut_off_at = time.monotonic() + seconds + DRAIN_SECONDS + 1.0
    threading.Thread(target=watchdog, args=(result, client, cut_off_at), daemon=True).start()
    await drive(client, rate, seconds, result)
    started = time.monotonic()
    result["closed"] = await client.close()
    result["close_seconds"] = time.monotonic() - started
    if mode == "new":
        result["stats"] = dataclasses.asdict(client.stats)
    else:
        result["delivered"] = client.delivered
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    mode, url, key, service, rate, seconds = sys.argv[1:7]
    asyncio.run(main(mode, url, key, service, float(rate), float(seconds)))
