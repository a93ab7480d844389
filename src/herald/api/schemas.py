"""Request and response bodies, validated strictly: every field has a type, a size and a
message that says what is wrong."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import orjson
import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic import (
    Strict as StrictType,
)

from herald.domain import (
    Channel,
    DeliveryPolicy,
    Platform,
    Priority,
    QuietHoursAction,
    parse_wall_time,
)

MAX_TITLE = 256
MAX_BODY = 10_000
MAX_DATA_BYTES = 8_192
MAX_VARIABLES_BYTES = 32_768
MAX_TTL = 28 * 24 * 3600
MAX_BATCH = 1000
MAX_SHAPING_WINDOW = 7 * 24 * 3600

MAX_SCHEDULE_AHEAD = timedelta(days=366)
MAX_SCHEDULE_BEHIND = timedelta(days=366)

# Characters no identifier may hold: C0/C1 controls (NUL among them) and the invisible
# bidirectional controls (embeddings, overrides, isolates, marks) that make an id display
# as another ("Trojan Source").
_NOT_IN_IDENTIFIERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def check_identifier(value: str) -> str:
    found = _NOT_IN_IDENTIFIERS.search(value)
    if found:
        raise ValueError(
            f"must not contain control or bidirectional-formatting characters "
            f"(U+{ord(found.group()):04X} at position {found.start()})"
        )
    return value


Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")]
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(check_identifier)
]
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[^\s/?#]+$"),
    AfterValidator(check_identifier),
]

# The models are strict (no "60" for an int, no 1 or "yes" for a bool); enums and times
# are read from their JSON strings, which strict mode would refuse in the Python objects
# FastAPI validates.
ChannelIn = Annotated[Channel, StrictType(False)]
PlatformIn = Annotated[Platform, StrictType(False)]
PriorityIn = Annotated[Priority, StrictType(False)]
PolicyIn = Annotated[DeliveryPolicy, StrictType(False)]
QuietHoursActionIn = Annotated[QuietHoursAction, StrictType(False)]
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _date_time_text(value: Any) -> Any:
    if isinstance(value, str) and _DATE_TIME.match(value):
        return value
    raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-01-01T09:00:00Z")


DateTimeIn = Annotated[datetime, StrictType(False), BeforeValidator(_date_time_text)]


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def check_timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError(f"unknown time zone {value!r}: use an IANA name such as 'Europe/Berlin'")
    return value


def check_locale(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}", value):
        raise ValueError(f"locale {value!r} is not a language tag such as 'en' or 'pt-BR'")
    return value


def check_phone(value: str) -> str:
    if not value.startswith("+"):
        raise ValueError(
            f"phone {value!r} is not in E.164 form (+ and country code, e.g. +14155550100)"
        )
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as error:
        raise ValueError(f"phone {value!r} is not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"phone {value!r} is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def check_wall_time(value: str) -> str:
    parse_wall_time(value)
    return value


def json_size_at_most(limit: int) -> Any:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError as error:  # an integer over 64 bits, nesting too deep
            raise ValueError(f"cannot be stored as JSON: {error}") from None
        if size > limit:
            raise ValueError(f"is {size} bytes as JSON; at most {limit} are allowed")
        return value

    return AfterValidator(check)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)


# -- users and preferences -------------------------------------------------------------


class UserIn(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "phone": "+14155550100",
                    "timezone": "Europe/Berlin",
                    "locale": "en",
                }
            ]
        }
    )

    email: EmailStr | None = None
    phone: Annotated[str, AfterValidator(check_phone)] | None = None
    timezone: Annotated[str, AfterValidator(check_timezone)] = "UTC"
    locale: Annotated[str, AfterValidator(check_locale)] = "en"


class UserOut(BaseModel):
    id: str
    email: str | None
    phone: str | None
    timezone: str
    locale: str
    created_at: datetime
    updated_at: datetime


class QuietHoursIn(Strict):
    start: Annotated[str, AfterValidator(check_wall_time)]
    end: Annotated[str, AfterValidator(check_wall_time)]

    @model_validator(mode="after")
    def _distinct(self) -> QuietHoursIn:
        if self.start == self.end:
            raise ValueError("quiet_hours start and end must differ")
        return self


class PreferencesIn(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "channels": {"sms": False},
                    "categories": {"marketing": {"email": False}},
                    "quiet_hours": {"start": "22:00", "end": "07:00"},
                }
            ]
        }
    )

    channels: dict[ChannelIn, bool] = Field(default_factory=dict)
    categories: dict[Name, dict[ChannelIn, bool]] = Field(default_factory=dict, max_length=500)
    quiet_hours: QuietHoursIn | None = None


class PreferencesOut(BaseModel):
    channels: dict[str, bool]
    categories: dict[str, dict[str, bool]]
    quiet_hours: QuietHoursIn | None


# -- devices ------------------------------------------------------------------------------


class WebSubscriptionKeys(Strict):
    p256dh: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    auth: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class WebSubscription(Strict):
    endpoint: Annotated[str, StringConstraints(min_length=9, max_length=2048)]
    keys: WebSubscriptionKeys
    expirationTime: int | None = None


class DeviceIn(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"platform": "ios", "token": "ab" * 32}]}
    )

    platform: PlatformIn
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    subscription: WebSubscription | None = None

    @model_validator(mode="after")
    def _shape(self) -> DeviceIn:
        if self.platform == Platform.WEB:
            if self.subscription is None:
                raise ValueError(
                    "a web device needs 'subscription' {endpoint, keys: {p256dh, auth}}"
                )
            if self.token is not None:
                raise ValueError("a web device takes 'subscription', not 'token'")
        elif self.token is None:
            raise ValueError(f"an {self.platform.value} device needs 'token'")
        elif self.subscription is not None:
            raise ValueError("only web devices take 'subscription'")
        return self


class DeviceOut(BaseModel):
    id: str
    platform: str
    active: bool
    deactivated_reason: str | None = None
    created_at: datetime | None = None


# -- channel addresses (webhook, chat, WhatsApp) ---------------------------------------------

HttpsUrl = Annotated[str, StringConstraints(min_length=8, max_length=2048)]


class ChannelAddressIn(Strict):
    """One of: `url` (webhook endpoint; Slack, Teams or Discord incoming webhook), `channel`
    (a Slack channel id, with the deployment's bot token), `phone` (WhatsApp). `secret`
    (webhook only): your own Standard Webhooks secret; Herald makes one when absent."""

    url: HttpsUrl | None = None
    channel: Annotated[str, StringConstraints(pattern=r"^[CGD][A-Z0-9]{6,20}$")] | None = None
    phone: Annotated[str, AfterValidator(check_phone)] | None = None
    secret: Annotated[str, StringConstraints(min_length=10, max_length=200)] | None = None


class ChannelAddressOut(BaseModel):
    kind: str
    channel: str
    target: str  # a URL shows its scheme and host only: the rest is often the credential
    active: bool
    deactivated_reason: str | None = None
    secret: str | None = None  # only in the answer to PUT: the webhook signing secret
    created_at: datetime | None = None
    updated_at: datetime | None = None


# -- notifications -------------------------------------------------------------------------


HttpsImage = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https://\S+$")]


class PushActionIn(Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]
    title: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class PushIn(Strict):
    """Rich push, mapped per platform (FCM, APNs, Web Push): an image, action buttons, the
    app's action category, a thread (grouping), APNs' interruption level and relevance
    score, a badge count, a sound."""

    image: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https://\S+$")] | None = (
        None
    )
    actions: list[PushActionIn] | None = Field(default=None, min_length=1, max_length=3)
    action_category: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    thread_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    interruption_level: Literal["passive", "active", "time-sensitive", "critical"] | None = None
    relevance_score: Annotated[float, Field(ge=0, le=1)] | None = None
    badge: Annotated[int, Field(ge=0, le=99_999)] | None = None
    sound: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class NotificationContent(Strict):
    """What a notification says and how it travels, without its recipient."""

    category: Name = "default"
    priority: PriorityIn = Priority.NORMAL
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE)] | None = None
    body: Annotated[str, StringConstraints(max_length=MAX_BODY)] | None = None
    data: Annotated[dict[str, Any], json_size_at_most(MAX_DATA_BYTES)] = Field(default_factory=dict)
    channels: list[ChannelIn] | None = Field(default=None, min_length=1)
    ttl_seconds: int | None = Field(default=None, ge=1, le=MAX_TTL)
    send_at: DateTimeIn | None = None
    template: Name | None = None
    variables: Annotated[dict[str, Any], json_size_at_most(MAX_VARIABLES_BYTES)] = Field(
        default_factory=dict
    )
    collapse_key: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    deliver_at_local: Annotated[str, AfterValidator(check_wall_time)] | None = None
    push: PushIn | None = None

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("send_at needs a time zone offset, e.g. 2026-01-01T09:00:00Z")
        return value

    @field_validator("channels")
    @classmethod
    def _unique(cls, value: list[Channel] | None) -> list[Channel] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("channels are listed more than once")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> NotificationContent:
        if not (self.title or self.body or self.template or self.data):
            raise ValueError("a notification needs a title, a body, data or a template")
        return self


def schedule_problem(content: NotificationContent, now: datetime) -> tuple[str, str] | None:
    """(field, message) when the notification's time is outside what Herald schedules:
    `send_at` more than a year from now either way (a far-future time would overflow the
    time arithmetic of routing, quiet hours and local delivery times; a far-past one is a
    mistake). `ttl_seconds` is bounded by its type."""
    if content.send_at is None:
        return None
    ahead = content.send_at - now  # a timedelta: no datetime near the ends is made
    if ahead > MAX_SCHEDULE_AHEAD:
        return "send_at", f"is more than {MAX_SCHEDULE_AHEAD.days} days ahead"
    if -ahead > MAX_SCHEDULE_BEHIND:
        return "send_at", f"is more than {MAX_SCHEDULE_BEHIND.days} days in the past"
    return None


class NotificationIn(NotificationContent):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "42",
                    "category": "billing",
                    "title": "Payment received",
                    "body": "€12.00, thank you",
                }
            ]
        }
    )

    user_id: UserId


class BatchItemIn(NotificationIn):
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class BatchIn(Strict):
    notifications: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("notifications")
    @classmethod
    def _limit(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > MAX_BATCH:
            raise ValueError(f"a batch takes at most {MAX_BATCH} notifications, got {len(value)}")
        return value


MAX_BROADCAST_RECIPIENTS = 1_000_000


class BroadcastIn(Strict):
    topic: Name | None = None
    user_ids: list[UserId] | None = Field(
        default=None, min_length=1, max_length=MAX_BROADCAST_RECIPIENTS
    )
    notification: NotificationContent

    @model_validator(mode="after")
    def _one_audience(self) -> BroadcastIn:
        if (self.topic is None) == (self.user_ids is None):
            raise ValueError("a broadcast names either a 'topic' or a list of 'user_ids'")
        return self


class AcceptedOut(BaseModel):
    id: str
    status: Literal["accepted"] = "accepted"


class DeliveryOut(BaseModel):
    id: str
    channel: str
    provider: str | None
    target: str
    status: str
    attempts: int
    provider_message_id: str | None
    last_error: str | None
    due_at: datetime | None = None
    updated_at: datetime | None
    # What the recipient did: the first report of each kind.
    opened_at: datetime | None = None
    clicked_at: datetime | None = None
    read_at: datetime | None = None
    dismissed_at: datetime | None = None


class NotificationOut(BaseModel):
    id: str
    user_id: str
    category: str
    priority: str
    title: str | None
    body: str | None
    data: dict[str, Any]
    channels: list[str] | None
    ttl_seconds: int | None
    send_at: datetime | None
    template: str | None
    status: str
    created_at: datetime | None
    deliveries: list[DeliveryOut]
    workflow_run_id: str | None = None  # made by this workflow run's step
    workflow_step: str | None = None


class EventOut(BaseModel):
    delivery_id: str
    channel: str | None = None  # None: the delivery is gone (its user was deleted)
    status: str
    provider: str | None
    detail: dict[str, Any]
    at: datetime


# -- templates, categories, suppressions, keys ---------------------------------------------

TemplatePart = Annotated[str, StringConstraints(max_length=20_000)]


class TemplateIn(Strict):
    locales: dict[
        Annotated[str, AfterValidator(check_locale)], dict[ChannelIn, dict[Name, TemplatePart]]
    ] = Field(min_length=1, max_length=100)
    default_locale: Annotated[str, AfterValidator(check_locale)]
    # Whether the email's html goes into the deployment's layout (header, footer with the
    # unsubscribe and preference links). Unset: a fragment does, a whole <html> does not.
    email_layout: bool | None = None


WindowSeconds = Annotated[int, Field(ge=60, le=MAX_SHAPING_WINDOW)]


class DigestIn(Strict):
    """Fold a category's notifications on a channel into one delivery per window:
    `window_seconds` long, or daily until `at_local` in each user's time zone. `when`:
    always, or only for what goes over a frequency cap."""

    window_seconds: WindowSeconds | None = None
    at_local: Annotated[str, AfterValidator(check_wall_time)] | None = None
    template: Name | None = None
    when: Literal["always", "over_cap"] = "always"

    @model_validator(mode="after")
    def _one_window(self) -> DigestIn:
        if (self.window_seconds is None) == (self.at_local is None):
            raise ValueError("give exactly one of window_seconds and at_local")
        return self


class CapIn(Strict):
    """At most `limit` non-critical deliveries per user in each window of `window_seconds`."""

    limit: Annotated[int, Field(ge=1, le=10_000)]
    window_seconds: WindowSeconds


class TrackingIn(Strict):
    """Email engagement tracking for a category: an open pixel, click redirects."""

    opens: bool = True
    clicks: bool = True


class CategoryIn(Strict):
    quiet_hours: QuietHoursActionIn = QuietHoursAction.DEFER
    channels: list[ChannelIn] | None = None
    policy: dict[ChannelIn, PolicyIn] = Field(default_factory=dict)
    digest: dict[ChannelIn, DigestIn] = Field(default_factory=dict)
    caps: dict[ChannelIn, CapIn] = Field(default_factory=dict)
    tracking: TrackingIn = Field(default_factory=lambda: TrackingIn())


class SuppressionIn(Strict):
    channel: Literal["email", "sms"]
    address: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)] = "added by hand"


class KeyIn(Strict):
    scopes: list[Literal["admin", "send", "manage", "read"]] = Field(min_length=1)
    name: Annotated[str, StringConstraints(max_length=200)] | None = None


# -- workflows -----------------------------------------------------------------------------

MAX_TRIGGER_USERS = 1000


class WorkflowTriggerIn(Strict):
    user_id: UserId | None = None
    user_ids: list[UserId] | None = Field(default=None, min_length=1, max_length=MAX_TRIGGER_USERS)
    topic: Name | None = None  # every subscriber, fanned out in pages like a broadcast
    priority: PriorityIn = Priority.NORMAL
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE)] | None = None
    body: Annotated[str, StringConstraints(max_length=MAX_BODY)] | None = None
    data: Annotated[dict[str, Any], json_size_at_most(MAX_DATA_BYTES)] = Field(default_factory=dict)
    variables: Annotated[dict[str, Any], json_size_at_most(MAX_VARIABLES_BYTES)] = Field(
        default_factory=dict
    )
    cancellation_key: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None

    @model_validator(mode="after")
    def _one_audience(self) -> WorkflowTriggerIn:
        audiences = [self.user_id, self.user_ids, self.topic]
        if sum(audience is not None for audience in audiences) != 1:
            raise ValueError("a trigger names one of 'user_id', 'user_ids' or 'topic'")
        return self

    @property
    def recipients(self) -> list[str]:
        return list(dict.fromkeys(self.user_ids or [self.user_id or ""]))


class WorkflowCancelIn(Strict):
    cancellation_key: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    user_id: UserId | None = None


class EventIn(Strict):
    user_id: UserId
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    data: Annotated[dict[str, Any], json_size_at_most(MAX_DATA_BYTES)] = Field(default_factory=dict)
