"""`herald bench` smoke runs: tiny embedded benchmarks, end to end, so they cannot rot.

No time is asserted: the benchmark prints its figures, the tests check their shape and the
counts that must hold on any machine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from herald.bench import REPORT_KEYS, server
from herald.bench.errors import BenchError
from herald.bench.harness import HeraldProcess, wait_ready
from herald.bench.memory import MemoryTimeline, slope_per_minute
from herald.bench.peer import PeerResult, peer_block
from herald.bench.pgstats import Snapshot, statements, written
from herald.bench.profile import Profiler
from herald.bench.server import PostgresCpu, Stat, read_stat
from herald.bench.sweep import markdown, parse_counts

pytestmark = pytest.mark.slow
HERALD = str(Path(sys.executable).with_name("herald"))
SMALL = ["--backend", "embedded", "--latency-ms", "1", "--sink-processes", "1"]


def bench(
    tmp_path: Path, *args: str, production: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """Runs `herald bench ... --json` (embedded, or production on the given database and
    broker); returns the report and stderr."""
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": "",
        "HERALD_KAFKA_BOOTSTRAP": "",
        "TMPDIR": str(tmp_path),
        **(production or {}),
    }
    backend = ["--backend", "production"] if production else []
    finished = subprocess.run(
        [HERALD, "bench", *SMALL, *backend, *args, "--json"],
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
        *("--notifications", str(notifications), "--baseline-seconds", "5"),
        *("--peer", "firebase-admin", "--profile", str(tmp_path / "profiles")),
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
    # No server, and no counter of SQLite's writes outside its process: null, not a guess.
    for key in ("postgres", "kafka", "rows_written", "statements"):
        assert report[key] is None
    # firebase-admin on the same sink: every delivery once, counted at the sink.
    peer = report["peers"]["firebase-admin"]
    assert (peer["deliveries"], peer["failed"]) == (notifications * devices, 0)
    assert (peer["lost"], peer["duplicates"]) == (0, 0)
    assert peer["tokens_per_call"] == users * devices  # distinct tokens in each multicast
    assert peer["calls"] == notifications * devices // (users * devices)
    assert peer["cpu_s_per_1000"] > 0
    assert peer["deliveries_per_s"] > 0
    assert peer["speedup"] > 0
    assert set(peer["latency_ms"]) == {"p50", "p95", "p99", "max"}
    # A py-spy profile of the one Herald process, where the report says.
    profile = Path(report["profiles"]["serve"])
    assert profile.parent == tmp_path / "profiles"
    assert profile.read_text().startswith("<?xml")  # a flame graph SVG


@pytest.mark.postgres
@pytest.mark.kafka
def test_a_small_production_bench_reports_server_cpu_rows_and_statements(
    tmp_path: Path, postgres_admin_url: str, kafka_bootstrap: str
) -> None:
    notifications = 120
    report, _ = bench(
        tmp_path,
        *("--users", "30", "--notifications", str(notifications), "--no-baseline"),
        production={
            "HERALD_DATABASE_URL": postgres_admin_url,
            "HERALD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        },
    )
    assert (report["deliveries"], report["lost"], report["duplicates"]) == (notifications, 0, 0)
    postgres, kafka = report["postgres"], report["kafka"]
    assert postgres["cpu_s"] > 0  # Herald's statements ran on it
    # The bench database's backends are part of the whole server.
    assert 0 < postgres["bench_db_cpu_s"] <= postgres["cpu_s"] + 0.002
    assert postgres["bench_db_backends"] >= 1
    assert postgres["cpu_s_per_1000"] == pytest.approx(
        1000 * postgres["cpu_s"] / notifications, abs=1e-3
    )
    assert kafka["cpu_s"] >= 0
    assert isinstance(kafka["pid"], int)
    rows = report["rows_written"]
    assert rows["total"] == rows["inserted"] + rows["updated"] + rows["deleted"]
    assert rows["inserted"] >= notifications  # at least each delivery's row
    assert rows["per_delivery"] == pytest.approx(rows["total"] / notifications, abs=1e-3)
    counted = report["statements"]
    if counted is None:  # a server without pg_stat_statements in shared_preload_libraries
        assert any("pg_stat_statements" in note for note in report["notes"])
    else:
        assert counted["total"] == sum(counted["by_kind"].values())
        assert counted["per_delivery"] > 0
        assert counted["by_kind"].get("insert", 0) + counted["by_kind"].get("copy", 0) > 0


def test_rows_statements_and_peer_figures_from_counters_and_receipts() -> None:
    rows = written(Snapshot(10, 5, 1), Snapshot(40, 25, 11), deliveries=10, notifications=5)
    assert (rows["inserted"], rows["updated"], rows["deleted"], rows["total"]) == (30, 20, 10, 60)
    assert (rows["per_delivery"], rows["per_notification"]) == (6.0, 12.0)
    before = {1: ("insert", 5), 2: ("transaction", 10)}
    after = {1: ("insert", 25), 2: ("transaction", 30), 3: ("select", 10)}
    counted = statements(before, after, deliveries=10, notifications=10)
    assert counted is not None
    assert counted["by_kind"] == {"insert": 20, "select": 10, "transaction": 20}
    assert (counted["total"], counted["without_transaction_control"]) == (50, 30)
    assert statements(None, None, 10, 10) is None  # no pg_stat_statements
    # The peer: each (call, token) pair once; a repeat is a duplicate, a missing one lost.
    result = PeerResult("firebase-admin", deliveries=3, elapsed_s=1.0, cpu_s=0.5, multicast=2)
    result.calls = {"peer-x-0": (1_000_000, 2), "peer-x-2": (2_000_000, 2)}
    receipts = [
        ("peer-x-0", "t0", 3_000_000),
        ("peer-x-0", "t1", 4_000_000),
        ("peer-x-0", "t1", 5_000_000),
        ("peer-x-2", "t2", 6_000_000),
        ("naive-1", "t0", 7_000_000),  # not the peer's
    ]
    block = peer_block(result, receipts)
    assert (block["lost"], block["duplicates"], block["calls"]) == (1, 1, 2)
    assert block["latency_ms"]["max"] == 4.0
    assert block["cpu_s_per_1000"] == pytest.approx(1000 * 0.5 / 3, abs=1e-3)
    me = read_stat(os.getpid())
    assert me is not None
    assert me.ppid == os.getppid()
    assert me.self_s > 0


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


# A stand-in postmaster: on a line from stdin it runs a child that burns CPU and exits, and
# reaps it (as the postmaster reaps its backends), then says so.
_PARENT = """
import subprocess, sys
sys.stdin.readline()
burn = "import time\\nwhile time.process_time() < 0.3: pass"
subprocess.run([sys.executable, "-c", burn, "benchdb"], check=True)
print("done", flush=True)
sys.stdin.readline()
"""


def test_server_cpu_counts_a_child_that_exits_within_the_window() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert parent.stdin is not None
    assert parent.stdout is not None
    try:
        meter = PostgresCpu(parent.pid, "benchdb", frozenset())
        meter.start()
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == b"done\n"
        spent = meter.spent()
    finally:
        parent.stdin.close()
        parent.wait(10)
    # The child is gone: its 0.3 s of CPU reached the total through the parent's cutime.
    assert spent["cpu_s"] >= 0.25
    assert spent["pid"] == parent.pid


def test_server_cpu_counts_a_child_reaped_while_proc_is_scanned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The child (0.3 s) is alive when the parent is read and reaped before the scan
    # reaches it: neither the parent's first reading nor the scan holds its time.
    parent_readings = iter([Stat(1, 0, 0.1, 0.0), Stat(1, 0, 0.1, 0.3), Stat(1, 0, 0.1, 0.3)])
    monkeypatch.setattr(server, "read_stat", lambda pid: next(parent_readings))
    monkeypatch.setattr(server, "children_of", lambda pid: [])
    assert server.consistent_children(1) == (Stat(1, 0, 0.1, 0.3), [])


def test_bench_clients_sends_real_fcm_and_apns_requests_through_each_client(
    tmp_path: Path,
) -> None:
    """`herald bench-clients` on a few requests: every client gets an answer to each FCM
    (HTTP/1.1 and HTTP/2) and APNs (HTTP/2) request from the sink, none is an error."""
    only = ["--only", "aiohttp", "--only", "herald-h2", "--only", "herald-curl"]
    finished = subprocess.run(
        [HERALD, "bench-clients", "--requests", "30", "--repeats", "1", *only, "--json"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        timeout=300,
        start_new_session=True,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    report = json.loads(finished.stdout)
    runs = {c["candidate"]: c["runs"] for c in report["candidates"]}
    assert set(runs) == {
        "fcm:aiohttp:h1.1",
        "fcm:herald-curl:h1.1",
        "fcm:herald-h2:h2",
        "apns:herald-h2:h2",
        "apns:herald-curl:h2",
    }
    for key, [run] in runs.items():
        assert (run["ok"], run["errors"]) == (30, 0), (key, run)
        assert run["cpu_us_per_request"] > 0
    assert report["skipped"] == {}


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


BACKENDS_FOR_WORKFLOW_BENCH = [
    "embedded",
    pytest.param("production", marks=[pytest.mark.production, pytest.mark.postgres]),
]


@pytest.mark.parametrize("backend", BACKENDS_FOR_WORKFLOW_BENCH)
async def test_the_workflow_scenario_does_every_step_once_beside_parked_timers(
    backend: str,
) -> None:
    from herald.bench.workflows import run_workflow_bench

    report = await run_workflow_bench(backend, runs=200, pending=500, workers=2, delay_s=1)
    assert (report["lost"], report["duplicates"]) == (0, 0)
    assert report["steps_done"] == report["steps_expected"] == 600
    assert report["parked_still_pending"] == 500
    assert report["steps_per_s"] > 0
    assert set(report["timer_lag_ms"]) == {"p50", "p95", "p99", "max"}
    rss = report["scheduler_rss_mb"]
    assert 0 < rss["before"] <= rss["peak"]


async def test_an_idle_run_measures_the_source_tree_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--idle --herald-src` runs the fleet from that tree, as the other scenarios do."""
    from herald.bench import idle
    from herald.bench.harness import BenchConfig

    measured: list[BenchConfig] = []

    class Measured:
        def __init__(self, config: BenchConfig, _: idle.IdleConfig) -> None:
            measured.append(config)

        async def run(self) -> dict[str, Any]:
            return {}

    monkeypatch.setattr(idle, "IdleBench", Measured)
    await idle.run_idle(BenchConfig(backend="production", herald_src=tmp_path), idle.IdleConfig())
    assert [config.herald_src for config in measured] == [tmp_path]


