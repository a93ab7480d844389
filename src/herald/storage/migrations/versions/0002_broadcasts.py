"""Topics, broadcasts, local-time delivery.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import Json, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("broadcast_id", sa.String(64)))
        batch.add_column(sa.Column("deliver_at_local", sa.String(5)))
    op.create_index("ix_notifications_broadcast", "notifications", ["broadcast_id"])
    op.create_table(
        "topic_subscriptions",
        sa.Column("topic", sa.String(128), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_topic_subscriptions_user", "topic_subscriptions", ["user_id"])
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(128)),
        sa.Column("template", Json, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("planned", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "broadcast_recipients",
        sa.Column("broadcast_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("broadcast_recipients")
    op.drop_table("broadcasts")
    op.drop_table("topic_subscriptions")
    op.drop_index("ix_notifications_broadcast", "notifications")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("deliver_at_local")
        batch.drop_column("broadcast_id")
