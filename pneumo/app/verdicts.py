"""The records database in the app: its URL from the deployment, logging a batch once, and a reader's verdict on
one reading (agree / disagree), saved with who and when. What the database says of a batch (its verdicts, films
read before, the user's history) is asked once per batch and kept in the session's state: Streamlit reruns the page
on every click. The maths and the storage are in pneumo.integrations.records; this is Streamlit glue only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import streamlit as st

from pneumo.app import auth
from pneumo.app.ui import plain, settings
from pneumo.integrations.records import (
    NewReading,
    ReadingSource,
    RecordsError,
    add_readings,
    add_verdict,
    database_url,
    new_reading,
)
from pneumo.model.reading import NORMAL, PNEUMONIA

LOGGED_KEY = "_records_logged"  # session state: ("logged", batch key) -> reading ids: a rerun never logs a batch again
NOTICE_KEY = "_records_notice"  # session state: the last verdict's outcome, shown beside its buttons
# Session state: reading id -> (its newest verdict or None, why it could not be read or None). Read for a whole batch
# in one query, and again for one reading after a verdict on it is saved: never on every rerun of the page.
VERDICTS_KEY = "_records_verdicts"
BATCH_READS_KEY = "_records_batch_reads"  # session state: (what, batch key) -> what was read once for that batch
KEPT_BATCHES = 64  # a long session keeps what it read for its newest batches only
KEPT_VERDICTS = 4096

T = TypeVar("T")


def _digest(batch_key: Sequence[Any]) -> str:
    return hashlib.sha256("\n".join(map(str, batch_key)).encode()).hexdigest()


def once_per_batch(what: str, batch_key: Sequence[Any], read: Callable[[], T], store: str = BATCH_READS_KEY) -> T:
    """read() for this batch (batch_key: what makes it, as for log_batch_once), made on the session's first run of
    the batch only and kept in its state under store (the newest KEPT_BATCHES entries): the page reruns on every
    click, the database is asked once."""
    kept: dict[tuple[str, str], Any] = st.session_state.setdefault(store, {})
    key = (what, _digest(batch_key))
    if key not in kept:
        value = read()
        while len(kept) >= KEPT_BATCHES:
            kept.pop(next(iter(kept)))
        kept[key] = value
    return kept[key]


def app_database_url() -> str:
    """The records database: PNEUMO_DATABASE_URL, else `[pneumo] database_url` in the app's secrets, else
    runs/pneumo.db in the runs folder (read as pneumo.app.ui.settings reads its secrets)."""
    try:
        secrets: Any = dict(st.secrets)
    except Exception:  # no secrets.toml: the environment and the default only
        secrets = {}
    return database_url(secrets=secrets)


def audit_event(kind: str, obj: str, outcome: str = "ok", details: dict[str, Any] | None = None) -> None:
    """Append one event of this session's user to the audit trail (pneumo.integrations.records.audit); a database
    that cannot be written costs the event, said on the page, never the change already made."""
    from pneumo.integrations.records import try_log_event

    problem = try_log_event(kind, obj, outcome, user=app_user(), details=details, url=app_database_url())
    if problem:
        st.warning(f"Not written to the audit trail: {plain(problem)}", icon=":material/database:")


def app_user() -> str:
    """Who is using the app (pneumo.app.auth.current_user): the signed-in account, else the local user or
    PNEUMO_USER, else "app visitor"."""
    return auth.current_user()


def log_batch_once(
    readings: Sequence[Any],
    loaded: Any,
    batch_key: Sequence[str],
    *,
    sources: Sequence[ReadingSource] | None = None,
    pixel_hashes: Sequence[str | None] | None = None,
    drift: Any = None,
) -> list[int | None]:
    """The batch's reading ids, logged on the session's first run of this batch only (Streamlit reruns the page on
    every click). batch_key: what makes the batch itself (the films' digests, the model, the band, the threshold).
    drift: the batch's drift check, or a function giving it, called only when the batch is logged (a rerun then
    costs nothing). When the database fails, a warning says so and the ids are None (the page works on; no
    verdicts)."""

    def log() -> list[int | None]:
        entries: list[NewReading] = [
            new_reading(
                r,
                loaded,
                sources[i] if sources is not None else ReadingSource.upload(r.name),
                pixel_hashes[i] if pixel_hashes is not None else None,
            )
            for i, r in enumerate(readings)
        ]
        try:
            batch_drift = drift() if callable(drift) else drift
            return list(add_readings(entries, user=app_user(), drift=batch_drift, url=app_database_url()))
        except RecordsError as exc:
            st.warning(f"These readings were not logged: {plain(exc)}", icon=":material/database:")
            return [None] * len(readings)

    # Its own store: the batches' reads never push a batch's log out, which would log it again.
    return once_per_batch("logged", batch_key, log, store=LOGGED_KEY)


def _save(reading_id: int, label: str, user: str, url: str) -> None:
    """The buttons' callback (runs before the page's next run): the verdict, or why it was not saved. A saved
    verdict is read again for its reading on the next run."""
    try:
        add_verdict(reading_id, label, user=user, origin="app", url=url)
        st.session_state[NOTICE_KEY] = (reading_id, None)
    except RecordsError as exc:
        st.session_state[NOTICE_KEY] = (reading_id, str(exc))
    else:
        st.session_state.get(VERDICTS_KEY, {}).pop(reading_id, None)


def _latest_verdicts(reading_ids: Sequence[int], url: str) -> dict[int, dict[str, Any]]:
    """The newest verdict on each of these readings that has one, in one query, as latest_verdict gives it."""
    from pneumo.integrations.records import open_records
    from pneumo.integrations.records.verdicts import latest_by_reading

    records = open_records(url)
    with records.reading() as session:
        return {
            reading_id: {
                "id": row.id,
                "label": row.label,
                "user": row.user,
                "time": row.time.isoformat(),
                "origin": row.origin,
            }
            for reading_id, row in latest_by_reading(session, [int(i) for i in reading_ids]).items()
        }


def load_verdicts(reading_ids: Sequence[int | None], *, url: str | None = None) -> None:
    """Read the newest verdict on each of a batch's readings that this session does not know yet, in one query
    (verdict_buttons shows them); a database that cannot be read is noted for each, and said on its card."""
    if not auth.can(auth.VERDICT):  # a role without verdicts is shown none
        return
    known: dict[int, tuple[dict[str, Any] | None, str | None]] = st.session_state.setdefault(VERDICTS_KEY, {})
    wanted = list(dict.fromkeys(i for i in reading_ids if i is not None and i not in known))
    if not wanted:
        return
    try:
        found = _latest_verdicts(wanted, url or app_database_url())
    except RecordsError as exc:
        read: dict[int, tuple[dict[str, Any] | None, str | None]] = {i: (None, str(exc)) for i in wanted}
    else:
        read = {i: (found.get(i), None) for i in wanted}
    for old in list(known)[: max(0, len(known) + len(read) - KEPT_VERDICTS)]:
        del known[old]
    known.update(read)


def verdict_buttons(reading_id: int | None, decision: str | None, *, url: str | None = None) -> str | None:
    """Agree / disagree with one logged reading (by its id), saved with the user and the time; the newest verdict's
    label on it, or None. For a PNEUMONIA or NORMAL decision the buttons agree or disagree with it; for an
    uncertain or not-assessable one the reader names the label. Nothing is drawn for a reading that was not logged."""
    if reading_id is None or not auth.can(auth.VERDICT):  # a role without verdicts sees the reading only
        return None
    url = url or app_database_url()
    user = app_user()
    known = st.session_state.get(VERDICTS_KEY, {})
    if reading_id not in known:  # a reading outside the batch read by load_verdicts
        load_verdicts([reading_id], url=url)
        known = st.session_state[VERDICTS_KEY]
    current, problem = known[reading_id]
    if problem is not None:
        st.caption(f"Verdicts unavailable: {plain(problem)}")
        return None
    if decision in (PNEUMONIA, NORMAL):
        other = NORMAL if decision == PNEUMONIA else PNEUMONIA
        choices = [(f"Agree — {decision}", decision), (f"Disagree — {other}", other)]
    else:
        choices = [(f"Reader: {PNEUMONIA}", PNEUMONIA), (f"Reader: {NORMAL}", NORMAL)]
    with st.container(horizontal=True, gap="small"):
        for text, label in choices:
            st.button(
                text,
                key=f"verdict-{reading_id}-{label}",
                on_click=_save,
                args=(reading_id, label, user, url),
                type="primary" if current is not None and current["label"] == label else "secondary",
            )
    notice = st.session_state.get(NOTICE_KEY)
    if notice and notice[0] == reading_id and notice[1]:
        st.warning(f"The verdict was not saved: {plain(notice[1])}", icon=":material/database:")
    if current is not None:
        agrees = (
            ""
            if decision not in (PNEUMONIA, NORMAL)
            else (" (agrees)" if current["label"] == decision else " (disagrees)")
        )
        st.caption(
            f"Verdict: {plain(current['label'])}{agrees}, by {plain(current['user'])} "
            f"at {plain(current['time'][:19])} UTC"
        )
        return str(current["label"])
    return None


def pacs_reading_ids(pacs_run: Any, loaded: Any) -> list[int | None]:
    """The reading ids of a PACS run's readings, in the order of run.readings(): the screening logged them itself
    (screen_studies(..., log=True)); here they are found by SOP instance UID for this model and card, once per run
    of the page's session. None where a film was not logged, or for every film when the database fails (said)."""
    from pneumo.integrations.records import reading_ids_by_instance
    from pneumo.model.reading import card_hash

    screened = [r for r in pacs_run.results if r.reading is not None]
    uids = [r.sop_uid or "" for r in screened]
    model, card = str(loaded.card.name), card_hash(loaded)

    def read() -> tuple[list[int | None], str | None]:
        try:
            by_uid = reading_ids_by_instance(uids, model=model, card_hash=card, url=app_database_url())
        except RecordsError as exc:
            return [None] * len(uids), str(exc)
        return [by_uid.get(uid) for uid in uids], None

    ids, problem = once_per_batch("pacs-ids", [*uids, model, card], read)
    if problem is not None:
        st.warning(f"Verdicts unavailable for these readings: {plain(problem)}", icon=":material/database:")
    return ids


