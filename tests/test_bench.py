"""`herald bench` smoke run: a tiny embedded benchmark, end to end, so it cannot rot.

No time is asserted: the benchmark prints its figures, the test checks their shape and the
counts that must hold on any machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from herald.bench import REPORT_KEYS

pytestmark = pytest.mark.slow
HERALD = str(Path(sys.executable).with_name("herald"))


def test_a_small_embedded_bench_reports_every_key_and_delivers_each_once(tmp_path: Path) -> None:
    users, devices, notifications = 20, 2, 40
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": "",
        "HERALD_KAFKA_BOOTSTRAP": "",
        "TMPDIR": str(tmp_path),
    }
    finished = subprocess.run(
        [
            HERALD,
            "bench",
            "--backend",
            "embedded",
            "--users",
            str(users),
            "--devices",
            str(devices),
            "--notifications",
            str(notifications),
            "--latency-ms",
            "1",
            "--sink-processes",
            "1",
            "--baseline-seconds",
            "1",
            "--json",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=240,
        start_new_session=True,
    )
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")[-4000:]
    report = json.loads(finished.stdout)  # exactly one JSON object on stdout
    assert set(REPORT_KEYS) <= set(report)
    assert report["backend"] == "embedded"
    assert report["notifications"] == notifications
    assert report["deliveries"] == notifications * devices
    assert report["lost"] == 0
    assert report["duplicates"] == 0
    assert set(report["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert "serve" in report["peak_rss_mb"]
    assert report["cpu_s_per_1000"] > 0
    assert report["baseline"]["deliveries_per_s"] > 0
    assert report["baseline"]["lost"] == 0
    assert report["speedup"] > 0
    assert b"delivered" in finished.stderr  # the progress bar
