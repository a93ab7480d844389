"""What `herald chaos` runs and breaks: a private PostgreSQL cluster and a private Kafka
broker (through scripts/services.sh, so restarting them disturbs nobody else), and the
Herald fleet as separate processes it can SIGKILL and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def services_script() -> Path:
    configured = os.environ.get("HERALD_SERVICES_SCRIPT")
    path = Path(configured) if configured else ROOT / "scripts" / "services.sh"
    if not path.is_file():
        raise RuntimeError(
            f"{path} not found: `herald chaos` runs from a checkout of Herald "
            "(or set HERALD_SERVICES_SCRIPT)"
        )
    return path


class ServiceError(RuntimeError):
    pass


@dataclass
class PrivateServices:
    """PostgreSQL cluster `chaos<pid>` and a Kafka broker with its data under `directory`,
    both on free ports, both started, restarted and removed through services.sh."""

    directory: Path
    pg_cluster: str = field(default_factory=lambda: f"chaos{os.getpid()}")
    pg_port: int = field(default_factory=free_port)
    kafka_port: int = field(default_factory=free_port)
    kafka_controller_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HERALD_PG_CLUSTER": self.pg_cluster,
            "HERALD_PG_PORT": str(self.pg_port),
            "HERALD_KAFKA_DATA": str(self.directory / "kafka"),
            "HERALD_KAFKA_PORT": str(self.kafka_port),
            "HERALD_KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            # One small broker on a shared two-core box.
            "HERALD_KAFKA_JAVA_OPTS": os.environ.get("HERALD_KAFKA_JAVA_OPTS", "-Xmx384m"),
        }

    @property
    def database_url(self) -> str:
        return f"postgresql://herald:herald@127.0.0.1:{self.pg_port}/herald"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    async def run(self, command: str, timeout: float = 180.0) -> float:
        """Run `services.sh command`; returns how long it took. Output goes to a file, not
        a pipe: the daemons it starts keep inherited descriptors open."""
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / f"services-{command}.log"
        with log_path.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                str(services_script()),
                command,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise ServiceError(f"services.sh {command} took more than {timeout:g} s") from None
        if process.returncode != 0:
            raise ServiceError(
                f"services.sh {command} failed ({process.returncode}):\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        return time.monotonic() - started

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await asyncio.gather(self.run("start-kafka"), self.run("start-postgres"))

    async def remove(self) -> None:
        """Kill the broker and drop the cluster (best effort: called on the way out)."""
        for command in ("kill-kafka", "drop-postgres"):
            try:
                await self.run(command, timeout=60)
            except ServiceError as error:
                print(f"chaos: cleanup: {error}", file=sys.stderr)


@dataclass
class Role:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    port: int | None = None


@dataclass
class HeraldFleet:
    """`herald <role>` processes sharing one environment; each in its own session."""

    env: Mapping[str, str]
    logs: Path
    roles: dict[str, Role] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    def add(self, name: str, *args: str) -> Role:
        role = Role(name, list(args))
        if args and args[0] == "api":
            role.port = free_port()
            role.args += ["--port", str(role.port)]
        self.roles[name] = role
        return role

    def start(self, name: str) -> None:
        role = self.roles[name]
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        self._files.append(log)
        role.process = subprocess.Popen(
            [sys.executable, "-m", "herald.cli", *role.args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        role.starts += 1

    def alive(self, name: str) -> bool:
        process = self.roles[name].process
        return process is not None and process.poll() is None

    async def kill(self, name: str) -> None:
        process = self.roles[name].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait, 10)

    def pids(self) -> dict[str, int]:
        return {
            name: role.process.pid
            for name, role in self.roles.items()
            if role.process is not None and role.process.poll() is None
        }

    def exited(self) -> list[str]:
        """Roles that exited on their own (a crash, not a kill of ours)."""
        return [
            f"{name} (exit {role.process.returncode})"
            for name, role in self.roles.items()
            if role.process is not None and role.process.poll() is not None
        ]

    async def stop_all(self, timeout: float = 20.0) -> None:
        running = [r.process for r in self.roles.values() if r.process and r.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                await asyncio.to_thread(process.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
        for log in self._files:
            log.close()
        self._files.clear()

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


async def wait_healthy(url: str, fleet: HeraldFleet, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if not fleet.alive(name):
                raise ServiceError(f"{name} exited during start:\n{fleet.tail(name)}")
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise ServiceError(f"{name} did not answer within {timeout:g} s:\n{fleet.tail(name)}")


async def migrate(env: Mapping[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "herald.cli",
        "migrate",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise ServiceError(f"herald migrate failed:\n{output.decode(errors='replace')[-3000:]}")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def pg_fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def consumer_lag(bootstrap: str) -> dict[str, int]:
    """Messages not yet committed, per consumer group, over the topics each group has
    committed on (blocking: call in a thread)."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "herald.chaos.probe"})
    try:
        listed = admin.list_consumer_groups(request_timeout=5).result(timeout=10)
        groups = sorted(g.group_id for g in listed.valid if g.group_id.startswith("herald."))
        groups = [g for g in groups if g != "herald.chaos.probe"]
        lag: dict[str, int] = {}
        for group in groups:
            future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
            total = 0
            for tp in future[group].result(timeout=5).topic_partitions:
                if tp.offset < 0:
                    continue
                _low, high = probe.get_watermark_offsets(tp, timeout=5)
                total += max(0, high - tp.offset)
            lag[group.removeprefix("herald.")] = total
        return lag
    finally:
        probe.close()
