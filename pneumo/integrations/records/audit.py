"""The audit trail: append-only events, each carrying the SHA-256 of the event before it and of itself.

Kinds: login, reading, verdict, threshold saved, site point applied, training started and stopped, export, PACS
store; each with who, when, what (object) and how it ended (outcome). An event's hash covers its own fields and the
previous event's hash, so an event edited afterwards no longer matches its hash, and one removed from the middle
leaves the next event pointing at a hash no event has. A reading's and a verdict's event also carries the hash of
its row, so an edited or removed reading or verdict is found too.

What the chain cannot show on its own: the newest events removed together with the rows they record (the chain is
then a shorter, intact chain). A deployment that must prove that keeps a copy of the last hash elsewhere (the
audit-log export, or `verify`'s line, in another system's log), or uses a PostgreSQL role that may only INSERT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, text
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
    """The hash of a reading row as stored (its id included), recorded in its event."""
    payload = {
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

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_bad_event": self.first_bad_event,
            "problems": list(self.problems),
        }


MAX_PROBLEMS = 100


def verify(records: Records, batch: int = 1000) -> Verification:
    """Walk the chain from the first event: each event's hash recomputed, each event's previous hash against the
    event before it; then every reading and verdict row against the hash its event recorded (and every such event
    against a row that still exists)."""
    result = Verification(events=0)

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
    return result
