"""WebPushProvider against FakeWebPush: the fake decrypts every payload with http_ece and the
browser-side keys it generated, so these tests check the encryption end to end."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import http_ece
import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.channels import Platform, Priority
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, Rejected, Retry
from herald.fakes.tls import LocalTls
from herald.fakes.webpush import FakeWebPush
from herald.providers.base import OutboundMessage
from herald.providers.webpush.client import VapidKey, WebPushProvider, encrypt_payload
from tests.providers.conftest import RICH_PUSH, b64url, push_message, write_file

SUBJECT = "mailto:ops@example.com"


@pytest.fixture
async def fake(local_tls: LocalTls, clock: FakeClock) -> AsyncIterator[FakeWebPush]:
    async with FakeWebPush(tls=local_tls, clock=clock) as server:
        yield server


@pytest.fixture
def vapid_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def provider(
    local_tls: LocalTls,
    clock: FakeClock,
    tmp_path: Path,
    vapid_private_key: ec.EllipticCurvePrivateKey,
) -> AsyncIterator[WebPushProvider]:
    pem = vapid_private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    settings = Settings(
        vapid_private_key=str(write_file(tmp_path, "vapid.pem", pem)),
        vapid_subject=SUBJECT,
        ca_file=local_tls.ca_file,
        allow_private_targets=True,  # the fake listens on 127.0.0.1
    )
    provider = WebPushProvider.from_settings(settings, clock)
    assert provider is not None
    yield provider
    await provider.close()


def web(subscription: dict[str, Any], **kwargs: Any) -> OutboundMessage:
    return push_message(
        subscription["endpoint"],
        platform=Platform.WEB,
        subscription=subscription,
        **kwargs,
    )


async def test_rich_push_fields_arrive_as_show_notification_options(
    fake: FakeWebPush, provider: WebPushProvider
) -> None:
    subscription = fake.subscribe(application_server_key=provider.key.public_key_b64)
    [outcome] = await provider.send([web(subscription, rich=RICH_PUSH)])

    assert isinstance(outcome, Accepted)
    shown = orjson.loads(fake.received[0].plaintext)
    assert shown["image"] == RICH_PUSH["image"]
    assert shown["actions"] == [
        {"action": "view", "title": "View"},
        {"action": "dismiss", "title": "Dismiss"},
    ]
    assert shown["tag"] == "order-42"
    assert shown["requireInteraction"] is True  # time-sensitive


def test_from_settings_needs_key_and_subject() -> None:
    assert WebPushProvider.from_settings(Settings(vapid_private_key=None)) is None
    assert (
        WebPushProvider.from_settings(Settings(vapid_private_key="x", vapid_subject=None)) is None
    )


def test_vapid_key_loads_raw_der_pem_text_and_pem_file(
    vapid_private_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    raw = vapid_private_key.private_numbers().private_value.to_bytes(32, "big")
    der = vapid_private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = vapid_private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    expected = VapidKey(vapid_private_key).public_key_b64
    for value in (b64url(raw), b64url(der), pem.decode(), str(write_file(tmp_path, "k.pem", pem))):
        assert VapidKey.load(value).public_key_b64 == expected
    with pytest.raises(ValueError, match="neither"):
        VapidKey.load("not a key!")


async def test_payload_is_encrypted_and_decrypted_by_the_fake(
    fake: FakeWebPush, provider: WebPushProvider, clock: FakeClock
) -> None:
    subscription = fake.subscribe(application_server_key=provider.key.public_key_b64)
    message = web(
        subscription,
        data={"url": "/orders/42", "n": 1},
        priority=Priority.HIGH,
        collapse_key="orders",
        ttl=900,
        clock=clock,
    )

    [outcome] = await provider.send([message])

    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert outcome.provider_message_id.startswith(f"{fake.base_url}/m/")
    [received] = fake.received
    assert orjson.loads(received.plaintext) == {
        "title": "Hello",
        "body": "World",
        "data": {"url": "/orders/42", "n": 1},
        "delivery_id": message.delivery_id,
    }
    assert (received.ttl, received.urgency, received.topic) == (900, "high", "orders")
    assert received.vapid_claims["aud"] == fake.base_url
    assert received.vapid_claims["sub"] == SUBJECT
    assert received.vapid_claims["exp"] <= clock.time() + 24 * 3600


@pytest.mark.parametrize(
    ("priority", "urgency"),
    [(Priority.CRITICAL, "high"), (Priority.NORMAL, "normal"), (Priority.LOW, "low")],
)
async def test_urgency_follows_priority(
    fake: FakeWebPush, provider: WebPushProvider, priority: Priority, urgency: str
) -> None:
    await provider.send([web(fake.subscribe(), priority=priority)])
    assert fake.received[0].urgency == urgency


async def test_long_collapse_key_becomes_a_32_char_topic(
    fake: FakeWebPush, provider: WebPushProvider
) -> None:
    subscription = fake.subscribe()
    await provider.send(
        [
            web(subscription, collapse_key="order:42/status"),
            web(subscription, collapse_key="order:42/status"),
        ]
    )
    topics = {r.topic for r in fake.received}
    assert len(topics) == 1
    assert len(topics.pop() or "") == 32


@dataclass(frozen=True)
class ErrorRow:
    status: int
    expected: type[Outcome]
    retry_after: float | None = None
    expected_after: float | None = None


WEBPUSH_TABLE = {
    "400 bad headers or crypto": ErrorRow(400, Rejected),
    "401 VAPID": ErrorRow(401, Rejected),
    "403 VAPID": ErrorRow(403, Rejected),
    "404 unknown subscription": ErrorRow(404, InvalidTarget),
    "410 gone": ErrorRow(410, InvalidTarget),
    "413 too large": ErrorRow(413, Rejected),
    "429 with Retry-After": ErrorRow(429, Retry, retry_after=120, expected_after=120),
    "429 without Retry-After": ErrorRow(429, Retry),
    "500": ErrorRow(500, Retry),
    "502": ErrorRow(502, Retry),
    "503 with Retry-After": ErrorRow(503, Retry, retry_after=3, expected_after=3),
}


@pytest.mark.parametrize("row", WEBPUSH_TABLE.values(), ids=WEBPUSH_TABLE.keys())
async def test_error_table(fake: FakeWebPush, provider: WebPushProvider, row: ErrorRow) -> None:
    failing, healthy = fake.subscribe(), fake.subscribe()
    fake.fail(failing["endpoint"], row.status, retry_after=row.retry_after)

    outcome, healthy_outcome = await provider.send([web(failing), web(healthy)])

    assert isinstance(outcome, row.expected), outcome
    if isinstance(outcome, Retry):
        assert outcome.after == row.expected_after
    assert isinstance(healthy_outcome, Accepted)


async def test_real_refusals_from_the_fake(fake: FakeWebPush, provider: WebPushProvider) -> None:
    gone = fake.subscribe()
    fake.unsubscribe(gone["endpoint"])
    unknown = {**fake.subscribe(), "endpoint": f"{fake.base_url}/wpush/v2/nobody"}
    other_key = fake.subscribe(
        application_server_key=VapidKey(ec.generate_private_key(ec.SECP256R1())).public_key_b64
    )

    outcomes = await provider.send([web(gone), web(unknown), web(other_key)])

    assert outcomes == [
        InvalidTarget("web push 410"),
        InvalidTarget("web push 404"),
        Rejected("web push 403: VAPID key refused for this subscription"),
    ]
    assert fake.received == []


async def test_vapid_token_is_reused_per_origin_then_renewed(
    fake: FakeWebPush, provider: WebPushProvider, clock: FakeClock
) -> None:
    subscription = fake.subscribe()
    await provider.send([web(subscription), web(subscription)])
    clock.advance(10 * 3600)
    await provider.send([web(subscription)])
    assert provider.vapid.issued == 1

    clock.advance(1.5 * 3600)  # within an hour of its 12 h expiry
    [outcome] = await provider.send([web(subscription)])

    assert isinstance(outcome, Accepted)
    assert provider.vapid.issued == 2


async def test_fan_out_to_many_subscriptions(fake: FakeWebPush, provider: WebPushProvider) -> None:
    subscriptions = [fake.subscribe() for _ in range(200)]
    fake.latency = 0.01

    outcomes = await provider.send([web(s) for s in subscriptions])

    assert all(isinstance(o, Accepted) for o in outcomes)
    assert len({r.subscription_id for r in fake.received}) == 200
    assert fake.peak_in_flight > 1


async def test_oversized_payload_is_rejected_without_a_request(
    fake: FakeWebPush, provider: WebPushProvider
) -> None:
    [outcome] = await provider.send([web(fake.subscribe(), data={"blob": "x" * 3993})])
    assert isinstance(outcome, Rejected)
    assert fake.requests == 0


async def test_malformed_subscription_is_invalid_target(provider: WebPushProvider) -> None:
    broken = {"endpoint": "https://push.example/x", "keys": {"p256dh": "short", "auth": "AAAA"}}
    [outcome] = await provider.send([web(broken)])
    assert isinstance(outcome, InvalidTarget)


async def test_network_error_is_retry(fake: FakeWebPush, provider: WebPushProvider) -> None:
    """An endpoint that does not answer is that endpoint's problem (a Retry), never the
    provider's (a circuit), and the reason stored says nothing about the port."""
    subscription = fake.subscribe()
    await fake.stop()
    [outcome] = await provider.send([web(subscription)])
    assert outcome == Retry("web push endpoint unreachable")


