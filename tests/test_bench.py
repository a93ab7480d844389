"""`herald bench` smoke runs: tiny embedded benchmarks, end to end, so they cannot rot.

No time is asserted: the benchmark prints its figures, the tests check their shape and the
counts that must hold on any machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from herald.bench import REPORT_KEYS
from herald.bench.memory import MemoryTimeline, slope_per_minute
from herald.bench.sweep import markdown, parse_counts

pytestmark = pytest.mark.slow
HERALD = str(Path(sys.executable).with_name("herald"))
SMALL = ["--backend", "embedded", "--latency-ms", "1", "--sink-processes", "1"]


def bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Runs `herald bench ... --json`; returns the report and stderr."""
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": "",
        "HERALD_KAFKA_BOOTSTRAP": "",
        "TMPDIR": str(tmp_path),
    }
    finished = subprocess.run(
        [HERALD, "bench", *SMALL, *args, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        start_new_session=True,
    )
    stderr = finished.stderr.decode(errors="replace")
    assert finished.returncode == 0, stderr[-4000:]
    return json.loads(finished.stdout), stderr  # exactly one JSON object on stdout


def test_a_small_embedded_bench_reports_every_key_and_delivers_each_once(tmp_path: Path) -> None:
    users, devices, notifications = 20, 2, 40
    report, stderr = bench(
        tmp_path,
        *("--users", str(users), "--devices", str(devices)),
        *("--notifications", str(notifications), "--baseline-seconds", "1"),
    )
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
    assert report["rate"]["offered_per_s"] is None
    assert "delivered" in stderr  # the progress bar


def test_a_paced_run_reports_offered_and_achieved_rates_and_memory_over_time(
    tmp_path: Path,
) -> None:
    report, _ = bench(
        tmp_path,
        *("--users", "10", "--rate", "40", "--duration", "2", "--rss-interval", "0.5"),
    )
    assert report["notifications"] == 80  # rate x duration
    assert (report["deliveries"], report["lost"], report["duplicates"]) == (80, 0, 0)
    assert report["rate"]["offered_per_s"] == 40
    assert report["rate"]["accepted_per_s"] > 0
    assert report["baseline"]["skipped"]  # a paced run is not a race
    memory = report["memory"]["serve"]
    assert memory["samples"] >= 2
    assert memory["first_mb"] > 0
    assert memory["peak_mb"] >= memory["last_mb"]
    assert {"slope_mb_per_min", "late_slope_mb_per_min"} <= set(memory)


def test_critical_trickle_beside_a_small_broadcast(tmp_path: Path) -> None:
    subscribers = 60
    report, _ = bench(
        tmp_path,
        *("--scenario", "broadcast", "--users", "5", "--subscribers", str(subscribers)),
        *("--trickle-rate", "10", "--trickle-seconds", "1"),
    )
    assert report["scenario"] == "broadcast"
    fanout = report["broadcast"]
    assert (fanout["planned"], fanout["deliveries"]) == (subscribers, subscribers)
    assert fanout["recipients_routed_per_s"] > 0
    assert fanout["deliveries_per_s"] > 0
    critical = report["critical"]
    assert critical["alone"]["sent"] == 10
    assert critical["during_broadcast"]["sent"] >= 1
    for phase in ("alone", "during_broadcast"):
        assert set(critical[phase]["latency_ms"]) == {"p50", "p95", "p99", "max"}
        assert critical[phase]["deliveries"] == critical[phase]["sent"]
    assert (report["lost"], report["duplicates"]) == (0, 0)


def test_a_sweep_runs_each_size_and_prints_a_table(tmp_path: Path) -> None:
    report, _ = bench(tmp_path, "--users", "10", "--sweep", "--sweep-notifications", "30,60")
    assert [row["notifications"] for row in report["sweep"]] == [30, 60]
    assert all(row["workers"] == 1 for row in report["sweep"])  # embedded: no worker pool
    assert (report["lost"], report["duplicates"]) == (0, 0)
    table = markdown(report)
    assert table.count("\n") == 3
    assert "| 1 | 60 |" in table


def test_memory_slope_and_sweep_counts() -> None:
    assert slope_per_minute([(0.0, 100.0), (30.0, 101.0), (60.0, 102.0)]) == pytest.approx(2.0)
    assert slope_per_minute([(0.0, 100.0)]) == 0.0
    timeline = MemoryTimeline(interval_s=5.0, started=0.0)
    timeline.record(0.0, {"worker-1": 100 * 2**20})
    assert not timeline.due(1.0)
    assert timeline.due(5.0)
    timeline.record(60.0, {"worker-1": 110 * 2**20})
    summary = timeline.summary()["worker-1"]
    assert (summary["first_mb"], summary["last_mb"], summary["peak_mb"]) == (100, 110, 110)
    assert summary["slope_mb_per_min"] == pytest.approx(10.0)
    assert parse_counts("10000, 1e5") == [10_000, 100_000]
    with pytest.raises(ValueError, match="positive numbers"):
        parse_counts("0")


def test_an_idle_run_reports_every_process_cpu_over_the_window(tmp_path: Path) -> None:
    report, stderr = bench(tmp_path, "--idle", "1")
    assert report["scenario"] == "idle"
    assert report["backend"] == "embedded"
    assert set(report["cpu_pct_of_one_core"]) == {"serve"}
    assert set(report["cpu_pct_precise"]) == {"serve"}
    assert report["cpu_pct_precise_total"] >= 0
    assert report["window_s"] >= 1
    assert "measuring 1 s idle" in stderr


def test_cpu_is_read_from_proc_and_a_gone_process_reads_as_none() -> None:
    from herald.bench.idle import cpu_seconds, run_seconds

    sum(range(2_000_000))  # spend some CPU
    assert (cpu_seconds(os.getpid()) or 0) > 0
    assert (run_seconds(os.getpid()) or 0) > 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert cpu_seconds(gone.pid) is None
