"""Client for the mcp-metrics service: batching, retrying, bounded, never in the caller's way.

    from mcp_metrics_client import MetricsClient

    metrics_client = MetricsClient(service_name="auth-server")  # METRICS_SERVICE_URL, METRICS_API_KEY
    asyncio.create_task(metrics_client.emit_auth_metric(success=True, method="jwt", duration_ms=12.5))
    metrics_client.emit("custom", 1.0, dimensions={"k": "v"})  # from any thread
    await metrics_client.close()  # sends what is buffered
"""

from .client import MetricsClient
from .stats import ClientStats

__all__ = ["ClientStats", "MetricsClient"]
__version__ = "0.1.0"
