"""Indexes for the activity API's keyset pages (newest first on (created_at, id)).

A search of notifications by user or by category, or of all of them, walks one of these
newest first and stops after a page, so a page deep in a million rows costs what the first
does; broadcasts are listed the same way. The indexes on notifications.created_at alone and
on notifications.user_id alone go: the new ones start with those columns, so they serve
every query the old ones did, and PostgreSQL, given both, took the narrower one and sorted
each page (all of a user's notifications, or the ties on created_at).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_notifications_created_id", "notifications", ["created_at", "id"]),
    ("ix_notifications_user_created", "notifications", ["user_id", "created_at", "id"]),
    ("ix_notifications_category_created", "notifications", ["category", "created_at", "id"]),
    ("ix_broadcasts_created_id", "broadcasts", ["created_at", "id"]),
)


REPLACED = (
    ("ix_notifications_created_at", "notifications", ["created_at"]),
    ("ix_notifications_user_id", "notifications", ["user_id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    for name, table, _ in REPLACED:
        op.drop_index(name, table_name=table)


def downgrade() -> None:
    for name, table, columns in REPLACED:
        op.create_index(name, table, columns)
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
