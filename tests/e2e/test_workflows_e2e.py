"""The escalation "push; delay; email if the push was not opened" through a running
`herald serve`, on both backend sets, in both branches: opened, no email; not opened,
exactly one email."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fixtures.herald import eventually
from tests.fixtures.serve import HeraldLauncher

DELAY_SECONDS = 5
ESCALATION = {
    "category": "orders",
    "steps": [
        {"id": "push", "type": "send", "channels": ["push"]},
        {"id": "pause", "type": "delay", "seconds": DELAY_SECONDS},
        {
            "id": "email",
            "type": "send",
            "channels": ["email"],
            "if": {"step": "push", "not": ["opened"]},
        },
    ],
}


@pytest.fixture(
    params=[
        "embedded",
        pytest.param(
            "production",
            marks=[pytest.mark.production, pytest.mark.postgres, pytest.mark.kafka],
        ),
    ]
)
def serve_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """What `herald serve` is started with beyond the launcher's embedded defaults."""
    return dict(request.getfixturevalue("fleet_env")) if request.param == "production" else {}


async def steps_of(client: httpx.AsyncClient, run_id: str) -> dict[str, dict[str, Any]]:
    run = (await client.get(f"/v1/workflow-runs/{run_id}")).json()
    return {step["id"]: step for step in run["steps"]} | {"run": run}


async def sandbox(client: httpx.AsyncClient, channel: str) -> list[dict[str, Any]]:
    page = (await client.get("/v1/sandbox/messages", params={"channel": channel})).json()
    return list(page["items"])


async def sent_push(client: httpx.AsyncClient, notification_id: str) -> str | None:
    """The push's delivery id, once it has gone out."""
    deliveries = (await client.get(f"/v1/notifications/{notification_id}")).json()["deliveries"]
    gone = [d for d in deliveries if d["status"] in ("sent", "delivered")]
    return str(gone[0]["id"]) if gone and len(gone) == len(deliveries) else None


@pytest.mark.slow
@pytest.mark.parametrize("opened", [True, False], ids=["opened", "not-opened"])
async def test_the_escalation_emails_only_if_the_push_was_not_opened(
    launch_herald: HeraldLauncher, serve_env: dict[str, str], opened: bool
) -> None:
    herald = await asyncio.to_thread(launch_herald, "serve", env=serve_env)
    headers = {"Authorization": f"Bearer {herald.key}"}
    async with httpx.AsyncClient(base_url=herald.url, headers=headers, timeout=30) as client:
        user = {"email": "ada@example.com", "timezone": "UTC"}
        assert (await client.put("/v1/users/42", json=user)).status_code == 201
        device = {"platform": "ios", "token": "cd" * 32}
        assert (await client.post("/v1/users/42/devices", json=device)).status_code == 201
        assert (await client.put("/v1/workflows/shipped", json=ESCALATION)).status_code == 201
        trigger = {"user_id": "42", "title": "Your order shipped", "body": "It arrives Friday"}
        accepted = await client.post(
            "/v1/workflows/shipped/trigger", json=trigger, headers={"Idempotency-Key": "o-1"}
        )
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["id"]

        async def pausing() -> dict[str, Any] | None:
            steps = await steps_of(client, run_id)
            return steps if steps["pause"]["status"] == "waiting" else None

        push_id = (await eventually(pausing, timeout=60))["push"]["notification_id"]
        delivery_id = await eventually(lambda: sent_push(client, push_id), timeout=60)
        if opened:
            report = await client.post(
                f"/v1/deliveries/{delivery_id}/engagement", json={"event": "opened"}
            )
            assert report.json()["first"] is True
            # The test's premise: the report came before the email step was decided.
            still = await steps_of(client, run_id)
            assert still["pause"]["status"] == "waiting", "the delay ended before the report"

        async def finished() -> dict[str, Any] | None:
            steps = await steps_of(client, run_id)
            return steps if steps["run"]["status"] == "completed" else None

        steps = await eventually(finished, timeout=60 + DELAY_SECONDS, interval=0.2)
        assert steps["email"]["status"] == ("skipped" if opened else "done")
        if opened:
            assert steps["email"]["notification_id"] is None
            assert await sandbox(client, "email") == []
        else:
            email_id = steps["email"]["notification_id"]
            [email] = await eventually(lambda: sandbox(client, "email"), timeout=60)
            assert email["target"] == "ada@example.com"
            assert await eventually(lambda: sent_push(client, email_id), timeout=60)
        assert len(await sandbox(client, "push")) == 1
    assert herald.stop() == 0
