"""analysis domain verdict: the model's domain gate score and whether the film was out of
the training domain (None where no gate checked it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("analysis", schema=None) as batch_op:
        batch_op.add_column(sa.Column("domain_score", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("out_of_domain", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analysis", schema=None) as batch_op:
        batch_op.drop_column("out_of_domain")
        batch_op.drop_column("domain_score")
