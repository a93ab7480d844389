"""Shared fixtures for the push provider tests: a runtime CA, a fake clock, message builders."""

from __future__ import annotations

import base64
import secrets
import string
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from herald.clock import FakeClock
from herald.domain.channels import Channel, Platform, Priority
from herald.fakes.tls import LocalTls, generate_local_tls
from herald.providers.base import OutboundMessage

_TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"


@pytest.fixture(scope="session")
def local_tls(tmp_path_factory: pytest.TempPathFactory) -> LocalTls:
    return generate_local_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fcm_token() -> str:
    """The shape of a real registration token: an instance id, ':', then about 140 chars."""
    tail = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(140))
    return f"{secrets.token_urlsafe(16)[:22]}:APA91{tail}"


def apns_token() -> str:
    return secrets.token_hex(32)


def push_message(
    target: str,
    *,
    platform: Platform,
    title: str | None = "Hello",
    body: str | None = "World",
    data: dict[str, Any] | None = None,
    priority: Priority = Priority.NORMAL,
    collapse_key: str | None = None,
    ttl: float | None = None,
    clock: FakeClock | None = None,
    subscription: dict[str, Any] | None = None,
    rich: dict[str, Any] | None = None,
) -> OutboundMessage:
    payload: dict[str, Any] = {"data": data or {}}
    if rich is not None:
        payload["push"] = rich
    if title is not None:
        payload["title"] = title
    if body is not None:
        payload["body"] = body
    expires_at = None
    if ttl is not None:
        expires_at = (clock or FakeClock()).now() + timedelta(seconds=ttl)
    return OutboundMessage(
        delivery_id=str(uuid.uuid4()),
        notification_id=str(uuid.uuid4()),
        user_id="user-1",
        channel=Channel.PUSH,
        target=target,
        payload=payload,
        priority=priority,
        platform=platform,
        subscription=subscription,
        collapse_key=collapse_key,
        expires_at=expires_at,
    )


RICH_PUSH: dict[str, Any] = {
    "image": "https://cdn.example.com/receipt.png",
    "actions": [{"id": "view", "title": "View"}, {"id": "dismiss", "title": "Dismiss"}],
    "action_category": "RECEIPT",
    "thread_id": "order-42",
    "interruption_level": "time-sensitive",
    "relevance_score": 0.75,
    "badge": 3,
    "sound": "chime.caf",
}


def write_file(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- email and SMS helpers (tests/providers/test_{smtp,ses,sendgrid,twilio}.py) ---


def free_tcp_port() -> int:
    """A port free right now on 127.0.0.1 (for servers that cannot bind port 0)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def email_message(
    target: str = "alice@example.com",
    *,
    subject: str = "Your receipt",
    text: str = "Thanks for your payment.",
    html: str | None = None,
    unsubscribe_url: str | None = None,
    delivery_id: str | None = None,
) -> OutboundMessage:
    payload: dict[str, Any] = {"subject": subject, "text": text}
    if html is not None:
        payload["html"] = html
    if unsubscribe_url is not None:
        payload["unsubscribe_url"] = unsubscribe_url
    return OutboundMessage(
        delivery_id=delivery_id or str(uuid.uuid4()),
        notification_id=str(uuid.uuid4()),
        user_id="user-1",
        channel=Channel.EMAIL,
        target=target,
        payload=payload,
    )


def sms_message(
    target: str = "+14155552671",
    body: str = "Your code is 123456",
    *,
    ttl: float | None = None,
    clock: FakeClock | None = None,
) -> OutboundMessage:
    expires_at = None
    if ttl is not None:
        expires_at = (clock or FakeClock()).now() + timedelta(seconds=ttl)
    return OutboundMessage(
        delivery_id=str(uuid.uuid4()),
        notification_id=str(uuid.uuid4()),
        user_id="user-1",
        channel=Channel.SMS,
        target=target,
        payload={"body": body},
        expires_at=expires_at,
    )


# --- webhook, chat and WhatsApp helpers (tests/providers/test_{webhook,slack,...}.py) ---


def address_message(
    channel: Channel,
    target: str,
    *,
    title: str | None = "Payment received",
    body: str | None = "€12.00, thank you",
    data: dict[str, Any] | None = None,
    platform: str | None = None,
    address: dict[str, Any] | None = None,
) -> OutboundMessage:
    """A delivery to a channel address (webhook URL, chat service, WhatsApp number)."""
    payload: dict[str, Any] = {k: v for k, v in {"title": title, "body": body}.items() if v}
    if data:
        payload["data"] = data
    return OutboundMessage(
        delivery_id=str(uuid.uuid4()),
        notification_id=str(uuid.uuid4()),
        user_id="user-1",
        channel=channel,
        target=target,
        payload=payload,
        category="billing",
        platform=platform,
        address=address,
    )
