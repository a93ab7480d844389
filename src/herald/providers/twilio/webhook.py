"""Twilio status callbacks and inbound STOP/START: X-Twilio-Signature, HMAC-SHA1."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from herald.providers.events import (
    WebhookEvent,
    WebhookKind,
    WebhookRejected,
    header,
)

TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
# Twilio's default opt-out and opt-in keywords (case-insensitive, whole message).
TWILIO_STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
TWILIO_START_WORDS = frozenset({"START", "YES", "UNSTOP"})
TWILIO_OPT_OUT_CODE = "21610"
TWILIO_DEAD_NUMBER_CODES = frozenset({"21211", "21614", "30005", "30006"})


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(token, url + name1 + value1 + ...)) with names sorted, as
    twilio-python's RequestValidator computes it (repeated values sorted, deduplicated)."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    text = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_port_variants(url: str) -> list[str]:
    """The URL as given, and with the default port added or removed: Twilio signs what it
    requested, and a proxy may show the port differently (twilio-python does the same)."""
    parts = urlsplit(url)
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    if default_port is None or parts.hostname is None:
        return [url]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port is None:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default_port}"))
    elif parts.port == default_port:
        other = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    else:
        return [url]
    return [url, other]


def verify_twilio(
    url: str, params: list[tuple[str, str]], signature: str | None, auth_token: str
) -> None:
    if not signature:
        raise WebhookRejected("missing X-Twilio-Signature")
    for candidate in _url_port_variants(url):
        expected = twilio_signature(auth_token, candidate, params)
        if hmac.compare_digest(expected.encode(), signature.encode()):
            return
    raise WebhookRejected("bad X-Twilio-Signature")


def parse_twilio(
    *,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    auth_token: str,
    account_sid: str | None = None,
) -> list[WebhookEvent]:
    """A Twilio status callback or inbound message, verified.

    `url` is the full URL Twilio requested (the public URL, path and query string).
    Twilio signs no timestamp, so a replay cannot be told from a retry by time; the events
    are idempotent facts and detail["idempotency_token"] (I-Twilio-Idempotency-Token)
    lets the caller drop repeats."""
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise WebhookRejected("body is not a UTF-8 form") from exc
    verify_twilio(url, params, header(headers, TWILIO_SIGNATURE_HEADER), auth_token)
    form = dict(params)
    if account_sid is not None and form.get("AccountSid") != account_sid:
        raise WebhookRejected("callback for another Twilio account")
    detail: dict[str, Any] = {
        "idempotency_token": header(headers, "I-Twilio-Idempotency-Token"),
        "account_sid": form.get("AccountSid"),
    }
    if _is_inbound_message(form):
        event = _twilio_inbound(form, detail)
    else:
        event = _twilio_status(form, detail)
    if event is None:
        return []
    return [dataclasses.replace(event, event_ids=_twilio_event_ids(form, detail))]


def _twilio_event_ids(form: Mapping[str, str], detail: Mapping[str, Any]) -> tuple[str, ...]:
    """The signed MessageSid with the status it reports (an inbound message's sid names that
    message alone), then the idempotency token, which Twilio keeps across its retries but
    does not sign: a replay with a fresh token still repeats the signed sid."""
    ids: list[str] = []
    sid = form.get("MessageSid") or form.get("SmsSid")
    if sid:
        status = form.get("MessageStatus") or form.get("SmsStatus") or "received"
        ids.append(f"{sid}:{status}")
    token = detail.get("idempotency_token")
    if token:
        ids.append(f"token:{token}")
    return tuple(ids)


def _is_inbound_message(form: Mapping[str, str]) -> bool:
    return "Body" in form and form.get("MessageStatus", "received") == "received"


def _twilio_inbound(form: Mapping[str, str], detail: dict[str, Any]) -> WebhookEvent | None:
    # With Advanced Opt-Out Twilio names the keyword class itself.
    kind = form.get("OptOutType", "").upper()
    word = " ".join(form.get("Body", "").split()).upper()
    if kind == "STOP" or (not kind and word in TWILIO_STOP_WORDS):
        event_kind: WebhookKind = "opt_out"
    elif kind == "START" or (not kind and word in TWILIO_START_WORDS):
        event_kind = "opt_in"
    else:
        return None  # ordinary replies are not delivery events
    return WebhookEvent(
        provider="twilio",
        provider_message_id=form.get("MessageSid"),
        delivery_id=None,
        kind=event_kind,
        address=form.get("From"),
        permanent=event_kind == "opt_out",
        detail={**detail, "keyword": word, "to": form.get("To")},
    )


def _twilio_status(form: Mapping[str, str], detail: dict[str, Any]) -> WebhookEvent | None:
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    error_code = form.get("ErrorCode") or None
    kind: WebhookKind
    permanent = False
    if status == "delivered":
        kind = "delivered"
    elif status == "read":
        kind = "opened"
    elif status in ("undelivered", "failed"):
        kind, permanent = _twilio_failure(error_code)
    else:
        return None  # queued, sending, sent, accepted...: nothing new for Herald
    return WebhookEvent(
        provider="twilio",
        provider_message_id=form.get("MessageSid") or form.get("SmsSid"),
        delivery_id=None,
        kind=kind,
        address=form.get("To"),
        permanent=permanent,
        detail={**detail, "status": status, "error_code": error_code},
    )


def _twilio_failure(error_code: str | None) -> tuple[WebhookKind, bool]:
    if error_code == TWILIO_OPT_OUT_CODE:
        return "opt_out", True
    if error_code in TWILIO_DEAD_NUMBER_CODES:
        return "bounced", True
    return "failed", False
