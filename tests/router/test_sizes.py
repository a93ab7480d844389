"""A long notification is accepted and goes out on the channels whose limits it fits: a
push payload limit never refuses an email, nor a notification for a user without devices."""

from __future__ import annotations

import httpx
import pytest

from herald.runtime import Runtime

ANDROID = "dXNlcjQyX2RldmljZQ:APA91bH" + "a" * 140


@pytest.mark.parametrize("devices", [0, 1])
async def test_a_body_too_long_for_push_still_goes_by_email(
    api: httpx.AsyncClient, runtime: Runtime, devices: int
) -> None:
    await api.put("/v1/users/42", json={"email": "ada@example.com"})
    if devices:
        device = {"platform": "android", "token": ANDROID}
        assert (await api.post("/v1/users/42/devices", json=device)).status_code == 201
    body = {"user_id": "42", "title": "Your statement", "body": "line\n" * 1000}
    only_email = await api.post("/v1/notifications", json={**body, "channels": ["email"]})
    assert only_email.status_code == 202, only_email.text
    every_channel = await api.post("/v1/notifications", json=body)
    assert every_channel.status_code == 202, every_channel.text
    await runtime.router().route([only_email.json()["id"], every_channel.json()["id"]])
    email = (await api.get(f"/v1/notifications/{only_email.json()['id']}")).json()
    assert [(d["channel"], d["status"]) for d in email["deliveries"]] == [("email", "queued")]
    every = (await api.get(f"/v1/notifications/{every_channel.json()['id']}")).json()
    outcome = {d["channel"]: (d["status"], d["last_error"]) for d in every["deliveries"]}
    assert outcome["email"] == ("queued", None)
    assert outcome["in_app"] == ("queued", None)
    assert outcome["push"] == (
        ("skipped", "the android push payload is 2026 bytes over the provider's limit")
        if devices
        else ("skipped", "no active device")
    )
