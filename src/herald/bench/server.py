"""CPU of the servers Herald runs on, over the measured window, from /proc/<pid>/stat:
the PostgreSQL server and the Kafka broker (production only; both must run on this
machine, as scripts/services.sh starts them).

What is counted (user + system time, clock ticks of /proc/<pid>/stat fields 14-17):

- PostgreSQL, whole server: the postmaster's own time, its reaped children's time
  (`cutime + cstime`: the postmaster waits for every backend and background process it
  forks, so a backend that exits during the window still counts, in full), and the time
  of every live child. Between two readings, a child alive at both adds `b - a`; one that
  existed at the first and exited before the second adds `lifetime - a` (it moved from the
  live sum to cutime); one born in the window adds all it used. The harness's own backends
  (its progress polls) are taken out. This is the whole server: on a shared machine it
  includes other clients' databases, checkpointer, WAL writer and autovacuum.
- PostgreSQL, the bench database only: the children whose process title names the bench
  database (Herald's backends, and autovacuum workers on it), read every second and kept
  per pid at the last reading, without the harness's backends. A backend that exits
  between two readings loses at most its last second; Herald's pools keep theirs open.
- Kafka: the one JVM running `kafka.Kafka` that listens on the bootstrap port (all its
  threads: the process's utime + stime). Like the server figure, it includes other
  clients of a shared broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    pid: int
    ppid: int
    self_s: float  # utime + stime
    children_s: float  # cutime + cstime (reaped children)


def read_stat(pid: int) -> Stat | None:
    """The process's CPU from /proc/<pid>/stat (None when it is gone)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command sits in parentheses and may hold spaces: fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); ppid = 4, utime..cstime = 14..17.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return Stat(pid, int(fields[1]), (utime + stime) * TICK_S, (cutime + cstime) * TICK_S)


def children_of(parent: int) -> list[Stat]:
    """Every live process whose parent is `parent` (one scan of /proc)."""
    found: list[Stat] = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is not None and stat.ppid == parent:
            found.append(stat)
    return found


def consistent_children(parent: int, attempts: int = 5) -> tuple[Stat, list[Stat]] | None:
    """The parent's stat and its live children, read so that no child is missed: a child
    reaped while /proc is scanned would be in neither the parent's `cutime` read before the
    scan nor the scan (a busy server reaps backends all the time), so the scan is retried
    until the parent's reaped-children time is the same on both sides of it. None when the
    parent is gone."""
    before = read_stat(parent)
    while before is not None:
        children = children_of(parent)
        after = read_stat(parent)
        attempts -= 1
        if after is None or after.children_s == before.children_s or attempts == 0:
            # (still churning after the last attempt: at worst one reaped child twice)
            return (after, children) if after is not None else None
        before = after
    return None


