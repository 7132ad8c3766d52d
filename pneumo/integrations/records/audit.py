"""The audit trail: append-only events, each carrying the SHA-256 of the event before it and of itself.

Kinds: login, reading, verdict, threshold saved, site point applied, training started and stopped, export, PACS
store; each with who, when, what (object) and how it ended (outcome). An event's hash covers its own fields and the
previous event's hash, so an event edited afterwards no longer matches its hash, and one removed from the middle
leaves the next event pointing at a hash no event has. A reading's and a verdict's event also carries the hash of
its row, so an edited or removed reading or verdict is found too.

What the chain cannot show on its own: the newest events removed together with the rows they record (the chain is
then a shorter, intact chain). Two cheap guards, each with its limit:

- The head file: every write that appends events also writes the newest event's id and hash to a small JSON file
  outside the database (beside an SQLite file, `pneumo.db.audit-head.json`; anywhere PNEUMO_AUDIT_HEAD names, which
  PostgreSQL needs, having no file of its own). verify fails when the trail no longer holds that event with that
  hash, and a writer that finds it gone leaves the file as it is rather than move it past the evidence. It catches
  a database restored from an older copy, events deleted by hand or by a tool, a database replaced by a rebuilt
  chain. It cannot catch someone who rewrites the head file as well: whoever can write both files can make them
  agree. Kept elsewhere (another volume, a file only the writing account may change) it raises that bar, no more.
  Concurrent writers may leave it a few events behind the newest: it then guards fewer events, never wrongly.
- The head printed by `audit-log --verify` (the newest event's id and hash): recorded by an operator in another
  system (a ticket, a log the database's owner cannot change), `audit-log --verify --expect-head HASH` later fails
  when no event of the trail carries that hash. This is the guard that holds against the database's owner.

A PostgreSQL role that may only INSERT on these tables is stronger than either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from pneumo.integrations.records.db import Records, RecordsError, open_records
from pneumo.integrations.records.schema import EventRow, ReadingRow, VerdictRow

GENESIS = "0" * 64  # the "previous hash" of the first event

LOGIN = "login"
READING = "reading"
VERDICT = "verdict"
THRESHOLD_SAVED = "threshold_saved"
SITE_POINT_APPLIED = "site_point_applied"
TRAINING_STARTED = "training_started"
TRAINING_STOPPED = "training_stopped"
EXPORT = "export"
PACS_STORE = "pacs_store"
KINDS = frozenset(
    {
        LOGIN,
        READING,
        VERDICT,
        THRESHOLD_SAVED,
        SITE_POINT_APPLIED,
        TRAINING_STARTED,
        TRAINING_STOPPED,
        EXPORT,
        PACS_STORE,
    }
)
OK, REFUSED, FAILED = "ok", "refused", "failed"
PG_CHAIN_LOCK = 0x706E65756D6F  # "pneumo": the advisory lock PostgreSQL writers take before appending


ENV_AUDIT_HEAD = "PNEUMO_AUDIT_HEAD"  # where the head file is kept (any backend); default: beside an SQLite file
HEAD_SUFFIX = ".audit-head.json"
HEAD_MAX_BYTES = 64 * 1024
_log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(timezone.utc)


def _time_text(value: datetime) -> str:
    """The one text a stored time hashes as: UTC, microseconds (what both SQLite and PostgreSQL keep)."""
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def jsonable(obj: Any) -> Any:
    """obj as the JSON column gives it back (numbers, strings, lists, objects): what was hashed is what is read."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False, default=_plain))
    except ValueError as exc:  # NaN or infinity: JSON has no such number
        raise RecordsError(f"cannot be recorded as JSON ({exc})") from None


