"""Readings into the records database: one row per film read, each with its audit event, in one transaction.

Callers: `python -m pneumo predict --log` (pneumo.cli.records), the Predict page (log_readings) and PACS screening
(log_pacs_run). A row holds what an audit and the monitor need, never pixels or patient identifiers.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core.files import file_sha256
from pneumo.data.pixels import shrink, to_uint8
from pneumo.integrations.records.audit import READING, append_event, jsonable, now, reading_sha256
from pneumo.integrations.records.db import Records, RecordsError, open_records
from pneumo.integrations.records.schema import ReadingRow
from pneumo.model.loading import LoadedModel
from pneumo.model.reading import SCREEN_SIDE, Reading, card_hash

ENV_USER = "PNEUMO_USER"
UPLOAD, FILE, PACS = "upload", "file", "pacs"
SOURCE_KINDS = frozenset({UPLOAD, FILE, PACS})


def current_user(environ: Mapping[str, str] | None = None) -> str:
    """Who is reading, for the command line and PACS runs: PNEUMO_USER, else the account's name."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_USER):
        return str(environ[ENV_USER])[:200]
    try:
        return getpass.getuser()[:200]
    except (OSError, KeyError):  # no name for this uid (a container)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def pixel_sha256(pixels: np.ndarray) -> str:
    """The SHA-256 of a decoded film's pixels, the same whoever read it (command line, app or PACS).

    Taken of the film as every reader keeps it: at most SCREEN_SIDE px on its long side (pneumo.model.reading
    .compact, which the app's cache applies before anything else sees the film), as 8-bit samples, with its shape:
    the app never holds the full-size film, so a hash of that could not be made there."""
    film = to_uint8(shrink(np.asarray(pixels), SCREEN_SIDE))
    return hashlib.sha256(film.tobytes() + str(film.shape).encode()).hexdigest()


_MODEL_HASHES: dict[tuple[str, int, int], str] = {}
_MODEL_HASHES_LOCK = threading.Lock()


def model_file_sha256(path: str | Path | None) -> str | None:
    """The SHA-256 of a model file, which every reading records and the monitor selects by; None when there is no
    such file (a model built in memory). Kept per path, size and modification time: a batch, or a page rerun, hashes
    a file of megabytes once, and a model file replaced in place is hashed again."""
    if path is None:
        return None
    try:
        resolved = Path(path).expanduser().resolve()
        stat = resolved.stat()
    except (OSError, RuntimeError):
        return None
    if not resolved.is_file():
        return None
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _MODEL_HASHES_LOCK:
        found = _MODEL_HASHES.get(key)
    if found is None:
        try:
            found = file_sha256(resolved)
        except OSError:
            return None
        with _MODEL_HASHES_LOCK:
            if len(_MODEL_HASHES) > 64:  # a long-lived app that saw many model files keeps the newest few
                _MODEL_HASHES.clear()
            _MODEL_HASHES[key] = found
    return found


@dataclass(frozen=True)
class ReadingSource:
    """Where a film came from: an upload's name, a file's path, or a PACS instance's UIDs (and its path)."""

    kind: str
    name: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    instance_uid: str | None = None

    @classmethod
    def file(cls, path: str | Path) -> ReadingSource:
        """A file read from disk, by its absolute path (so a verdict CSV written elsewhere still finds it)."""
        return cls(FILE, str(Path(path).expanduser().resolve()))

    @classmethod
    def upload(cls, name: str) -> ReadingSource:
        return cls(UPLOAD, str(name))


@dataclass
class NewReading:
    """One reading as it will be stored (no pixels): from a Reading (new_reading) or written directly."""

    source: ReadingSource
    model: str
    card_hash: str
    operating_point: str
    threshold: float
    probability: float | None
    decision: str | None
    pixel_sha256: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    time: datetime | None = None  # now, when None
    model_sha256: str | None = None  # the model file's SHA-256 (model_file_sha256), when it was read from a file


def new_reading(
    reading: Reading, loaded: LoadedModel, source: ReadingSource, pixel_hash: str | None = None
) -> NewReading:
    """A Reading as a row to store. pixel_hash: the film's pixel_sha256 when the caller computed it (the Predict
    page, whose batch keeps smaller films); otherwise it is taken of the reading's film, when it has one."""
    if pixel_hash is None and reading.xray is not None:
        pixel_hash = pixel_sha256(reading.xray.pixels)
    return NewReading(
        source=source,
        model=str(loaded.card.name),
        model_sha256=model_file_sha256(loaded.path),
        card_hash=card_hash(loaded),
        operating_point=str(getattr(loaded, "operating_point", "shipped")),
        threshold=float(loaded.threshold),
        probability=None if reading.probability is None else float(reading.probability),
        decision=reading.decision,
        pixel_sha256=pixel_hash,
        warnings=[str(w) for w in reading.warnings],
        error=reading.error,
    )


