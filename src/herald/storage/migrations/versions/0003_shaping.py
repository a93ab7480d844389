"""Frequency caps and digests.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import Json, UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "frequency_caps",
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("cap_limit", sa.Integer(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "frequency_counters",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("scope", sa.String(128), primary_key=True),
        sa.Column("window_start", UtcDateTime(), primary_key=True),
        sa.Column("window_end", UtcDateTime(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
    )
    op.create_index("ix_frequency_counters_window_end", "frequency_counters", ["window_end"])
    op.create_table(
        "digests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=False),
        sa.Column("window_end", UtcDateTime(), nullable=False),
        sa.Column("template", sa.String(128)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("notification_id", sa.String(64)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("closed_at", UtcDateTime()),
        sa.UniqueConstraint(
            "user_id", "category", "channel", "window_start", name="uq_digests_window"
        ),
    )
    op.create_index("ix_digests_state_end", "digests", ["state", "window_end"])
    op.create_table(
        "digest_items",
        sa.Column("digest_id", sa.String(64), primary_key=True),
        sa.Column("notification_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("digest_items")
    op.drop_index("ix_digests_state_end", "digests")
    op.drop_table("digests")
    op.drop_index("ix_frequency_counters_window_end", "frequency_counters")
    op.drop_table("frequency_counters")
    op.drop_table("frequency_caps")