def _plain(obj: Any) -> Any:
    """numpy numbers and arrays, paths and other simple objects as JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, datetime):
        return _time_text(obj)
    return str(obj)


def event_sha256(event: EventRow | Mapping[str, Any]) -> str:
    """The hash an event must carry: of its fields (not its id, which the database assigns) and prev_sha256."""
    get = event.get if isinstance(event, Mapping) else lambda key: getattr(event, key)
    time = get("time")
    payload = {
        "time": _time_text(time) if isinstance(time, datetime) else str(time),
        "user": get("user"),
        "kind": get("kind"),
        "object": get("object"),
        "outcome": get("outcome"),
        "details": get("details"),
        "prev_sha256": get("prev_sha256"),
    }
    return hashlib.sha256(_canonical(payload)).hexdigest()


def reading_sha256(row: ReadingRow) -> str:
    """The hash of a reading row as stored (its id included), recorded in its event.

    model_sha256 (migration 0002) is hashed only when it holds a value: a reading logged before that column existed
    hashes as it did then, and a value added to it or removed from a newer row afterwards changes the hash."""
    payload: dict[str, Any] = {
        "id": row.id,
        "time": _time_text(row.time),
        **{
            key: getattr(row, key)
            for key in (
                "user",
                "source_kind",
                "source_name",
                "study_uid",
                "series_uid",
                "instance_uid",
                "pixel_sha256",
                "model",
                "card_hash",
                "operating_point",
                "threshold",
                "probability",
                "decision",
                "warnings",
                "error",
                "drift",
            )
        },
    }
    if row.model_sha256 is not None:
        payload["model_sha256"] = row.model_sha256
    return hashlib.sha256(_canonical(payload)).hexdigest()


def verdict_sha256(row: VerdictRow) -> str:
    """The hash of a verdict row as stored (its id included), recorded in its event."""
    payload = {
        "id": row.id,
        "time": _time_text(row.time),
        "user": row.user,
        "reading_id": row.reading_id,
        "label": row.label,
        "origin": row.origin,
    }
    return hashlib.sha256(_canonical(payload)).hexdigest()


def _check_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordsError(f"an audit event needs a {what}")
    if len(value) > limit:
        raise RecordsError(f"an audit event's {what} has at most {limit} characters")
    return value


# ---------------------------------------------------------------------- the head file


@dataclass(frozen=True)
class Head:
    """The newest event a writer appended: its id and hash, as the head file keeps them."""

    event_id: int
    sha256: str


def head_file(url: Any, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the head file of the database at url is kept: PNEUMO_AUDIT_HEAD, else beside an SQLite file; None for a
    database with no file (PostgreSQL without PNEUMO_AUDIT_HEAD, SQLite in memory)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_AUDIT_HEAD):
        return Path(environ[ENV_AUDIT_HEAD]).expanduser()
    try:
        parsed = make_url(str(url)) if not hasattr(url, "get_backend_name") else url
    except (ArgumentError, ValueError):
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    found = Path(database).expanduser().resolve()
    return found.with_name(found.name + HEAD_SUFFIX)


def read_head(path: Path) -> Head | None:
    """The head a file records; None when there is no such file. RecordsError, naming the file, for one that cannot
    be read or is not a head file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(HEAD_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordsError(f"{path}: the audit head file cannot be read ({exc.strerror or exc})") from None
    try:
        if len(data) > HEAD_MAX_BYTES:
            raise ValueError(f"over {HEAD_MAX_BYTES} bytes")
        found = json.loads(data)
        head = Head(int(found["event_id"]), str(found["sha256"]))
        if head.event_id < 1 or len(head.sha256) != 64:
            raise ValueError("no event id and SHA-256")
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordsError(f"{path}: not an audit head file ({exc})") from None
    return head


def _write_head(path: Path, head: Head) -> None:
    """Replace the head file, atomically (a reader sees the old file or the new one, never half of one); only ever
    forward, so that a writer that committed earlier but got here later does not move it back."""
    try:
        earlier = read_head(path)
    except RecordsError:
        earlier = None  # unreadable: the newest head replaces it, and verify has said what it found
    if earlier is not None and earlier.event_id >= head.event_id:
        return
    body = json.dumps({"event_id": head.event_id, "sha256": head.sha256, "written": _time_text(now())}) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # the mode the file had (mkstemp's 0600 would shut out other accounts that verify or write the trail)
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(body)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _head_holds(session: Session, path: Path) -> bool:
    """Whether the trail still holds the event the head file records (or there is no head file yet): only then may
    a writer move the file forward. Otherwise the file is the evidence that events were removed, and stays."""
    try:
        head = read_head(path)
    except RecordsError as exc:
        _log.warning("audit head not advanced: %s", exc)
        return False
    if head is None:
        return True
    found = session.execute(select(EventRow.sha256).where(EventRow.id == head.event_id)).scalar_one_or_none()
    if found != head.sha256:
        _log.warning(
            "audit head not advanced: %s records event %d, which the trail no longer holds with that hash "
            "(run `pneumo audit-log --verify`)",
            path,
            head.event_id,
        )
        return False
    return True


def _track_head(session: Session, row: EventRow) -> None:
    """Note the newest event appended in this session; once, check the head file and arrange for it to be written
    when the transaction commits (not before: a rolled-back event must not become the head)."""
    info = session.info
    if "pneumo_head_file" not in info:
        path = head_file(session.get_bind().engine.url)
        info["pneumo_head_file"] = path if path is not None and _head_holds(session, path) else None
        if info["pneumo_head_file"] is not None:
            sa_event.listen(session, "after_commit", _after_commit)
    info["pneumo_head"] = Head(int(row.id), str(row.sha256))


def _after_commit(session: Session) -> None:
    path, head = session.info.get("pneumo_head_file"), session.info.pop("pneumo_head", None)
    if path is None or head is None:
        return
    try:
        _write_head(path, head)
    except OSError as exc:  # the events are committed: a head file that cannot be written costs the guard, not them
        _log.warning("audit head file %s not written: %s", path, exc.strerror or exc)


def append_event(
    session: Session,
    kind: str,
    object: str,
    outcome: str = OK,
    *,
    user: str,
    details: Mapping[str, Any] | None = None,
    time: datetime | None = None,
) -> EventRow:
    """Append one event inside a writing session (Records.writing), chained to the newest event. The caller's
    transaction holds the write lock (SQLite) or the chain's advisory lock (PostgreSQL, taken here), so the newest
    event cannot change before this one is written; the unique prev_sha256 refuses a fork on any other backend."""
    if kind not in KINDS:
        raise RecordsError(f"unknown audit event kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    _check_text(user, "user", 200)
    _check_text(outcome, "outcome", 32)
    _check_text(object, "object", 2000)
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_CHAIN_LOCK})
    last = session.execute(select(EventRow.sha256).order_by(EventRow.id.desc()).limit(1)).scalar_one_or_none()
    row = EventRow(
        time=time or now(),
        user=user,
        kind=kind,
        object=object,
        outcome=outcome,
        details=None if details is None else jsonable(dict(details)),
        prev_sha256=last or GENESIS,
    )
    row.sha256 = event_sha256(row)
    session.add(row)
    session.flush()
    _track_head(session, row)
    return row


