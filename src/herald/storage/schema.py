"""Table definitions (SQLAlchemy Core). The migrations create these; the store queries them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from herald.domain.deliveries import UNSENT_STATES, DeliveryState
from herald.storage.guards import LEASE_EXPIRED_REQUEUE, RELEASE_DUE, state_in


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite has no time zone type)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Id = sa.String(64)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("scopes", Json, nullable=False),
    sa.Column("name", sa.String(200)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
)

settings_kv = sa.Table(
    "settings_kv",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("email", sa.String(320)),
    sa.Column("phone", sa.String(32)),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("locale", sa.String(35), nullable=False),
    sa.Column("preferences", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("platform", sa.String(16), nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("subscription", Json),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("deactivated_reason", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("platform", "token_hash", name="uq_devices_platform_token"),
)

# A user's webhook, chat and WhatsApp addresses (one per kind), as devices are for push.
channel_addresses = sa.Table(
    "channel_addresses",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("config", Json, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("deactivated_reason", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("user_id", "kind", name="uq_channel_addresses_user_kind"),
)

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("definition", Json, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

categories = sa.Table(
    "categories",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("definition", Json, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", Id, primary_key=True),
    # Idempotency is per API key ('' for what Herald makes itself: broadcast recipients,
    # digests).
    sa.Column("api_key_id", Id, nullable=False, server_default=""),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("category", sa.String(128), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("content", Json, nullable=False),
    sa.Column("channels", Json),
    sa.Column("ttl_seconds", sa.Integer),
    sa.Column("send_at", UtcDateTime),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("routed_at", UtcDateTime),
    sa.Column("broadcast_id", Id),
    sa.Column("deliver_at_local", sa.String(5)),
    # The notification row is the relay's outbox (migration 0014, herald.storage.outbox): the
    # relay reads each lane's accepted rows after its position in relay_positions, in
    # (relay_xid, relay_seq) order. PostgreSQL fills both itself (defaults
    # pg_current_xact_id() and nextval('notifications_relay_seq')); SQLite gets relay_xid 0
    # and a relay_seq above every one in use (Dialect.relay_columns). Rows written before
    # 0014 have neither and are never relayed again.
    sa.Column("lane_order", sa.SmallInteger, nullable=False, server_default="1"),
    sa.Column("relay_xid", sa.BigInteger),
    sa.Column("relay_seq", sa.BigInteger),
    sa.Index("ix_notifications_broadcast", "broadcast_id"),
    # The relay's order: it reads the range after its position (migration 0014 says why
    # the index is not on the accepted rows alone).
    sa.Index("ix_notifications_relay", "lane_order", "relay_xid", "relay_seq"),
    # The activity API's keyset pages (migration 0012; they replaced the indexes on
    # created_at and on user_id alone, which PostgreSQL preferred and then sorted).
    sa.Index("ix_notifications_created_id", "created_at", "id"),
    sa.Index("ix_notifications_user_created", "user_id", "created_at", "id"),
    sa.Index("ix_notifications_category_created", "category", "created_at", "id"),
    sa.UniqueConstraint("api_key_id", "idempotency_key", name="uq_notifications_idempotency"),
)

# The relay's lanes (lane_order of notifications and outbox rows): the relay publishes
# urgent rows first, so a broadcast's fan-out does not hold up a one-time password.
URGENT_LANE_ORDER = 0
BULK_LANE_ORDER = 1


def _lane_positions(name: str) -> sa.Table:
    """A (relay_xid, relay_seq) per relay lane: how far a reader of the relay order got."""
    return sa.Table(
        name,
        metadata,
        sa.Column("lane", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("position_xid", sa.BigInteger, nullable=False),
        sa.Column("position_seq", sa.BigInteger, nullable=False),
    )


# How far the relay has published each lane's notifications: the (relay_xid, relay_seq) of
# the last one. A relay pass on PostgreSQL holds the lane's advisory lock, so two relays
# never publish the same lane at once.
relay_positions = _lane_positions("relay_positions")

# How far the scheduler's sweep for lost notifications has found every published
# notification settled (routed, cancelled or set aside), per lane: the (relay_xid,
# relay_seq) of the last one (migration 0018). A sweep reads from there up to the relay's
# position, so it reads what was published since the sweep before, not every notification.
sweep_positions = _lane_positions("sweep_positions")

# Records other than a new notification's that must reach the bus with the transaction that
# made them (a broadcast's first fan-out page, a dead letter's replay): rare, and deleted by
# the relay once published.

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("lane_order", sa.SmallInteger, nullable=False, server_default=str(BULK_LANE_ORDER)),
    # Urgent rows only: an index that also covered bulk rows was chosen for lookups by id
    # (migration 0005 says why).
    sa.Index(
        "ix_outbox_urgent",
        "id",
        postgresql_where=sa.text(f"lane_order = {URGENT_LANE_ORDER}"),
        sqlite_where=sa.text(f"lane_order = {URGENT_LANE_ORDER}"),
    ),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("notification_id", Id, nullable=False, index=True),
    sa.Column("user_id", sa.String(128), nullable=False, index=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("platform", sa.String(16)),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("target_ref", sa.String(400), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("policy", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("category", sa.String(128), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("provider", sa.String(32)),
    sa.Column("provider_message_id", sa.String(300)),
    sa.Column("last_error", sa.Text),
    sa.Column("due_at", UtcDateTime),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("claimed_at", UtcDateTime),  # the last claim (attempt number `attempts`)
    # When the provider took it (a worker's `sent` that wrote no log event: migration 0017).
    sa.Column("sent_at", UtcDateTime),
    # What the recipient did: each the first report of its kind (migration 0010).
    sa.Column("opened_at", UtcDateTime),
    sa.Column("clicked_at", UtcDateTime),
    sa.Column("read_at", UtcDateTime),
    sa.Column("dismissed_at", UtcDateTime),
)


def _partial(condition: sa.ColumnElement[bool]) -> dict[str, Any]:
    return {"postgresql_where": condition, "sqlite_where": condition}


# Partial indexes (migration 0016): a row version gets an entry only in a state whose
# queries read that index. A delivery's claim and outcome change its state, so neither
# UPDATE can be HOT and each writes an entry into every index the new version belongs to;
# on the hot path (queued -> sending -> sent) that is 13 entries per delivery, not 21.
# Each predicate is built from the guard of the statement it answers, and
# tests/storage/test_indexes.py holds every such statement to its index on both backends.
_state = deliveries.c.state
# The scheduler's release of due deferrals, and its probe.
sa.Index("ix_deliveries_deferred_due", deliveries.c.due_at, **_partial(RELEASE_DUE.holds(_state)))
# The lease sweep (a worker that died mid-send), and its probe.
sa.Index(
    "ix_deliveries_sending_lease",
    deliveries.c.lease_until,
    **_partial(LEASE_EXPIRED_REQUEUE.holds(_state)),
)
# The backlog an operator watches (count and oldest per state), and stale queued rows.
sa.Index(
    "ix_deliveries_unsent_updated",
    _state,
    deliveries.c.updated_at,
    **_partial(state_in(UNSENT_STATES, _state)),
)


def unsent_in(state: DeliveryState) -> sa.ColumnElement[bool]:
    """Deliveries in `state`, one of the unsent states, written so that both databases
    answer from ix_deliveries_unsent_updated: SQLite uses a partial index only when the
    query repeats the index's predicate."""
    if state not in UNSENT_STATES:
        raise ValueError(f"{state} is not an unsent state")
    return sa.and_(_state == state.value, state_in(UNSENT_STATES, _state))


