"""DICOMweb peers: a peer's DICOMweb base URL and what the node presents to it, a DIMSE
address no longer required, and the hashed credentials peers present to the node.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dicomweb_url", sa.String(1024), nullable=True))
        batch_op.add_column(sa.Column("dicomweb_auth", sa.Text(), nullable=True))
        batch_op.alter_column("host", existing_type=sa.String(255), nullable=True)
        batch_op.alter_column("port", existing_type=sa.Integer(), nullable=True)
    op.create_table(
        "credential",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "peer_id", sa.Integer(), sa.ForeignKey("peer.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_credential_peer_id", "credential", ["peer_id"])


def downgrade() -> None:
    op.drop_index("ix_credential_peer_id", table_name="credential")
    op.drop_table("credential")
    with op.batch_alter_table("peer", schema=None) as batch_op:
        batch_op.alter_column("port", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("host", existing_type=sa.String(255), nullable=False)
        batch_op.drop_column("dicomweb_auth")
        batch_op.drop_column("dicomweb_url")
