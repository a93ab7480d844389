"""Response models of the routes that answered plain dicts: the OpenAPI document types each
success body with them (and FastAPI checks what a route returns against them). `extra`
is allowed, so a field a route adds is shown to clients, not dropped."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from herald.api.schemas import DeviceOut, EventOut

T = TypeVar("T")


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ListOut(Out, Generic[T]):
    """Every list: its items and the cursor of the next page (None on the last)."""

    items: list[T]
    next_cursor: str | None = None


class StatusOut(Out):
    status: str = Field(examples=["ok"])


class ReadinessOut(Out):
    status: str = Field(examples=["ready"])
    checks: dict[str, bool] = Field(examples=[{"database": True, "bus": True}])


class DigestOut(Out):
    id: str
    user_id: str = Field(examples=["42"])
    category: str = Field(examples=["social"])
    channel: str = Field(examples=["email"])
    window_start: datetime
    window_end: datetime
    template: str | None = None
    state: str = Field(examples=["open"])
    item_count: int = Field(examples=[4])
    notification_id: str | None = None
    created_at: datetime
    closed_at: datetime | None = None


class BatchItemOut(Out):
    index: int = Field(examples=[0])
    idempotency_key: str | None = Field(default=None, examples=["order-1001"])
    id: str | None = Field(default=None, examples=["0f6c7a0e-6f7b-4b44-9a8e-3b5d0d7f1c2a"])
    status: str = Field(examples=["accepted"])  # accepted | duplicate | rejected
    error: dict[str, Any] | None = None


class BatchOut(Out):
    items: list[BatchItemOut]
    accepted: int = Field(examples=[1])
    duplicate: int = Field(examples=[0])
    rejected: int = Field(examples=[0])


class CancelledOut(Out):
    id: str
    status: str = Field(default="cancelled", examples=["cancelled"])
    deliveries_cancelled: int = Field(examples=[2])


class SubscriptionOut(Out):
    user_id: str = Field(examples=["42"])
    topic: str = Field(examples=["release-notes"])


class TopicOut(Out):
    topic: str = Field(examples=["release-notes"])


class SubscriberOut(Out):
    user_id: str = Field(examples=["42"])


class BroadcastAcceptedOut(Out):
    id: str
    status: str = Field(examples=["accepted"])
    planned: int | None = Field(default=None, examples=[20000])


class BroadcastOut(Out):
    id: str
    topic: str | None = Field(examples=["release-notes"])
    state: str = Field(examples=["fanning_out"])
    planned: int | None = Field(examples=[20000])
    created_at: datetime
    recipients_created: int = Field(examples=[12000])
    routed: int = Field(examples=[11800])


class BroadcastCancelledOut(Out):
    id: str
    state: str = Field(examples=["cancelled"])
    deliveries_cancelled: int = Field(examples=[8000])


class InboxTokenOut(Out):
    token: str
    expires_at: datetime


class InboxItemOut(Out):
    id: str
    delivery_id: str
    notification_id: str
    category: str = Field(examples=["billing"])
    title: str | None = Field(examples=["Payment received"])
    body: str | None = Field(examples=["€12.00, thank you"])
    data: dict[str, Any] = Field(examples=[{"order": 1001}])
    read: bool
    read_at: datetime | None
    created_at: datetime
    sends: int = Field(examples=[1])


class InboxOut(ListOut[InboxItemOut]):
    unread_count: int = Field(examples=[3])


class MarkedOut(Out):
    marked: int = Field(examples=[3])


class TemplateOut(Out):
    name: str = Field(examples=["welcome"])
    locales: dict[str, dict[str, Any]] = Field(
        examples=[{"en": {"push": {"title": "Welcome, {{ name }}", "body": "Glad you are here"}}}]
    )
    default_locale: str = Field(examples=["en"])


class CategoryOut(Out):
    name: str = Field(examples=["marketing"])
    quiet_hours: str | None = Field(default=None, examples=["defer"])
    channels: list[str] | None = Field(default=None, examples=[["email", "in_app"]])
    policy: dict[str, str] = Field(default_factory=dict, examples=[{"sms": "at_most_once"}])


class CapOut(Out):
    channel: str = Field(examples=["push"])
    limit: int = Field(examples=[5])
    window_seconds: int = Field(examples=[3600])


class SuppressionOut(Out):
    id: str
    channel: str = Field(examples=["email"])
    address: str = Field(examples=["bounced@example.com"])
    reason: str = Field(examples=["bounce: permanent"])
    created_at: datetime


class CreatedKeyOut(Out):
    id: str = Field(examples=["7b1a6b046a3e1a91"])
    key: str = Field(description="the key itself, shown this once")
    scopes: list[str] = Field(examples=[["send"]])
    name: str | None = Field(examples=["checkout service"])
    created_at: datetime


class KeyOut(Out):
    id: str = Field(examples=["7b1a6b046a3e1a91"])
    scopes: list[str] = Field(examples=[["send"]])
    name: str | None = Field(examples=["checkout service"])
    created_at: datetime
    revoked: bool


class SandboxMessageOut(Out):
    id: str
    channel: str = Field(examples=["email"])
    provider: str = Field(examples=["sandbox"])
    user_id: str = Field(examples=["42"])
    delivery_id: str
    target: str = Field(examples=["ada@example.com"])
    payload: dict[str, Any]
    created_at: datetime
    sends: int = Field(examples=[1])


class UnsubscribedOut(Out):
    status: str = Field(examples=["unsubscribed"])
    category: str = Field(examples=["marketing"])
    channel: str = Field(examples=["email"])


class UnsubscribeLinkOut(Out):
    status: str = Field(examples=["confirm"])
    category: str = Field(examples=["marketing"])
    action: str = Field(examples=["POST this URL to unsubscribe"])


class WebhookOut(Out):
    received: int = Field(examples=[3])
    matched: int = Field(examples=[3])
    duplicates: int = Field(examples=[0])


DevicesOut = ListOut[DeviceOut]
EventsOut = ListOut[EventOut]


class EngagementOut(Out):
    delivery_id: str
    event: str = Field(examples=["opened"])
    first: bool = Field(description="false: this kind was already reported; nothing changed")


WORKFLOW_STEPS_EXAMPLE = [
    {"id": "push", "type": "send", "channels": ["push"]},
    {"id": "pause", "type": "delay", "seconds": 3600},
    {
        "id": "email",
        "type": "send",
        "channels": ["email"],
        "if": {"step": "push", "not": ["opened", "clicked"]},
    },
]


class WorkflowOut(Out):
    key: str = Field(examples=["order-shipped"])
    category: str = Field(examples=["orders"])
    steps: list[dict[str, Any]] = Field(examples=[WORKFLOW_STEPS_EXAMPLE])


class TriggeredOut(Out):
    """`id` for a trigger with `user_id`. For `user_ids`, `ids` (one run per user, in the
    list's order) and `trigger_id`; for a `topic`, `trigger_id` and the subscribers
    `planned`. Those runs are made as the fan-out pages through the users (each run can be
    read once its page is done; `GET /v1/broadcasts/{trigger_id}` shows the fan-out's
    `state`)."""

    id: str | None = Field(default=None, examples=["0f6c7a0e-6f7b-4b44-9a8e-3b5d0d7f1c2a"])
    ids: list[str] | None = None
    trigger_id: str | None = None
    planned: int | None = Field(default=None, examples=[20000])
    status: str = Field(examples=["accepted"])


class RunStepOut(Out):
    id: str = Field(examples=["push"])
    type: str = Field(examples=["send"])
    status: str = Field(examples=["done"])  # pending | waiting | done | skipped | cancelled
    notification_id: str | None = None
    at: datetime | None = None
    detail: dict[str, Any] | None = None


class WorkflowRunOut(Out):
    id: str
    workflow: str = Field(examples=["order-shipped"])
    user_id: str = Field(examples=["42"])
    status: str = Field(examples=["running"])
    cancellation_key: str | None = Field(examples=["order-1001"])
    waiting_for: str | None = Field(examples=[None])
    due_at: datetime | None
    created_at: datetime
    steps: list[RunStepOut]


class RunsCancelledOut(Out):
    cancelled: int = Field(examples=[1])


class EventAcceptedOut(Out):
    status: str = Field(examples=["accepted"])
    resumed: int = Field(examples=[1], description="runs that were waiting for this event")
