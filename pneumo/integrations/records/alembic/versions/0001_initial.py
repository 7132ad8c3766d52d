"""Readings, verdicts and the audit trail's events, each append-only.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# Self-contained on purpose (no import of schema.py): a migration must create what it created when it was written.
revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = ("readings", "verdicts", "events")


def append_only(table: str) -> None:
    """Triggers refusing UPDATE and DELETE on a table (and TRUNCATE on PostgreSQL). A later migration that
    recreates a table (SQLite's batch mode copies it) calls this again for it."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION pneumo_append_only() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION pneumo_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION pneumo_append_only()"
        )
    # Other backends: no guard; the audit trail's hash chain still shows a change.


def upgrade() -> None:
    op.create_table(
        "readings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("source_kind", sa.String(16), nullable=False),
        sa.Column("source_name", sa.Text),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("instance_uid", sa.String(64)),
        sa.Column("pixel_sha256", sa.String(64)),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("card_hash", sa.String(64), nullable=False),
        sa.Column("operating_point", sa.String(200), nullable=False),
        sa.Column("threshold", sa.Float(precision=53), nullable=False),
        sa.Column("probability", sa.Float(precision=53)),
        sa.Column("decision", sa.String(32)),
        sa.Column("warnings", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("drift", sa.JSON),
    )
    for column in ("time", "pixel_sha256", "source_name", "instance_uid", "model"):
        op.create_index(f"ix_readings_{column}", "readings", [column])
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("reading_id", sa.Integer, sa.ForeignKey("readings.id"), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(300), nullable=False),
    )
    op.create_index("ix_verdicts_reading_id", "verdicts", ["reading_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("object", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("details", sa.JSON),
        sa.Column("prev_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    )
    op.create_index("ix_events_time", "events", ["time"])
    for table in TABLES:
        append_only(table)


def downgrade() -> None:
    # The records are an audit trail: nothing is ever dropped.
    raise NotImplementedError("the records database is upgraded, never downgraded")
