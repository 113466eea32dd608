"""The issue's load: 2,000 metrics a second for 10 s from one client whose key has the default
limit of 1000 requests a minute, through this package and through the design's original client
at the same time (each with a key of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict

from mcp_service import MetricsService

RATE = 2000
SECONDS = 10
TOTAL = RATE * SECONDS
DRIVER = Path(__file__).resolve().parent / "load_driver.py"
SOURCE = Path(__file__).resolve().parents[1] / "src"


def start_driver(mode: str, service: MetricsService, service_name: str) -> "subprocess.Popen[str]":
    key = service.key(service_name)  # no --rate-limit: the default 1000 requests/minute
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(DRIVER), mode, service.url, key.value, service_name, str(RATE), str(SECONDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def result_of(driver: "subprocess.Popen[str]") -> Dict[str, Any]:
    out, err = driver.communicate(timeout=SECONDS + 30)
    assert driver.returncode == 0 and out.strip(), f"driver failed ({driver.returncode}):\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def test_2000_metrics_a_second_are_all_stored_where_the_original_client_loses_most(
    service: MetricsService, figure: Callable[[str], None]
) -> None:
    new = start_driver("new", service, "auth-new")
    original = start_driver("original", service, "auth-original")
    new_result = result_of(new)
    original_result = result_of(original)
    service.stop()  # exports everything it acknowledged

    stats = new_result["stats"]
    stored = service.rows("auth-new")
    distinct = service.query(
        "SELECT COUNT(DISTINCT user_hash) FROM auth_metrics WHERE service = ?", ("auth-new",)
    )[0][0]
    figure(
        f"new client: {stored} of {new_result['emitted']} metrics stored, in {stats['requests']} "
        f"requests; emitting took {new_result['emit_seconds']:.2f} s, close() {new_result['close_seconds']:.3f} s"
    )
    # The load really was 2,000 a second for 10 s, and every metric of it is stored, once.
    assert new_result["emitted"] == TOTAL and new_result["emit_seconds"] < SECONDS + 1, new_result
    assert not new_result["cut_off"] and new_result["closed"] is True, new_result
    assert stats["sent"] == TOTAL and stats["dropped"] == 0 and stats["rejected"] == 0, stats
    assert stored == TOTAL and distinct == TOTAL
    assert service.rows("auth-new", "auth_metrics") == TOTAL
    # Batching is why: a request per 100 metrics stays inside the key's limit.
    assert stats["requests"] <= TOTAL // 100 + 50, stats

    stored_original = service.rows("auth-original")
    figure(
        f"original client: {stored_original} of {TOTAL} metrics stored; it was handed "
        f"{original_result['emitted']} before its run was cut off={original_result['cut_off']}, "
        f"{original_result['delivered']} answered 200"
    )
    # The design's client, a POST per metric: most of the same load is lost.
    assert stored_original < TOTAL // 2, original_result