def log_event(
    kind: str,
    object: str,
    outcome: str = OK,
    *,
    user: str,
    details: Mapping[str, Any] | None = None,
    url: str | None = None,
    records: Records | None = None,
) -> int:
    """Record one event (a login, a threshold saved, a site point applied, training started or stopped, an export,
    a PACS store) in its own transaction; its id."""
    records = records or open_records(url)
    with records.writing() as session:
        return append_event(session, kind, object, outcome, user=user, details=details).id


def try_log_event(
    kind: str,
    object: str,
    outcome: str = OK,
    *,
    user: str,
    details: Mapping[str, Any] | None = None,
    url: str | None = None,
) -> str | None:
    """log_event for a change already made (a saved card, a stored study): a database that cannot be written costs
    the event, never the change. None when the event was written, else why not, in one line for the caller to say
    (stderr, the page, the log)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        log_event(kind, object, outcome, user=user, details=details, url=url)
    except (RecordsError, OSError, SQLAlchemyError) as exc:
        return str(exc)
    return None


def event_dict(row: EventRow) -> dict[str, Any]:
    """An event as its JSON line."""
    return {
        "id": row.id,
        "time": _time_text(row.time),
        "user": row.user,
        "kind": row.kind,
        "object": row.object,
        "outcome": row.outcome,
        "details": row.details,
        "prev_sha256": row.prev_sha256,
        "sha256": row.sha256,
    }


def iter_events(records: Records, since: datetime | None = None, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every event (from `since`, inclusive) in order, as JSON objects, read in batches."""
    with records.reading() as session:
        query = select(EventRow).order_by(EventRow.id)
        if since is not None:
            query = query.where(EventRow.time >= since)
        for row in session.scalars(query.execution_options(yield_per=batch)):
            yield event_dict(row)


@dataclass
class Verification:
    """What verify found: ok, how many events it checked, the first bad event's id (None when the first problem is
    in a reading or verdict row, or there is none) and every problem, first first."""

    events: int
    problems: list[str] = field(default_factory=list)
    first_bad_event: int | None = None
    head_event: int | None = None  # the newest event: what an operator records elsewhere (with its hash)
    head_sha256: str | None = None
    head_file: str | None = None  # the head file checked, None when the database has none
    head_file_event: int | None = None  # the event it records, None when there is no such file yet

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_bad_event": self.first_bad_event,
            "head_event": self.head_event,
            "head_sha256": self.head_sha256,
            "head_file": self.head_file,
            "head_file_event": self.head_file_event,
            "problems": list(self.problems),
        }


