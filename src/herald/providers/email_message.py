"""The MIME message Herald sends by SMTP and by SES (Content.Raw), built with the stdlib:
always multipart/alternative, the text part and the HTML part (email_layout.py).

Message-ID is derived from the delivery id so that a bounce or a provider event quoting
it leads back to the delivery; SMTP returns no id of its own, so it is the provider id.
"""

from __future__ import annotations

import email.policy
import re
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from herald.providers.base import OutboundMessage
from herald.providers.email_layout import EmailBranding, compose_html

DEFAULT_BRANDING = EmailBranding()

MESSAGE_ID_DOMAIN = "herald"
DELIVERY_ID_HEADER = "X-Herald-Delivery-Id"

# 7bit transfer: text parts go out quoted-printable or base64 when not plain ASCII, so
# a relay without 8BITMIME takes them unchanged.
POLICY = email.policy.SMTP.clone(cte_type="7bit")

_MESSAGE_ID = re.compile(rf"<\s*([^<>@\s]+)@{re.escape(MESSAGE_ID_DOMAIN)}\s*>")


class InvalidEmail(ValueError):
    """The payload or the address cannot make a valid message (e.g. a newline in a header)."""


def message_id_for(delivery_id: str) -> str:
    return f"<{delivery_id}@{MESSAGE_ID_DOMAIN}>"


def delivery_id_from_message_id(value: str | None) -> str | None:
    """The delivery id inside a Message-ID Herald made, else None."""
    if not value:
        return None
    match = _MESSAGE_ID.search(value)
    return match.group(1) if match else None


def envelope_address(header_value: str) -> str:
    """The bare address of a From/To header value ("Herald <a@b>" -> "a@b")."""
    return parseaddr(header_value)[1]


def is_plausible_address(address: str) -> bool:
    """A local part, an @ and a domain, nothing that could smuggle another header."""
    if any(char.isspace() or char in '<>,;"' for char in address):
        return False
    local, at, domain = address.rpartition("@")
    return bool(local and at and domain)


def build_email(
    message: OutboundMessage,
    *,
    sender: str,
    now: datetime,
    branding: EmailBranding = DEFAULT_BRANDING,
) -> EmailMessage:
    """multipart/alternative: the text, then the HTML (email_layout.compose_html).

    Raises InvalidEmail for a payload that cannot be a message."""
    payload = message.payload
    try:
        mail = EmailMessage(policy=POLICY)
        mail["From"] = sender
        mail["To"] = message.target
        mail["Subject"] = str(payload.get("subject", ""))
        mail["Date"] = format_datetime(now)
        mail["Message-ID"] = message_id_for(message.delivery_id)
        mail[DELIVERY_ID_HEADER] = message.delivery_id
        unsubscribe_url = payload.get("unsubscribe_url")
        if unsubscribe_url:
            # RFC 8058 one-click: the URL takes a POST with this exact body.
            mail["List-Unsubscribe"] = f"<{unsubscribe_url}>"
            mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        mail.set_content(str(payload.get("text", "")))
        mail.add_alternative(compose_html(payload, branding), subtype="html")
    except (ValueError, TypeError) as exc:  # header injection, malformed address
        raise InvalidEmail(str(exc)) from exc
    return mail


def render(mail: EmailMessage) -> bytes:
    try:
        return mail.as_bytes(policy=POLICY)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidEmail(str(exc)) from exc
