"""Indexes for the activity API's keyset pages (newest first on (created_at, id)).

A search of notifications by user or by category, or of all of them, walks one of these
newest first and stops after a page, so a page deep in a million rows costs what the first
does; broadcasts are listed the same way.

Revision ID: 0012
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_notifications_created_id", "notifications", ["created_at", "id"]),
    ("ix_notifications_user_created", "notifications", ["user_id", "created_at", "id"]),
    ("ix_notifications_category_created", "notifications", ["category", "created_at", "id"]),
    ("ix_broadcasts_created_id", "broadcasts", ["created_at", "id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
