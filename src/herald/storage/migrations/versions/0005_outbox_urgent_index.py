"""The outbox's lane index becomes a partial index over urgent rows only.

0004 indexed (lane_order, id). PostgreSQL then planned the relay's
`DELETE FROM outbox WHERE id = ANY(...)` as a scan of that whole index whenever its row
estimate for the outbox was stale, which a queue table's estimate always is: 3.3-9 s for
500 rows under a 170,000-row backlog, against 0.4 ms through the primary key. An index on
urgent rows alone cannot serve a lookup by id, and stays as small as the urgent backlog.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

URGENT = sa.text("lane_order = 0")


def upgrade() -> None:
    op.drop_index("ix_outbox_lane_order", "outbox")
    op.create_index(
        "ix_outbox_urgent", "outbox", ["id"], postgresql_where=URGENT, sqlite_where=URGENT
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_urgent", "outbox")
    op.create_index("ix_outbox_lane_order", "outbox", ["lane_order", "id"])
