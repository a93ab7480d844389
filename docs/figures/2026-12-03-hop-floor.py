"""The CPU floor of one message hop at a paced rate, with the bare libraries Herald uses.

    eval "$(./scripts/services.sh env)"      # PostgreSQL and Kafka running
    .venv/bin/python docs/figures/2026-12-03-hop-floor.py 100 20   # rate/s, seconds a hop

Each hop runs in a child process of its own, as a Herald role does, and is paced from
this process at the given rate, one message at a time. The figure is the child's CPU
(user + system, from /proc) per message over the window; for PostgreSQL also the server
backend's. No Herald code runs: this is what the parts cost before Herald adds anything,
so a fleet whose message crosses k such hops cannot cost less than their sum per message.

- idle loop: an asyncio loop woken once per message (a timer), doing nothing;
- http server: aiohttp, one POST with a small JSON body per message (access log off);
- kafka consume: a confluent-kafka consumer polling one message at a time (`poll(1.0)`);
- postgres statement: one prepared asyncpg INSERT per message, autocommit, on one
  connection kept open; the backend's CPU is read too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
Send = Callable[[int], Awaitable[None]]

IDLE = """
import asyncio, sys
async def main():
    while True:
        await asyncio.sleep(float(sys.argv[1]))
asyncio.run(main())
"""

HTTP = """
import sys
from aiohttp import web
async def take(request):
    body = await request.json()
    return web.json_response({"accepted": len(body)})
app = web.Application()
app.router.add_post("/", take)
web.run_app(app, port=int(sys.argv[1]), access_log=None, print=None)
"""

KAFKA = """
import sys
from confluent_kafka import Consumer
consumer = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                     "auto.offset.reset": "earliest"})
consumer.subscribe([sys.argv[3]])
print("ready", flush=True)
while True:
    message = consumer.poll(1.0)
"""

POSTGRES = """
import asyncio, sys
import asyncpg
async def main():
    connection = await asyncpg.connect(sys.argv[1])
    await connection.execute("CREATE TEMP TABLE hop (id text PRIMARY KEY, body text)")
    insert = await connection.prepare("INSERT INTO hop (id, body) VALUES ($1, $2)")
    print(await connection.fetchval("SELECT pg_backend_pid()"), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    count = 0
    while await reader.readline():
        count += 1
        await insert.fetch(f"m{count}", "payload")
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def spawn(code: str, *args: str, stdin: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
    )


async def paced(rate: float, seconds: float, send: Send) -> int:
    count, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        await send(count)
        count += 1
        await asyncio.sleep(max(0.0, count / rate - (time.monotonic() - started)))
    return count


def report(name: str, pids: dict[str, int], before: dict[str, float], count: int) -> None:
    for label, pid in pids.items():
        spent = cpu_seconds(pid) - before[label]
        print(f"{name:22}{label:10}{spent / count * 1e6:8.0f} µs per message ({count} messages)")


async def measure(name: str, pids: dict[str, int], rate: float, seconds: float, send: Send) -> None:
    await asyncio.sleep(2)  # start-up CPU out of the window
    before = {label: cpu_seconds(pid) for label, pid in pids.items()}
    count = await paced(rate, seconds, send)
    await asyncio.sleep(0.5)  # the last messages handled
    report(name, pids, before, count)


async def idle(rate: float, seconds: float) -> None:
    child = spawn(IDLE, str(1 / rate))
    try:
        await asyncio.sleep(2)
        before = cpu_seconds(child.pid)
        await asyncio.sleep(seconds)
        count = int(rate * seconds)
        report("idle loop", {"loop": child.pid}, {"loop": before}, count)
    finally:
        child.kill()


async def http(rate: float, seconds: float) -> None:
    import aiohttp

    port = 20_000 + os.getpid() % 5_000
    child = spawn(HTTP, str(port))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.post(f"http://127.0.0.1:{port}/", json=[]):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)

            async def send(i: int) -> None:
                item = {"user_id": f"u{i}", "title": "Payment", "body": "went through"}
                async with session.post(f"http://127.0.0.1:{port}/", json=[item]) as response:
                    assert response.status == 200

            await measure("http server", {"server": child.pid}, rate, seconds, send)
    finally:
        child.kill()


async def kafka(rate: float, seconds: float) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = os.environ.get("HERALD_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    topic = f"hop-floor-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for created in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        created.result(30)
    child = spawn(KAFKA, bootstrap, topic, topic)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        await asyncio.sleep(5)  # the group joined and assigned

        async def send(i: int) -> None:
            producer.produce(topic, f"message {i}".encode())
            producer.poll(0)

        await measure("kafka consume", {"consumer": child.pid}, rate, seconds, send)
    finally:
        child.kill()
        producer.flush(10)


async def postgres(rate: float, seconds: float) -> None:
    url = os.environ.get("HERALD_DATABASE_URL", "postgresql://herald:herald@127.0.0.1:5432/herald")
    url = url.replace("postgresql+asyncpg://", "postgresql://")
    child = spawn(POSTGRES, url, stdin=True)
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        backend = int(child.stdout.readline())
        stdin = child.stdin

        async def send(i: int) -> None:
            stdin.write(b"go\n")
            stdin.flush()

        pids = {"client": child.pid, "backend": backend}
        await measure("postgres statement", pids, rate, seconds, send)
    finally:
        child.kill()


async def main() -> None:
    rate = float(sys.argv[1]) if len(sys.argv) > 1 else 100.0
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    for hop in (idle, http, kafka, postgres):
        await hop(rate, seconds)


if __name__ == "__main__":
    asyncio.run(main())
