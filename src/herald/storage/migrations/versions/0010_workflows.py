"""Workflows and engagement: what the recipient did with a delivery (opened, clicked,
read, dismissed: the first report of each), workflow definitions, their runs (each run its
own durable timer, leased by one scheduler at a time), each run's steps, and the events
apps post for runs to wait on.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from herald.storage.schema import BigId, Id, Json, UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ENGAGEMENT_COLUMNS = ("opened_at", "clicked_at", "read_at", "dismissed_at")


def upgrade() -> None:
    for column in ENGAGEMENT_COLUMNS:
        op.add_column("deliveries", sa.Column(column, UtcDateTime(), nullable=True))
    op.create_table(
        "workflows",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("definition", Json, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "workflow_runs",
        sa.Column("id", Id, primary_key=True),
        sa.Column("workflow_key", sa.String(128), nullable=False),
        sa.Column("definition", Json, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("api_key_id", Id, nullable=False, server_default=""),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("cancellation_key", sa.String(255)),
        sa.Column("input", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("due_at", UtcDateTime()),
        sa.Column("waiting_event", sa.String(200)),
        sa.Column("lease_until", UtcDateTime()),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint(
            "api_key_id", "idempotency_key", "user_id", name="uq_workflow_runs_idempotency"
        ),
    )
    op.create_index("ix_workflow_runs_status_due", "workflow_runs", ["status", "due_at"])
    op.create_index("ix_workflow_runs_user_event", "workflow_runs", ["user_id", "waiting_event"])
    op.create_index("ix_workflow_runs_cancellation", "workflow_runs", ["cancellation_key"])
    op.create_table(
        "workflow_run_steps",
        sa.Column("run_id", Id, primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("notification_id", Id),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("at", UtcDateTime()),
        sa.Column("detail", Json, nullable=False),
    )
    op.create_table(
        "workflow_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("data", Json, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index(
        "ix_workflow_events_user_name", "workflow_events", ["user_id", "name", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_events_user_name", "workflow_events")
    op.drop_table("workflow_events")
    op.drop_table("workflow_run_steps")
    for index in (
        "ix_workflow_runs_cancellation",
        "ix_workflow_runs_user_event",
        "ix_workflow_runs_status_due",
    ):
        op.drop_index(index, "workflow_runs")
    op.drop_table("workflow_runs")
    op.drop_table("workflows")
    with op.batch_alter_table("deliveries") as batch:
        for column in ENGAGEMENT_COLUMNS:
            batch.drop_column(column)
