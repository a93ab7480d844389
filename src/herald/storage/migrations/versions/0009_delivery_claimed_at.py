"""The delivery row carries when it was last claimed.

The delivery log wrote a `queued` event for every delivery the router made and a `sending`
event for every claim: two of the three log rows of a delivery sent at the first attempt,
each repeating what the delivery row already says. The row now keeps its claim time
(`claimed_at`, with `attempts` the attempt number, `created_at` the queue time); the log
appends one event per attempt outcome (carrying that attempt's claim time), plus the
routing event only where the plan said more than `queued`. The API's event list shows the
same timeline as before, from both.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("claimed_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("claimed_at")
