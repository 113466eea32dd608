"""A client left open is flushed at interpreter exit, and a forked child (gunicorn workers)
sends its own metrics, not its parent's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mcp_service import MetricsService

HERE = Path(__file__).resolve().parent


def test_exit_flushes_an_open_client_and_a_forked_child_sends_only_its_own(service: MetricsService) -> None:
    key = service.key("exit")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(HERE / "process_exit_driver.py"), service.url, key.value],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    service.stop()
    assert service.query(
        "SELECT json_extract(dimensions, '$.process'), COUNT(*), COUNT(DISTINCT json_extract(dimensions, '$.seq'))"
        " FROM metrics WHERE service = 'exit' GROUP BY 1 ORDER BY 1"
    ) == [("child", 7, 7), ("parent", 50, 50)]
