"""A notification's deliveries say that it was routed; the sweep for lost notifications
reads from a position.

A notification sent to one channel wrote five rows: the notification, its routed mark, the
delivery, the claim and the outcome. The mark (state `routed`, `routed_at`) repeated what
the delivery's insert already said, and the router now writes it only on a notification it
plans no delivery for. A notification with deliveries stays `accepted` in its row and reads
as `routed` everywhere a client sees it (herald.domain.state_told); the router routes a
notification only while it is accepted and has no delivery, and locks its row FOR SHARE
instead of updating it, so a cancel still waits for the router and the router for it.

The scheduler's sweep for notifications whose bus message was lost looked for `accepted`
rows older than its cutoff. That read every notification older than the cutoff (nothing
indexes the state), and without the mark every routed one would match. It now keeps a
position per relay lane (sweep_positions): it reads the notifications after it that the
relay has published, republishes those still not routed once they are older than the
cutoff, and moves the position over the leading ones that are settled.

The positions start just before each lane's first notification still to route (before
this migration every such row is `accepted`), or at the relay's position when there is
none. Notifications from before 0014 have no relay order; one of them still to route gets
the order (0, 0), which the relay never reads again and the sweep reads first.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

LANES = (0, 1)


def upgrade() -> None:
    positions = op.create_table(
        "sweep_positions",
        sa.Column("lane", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("position_xid", sa.BigInteger(), nullable=False),
        sa.Column("position_seq", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(positions, [_start(lane) for lane in LANES])


def _start(lane: int) -> dict[str, int]:
    bind = op.get_bind()
    legacy = bind.execute(
        sa.text(
            "UPDATE notifications SET relay_xid = 0, relay_seq = 0 "
            "WHERE relay_xid IS NULL AND state = 'accepted' AND lane_order = :lane"
        ),
        {"lane": lane},
    ).rowcount
    if legacy:
        return {"lane": lane, "position_xid": 0, "position_seq": -1}
    first = bind.execute(
        sa.text(
            "SELECT relay_xid, relay_seq FROM notifications "
            "WHERE state = 'accepted' AND lane_order = :lane AND relay_xid IS NOT NULL "
            "ORDER BY relay_xid, relay_seq LIMIT 1"
        ),
        {"lane": lane},
    ).first()
    if first is not None:
        return {"lane": lane, "position_xid": first[0], "position_seq": first[1] - 1}
    relayed = bind.execute(
        sa.text("SELECT position_xid, position_seq FROM relay_positions WHERE lane = :lane"),
        {"lane": lane},
    ).first()
    xid, seq = relayed if relayed is not None else (0, 0)
    return {"lane": lane, "position_xid": xid, "position_seq": seq}


def downgrade() -> None:
    # The routed notifications become `routed` again, as the versions before this one
    # wrote them.
    op.execute(
        "UPDATE notifications SET state = 'routed' WHERE state = 'accepted' AND EXISTS "
        "(SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id)"
    )
    op.drop_table("sweep_positions")
