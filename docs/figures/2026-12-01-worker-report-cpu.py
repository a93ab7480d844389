"""CPU of a worker's outcome report (herald.workers.reporting.report_outcomes) per delivery,
for a batch of 100 sent push deliveries, with JSON logs at INFO (written to /dev/null).

    PYTHONPATH=<a git archive>/src .venv/bin/python docs/figures/2026-12-01-worker-report-cpu.py
"""

from __future__ import annotations

import sys
import timeit
from datetime import UTC, datetime, timedelta

from herald import logs
from herald.domain import Channel, DeliveryState
from herald.storage import DeliveryUpdate
from herald.workers.reporting import report_outcomes

BATCH = 100
ROUNDS = 50

sys.stderr = open("/dev/null", "w")  # noqa: SIM115 - the log lines' destination
logs.configure("INFO", "json")
now = datetime.now(UTC)
updates = [
    DeliveryUpdate(
        f"delivery-{i:06d}",
        f"notification-{i:06d}",
        DeliveryState.SENT,
        "fcm",
        f"projects/p/messages/{i}",
        attempt=1,
        claimed_at=now - timedelta(milliseconds=30),
    )
    for i in range(BATCH)
]
seconds = timeit.timeit(lambda: report_outcomes(Channel.PUSH, updates, {}, now), number=ROUNDS)
print(f"report_outcomes: {seconds / ROUNDS / BATCH * 1e6:.1f} µs per delivery")
