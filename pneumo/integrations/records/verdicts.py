"""Readers' verdicts on logged readings: one at a time (the app) or a CSV of them (`pneumo verdicts import`).

A verdict is a reader's label for the film of a reading, PNEUMONIA or NORMAL. Verdicts are only added: a reader who
changes their mind adds another, and the newest verdict on a film is the one the monitor counts.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from pneumo.core.paths import CLASS_NAMES
from pneumo.integrations.records.audit import VERDICT, append_event, now, verdict_sha256
from pneumo.integrations.records.db import Records, RecordsError, open_records
from pneumo.integrations.records.readings import FILE, PACS, UPLOAD, pixel_sha256
from pneumo.integrations.records.schema import ReadingRow, VerdictRow

NORMAL, PNEUMONIA = CLASS_NAMES
LABELS = {
    "pneumonia": PNEUMONIA,
    "1": PNEUMONIA,
    "positive": PNEUMONIA,
    "normal": NORMAL,
    "0": NORMAL,
    "negative": NORMAL,
}
MAX_CSV_BYTES = 64 * 2**20
MAX_LISTED = 200  # unmatched and invalid rows listed in a report (all are counted)


def label_of(value: Any) -> str | None:
    """A reader's label (PNEUMONIA/NORMAL, 1/0, positive/negative, any case), or None when it is none of these."""
    return LABELS.get(str(value).strip().lower()) if value is not None else None


def _reader(user: Any) -> str:
    if not isinstance(user, str) or not user.strip():
        raise RecordsError("a verdict needs the reader's name")
    return user.strip()[:200]


def _store(session: Session, reading_id: int, label: str, user: str, origin: str, time: datetime) -> VerdictRow:
    row = VerdictRow(time=time, user=user, reading_id=reading_id, label=label, origin=origin[:300])
    session.add(row)
    session.flush()
    append_event(
        session,
        VERDICT,
        f"verdict {row.id} on reading {reading_id}",
        label,
        user=user,
        details={"id": row.id, "row_sha256": verdict_sha256(row)},
        time=time,
    )
    return row


def add_verdict(
    reading_id: int,
    label: str,
    *,
    user: str,
    origin: str = "app",
    url: str | None = None,
    records: Records | None = None,
) -> int:
    """Record a reader's verdict on one reading (by its id); the verdict's id. RecordsError for an unknown reading
    or a label that is neither PNEUMONIA nor NORMAL."""
    found = label_of(label)
    if found is None:
        raise RecordsError(f"a verdict is PNEUMONIA or NORMAL, not {str(label)[:40]!r}")
    user = _reader(user)
    records = records or open_records(url)
    with records.writing() as session:
        if session.get(ReadingRow, int(reading_id)) is None:
            raise RecordsError(f"no reading {reading_id} in {records.url}")
        return _store(session, int(reading_id), found, user, origin, now()).id


def latest_by_reading(session: Session, reading_ids: Sequence[int]) -> dict[int, VerdictRow]:
    """The newest verdict on each of these readings (by time, then by id)."""
    out: dict[int, VerdictRow] = {}
    if not reading_ids:
        return out
    for start in range(0, len(reading_ids), 500):  # bounded IN lists
        chunk = list(reading_ids[start : start + 500])
        for row in session.scalars(
            select(VerdictRow).where(VerdictRow.reading_id.in_(chunk)).order_by(VerdictRow.time, VerdictRow.id)
        ):
            out[row.reading_id] = row
    return out


def latest_verdict(reading_id: int, *, url: str | None = None, records: Records | None = None) -> dict[str, Any] | None:
    """The newest verdict on a reading as {id, label, user, time, origin}, or None."""
    records = records or open_records(url)
    with records.reading() as session:
        row = latest_by_reading(session, [int(reading_id)]).get(int(reading_id))
        if row is None:
            return None
        return {"id": row.id, "label": row.label, "user": row.user, "time": row.time.isoformat(), "origin": row.origin}


