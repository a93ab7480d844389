"""Console sessions: signing in with an API key gives an HttpOnly, SameSite=Strict cookie
(Secure when the page is served over HTTPS) holding a signed, expiring token that names the
key, never the key itself. Every request checks the key again (a revoked key ends its
sessions at once) and every form carries a CSRF token bound to the session."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs

from fastapi import Request, Response

from herald.runtime import Runtime
from herald.security import TokenInvalid, key_from_secret, secret_matches

COOKIE = "herald_console"
SIGN_IN_COOKIE = "herald_sign_in"
SESSION_TTL = timedelta(hours=8)
FORM_LIMIT = 64 * 1024
# Who may act (replay, cancel, suppress) and who may only look.
ACTING_SCOPES = frozenset({"manage", "admin"})
VIEWING_SCOPES = frozenset({"read", "send", "manage", "admin"})


class SignInRequired(Exception):
    """No valid session: the console sends the browser to the sign-in page."""


class Forbidden(Exception):
    """The console refuses: a page says why (403, or 400 for input it cannot use)."""

    status = 403

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(Forbidden):
    status = 400


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    key_name: str | None
    scopes: frozenset[str]
    session_id: str
    csrf: str

    @property
    def can_act(self) -> bool:
        return bool(self.scopes & ACTING_SCOPES)


async def key_record(rt: Runtime, token: str) -> tuple[str, str | None, frozenset[str]] | None:
    """The (id, name, scopes) of a valid, unrevoked API key, or None."""
    presented = key_from_secret(token.strip())
    if presented is None or not (presented.id.isascii() and presented.id.isalnum()):
        return None
    record = await rt.storage.keys.get_api_key(presented.id)
    if record is None or record.revoked_at is not None:
        return None
    if not secret_matches(presented.secret_hash, record.secret_hash):
        return None
    return record.id, record.name, frozenset(record.scopes)


def csrf_token(rt: Runtime, bound_to: str) -> str:
    return rt.signer.sign("csrf", bound_to, rt.clock.now() + SESSION_TTL)


def csrf_matches(rt: Runtime, token: str | None, bound_to: str) -> bool:
    if not token:
        return False
    try:
        claims = rt.signer.verify("csrf", token, rt.clock.now())
    except TokenInvalid:
        return False
    return secrets.compare_digest(str(claims["sub"]), bound_to)


async def current_session(rt: Runtime, request: Request) -> Session:
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired
    try:
        claims = rt.signer.verify("console", token, rt.clock.now())
    except TokenInvalid:
        raise SignInRequired from None
    record = await rt.storage.keys.get_api_key(str(claims["sub"]))
    if record is None or record.revoked_at is not None:
        raise SignInRequired
    session_id = str(claims.get("sid", ""))
    scopes = frozenset(record.scopes)
    if not scopes & VIEWING_SCOPES:
        raise Forbidden("this key may not read")
    return Session(record.id, record.name, scopes, session_id, csrf_token(rt, session_id))


def start_session(rt: Runtime, request: Request, response: Response, key_id: str) -> None:
    expires = rt.clock.now() + SESSION_TTL
    token = rt.signer.sign("console", key_id, expires, sid=secrets.token_urlsafe(16))
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(SESSION_TTL.total_seconds()),
        path="/console",
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/console")


def end_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")


def sign_in_nonce(request: Request) -> str:
    """The sign-in form's CSRF binding (the browser has no session yet): a random value in
    a cookie of its own that the form's token must name."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(16)


def remember_sign_in_nonce(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE,
        nonce,
        max_age=3600,
        path="/console",
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


async def form_fields(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (what the console's forms post)."""
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise Forbidden("the form is too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}
