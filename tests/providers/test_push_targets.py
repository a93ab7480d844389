"""Web Push endpoints are chosen by whoever registers a device: Herald connects only to
public https push services (SSRF), checked at registration and again at connect time, never
follows a redirect, and stores a fixed reason for a refused or unreachable endpoint."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.abc import AbstractResolver
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from herald.clock import FakeClock
from herald.domain.channels import Platform
from herald.domain.outcomes import InvalidTarget, Rejected
from herald.fakes.tls import LocalTls
from herald.fakes.webpush import FakeWebPush
from herald.providers.http_session import new_session, refused_target
from herald.providers.targets import REFUSED, TargetPolicy, address_problem
from herald.providers.webpush.client import VapidKey, WebPushProvider
from tests.fixtures.dns import ScriptedDns
from tests.providers.conftest import b64url, push_message

REFUSED_OUTCOME = InvalidTarget(f"web push {REFUSED}")

HOSTILE_ENDPOINTS = {
    "metadata service": "https://169.254.169.254/latest/meta-data/",
    "database port": "https://127.0.0.1:5432/",
    "private network": "https://10.0.0.1/push",
    "ipv6 loopback ssh": "https://[::1]:22/",
    "ipv4-mapped loopback": "https://[::ffff:127.0.0.1]/x",
    "unspecified": "https://0.0.0.0/x",
    "multicast": "https://224.0.0.1/x",
    "shared address space": "https://100.100.100.200/latest/meta-data",
    "ipv6 unique local": "https://[fd00:ec2::254]/x",
    "localhost name": "https://localhost:8080/x",
    "metadata name": "https://metadata.google.internal/computeMetadata/v1/",
    "userinfo": "https://user:secret@fcm.googleapis.com/fcm/send/abc",
    "userinfo only @": "https://@fcm.googleapis.com/fcm/send/abc",
    "plain http": "http://fcm.googleapis.com/fcm/send/abc",
}


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS.values(), ids=HOSTILE_ENDPOINTS.keys())
async def test_hostile_endpoints_are_refused_without_resolving(endpoint: str) -> None:
    policy = TargetPolicy()
    assert policy.url_problem(endpoint) is not None
    assert await policy.endpoint_problem(endpoint) is not None


async def test_a_public_push_service_is_allowed() -> None:
    for endpoint in (
        "https://fcm.googleapis.com/fcm/send/abc",
        "https://updates.push.services.mozilla.com/wpush/v2/abc",
        "https://[2001:4860:4860::8888]/x",
    ):
        assert TargetPolicy().url_problem(endpoint) is None


async def test_a_name_resolving_to_a_private_address_is_refused_at_registration() -> None:
    """Decimal notation: no IP literal to the URL parser, 127.0.0.1 to the resolver."""
    problem = await TargetPolicy().endpoint_problem("https://2130706433/x")
    assert problem is not None
    assert "loopback" in problem


BLOCKED = (
    *("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0"),
    *("::1", "fe80::1", "fd12::1", "::", "ff02::1", "2002:7f00:1::1", "64:ff9b::a00:1"),
)


@pytest.mark.parametrize("address", BLOCKED)
def test_every_blocked_range_is_recognised(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None
    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None


def test_allowed_hosts_restrict_endpoints_to_known_push_services() -> None:
    policy = TargetPolicy(allowed_hosts=("fcm.googleapis.com", "*.notify.windows.com"))
    assert policy.url_problem("https://fcm.googleapis.com/fcm/send/x") is None
    assert policy.url_problem("https://wns2-par02p.notify.windows.com/w/?token=x") is None
    assert policy.url_problem("https://notify.windows.com.evil.example/x") is not None
    assert policy.url_problem("https://push.evil.example/x") is not None


# --------------------------------------------------------------------------- the provider


@pytest.fixture
async def fake(local_tls: LocalTls, clock: FakeClock) -> AsyncIterator[FakeWebPush]:
    async with FakeWebPush(tls=local_tls, clock=clock) as server:
        yield server


def provider_for(
    local_tls: LocalTls,
    clock: FakeClock,
    policy: TargetPolicy,
    resolver: AbstractResolver | None = None,
) -> WebPushProvider:
    key = VapidKey(ec.generate_private_key(ec.SECP256R1()))
    return WebPushProvider(
        key,
        "mailto:ops@example.com",
        clock=clock,
        ca_file=local_tls.ca_file,
        targets=policy,
        resolver=resolver,
    )


def web(subscription: dict[str, Any]) -> Any:
    return push_message(subscription["endpoint"], platform=Platform.WEB, subscription=subscription)


async def test_loopback_endpoints_are_refused_alike_whether_the_port_is_open_or_closed(
    fake: FakeWebPush, local_tls: LocalTls, clock: FakeClock
) -> None:
    """Nothing is sent, and the outcome is the same fixed text for an open port (the fake)
    and a closed one: `last_error` cannot be used to scan ports."""
    open_port = fake.subscribe()
    closed_port = {**fake.subscribe(), "endpoint": "https://127.0.0.1:1/wpush/v2/x"}
    provider = provider_for(local_tls, clock, TargetPolicy())
    try:
        outcomes = await provider.send([web(open_port), web(closed_port)])
    finally:
        await provider.close()
    assert outcomes == [REFUSED_OUTCOME, REFUSED_OUTCOME]
    assert fake.requests == 0


async def test_a_name_that_rebinds_to_loopback_is_refused_at_connect_time(
    fake: FakeWebPush, local_tls: LocalTls, clock: FakeClock
) -> None:
    """The name passes every check that does not resolve it; at connect time it resolves
    to 127.0.0.1 (where the fake listens), and the connection is never made."""
    subscription = fake.subscribe()
    port = subscription["endpoint"].split(":")[2].split("/")[0]
    subscription["endpoint"] = subscription["endpoint"].replace(
        f"127.0.0.1:{port}", f"push.rebinding.example:{port}"
    )
    dns = ScriptedDns("127.0.0.1")
    policy = TargetPolicy()
    assert policy.url_problem(subscription["endpoint"]) is None
    provider = provider_for(local_tls, clock, policy, resolver=dns)
    try:
        [outcome] = await provider.send([web(subscription)])
    finally:
        await provider.close()
    assert outcome == REFUSED_OUTCOME
    assert dns.lookups == ["push.rebinding.example"]
    assert fake.requests == 0


async def test_the_guarded_pool_refuses_an_ip_literal_at_the_socket(
    fake: FakeWebPush, local_tls: LocalTls
) -> None:
    """aiohttp does not resolve an IP literal: the socket's own address is checked too."""
    session = new_session(
        connections=1, timeout_s=5, ca_file=str(local_tls.ca_file), targets=TargetPolicy()
    )
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as raised:
            await session.get(fake.subscribe()["endpoint"])
    finally:
        await session.close()
    assert refused_target(raised.value) is not None
    assert fake.requests == 0


