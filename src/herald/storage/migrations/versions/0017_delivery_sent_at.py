"""The delivery row carries when the provider took it, and a send writes no log row.

A delivery sent at its first attempt wrote six rows: the notification, its routed mark, the
delivery, the claim, the outcome, and the outcome's log event. The event repeated what the
outcome's row version already said (state, provider, the provider's message id, the
attempt and its claim time), except when it happened: `sent_at` keeps that. A worker's
`sent` with nothing more to say (no failover, no opt-out) now writes no event, and the
delivery log shows it from the row (NotificationRepository.events_of, `herald tail`), as it
already showed `queued` and `sending` (migration 0009). Nothing that happens to a sent
delivery afterwards changes those columns, except a replay of a delivery a webhook failed:
the replay writes the send's event before it queues the delivery again.

`herald tail` follows sends by `sent_at`, through a partial index that holds only sent
rows: one entry per send, where the event was a heap row and two index entries.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import UtcDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("sent_at", UtcDateTime(), nullable=True))
    predicate = sa.text("sent_at IS NOT NULL")
    op.create_index(
        "ix_deliveries_sent",
        "deliveries",
        ["sent_at", "id"],
        postgresql_where=predicate,
        sqlite_where=predicate,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_sent", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sent_at")
