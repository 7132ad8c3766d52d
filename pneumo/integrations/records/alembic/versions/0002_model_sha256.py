"""The model file's SHA-256 on each reading, so that two models sharing a card name are told apart.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column added in place (ALTER TABLE ADD COLUMN on SQLite and PostgreSQL alike): no table is copied,
    # so the append-only triggers stay as they are, and the readings already stored keep their rows (None here:
    # which file read them was not recorded) and the hashes their audit events hold (audit.reading_sha256 leaves
    # a None model_sha256 out of the hash).
    op.add_column("readings", sa.Column("model_sha256", sa.String(64)))
    op.create_index("ix_readings_model_sha256", "readings", ["model_sha256"])


def downgrade() -> None:
    raise NotImplementedError("the records database is upgraded, never downgraded")