_BUSY = "while True:\n    sum(range(10_000))\n"


def test_a_profile_stopped_as_soon_as_it_started_still_writes_its_file(tmp_path: Path) -> None:
    # py-spy interrupted before it attached writes nothing (CI, 2026-12-03: a 40-notification
    # window on a loaded machine was shorter than the attach); start waits for the attach.
    script = tmp_path / "busy.py"  # a file, as Herald runs: py-spy reads its version from it
    script.write_text(_BUSY)
    busy = subprocess.Popen([sys.executable, str(script)])
    profiler = Profiler(tmp_path / "profiles")

    async def start_and_stop() -> tuple[dict[str, str], list[str]]:
        await profiler.start({"busy": busy.pid})
        return await profiler.stop()

    try:
        files, notes = asyncio.run(start_and_stop())
    finally:
        busy.kill()
        busy.wait(10)
    assert notes == []
    assert Path(files["busy"]).read_text().startswith("<?xml")


def test_a_process_that_never_gets_ready_is_named_with_its_log_and_stacks(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        "import time\nprint('migrating', flush=True)\n"
        "def waiting_for_a_lock():\n    time.sleep(60)\nwaiting_for_a_lock()\n"
    )
    log = tmp_path / "stuck.log"
    ready = HeraldProcess("ready-one", [], tmp_path / "ready.log")
    ready.log_path.write_text('{"event": "ready"}\n')
    stuck = HeraldProcess("serve", [], log)
    with log.open("ab") as out:
        stuck.popen = subprocess.Popen([sys.executable, str(script)], stdout=out)
    ready.popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.monotonic()  # in its stuck call before the wait begins, however loaded
        while not stuck.logged("migrating") and time.monotonic() - started < 60:
            time.sleep(0.05)
        with pytest.raises(BenchError) as raised:
            asyncio.run(wait_ready([ready, stuck], timeout=1.5))
    finally:
        for process in (stuck.popen, ready.popen):
            process.kill()
            process.wait(10)
    message = str(raised.value)
    assert message.startswith("Herald did not become ready within 1.5 s: serve\n")
    assert "ready-one" not in message
    assert "migrating" in message  # its log
    assert "waiting_for_a_lock" in message  # where it is stuck (py-spy dump)
