import httpx
import pytest

USER = {
    "email": "ada@example.com",
    "phone": "+14155550100",
    "timezone": "Europe/Berlin",
    "locale": "de",
}
ANDROID_TOKEN = "dXNlcjQyX2RldmljZQ:APA91bH" + "x" * 140


async def test_user_upsert_get_delete(api: httpx.AsyncClient) -> None:
    created = await api.put("/v1/users/42", json=USER)
    assert created.status_code == 201
    assert created.json()["timezone"] == "Europe/Berlin"
    updated = await api.put("/v1/users/42", json={**USER, "locale": "en"})
    assert updated.status_code == 200
    assert (await api.get("/v1/users/42")).json()["locale"] == "en"
    assert (await api.delete("/v1/users/42")).status_code == 204
    assert (await api.get("/v1/users/42")).status_code == 404


async def test_phone_is_normalised_to_e164(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/users/7", json={"phone": "+1 (415) 555-0100"})
    assert response.json()["phone"] == "+14155550100"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"phone": "4155550100"}, "E.164"),
        ({"phone": "+1415"}, "not a valid number"),
        ({"email": "not-an-email"}, "email"),
        ({"locale": "english!"}, "language tag"),
        ({"nickname": "x"}, "Extra inputs"),
    ],
)
async def test_bad_user_fields_say_what_is_wrong(
    api: httpx.AsyncClient, body: dict[str, str], words: str
) -> None:
    response = await api.put("/v1/users/42", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert words.lower() in error["message"].lower()


async def test_preferences_round_trip(api: httpx.AsyncClient) -> None:
    await api.put("/v1/users/42", json=USER)
    prefs = {
        "channels": {"sms": False, "chat": False},
        "categories": {"marketing": {"email": False}},
        "quiet_hours": {"start": "22:00", "end": "07:00"},
    }
    assert (await api.put("/v1/users/42/preferences", json=prefs)).status_code == 200
    stored = (await api.get("/v1/users/42/preferences")).json()
    assert stored["channels"] == {
        "push": True,
        "email": True,
        "sms": False,
        "in_app": True,
        "webhook": True,
        "chat": False,
        "whatsapp": True,
    }
    assert stored["categories"] == {"marketing": {"email": False}}
    assert stored["quiet_hours"] == {"start": "22:00", "end": "07:00"}


@pytest.mark.parametrize(
    ("prefs", "words"),
    [
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "between 00:00 and 23:59"),
        ({"quiet_hours": {"start": "7", "end": "08:00"}}, "HH:MM"),
        ({"quiet_hours": {"start": "07:00", "end": "07:00"}}, "differ"),
        ({"channels": {"fax": True}}, "fax"),
        ({"categories": {"news": {"pigeon": False}}}, "pigeon"),
    ],
)
async def test_bad_preferences_are_refused(
    api: httpx.AsyncClient, prefs: dict[str, object], words: str
) -> None:
    await api.put("/v1/users/42", json=USER)
    response = await api.put("/v1/users/42/preferences", json=prefs)
    assert response.status_code == 422
    body = response.json()["error"]
    assert words in body["message"] or any(words in str(d) for d in body["details"])


async def test_preferences_of_unknown_user_is_404(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/users/nobody/preferences")).status_code == 404
    assert (await api.put("/v1/users/nobody/preferences", json={})).status_code == 404


async def test_device_registration_is_idempotent(api: httpx.AsyncClient) -> None:
    await api.put("/v1/users/42", json=USER)
    first = await api.post(
        "/v1/users/42/devices", json={"platform": "android", "token": ANDROID_TOKEN}
    )
    assert first.status_code == 201
    again = await api.post(
        "/v1/users/42/devices", json={"platform": "android", "token": ANDROID_TOKEN}
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    listed = (await api.get("/v1/users/42/devices")).json()["items"]
    assert [(d["id"], d["active"]) for d in listed] == [(first.json()["id"], True)]
    assert (await api.delete(f"/v1/users/42/devices/{first.json()['id']}")).status_code == 204
    assert (await api.get("/v1/users/42/devices")).json()["items"] == []


@pytest.mark.parametrize(
    "device",
    [
        {"platform": "android"},
        {"platform": "web", "token": "abc"},
        {
            "platform": "ios",
            "subscription": {"endpoint": "https://x", "keys": {"p256dh": "a", "auth": "b"}},
        },
        {"platform": "blackberry", "token": "abc"},
    ],
)
async def test_malformed_devices_are_refused(
    api: httpx.AsyncClient, device: dict[str, object]
) -> None:
    await api.put("/v1/users/42", json=USER)
    response = await api.post("/v1/users/42/devices", json=device)
    assert response.status_code == 422
    assert response.json()["error"]["message"]


async def test_deleting_a_user_erases_their_data(api: httpx.AsyncClient) -> None:
    await api.put("/v1/users/42", json=USER)
    await api.post("/v1/users/42/devices", json={"platform": "android", "token": ANDROID_TOKEN})
    accepted = await api.post("/v1/notifications", json={"user_id": "42", "title": "hi"})
    notification_id = accepted.json()["id"]
    assert (await api.delete("/v1/users/42")).status_code == 204
    assert (await api.get(f"/v1/notifications/{notification_id}")).status_code == 404
    await api.put("/v1/users/42", json=USER)
    assert (await api.get("/v1/users/42/devices")).json()["items"] == []
