"""The service stopped for 3 s mid-stream and started again: the client keeps what it could not
send, within max_buffer, and counts exactly what it had to drop past it."""

from __future__ import annotations

import threading
import time
from typing import Callable, List

from mcp_metrics_client import MetricsClient
from mcp_service import MetricsService, wait_until

RATE = 1000  # metrics a second, per client
SECONDS = 5
OUTAGE = 3.0
TOTAL = RATE * SECONDS


def stored_seqs(service: MetricsService, name: str) -> List[int]:
    rows = service.query(
        "SELECT json_extract(dimensions, '$.seq') FROM metrics WHERE service = ? ORDER BY 1", (name,)
    )
    return [row[0] for row in rows]


def test_a_3_s_outage_loses_nothing_within_max_buffer_and_counts_exactly_what_it_drops_past_it(
    service: MetricsService, figure: Callable[[str], None]
) -> None:
    roomy_key = service.key("outage-roomy")
    tight_key = service.key("outage-tight")
    # Retries every half second at most, so the test does not wait out a long backoff.
    roomy = MetricsClient(service.url, roomy_key.value, "outage-roomy", max_backoff=0.5)
    tight = MetricsClient(service.url, tight_key.value, "outage-tight", max_backoff=0.5, max_buffer=500)

    streaming = threading.Event()
    restarted = threading.Event()
    outage: List[float] = []

    def stop_and_start() -> None:
        streaming.wait()
        outage.append(time.monotonic())
        service.stop()
        time.sleep(OUTAGE)  # the scenario: 3 s without a service
        service.start()
        outage.append(time.monotonic())
        restarted.set()

    operator = threading.Thread(target=stop_and_start)
    operator.start()
    started = time.monotonic()
    emitted = 0
    while emitted < TOTAL:
        due = min(TOTAL, int((time.monotonic() - started) * RATE))
        for seq in range(emitted, due):
            roomy.emit("custom", 1.0, dimensions={"seq": seq})
            tight.emit("custom", 1.0, dimensions={"seq": seq})
        emitted = due
        if emitted >= RATE // 2:
            streaming.set()  # half a second into the stream
        time.sleep(0.002)
    operator.join()
    assert restarted.is_set() and outage[0] < started + SECONDS, "the outage was mid-stream"
    assert time.monotonic() - started < SECONDS + OUTAGE, "the stream kept its pace during the outage"

    wait_until(lambda: roomy.stats.pending == 0 and tight.stats.pending == 0, 15, "the backlog to drain")
    assert roomy.close_sync() is True and tight.close_sync() is True
    service.stop()

    # Within max_buffer: every metric stored, once.
    stats = roomy.stats
    assert (stats.emitted, stats.sent, stats.dropped, stats.rejected) == (TOTAL, TOTAL, 0, 0), stats
    assert stats.retried >= 1, "the outage was felt"
    assert stored_seqs(service, "outage-roomy") == list(range(TOTAL))

    # Past it: the count is exact, and what went was the oldest of the outage's backlog.
    stats = tight.stats
    stored = stored_seqs(service, "outage-tight")
    missing = sorted(set(range(TOTAL)) - set(stored))
    stopped_at = int((outage[0] - started) * RATE)  # the seq being emitted at the SIGTERM
    runs = 1 + sum(1 for a, b in zip(missing, missing[1:]) if b != a + 1)
    figure(
        f"{OUTAGE:.0f} s outage at {RATE}/s: max_buffer 10000 stored {len(stored_seqs(service, 'outage-roomy'))}"
        f" of {TOTAL}; max_buffer 500 stored {len(stored)}, dropped {stats.dropped}"
        f" (missing {len(missing)}: seqs {missing[0]}..{missing[-1]} in {runs} run(s), stopped at seq {stopped_at})"
    )
    assert len(stored) == len(set(stored)) == stats.sent, stats
    assert stats.emitted == TOTAL and stats.rejected == 0 and stats.pending == 0, stats
    assert stats.dropped == len(missing) == TOTAL - len(stored), stats
    assert stats.dropped >= RATE, "max_buffer was exceeded"
    # Before the outage everything was delivered; dropping began with the oldest waiting (just
    # after the batch in flight), not with the newest (max_buffer after the stop) ...
    assert stopped_at - 300 <= missing[0] < stopped_at + 250, (missing[0], stopped_at)
    # ... and what came after the recovery is all there.
    assert missing[-1] < TOTAL - RATE, missing[-1]