def drift_json(drift: Any) -> dict[str, Any] | None:
    """A batch's drift check (pneumo.evaluation.drift.DriftResult, or a mapping) as a JSON object, or None."""
    if drift is None:
        return None
    if dataclasses.is_dataclass(drift) and not isinstance(drift, type):
        drift = dataclasses.asdict(drift)
    if not isinstance(drift, Mapping):
        raise RecordsError(f"a drift result must be a mapping or a dataclass, not {type(drift).__name__}")
    out = jsonable(dict(drift))
    return out if isinstance(out, dict) else None


def _check(entry: NewReading) -> None:
    if entry.source.kind not in SOURCE_KINDS:
        raise RecordsError(f"unknown reading source {entry.source.kind!r} (known: {', '.join(sorted(SOURCE_KINDS))})")
    if entry.probability is not None and not 0.0 <= entry.probability <= 1.0:
        raise RecordsError(f"a probability lies in [0, 1], not {entry.probability}")
    if not 0.0 <= entry.threshold <= 1.0:
        raise RecordsError(f"a threshold lies in [0, 1], not {entry.threshold}")
    if entry.model_sha256 is not None and not _is_sha256(entry.model_sha256):
        raise RecordsError(f"a model file's SHA-256 is 64 hexadecimal digits, not {entry.model_sha256[:80]!r}")


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def add_readings(
    entries: Sequence[NewReading],
    *,
    user: str | None = None,
    drift: Any = None,
    url: str | None = None,
    records: Records | None = None,
) -> list[int]:
    """Store readings (one batch: drift is its drift check) and one audit event each, all or none; their ids."""
    for entry in entries:
        _check(entry)
    if not entries:
        return []
    user = (user or current_user())[:200]
    batch_drift = drift_json(drift)
    records = records or open_records(url)
    ids: list[int] = []
    with records.writing() as session:
        for entry in entries:
            row = ReadingRow(
                time=entry.time or now(),
                user=user,
                source_kind=entry.source.kind,
                source_name=entry.source.name,
                study_uid=entry.source.study_uid,
                series_uid=entry.source.series_uid,
                instance_uid=entry.source.instance_uid,
                pixel_sha256=entry.pixel_sha256,
                model=entry.model,
                model_sha256=entry.model_sha256,
                card_hash=entry.card_hash,
                operating_point=entry.operating_point,
                threshold=float(entry.threshold),
                probability=entry.probability,
                decision=entry.decision,
                warnings=list(entry.warnings),
                error=entry.error,
                drift=batch_drift,
            )
            session.add(row)
            session.flush()  # the id, which the row's hash covers
            append_event(
                session,
                READING,
                f"reading {row.id}",
                "rejected" if entry.error else (entry.decision or "no decision"),
                user=user,
                details={"id": row.id, "row_sha256": reading_sha256(row)},
                time=row.time,
            )
            ids.append(row.id)
    return ids


def log_readings(
    readings: Sequence[Reading],
    loaded: LoadedModel,
    *,
    sources: Sequence[ReadingSource] | None = None,
    pixel_hashes: Sequence[str | None] | None = None,
    drift: Any = None,
    user: str | None = None,
    url: str | None = None,
) -> list[int]:
    """Store a batch of readings made by `loaded` at its operating point in force; their ids, in order.

    sources: one per reading (default: each reading's name as an upload). pixel_hashes: one per reading, each
    pixel_sha256 of the film as read (needed where the readings hold smaller films, as the Predict page's batch
    does); None entries, or no list, are taken from each reading's film. drift: the batch's drift check."""
    if sources is not None and len(sources) != len(readings):
        raise RecordsError(f"{len(sources)} sources for {len(readings)} readings")
    if pixel_hashes is not None and len(pixel_hashes) != len(readings):
        raise RecordsError(f"{len(pixel_hashes)} pixel hashes for {len(readings)} readings")
    entries = [
        new_reading(
            reading,
            loaded,
            sources[i] if sources is not None else ReadingSource.upload(reading.name),
            pixel_hashes[i] if pixel_hashes is not None else None,
        )
        for i, reading in enumerate(readings)
    ]
    return add_readings(entries, user=user, drift=drift, url=url)