def process_title(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (
            (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    return ""


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend of ours (`SELECT pg_backend_pid()`), when the server
    runs on this machine; None otherwise (a remote server, or a pid that is not ours)."""
    stat = read_stat(backend_pid)
    if stat is None or "postgres" not in process_title(backend_pid):
        return None
    parent = read_stat(stat.ppid)
    return parent.pid if parent is not None else None


def kafka_broker_pid(port: int) -> int | None:
    """The pid of the JVM running kafka.Kafka that listens on `port` (or, when listening
    sockets cannot be read, the only such JVM)."""
    candidates: list[int] = [
        int(pid) for pid in psutil.pids() if "kafka.Kafka" in process_title(pid).split()
    ]
    for pid in candidates:
        with contextlib.suppress(psutil.Error):
            for connection in psutil.Process(pid).net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
                    return pid
    return candidates[0] if len(candidates) == 1 else None


@dataclass
class PostgresCpu:
    postmaster: int
    database: str
    exclude: frozenset[int]  # the harness's own backends
    _server_before: float = 0.0
    _excluded_before: dict[int, float] = field(default_factory=dict)
    _first: dict[int, float] = field(default_factory=dict)  # bench backends: first reading
    _last: dict[int, float] = field(default_factory=dict)  # and latest
    _started: bool = False

    def _server(self) -> tuple[float, dict[int, float]]:
        """(the whole server's CPU so far, the excluded backends' CPU)."""
        snapshot = consistent_children(self.postmaster)
        if snapshot is None:
            return 0.0, {}
        master, children = snapshot
        total = master.self_s + master.children_s + sum(c.self_s for c in children)
        excluded = {c.pid: c.self_s for c in children if c.pid in self.exclude}
        self._note_bench_backends(children)
        return total, excluded

    def _note_bench_backends(self, children: list[Stat]) -> None:
        for child in children:
            if child.pid in self.exclude:
                continue
            if self.database not in process_title(child.pid).split():
                continue
            # A backend first seen after the start was born in the window: all its CPU.
            self._first.setdefault(child.pid, child.self_s if not self._started else 0.0)
            self._last[child.pid] = child.self_s

    def start(self) -> None:
        self._server_before, self._excluded_before = self._server()
        self._started = True

    def sample(self) -> None:
        self._server()

    def spent(self) -> dict[str, Any]:
        total, excluded = self._server()
        harness = sum(excluded.get(pid, cpu) - cpu for pid, cpu in self._excluded_before.items())
        bench = sum(self._last[pid] - self._first[pid] for pid in self._last)
        return {
            "cpu_s": round(total - self._server_before - harness, 3),
            "bench_db_cpu_s": round(bench, 3),
            "bench_db_backends": len(self._last),
            "pid": self.postmaster,
        }


@dataclass
class KafkaCpu:
    pid: int
    _before: float = 0.0

    def _read(self) -> float:
        stat = read_stat(self.pid)
        return stat.self_s if stat is not None else 0.0

    def start(self) -> None:
        self._before = self._read()

    def spent(self) -> dict[str, Any]:
        return {"cpu_s": round(self._read() - self._before, 3), "pid": self.pid}


class ServerMeter:
    """Both meters over one window, the bench database's backends read every second."""

    def __init__(self, postgres: PostgresCpu | None, kafka: KafkaCpu | None) -> None:
        self.postgres = postgres
        self.kafka = kafka
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.postgres is not None:
            self.postgres.start()
        if self.kafka is not None:
            self.kafka.start()
        if self.postgres is not None:
            self._task = asyncio.create_task(self._sample(self.postgres))

    @staticmethod
    async def _sample(postgres: PostgresCpu) -> None:
        while True:
            await asyncio.sleep(1.0)
            postgres.sample()  # a scan of /proc: a few ms, on the harness's loop

    def stop(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The CPU spent since start: the PostgreSQL and Kafka blocks (None for a server
        that was not measured)."""
        if self._task is not None:
            self._task.cancel()
        postgres = self.postgres.spent() if self.postgres is not None else None
        kafka = self.kafka.spent() if self.kafka is not None else None
        return postgres, kafka


def with_rates(block: dict[str, Any] | None, deliveries: int) -> dict[str, Any] | None:
    """Adds `<x>_per_1000` (s per 1,000 deliveries) and `<x>_us_per_delivery` for each
    `<x>` of the block's CPU seconds (`cpu_s`, `bench_db_cpu_s`)."""
    if block is None:
        return None
    rated = dict(block)
    for key in ("cpu_s", "bench_db_cpu_s"):
        if key not in block:
            continue
        per_delivery = block[key] / deliveries if deliveries else 0.0
        stem = key.removesuffix("_s")
        rated[f"{stem}_s_per_1000"] = round(1000 * per_delivery, 4)
        rated[f"{stem}_us_per_delivery"] = round(1e6 * per_delivery, 1)
    return rated


def server_meter(
    harness_backends: list[int], database: str, kafka_bootstrap: str, notes: list[str]
) -> ServerMeter:
    """Meters for the PostgreSQL server behind the harness's backends and the Kafka broker
    on the bootstrap port, when they run on this machine (a note for each that does not)."""
    postmaster = postmaster_of(harness_backends[0]) if harness_backends else None
    postgres = None
    if postmaster is None:
        notes.append("PostgreSQL server CPU: not measured, the server is not a local process")
    else:
        postgres = PostgresCpu(postmaster, database, frozenset(harness_backends))
    port = kafka_bootstrap.split(",")[0].rpartition(":")[2]
    broker = kafka_broker_pid(int(port)) if port.isdigit() else None
    kafka = None
    if broker is None:
        notes.append(f"Kafka broker CPU: not measured, no local kafka.Kafka on {kafka_bootstrap}")
    else:
        kafka = KafkaCpu(broker)
    return ServerMeter(postgres, kafka)
