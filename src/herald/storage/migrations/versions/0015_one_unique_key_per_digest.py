"""A digest window has one unique key, its id, instead of two.

The id is derived from (user_id, category, channel, window_start) (domain.shaping.digest_id),
and uq_digests_window held the same four columns unique again. A fold's INSERT ... ON
CONFLICT can name only one of them as its arbiter; the other is checked as a plain unique
index, so two routers folding into one new window at once could make the second fail
with a unique violation instead of counting its item in. With one unique key, the fold's
ON CONFLICT (id) always counts it.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("digests") as batch:
        batch.drop_constraint("uq_digests_window", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("digests") as batch:
        batch.create_unique_constraint(
            "uq_digests_window", ["user_id", "category", "channel", "window_start"]
        )