@dataclass
class ImportReport:
    """What `verdicts import` did: rows read, matched to readings and not, verdicts stored or already there."""

    file: str
    reader: str
    rows: int = 0
    matched: int = 0  # rows that found at least one logged reading
    stored: int = 0  # verdicts added (one per matched reading whose newest verdict by this reader differed)
    unchanged: int = 0  # readings whose newest verdict by this reader already said the same
    readings: int = 0  # distinct readings a verdict now applies to
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    # Rows whose name matches readings of more than one film (an upload's bare name, or a path read twice with
    # different content): not applied, since the verdict could land on the wrong film.
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    unmatched_count: int = 0
    invalid_count: int = 0
    ambiguous_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_rows(path: Path) -> tuple[list[dict[str, str]], str]:
    """The CSV's rows (keys lower-cased) and the key they are matched by ("sha256" or "path")."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise RecordsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size > MAX_CSV_BYTES:
        raise RecordsError(f"{path}: {size / 2**20:.0f} MB; a verdicts CSV holds at most {MAX_CSV_BYTES // 2**20} MB")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(h or "").strip().lower() for h in reader.fieldnames or []]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordsError(f"{path}: cannot be read as a CSV ({exc})") from None
    if "label" not in header or not ({"path", "sha256"} & set(header)):
        raise RecordsError(
            f"{path}: needs a header with label and path or sha256 (path,label or sha256,label); got "
            f"{', '.join(header) or 'none'}"
        )
    return rows, "sha256" if "sha256" in header else "path"


def _path_candidates(value: str, base: Path) -> list[str]:
    """The names a file reading may be stored under: as written, and resolved against the CSV's folder and the
    working directory (a file's reading keeps its absolute path)."""
    names = [value]
    given = Path(value).expanduser()
    for candidate in [given] if given.is_absolute() else [base / given, Path.cwd() / given]:
        try:
            names.append(str(candidate.resolve()))
        except (OSError, RuntimeError, ValueError):
            continue
    return list(dict.fromkeys(names))


def _by_pixels(names: Sequence[str]) -> str | None:
    """The pixel hash of the first of these files that decodes (the film as it is now, wherever it was read)."""
    from pneumo.data.decode import load_xray
    from pneumo.data.pixels import InvalidImageError

    for name in names:
        if Path(name).is_file():
            try:
                return pixel_sha256(load_xray(name).pixels)
            except (InvalidImageError, OSError, ValueError):
                continue
    return None


def _film(row: ReadingRow) -> str:
    """What one film is known by (the monitor's key): its pixel hash, else its PACS instance, else the reading."""
    return row.pixel_sha256 or (f"instance {row.instance_uid}" if row.instance_uid else f"reading {row.id}")


def _every_reading_of(session: Session, rows: Sequence[ReadingRow]) -> list[int]:
    """The readings found, with every other reading of the same pixels (the film read again, by another model)."""
    ids = {r.id for r in rows}
    hashes = sorted({r.pixel_sha256 for r in rows if r.pixel_sha256})
    for start in range(0, len(hashes), 500):
        ids |= set(
            session.scalars(select(ReadingRow.id).where(ReadingRow.pixel_sha256.in_(hashes[start : start + 500])))
        )
    return sorted(ids)


def _match_path(session: Session, value: str, base: Path, decode: bool) -> tuple[list[int], str | None, bool]:
    """The readings a path row names: (their ids, why none or why not applied, whether that is an ambiguity).

    In order, the first that finds anything decides:
    1. the pixel hash of the file at that path, when it exists and decodes (with decode): the film the reader has
       in front of them, wherever and under whatever name it was read. A file that decodes to pixels no reading has
       matches nothing: a reading of another film that once lay at that path must not take its verdict;
    2. the exact path: a file reading's absolute path (the row resolved against the CSV's folder, then the working
       directory), a PACS instance's DICOMweb path or SOP instance UID;
    3. the bare name as written: an upload's name, which carries no folder, so readings of different films may
       share it.
    Where 2 or 3 find readings of more than one film, the row is ambiguous and nothing is applied."""
    names = _path_candidates(value, base)
    resolved = [n for n in names if Path(n).is_absolute()]
    if decode:
        digest = _by_pixels(resolved)
        if digest is not None:
            ids = list(session.scalars(select(ReadingRow.id).where(ReadingRow.pixel_sha256 == digest)))
            if ids:
                return sorted(ids), None, False
            return [], "the file at this path holds a film no logged reading has (changed since it was read?)", False
    exact = select(ReadingRow).where(
        or_(
            and_(ReadingRow.source_kind == FILE, ReadingRow.source_name.in_(resolved)),
            and_(
                ReadingRow.source_kind == PACS, or_(ReadingRow.source_name == value, ReadingRow.instance_uid == value)
            ),
        )
    )
    bare = select(ReadingRow).where(ReadingRow.source_kind == UPLOAD, ReadingRow.source_name == value)
    for query, how in ((exact, "path"), (bare, "name")):
        # A reading whose input could not be read has no film to judge: it neither takes a verdict nor counts as
        # another film beside a good reading of the same path (a file fixed and read again).
        rows = [r for r in session.scalars(query.order_by(ReadingRow.id)) if r.error is None]
        if not rows:
            continue
        films = sorted({_film(r) for r in rows})
        if len(films) > 1:
            shown = ", ".join(f[:20] for f in films[:3]) + (" …" if len(films) > 3 else "")
            return (
                [],
                f"this {how} matches {len(rows)} readings of {len(films)} different films ({shown}); not applied: "
                "give the film's sha256 (or its full path) instead",
                True,
            )
        return _every_reading_of(session, rows), None, False
    return [], "no logged reading of this film", False


def import_verdicts(
    csv_path: str | Path,
    *,
    reader: str,
    url: str | None = None,
    records: Records | None = None,
    decode: bool = True,
) -> ImportReport:
    """Match each row of a `path,label` or `sha256,label` CSV to logged readings and record the reader's verdict
    on each, all in one transaction.

    A sha256 row matches readings by pixel hash (pneumo.integrations.records.readings.pixel_sha256). A path row
    matches by the pixel hash of the file at that path first (with decode), then by exact path (a file's absolute
    path, a PACS instance's path or SOP instance UID), then by an upload's bare name (_match_path); a name that
    matches readings of more than one film is ambiguous, reported and not applied. A row matches every reading of
    its film (the same film read twice, or by two models). A row whose label is not PNEUMONIA/NORMAL is invalid."""
    path = Path(csv_path).expanduser()
    rows, key = _read_rows(path)
    report = ImportReport(file=str(path), reader=_reader(reader))
    base = path.resolve().parent
    records = records or open_records(url)
    time = now()
    covered: set[int] = set()

    def note(target: list[dict[str, Any]], entry: dict[str, Any]) -> None:
        if len(target) < MAX_LISTED:
            target.append(entry)

    with records.writing() as session:
        for number, row in enumerate(rows, start=2):  # the header is line 1
            report.rows += 1
            value, label = row.get(key, ""), label_of(row.get("label"))
            if not value or label is None:
                report.invalid_count += 1
                why = f"label {row.get('label', '')[:40]!r} is not PNEUMONIA or NORMAL" if value else f"no {key}"
                note(report.invalid, {"line": number, key: value[:300], "why": why})
                continue
            problem: str | None = None
            ambiguous = False
            if key == "sha256":
                query = select(ReadingRow.id).where(ReadingRow.pixel_sha256 == value.lower())
                ids = list(session.scalars(query.order_by(ReadingRow.id)))
            else:
                ids, problem, ambiguous = _match_path(session, value, base, decode)
            if ambiguous:
                report.ambiguous_count += 1
                note(report.ambiguous, {"line": number, key: value[:300], "why": problem})
                continue
            if not ids:
                report.unmatched_count += 1
                note(
                    report.unmatched,
                    {"line": number, key: value[:300], "why": problem or "no logged reading of this film"},
                )
                continue
            report.matched += 1
            mine = {
                r.reading_id: r
                for r in session.scalars(
                    select(VerdictRow)
                    .where(VerdictRow.reading_id.in_(ids), VerdictRow.user == report.reader)
                    .order_by(VerdictRow.time, VerdictRow.id)
                )
            }
            for reading_id in ids:
                covered.add(reading_id)
                earlier = mine.get(reading_id)
                if earlier is not None and earlier.label == label:
                    report.unchanged += 1
                    continue
                _store(session, reading_id, label, report.reader, f"csv:{path.name}", time)
                report.stored += 1
    report.readings = len(covered)
    return report
