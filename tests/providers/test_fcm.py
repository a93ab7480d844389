"""FcmProvider against FakeFcm: success, every row of the FCM error table, token life cycle,
fan-out, network failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from herald.clock import FakeClock
from herald.config import Settings
from herald.domain.channels import Platform, Priority
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.fakes.fcm import JWT_BEARER_GRANT, FakeFcm
from herald.fakes.tls import LocalTls
from herald.providers.base import OutboundMessage
from herald.providers.fcm.client import FcmProvider, ServiceAccount
from herald.providers.push_http import DELIVERY_ID_KEY, client_ssl_context
from tests.providers.conftest import RICH_PUSH, fcm_token, push_message, write_file


@pytest.fixture
async def fake(local_tls: LocalTls, clock: FakeClock) -> AsyncIterator[FakeFcm]:
    async with FakeFcm(tls=local_tls, clock=clock) as server:
        yield server


def make_provider(
    fake: FakeFcm, tls: LocalTls, clock: FakeClock, tmp_path: Path, **info_overrides: str
) -> FcmProvider:
    info = {**fake.create_service_account(), **info_overrides}
    settings = Settings(
        fcm_credentials=write_file(tmp_path, "sa.json", json.dumps(info)),
        fcm_base_url=fake.base_url,
        ca_file=tls.ca_file,
    )
    provider = FcmProvider.from_settings(settings, clock)
    assert provider is not None
    return provider


@pytest.fixture
async def provider(
    fake: FakeFcm, local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[FcmProvider]:
    provider = make_provider(fake, local_tls, clock, tmp_path)
    yield provider
    await provider.close()


def android(token: str, **kwargs: Any) -> OutboundMessage:
    return push_message(token, platform=Platform.ANDROID, **kwargs)


def test_from_settings_without_credentials_is_none() -> None:
    assert FcmProvider.from_settings(Settings(fcm_credentials=None)) is None


async def test_success_sends_the_documented_body(
    fake: FakeFcm, provider: FcmProvider, clock: FakeClock
) -> None:
    message = push_message(
        fcm_token(),
        platform=Platform.ANDROID,
        data={"order": 42, "flag": True, "nested": {"a": 1}, "text": "hi"},
        priority=Priority.HIGH,
        collapse_key="orders",
        ttl=600,
        clock=clock,
    )
    [outcome] = await provider.send([message])

    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is not None
    assert outcome.provider_message_id.startswith("projects/herald-test/messages/")
    [received] = fake.received
    sent = received.message
    assert sent["token"] == message.target
    assert sent["notification"] == {"title": "Hello", "body": "World"}
    assert sent["data"] == {
        "order": "42",
        "flag": "true",
        "nested": '{"a":1}',
        "text": "hi",
        DELIVERY_ID_KEY: message.delivery_id,
    }
    assert sent["android"] == {"ttl": "600s", "priority": "high", "collapse_key": "orders"}


async def test_rich_push_fields_arrive_where_fcm_takes_them(
    fake: FakeFcm, provider: FcmProvider
) -> None:
    message = push_message(fcm_token(), platform=Platform.ANDROID, rich=RICH_PUSH)
    [outcome] = await provider.send([message])

    assert isinstance(outcome, Accepted)
    sent = fake.received[0].message
    assert sent["notification"]["image"] == RICH_PUSH["image"]
    assert sent["android"]["notification"] == {
        "tag": "order-42",
        "click_action": "RECEIPT",
        "notification_count": 3,
        "sound": "chime.caf",
    }
    assert orjson.loads(sent["data"]["herald_actions"]) == RICH_PUSH["actions"]


async def test_data_only_message_has_no_notification(fake: FakeFcm, provider: FcmProvider) -> None:
    message = push_message(fcm_token(), platform=Platform.ANDROID, title=None, body=None)
    [outcome] = await provider.send([message])
    assert isinstance(outcome, Accepted)
    assert "notification" not in fake.received[0].message
    assert fake.received[0].message["android"]["priority"] == "normal"


@dataclass(frozen=True)
class ErrorRow:
    kind: str
    expected: type[Outcome]
    times: int | None = None
    retry_after: float | None = None
    expected_after: float | None = None
    token_requests: int = 1


FCM_TABLE = {
    "400 INVALID_ARGUMENT about the body": ErrorRow("INVALID_ARGUMENT", Rejected),
    "400 INVALID_ARGUMENT about the token": ErrorRow("INVALID_TOKEN", InvalidTarget),
    "401 THIRD_PARTY_AUTH_ERROR": ErrorRow("THIRD_PARTY_AUTH_ERROR", ProviderDown),
    "401 UNAUTHENTICATED once: refresh and retry": ErrorRow(
        "UNAUTHENTICATED", Accepted, times=1, token_requests=2
    ),
    "401 UNAUTHENTICATED after a refresh": ErrorRow(
        "UNAUTHENTICATED", ProviderDown, token_requests=2
    ),
    "403 SENDER_ID_MISMATCH": ErrorRow("SENDER_ID_MISMATCH", InvalidTarget),
    "404 UNREGISTERED": ErrorRow("UNREGISTERED", InvalidTarget),
    "429 QUOTA_EXCEEDED with Retry-After": ErrorRow(
        "QUOTA_EXCEEDED", Retry, retry_after=30, expected_after=30
    ),
    "429 QUOTA_EXCEEDED without Retry-After": ErrorRow("QUOTA_EXCEEDED", Retry, expected_after=60),
    "500 INTERNAL": ErrorRow("INTERNAL", Retry),
    "503 UNAVAILABLE with Retry-After": ErrorRow(
        "UNAVAILABLE", Retry, retry_after=7, expected_after=7
    ),
}


@pytest.mark.parametrize("row", FCM_TABLE.values(), ids=FCM_TABLE.keys())
async def test_error_table(fake: FakeFcm, provider: FcmProvider, row: ErrorRow) -> None:
    failing, healthy = fcm_token(), fcm_token()
    fake.fail(failing, row.kind, times=row.times, retry_after=row.retry_after)

    outcome, healthy_outcome = await provider.send([android(failing), android(healthy)])

    assert isinstance(outcome, row.expected), outcome
    if isinstance(outcome, Retry):
        assert outcome.after == row.expected_after
    assert isinstance(healthy_outcome, Accepted)
    assert fake.token_requests == row.token_requests


async def test_access_token_is_cached_and_refreshed_before_expiry(
    fake: FakeFcm, provider: FcmProvider, clock: FakeClock
) -> None:
    await provider.send([android(fcm_token())])
    clock.advance(3000)  # 600 s left: still beyond the refresh margin
    await provider.send([android(fcm_token())])
    assert fake.token_requests == 1

    clock.advance(400)  # 200 s left: refresh before sending
    outcomes = await provider.send([android(fcm_token())])

    assert isinstance(outcomes[0], Accepted)
    assert fake.token_requests == 2
    assert len({r.access_token for r in fake.received}) == 2
    assert fake.requests == 3 + 2  # three sends, two token requests: no 401 on the way


async def test_revoked_access_token_refreshes_once_for_a_whole_batch(
    fake: FakeFcm, provider: FcmProvider
) -> None:
    await provider.send([android(fcm_token())])
    fake.revoke_access_tokens()

    outcomes = await provider.send([android(fcm_token()) for _ in range(20)])

    assert all(isinstance(o, Accepted) for o in outcomes)
    assert fake.token_requests == 2


async def test_expired_access_token_per_fake_clock_is_refreshed(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    # The server's token lives 60 s: shorter than our refresh margin, so the provider
    # refreshes before every send rather than riding a token into a 401.
    async with FakeFcm(tls=local_tls, clock=clock, access_token_lifetime=60) as fake:
        provider = make_provider(fake, local_tls, clock, tmp_path)
        try:
            await provider.send([android(fcm_token())])
            clock.advance(61)
            [outcome] = await provider.send([android(fcm_token())])
        finally:
            await provider.close()
    assert isinstance(outcome, Accepted)
    assert fake.token_requests == 2


async def test_assertion_claims_follow_the_key_file(
    fake: FakeFcm, provider: FcmProvider, clock: FakeClock
) -> None:
    assertion = provider.account.assertion(clock.time())
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert header == {"alg": "RS256", "typ": "JWT", "kid": provider.account.private_key_id}
    assert claims["iss"] == provider.account.client_email
    assert claims["aud"] == fake.token_uri
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert claims["exp"] - claims["iat"] == 3600


async def test_wrong_service_account_key_is_provider_down(
    fake: FakeFcm, local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = stranger.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    provider = make_provider(fake, local_tls, clock, tmp_path, private_key=pem)
    try:
        outcomes = await provider.send([android(fcm_token()), android(fcm_token())])
    finally:
        await provider.close()
    assert all(isinstance(o, ProviderDown) for o in outcomes)
    down = outcomes[0]
    assert isinstance(down, ProviderDown)
    assert "Invalid JWT Signature" in down.reason
    assert fake.received == []
    assert fake.token_requests == 1  # the second message shared the first one's failure


async def test_token_uri_from_the_key_file_is_honoured(
    fake: FakeFcm, local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    provider = make_provider(
        fake, local_tls, clock, tmp_path, token_uri=f"{fake.base_url}/elsewhere"
    )
    try:
        [outcome] = await provider.send([android(fcm_token())])
    finally:
        await provider.close()
    # The fake serves its token endpoint at /token only: the request went to the key
    # file's token_uri and was refused there.
    assert isinstance(outcome, ProviderDown)
    assert fake.token_requests == 0


async def test_fan_out_reaches_the_fake_once_per_device(
    fake: FakeFcm, provider: FcmProvider
) -> None:
    tokens = [fcm_token() for _ in range(200)]
    fake.latency = 0.02  # long enough for requests to overlap at the fake

    outcomes = await provider.send([android(t) for t in tokens])

    assert all(isinstance(o, Accepted) for o in outcomes)
    assert sorted(r.message["token"] for r in fake.received) == sorted(tokens)
    assert fake.token_requests == 1
    assert 10 < fake.peak_in_flight <= 50  # concurrent, bounded by max_connections


async def test_injected_failures_become_retries(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    async with FakeFcm(tls=local_tls, clock=clock, fail_fraction=0.3, seed=7) as fake:
        provider = make_provider(fake, local_tls, clock, tmp_path)
        try:
            fake.fail_fraction = 0.0  # let the token request through
            await provider.tokens.get(provider._ensure_session())
            fake.fail_fraction = 0.3
            outcomes = await provider.send([android(fcm_token()) for _ in range(100)])
        finally:
            await provider.close()
    retries = [o for o in outcomes if isinstance(o, Retry)]
    accepted = [o for o in outcomes if isinstance(o, Accepted)]
    assert len(retries) + len(accepted) == 100
    assert 10 < len(retries) < 50
    assert len(accepted) == len(fake.received)


async def test_oversized_payload_is_rejected_without_a_request(
    fake: FakeFcm, provider: FcmProvider
) -> None:
    message = push_message(fcm_token(), platform=Platform.ANDROID, data={"blob": "x" * 4096})
    [outcome] = await provider.send([message])
    assert isinstance(outcome, Rejected)
    assert fake.requests == 0


async def test_network_error_is_provider_down(fake: FakeFcm, provider: FcmProvider) -> None:
    await provider.send([android(fcm_token())])
    await fake.stop()
    [outcome] = await provider.send([android(fcm_token())])
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


async def test_timeout_is_provider_down(
    local_tls: LocalTls, clock: FakeClock, tmp_path: Path
) -> None:
    async with FakeFcm(tls=local_tls, clock=clock) as fake:
        info = fake.create_service_account()
        provider = FcmProvider(
            ServiceAccount.from_info(info),
            base_url=fake.base_url,
            clock=clock,
            ca_file=local_tls.ca_file,
            timeout=0.2,
        )
        try:
            await provider.tokens.get(provider._ensure_session())
            fake.latency = 1.0
            [outcome] = await provider.send([android(fcm_token())])
        finally:
            await provider.close()
    assert isinstance(outcome, ProviderDown)
    assert "unreachable" in outcome.reason


SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@pytest.mark.parametrize(
    ("scope", "audience", "granted"),
    [
        (SCOPE, None, True),
        # firebase-admin (google-auth): cloud-platform, which FCM v1 accepts as well, and
        # Google's canonical token URL as the audience, whatever the key file's token_uri.
        (
            "https://www.googleapis.com/auth/cloud-platform "
            "https://www.googleapis.com/auth/userinfo.email",
            "https://oauth2.googleapis.com/token",
            True,
        ),
        ("https://www.googleapis.com/auth/userinfo.email", None, False),
        (SCOPE, "https://elsewhere.example/token", False),
    ],
)
async def test_token_endpoint_grants_either_fcm_scope_and_audience(
    fake: FakeFcm,
    local_tls: LocalTls,
    clock: FakeClock,
    scope: str,
    audience: str | None,
    granted: bool,
) -> None:
    info = fake.create_service_account()
    now = int(clock.time())
    assertion = jwt.encode(
        {
            "iss": info["client_email"],
            "aud": audience or fake.token_uri,
            "scope": scope,
            "iat": now,
            "exp": now + 3600,
        },
        info["private_key"],
        algorithm="RS256",
        headers={"kid": info["private_key_id"]},
    )
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(local_tls.ca_file))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(fake.token_uri, data=form) as answer,
    ):
        body = await answer.json()
    assert (answer.status == 200) is granted, body
    assert ("access_token" in body) is granted
    if not granted:
        assert body["error"] == "invalid_grant"
