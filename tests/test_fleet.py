"""Herald as a fleet of processes on PostgreSQL and Kafka: separate roles, a worker killed
with SIGKILL mid-run, a broker that goes away and comes back, and dependencies that are
down at start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.fixtures.herald import eventually
from tests.fixtures.sends import assert_sent_once
from tests.fixtures.serve import HeraldLauncher, HeraldProcess, free_port

pytestmark = [pytest.mark.production, pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
USERS = 250
PER_USER = 8  # 2,000 notifications


def android_token(user: int) -> str:
    return f"fleet{user:05d}:APA91b" + "x" * 140


async def create_users(client: httpx.AsyncClient, count: int) -> None:
    semaphore = asyncio.Semaphore(20)

    async def one(user: int) -> None:
        async with semaphore:
            assert (
                await client.put(f"/v1/users/u{user}", json={"timezone": "UTC"})
            ).status_code == 201
            device = {"platform": "android", "token": android_token(user)}
            assert (await client.post(f"/v1/users/u{user}/devices", json=device)).status_code == 201

    await asyncio.gather(*(one(u) for u in range(count)))


async def send_batches(client: httpx.AsyncClient, users: int, per_user: int, tag: str) -> set[str]:
    items = [
        {
            "idempotency_key": f"{tag}-{u}-{n}",
            "user_id": f"u{u}",
            "title": f"#{n}",
            "channels": ["push"],
        }
        for n in range(per_user)
        for u in range(users)
    ]
    ids: set[str] = set()
    for start in range(0, len(items), 1000):
        response = await client.post(
            "/v1/notifications/batch", json={"notifications": items[start : start + 1000]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(items[start : start + 1000])
        ids.update(item["id"] for item in response.json()["items"])
    return ids


# The delivery log's rows: the events written, and the sends the delivery rows tell.
LOG_ROWS = (
    "SELECT delivery_id, state, coalesce(detail->>'reason', '') AS reason, created_at AS at, "
    "detail ? 'claimed_at' AS claimed FROM delivery_events "
    "UNION ALL SELECT id, 'sent', '', sent_at, true FROM deliveries WHERE sent_at IS NOT NULL"
)


async def delivery_counts(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT state, count(*) FROM deliveries GROUP BY state")
        return {row["state"]: row["count"] for row in rows}
    finally:
        await connection.close()


async def test_a_fleet_delivers_everything_once_through_a_worker_kill(
    launch_herald: HeraldLauncher, fleet_env: dict[str, str], postgres_test_url: str
) -> None:
    api = launch_herald("api")
    for role in (("relay",), ("router",), ("scheduler",)):
        launch_herald(*role)
    # One push worker at first, so every claim held is its own; the second starts after
    # the kill and takes over its partitions and, once the leases expire, its claims.
    doomed = launch_herald("worker", "--channel", "push")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=60
    ) as client:
        await create_users(client, USERS)
        notification_ids = await send_batches(client, USERS, PER_USER, "fleet")
    expected = USERS * PER_USER
    assert len(notification_ids) == expected

    async def some_sent() -> bool:
        return (await delivery_counts(postgres_test_url)).get("sent", 0) >= expected // 4

    await eventually(some_sent, timeout=120)
    held = await kill_while_it_holds_claims(doomed, postgres_test_url)
    launch_herald("worker", "--channel", "push")

    async def all_sent() -> dict[str, int] | None:
        counts = await delivery_counts(postgres_test_url)
        return counts if counts.get("sent", 0) == expected else None

    await eventually(all_sent, timeout=180, interval=0.5)
    connection = await asyncpg.connect(postgres_test_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM deliveries") == expected
        history = {
            row["delivery_id"]: list(zip(row["states"], row["reasons"], strict=True))
            for row in await connection.fetch(
                "SELECT delivery_id, array_agg(state ORDER BY at) AS states, "
                "array_agg(reason ORDER BY at) AS reasons "
                f"FROM ({LOG_ROWS}) AS log GROUP BY delivery_id"
            )
        }
        # A claim writes no log row: each attempt's end (outcome, expired lease, the send
        # a row tells) carries its claim time, so these count the claims.
        claims = {
            row["delivery_id"]: row["n"]
            for row in await connection.fetch(
                f"SELECT delivery_id, count(*) AS n FROM ({LOG_ROWS}) AS log "
                "WHERE claimed GROUP BY delivery_id"
            )
        }
        sends = {
            row["delivery_id"]: row["n"]
            for row in await connection.fetch(
                "SELECT delivery_id, count(*) AS n FROM sandbox_messages GROUP BY delivery_id"
            )
        }
    finally:
        await connection.close()
    assert len(history) == expected
    # The kill is recovered by the lease: deliveries the dead worker held were put back by
    # lease expiry and sent by the other worker.
    recovered = {d for d, steps in history.items() if ("queued", "lease expired") in steps}
    # (Not every held one need be: a claim's outcome the worker had just sent to the
    # database when it was frozen may still commit.)
    assert held & recovered, "no claim of the killed worker was recovered by its lease"
    for delivery in recovered:
        # The log: the expiry that ended attempt 1, the outcome of attempt 2 (the first
        # `queued`, the claims and the send are kept in the delivery row).
        steps = history[delivery]
        assert steps == [("queued", "lease expired"), ("sent", "")], (delivery, steps)
        assert claims[delivery] == 2
    assert {d: [s for s, _ in h].count("sent") for d, h in history.items()} == dict.fromkeys(
        history, 1
    )
    # One send per delivery; one a dead worker may have handed to the provider before it
    # died is at_least_once (push) and may go out once more, never more than its claims.
    assert_sent_once(sends, expected=set(history), may_repeat=claims)


async def kill_while_it_holds_claims(worker: HeraldProcess, url: str) -> set[str]:
    """SIGKILL the (only) push worker while it holds claims, and return them. Frozen
    (SIGSTOP), it changes nothing: deliveries `sending` then are the claims it holds. If
    it held none (between batches), it runs a moment and is frozen again."""
    for _ in range(200):
        worker.signal(signal.SIGSTOP)
        held = await claims_held(url)
        if held:
            worker.kill()
            return held
        worker.signal(signal.SIGCONT)
        await asyncio.sleep(0.02)
    raise AssertionError("the worker never held a claim when frozen")


async def claims_held(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT id FROM deliveries WHERE state = 'sending'")
        return {row["id"] for row in rows}
    finally:
        await connection.close()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker of this test's own (the shared one serves the other tests)."""
    env = {
        **os.environ,
        "HERALD_KAFKA_DATA": str(tmp_path / "kafka"),
        "HERALD_KAFKA_PORT": str(free_port()),
        "HERALD_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    services = str(ROOT / "scripts" / "services.sh")
    started = subprocess.run(
        [services, "start-kafka"], env=env, check=False, timeout=180, capture_output=True
    )
    if started.returncode != 0:  # say why: the script's own message and the log tail
        pytest.fail(f"private broker did not start:\n{started.stderr.decode()[-3000:]}")
    env["services"] = services
    try:
        yield env
    finally:
        subprocess.run(
            [services, "kill-kafka"], env=env, check=False, timeout=60, capture_output=True
        )


async def run_services(env: dict[str, str], command: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [env["services"], command],
        env=env,
        timeout=180,
        capture_output=True,
        text=True,
    )
    # The script's own words say why (a broker that exited, a port taken, a timeout).
    assert done.returncode == 0, f"services.sh {command}: {done.stdout}{done.stderr}"


async def test_work_pauses_while_the_broker_is_down_and_nothing_is_lost(
    launch_herald: HeraldLauncher,
    fleet_env: dict[str, str],
    private_kafka: dict[str, str],
    postgres_test_url: str,
) -> None:
    bootstrap = f"127.0.0.1:{private_kafka['HERALD_KAFKA_PORT']}"
    herald = launch_herald("serve", env={"HERALD_KAFKA_BOOTSTRAP": bootstrap})
    client = httpx.AsyncClient(
        base_url=herald.url, headers={"Authorization": f"Bearer {herald.key}"}, timeout=60
    )
    async with client:
        await create_users(client, 20)
        before = await send_batches(client, 20, 5, "before")

        async def delivered(count: int) -> bool:
            return (await delivery_counts(postgres_test_url)).get("sent", 0) >= count

        await eventually(lambda: delivered(100), timeout=60)
        await run_services(private_kafka, "stop-kafka")

        async def not_ready() -> bool:
            return (await client.get("/readyz")).status_code == 503

        await eventually(not_ready, timeout=30)
        during = await send_batches(client, 20, 5, "during")  # accepted into the outbox
        await asyncio.sleep(1)
        assert (await delivery_counts(postgres_test_url)).get("sent", 0) == 100
        await run_services(private_kafka, "start-kafka")

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, timeout=60)
        await eventually(lambda: delivered(200), timeout=120)
    assert len(before | during) == 200
    counts = await delivery_counts(postgres_test_url)
    assert counts == {"sent": 200}
    herald.stop()


