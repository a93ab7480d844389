"""FCM HTTP v1: one `messages:send` request per device token, many in flight at once.

Transport: pyreqwest (http_session.CurlSession) over HTTP/1.1 with up to 50 kept-alive
connections. `herald bench-clients` (docs/benchmarks.md, "Provider HTTP clients") measured
the client CPU per request of every candidate against the benchmark sink; pyreqwest over
HTTP/1.1 was the cheapest that installs here, HTTP/2 to the same sink cost it more, and
FCM accepts both.

Auth: an OAuth2 access token obtained with a service-account JWT assertion (RS256), cached
and refreshed a few minutes before it expires; a 401 without an FcmError refreshes it once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from herald.clock import SYSTEM_CLOCK, Clock
from herald.config import Settings
from herald.domain.channels import Channel
from herald.domain.outcomes import Accepted, InvalidTarget, Outcome, ProviderDown, Rejected, Retry
from herald.providers.base import OutboundMessage
from herald.providers.fcm.payload import FCM_MAX_PAYLOAD_BYTES, fcm_content, fcm_message
from herald.providers.http_session import (
    NETWORK_ERRORS,
    CurlSession,
    PooledProvider,
    unreachable,
)
from herald.providers.push_http import HIGH_PRIORITIES, json_bytes, parse_retry_after

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
# Refresh this long before the access token expires, so no request races its expiry.
REFRESH_MARGIN = 300.0
FAILURE_HOLD = 5.0  # seconds a failed token refresh answers for the requests queued behind it
QUOTA_DEFAULT_BACKOFF = 60.0  # docs/providers.md: without Retry-After, back off at least a minute
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    project_id: str
    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey
    token_uri: str

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Self:
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("service-account private_key is not an RSA key")
        return cls(
            project_id=info["project_id"],
            client_email=info["client_email"],
            private_key_id=info["private_key_id"],
            private_key=key,
            token_uri=info.get("token_uri") or "https://oauth2.googleapis.com/token",
        )

    @classmethod
    def from_file(cls, path: Path) -> Self:
        return cls.from_info(json.loads(path.read_text()))

    def assertion(self, now: float) -> str:
        issued_at = int(now)
        claims = {
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME,
        }
        return jwt.encode(
            claims, self.private_key, algorithm="RS256", headers={"kid": self.private_key_id}
        )


class _OutcomeError(Exception):
    """Raised inside the client to end one message's attempt with `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class AccessTokens:
    """The cached OAuth2 access token: one refresh at a time, shared by all requests."""

    def __init__(self, account: ServiceAccount, clock: Clock) -> None:
        self._account = account
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._margin = REFRESH_MARGIN
        self._failure: Outcome | None = None
        self._failed_at = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0

    async def get(self, session: CurlSession) -> str:
        if self._is_fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._is_fresh():
                self._raise_recent_failure()
                await self._refresh(session)
            assert self._token is not None
            return self._token

    def _raise_recent_failure(self) -> None:
        """Requests queued behind a failed refresh share its outcome instead of each asking
        the token endpoint again (a bad key would otherwise cost one request per message)."""
        if self._failure is not None and self._clock.time() - self._failed_at < FAILURE_HOLD:
            raise _OutcomeError(self._failure)

    def discard(self, stale: str) -> None:
        """Forget `stale` if it is still the cached token (a 401 said it no longer works)."""
        if self._token == stale:
            self._token = None

    def _is_fresh(self) -> bool:
        return self._token is not None and self._clock.time() < self._expires_at - self._margin

    async def _refresh(self, session: CurlSession) -> None:
        now = self._clock.time()
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self._account.assertion(now)}
        try:
            response = await session.post_form(
                self._account.token_uri, form, read_headers=("retry-after",)
            )
            body = response.body
            if response.status != 200:
                outcome = _token_failure(response.status, body, response.headers, now)
                raise _OutcomeError(outcome)
            answer = orjson.loads(body)
            token, lifetime = str(answer["access_token"]), float(answer.get("expires_in", 3600))
        except _OutcomeError as error:
            self._remember_failure(error.outcome, now)
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            outcome = ProviderDown(f"oauth2 token endpoint sent an unreadable answer: {error}")
            self._remember_failure(outcome, now)
            raise _OutcomeError(outcome) from error
        self._failure = None
        self._token = token
        self._expires_at = now + lifetime
        # A server handing out short-lived tokens must not make every request refresh.
        self._margin = min(REFRESH_MARGIN, lifetime / 2)
        self.refreshes += 1

    def _remember_failure(self, outcome: Outcome, now: float) -> None:
        self._failure, self._failed_at = outcome, now


def _token_failure(status: int, body: bytes, headers: dict[str, str], now: float) -> Outcome:
    if status == 429 or status >= 500:
        return Retry(
            f"oauth2 token endpoint {status}", parse_retry_after(headers.get("retry-after"), now)
        )
    # 400 invalid_grant / 401 invalid_client: the service account key is wrong or revoked.
    return ProviderDown(f"oauth2 token refused ({status}): {body[:200].decode('utf-8', 'replace')}")


