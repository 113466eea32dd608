"""A synchronous emit from many threads at once: every metric stored once."""

from __future__ import annotations

import threading

from mcp_metrics_client import MetricsClient
from mcp_service import MetricsService

THREADS = 4
EACH = 5000


def test_emit_from_many_threads_stores_every_metric_once(service: MetricsService) -> None:
    key = service.key("threads")
    # Room for all: the threads emit far faster than batches go (the bound is tested elsewhere).
    with MetricsClient(service.url, key.value, "threads", max_buffer=THREADS * EACH) as client:

        def work(thread: int) -> None:
            for seq in range(EACH):
                client.emit("custom", 1.0, dimensions={"thread": thread, "seq": seq})

        workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    # Leaving the `with` closed the client, sending what was buffered.
    stats = client.stats
    total = THREADS * EACH
    assert (stats.emitted, stats.sent, stats.dropped, stats.pending) == (total, total, 0, 0), stats
    service.stop()
    distinct = service.query(
        "SELECT COUNT(*), COUNT(DISTINCT json_extract(dimensions, '$.thread') || ':' ||"
        " json_extract(dimensions, '$.seq')) FROM metrics WHERE service = 'threads'"
    )
    assert distinct == [(THREADS * EACH, THREADS * EACH)]
