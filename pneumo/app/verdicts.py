"""The records database in the app: its URL from the deployment, logging a batch once, and a reader's verdict on
one reading (agree / disagree), saved with who and when. The maths and the storage are in
pneumo.integrations.records; this is Streamlit glue only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import streamlit as st

from pneumo.app import auth
from pneumo.app.ui import plain
from pneumo.integrations.records import (
    NewReading,
    ReadingSource,
    RecordsError,
    add_readings,
    add_verdict,
    database_url,
    latest_verdict,
    new_reading,
)
from pneumo.model.reading import NORMAL, PNEUMONIA

LOGGED_KEY = "_records_logged"  # session state: batch key -> reading ids, so a rerun never logs a batch again
NOTICE_KEY = "_records_notice"  # session state: the last verdict's outcome, shown beside its buttons


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
    digest = hashlib.sha256("\n".join(map(str, batch_key)).encode()).hexdigest()
    logged: dict[str, list[int | None]] = st.session_state.setdefault(LOGGED_KEY, {})
    if digest in logged:
        return logged[digest]
    entries: list[NewReading] = [
        new_reading(
            r,
            loaded,
            sources[i] if sources is not None else ReadingSource.upload(r.name),
            pixel_hashes[i] if pixel_hashes is not None else None,
        )
        for i, r in enumerate(readings)
    ]
    ids: list[int | None]
    try:
        batch_drift = drift() if callable(drift) else drift
        ids = list(add_readings(entries, user=app_user(), drift=batch_drift, url=app_database_url()))
    except RecordsError as exc:
        st.warning(f"These readings were not logged: {plain(exc)}", icon=":material/database:")
        ids = [None] * len(readings)
    if len(logged) >= 64:  # a long session keeps the newest batches only
        logged.pop(next(iter(logged)))
    logged[digest] = ids
    return ids


def _save(reading_id: int, label: str, user: str, url: str) -> None:
    """The buttons' callback (runs before the page's next run): the verdict, or why it was not saved."""
    try:
        add_verdict(reading_id, label, user=user, origin="app", url=url)
        st.session_state[NOTICE_KEY] = (reading_id, None)
    except RecordsError as exc:
        st.session_state[NOTICE_KEY] = (reading_id, str(exc))


def verdict_buttons(reading_id: int | None, decision: str | None, *, url: str | None = None) -> str | None:
    """Agree / disagree with one logged reading (by its id), saved with the user and the time; the newest verdict's
    label on it, or None. For a PNEUMONIA or NORMAL decision the buttons agree or disagree with it; for an
    uncertain or not-assessable one the reader names the label. Nothing is drawn for a reading that was not logged."""
    if reading_id is None or not auth.can(auth.VERDICT):  # a role without verdicts sees the reading only
        return None
    url = url or app_database_url()
    user = app_user()
    try:
        current = latest_verdict(reading_id, url=url)
    except RecordsError as exc:
        st.caption(f"Verdicts unavailable: {plain(exc)}")
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
    (screen_studies(..., log=True)); here they are found by SOP instance UID for this model and card. None where a
    film was not logged, or for every film when the database fails (said once)."""
    from pneumo.integrations.records import reading_ids_by_instance
    from pneumo.model.reading import card_hash

    screened = [r for r in pacs_run.results if r.reading is not None]
    try:
        by_uid = reading_ids_by_instance(
            [r.sop_uid or "" for r in screened],
            model=str(loaded.card.name),
            card_hash=card_hash(loaded),
            url=app_database_url(),
        )
    except RecordsError as exc:
        st.warning(f"Verdicts unavailable for these readings: {plain(exc)}", icon=":material/database:")
        return [None] * len(screened)
    return [by_uid.get(r.sop_uid or "") for r in screened]


def read_before_notes(pixel_hashes: Sequence[str | None], reading_ids: Sequence[int | None]) -> list[str | None]:
    """For each card, one line when its film (by pixel hash) was read before: when, by which model, with what
    result; None otherwise, or for every card when the database cannot be read (the readings stand alone)."""
    from pneumo.integrations.records import read_before

    try:
        earlier = read_before(pixel_hashes, reading_ids, url=app_database_url())
    except (RecordsError, OSError):
        return [None] * len(reading_ids)
    return [None if e is None else history_line(e) for e in earlier]


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


def recent_history(limit: int = 20) -> list[dict[str, Any]]:
    """This session's user's newest readings as table rows (empty when the database cannot be read)."""
    from pneumo.integrations.records import recent_readings

    try:
        rows = recent_readings(app_user(), limit, url=app_database_url())
    except (RecordsError, OSError):
        return []
    return [
        {
            "time (UTC)": str(r["time"])[:19].replace("T", " "),
            "film": r.get("source_name") or r.get("instance_uid") or "",
            "decision": r.get("decision") or "rejected",
            "score": r.get("probability"),
            "model": r["model"],
            "operating point": r["operating_point"],
        }
        for r in rows
    ]
