"""The delivery indexes the hot path does not read become partial; the routed mark stays
on its page.

A delivery's claim (queued -> sending) and its outcome (sending -> sent) change its state,
which every state index holds, so neither UPDATE can be HOT: each new row version got an
entry in all seven indexes of deliveries, 21 per delivery with its INSERT. Four of them
serve only rows in a few states: the scheduler's due deferrals, the lease sweep of
sending rows, the operator's backlog of unsent rows, and the webhooks' lookup by the
provider's message id. As partial indexes a row version enters each only in those states,
and a delivery on the hot path writes 13 entries instead of 21.

The router's routed mark changes no indexed column of notifications, so it can be a HOT
update when the row's page has room for the new version; at the default fillfactor of 100
a quarter of them found none (pg_stat_user_tables, docs/benchmarks.md). Pages filled to
85 % keep that room. The setting applies to pages written from now on.

Each CREATE INDEX reads the whole of deliveries while it holds off writes to it (the
workers' claims and outcomes wait, they do not fail): docs/operations.md, "Upgrading".

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# The states as they are at this revision (herald.storage.schema builds the same
# predicates from the guards; tests/storage/test_indexes.py checks that they match).
PARTIAL = {
    "ix_deliveries_deferred_due": (["due_at"], "state = 'deferred'"),
    "ix_deliveries_sending_lease": (["lease_until"], "state = 'sending'"),
    "ix_deliveries_unsent_updated": (
        ["state", "updated_at"],
        "state IN ('deferred', 'queued', 'sending')",
    ),
    "ix_deliveries_provider_message": (["provider_message_id"], "provider_message_id IS NOT NULL"),
}
FULL = {
    "ix_deliveries_state_due": ["state", "due_at"],
    "ix_deliveries_state_lease": ["state", "lease_until"],
    "ix_deliveries_state_updated": ["state", "updated_at"],
    "ix_deliveries_provider_message": ["provider_message_id"],
}


def upgrade() -> None:
    for name in FULL:
        op.drop_index(name, "deliveries")
    for name, (columns, where) in PARTIAL.items():
        predicate = sa.text(where)
        op.create_index(
            name, "deliveries", columns, postgresql_where=predicate, sqlite_where=predicate
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notifications SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notifications RESET (fillfactor)")
    for name in PARTIAL:
        op.drop_index(name, "deliveries")
    for name, columns in FULL.items():
        op.create_index(name, "deliveries", columns)
