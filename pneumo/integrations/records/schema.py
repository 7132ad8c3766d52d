"""The readings database's tables: readings, readers' verdicts and the audit trail's events (SQLAlchemy 2).

What is kept is what a later audit and the monitor need, and nothing that identifies a patient: no pixels, no
names, ids or birth dates. A film is known by the SHA-256 of its decoded pixels (pneumo.integrations.records.readings
.pixel_sha256) and, for a PACS film, by its study, series and instance UIDs.

Rows are only ever added: a reader who changes their mind adds a verdict, and the migrations put triggers on every
table that refuse UPDATE and DELETE (a guard against slips, not against someone who owns the file: the audit trail's
hash chain is what shows a change made anyway, see pneumo.integrations.records.audit).

The tables are created and changed by the Alembic migrations beside this file (alembic/versions), never by
metadata.create_all: a database made by an older pneumo is upgraded in place and keeps its rows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC time on every backend: SQLite keeps no zone, so times are stored as naive UTC there and
    given back aware; PostgreSQL stores timestamptz. One representation is what makes the audit hashes (which cover
    the time) come out the same when a row is read back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("times stored in the records database must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # a raw SQLite text value (a row written by hand)
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class ReadingRow(Base):
    """One film read by one model at one operating point."""

    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    user: Mapped[str] = mapped_column(String(200), nullable=False)
    # "upload" (the app), "file" (the command line), "pacs"; source_name is the upload's name, the file's path or
    # the PACS instance's DICOMweb path.
    source_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    source_name: Mapped[str | None] = mapped_column(Text)
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    instance_uid: Mapped[str | None] = mapped_column(String(64))
    pixel_sha256: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    card_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # The SHA-256 of the model file that read the film (migration 0002): the card's name is chosen by whoever
    # trains, so two different networks may share it, and the card's hash changes whenever a threshold or site
    # point is saved. None for readings logged before 0002, or by a model read from no file.
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    operating_point: Mapped[str] = mapped_column(String(200), nullable=False)
    threshold: Mapped[float] = mapped_column(Float(precision=53), nullable=False)
    # None for an input that could not be read (error says why): it has no score and no decision.
    probability: Mapped[float | None] = mapped_column(Float(precision=53))
    decision: Mapped[str | None] = mapped_column(String(32))
    warnings: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    # The drift check of the batch this film was read in (pneumo.evaluation.drift), when one was made.
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_readings_time", "time"),
        Index("ix_readings_pixel_sha256", "pixel_sha256"),
        Index("ix_readings_source_name", "source_name"),
        Index("ix_readings_instance_uid", "instance_uid"),
        Index("ix_readings_model", "model"),
        Index("ix_readings_model_sha256", "model_sha256"),
    )


class VerdictRow(Base):
    """A reader's label for the film of one reading; the latest verdict on a film is the one that counts."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    user: Mapped[str] = mapped_column(String(200), nullable=False)
    reading_id: Mapped[int] = mapped_column(ForeignKey("readings.id"), nullable=False)
    label: Mapped[str] = mapped_column(String(16), nullable=False)  # PNEUMONIA or NORMAL
    origin: Mapped[str] = mapped_column(String(300), nullable=False)  # "app", or "csv:<file name>"

    __table_args__ = (Index("ix_verdicts_reading_id", "reading_id"),)


class EventRow(Base):
    """One entry of the append-only audit trail, chained to the one before it by SHA-256."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    user: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    object: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Unique: two writers that both read the same last event cannot both append after it (the chain never forks).
    prev_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)

    __table_args__ = (Index("ix_events_time", "time"),)