async def forward(port: int, to: tuple[str, int]) -> asyncio.Server:
    """A TCP port that starts accepting (and forwards to `to`) only when this is called:
    until then connecting to it is refused, as to a database that is down."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*to)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await asyncio.start_server(connect, "127.0.0.1", port)


@pytest.mark.parametrize("dependency", ["database", "kafka"])
async def test_a_dependency_down_at_start_is_waited_for_and_herald_starts_when_it_is_back(
    launch_herald: HeraldLauncher,
    fleet_env: dict[str, str],
    postgres_test_url: str,
    request: pytest.FixtureRequest,
    dependency: str,
) -> None:
    port = free_port()
    server: asyncio.Server | None = None
    if dependency == "database":
        target = urlsplit(postgres_test_url)
        url = postgres_test_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{port}")
        override, words = {"HERALD_DATABASE_URL": url}, f"127.0.0.1:{port}"
    else:
        broker: dict[str, str] = request.getfixturevalue("private_kafka")
        await run_services(broker, "stop-kafka")
        bootstrap = f"127.0.0.1:{broker['HERALD_KAFKA_PORT']}"
        override, words = {"HERALD_KAFKA_BOOTSTRAP": bootstrap}, bootstrap
    herald = launch_herald("serve", env=override, wait_ready=False)

    async def retried(times: int) -> bool:
        assert herald.process is not None
        assert herald.process.poll() is None, herald.output()  # no exit for a supervisor
        return herald.log_path.read_text().count("cannot start yet") >= times

    await eventually(lambda: retried(2), timeout=90)
    assert words in herald.log_path.read_text()
    if dependency == "database":
        assert target.hostname is not None
        assert target.port is not None
        server = await forward(port, (target.hostname, target.port))
    else:
        await run_services(broker, "start-kafka")
    try:
        async with httpx.AsyncClient(
            base_url=herald.url, headers={"Authorization": f"Bearer {herald.key}"}, timeout=30
        ) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=120, interval=0.5)
            assert (await client.put("/v1/users/u1", json={})).status_code == 201
            accepted = await client.post(
                "/v1/notifications", json={"user_id": "u1", "title": "back", "channels": ["in_app"]}
            )

            async def delivered() -> bool:
                found = await client.get(f"/v1/notifications/{accepted.json()['id']}")
                return [d["status"] for d in found.json()["deliveries"]] == ["delivered"]

            await eventually(delivered, timeout=60)
        assert await asyncio.to_thread(herald.stop) == 0  # the loop forwards meanwhile
    finally:
        if server is not None:
            server.close()
