"""Every send is visible: the sandbox keeps one row per send, the inbox counts repeats.

Both tables had UNIQUE(delivery_id) and their inserts ON CONFLICT DO NOTHING, so a delivery
sent twice looked like one sent once. The sandbox ("what would have gone out") now records
each send as its own row (delivery_id indexed, no longer unique); the inbox still shows one
item per delivery but counts in `sends` how many times it was delivered.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "inbox_items", sa.Column("sends", sa.Integer(), nullable=False, server_default="1")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("sandbox_messages_delivery_id_key", "sandbox_messages", type_="unique")
    else:  # SQLite's inline UNIQUE has no name to drop: rebuild the table without it
        with op.batch_alter_table(
            "sandbox_messages", copy_from=_sandbox_without_unique(), recreate="always"
        ):
            pass
    op.create_index("ix_sandbox_delivery", "sandbox_messages", ["delivery_id"])


def _sandbox_without_unique() -> sa.Table:
    from herald.storage.schema import Json, UtcDateTime

    return sa.Table(
        "sandbox_messages",
        sa.MetaData(),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Index("ix_sandbox_channel_user", "channel", "user_id", "created_at"),
    )


def downgrade() -> None:
    op.drop_index("ix_sandbox_delivery", "sandbox_messages")
    op.execute(
        "DELETE FROM sandbox_messages WHERE id NOT IN "
        "(SELECT min(id) FROM sandbox_messages GROUP BY delivery_id)"
    )
    with op.batch_alter_table("sandbox_messages") as batch:
        batch.create_unique_constraint("sandbox_messages_delivery_id_key", ["delivery_id"])
    with op.batch_alter_table("inbox_items") as batch:
        batch.drop_column("sends")