async def _raw_push(
    fake: FakeWebPush, tls: LocalTls, headers: dict[str, str], body: bytes
) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    async with httpx.AsyncClient(verify=context) as client:
        return await client.post(fake.subscribe()["endpoint"], headers=headers, content=body)


async def test_fake_requires_ttl_and_a_valid_vapid_token(
    fake: FakeWebPush,
    local_tls: LocalTls,
    clock: FakeClock,
    vapid_private_key: ec.EllipticCurvePrivateKey,
) -> None:
    key = VapidKey(vapid_private_key)

    def vapid(**claims: Any) -> str:
        claims = {"aud": fake.base_url, "exp": int(clock.time()) + 3600, "sub": SUBJECT} | claims
        return f"vapid t={jwt.encode(claims, vapid_private_key, 'ES256')}, k={key.public_key_b64}"

    base = {"Content-Encoding": "aes128gcm", "TTL": "60"}
    no_ttl = await _raw_push(
        fake, local_tls, {"Authorization": vapid(), "Content-Encoding": "aes128gcm"}, b"x"
    )
    wrong_aud = await _raw_push(
        fake, local_tls, {**base, "Authorization": vapid(aud="https://other.example")}, b"x"
    )
    too_long = await _raw_push(
        fake, local_tls, {**base, "Authorization": vapid(exp=int(clock.time()) + 25 * 3600)}, b"x"
    )
    not_encrypted = await _raw_push(
        fake, local_tls, {**base, "Authorization": vapid()}, b"plain text"
    )

    assert no_ttl.status_code == 400
    assert wrong_aud.status_code == 401
    assert too_long.status_code == 401
    assert not_encrypted.status_code == 400
    assert fake.received == []


def test_encryption_round_trips_with_http_ece() -> None:
    receiver = ec.generate_private_key(ec.SECP256R1())
    auth = b"0123456789abcdef"
    public = receiver.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    body = encrypt_payload(b"hello", public, auth)
    assert len(body) == 86 + len(b"hello") + 1 + 16  # header, plaintext, delimiter, tag
    assert (
        http_ece.decrypt(body, private_key=receiver, auth_secret=auth, version="aes128gcm")
        == b"hello"
    )
