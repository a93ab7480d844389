"""Every role process serves /metrics, /healthz and /readyz on its own port, and each
shows the work it did for one notification (embedded `herald serve`, and a production
fleet of one process per role on PostgreSQL and Kafka)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.herald import eventually
from tests.fixtures.serve import HeraldLauncher, HeraldProcess, free_port

INBOX_NOTIFICATION = {"user_id": "42", "title": "Hello", "body": "metrics", "channels": ["in_app"]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and wanted <= ls)


def sample(text: str, name: str, **labels: str) -> float:
    """The one sample with exactly these labels (it must be there)."""
    return samples(text)[(name, frozenset(labels.items()))]


async def scrape(port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        response = await client.get("/metrics")
        assert response.status_code == 200
        return response.text


async def send_one(api: HeraldProcess) -> str:
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=30
    ) as client:
        assert (await client.put("/v1/users/42", json={"timezone": "UTC"})).status_code in (
            200,
            201,
        )
        response = await client.post(
            "/v1/notifications", json=INBOX_NOTIFICATION, headers={"Idempotency-Key": "m-1"}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def assert_no_created_series(text: str) -> None:
    assert not [line for line in text.splitlines() if "_created" in line.split(" ")[0]]


async def test_serve_metrics_port_shows_the_delivery(launch_herald: HeraldLauncher) -> None:
    port = free_port()
    api = launch_herald("serve", "--metrics-port", str(port))
    await send_one(api)

    async def delivered() -> str | None:
        text = await scrape(port)
        finished = value(
            text, "herald_deliveries_finished_total", channel="in_app", state="delivered"
        )
        return text if finished == 1 else None

    text = await eventually(delivered)
    assert value(text, "herald_http_requests_total", route="/v1/notifications", status="202") == 1
    assert value(text, "herald_http_request_seconds_count", route="/v1/users/{user_id}") == 1
    assert value(text, "herald_accept_to_provider_seconds_count", channel="in_app") == 1
    assert value(text, "herald_provider_send_seconds_count", provider="inbox") >= 1
    assert ("herald_outbox_depth", frozenset()) in samples(text)
    assert value(text, "herald_deliveries_waiting", state="queued") == 0
    assert ("herald_scheduler_lag_seconds", frozenset()) in samples(text)
    router_lag = ("herald.notifications", "herald.router.bulk")
    assert sample(text, "herald_consumer_lag", topic=router_lag[0], group=router_lag[1]) == 0
    assert sample(text, "herald_provider_circuit_open", provider="inbox") == 0
    assert_no_created_series(text)


@pytest.mark.production
@pytest.mark.postgres
@pytest.mark.kafka
async def test_each_role_of_a_fleet_serves_its_own_metrics(
    launch_herald: HeraldLauncher, fleet_env: dict[str, str]
) -> None:
    assert launch_herald("migrate", wait_ready=False).wait(60) == 0
    ports = {role: free_port() for role in ("api", "relay", "router", "worker", "scheduler")}
    roles = {
        "relay": ("relay",),
        "router": ("router",),
        "worker": ("worker", "--channel", "in_app"),
        "scheduler": ("scheduler",),
    }
    for role, args in roles.items():
        launch_herald(*args, "--metrics-port", str(ports[role]), wait_ready=False)
    api = launch_herald("api", "--metrics-port", str(ports["api"]))
    await send_one(api)

    async def figures() -> dict[str, str] | None:
        texts = dict(zip(ports, await asyncio.gather(*map(scrape, ports.values())), strict=True))
        done = value(
            texts["worker"], "herald_deliveries_finished_total", channel="in_app", provider="inbox"
        )
        return texts if done == 1 else None

    texts = await eventually(figures, timeout=60)
    assert value(texts["api"], "herald_http_requests_total", route="/v1/notifications") == 1
    assert value(texts["api"], "herald_notifications_accepted_total") == 1
    assert value(texts["relay"], "herald_outbox_relayed_total") >= 1
    assert value(texts["router"], "herald_notifications_routed_total") == 1
    assert value(texts["worker"], "herald_accept_to_provider_seconds_count") == 1
    worker_lag = ("herald.deliveries.in_app", "herald.worker.in_app.bulk")
    lag = sample(texts["worker"], "herald_consumer_lag", topic=worker_lag[0], group=worker_lag[1])
    assert lag == 0
    # The backlog describes the database: the scheduler's process reports it, once.
    assert ("herald_outbox_depth", frozenset()) in samples(texts["scheduler"])
    assert ("herald_outbox_depth", frozenset()) not in samples(texts["worker"])
    for text in texts.values():
        assert_no_created_series(text)
