from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from herald.runtime import Runtime
from herald.security import generate_key
from herald.storage import schema as t
from tests.fixtures.herald import Pipeline, eventually
from tests.fixtures.sends import sandbox_rows

USER = {"email": "ada@example.com", "timezone": "UTC"}


async def _delivered(api: httpx.AsyncClient, notification_id: str) -> Any:
    """The notification's deliveries once each is with its provider (sent, or delivered
    for the inbox)."""

    async def check() -> Any:
        body = (await api.get(f"/v1/notifications/{notification_id}")).json()
        deliveries = body["deliveries"]
        done = all(d["status"] in ("sent", "delivered") for d in deliveries)
        return deliveries if deliveries and done else None

    return await eventually(check)


async def _send(api: httpx.AsyncClient, user: str, **fields: Any) -> str:
    response = await api.post("/v1/notifications", json={"user_id": user, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def _dead_letter(runtime: Runtime, delivery_id: str) -> None:
    """What a worker does when the retries are used up, done to a delivery that was sent."""
    async with runtime.storage.database.transaction() as db:
        await db.execute(
            t.deliveries.update()
            .where(t.deliveries.c.id == delivery_id)
            .values(state="failed", last_error="dead-lettered after 5 attempts: 503")
        )


async def test_search_by_user_category_status_and_channel(
    api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/42", json=USER)
    await api.put("/v1/users/43", json=USER)
    paid = await _send(api, "42", category="billing", title="Paid", channels=["email"])
    hello = await _send(api, "42", category="social", title="Hi", channels=["in_app"])
    other = await _send(api, "43", category="billing", title="Other", channels=["email"])
    for notification_id in (paid, hello, other):
        await _delivered(api, notification_id)

    async def ids(**params: str) -> list[str]:
        response = await api.get("/v1/notifications", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await ids(user_id="42") == [hello, paid]
    assert await ids(category="billing") == [other, paid]
    assert await ids(user_id="42", channel="email") == [paid]
    assert await ids(status="sent", provider="sandbox", user_id="43") == [other]
    assert await ids(status="delivered") == [hello]
    assert await ids(status="failed") == []
    page = (await api.get("/v1/notifications", params={"limit": 1})).json()
    assert [i["id"] for i in page["items"]] == [other]
    assert page["items"][0]["deliveries"][0]["channel"] == "email"
    rest = (await api.get("/v1/notifications", params={"cursor": page["next_cursor"]})).json()
    assert [i["id"] for i in rest["items"]] == [hello, paid]
    assert rest["next_cursor"] is None
    events = (await api.get(f"/v1/notifications/{paid}/events")).json()["items"]
    assert {e["channel"] for e in events} == {"email"}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "lost"}, 422),
        ({"channel": "fax"}, 422),
        ({"since": "2026-12-01T12:00:00"}, 422),
        ({"cursor": "garbage"}, 400),
        ({"limit": "0"}, 422),
    ],
)
async def test_bad_filters_are_a_clear_4xx(
    api: httpx.AsyncClient, params: dict[str, str], code: int
) -> None:
    response = await api.get("/v1/notifications", params=params)
    assert response.status_code == code
    assert set(response.json()["error"]) == {"code", "message", "details"}


