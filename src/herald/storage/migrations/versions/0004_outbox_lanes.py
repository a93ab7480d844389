"""The outbox knows each row's lane, so the relay publishes urgent rows first.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(
            sa.Column("lane_order", sa.SmallInteger(), nullable=False, server_default="1")
        )
    op.create_index("ix_outbox_lane_order", "outbox", ["lane_order", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lane_order", "outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lane_order")
