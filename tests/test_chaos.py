"""`herald chaos`, short: a fleet on a private PostgreSQL and Kafka with the provider fakes,
SIGKILLs, broker and database restarts, provider 503/429/slowness; then the guarantees,
read from its JSON report. The long run is on demand: `herald chaos --duration 1800`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.production, pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]
DURATION = int(os.environ.get("HERALD_CHAOS_TEST_DURATION", "60"))


@pytest.mark.xdist_group("chaos")
def test_no_delivery_is_lost_or_sent_twice_under_faults(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    # kafka_bootstrap: the shared services are up, so Kafka's jars and PostgreSQL are there.
    command = [
        sys.executable,
        "-m",
        "herald.cli",
        "chaos",
        "--json",
        "--duration",
        str(DURATION),
        "--rate",
        "20",
        "--workdir",
        str(tmp_path),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        timeout=DURATION + 600,
        start_new_session=True,  # signals meant for pytest do not reach the fleet
        check=False,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.stdout, f"no report (exit {result.returncode}):\n{stderr[-4000:]}"
    report = json.loads(result.stdout)
    summary = {k: v for k, v in report.items() if k not in ("samples", "lost_examples")}
    print(json.dumps(summary, indent=1))
    for key in (
        "duration_s",
        "accepted",
        "expected_deliveries",
        "delivered_once",
        "lost",
        "duplicates",
        "unknown",
        "kills_between_send_and_record",
        "resent_or_unknown_per_worker_kill",
        "faults",
    ):
        assert key in report
    assert report["accepted"] >= DURATION * 5
    assert report["expected_deliveries"] > report["accepted"]
    assert sum(report["faults"].values()) >= 5
    assert report["faults"].get("kill_worker", 0) >= 1
    assert report["lost"] == 0, summary
    assert report["duplicates"]["at_most_once"] == 0, summary
    allowed = report["kills_between_send_and_record_by_policy"].get("at_least_once", 0)
    assert report["duplicates"]["at_least_once"] <= allowed, summary
    assert report["unknown_unaccounted"] == 0, summary
    # What one killed worker costs depends on the load (the suite runs beside this): the
    # figure is reported, `herald chaos` judges it as a target, and recording outcomes as
    # they arrive is pinned by tests/workers/test_worker.py.
    assert report["targets"].keys() == {"re-sent or unknown per worker kill <= 5"}
    assert report["repeat_id_mismatches"] == 0
    assert not report["still_pending"], summary
    # Workflow runs are part of the traffic: each of their steps happens once.
    assert report["workflow_runs"] > 0, summary
    assert report["guarantees"]["every workflow step done once"], summary
    assert result.returncode == 0, stderr[-4000:]