async def test_users_topics_and_broadcasts_are_listed(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    for user_id, email in (("alice", "a@example.com"), ("bob", "zed@example.com"), ("carol", None)):
        await api.put(f"/v1/users/{user_id}", json={"email": email, "timezone": "UTC"})
    await api.put("/v1/users/alice/topics/news")
    await api.put("/v1/users/bob/topics/news")
    await api.put("/v1/users/bob/topics/sport")
    users = (await api.get("/v1/users", params={"limit": 2})).json()
    assert [u["id"] for u in users["items"]] == ["alice", "bob"]
    more = (await api.get("/v1/users", params={"cursor": users["next_cursor"]})).json()
    assert [u["id"] for u in more["items"]] == ["carol"]
    assert more["next_cursor"] is None
    found = (await api.get("/v1/users", params={"query": "zed"})).json()["items"]
    assert [u["id"] for u in found] == ["bob"]
    topics = (await api.get("/v1/topics")).json()["items"]
    assert topics == [{"name": "news", "subscribers": 2}, {"name": "sport", "subscribers": 1}]
    created = await api.post(
        "/v1/broadcasts",
        json={"topic": "news", "notification": {"title": "Storm"}},
        headers={"Idempotency-Key": "storm-1"},
    )
    assert created.status_code == 202, created.text
    listed = (await api.get("/v1/broadcasts")).json()["items"]
    assert [(b["id"], b["title"], b["planned"]) for b in listed] == [
        (created.json()["id"], "Storm", 2)
    ]


async def test_a_dead_letter_is_listed_replayed_once_and_sent_again(
    api: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    await api.put("/v1/users/42", json=USER)
    notification_id = await _send(api, "42", title="Reset", channels=["email"])
    (delivery,) = await _delivered(api, notification_id)
    await _dead_letter(runtime, delivery["id"])

    listed = (await api.get("/v1/dead-letters")).json()["items"]
    assert [(d["id"], d["status"]) for d in listed] == [(delivery["id"], "failed")]
    assert "dead-lettered" in listed[0]["last_error"]

    first = await api.post(f"/v1/dead-letters/{delivery['id']}/replay")
    second = await api.post(f"/v1/dead-letters/{delivery['id']}/replay")
    assert first.status_code == 202
    assert first.json()["replayed"] is True
    assert second.status_code == 200
    assert second.json()["replayed"] is False
    await _delivered(api, notification_id)
    rows = await sandbox_rows(api, user_id="42")
    assert len(rows) == 2  # the first send, and the replay's: once, not twice
    detail = (await api.get(f"/v1/deliveries/{delivery['id']}")).json()
    log = [(e["status"], e["detail"].get("reason")) for e in detail["events"]]
    # Both sends stay in the log: the replay wrote the first one's event, which its row
    # told until the replay queued it again (migration 0017).
    assert log == [
        ("queued", None),
        ("sending", None),
        ("sent", None),
        ("queued", "replayed from the dead-letter queue"),
        ("sending", None),
        ("sent", None),
    ]
    assert {e["channel"] for e in detail["events"]} == {"email"}
    assert (await api.get("/v1/dead-letters")).json()["items"] == []
    missing = await api.post("/v1/dead-letters/nope/replay")
    assert missing.status_code == 404


async def test_replay_all_takes_every_dead_letter(api: httpx.AsyncClient, runtime: Runtime) -> None:
    await api.put("/v1/users/42", json=USER)
    async with runtime.storage.database.transaction() as db:
        for n in range(3):
            await db.execute(
                t.deliveries.insert().values(
                    id=f"d{n}",
                    notification_id="n",
                    user_id="42",
                    channel="email",
                    target="a@example.com",
                    target_ref="a@example.com",
                    state="failed",
                    policy="at_least_once",
                    priority="normal",
                    category="default",
                    payload={},
                    created_at=sa.func.now(),
                    updated_at=sa.func.now(),
                )
            )
    response = await api.post("/v1/dead-letters/replay")
    assert response.json()["replayed"] == 3
    assert await runtime.storage.outbox.size() == 3
    again = await api.post("/v1/dead-letters/replay")
    assert again.json() == {"replayed": 0, "items": []}


async def test_read_keys_list_and_only_manage_keys_replay(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    key = generate_key()
    await runtime.storage.keys.create_api_key(key.id, key.secret_hash, ["read"], "reader")
    headers = {"Authorization": f"Bearer {key.token}"}
    assert (await api.get("/v1/dead-letters", headers=headers)).status_code == 200
    refused = await api.post("/v1/dead-letters/x/replay", headers=headers)
    assert refused.status_code == 403
    assert (await api.get("/v1/notifications", headers={"Authorization": ""})).status_code == 401


async def test_every_activity_route_has_a_summary_a_model_and_an_example(
    api: httpx.AsyncClient,
) -> None:
    document = (await api.get("/openapi.json")).json()
    for path in (
        "/v1/notifications",
        "/v1/users",
        "/v1/broadcasts",
        "/v1/topics",
        "/v1/deliveries/{delivery_id}",
        "/v1/dead-letters",
    ):
        operation = document["paths"][path]["get"]
        assert operation["summary"]
        content = operation["responses"]["200"]["content"]["application/json"]
        assert content["example"]
        assert "$ref" in content["schema"]