# Provider reports (webhooks) find their delivery by the provider's message id.
sa.Index(
    "ix_deliveries_provider_message",
    deliveries.c.provider_message_id,
    **_partial(deliveries.c.provider_message_id.is_not(None)),
)

# The sends the log shows from the row (`herald tail` follows them by time).
sa.Index(
    "ix_deliveries_sent",
    deliveries.c.sent_at,
    deliveries.c.id,
    **_partial(deliveries.c.sent_at.is_not(None)),
)

# Partitioned by created_at on PostgreSQL (see the migration); the primary key includes it.
delivery_events = sa.Table(
    "delivery_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("delivery_id", Id, nullable=False),
    sa.Column("notification_id", Id, nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("provider", sa.String(32)),
    sa.Column("detail", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

inbox_items = sa.Table(
    "inbox_items",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("delivery_id", Id, nullable=False, unique=True),
    sa.Column("notification_id", Id, nullable=False),
    sa.Column("category", sa.String(128), nullable=False),
    sa.Column("title", sa.Text),
    sa.Column("body", sa.Text),
    sa.Column("data", Json, nullable=False),
    sa.Column("read_at", UtcDateTime),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # How many times the delivery reached the inbox: one item is shown, a repeat is counted.
    sa.Column("sends", sa.Integer, nullable=False, server_default="1"),
    sa.Index("ix_inbox_user_created", "user_id", "created_at"),
)

sandbox_messages = sa.Table(
    "sandbox_messages",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    # One row per send, not per delivery: a delivery sent twice shows twice.
    sa.Column("delivery_id", Id, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("ix_sandbox_channel_user", "channel", "user_id", "created_at"),
    sa.Index("ix_sandbox_delivery", "delivery_id"),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(320), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # When the suppressing event happened (the latest, for repeated opt-outs): an opt-in
    # older than this does not lift it. NULL for suppressions made by hand.
    sa.Column("event_at", UtcDateTime),
    sa.UniqueConstraint("channel", "address", name="uq_suppressions_channel_address"),
)

# Provider webhook event ids already applied: a retried or replayed webhook is dropped.
webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("provider", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(255), primary_key=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("keep_until", UtcDateTime, nullable=False),
    sa.Index("ix_webhook_events_keep_until", "keep_until"),
)

topic_subscriptions = sa.Table(
    "topic_subscriptions",
    metadata,
    sa.Column("topic", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("ix_topic_subscriptions_user", "user_id"),
)

broadcasts = sa.Table(
    "broadcasts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("api_key_id", Id, nullable=False, server_default=""),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("topic", sa.String(128)),
    # The notification every recipient gets (NotificationIn fields without user_id).
    sa.Column("template", Json, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("planned", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("api_key_id", "idempotency_key", name="uq_broadcasts_idempotency"),
    sa.Index("ix_broadcasts_created_id", "created_at", "id"),
)

broadcast_recipients = sa.Table(
    "broadcast_recipients",
    metadata,
    sa.Column("broadcast_id", Id, primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
)

# -- traffic shaping: frequency caps and digests --------------------------------------------

frequency_caps = sa.Table(
    "frequency_caps",
    metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("cap_limit", sa.Integer, nullable=False),
    sa.Column("window_seconds", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# One row per (user, channel, scope, window): the deliveries counted in it. scope is "" for
# a channel-wide cap, else the category. Reserved with an atomic conditional upsert.
frequency_counters = sa.Table(
    "frequency_counters",
    metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("scope", sa.String(128), primary_key=True),
    sa.Column("window_start", UtcDateTime, primary_key=True),
    sa.Column("window_end", UtcDateTime, nullable=False, index=True),
    sa.Column("used", sa.Integer, nullable=False),
)

digests = sa.Table(
    "digests",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("category", sa.String(128), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("window_start", UtcDateTime, nullable=False),
    sa.Column("window_end", UtcDateTime, nullable=False),
    sa.Column("template", sa.String(128)),
    sa.Column("state", sa.String(16), nullable=False),  # open, closed
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("notification_id", Id),  # the digest's own notification, once closed
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("closed_at", UtcDateTime),
    # One unique key: the id is derived from (user_id, category, channel, window_start), and
    # a fold's ON CONFLICT can arbitrate only one (migration 0015 says why).
    sa.Index("ix_digests_state_end", "state", "window_end"),
)

digest_items = sa.Table(
    "digest_items",
    metadata,
    sa.Column("digest_id", Id, primary_key=True),
    sa.Column("notification_id", Id, primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),  # arrival order within the digest
    sa.Column("payload", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# -- workflows and engagement (migration 0010) ----------------------------------------------

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("definition", Json, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# One row per (trigger, user). The run is its own timer: `due_at` says when its current step
# (`position`) is next looked at; a scheduler holds it while `lease_until` is ahead, under
# `lease_token`, as a worker holds a delivery.
workflow_runs = sa.Table(
    "workflow_runs",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("workflow_key", sa.String(128), nullable=False),
    sa.Column("definition", Json, nullable=False),  # as it was when triggered
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("api_key_id", Id, nullable=False, server_default=""),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("cancellation_key", sa.String(255)),
    sa.Column("input", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("due_at", UtcDateTime),
    sa.Column("waiting_event", sa.String(200)),
    sa.Column("lease_until", UtcDateTime),
    sa.Column("lease_token", sa.String(64)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint(
        "api_key_id", "idempotency_key", "user_id", name="uq_workflow_runs_idempotency"
    ),
    sa.Index("ix_workflow_runs_status_due", "status", "due_at"),
    sa.Index("ix_workflow_runs_user_event", "user_id", "waiting_event"),
    sa.Index("ix_workflow_runs_cancellation", "cancellation_key"),
    sa.Index("ix_workflow_runs_created_id", "created_at", "id"),
)

workflow_run_steps = sa.Table(
    "workflow_run_steps",
    metadata,
    sa.Column("run_id", Id, primary_key=True),
    sa.Column("step_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("notification_id", Id),
    sa.Column("started_at", UtcDateTime),
    sa.Column("at", UtcDateTime),
    sa.Column("detail", Json, nullable=False),
)

workflow_events = sa.Table(
    "workflow_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("data", Json, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index("ix_workflow_events_user_name", "user_id", "name", "created_at"),
)
