"""A real mcp-metrics process for the tests: the binary named by `MCP_METRICS_BIN`, on a free
loopback port, with a SQLite file in the test's temporary folder, read back with sqlite3."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import httpx

# No batch processor: an accepted metric is exported at once, so tests wait on rows, not on a
# batch timeout. No retention: nothing a test stored is deleted under it. No Prometheus port.
PIPELINE = """\
receivers:
  http: {{host: 127.0.0.1, port: {port}, database: '{db}'}}
processors:
  auth: {{database: '{db}', refresh_interval: 200ms}}
  rate_limit: {{}}
  validate: {{}}
exporters:
  sqlite: {{path: '{db}', retention_days: 0{sqlite_options}}}
service:
  shutdown_timeout: 20s
  pipelines:
    metrics: {{receivers: [http], processors: [auth, rate_limit, validate], exporters: [sqlite]}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls `condition` until it is truthy; fails the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Key:
    id: int
    value: str


class MetricsService:
    def __init__(self, binary: Path, folder: Path, sqlite_options: str = "") -> None:
        self.binary = binary
        self.folder = folder
        self.db = folder / "metrics.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "pipelines.yaml"
        self.config.write_text(
            PIPELINE.format(port=self.port, db=self.db, sqlite_options=sqlite_options)
        )
        self.log = folder / "service.log"
        self._process: Optional[subprocess.Popen[bytes]] = None
        # The test's own variables must not configure the service.
        self._env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("METRICS_", "SQLITE_", "OTEL_", "BATCH_", "FLUSH_"))
        }
        self._env["RUST_LOG"] = "info"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), "run", "--config", str(self.config)],
                cwd=self.folder,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_until(self._healthy, 20, f"the service to answer /health\n{self.log_tail()}")

    def _healthy(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"the service exited {self._process.returncode}\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """SIGTERM: the service finishes its requests, exports everything it acknowledged and
        exits 0; then the SQLite file holds exactly what was acknowledged."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGTERM)
        code = self._process.wait(timeout=30)
        self._process = None
        assert code == 0, f"the service exited {code}\n{self.log_tail()}"

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.binary), *args, "--database", str(self.db)],
            cwd=self.folder,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def key(self, service: str, rate_limit: Optional[int] = None) -> Key:
        args = ["keys", "create", "--service", service]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        out = self._cli(*args)
        found = re.search(r"key (\d+) for service", out)
        assert found, out
        return Key(int(found.group(1)), out.strip().splitlines()[-1])

    def revoke(self, key: Key) -> None:
        self._cli("keys", "revoke", str(key.id))

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[Any]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as db:
            return db.execute(sql, params).fetchall()

    def rows(self, service: str, table: str = "metrics") -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {table} WHERE service = ?", (service,))[0][0])

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