@pytest.mark.parametrize("status", [303, 307, 308])
async def test_redirects_are_not_followed(
    fake: FakeWebPush, local_tls: LocalTls, clock: FakeClock, status: int
) -> None:
    hostile, elsewhere = fake.subscribe(), fake.subscribe()
    fake.redirect(hostile["endpoint"], status, elsewhere["endpoint"])
    provider = provider_for(local_tls, clock, TargetPolicy(allow_private=True))
    try:
        [outcome] = await provider.send([web(hostile)])
    finally:
        await provider.close()
    assert outcome == Rejected(f"web push {status}: redirects are not followed")
    assert fake.requests == 1  # the redirect's target was never asked


async def test_allowed_hosts_apply_at_send_time(
    fake: FakeWebPush, local_tls: LocalTls, clock: FakeClock
) -> None:
    policy = TargetPolicy(allow_private=True, allowed_hosts=("fcm.googleapis.com",))
    provider = provider_for(local_tls, clock, policy)
    try:
        [outcome] = await provider.send([web(fake.subscribe())])
    finally:
        await provider.close()
    assert outcome == REFUSED_OUTCOME
    assert fake.requests == 0


# --------------------------------------------------------------------------- registration


@pytest.fixture
def subscription_keys() -> dict[str, Any]:
    """Valid keys (a real P-256 point), so only the endpoint is at stake."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return {"keys": {"p256dh": b64url(point), "auth": b64url(secrets.token_bytes(16))}}


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1:5432/",
        "https://10.0.0.1/",
        "https://[::1]:22/",
        "https://user@push.example.net/x",
        "https://2130706433/x",
    ],
)
async def test_registration_refuses_hostile_endpoints_with_a_422(
    api: httpx.AsyncClient, subscription_keys: dict[str, Any], endpoint: str
) -> None:
    await api.put("/v1/users/mallory", json={})
    answer = await api.post(
        "/v1/users/mallory/devices",
        json={"platform": "web", "subscription": {**subscription_keys, "endpoint": endpoint}},
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_device"
    assert error["details"][0]["field"] == "subscription.endpoint"
    assert (await api.get("/v1/users/mallory/devices")).json()["items"] == []
