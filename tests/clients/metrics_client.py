"""The MCP Gateway auth server's metrics client, as the original design writes it (httpx,
fire-and-forget tasks, naive UTC timestamps from datetime.utcnow().isoformat(), X-API-Key).

Usage: metrics_client.py URL API_KEY COUNT
Emits COUNT auth metrics and COUNT tool-execution metrics the way the auth server and an MCP
server do, then prints how many requests were answered 200.
"""

import asyncio
import logging
import sys
import warnings
from datetime import datetime
from typing import Optional

import httpx

logger = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=DeprecationWarning)  # utcnow(), as in the field


class MetricsClient:
    """HTTP client for sending metrics to collection service."""

    def __init__(self, metrics_url: str, api_key: str, service_name: str, timeout: float = 5.0):
        self.metrics_url = f"{metrics_url}/metrics"
        self.api_key = api_key
        self.service_name = service_name
        self.timeout = timeout
        self._client = None
        self.delivered = 0

    async def _get_client(self):
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def _emit(self, metric: dict):
        try:
            client = await self._get_client()
            payload = {"service": self.service_name, "version": "1.0.0", "metrics": [metric]}
            response = await client.post(self.metrics_url, json=payload, headers={"X-API-Key": self.api_key})
            if response.status_code != 200:
                logger.warning(f"Metrics API error: {response.status_code} {response.text}")
            else:
                self.delivered += 1
        except Exception as e:
            # Never fail the main operation due to metrics
            logger.error(f"Failed to emit metric: {e}")

    async def emit_auth_metric(self, success: bool, method: str, duration_ms: float,
                               server_name: Optional[str] = None, user_hash: Optional[str] = None,
                               error_code: Optional[str] = None):
        await self._emit({
            "type": "auth_request",
            "timestamp": datetime.utcnow().isoformat(),
            "value": 1.0,
            "duration_ms": duration_ms,
            "dimensions": {"success": success, "method": method,
                           "server": server_name or "unknown", "user_hash": user_hash or ""},
            "metadata": {"error_code": error_code},
        })

    async def emit_tool_metric(self, tool_name: str, server_name: str, success: bool, duration_ms: float):
        await self._emit({
            "type": "tool_execution",
            "timestamp": datetime.utcnow().isoformat(),
            "value": 1.0,
            "duration_ms": duration_ms,
            "dimensions": {"tool_name": tool_name, "server_path": f"/{server_name}",
                           "server_name": server_name, "success": success},
            "metadata": {"error_code": None if success else "500",
                         "input_size_bytes": 128, "output_size_bytes": 1024},
        })

    async def close(self):
        if self._client:
            await self._client.aclose()


async def main(url: str, key: str, count: int):
    client = MetricsClient(url, key, "auth-server")
    tasks = []
    for i in range(count):
        # As in /validate: fire and forget, the request handler does not wait.
        tasks.append(asyncio.create_task(client.emit_auth_metric(
            success=i % 5 != 0, method="jwt", duration_ms=10.0 + i,
            server_name="mcpgw", user_hash=f"user_{i:04d}",
            error_code=None if i % 5 else "401")))
        tasks.append(asyncio.create_task(client.emit_tool_metric(
            tool_name="intelligent_tool_finder", server_name="mcpgw", success=i % 7 != 0,
            duration_ms=100.0 + i)))
    await asyncio.gather(*tasks)
    await client.close()
    print(client.delivered)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
