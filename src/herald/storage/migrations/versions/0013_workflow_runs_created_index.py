"""The console's list of workflow runs, newest first on (created_at, id): a page walks this
index and stops, so a page deep in many runs costs what the first does.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_workflow_runs_created_id", "workflow_runs", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_created_id", table_name="workflow_runs")