def read_before_notes(
    pixel_hashes: Sequence[str | None], reading_ids: Sequence[int | None], batch_key: Sequence[Any] | None = None
) -> list[str | None]:
    """For each card, one line when its film (by pixel hash) was read before: when, by which model, with what
    result; None otherwise, or for every card when the database cannot be read (the readings stand alone).
    Asked once per batch (batch_key, as for log_batch_once; the hashes and ids when not given)."""
    from pneumo.integrations.records import read_before

    def read() -> list[str | None]:
        try:
            earlier = read_before(pixel_hashes, reading_ids, url=app_database_url())
        except (RecordsError, OSError):
            return [None] * len(reading_ids)
        return [None if e is None else history_line(e) for e in earlier]

    return once_per_batch("read-before", [*pixel_hashes, *reading_ids, *(batch_key or [])], read)


def history_line(reading: dict[str, Any]) -> str:
    """A stored reading in words, for a card's "read before" line and the history list."""
    when = str(reading["time"])[:16].replace("T", " ")
    if reading.get("error"):
        return f"Read before on {when} UTC: the file could not be read."
    score = reading.get("probability")
    return (
        f"Read before on {when} UTC by {reading['model']} ({reading['operating_point']}): "
        f"{reading.get('decision') or 'no decision'}" + ("" if score is None else f", score {float(score):.3f}")
    )