class FcmProvider(PooledProvider[CurlSession]):
    name = "fcm"
    channel = Channel.PUSH
    batch_size = 500
    default_rate_per_s = 10_000.0  # the default per-project quota: 600,000 a minute

    def __init__(
        self,
        account: ServiceAccount,
        *,
        base_url: str = "https://fcm.googleapis.com",
        clock: Clock = SYSTEM_CLOCK,
        ca_file: Path | None = None,
        max_connections: int = 50,
        timeout: float = 10.0,
    ) -> None:
        self.account = account
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._ca_file = ca_file
        self._max_connections = max_connections
        self._timeout = timeout
        self._send_url = f"{self.base_url}/v1/projects/{account.project_id}/messages:send"
        self._in_flight = asyncio.Semaphore(max_connections)
        self.tokens = AccessTokens(account, clock)
        self._session: CurlSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Self | None:
        if settings.fcm_credentials is None:
            return None
        return cls(
            ServiceAccount.from_file(settings.fcm_credentials),
            base_url=settings.fcm_base_url,
            clock=clock,
            ca_file=settings.ca_file,
        )

    def describe(self) -> str:
        return f"fcm project={self.account.project_id} base={self.base_url}"

    def _new_session(self) -> CurlSession:
        return CurlSession(
            connections=self._max_connections,
            timeout_s=self._timeout,
            ca_file=self._ca_file,
            keepalive_s=60,
        )

    async def _send_one(self, session: CurlSession, message: OutboundMessage) -> Outcome:
        body = self._body(message)
        if isinstance(body, Rejected):
            return body
        async with self._in_flight:
            try:
                return await self._post_with_refresh(session, body)
            except _OutcomeError as error:
                return error.outcome
            except NETWORK_ERRORS as error:  # the send or the token endpoint: fcm is down
                return unreachable("fcm", error)

    def _body(self, message: OutboundMessage) -> bytes | Rejected:
        payload = message.payload
        title, text, data = payload.get("title"), payload.get("body"), payload.get("data")
        rich = payload.get("push")
        size = len(json_bytes(fcm_content(title, text, data, message.delivery_id, rich)))
        if size > FCM_MAX_PAYLOAD_BYTES:
            return Rejected(f"fcm payload is {size - FCM_MAX_PAYLOAD_BYTES} bytes over 4096")
        document = fcm_message(
            message.target,
            title,
            text,
            data,
            delivery_id=message.delivery_id,
            ttl_seconds=message.ttl_seconds(self.clock.now()),
            collapse_key=message.collapse_key,
            high_priority=message.priority in HIGH_PRIORITIES,
            rich=rich,
        )
        return json_bytes(document)

    async def _post_with_refresh(self, session: CurlSession, body: bytes) -> Outcome:
        token = await self.tokens.get(session)
        status, headers, answer = await self._post(session, body, token)
        if _is_stale_access_token(status, answer):
            self.tokens.discard(token)
            token = await self.tokens.get(session)
            status, headers, answer = await self._post(session, body, token)
            if _is_stale_access_token(status, answer):
                return ProviderDown("fcm refused a freshly issued access token (401)")
        return classify_fcm_response(status, answer, headers.get("retry-after"), self.clock.time())

    async def _post(
        self, session: CurlSession, body: bytes, token: str
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        response = await session.post(self._send_url, headers, body, read_headers=("retry-after",))
        return response.status, response.headers, _json_object(response.body)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def fcm_error_code(answer: dict[str, Any]) -> str | None:
    """The FCM errorCode, which lives only in the FcmError entry of `error.details`."""
    for detail in _details(answer):
        if detail.get("@type") == _FCM_ERROR_TYPE:
            return str(detail.get("errorCode"))
    return None


def _details(answer: dict[str, Any]) -> list[dict[str, Any]]:
    error = answer.get("error")
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _is_stale_access_token(status: int, answer: dict[str, Any]) -> bool:
    return status == 401 and fcm_error_code(answer) is None


def _is_about_token(answer: dict[str, Any]) -> bool:
    for detail in _details(answer):
        if detail.get("@type") == _BAD_REQUEST_TYPE:
            violations = detail.get("fieldViolations") or []
            if any(v.get("field") == "message.token" for v in violations if isinstance(v, dict)):
                return True
    error = answer.get("error")
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    return "registration token" in message.lower()


def _error_message(status: int, answer: dict[str, Any]) -> str:
    error = answer.get("error")
    text = str(error.get("message", "")) if isinstance(error, dict) else ""
    code = fcm_error_code(answer) or (error.get("status") if isinstance(error, dict) else None)
    return f"fcm {status} {code}: {text}".strip()


def classify_fcm_response(
    status: int, answer: dict[str, Any], retry_after: str | None, now: float
) -> Outcome:
    """Map one `messages:send` answer onto an outcome (docs/providers.md, FCM table)."""
    if status == 200:
        return Accepted(provider_message_id=answer.get("name"))
    code = fcm_error_code(answer)
    reason = _error_message(status, answer)
    after = parse_retry_after(retry_after, now)
    if code == "UNREGISTERED" or code == "SENDER_ID_MISMATCH":
        return InvalidTarget(reason)
    if code == "THIRD_PARTY_AUTH_ERROR":
        return ProviderDown(reason)
    if status == 400:
        return InvalidTarget(reason) if _is_about_token(answer) else Rejected(reason)
    if status == 429:
        return Retry(reason, after if after is not None else QUOTA_DEFAULT_BACKOFF)
    if status >= 500:
        return Retry(reason, after)
    # 401/403/404 without a known FcmError: the project, URL or credentials are misconfigured.
    if status in (401, 403, 404):
        return ProviderDown(reason)
    return Rejected(reason)