def log_pacs_run(
    run: Any,
    loaded: LoadedModel,
    *,
    pixel_hashes: Mapping[str, str] | None = None,
    user: str | None = None,
    url: str | None = None,
) -> list[int]:
    """Store the films a PACS run (pneumo.integrations.pacs.ScreenRun) read itself, with the run's drift check; ids.

    Films reported from an earlier SR ("already screened"), skipped, unreadable or failed on the server's side before
    they were read are not readings made now and are left out. A film that was read but whose results could not be
    stored back (the STOW-RS refused, or the SR could not be written) was read all the same: it is logged, its
    warnings saying the results are not in the PACS (the failed store is also its own PACS store event). A film's
    pixel hash comes from pixel_hashes (by SOP instance UID) or from its reading's film when the run kept pixels;
    otherwise it is None, and the film is known by its UIDs."""
    from pneumo.integrations.pacs.results import (
        FAILED,
        SCREENED,
    )  # here: the PACS package imports this module's callers

    entries: list[NewReading] = []
    for result in run.results:
        reading = getattr(result, "reading", None)
        if reading is None or reading.error or reading.probability is None:
            continue  # nothing was read: retrieving or decoding the film failed, or it came from an earlier SR
        if result.status not in (SCREENED, FAILED):
            continue
        source = ReadingSource(PACS, result.path, result.study_uid, result.series_uid, result.sop_uid)
        known = (pixel_hashes or {}).get(result.sop_uid or "")
        entry = new_reading(reading, loaded, source, known)
        entry.warnings = [str(w) for w in result.warnings]  # the run's own notes (untrusted SRs) included
        if result.status == FAILED:  # read, then the store-back failed: screening sets FAILED only then for a read film
            entry.warnings.append(f"results not stored in the PACS: {str(result.error or 'unknown failure')[:500]}")
        entries.append(entry)
    return add_readings(entries, user=user, drift=getattr(run, "drift", None), url=url)


def reading_dict(row: ReadingRow) -> dict[str, Any]:
    """A stored reading as a JSON object."""
    return {
        "id": row.id,
        "time": row.time.isoformat(),
        **{c: getattr(row, c) for c in ReadingRow.__table__.columns.keys() if c not in ("id", "time")},
    }


def reading_ids_by_instance(
    instance_uids: Sequence[str],
    *,
    model: str,
    card_hash: str,
    url: str | None = None,
    records: Records | None = None,
) -> dict[str, int]:
    """The newest reading of each PACS instance by this model and card: {SOP instance UID: reading id}. For the app,
    whose PACS runs are logged by the screening itself, to key its verdict buttons."""
    from sqlalchemy import select

    records = records or open_records(url)
    uids = [u for u in dict.fromkeys(instance_uids) if u]
    found: dict[str, int] = {}
    with records.reading() as session:
        for start in range(0, len(uids), 500):
            query = (
                select(ReadingRow.instance_uid, ReadingRow.id)
                .where(
                    ReadingRow.instance_uid.in_(uids[start : start + 500]),
                    ReadingRow.model == model,
                    ReadingRow.card_hash == card_hash,
                )
                .order_by(ReadingRow.id)
            )
            for uid, reading_id in session.execute(query):
                found[str(uid)] = int(reading_id)  # ordered by id: the newest wins
    return found


def read_before(
    pixel_hashes: Sequence[str | None],
    reading_ids: Sequence[int | None],
    *,
    url: str | None = None,
    records: Records | None = None,
) -> list[dict[str, Any] | None]:
    """For each film, its newest reading stored before this one (a smaller id) with the same pixel hash, by any
    model, or None: "this film was read before, on this day, with this result". The films of one batch come in
    pairs of (pixel hash, this reading's id); a film without a hash or an id has no history to show."""
    from sqlalchemy import select

    records = records or open_records(url)
    wanted = sorted({h for h in pixel_hashes if h})
    newest: dict[str, list[ReadingRow]] = {}
    with records.reading() as session:
        for start in range(0, len(wanted), 500):
            query = (
                select(ReadingRow)
                .where(ReadingRow.pixel_sha256.in_(wanted[start : start + 500]))
                .order_by(ReadingRow.id.desc())
            )
            for row in session.scalars(query):
                newest.setdefault(str(row.pixel_sha256), []).append(row)
        out: list[dict[str, Any] | None] = []
        for pixel_hash, reading_id in zip(pixel_hashes, reading_ids):
            rows = newest.get(pixel_hash or "", [])
            earlier = next((r for r in rows if reading_id is not None and r.id < reading_id), None)
            out.append(reading_dict(earlier) if earlier is not None and pixel_hash else None)
    return out


def recent_readings(
    user: str, limit: int = 20, *, url: str | None = None, records: Records | None = None
) -> list[dict[str, Any]]:
    """A user's newest readings, newest first: what the Predict page lists as the user's history."""
    from sqlalchemy import select

    records = records or open_records(url)
    with records.reading() as session:
        query = select(ReadingRow).where(ReadingRow.user == user).order_by(ReadingRow.id.desc()).limit(max(1, limit))
        return [reading_dict(row) for row in session.scalars(query)]