MAX_PROBLEMS = 100


def verify(records: Records, batch: int = 1000, expect_head: str | None = None) -> Verification:
    """Walk the chain from the first event: each event's hash recomputed, each event's previous hash against the
    event before it; then every reading and verdict row against the hash its event recorded (and every such event
    against a row that still exists); then the end of the chain against the head file (the newest events removed)
    and, when given, against expect_head: a hash an operator recorded, which some event must still carry."""
    result = Verification(events=0)
    checkpoint_path = head_file(records.engine.url)
    checkpoint: Head | None = None
    if checkpoint_path is not None:
        result.head_file = str(checkpoint_path)
        checkpoint = read_head(checkpoint_path)  # RecordsError naming the file: the check cannot be made
        result.head_file_event = checkpoint.event_id if checkpoint else None
    found_checkpoint: str | None = None
    expected = expect_head.strip().lower() if expect_head else None
    expected_found = False

    def bad(message: str, event_id: int | None) -> None:
        if result.first_bad_event is None and event_id is not None and not result.problems:
            result.first_bad_event = event_id
        if len(result.problems) < MAX_PROBLEMS:
            result.problems.append(message)

    recorded: dict[str, dict[int, tuple[int, str]]] = {READING: {}, VERDICT: {}}
    with records.reading() as session:
        previous, previous_id = GENESIS, None
        for row in session.scalars(select(EventRow).order_by(EventRow.id).execution_options(yield_per=batch)):
            result.events += 1
            if event_sha256(row) != row.sha256:
                bad(
                    f"event {row.id} ({row.kind}, {_time_text(row.time)}): its content does not match its hash "
                    "(edited after it was written)",
                    row.id,
                )
            if row.prev_sha256 != previous:
                after = f"event {previous_id}" if previous_id is not None else "the start of the trail"
                bad(
                    f"event {row.id} ({row.kind}, {_time_text(row.time)}): does not follow {after} (an event "
                    "before it was removed, or edited and given a new hash)",
                    row.id,
                )
            previous, previous_id = row.sha256, row.id
            if checkpoint is not None and row.id == checkpoint.event_id:
                found_checkpoint = row.sha256
            expected_found = expected_found or row.sha256 == expected
            if row.kind in recorded and isinstance(row.details, dict):
                target, digest = row.details.get("id"), row.details.get("row_sha256")
                if isinstance(target, int) and isinstance(digest, str):
                    recorded[row.kind][target] = (row.id, digest)
        rows: list[tuple[str, Any, Callable[[Any], str]]] = [
            (READING, select(ReadingRow).order_by(ReadingRow.id), reading_sha256),
            (VERDICT, select(VerdictRow).order_by(VerdictRow.id), verdict_sha256),
        ]
        for kind, query, digest_of in rows:
            seen: set[int] = set()
            for item in session.scalars(query.execution_options(yield_per=batch)):
                seen.add(item.id)
                entry = recorded[kind].get(item.id)
                if entry is None:
                    bad(f"{kind} {item.id}: no audit event records it (its event was removed)", None)
                elif digest_of(item) != entry[1]:
                    bad(f"{kind} {item.id}: differs from what event {entry[0]} recorded (edited)", entry[0])
            for target, (event_id, _) in sorted(recorded[kind].items()):
                if target not in seen:
                    bad(f"event {event_id} records {kind} {target}, which is gone (removed)", event_id)
    result.head_event, result.head_sha256 = previous_id, (previous if previous_id is not None else None)
    ends = f"event {previous_id}" if previous_id is not None else "no event"
    if checkpoint is not None and found_checkpoint is None:
        bad(
            f"the trail ends at {ends}, but the head file {checkpoint_path} records event {checkpoint.event_id}: "
            "the newest events were removed (truncated), or the database was replaced by an older or another one",
            None,
        )
    elif checkpoint is not None and found_checkpoint != checkpoint.sha256:
        bad(
            f"event {checkpoint.event_id} does not carry the hash the head file {checkpoint_path} records for it: "
            "the trail was rewritten from there, or the database was replaced by another one",
            checkpoint.event_id,
        )
    if expected is not None and not expected_found:
        bad(
            f"no event carries the expected head {expected[:64]}: the trail ends at {ends}; the events up to the "
            "recorded head were removed or rewritten",
            None,
        )
    return result
