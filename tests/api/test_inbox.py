"""The in-app inbox through the API: pages, unread counts, read marks."""

from __future__ import annotations

import httpx
import pytest

from herald.runtime import Runtime
from herald.storage import InboxItem, new_id


@pytest.fixture
async def inbox(api: httpx.AsyncClient, runtime: Runtime) -> list[str]:
    """Five items for user 42, newest last."""
    from datetime import timedelta

    await api.put("/v1/users/42", json={"timezone": "UTC"})
    start = runtime.clock.now()
    items = [
        InboxItem(
            new_id(),
            "42",
            new_id(),
            new_id(),
            "news",
            f"#{n}",
            "b",
            {},
            None,
            start + timedelta(seconds=n),
        )
        for n in range(5)
    ]
    await runtime.storage.inbox.insert(items)
    return [item.id for item in items]


async def test_pages_newest_first_with_a_cursor(api: httpx.AsyncClient, inbox: list[str]) -> None:
    first = (await api.get("/v1/users/42/inbox", params={"limit": 2})).json()
    assert [i["title"] for i in first["items"]] == ["#4", "#3"]
    assert first["unread_count"] == 5
    second = (
        await api.get("/v1/users/42/inbox", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert [i["title"] for i in second["items"]] == ["#2", "#1"]
    last = (
        await api.get("/v1/users/42/inbox", params={"limit": 2, "cursor": second["next_cursor"]})
    ).json()
    assert [i["title"] for i in last["items"]] == ["#0"]
    assert last["next_cursor"] is None


async def test_read_one_and_read_all(api: httpx.AsyncClient, inbox: list[str]) -> None:
    assert (await api.post(f"/v1/users/42/inbox/{inbox[0]}/read")).status_code == 204
    page = (await api.get("/v1/users/42/inbox")).json()
    assert page["unread_count"] == 4
    assert {i["title"]: i["read"] for i in page["items"]}["#0"] is True
    unread = (await api.get("/v1/users/42/inbox", params={"unread_only": "true"})).json()["items"]
    assert len(unread) == 4
    assert (await api.post("/v1/users/42/inbox/read-all")).json() == {"marked": 4}
    assert (await api.get("/v1/users/42/inbox")).json()["unread_count"] == 0


async def test_marking_another_users_item_is_404(api: httpx.AsyncClient, inbox: list[str]) -> None:
    await api.put("/v1/users/7", json={"timezone": "UTC"})
    assert (await api.post(f"/v1/users/7/inbox/{inbox[0]}/read")).status_code == 404
    assert (await api.get("/v1/users/42/inbox")).json()["unread_count"] == 5


@pytest.mark.parametrize(
    ("params", "status"), [({"limit": 0}, 422), ({"limit": 201}, 422), ({"cursor": "!!"}, 400)]
)
async def test_bad_page_parameters(
    api: httpx.AsyncClient, inbox: list[str], params: dict[str, object], status: int
) -> None:
    response = await api.get("/v1/users/42/inbox", params=params)
    assert response.status_code == status
    assert response.json()["error"]["message"]


async def test_inbox_token_reads_only_its_own_inbox(
    api: httpx.AsyncClient, inbox: list[str]
) -> None:
    token = (await api.post("/v1/users/42/inbox-token")).json()["token"]
    own = await api.get("/v1/users/42/inbox", headers={"Authorization": f"Bearer {token}"})
    assert own.status_code == 200
    assert len(own.json()["items"]) == 5
    other = await api.get("/v1/users/7/inbox", headers={"Authorization": f"Bearer {token}"})
    assert other.status_code == 403