def recent_history(limit: int = 20, batch_key: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """This session's user's newest readings as table rows (empty when the database cannot be read); with a
    batch_key, read once per batch (the batch's own readings are logged before)."""
    from pneumo.integrations.records import recent_readings

    if batch_key is not None:
        return once_per_batch("history", [app_user(), limit, *batch_key], lambda: recent_history(limit))
    try:
        rows = recent_readings(app_user(), limit, url=app_database_url())
    except (RecordsError, OSError):
        return []
    return [
        {
            "reading": r["id"],
            "source": r.get("source_kind") or "",
            "time (UTC)": str(r["time"])[:19].replace("T", " "),
            "film": r.get("source_name") or r.get("instance_uid") or "",
            "decision": r.get("decision") or "rejected",
            "score": r.get("probability"),
            "model": r["model"],
            "operating point": r["operating_point"],
        }
        for r in rows
    ]


def reopenable(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of recent_history whose film can be found again: read from a file inside the folders this app may
    open (a path logged by the command line may lie anywhere), or from a PACS, with a score (an upload's pixels were
    never kept, and a film that could not be read has nothing to show)."""
    allowed = settings()

    def offered(h: dict[str, Any]) -> bool:
        if h.get("score") is None:
            return False
        if h.get("source") == "file":
            return allowed.resolve_inside_roots(str(h.get("film") or "")) is not None
        return h.get("source") == "pacs"

    return [h for h in history if offered(h)]


def reopen_reading(reading_id: int, pacs_config: Any = None) -> Any:
    """A logged reading's film found again (pneumo.integrations.records.reopen), through the deployment's PACS
    when one is configured; RecordsError (one line) when it cannot be."""
    from pneumo.integrations.records.reopen import reopen

    client = None
    if pacs_config is not None:
        from pneumo.integrations import pacs

        client = pacs.Pacs.from_config(pacs_config)
    found = reopen(reading_id, pacs=client, url=app_database_url())
    if found.row.get("source_kind") == "file" and settings().resolve_inside_roots(found.found_at) is None:
        raise RecordsError(f"reading {reading_id}: its file lies outside the folders this app may open")
    return found
