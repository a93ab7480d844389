"""Webhook event ids already applied (a retried or replayed webhook is dropped), and the
time of the event behind a suppression (an opt-in older than the latest opt-out does not
lift it).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("provider", sa.String(32), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("keep_until", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_events_keep_until", "webhook_events", ["keep_until"])
    op.add_column("suppressions", sa.Column("event_at", UtcDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("suppressions") as batch:
        batch.drop_column("event_at")
    op.drop_index("ix_webhook_events_keep_until", "webhook_events")
    op.drop_table("webhook_events")
