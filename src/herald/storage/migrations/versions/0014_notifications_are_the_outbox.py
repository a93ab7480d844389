"""The notification row is the relay's outbox: a new notification no longer writes an outbox
row that the relay deletes again (two rows and two statements per batch that carried nothing
the notification does not).

Each notification gets its lane (lane_order) and its place in the relay's order
(relay_xid, relay_seq); relay_positions keeps how far the relay has published each lane.
On PostgreSQL relay_xid is the inserting transaction's id and relay_seq a sequence value:
the relay reads only rows whose transaction is below the snapshot's xmin (all finished), in
(relay_xid, relay_seq) order, so a transaction that commits late is never skipped. SQLite
has one writer at a time and gets relay_xid 0.

The outbox table stays for the rare records that are not a new notification (a broadcast's
first fan-out page, a dead letter's replay). Its notification rows still pending at the
upgrade are carried over: their notifications get a place after the positions, in the
outbox's order, and the outbox rows go. Notifications written before the upgrade have no
place and are never relayed again (they were, or are carried over).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NOTIFICATIONS_TOPIC = "herald.notifications"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "notifications",
        sa.Column("lane_order", sa.SmallInteger(), nullable=False, server_default="1"),
    )
    op.add_column("notifications", sa.Column("relay_xid", sa.BigInteger()))
    op.add_column("notifications", sa.Column("relay_seq", sa.BigInteger()))
    if postgres:
        op.execute("CREATE SEQUENCE notifications_relay_seq AS bigint")
        # Set after the columns exist, so rows written before the upgrade keep NULL.
        op.execute(
            "ALTER TABLE notifications "
            "ALTER COLUMN relay_xid SET DEFAULT (pg_current_xact_id()::text::bigint), "
            "ALTER COLUMN relay_seq SET DEFAULT nextval('notifications_relay_seq')"
        )
        op.execute("ALTER SEQUENCE notifications_relay_seq OWNED BY notifications.relay_seq")
    # Over every row, not the accepted ones alone: the relay reads only the range after its
    # position either way, and an index on `state = 'accepted'` looked cheap to the planner
    # (statistics taken before a burst) for the router's read by an array of ids, which then
    # read every waiting row for each batch; it also made the routed mark a non-HOT update.
    op.create_index(
        "ix_notifications_relay", "notifications", ["lane_order", "relay_xid", "relay_seq"]
    )
    positions = op.create_table(
        "relay_positions",
        sa.Column("lane", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("position_xid", sa.BigInteger(), nullable=False),
        sa.Column("position_seq", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(
        positions,
        [
            {"lane": 0, "position_xid": 0, "position_seq": 0},
            {"lane": 1, "position_xid": 0, "position_seq": 0},
        ],
    )
    _carry_over_pending(postgres)


def _carry_over_pending(postgres: bool) -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, topic, payload, lane_order FROM outbox ORDER BY id")
    ).all()
    place = (
        "relay_xid = pg_current_xact_id()::text::bigint, "
        "relay_seq = nextval('notifications_relay_seq')"
        if postgres
        else "relay_xid = 0, relay_seq = :seq"
    )
    carried: list[int] = []
    for number, row in enumerate(rows, start=1):
        if not row.topic.startswith(NOTIFICATIONS_TOPIC):
            continue
        notification_id = json.loads(bytes(row.payload)).get("notification_id")
        bind.execute(
            sa.text(f"UPDATE notifications SET lane_order = :lane, {place} WHERE id = :id"),
            {"lane": row.lane_order, "seq": number, "id": notification_id},
        )
        carried.append(row.id)
    for outbox_id in carried:
        bind.execute(sa.text("DELETE FROM outbox WHERE id = :id"), {"id": outbox_id})


def downgrade() -> None:
    op.drop_table("relay_positions")
    op.drop_index("ix_notifications_relay", table_name="notifications")
    op.drop_column("notifications", "relay_seq")
    op.drop_column("notifications", "relay_xid")
    op.drop_column("notifications", "lane_order")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS notifications_relay_seq")
