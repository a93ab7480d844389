"""POST /v1/webhooks/{provider} through the API on both backends: signatures checked before
anything changes, reports applied to the delivery they name, addresses suppressed (and
released on START). Deliveries come from the real pipeline with the sandbox provider; the
webhooks are signed the way each provider signs them (the fakes' signers, FakeSns)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import structlog.testing

import herald.providers.ses.webhook
from herald.clock import FakeClock
from herald.fakes.sendgrid import FakeSendGrid, SentMail
from herald.fakes.sns import FakeSns
from herald.providers.callbacks import WebhookConfig
from herald.providers.sendgrid.webhook import SENDGRID_SIGNATURE_HEADER
from herald.providers.twilio.webhook import TWILIO_SIGNATURE_HEADER, twilio_signature
from herald.runtime import Runtime
from tests.fixtures.herald import Pipeline, eventually

TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-auth-token-for-tests"
PHONE = "+14155550142"
EMAIL = "dana@example.com"


@pytest.fixture
def sendgrid() -> FakeSendGrid:
    return FakeSendGrid()  # used as a signer only: never started


@pytest.fixture
def sns() -> FakeSns:
    return FakeSns()


@pytest.fixture
async def hooks(
    runtime: Runtime, api: httpx.AsyncClient, sendgrid: FakeSendGrid, sns: FakeSns
) -> httpx.AsyncClient:
    runtime.webhook_config = WebhookConfig(
        twilio_auth_token=TWILIO_TOKEN,
        twilio_account_sid=TWILIO_SID,
        sendgrid_public_key=sendgrid.public_key_base64,
        sns_certificates=sns.certificates(),
        sns_topic_arns=frozenset({sns.topic_arn}),
    )
    await api.put("/v1/users/dana", json={"email": EMAIL, "phone": PHONE})
    return api


def public(runtime: Runtime, provider: str) -> str:
    """The URL a provider signs: Herald's public URL and the webhook's path."""
    return f"{runtime.settings.effective_public_url}/v1/webhooks/{provider}"


async def delivery_when(
    api: httpx.AsyncClient, notification_id: str, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        deliveries = (await api.get(f"/v1/notifications/{notification_id}")).json()["deliveries"]
        return deliveries[0] if len(deliveries) == 1 and condition(deliveries[0]) else None

    found: dict[str, Any] = await eventually(check, timeout=30)
    return found


async def current(api: httpx.AsyncClient, delivery: dict[str, Any]) -> dict[str, Any]:
    notification = await api.get(f"/v1/notifications/{delivery['notification_id']}")
    [now] = notification.json()["deliveries"]
    return dict(now)


async def with_notification_id(api: httpx.AsyncClient, channel: str) -> dict[str, Any]:
    answer = await api.post(
        "/v1/notifications",
        json={
            "user_id": "dana",
            "category": "news",
            "title": "Hi",
            "body": "There",
            "channels": [channel],
        },
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert answer.status_code == 202, answer.text
    notification_id = answer.json()["id"]
    delivery = await delivery_when(api, notification_id, lambda d: d["status"] == "sent")
    return {**delivery, "notification_id": notification_id}


async def suppressions(api: httpx.AsyncClient, channel: str) -> list[tuple[str, str]]:
    items = (await api.get("/v1/suppressions", params={"channel": channel})).json()["items"]
    return [(item["address"], item["reason"]) for item in items]


# --------------------------------------------------------------------------- Twilio


def twilio_post(
    hooks: httpx.AsyncClient,
    url: str,
    form: dict[str, str],
    *,
    token: str | None = TWILIO_TOKEN,
    idempotency_token: str | None = None,
) -> Awaitable[httpx.Response]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if token is not None:
        headers[TWILIO_SIGNATURE_HEADER] = twilio_signature(token, url, form.items())
    if idempotency_token is not None:
        headers["I-Twilio-Idempotency-Token"] = idempotency_token
    return hooks.post("/v1/webhooks/twilio", content=urlencode(form), headers=headers)


def inbound_sms(body: str, message_sid: str | None = None) -> dict[str, str]:
    return {
        "AccountSid": TWILIO_SID,
        "MessageSid": message_sid or "SM" + uuid.uuid4().hex,
        "From": PHONE,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
    }


def status_form(message_sid: str, status: str) -> dict[str, str]:
    return {
        "AccountSid": TWILIO_SID,
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": PHONE,
        "From": "+15005550006",
        "ApiVersion": "2010-04-01",
    }


async def test_twilio_status_callback_marks_the_sms_delivered(
    hooks: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "sms")
    form = status_form(delivery["provider_message_id"], "delivered")

    answer = await twilio_post(hooks, public(runtime, "twilio"), form)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 1, "matched": 1, "duplicates": 0}
    now = await current(hooks, delivery)
    assert now["status"] == "delivered"
    events = (await hooks.get(f"/v1/notifications/{delivery['notification_id']}/events")).json()
    [webhook] = [e for e in events["items"] if e["detail"].get("webhook") == "delivered"]
    assert webhook["provider"] == "twilio"
    assert webhook["delivery_id"] == delivery["id"]


@pytest.mark.parametrize("signing", ["forged", "unsigned", "other_url"])
async def test_twilio_callback_without_a_valid_signature_is_refused(
    signing: str, hooks: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "sms")
    form = status_form(delivery["provider_message_id"], "undelivered") | {"ErrorCode": "21610"}
    url = public(runtime, "twilio")
    if signing == "forged":
        answer = await twilio_post(hooks, url, form, token="not-the-auth-token")
    elif signing == "unsigned":
        answer = await twilio_post(hooks, url, form, token=None)
    else:
        answer = await twilio_post(hooks, "https://elsewhere.example/v1/webhooks/twilio", form)

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert (await current(hooks, delivery))["status"] == "sent"
    assert await suppressions(hooks, "sms") == []  # 21610 would have been an opt-out


async def test_twilio_stop_suppresses_sms_and_start_lifts_it(
    hooks: httpx.AsyncClient, runtime: Runtime, pipeline: Pipeline
) -> None:
    url = public(runtime, "twilio")
    inbound = {
        "AccountSid": TWILIO_SID,
        "MessageSid": "SM" + "9" * 32,
        "From": PHONE,
        "To": "+15005550006",
        "Body": "stop",
        "NumMedia": "0",
    }

    assert (await twilio_post(hooks, url, inbound)).status_code == 200
    assert await suppressions(hooks, "sms") == [(PHONE, "opt-out (STOP)")]

    answer = await hooks.post(
        "/v1/notifications",
        json={"user_id": "dana", "category": "news", "body": "Sale", "channels": ["sms"]},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    skipped = await delivery_when(hooks, answer.json()["id"], lambda d: d["status"] == "skipped")
    assert skipped["last_error"] == "address is suppressed"

    start = inbound | {"MessageSid": "SM" + "8" * 32, "Body": "START"}
    assert (await twilio_post(hooks, url, start)).status_code == 200
    assert await suppressions(hooks, "sms") == []
    delivery = await with_notification_id(hooks, "sms")  # sent again
    assert delivery["status"] == "sent"


# --------------------------------------------------------------------------- SendGrid


def sendgrid_mail(delivery: dict[str, Any]) -> SentMail:
    message_id = str(delivery["provider_message_id"]).split(".")[0]
    return SentMail(
        message_id=message_id,
        body={
            "personalizations": [{"to": [{"email": EMAIL}]}],
            "custom_args": {"herald_delivery_id": delivery["id"]},
        },
    )


async def test_sendgrid_bounce_makes_the_delivery_undeliverable_and_suppresses(
    hooks: httpx.AsyncClient, sendgrid: FakeSendGrid, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "email")
    events = [
        sendgrid.event(sendgrid_mail(delivery), "processed"),
        sendgrid.event(sendgrid_mail(delivery), "bounce", type="bounce", status="5.1.1"),
    ]
    body, headers = sendgrid.signed_events(events)

    answer = await hooks.post("/v1/webhooks/sendgrid", content=body, headers=headers)

    assert answer.status_code == 200, answer.text
    # "processed" is not an event
    assert answer.json() == {"received": 1, "matched": 1, "duplicates": 0}
    assert (await current(hooks, delivery))["status"] == "undeliverable"
    assert await suppressions(hooks, "email") == [(EMAIL, "sendgrid bounced")]


@pytest.mark.parametrize("problem", ["forged", "tampered", "replayed_old", "unsigned"])
async def test_sendgrid_events_that_do_not_verify_change_nothing(
    problem: str, hooks: httpx.AsyncClient, sendgrid: FakeSendGrid, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "email")
    bounce = [sendgrid.event(sendgrid_mail(delivery), "bounce", type="bounce")]
    if problem == "forged":
        body, headers = FakeSendGrid().signed_events(bounce)  # another key
    elif problem == "tampered":
        body, headers = sendgrid.signed_events(
            [sendgrid.event(sendgrid_mail(delivery), "delivered")]
        )
        body = orjson.dumps(bounce)
    elif problem == "replayed_old":
        body, headers = sendgrid.signed_events(bounce, timestamp=int(time.time()) - 3600)
    else:
        body, headers = sendgrid.signed_events(bounce)
        headers = {k: v for k, v in headers.items() if k != SENDGRID_SIGNATURE_HEADER}

    answer = await hooks.post("/v1/webhooks/sendgrid", content=body, headers=headers)

    assert answer.status_code == 401
    assert (await current(hooks, delivery))["status"] == "sent"
    assert await suppressions(hooks, "email") == []


# --------------------------------------------------------------------------- SES via SNS


def sns_post(hooks: httpx.AsyncClient, body: bytes) -> Awaitable[httpx.Response]:
    return hooks.post("/v1/webhooks/ses", content=body, headers=FakeSns.headers(body))


async def test_ses_permanent_bounce_suppresses_the_address(
    hooks: httpx.AsyncClient, sns: FakeSns, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "email")
    body = sns.notification(sns.ses_bounce(delivery_id=delivery["id"], address=EMAIL))

    answer = await sns_post(hooks, body)

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 1, "matched": 1, "duplicates": 0}
    assert (await current(hooks, delivery))["status"] == "undeliverable"
    assert await suppressions(hooks, "email") == [(EMAIL, "ses bounced")]


async def test_ses_transient_bounce_keeps_the_address(
    hooks: httpx.AsyncClient, sns: FakeSns, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "email")
    body = sns.notification(
        sns.ses_bounce(delivery_id=delivery["id"], address=EMAIL, bounce_type="Transient")
    )

    assert (await sns_post(hooks, body)).status_code == 200
    assert (await current(hooks, delivery))["status"] == "sent"
    assert await suppressions(hooks, "email") == []


async def test_ses_notification_signed_by_someone_else_is_refused(
    hooks: httpx.AsyncClient, sns: FakeSns, pipeline: Pipeline
) -> None:
    delivery = await with_notification_id(hooks, "email")
    impostor = FakeSns()
    impostor.cert_url = sns.cert_url  # claims the real certificate, signs with its own key
    body = impostor.notification(impostor.ses_bounce(delivery_id=delivery["id"], address=EMAIL))

    assert (await sns_post(hooks, body)).status_code == 401
    assert (await current(hooks, delivery))["status"] == "sent"
    assert await suppressions(hooks, "email") == []


@pytest.fixture
def confirmations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """SNS subscription confirmations the API fetched (no network: answered here). A test
    appends "fail" to make the next one a connection failure."""
    fetched: list[str] = []
    original = httpx.AsyncClient.get

    async def get(self: httpx.AsyncClient, url: Any, **kwargs: Any) -> httpx.Response:
        if "amazonaws.com" in str(url):
            if fetched[-1:] == ["fail"]:  # a test asked for one failure
                fetched[-1] = str(url)
                raise httpx.ConnectError("connection refused")
            fetched.append(str(url))
            return httpx.Response(
                200, text="<ConfirmSubscriptionResponse/>", request=httpx.Request("GET", url)
            )
        return await original(self, url, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "get", get)
    return fetched


async def test_sns_subscription_confirmation_is_confirmed(
    hooks: httpx.AsyncClient, sns: FakeSns, confirmations: list[str]
) -> None:
    body = sns.subscription_confirmation()

    answer = await sns_post(hooks, body)

    assert answer.status_code == 200, answer.text
    assert confirmations == [orjson.loads(body)["SubscribeURL"]]
    assert confirmations[0].startswith(
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
    )


@pytest.mark.expect_errors  # the failed confirmation is logged as an error
async def test_a_failed_subscription_confirmation_is_confirmed_on_the_retry(
    hooks: httpx.AsyncClient, sns: FakeSns, confirmations: list[str]
) -> None:
    """The first GET of the SubscribeURL fails: SNS is told to retry (503), and its retry,
    the same message, is confirmed rather than dropped as a repeat."""
    body = sns.subscription_confirmation()
    confirmations.append("fail")  # the fixture's next answer is a connection failure

    first = await sns_post(hooks, body)
    again = await sns_post(hooks, body)

    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"]
    assert again.status_code == 200, again.text
    assert again.json()["duplicates"] == 0
    assert confirmations == [orjson.loads(body)["SubscribeURL"]] * 2


async def test_sns_subscription_url_off_sns_is_refused_and_not_fetched(
    hooks: httpx.AsyncClient, sns: FakeSns, confirmations: list[str]
) -> None:
    envelope = orjson.loads(sns.subscription_confirmation())
    for url in (
        envelope["SubscribeURL"].replace("https://", "http://"),
        "https://evil.example/?Action=ConfirmSubscription",
    ):
        tampered = {k: v for k, v in envelope.items() if k not in ("Signature", "SignatureVersion")}
        tampered["SubscribeURL"] = url
        body = sns._signed(tampered, "2")  # validly signed: only the URL is wrong

        answer = await sns_post(hooks, body)

        assert answer.status_code == 401
        assert "SubscribeURL" in answer.json()["error"]["message"]
    assert confirmations == []


# --------------------------------------------------------------------------- replays


async def test_a_replayed_start_does_not_lift_a_newer_stop(
    hooks: httpx.AsyncClient, runtime: Runtime
) -> None:
    """STOP, START, STOP; then the START again, as Twilio retried it (same idempotency
    token) and as an attacker would replay it (a fresh token: the header is not signed)."""
    url = public(runtime, "twilio")
    start = inbound_sms("START")
    for form, token in [
        (inbound_sms("STOP"), "idem-1"),
        (start, "idem-2"),
        (inbound_sms("STOP"), "idem-3"),
    ]:
        assert (await twilio_post(hooks, url, form, idempotency_token=token)).status_code == 200
    assert await suppressions(hooks, "sms") == [(PHONE, "opt-out (STOP)")]

    for token in ("idem-2", "a-fresh-token"):
        replay = await twilio_post(hooks, url, start, idempotency_token=token)

        assert replay.status_code == 200, replay.text
        assert replay.json() == {"received": 1, "matched": 0, "duplicates": 1}
        assert await suppressions(hooks, "sms") == [(PHONE, "opt-out (STOP)")]


@pytest.mark.parametrize("clock", [FakeClock(datetime.now(UTC))])
async def test_a_start_replayed_after_the_event_retention_still_does_not_lift_a_stop(
    hooks: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """Twilio signs no time, so an opt-in's signed id is what refuses its replay: it
    outlives the housekeeping that forgets other webhook ids with the delivery log."""
    url = public(runtime, "twilio")
    start = inbound_sms("START")
    for form in (inbound_sms("STOP"), start, inbound_sms("STOP")):
        assert (await twilio_post(hooks, url, form)).status_code == 200

    clock.advance((runtime.storage.database.retention_days + 1) * 86400)
    await runtime.storage.scheduling.maintain()
    replay = await twilio_post(hooks, url, start, idempotency_token="a-fresh-token")

    assert replay.json()["duplicates"] == 1
    assert await suppressions(hooks, "sms") == [(PHONE, "opt-out (STOP)")]


@pytest.mark.parametrize("provider", ["twilio", "sendgrid", "ses"])
async def test_a_replayed_suppressing_webhook_is_applied_once(
    provider: str,
    hooks: httpx.AsyncClient,
    runtime: Runtime,
    sendgrid: FakeSendGrid,
    sns: FakeSns,
    pipeline: Pipeline,
) -> None:
    """An operator releases a bounced or opted-out address; the provider's event, posted
    again (a retry, or a replay within its signature's window), does not suppress it anew."""
    if provider == "twilio":
        form, url = inbound_sms("STOP"), public(runtime, "twilio")

        def post() -> Awaitable[httpx.Response]:
            return twilio_post(hooks, url, form, idempotency_token="idem-stop")

        channel, address = "sms", PHONE
    elif provider == "sendgrid":
        delivery = await with_notification_id(hooks, "email")
        bounce = [sendgrid.event(sendgrid_mail(delivery), "bounce", type="bounce")]
        body, headers = sendgrid.signed_events(bounce)

        def post() -> Awaitable[httpx.Response]:
            return hooks.post("/v1/webhooks/sendgrid", content=body, headers=headers)

        channel, address = "email", EMAIL
    else:
        delivery = await with_notification_id(hooks, "email")
        ses_body = sns.notification(sns.ses_bounce(delivery_id=delivery["id"], address=EMAIL))

        def post() -> Awaitable[httpx.Response]:
            return sns_post(hooks, ses_body)

        channel, address = "email", EMAIL

    assert (await post()).status_code == 200
    listed = await hooks.get("/v1/suppressions", params={"channel": channel})
    [suppression] = listed.json()["items"]
    assert suppression["address"] == address
    assert (await hooks.delete(f"/v1/suppressions/{suppression['id']}")).status_code == 204

    again = await post()

    assert again.status_code == 200, again.text
    assert again.json()["duplicates"] == 1
    assert await suppressions(hooks, channel) == []


# --------------------------------------------------------------------------- SNS topics


@pytest.mark.parametrize("allowed", ["no allow-list", "another topic"])
async def test_sns_from_a_topic_not_allowed_is_refused_and_never_confirmed(
    allowed: str,
    hooks: httpx.AsyncClient,
    runtime: Runtime,
    sns: FakeSns,
    confirmations: list[str],
    pipeline: Pipeline,
) -> None:
    assert runtime.webhook_config is not None
    if allowed == "no allow-list":
        runtime.webhook_config.sns_topic_arns = frozenset()
        topic = sns.topic_arn
    else:
        topic = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic"
    delivery = await with_notification_id(hooks, "email")
    bounce = sns.ses_bounce(delivery_id=delivery["id"], address=EMAIL)

    with structlog.testing.capture_logs() as logs:
        answers = [
            await sns_post(hooks, sns.subscription_confirmation(topic_arn=topic)),
            await sns_post(hooks, sns.notification(bounce, topic_arn=topic)),
        ]

    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "forbidden"
        assert "HERALD_SNS_TOPIC_ARNS" in answer.json()["error"]["message"]
    refused = [e for e in logs if e["event"] == "webhook refused"]
    assert [e["log_level"] for e in refused] == ["warning", "warning"]
    assert confirmations == []
    assert (await current(hooks, delivery))["status"] == "sent"
    assert await suppressions(hooks, "email") == []


async def test_the_sns_signing_certificate_is_fetched_once_across_requests(
    hooks: httpx.AsyncClient,
    runtime: Runtime,
    sns: FakeSns,
    monkeypatch: pytest.MonkeyPatch,
    confirmations: list[str],
) -> None:
    """The API builds its webhook settings from the deployment's (no test config), and the
    certificate GET goes to FakeSns instead of the network."""
    runtime.webhook_config = None
    runtime.settings.sns_topic_arns = [sns.topic_arn]
    monkeypatch.setattr(herald.providers.ses.webhook, "fetch_over_https", sns.fetch_certificate)

    for _ in range(3):
        assert (await sns_post(hooks, sns.subscription_confirmation())).status_code == 200

    assert sns.fetched == [sns.cert_url]
    assert len(confirmations) == 3


async def test_unknown_provider_is_404(hooks: httpx.AsyncClient) -> None:
    answer = await hooks.post("/v1/webhooks/pigeon", content=b"{}")
    assert answer.status_code == 404
