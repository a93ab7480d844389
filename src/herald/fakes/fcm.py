"""A protocol-faithful fake of FCM HTTP v1 and of Google's OAuth2 token endpoint.

The token endpoint verifies the service-account assertion (RS256 signature against the
registered public key, kid, iss, scope, aud, iat/exp) and issues access tokens that expire
after `access_token_lifetime` seconds of the fake's clock. The send endpoint checks the
bearer token, the body schema, string data values and the 4096-byte payload limit, and
answers with FCM's documented error bodies.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from herald.fakes.common import (
    FakeServer,
    Fault,
    Request,
    Response,
    json_response,
    retry_after_headers,
)
from herald.providers.fcm.payload import FCM_MAX_PAYLOAD_BYTES, validate_fcm_token

TOKEN_PATH = "/token"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# FCM v1 `messages.send` takes either scope (firebase-admin asks for cloud-platform).
FCM_SCOPES = frozenset({FCM_SCOPE, "https://www.googleapis.com/auth/cloud-platform"})
# The assertion's audience: Google takes its token endpoint's canonical URL (google-auth
# always sends it, whatever the key file's token_uri); Herald sends the token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_SEND_PATH_RE = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
_TTL_RE = re.compile(r"^\d+(\.\d{1,9})?s$")
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
)


@dataclass(frozen=True, slots=True)
class FcmErrorRow:
    http_status: int
    status: str
    error_code: str | None  # None: no FcmError detail (a plain Google API error)
    message: str


# The fault kinds a test may script for a device token (docs/providers.md, FCM table).
FCM_ERRORS: dict[str, FcmErrorRow] = {
    "INVALID_ARGUMENT": FcmErrorRow(
        400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."
    ),
    "INVALID_TOKEN": FcmErrorRow(
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "THIRD_PARTY_AUTH_ERROR": FcmErrorRow(
        401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service"
    ),
    "UNAUTHENTICATED": FcmErrorRow(
        401,
        "UNAUTHENTICATED",
        None,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    ),
    "SENDER_ID_MISMATCH": FcmErrorRow(
        403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"
    ),
    "UNREGISTERED": FcmErrorRow(
        404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."
    ),
    "QUOTA_EXCEEDED": FcmErrorRow(
        429,
        "RESOURCE_EXHAUSTED",
        "QUOTA_EXCEEDED",
        "Quota exceeded for quota metric 'Messages sent' of service fcm.googleapis.com.",
    ),
    "INTERNAL": FcmErrorRow(500, "INTERNAL", "INTERNAL", "Internal error encountered."),
    "UNAVAILABLE": FcmErrorRow(
        503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."
    ),
}


@dataclass(frozen=True, slots=True)
class _ServiceAccountKey:
    client_email: str
    public_key: rsa.RSAPublicKey


@dataclass(slots=True)
class _AccessToken:
    expires_at: float
    client_email: str


@dataclass(frozen=True, slots=True)
class FcmReceived:
    project_id: str
    access_token: str
    message: dict[str, Any]


@dataclass(slots=True)
class _Violation:
    field: str
    description: str
    about_token: bool = False


class FakeFcm(FakeServer):
    def __init__(
        self, *, project_id: str = "herald-test", access_token_lifetime: int = 3600, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.project_id = project_id
        self.access_token_lifetime = access_token_lifetime
        self.received: list[FcmReceived] = []
        self.token_requests = 0
        self._keys: dict[str, _ServiceAccountKey] = {}
        self._access_tokens: dict[str, _AccessToken] = {}

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}{TOKEN_PATH}"

    # --- set-up and scripting ----------------------------------------------------------

    def create_service_account(
        self, client_email: str = "herald@herald-test.iam.gserviceaccount.com"
    ) -> dict[str, Any]:
        """A service-account key file (as JSON-ready dict) that this fake trusts."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        self.trust_key(key_id, client_email, private_key.public_key())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": client_email,
            "client_id": str(secrets.randbelow(10**20)),
            "token_uri": self.token_uri,
        }

    def trust_key(self, key_id: str, client_email: str, public_key: rsa.RSAPublicKey) -> None:
        self._keys[key_id] = _ServiceAccountKey(client_email, public_key)

    def fail(
        self, token: str, kind: str, *, times: int | None = None, retry_after: float | None = None
    ) -> None:
        """Answer `kind` (a key of FCM_ERRORS) to sends for this device token."""
        if kind not in FCM_ERRORS:
            raise ValueError(f"unknown FCM fault {kind!r}")
        self.faults.add(token, Fault(kind, times, retry_after))

    def revoke_access_tokens(self) -> None:
        """Forget every issued access token, as if they had all expired server-side."""
        self._access_tokens.clear()

    # --- serving -----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        if request.path == TOKEN_PATH and request.method == "POST":
            return self._issue_token(request)
        match = _SEND_PATH_RE.match(request.path)
        if match and request.method == "POST":
            return self._send(match["project"], request)
        return fcm_error(FcmErrorRow(404, "NOT_FOUND", None, "Not found"))

    def unavailable(self) -> Response:
        return fcm_error(FCM_ERRORS["UNAVAILABLE"])

    def _issue_token(self, request: Request) -> Response:
        self.token_requests += 1
        form = request.form()
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        problem, client_email = self._check_assertion(form.get("assertion", ""))
        if problem:
            return _oauth_error("invalid_grant", problem)
        access_token = f"ya29.fake-{secrets.token_urlsafe(32)}"
        self._access_tokens[access_token] = _AccessToken(
            expires_at=self.clock.time() + self.access_token_lifetime, client_email=client_email
        )
        return json_response(
            200,
            {
                "access_token": access_token,
                "expires_in": self.access_token_lifetime,
                "token_type": "Bearer",
            },
        )

    def _check_assertion(self, assertion: str) -> tuple[str | None, str]:
        try:
            key_id = jwt.get_unverified_header(assertion).get("kid")
        except jwt.PyJWTError:
            return "Invalid JWT.", ""
        key = self._keys.get(str(key_id))
        if key is None:
            return "Invalid JWT Signature.", ""
        try:
            claims = jwt.decode(
                assertion,
                key.public_key,
                algorithms=["RS256"],
                audience=[self.token_uri, GOOGLE_TOKEN_AUDIENCE],
                # Time is checked below against the fake's clock, not the wall clock.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "aud", "iat", "exp", "scope"],
                },
            )
        except jwt.InvalidAudienceError:
            return "Invalid JWT: audience does not match the token endpoint.", ""
        except jwt.PyJWTError:
            return "Invalid JWT Signature.", ""
        return self._claims_problem(claims, key), key.client_email

    def _claims_problem(self, claims: dict[str, Any], key: _ServiceAccountKey) -> str | None:
        now = self.clock.time()
        if claims["iss"] != key.client_email:
            return "Invalid JWT: iss does not match the key."
        if not FCM_SCOPES & set(str(claims["scope"]).split()):
            return "Invalid JWT: scope lacks firebase.messaging or cloud-platform."
        iat, exp = float(claims["iat"]), float(claims["exp"])
        if exp - iat > 3600 or iat > now + 60 or exp <= now:
            return _SHORT_LIVED
        return None

    def _send(self, project_id: str, request: Request) -> Response:
        access_token = self._authenticate(request.header("authorization"))
        if access_token is None:
            return fcm_error(FCM_ERRORS["UNAUTHENTICATED"])
        if project_id != self.project_id:
            return fcm_error(FcmErrorRow(403, "PERMISSION_DENIED", None, "Permission denied."))
        try:
            document = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return fcm_error(
                FcmErrorRow(400, "INVALID_ARGUMENT", None, "Invalid JSON payload received.")
            )
        message = document.get("message") if isinstance(document, dict) else None
        if not isinstance(message, dict):
            return _invalid([_Violation("message", "Missing message")])
        violations = _violations(message)
        if violations:
            return _invalid(violations)
        fault = self.faults.take(str(message["token"]))
        if fault is not None:
            return fcm_error(FCM_ERRORS[fault.kind], retry_after_headers(fault))
        self.received.append(FcmReceived(project_id, access_token, message))
        return json_response(200, {"name": f"projects/{project_id}/messages/{uuid.uuid4().hex}"})

    def _authenticate(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        access_token = authorization.removeprefix("Bearer ")
        issued = self._access_tokens.get(access_token)
        if issued is None or issued.expires_at <= self.clock.time():
            return None
        return access_token


def _violations(message: dict[str, Any]) -> list[_Violation]:
    token = message.get("token")
    if not isinstance(token, str) or validate_fcm_token(token):
        return [
            _Violation(
                "message.token",
                "The registration token is not a valid FCM registration token",
                True,
            )
        ]
    problems = _data_violations(message.get("data"))
    problems += _notification_violations(message.get("notification"))
    problems += _android_violations(message.get("android"))
    if not problems:
        content = {k: message[k] for k in ("notification", "data") if k in message}
        if len(orjson.dumps(content)) > FCM_MAX_PAYLOAD_BYTES:
            problems.append(_Violation("message", "Message is too big"))  # wording unconfirmed
    return problems


def _data_violations(data: Any) -> list[_Violation]:
    if data is None:
        return []
    if not isinstance(data, dict):
        return [_Violation("message.data", "data must be a map of strings")]
    return [
        _Violation(f"message.data[{key}]", "Invalid value: data values must be strings")
        for key, value in data.items()
        if not isinstance(value, str)
    ]


def _notification_violations(notification: Any) -> list[_Violation]:
    if notification is None:
        return []
    if not isinstance(notification, dict) or not set(notification) <= {"title", "body", "image"}:
        return [_Violation("message.notification", "Unknown name in notification")]
    return []


def _android_violations(android: Any) -> list[_Violation]:
    if android is None:
        return []
    if not isinstance(android, dict):
        return [_Violation("message.android", "android must be an object")]
    problems = []
    ttl = android.get("ttl")
    if ttl is not None and not (isinstance(ttl, str) and _TTL_RE.match(ttl)):
        problems.append(_Violation("message.android.ttl", "Invalid duration"))
    if android.get("priority", "normal") not in {"normal", "high", "NORMAL", "HIGH"}:
        problems.append(_Violation("message.android.priority", "Invalid enum value"))
    return problems + _android_notification_violations(android.get("notification"))


# AndroidNotification members Herald may send, and their JSON types (FCM v1 reference).
_ANDROID_NOTIFICATION = {
    "tag": str,
    "click_action": str,
    "sound": str,
    "notification_count": int,
    "image": str,
    "channel_id": str,
}


def _android_notification_violations(notification: Any) -> list[_Violation]:
    if notification is None:
        return []
    if not isinstance(notification, dict):
        return [_Violation("message.android.notification", "must be an object")]
    return [
        _Violation(f"message.android.notification.{key}", "Unknown name or invalid value")
        for key, value in notification.items()
        if key not in _ANDROID_NOTIFICATION or not isinstance(value, _ANDROID_NOTIFICATION[key])
    ]


def _invalid(violations: list[_Violation]) -> Response:
    about_token = any(v.about_token for v in violations)
    row = FCM_ERRORS["INVALID_TOKEN"] if about_token else FCM_ERRORS["INVALID_ARGUMENT"]
    field_violations = [{"field": v.field, "description": v.description} for v in violations]
    return fcm_error(
        row, extra_details=[{"@type": _BAD_REQUEST_TYPE, "fieldViolations": field_violations}]
    )


def fcm_error(
    row: FcmErrorRow,
    headers: tuple[tuple[str, str], ...] = (),
    extra_details: list[dict[str, Any]] | None = None,
) -> Response:
    details: list[dict[str, Any]] = []
    if row.error_code is not None:
        details.append({"@type": _FCM_ERROR_TYPE, "errorCode": row.error_code})
    details += extra_details or []
    error: dict[str, Any] = {"code": row.http_status, "message": row.message, "status": row.status}
    if details:
        error["details"] = details
    return json_response(row.http_status, {"error": error}, headers)


def _oauth_error(error: str, description: str) -> Response:
    return json_response(400, {"error": error, "error_description": description})
