"""The webhook channel against a Standard Webhooks receiver: signatures a receiver's own
library verifies, each answer's outcome, and the target policy at send time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Rejected, Retry
from herald.fakes.tls import LocalTls
from herald.fakes.webhook import FakeWebhookReceiver
from herald.providers.base import OutboundMessage
from herald.providers.targets import TargetPolicy
from herald.providers.webhook import WebhookProvider, signing
from tests.fixtures.dns import ScriptedDns
from tests.providers.conftest import address_message, free_tcp_port


@pytest.fixture
async def receiver(local_tls: LocalTls) -> AsyncIterator[FakeWebhookReceiver]:
    async with FakeWebhookReceiver(tls=local_tls) as server:
        yield server


@pytest.fixture
async def provider(local_tls: LocalTls) -> AsyncIterator[WebhookProvider]:
    provider = WebhookProvider(targets=TargetPolicy(allow_private=True), ca_file=local_tls.ca_file)
    await provider.start()
    yield provider
    await provider.close()


def to(url: str, secret: str) -> OutboundMessage:
    return address_message(Channel.WEBHOOK, url, address={"secret": secret})


async def test_signed_post_verifies_with_the_standardwebhooks_library(
    receiver: FakeWebhookReceiver, provider: WebhookProvider
) -> None:
    url, secret = receiver.endpoint()
    message = address_message(
        Channel.WEBHOOK, url, data={"order": 1001}, address={"secret": secret}
    )
    [outcome] = await provider.send([message])
    assert outcome == Accepted()
    [received] = receiver.received
    verified = Webhook(secret).verify(received.body, received.headers)
    assert verified["type"] == "notification"
    assert verified["data"]["delivery_id"] == message.delivery_id
    assert verified["data"]["title"] == "Payment received"
    assert verified["data"]["data"] == {"order": 1001}
    assert received.headers["webhook-id"] == message.delivery_id
    with pytest.raises(WebhookVerificationError):  # another secret does not verify it
        Webhook(signing.new_secret()).verify(received.body, received.headers)
    tampered = orjson.dumps({**orjson.loads(received.body), "type": "other"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, received.headers)


def test_signature_matches_the_specification_example() -> None:
    # The example in the Standard Webhooks specification (spec/standard-webhooks.md).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [(410, InvalidTarget), (500, Retry), (503, Retry), (429, Retry), (400, Rejected)],
)
async def test_each_answer_maps_to_its_outcome(
    receiver: FakeWebhookReceiver, provider: WebhookProvider, status: int, kind: type
) -> None:
    url, secret = receiver.endpoint()
    receiver.answer(url, status, retry_after=7 if status == 429 else None)
    [outcome] = await provider.send([to(url, secret)])
    assert isinstance(outcome, kind)
    if status == 429:
        assert isinstance(outcome, Retry)
        assert outcome.after == 7


async def test_an_endpoint_that_does_not_answer_is_retried(provider: WebhookProvider) -> None:

    [outcome] = await provider.send(
        [to(f"https://127.0.0.1:{free_tcp_port()}/x", signing.new_secret())]
    )
    assert isinstance(outcome, Retry)


async def test_a_missing_secret_is_an_invalid_target(
    receiver: FakeWebhookReceiver, provider: WebhookProvider
) -> None:
    url, _ = receiver.endpoint()
    [outcome] = await provider.send([address_message(Channel.WEBHOOK, url, address={})])
    assert isinstance(outcome, InvalidTarget)
    assert receiver.requests == 0


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "169.254.169.254", "10.0.0.8"])
async def test_private_addresses_are_refused_at_send_time(
    receiver: FakeWebhookReceiver, local_tls: LocalTls, name: str
) -> None:
    provider = WebhookProvider(targets=TargetPolicy(), ca_file=local_tls.ca_file)
    url, secret = receiver.endpoint()
    try:
        [outcome] = await provider.send([to(url.replace("127.0.0.1", name), secret)])
    finally:
        await provider.close()
    assert isinstance(outcome, InvalidTarget)
    assert receiver.requests == 0


async def test_a_public_name_resolving_inside_is_refused(
    receiver: FakeWebhookReceiver, local_tls: LocalTls
) -> None:
    dns = ScriptedDns("127.0.0.1")
    provider = WebhookProvider(targets=TargetPolicy(), ca_file=local_tls.ca_file, resolver=dns)
    url, secret = receiver.endpoint()
    try:
        [outcome] = await provider.send(
            [to(url.replace("127.0.0.1", "hooks.customer.example"), secret)]
        )
    finally:
        await provider.close()
    assert isinstance(outcome, InvalidTarget)
    assert dns.lookups == ["hooks.customer.example"]
    assert receiver.requests == 0
