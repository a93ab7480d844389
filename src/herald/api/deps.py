"""Request dependencies: the runtime, the caller's identity and what it may do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from herald.api.errors import ApiError
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


async def _api_key_caller(rt: Runtime, token: str) -> Caller:
    presented = key_from_secret(token)
    record = await rt.store.get_api_key(presented.id) if presented else None
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


def require(rule: str) -> Any:
    """A dependency that admits API keys holding `rule`'s scope (or admin)."""
    allowed = SCOPE_RULES[rule]

    async def check(request: Request, rt: RuntimeDep) -> Caller:
        caller = await _api_key_caller(rt, _bearer(request))
        if "admin" not in caller.scopes and not (caller.scopes & allowed):
            raise ApiError(403, "forbidden", f"this key lacks the scope for this call ({rule})")
        return caller

    check.scope_rule = rule  # type: ignore[attr-defined]
    return Depends(check)


def require_inbox_access(rule: str = "read") -> Any:
    """An API key with `rule`, or that user's own inbox token (header or ?token=)."""
    allowed = SCOPE_RULES[rule]

    async def check(request: Request, user_id: str, rt: RuntimeDep) -> Caller:
        header = request.headers.get("authorization")
        token = _bearer(request) if header is not None else request.query_params.get("token")
        if not token:
            raise ApiError(
                401, "unauthorized", "missing API key or inbox token", headers=_challenge()
            )
        if token.startswith("hk_"):
            if header is None:
                # URLs end up in proxy and browser logs: ?token= takes inbox tokens only.
                raise ApiError(
                    401,
                    "unauthorized",
                    "an API key goes in the Authorization header, not in ?token=",
                    headers=_challenge(),
                )
            caller = await _api_key_caller(rt, token)
            if "admin" not in caller.scopes and not (caller.scopes & allowed):
                raise ApiError(403, "forbidden", f"this key lacks the scope for this call ({rule})")
            return caller
        try:
            claims = rt.signer.verify("inbox", token, rt.clock.now())
        except TokenInvalid as error:
            raise ApiError(401, "unauthorized", str(error), headers=_challenge()) from None
        if claims["sub"] != user_id:
            raise ApiError(403, "forbidden", "this inbox token is for another user")
        return Caller(
            None, frozenset(), inbox_user=user_id, expires_at=rt.signer.expires_at(claims)
        )

    check.scope_rule = f"inbox-or-{rule}"  # type: ignore[attr-defined]
    return Depends(check)


def public() -> Any:
    """Marks a route that needs no API key (it authenticates otherwise or is public)."""

    async def check() -> None:
        return None

    check.scope_rule = "public"  # type: ignore[attr-defined]
    return Depends(check)
