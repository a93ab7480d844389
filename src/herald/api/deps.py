"""Request dependencies: the runtime, the caller's identity and what it may do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from herald.api.errors import ApiError
from herald.api.keycache import ApiKeyCache
from herald.runtime import Runtime
from herald.security import TokenInvalid, key_from_secret, secret_matches

# Which scope each rule needs; `admin` may do everything.
SCOPE_RULES = {
    "send": {"send"},
    "manage": {"manage"},
    "read": {"read", "manage", "send"},
    "admin": set(),
}


async def runtime(request: Request) -> Runtime:
    # async, though it awaits nothing: FastAPI runs a plain `def` dependency in a thread
    # pool, a thread hop on every request for an attribute read.
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str | None  # None for an inbox token
    scopes: frozenset[str]
    inbox_user: str | None = None
    expires_at: datetime | None = None  # an inbox token's expiry (streams end there)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(
            401, "unauthorized", "missing Authorization: Bearer <key>", headers=_challenge()
        )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(
            401, "unauthorized", "Authorization must be 'Bearer <key>'", headers=_challenge()
        )
    return value.strip()


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def api_keys(request: Request) -> ApiKeyCache:
    """The app's cache of API keys, made on first use (an app is made over a runtime
    before that runtime has started)."""
    state = request.app.state
    cache: ApiKeyCache | None = getattr(state, "api_keys", None)
    if cache is None:
        rt: Runtime = state.runtime
        cache = state.api_keys = ApiKeyCache(rt.storage.keys, rt.clock)
    return cache


async def _api_key_caller(request: Request, rt: Runtime, token: str) -> Caller:
    presented = key_from_secret(token)
    # A key id is generated ASCII: anything else (a NUL, which PostgreSQL cannot even
    # compare) is simply not a key.
    if presented is not None and not (presented.id.isascii() and presented.id.isalnum()):
        presented = None
    record = await api_keys(request).get(presented.id) if presented else None
    if (
        presented is None
        or record is None
        or not secret_matches(presented.secret_hash, record.secret_hash)
    ):
        raise ApiError(401, "unauthorized", "API key is not valid", headers=_challenge())
    if record.revoked_at is not None:
        raise ApiError(401, "unauthorized", "API key has been revoked", headers=_challenge())
    assert rt.limits is not None
    rt.limits.check_request(record.id)
    return Caller(record.id, frozenset(record.scopes))


def _check_scope(caller: Caller, rule: str) -> Caller:
    if "admin" not in caller.scopes and not (caller.scopes & SCOPE_RULES[rule]):
        raise ApiError(403, "forbidden", f"this key lacks the scope for this call ({rule})")
    return caller


async def _key_or_inbox_token(request: Request, rt: Runtime, rule: str) -> Caller:
    """An API key with `rule`, or that user's own inbox token (header or ?token=)."""
    user_id = request.path_params.get("user_id")
    header = request.headers.get("authorization")
    token = _bearer(request) if header is not None else request.query_params.get("token")
    if not token:
        raise ApiError(401, "unauthorized", "missing API key or inbox token", headers=_challenge())
    if token.startswith("hk_"):
        if header is None:
            # URLs end up in proxy and browser logs: ?token= takes inbox tokens only.
            raise ApiError(
                401,
                "unauthorized",
                "an API key goes in the Authorization header, not in ?token=",
                headers=_challenge(),
            )
        return _check_scope(await _api_key_caller(request, rt, token), rule)
    try:
        claims = rt.signer.verify("inbox", token, rt.clock.now())
    except TokenInvalid as error:
        raise ApiError(401, "unauthorized", str(error), headers=_challenge()) from None
    # A route without a user in its path (a delivery's engagement) checks `inbox_user`
    # against what it reads.
    if user_id is not None and claims["sub"] != user_id:
        raise ApiError(403, "forbidden", "this inbox token is for another user")
    return Caller(
        None, frozenset(), inbox_user=claims["sub"], expires_at=rt.signer.expires_at(claims)
    )


_CALLER = "herald.caller"
INBOX_RULE_PREFIX = "inbox-or-"


async def authenticate(request: Request, rule: str) -> Caller:
    """The caller under `rule`, checked once per request: the route class calls this
    before the body is read, the route's dependency then gets the same answer."""
    cached: Caller | None = request.scope.get(_CALLER)
    if cached is not None:
        return cached
    rt: Runtime = request.app.state.runtime
    if rule.startswith(INBOX_RULE_PREFIX):
        caller = await _key_or_inbox_token(request, rt, rule.removeprefix(INBOX_RULE_PREFIX))
    else:
        caller = _check_scope(await _api_key_caller(request, rt, _bearer(request)), rule)
    request.scope[_CALLER] = caller
    return caller


def require(rule: str) -> Any:
    """A dependency that admits API keys holding `rule`'s scope (or admin)."""
    SCOPE_RULES[rule]

    async def check(request: Request) -> Caller:
        return await authenticate(request, rule)

    check.scope_rule = rule  # type: ignore[attr-defined]
    return Depends(check)


def require_inbox_access(rule: str = "read") -> Any:
    """An API key with `rule`, or that user's own inbox token (header or ?token=)."""
    SCOPE_RULES[rule]
    full_rule = INBOX_RULE_PREFIX + rule

    async def check(request: Request) -> Caller:
        return await authenticate(request, full_rule)

    check.scope_rule = full_rule  # type: ignore[attr-defined]
    return Depends(check)


def public() -> Any:
    """Marks a route that needs no API key (it authenticates otherwise or is public)."""

    async def check() -> None:
        return None

    check.scope_rule = "public"  # type: ignore[attr-defined]
    return Depends(check)
