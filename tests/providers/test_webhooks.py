"""Webhook verification and parsing: for each provider a valid signature is accepted and
parsed, a forged one, an unsigned one and (where the protocol signs a time) a replayed old
one are rejected."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from herald.clock import FakeClock
from herald.config import Settings
from herald.fakes.sendgrid import FakeSendGrid, SentMail
from herald.fakes.sns import FakeSns, default_topic_arn
from herald.providers.callbacks import WebhookConfig, parse_webhook
from herald.providers.events import UnknownWebhookProvider, WebhookNotAllowed, WebhookRejected
from herald.providers.sendgrid.webhook import (
    load_sendgrid_public_key,
    parse_sendgrid,
    verify_sendgrid,
)
from herald.providers.ses.webhook import SnsCertificates, is_sns_url, parse_ses
from herald.providers.twilio.webhook import parse_twilio, twilio_signature

# --------------------------------------------------------------------------- Twilio

TOKEN = "twilio-auth-token"
ACCOUNT = "AC" + "1" * 32
URL = "https://herald.example/v1/webhooks/twilio"
TOPICS = {default_topic_arn()}  # what every FakeSns here publishes on


def twilio_request(
    params: dict[str, str], *, url: str = URL, token: str = TOKEN
) -> tuple[dict[str, str], bytes]:
    headers = {"X-Twilio-Signature": twilio_signature(token, url, params.items())}
    return headers, urlencode(params).encode()


def status_params(status: str, error_code: str | None = None) -> dict[str, str]:
    params = {
        "AccountSid": ACCOUNT,
        "MessageSid": "SM" + "a" * 32,
        "SmsSid": "SM" + "a" * 32,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": "+14155552671",
        "From": "+15005550006",
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        params["ErrorCode"] = error_code
    return params


def test_twilio_signature_matches_twilios_published_vectors() -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    assert twilio_signature("12345", url, params.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]
    assert twilio_signature("12345", url, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_twilio_delivered_callback() -> None:
    headers, body = twilio_request(status_params("delivered"))
    [event] = parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)
    assert event.provider == "twilio"
    assert event.kind == "delivered"
    assert event.provider_message_id == "SM" + "a" * 32
    assert event.address == "+14155552671"
    assert not event.permanent


@pytest.mark.parametrize(
    ("status", "error_code", "kind", "permanent"),
    [
        ("undelivered", "21610", "opt_out", True),
        ("undelivered", "30005", "bounced", True),
        ("undelivered", "30006", "bounced", True),
        ("failed", "21211", "bounced", True),
        ("undelivered", "30003", "failed", False),
        ("failed", "30007", "failed", False),
        ("failed", None, "failed", False),
    ],
)
def test_twilio_failure_callbacks(
    status: str, error_code: str | None, kind: str, permanent: bool
) -> None:
    headers, body = twilio_request(status_params(status, error_code))
    [event] = parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)
    assert (event.kind, event.permanent) == (kind, permanent)
    assert event.detail["error_code"] == error_code


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "accepted"])
def test_twilio_progress_callbacks_carry_no_event(status: str) -> None:
    headers, body = twilio_request(status_params(status))
    assert parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN) == []


@pytest.mark.parametrize(
    ("text", "option", "kind"),
    [
        ("STOP", None, "opt_out"),
        (" stop ", None, "opt_out"),
        ("Unsubscribe", None, "opt_out"),
        ("START", None, "opt_in"),
        ("arrêt", "STOP", "opt_out"),  # Advanced Opt-Out names the class itself
        ("thanks!", None, None),
    ],
)
def test_twilio_inbound_keywords(text: str, option: str | None, kind: str | None) -> None:
    params = {
        "AccountSid": ACCOUNT,
        "MessageSid": "SM" + "b" * 32,
        "SmsStatus": "received",
        "From": "+447911123456",
        "To": "+15005550006",
        "Body": text,
    }
    if option:
        params["OptOutType"] = option
    headers, body = twilio_request(params)
    events = parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)
    assert [e.kind for e in events] == ([kind] if kind else [])
    if kind:
        assert events[0].address == "+447911123456"
        assert events[0].permanent is (kind == "opt_out")


def test_twilio_forged_signature_is_rejected() -> None:
    headers, body = twilio_request(status_params("delivered"), token="someone-else")
    with pytest.raises(WebhookRejected, match="bad X-Twilio-Signature"):
        parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)


def test_twilio_tampered_body_is_rejected() -> None:
    headers, _ = twilio_request(status_params("failed", "30003"))
    tampered = urlencode(status_params("failed", "21610")).encode()
    with pytest.raises(WebhookRejected):
        parse_twilio(url=URL, headers=headers, body=tampered, auth_token=TOKEN)


def test_twilio_unsigned_is_rejected() -> None:
    _, body = twilio_request(status_params("delivered"))
    with pytest.raises(WebhookRejected, match="missing"):
        parse_twilio(url=URL, headers={}, body=body, auth_token=TOKEN)


def test_twilio_signature_for_another_url_is_rejected() -> None:
    headers, body = twilio_request(status_params("delivered"), url="https://evil.example/hook")
    with pytest.raises(WebhookRejected):
        parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)


def test_twilio_default_port_variants_are_accepted() -> None:
    headers, body = twilio_request(
        status_params("delivered"), url="https://herald.example:443/v1/webhooks/twilio"
    )
    lower = {k.lower(): v for k, v in headers.items()}  # header names in any case
    [event] = parse_twilio(url=URL, headers=lower, body=body, auth_token=TOKEN)
    assert event.kind == "delivered"


def test_twilio_other_account_is_rejected() -> None:
    headers, body = twilio_request(status_params("delivered"))
    with pytest.raises(WebhookRejected, match="another Twilio account"):
        parse_twilio(
            url=URL, headers=headers, body=body, auth_token=TOKEN, account_sid="AC" + "2" * 32
        )


def test_twilio_replay_is_left_to_the_idempotency_token() -> None:
    """Twilio signs no timestamp: a replay verifies. The event is an idempotent fact and
    carries I-Twilio-Idempotency-Token for the caller to drop repeats."""
    headers, body = twilio_request(status_params("delivered"))
    headers["I-Twilio-Idempotency-Token"] = "token-1"
    first = parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)
    again = parse_twilio(url=URL, headers=headers, body=body, auth_token=TOKEN)
    assert first == again
    assert first[0].detail["idempotency_token"] == "token-1"
    # The signed sid and status first (a replay with a fresh token repeats it), then the token.
    assert first[0].event_ids == ("SM" + "a" * 32 + ":delivered", "token:token-1")


# --------------------------------------------------------------------------- SendGrid

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def sendgrid() -> FakeSendGrid:
    return FakeSendGrid(clock=FakeClock(NOW))


def sent_mail(delivery_id: str = "delivery-1", address: str = "bob@example.com") -> SentMail:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": address}]}],
        "custom_args": {"herald_delivery_id": delivery_id},
    }
    return SentMail(message_id="14c5d75ce93dfd64b469", body=body)


def test_sendgrid_verifies_the_official_test_vector() -> None:
    key = load_sendgrid_public_key(
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7"
        "yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
    )
    payload = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6"
        "n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=",
        "X-Twilio-Email-Event-Webhook-Timestamp": "1588788367",
    }
    signed_at = datetime.fromtimestamp(1588788367, UTC)
    verify_sendgrid(headers, payload, key, now=signed_at + timedelta(seconds=30))
    with pytest.raises(WebhookRejected):
        verify_sendgrid(headers, payload + b" ", key, now=signed_at)


def test_sendgrid_events_are_parsed(sendgrid: FakeSendGrid) -> None:
    mail = sent_mail()
    body, headers = sendgrid.signed_events(
        [
            sendgrid.event(mail, "processed"),
            sendgrid.event(mail, "delivered", response="250 OK"),
            sendgrid.event(mail, "bounce", type="bounce", status="5.1.1", reason="no user"),
        ]
    )
    events = parse_sendgrid(
        headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW
    )
    assert [e.kind for e in events] == ["delivered", "bounced"]
    assert all(e.delivery_id == "delivery-1" for e in events)
    assert all(e.provider_message_id == mail.message_id for e in events)
    assert all(e.address == "bob@example.com" for e in events)
    assert events[1].permanent
    assert events[1].detail["status"] == "5.1.1"
    assert events[0].occurred_at == NOW


@pytest.mark.parametrize(
    ("event", "fields", "kind", "permanent"),
    [
        ("bounce", {"type": "bounce"}, "bounced", True),
        ("bounce", {"type": "blocked"}, "bounced", False),
        ("dropped", {"reason": "Bounced Address"}, "bounced", True),
        ("dropped", {"reason": "Invalid"}, "bounced", True),
        ("dropped", {"reason": "Unsubscribed Address"}, "unsubscribed", True),
        ("dropped", {"reason": "Spam Reporting Address"}, "complained", True),
        ("dropped", {"reason": "Invalid SMTPAPI header"}, "failed", False),
        ("dropped", {"reason": "Exceeded message size"}, "failed", False),
        ("spamreport", {}, "complained", True),
        ("unsubscribe", {}, "unsubscribed", True),
        ("group_unsubscribe", {"asm_group_id": 1}, "unsubscribed", True),
        ("deferred", {"attempt": "2"}, "deferred", False),
        ("open", {}, "opened", False),
        ("click", {"url": "https://x"}, "clicked", False),
    ],
)
def test_sendgrid_event_table(
    sendgrid: FakeSendGrid, event: str, fields: dict[str, Any], kind: str, permanent: bool
) -> None:
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail(), event, **fields)])
    [parsed] = parse_sendgrid(
        headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW
    )
    assert (parsed.kind, parsed.permanent) == (kind, permanent)


def test_sendgrid_nested_custom_args_are_read(sendgrid: FakeSendGrid) -> None:
    raw = {"event": "delivered", "email": "a@b.example", "custom_args": {"herald_delivery_id": "d"}}
    body, headers = sendgrid.signed_events([raw])
    [event] = parse_sendgrid(
        headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW
    )
    assert event.delivery_id == "d"


def test_sendgrid_forged_signature_is_rejected(sendgrid: FakeSendGrid) -> None:
    other = FakeSendGrid(clock=FakeClock(NOW))
    body, headers = other.signed_events([other.event(sent_mail(), "spamreport")])
    with pytest.raises(WebhookRejected, match="bad SendGrid signature"):
        parse_sendgrid(headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW)


def test_sendgrid_tampered_body_is_rejected(sendgrid: FakeSendGrid) -> None:
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail(), "delivered")])
    tampered = body.replace(b"delivered", b"spamreport")
    with pytest.raises(WebhookRejected):
        parse_sendgrid(
            headers=headers, body=tampered, public_key=sendgrid.public_key_base64, now=NOW
        )


def test_sendgrid_replayed_old_payload_is_rejected(sendgrid: FakeSendGrid) -> None:
    old = int((NOW - timedelta(minutes=11)).timestamp())
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail())], timestamp=old)
    with pytest.raises(WebhookRejected, match="older than"):
        parse_sendgrid(headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW)
    # Within the window the same payload is fine.
    recent = int((NOW - timedelta(minutes=9)).timestamp())
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail())], timestamp=recent)
    assert parse_sendgrid(
        headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW
    )


def test_sendgrid_future_timestamp_is_rejected(sendgrid: FakeSendGrid) -> None:
    future = int((NOW + timedelta(hours=1)).timestamp())
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail())], timestamp=future)
    with pytest.raises(WebhookRejected, match="future"):
        parse_sendgrid(headers=headers, body=body, public_key=sendgrid.public_key_base64, now=NOW)


def test_sendgrid_unsigned_is_rejected(sendgrid: FakeSendGrid) -> None:
    body, _ = sendgrid.signed_events([sendgrid.event(sent_mail())])
    with pytest.raises(WebhookRejected, match="missing"):
        parse_sendgrid(
            headers={"Content-Type": "application/json"},
            body=body,
            public_key=sendgrid.public_key_base64,
            now=NOW,
        )


def test_sendgrid_unusable_key_is_a_rejection_not_a_crash(sendgrid: FakeSendGrid) -> None:
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail())])
    with pytest.raises(WebhookRejected, match="unusable"):
        parse_sendgrid(headers=headers, body=body, public_key="not-base64!", now=NOW)


# --------------------------------------------------------------------------- SES via SNS


@pytest.fixture(scope="module")
def sns() -> FakeSns:
    return FakeSns()


def sns_now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.parametrize("version", ["1", "2"])
async def test_ses_permanent_bounce(sns: FakeSns, version: str) -> None:
    delivery_id = str(uuid.uuid4())
    body = sns.notification(
        sns.ses_bounce(delivery_id=delivery_id, address="gone@example.com"),
        signature_version=version,
    )
    [event] = await parse_ses(
        topic_arns=TOPICS,
        headers=sns.headers(body),
        body=body,
        certificates=sns.certificates(),
        now=sns_now(),
    )
    assert event.provider == "ses"
    assert (event.kind, event.permanent) == ("bounced", True)
    assert event.address == "gone@example.com"
    assert event.delivery_id == delivery_id
    assert event.provider_message_id == "0100018c-ses-message-id"
    assert event.detail["bounceType"] == "Permanent"
    assert event.detail["status"] == "5.1.1"


@pytest.mark.parametrize(
    ("notification", "kind", "permanent"),
    [
        ("transient", "bounced", False),
        ("complaint", "complained", True),
        ("delivery", "delivered", False),
    ],
)
async def test_ses_notification_kinds(
    sns: FakeSns, notification: str, kind: str, permanent: bool
) -> None:
    address = "a@example.com"
    if notification == "transient":
        inner = sns.ses_bounce(delivery_id="d-1", address=address, bounce_type="Transient")
    elif notification == "complaint":
        inner = sns.ses_complaint(delivery_id="d-1", address=address)
    else:
        inner = sns.ses_delivery(delivery_id="d-1", address=address)
    body = sns.notification(inner, subject="Amazon SES Email Event Notification")
    [event] = await parse_ses(
        topic_arns=TOPICS,
        headers=sns.headers(body),
        body=body,
        certificates=sns.certificates(),
        now=sns_now(),
    )
    assert (event.kind, event.permanent, event.delivery_id) == (kind, permanent, "d-1")


async def test_ses_delivery_id_from_the_message_id_header(sns: FakeSns) -> None:
    inner = sns.ses_delivery(delivery_id="d-42", address="a@example.com")
    del inner["mail"]["tags"]
    body = sns.notification(inner)
    [event] = await parse_ses(
        topic_arns=TOPICS, headers={}, body=body, certificates=sns.certificates(), now=sns_now()
    )
    assert event.delivery_id == "d-42"


async def test_ses_subscription_confirmation(sns: FakeSns) -> None:
    body = sns.subscription_confirmation()
    [event] = await parse_ses(
        topic_arns=TOPICS,
        headers=sns.headers(body),
        body=body,
        certificates=sns.certificates(),
        now=sns_now(),
    )
    assert event.kind == "subscription_confirmation"
    assert event.detail["subscribe_url"].startswith(
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
    )
    assert event.detail["topic_arn"] == sns.topic_arn


async def test_ses_forged_signature_is_rejected(sns: FakeSns) -> None:
    impostor = FakeSns()
    body = impostor.notification(sns.ses_complaint(delivery_id="d", address="a@example.com"))
    envelope = orjson.loads(body)
    envelope["SigningCertURL"] = sns.cert_url  # claims the real certificate
    with pytest.raises(WebhookRejected, match="bad SNS signature"):
        await parse_ses(
            topic_arns=TOPICS,
            headers={},
            body=orjson.dumps(envelope),
            certificates=sns.certificates(),
            now=sns_now(),
        )


async def test_ses_tampered_message_is_rejected(sns: FakeSns) -> None:
    body = sns.notification(sns.ses_delivery(delivery_id="d", address="a@example.com"))
    envelope = orjson.loads(body)
    envelope["Message"] = envelope["Message"].replace("Delivery", "Bounce")
    with pytest.raises(WebhookRejected, match="bad SNS signature"):
        await parse_ses(
            topic_arns=TOPICS,
            headers={},
            body=orjson.dumps(envelope),
            certificates=sns.certificates(),
            now=sns_now(),
        )


async def test_ses_replayed_old_notification_is_rejected(sns: FakeSns) -> None:
    two_hours_ago = sns_now() - timedelta(hours=2)
    body = sns.notification(
        sns.ses_delivery(delivery_id="d", address="a@example.com"), timestamp=two_hours_ago
    )
    with pytest.raises(WebhookRejected, match="older than"):
        await parse_ses(
            topic_arns=TOPICS, headers={}, body=body, certificates=sns.certificates(), now=sns_now()
        )


@pytest.mark.parametrize("strip", ["Signature", "SigningCertURL", "SignatureVersion"])
async def test_ses_unsigned_is_rejected(sns: FakeSns, strip: str) -> None:
    envelope = orjson.loads(sns.notification({"notificationType": "Delivery"}))
    del envelope[strip]
    with pytest.raises(WebhookRejected):
        await parse_ses(
            topic_arns=TOPICS,
            headers={},
            body=orjson.dumps(envelope),
            certificates=sns.certificates(),
            now=sns_now(),
        )


@pytest.mark.parametrize(
    "cert_url",
    [
        "http://sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
        "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
        "https://user@sns.us-east-1.amazonaws.com/cert.pem",
    ],
)
async def test_ses_untrusted_certificate_urls_are_never_fetched(
    sns: FakeSns, cert_url: str
) -> None:
    envelope = orjson.loads(sns.notification({"notificationType": "Delivery"}))
    envelope["SigningCertURL"] = cert_url
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return sns.certificate_pem

    with pytest.raises(WebhookRejected, match="untrusted"):
        await parse_ses(
            topic_arns=TOPICS,
            headers={},
            body=orjson.dumps(envelope),
            certificates=SnsCertificates(fetch),
            now=sns_now(),
        )
    assert fetched == []
    assert not is_sns_url(cert_url)


async def test_ses_certificate_hook_for_a_local_url(sns: FakeSns) -> None:
    """Tests (or a private deployment) may widen the trusted URL rule explicitly."""
    local = FakeSns()
    local.cert_url = "http://127.0.0.1:9/cert.pem"
    body = local.notification(local.ses_delivery(delivery_id="d", address="a@example.com"))
    widened = SnsCertificates(
        lambda url: _constant(local.certificate_pem),
        is_trusted=lambda url: url.startswith("http://127.0.0.1:9/"),
    )
    assert await parse_ses(
        topic_arns=TOPICS, headers={}, body=body, certificates=widened, now=sns_now()
    )
    with pytest.raises(WebhookRejected, match="untrusted"):
        await parse_ses(
            topic_arns=TOPICS,
            headers={},
            body=body,
            certificates=local.certificates(),
            now=sns_now(),
        )


async def _constant(value: bytes) -> bytes:
    return value


async def test_ses_certificate_is_fetched_once(sns: FakeSns) -> None:
    certificates = sns.certificates()
    before = len(sns.fetched)
    for _ in range(3):
        body = sns.notification(sns.ses_delivery(delivery_id="d", address="a@example.com"))
        await parse_ses(
            topic_arns=TOPICS, headers={}, body=body, certificates=certificates, now=sns_now()
        )
    assert len(sns.fetched) - before == 1


@pytest.mark.parametrize("kind", ["notification", "subscription_confirmation"])
async def test_ses_topic_off_the_allow_list_is_refused_before_its_certificate_is_fetched(
    kind: str,
) -> None:
    """Anyone can publish validly signed SNS messages on a topic of their own account."""
    stranger = FakeSns(topic_arn="arn:aws:sns:us-east-1:999999999999:not-ours")
    if kind == "notification":
        body = stranger.notification(stranger.ses_bounce(delivery_id="d", address="a@example.com"))
    else:
        body = stranger.subscription_confirmation()
    with pytest.raises(WebhookNotAllowed, match="HERALD_SNS_TOPIC_ARNS"):
        await parse_ses(
            headers={},
            body=body,
            certificates=stranger.certificates(),
            now=sns_now(),
            topic_arns=TOPICS,
        )
    assert stranger.fetched == []


async def test_ses_events_carry_the_sns_message_id(sns: FakeSns) -> None:
    body = sns.notification(sns.ses_delivery(delivery_id="d", address="a@example.com"))
    [event] = await parse_ses(
        headers={}, body=body, certificates=sns.certificates(), now=sns_now(), topic_arns=TOPICS
    )
    assert event.event_ids == (orjson.loads(body)["MessageId"],)


async def test_sns_certificates_are_cached_for_their_ttl() -> None:
    clock = FakeClock(datetime.now(UTC))
    sns = FakeSns()
    certificates = SnsCertificates(sns.fetch_certificate, ttl=timedelta(hours=1), clock=clock)
    for _ in range(3):
        await certificates.get(sns.cert_url)
        clock.advance(20 * 60)
    assert sns.fetched == [sns.cert_url]
    clock.advance(20 * 60)  # past the hour: fetched again (AWS rotates and revokes them)
    await certificates.get(sns.cert_url)
    assert sns.fetched == [sns.cert_url, sns.cert_url]


def test_sns_certificate_cache_is_bounded() -> None:
    sns = FakeSns()
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return sns.certificate_pem

    certificates = SnsCertificates(fetch, max_cached=2)
    urls = [f"https://sns.us-east-1.amazonaws.com/cert-{n}.pem" for n in range(3)]

    async def get_all() -> None:
        for url in [*urls, urls[2], urls[0]]:
            await certificates.get(url)

    import asyncio

    asyncio.run(get_all())
    assert fetched == [*urls, urls[0]]  # cert-0 was the oldest, evicted by cert-2


async def test_ses_message_type_header_must_match(sns: FakeSns) -> None:
    body = sns.notification(sns.ses_delivery(delivery_id="d", address="a@example.com"))
    with pytest.raises(WebhookRejected, match="message-type"):
        await parse_ses(
            topic_arns=TOPICS,
            headers={"x-amz-sns-message-type": "SubscriptionConfirmation"},
            body=body,
            certificates=sns.certificates(),
            now=sns_now(),
        )


# --------------------------------------------------------------------------- dispatch


async def test_parse_webhook_dispatches_by_provider(sns: FakeSns) -> None:
    sendgrid = FakeSendGrid(clock=FakeClock(NOW))
    config = WebhookConfig.from_settings(
        Settings(
            twilio_auth_token=TOKEN,
            twilio_account_sid=ACCOUNT,
            sendgrid_webhook_key=sendgrid.public_key_base64,
            sns_topic_arns=[sns.topic_arn],
        )
    )
    config.sns_certificates = sns.certificates()

    headers, body = twilio_request(status_params("delivered"))
    twilio_events = await parse_webhook(
        "twilio", url=URL, headers=headers, body=body, config=config, now=NOW
    )
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail())])
    sendgrid_events = await parse_webhook(
        "sendgrid", url="", headers=headers, body=body, config=config, now=NOW
    )
    body = sns.notification(sns.ses_delivery(delivery_id="d", address="a@example.com"))
    ses_events = await parse_webhook(
        "ses", url="", headers={}, body=body, config=config, now=sns_now()
    )

    assert [e.provider for e in twilio_events + sendgrid_events + ses_events] == [
        "twilio",
        "sendgrid",
        "ses",
    ]
    with pytest.raises(UnknownWebhookProvider):
        await parse_webhook("fcm", url="", headers={}, body=b"", config=config, now=NOW)


async def test_parse_webhook_refuses_unconfigured_providers() -> None:
    config = WebhookConfig()
    for provider in ("twilio", "sendgrid"):
        with pytest.raises(WebhookRejected, match="not configured"):
            await parse_webhook(provider, url=URL, headers={}, body=b"", config=config, now=NOW)


async def test_sns_webhooks_are_refused_without_a_topic_allow_list(sns: FakeSns) -> None:
    config = WebhookConfig(sns_certificates=sns.certificates())  # no sns_topic_arns
    for body in (
        sns.subscription_confirmation(),
        sns.notification(sns.ses_bounce(delivery_id="d", address="a@example.com")),
    ):
        with pytest.raises(WebhookNotAllowed, match="HERALD_SNS_TOPIC_ARNS"):
            await parse_webhook("ses", url="", headers={}, body=body, config=config, now=NOW)


def test_sendgrid_key_may_be_pem(sendgrid: FakeSendGrid) -> None:
    der = base64.b64decode(sendgrid.public_key_base64)
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        + base64.encodebytes(der).decode()
        + "-----END PUBLIC KEY-----\n"
    )
    body, headers = sendgrid.signed_events([sendgrid.event(sent_mail())])
    assert parse_sendgrid(headers=headers, body=body, public_key=pem, now=NOW)
