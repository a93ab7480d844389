"""API keys and signed tokens.

API keys look like `hk_<id>_<secret>`; only a SHA-256 of the secret is stored (the secret
is 256 random bits, so a slow hash adds nothing) and it is compared in constant time.
Inbox and unsubscribe tokens are short JWTs (HS256) signed with the deployment's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

SCOPES = ("admin", "send", "manage", "read")
KEY_PREFIX = "hk_"
MAX_EXP = 253402300800  # 10000-01-01T00:00:00Z: beyond it a datetime cannot hold the expiry


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    secret: str
    secret_hash: str

    @property
    def token(self) -> str:
        return f"{KEY_PREFIX}{self.id}_{self.secret}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, secret, hash_secret(secret))


def key_from_secret(token: str) -> NewKey | None:
    """Split a presented key into id and secret; None when it is not shaped like one."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 16 or not secret:
        return None
    return NewKey(key_id, secret, hash_secret(secret))


def secret_matches(presented_hash: str, stored_hash: str) -> bool:
    return hmac.compare_digest(presented_hash.encode(), stored_hash.encode())


class TokenInvalid(ValueError):
    pass


class Signer:
    """Signs and checks purpose-bound tokens (inbox access, one-click unsubscribe)."""

    algorithm = "HS256"

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def sign(self, purpose: str, subject: str, expires_at: datetime, **claims: Any) -> str:
        payload = {"pur": purpose, "sub": subject, "exp": int(expires_at.timestamp()), **claims}
        return jwt.encode(payload, self._secret, algorithm=self.algorithm)

    def verify(self, purpose: str, token: str, now: datetime) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                options={"require": ["exp", "sub", "pur"], "verify_exp": False},
            )
        except jwt.PyJWTError as error:
            raise TokenInvalid(f"token is not valid: {error}") from None
        expires = claims["exp"]
        # verify_exp is off (the deployment's clock decides, not the wall clock), so the
        # claim's type is checked here: a string or a bool `exp` is a malformed token.
        if (
            isinstance(expires, bool)
            or not isinstance(expires, int | float)
            or not 0 <= expires < MAX_EXP  # also refuses NaN and Infinity
        ):
            raise TokenInvalid("token is not valid: exp is not a number of seconds")
        if not isinstance(claims["sub"], str) or not isinstance(claims["pur"], str):
            raise TokenInvalid("token is not valid: sub and pur must be strings")
        if claims["pur"] != purpose:
            raise TokenInvalid("token is for another purpose")
        if expires < now.timestamp():
            raise TokenInvalid("token has expired")
        return claims

    @staticmethod
    def expires_at(claims: dict[str, Any]) -> datetime:
        """The expiry of claims `verify` accepted."""
        return datetime.fromtimestamp(float(claims["exp"]), UTC)

    def inbox_token(self, user_id: str, now: datetime, ttl: timedelta) -> tuple[str, datetime]:
        expires_at = now + ttl
        return self.sign("inbox", user_id, expires_at), expires_at
