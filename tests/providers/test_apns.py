"""ApnsProvider against FakeApns over real HTTP/2 + TLS: success, every row of the APNs
error table, provider-token life cycle, stream limits, reconnection."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.channels import Platform, Priority
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.fakes.apns import APNS_REASONS, FakeApns
from herald.fakes.tls import LocalTls
from herald.providers.apns.client import ApnsProvider
from herald.providers.base import OutboundMessage
from herald.providers.push_http import DELIVERY_ID_KEY
from tests.providers.conftest import RICH_PUSH, apns_token, push_message, write_file

TOPIC = "com.example.herald"
TEAM = "TEAM123456"


@pytest.fixture
async def fake(local_tls: LocalTls, clock: FakeClock) -> AsyncIterator[FakeApns]:
    async with FakeApns(tls=local_tls, clock=clock) as server:
        yield server


def make_provider(
    fake: FakeApns, tls: LocalTls, clock: FakeClock, tmp_path: Path, *, team_id: str = TEAM
) -> ApnsProvider:
    key_id, pem = fake.create_signing_key(TEAM)
    settings = Settings(
        apns_key_file=write_file(tmp_path, "AuthKey.p8", pem),
        apns_key_id=key_id,
        apns_team_id=team_id,
        apns_topic=TOPIC,
        apns_base_url=fake.base_url,
        ca_file=tls.ca_file,
    )
    provider = ApnsProvider.from_settings(settings, clock)
    assert provider is not None
    return provider


@pytest.fixture
async def provider(
    fake: FakeApns, local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[ApnsProvider]:
    provider = make_provider(fake, local_tls, clock, tmp_path)
    yield provider
    await provider.close()


def ios(token: str | None = None, **kwargs: Any) -> OutboundMessage:
    return push_message(token or apns_token(), platform=Platform.IOS, **kwargs)


def test_from_settings_needs_every_credential(tmp_path: Path) -> None:
    key = write_file(tmp_path, "k.p8", b"unused")
    assert ApnsProvider.from_settings(Settings(apns_key_file=None)) is None
    assert ApnsProvider.from_settings(Settings(apns_key_file=key, apns_key_id="K")) is None


async def test_alert_success_headers_and_body(
    fake: FakeApns, provider: ApnsProvider, clock: FakeClock
) -> None:
    message = ios(data={"order": 42}, collapse_key="orders", ttl=600, clock=clock)

    [outcome] = await provider.send([message])

    assert outcome == Accepted(provider_message_id=message.delivery_id)
    [received] = fake.received
    assert received.device_token == message.target
    assert received.headers == {
        "apns-push-type": "alert",
        "apns-topic": TOPIC,
        "apns-priority": "10",
        "apns-expiration": str(int(clock.time()) + 600),
        "apns-collapse-id": "orders",
        "apns-id": message.delivery_id,
    }
    assert received.payload == {
        "aps": {"alert": {"title": "Hello", "body": "World"}},
        "order": 42,
        DELIVERY_ID_KEY: message.delivery_id,
    }
    assert fake.http_versions == {"2"}


async def test_rich_push_fields_arrive_in_aps(fake: FakeApns, provider: ApnsProvider) -> None:
    message = ios(data={"order": 42}, rich=RICH_PUSH)

    [outcome] = await provider.send([message])

    assert isinstance(outcome, Accepted)
    payload = fake.received[0].payload
    assert payload["aps"] == {
        "alert": {"title": "Hello", "body": "World"},
        "badge": 3,
        "sound": "chime.caf",
        "thread-id": "order-42",
        "category": "RECEIPT",
        "interruption-level": "time-sensitive",
        "relevance-score": 0.75,
        "mutable-content": 1,
    }
    assert payload["herald_image_url"] == RICH_PUSH["image"]
    assert payload["herald_actions"] == RICH_PUSH["actions"]


@pytest.mark.parametrize(
    ("title", "priority", "push_type", "apns_priority"),
    [
        (None, Priority.HIGH, "background", "5"),
        ("Hi", Priority.LOW, "alert", "5"),
        ("Hi", Priority.CRITICAL, "alert", "10"),
        ("Hi", Priority.NORMAL, "alert", "10"),
    ],
)
async def test_push_type_and_priority(
    fake: FakeApns,
    provider: ApnsProvider,
    title: str | None,
    priority: Priority,
    push_type: str,
    apns_priority: str,
) -> None:
    body = None if title is None else "text"
    [outcome] = await provider.send([ios(title=title, body=body, priority=priority)])
    assert isinstance(outcome, Accepted)
    headers = fake.received[0].headers
    assert (headers["apns-push-type"], headers["apns-priority"]) == (push_type, apns_priority)
    if title is None:
        assert fake.received[0].payload["aps"] == {"content-available": 1}


async def test_long_collapse_key_is_hashed_to_64_bytes(
    fake: FakeApns, provider: ApnsProvider
) -> None:
    [outcome] = await provider.send([ios(collapse_key="k" * 100)])
    assert isinstance(outcome, Accepted)
    assert len(fake.received[0].headers["apns-collapse-id"]) == 64


@dataclass(frozen=True)
class ErrorRow:
    reason: str
    expected: type[Outcome]
    times: int | None = None
    retry_after: float | None = None
    expected_after: float | None = None
    tokens_issued: int = 1
    connections_opened: int = 1


def _rows() -> dict[str, ErrorRow]:
    rows = {
        f"400 {r}": ErrorRow(r, InvalidTarget) for r in ("BadDeviceToken", "DeviceTokenNotForTopic")
    }
    for reason in (
        "BadCollapseId", "BadExpirationDate", "BadMessageId", "BadPriority", "BadTopic",
        "DuplicateHeaders", "InvalidPushType", "MissingTopic", "PayloadEmpty", "TopicDisallowed",
    ):  # fmt: skip
        rows[f"400 {reason}"] = ErrorRow(reason, Rejected)
    rows["400 IdleTimeout: reconnect and retry"] = ErrorRow(
        "IdleTimeout", Accepted, times=1, connections_opened=2
    )
    # Twice: the retry's connection is replaced too, and the next send opens a third.
    rows["400 IdleTimeout twice"] = ErrorRow("IdleTimeout", Retry, connections_opened=3)
    rows["403 ExpiredProviderToken: new token, retry once"] = ErrorRow(
        "ExpiredProviderToken", Accepted, times=1, tokens_issued=2
    )
    rows["403 ExpiredProviderToken twice"] = ErrorRow(
        "ExpiredProviderToken", ProviderDown, tokens_issued=2
    )
    for reason in (
        "InvalidProviderToken", "MissingProviderToken", "BadCertificate",
        "BadCertificateEnvironment", "Forbidden",
    ):  # fmt: skip
        rows[f"403 {reason}"] = ErrorRow(reason, ProviderDown)
    rows |= {f"410 {r}": ErrorRow(r, InvalidTarget) for r in ("Unregistered", "ExpiredToken")}
    rows["413 PayloadTooLarge"] = ErrorRow("PayloadTooLarge", Rejected)
    rows["429 TooManyRequests"] = ErrorRow(
        "TooManyRequests", Retry, retry_after=5, expected_after=5
    )
    rows["429 TooManyProviderTokenUpdates: keep the token, wait"] = ErrorRow(
        "TooManyProviderTokenUpdates", Retry, expected_after=60
    )
    for reason in ("InternalServerError", "ServiceUnavailable", "Shutdown"):
        rows[f"5xx {reason}: new connection"] = ErrorRow(reason, Retry, connections_opened=2)
    return rows


APNS_TABLE = _rows()


@pytest.mark.parametrize("row", APNS_TABLE.values(), ids=APNS_TABLE.keys())
async def test_error_table(fake: FakeApns, provider: ApnsProvider, row: ErrorRow) -> None:
    healthy = ios()
    assert isinstance((await provider.send([healthy]))[0], Accepted)
    failing = apns_token()
    fake.fail(failing, row.reason, times=row.times, retry_after=row.retry_after)

    [outcome] = await provider.send([ios(failing)])

    assert isinstance(outcome, row.expected), outcome
    if isinstance(outcome, Retry):
        assert outcome.after == row.expected_after
    assert provider.tokens.issued == row.tokens_issued
    after = await provider.send([ios()])
    assert isinstance(after[0], Accepted)  # the provider is still usable
    assert provider.connections.opened == row.connections_opened


async def test_apns_reason_table_is_complete() -> None:
    table_reasons = {row.reason for row in APNS_TABLE.values()}
    assert table_reasons == set(APNS_REASONS) - {"BadPath", "MethodNotAllowed"}


async def test_fake_checks_real_headers_and_tokens(fake: FakeApns, provider: ApnsProvider) -> None:
    [bad_token] = await provider.send([ios("not-hex")])
    assert isinstance(bad_token, InvalidTarget)
    assert "BadDeviceToken" in bad_token.reason

    provider.topic = "com.example.other"
    [wrong_topic] = await provider.send([ios()])
    assert wrong_topic == Rejected("apns 400 TopicDisallowed")


async def test_key_of_another_team_is_provider_down(
    fake: FakeApns, local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    provider = make_provider(fake, local_tls, clock, tmp_path, team_id="OTHERTEAM1")
    try:
        outcomes = await provider.send([ios(), ios()])
    finally:
        await provider.close()
    assert outcomes == [ProviderDown("apns 403 InvalidProviderToken")] * 2
    assert fake.received == []


async def test_provider_token_is_reused_then_rotated(
    fake: FakeApns, provider: ApnsProvider, clock: FakeClock
) -> None:
    await provider.send([ios()])
    clock.advance(30 * 60)
    await provider.send([ios()])
    assert len(fake.provider_tokens) == 1

    clock.advance(25 * 60)  # 55 minutes old: rotated before Apple calls it expired
    [outcome] = await provider.send([ios()])

    assert isinstance(outcome, Accepted)
    assert len(fake.provider_tokens) == 2
    claims = jwt.decode(fake.provider_tokens[1], options={"verify_signature": False})
    assert claims == {"iss": TEAM, "iat": int(clock.time())}


async def post_with_token(fake: FakeApns, local_tls: LocalTls, token: str) -> httpx.Response:
    """One alert to the fake over HTTP/2 with the given provider token, as a raw client."""
    async with httpx.AsyncClient(
        http2=True, verify=ssl.create_default_context(cafile=str(local_tls.ca_file))
    ) as client:
        return await client.post(
            f"{fake.base_url}/3/device/{apns_token()}",
            content=b'{"aps":{}}',
            headers={
                "authorization": f"bearer {token}",
                "apns-topic": TOPIC,
                "apns-push-type": "alert",
            },
        )


async def test_fake_refuses_a_token_older_than_an_hour(
    fake: FakeApns, local_tls: LocalTls, clock: FakeClock
) -> None:
    key_id, pem = fake.create_signing_key(TEAM)
    token = jwt.encode({"iss": TEAM, "iat": int(clock.time())}, pem, "ES256", {"kid": key_id})
    clock.advance(3601)
    response = await post_with_token(fake, local_tls, token)
    assert (response.status_code, response.json()) == (403, {"reason": "ExpiredProviderToken"})


async def test_fake_refuses_a_forged_signature(
    fake: FakeApns, local_tls: LocalTls, clock: FakeClock
) -> None:
    key_id, _ = fake.create_signing_key(TEAM)
    forged = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"iss": TEAM, "iat": int(clock.time())}, forged, "ES256", {"kid": key_id})
    response = await post_with_token(fake, local_tls, token)
    assert (response.status_code, response.json()) == (403, {"reason": "InvalidProviderToken"})


async def test_fan_out_follows_max_concurrent_streams(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    async with FakeApns(
        tls=local_tls, clock=clock, max_concurrent_streams=10, latency=0.02
    ) as fake:
        provider = make_provider(fake, local_tls, clock, tmp_path)
        try:
            messages = [ios() for _ in range(200)]
            outcomes = await provider.send(messages)
        finally:
            await provider.close()
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert sorted(r.device_token for r in fake.received) == sorted(m.target for m in messages)
    assert 1 < fake.peak_in_flight <= 10
    assert provider.connections.opened == 1


async def test_oversized_payload_is_rejected_without_a_request(
    fake: FakeApns, provider: ApnsProvider
) -> None:
    [outcome] = await provider.send([ios(data={"blob": "x" * 4096})])
    assert isinstance(outcome, Rejected)
    assert fake.requests == 0


async def test_reconnects_after_the_server_restarts(fake: FakeApns, provider: ApnsProvider) -> None:
    await provider.send([ios()])
    await fake.stop()
    [down] = await provider.send([ios()])
    assert isinstance(down, ProviderDown)
    assert "unreachable" in down.reason
    await fake.start()

    [outcome] = await provider.send([ios()])

    assert isinstance(outcome, Accepted)
    assert len(fake.received) == 2


async def test_timeout_is_provider_down(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    async with FakeApns(tls=local_tls, clock=clock) as fake:
        provider = make_provider(fake, local_tls, clock, tmp_path)
        provider.timeout = 0.2
        try:
            fake.latency = 1.0
            [outcome] = await provider.send([ios()])
        finally:
            await provider.close()
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


async def test_one_stream_at_a_time_until_a_request_authenticates(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    async with FakeApns(tls=local_tls, clock=clock, latency=0.02) as fake:
        refused = make_provider(fake, local_tls, clock, tmp_path, team_id="OTHERTEAM1")
        accepted = make_provider(fake, local_tls, clock, tmp_path)
        try:
            down = await refused.send([ios() for _ in range(5)])
            peak_while_refused = fake.peak_in_flight
            ok = await accepted.send([ios() for _ in range(50)])
        finally:
            await refused.close()
            await accepted.close()
    assert all(isinstance(o, ProviderDown) for o in down)
    assert peak_while_refused == 1
    assert all(isinstance(o, Accepted) for o in ok)
    assert fake.peak_in_flight > 1


async def test_fan_out_uses_the_servers_stream_limit_beyond_100(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    """libcurl caps streams per connection at 100 unless told otherwise; Apple allows 1000,
    and a worker's batch of 500 should not queue behind the client's own cap."""
    async with FakeApns(
        tls=local_tls, clock=clock, max_concurrent_streams=1000, latency=0.3
    ) as fake:
        provider = make_provider(fake, local_tls, clock, tmp_path)
        try:
            outcomes = await provider.send([ios() for _ in range(300)])
        finally:
            await provider.close()
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert fake.peak_in_flight > 100
    assert provider.connections.opened == 1
