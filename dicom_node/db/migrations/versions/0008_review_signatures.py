"""Signed reviews: a radiologist's decisions on one analysis (one revision per signature),
the verified SR revision built from them and its HL7 ORU^R01 (status F, C for a later
revision).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "study_id", sa.Integer(), sa.ForeignKey("study.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "analysis_id",
            sa.Integer(),
            sa.ForeignKey("analysis.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("review_user.id"), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decisions", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("SOPInstanceUID", sa.String(64), nullable=True),
        sa.Column("control_id", sa.String(20), nullable=True),
        sa.Column("hl7_state", sa.String(16), nullable=True),
        sa.Column("ack_code", sa.String(2), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("analysis_id", "revision"),
    )
    op.create_index("ix_review_study_id", "review", ["study_id"])
    op.create_index("ix_review_analysis_id", "review", ["analysis_id"])
    op.create_index("ix_review_user_id", "review", ["user_id"])
    op.create_index("ix_review_signed_at", "review", ["signed_at"])
    op.create_index("ix_review_state", "review", ["state"])


def downgrade() -> None:
    for name in ("state", "signed_at", "user_id", "analysis_id", "study_id"):
        op.drop_index(f"ix_review_{name}", table_name="review")
    op.drop_table("review")
