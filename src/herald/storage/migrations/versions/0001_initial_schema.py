"""Initial schema.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import BigId, Json, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)
USER_ID = sa.String(128)


def _now() -> sa.Column[object]:
    return sa.Column("updated_at", UtcDateTime(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", ID, primary_key=True),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("scopes", Json, nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime()),
    )
    op.create_table(
        "settings_kv",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", USER_ID, primary_key=True),
        sa.Column("email", sa.String(320)),
        sa.Column("phone", sa.String(32)),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("preferences", Json, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        _now(),
    )
    op.create_table(
        "devices",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", USER_ID, nullable=False, index=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("subscription", Json),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("deactivated_reason", sa.Text()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        _now(),
        sa.UniqueConstraint("platform", "token_hash", name="uq_devices_platform_token"),
    )
    for name in ("templates", "categories"):
        op.create_table(
            name,
            sa.Column("name", sa.String(128), primary_key=True),
            sa.Column("definition", Json, nullable=False),
            _now(),
        )
    op.create_table(
        "notifications",
        sa.Column("id", ID, primary_key=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False, index=True),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("content", Json, nullable=False),
        sa.Column("channels", Json),
        sa.Column("ttl_seconds", sa.Integer()),
        sa.Column("send_at", UtcDateTime()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False, index=True),
        sa.Column("routed_at", UtcDateTime()),
    )
    op.create_table(
        "outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", ID, primary_key=True),
        sa.Column("notification_id", ID, nullable=False, index=True),
        sa.Column("user_id", USER_ID, nullable=False, index=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("platform", sa.String(16)),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("target_ref", sa.String(400), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("provider", sa.String(32)),
        sa.Column("provider_message_id", sa.String(300)),
        sa.Column("last_error", sa.Text()),
        sa.Column("due_at", UtcDateTime()),
        sa.Column("expires_at", UtcDateTime()),
        sa.Column("lease_until", UtcDateTime()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        _now(),
    )
    op.create_index("ix_deliveries_state_due", "deliveries", ["state", "due_at"])
    op.create_index("ix_deliveries_state_lease", "deliveries", ["state", "lease_until"])
    op.create_index("ix_deliveries_state_updated", "deliveries", ["state", "updated_at"])
    op.create_index("ix_deliveries_provider_message", "deliveries", ["provider_message_id"])
    _create_delivery_events()
    op.create_table(
        "inbox_items",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("delivery_id", ID, nullable=False, unique=True),
        sa.Column("notification_id", ID, nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("title", sa.Text()),
        sa.Column("body", sa.Text()),
        sa.Column("data", Json, nullable=False),
        sa.Column("read_at", UtcDateTime()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_inbox_user_created", "inbox_items", ["user_id", "created_at"])
    op.create_table(
        "sandbox_messages",
        sa.Column("id", ID, primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("user_id", USER_ID, nullable=False),
        sa.Column("delivery_id", ID, nullable=False, unique=True),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index(
        "ix_sandbox_channel_user", "sandbox_messages", ["channel", "user_id", "created_at"]
    )
    op.create_table(
        "suppressions",
        sa.Column("id", ID, primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("channel", "address", name="uq_suppressions_channel_address"),
    )


def _create_delivery_events() -> None:
    """The delivery log. On PostgreSQL it is partitioned by day on created_at, so retention
    drops whole partitions (see herald.storage.postgres)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE TABLE delivery_events (
                id bigint GENERATED BY DEFAULT AS IDENTITY,
                delivery_id varchar(64) NOT NULL,
                notification_id varchar(64) NOT NULL,
                state varchar(16) NOT NULL,
                provider varchar(32),
                detail jsonb NOT NULL,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (id, created_at)
            ) PARTITION BY RANGE (created_at)
            """
        )
        op.execute("CREATE TABLE delivery_events_default PARTITION OF delivery_events DEFAULT")
    else:
        op.create_table(
            "delivery_events",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("delivery_id", ID, nullable=False),
            sa.Column("notification_id", ID, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("provider", sa.String(32)),
            sa.Column("detail", Json, nullable=False),
            sa.Column("created_at", UtcDateTime(), nullable=False),
        )
    op.create_index("ix_delivery_events_notification_id", "delivery_events", ["notification_id"])


def downgrade() -> None:
    for table in (
        "suppressions",
        "sandbox_messages",
        "inbox_items",
        "delivery_events",
        "deliveries",
        "outbox",
        "notifications",
        "categories",
        "templates",
        "devices",
        "users",
        "settings_kv",
        "api_keys",
    ):
        op.drop_table(table)
