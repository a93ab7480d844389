"""Idempotency keys are scoped per API key.

A notification's and a broadcast's Idempotency-Key was unique across the whole service:
one key holder could read another's notification id (same key, same body: a 200 with the
id) or block its keys (another body: a 409). The unique constraint is now on
(api_key_id, idempotency_key). Notifications Herald makes itself (broadcast recipients,
digests) have api_key_id '', a scope no API key has; rows from before this revision get
'' too, so a caller replaying a key from before the upgrade makes a new notification.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("notifications", "broadcasts")
# SQLite keeps `unique=True` constraints unnamed: batch mode names them by this convention
# when it reflects the table, so they can be dropped by name.
CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_name(table: str) -> str:
    if op.get_bind().dialect.name == "sqlite":
        return f"uq_{table}_idempotency_key"
    return f"{table}_idempotency_key_key"  # PostgreSQL's name for the column's UNIQUE


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=CONVENTION) as batch:
            batch.drop_constraint(_old_name(table), type_="unique")
            batch.add_column(
                sa.Column("api_key_id", sa.String(64), nullable=False, server_default="")
            )
            batch.create_unique_constraint(
                f"uq_{table}_idempotency", ["api_key_id", "idempotency_key"]
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=CONVENTION) as batch:
            batch.drop_constraint(f"uq_{table}_idempotency", type_="unique")
            batch.drop_column("api_key_id")
            batch.create_unique_constraint(_old_name(table), ["idempotency_key"])
