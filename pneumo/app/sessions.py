"""Closed sessions give back what they held: Streamlit drops an expired session from its store without shutting it
down, so its uploads and pictures are released here, through the runtime's public managers, once it can no
longer resume; a trim thread returns freed memory to the system. Uploads are held within a byte budget per
session and for the server: the oldest are released as new ones arrive (uploads_to_release decides which).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from pneumo.core.memory import trim

# Sessions by id, with when each was first found disconnected (None while connected); see
# release_expired_sessions.
_SESSIONS: dict[str, float | None] = {}
_SESSIONS_LOCK = threading.Lock()


def current_session() -> str:
    """The running script's session id ("" outside a Streamlit run)."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return "" if ctx is None else str(ctx.session_id)


def track_session(session_id: str | None = None) -> None:
    """Note the running session (or the one named), so that its files are released once it can no longer
    come back."""
    if session_id is None:
        ctx = get_script_run_ctx(suppress_warning=True)
        if ctx is None:
            return
        session_id = ctx.session_id
    with _SESSIONS_LOCK:
        _SESSIONS[session_id] = None


def release_expired_sessions(rt: Any = None, now: float | None = None, margin_s: float = 2.0) -> list[str]:
    """Release the upload bytes and pictures that Streamlit's upload and media managers still hold for
    sessions that expired, as Streamlit's own shutdown would.

    A closed tab's session is kept for server.disconnectedSessionTTL seconds so that a reconnect can
    resume it, then dropped from Streamlit's store without being shut down: its uploads stay in the
    upload manager, and its pictures and deferred downloads in the media manager, for the life of the
    server (hundreds of MB after a large batch). A tracked session is released once it has been found
    disconnected for longer than the TTL (it disconnected no later than it was first found so, whatever
    the time between two checks) through the runtime's public managers. The session's own state, which
    also refers to its uploads, goes when Streamlit next tidies its store (at the next disconnect of any
    session). `rt` is the running Streamlit runtime unless given. Returns the ids released."""
    if rt is None:
        if not runtime.exists():
            return []
        rt = runtime.get_instance()
    ttl = float(st.get_option("server.disconnectedSessionTTL"))
    now = time.monotonic() if now is None else now
    with _SESSIONS_LOCK:
        for session_id, gone in list(_SESSIONS.items()):
            _SESSIONS[session_id] = None if rt.is_active_session(session_id) else (now if gone is None else gone)
        expired = [sid for sid, gone in _SESSIONS.items() if gone is not None and now - gone > ttl + margin_s]
    for session_id in expired:
        rt.uploaded_file_mgr.remove_session_files(session_id)
        rt.media_file_mgr.clear_session_refs(session_id)
        tables = getattr(rt, "dataframe_source_mgr", None)  # a manager of newer Streamlit releases
        if tables is not None:
            tables.clear_all_for_session(session_id)
        with _SESSIONS_LOCK:  # forgotten once released: a failure above leaves the rest for the next check
            _SESSIONS.pop(session_id, None)
    if expired:
        rt.media_file_mgr.remove_orphaned_files()
        with _UPLOADS_LOCK:  # notes for a session that will not run again
            for session_id in expired:
                _RELEASED.pop(session_id, None)
    return expired


def _trim_forever(period_s: float = 10.0) -> None:
    while True:
        time.sleep(period_s)
        try:
            release_expired_sessions()
        except Exception as exc:  # a Streamlit release that changed its managers must not stop the trimming
            print(f"pneumo: closed sessions not released: {exc}", file=sys.stderr)
        gc.collect()
        trim()


# ---------------------------------------------------------------- upload budgets

# Streamlit bounds each file (server.maxUploadSize) but not how many a session sends: 50 films of 49 MB in one
# batch held 5 GB resident. What Streamlit's upload manager holds is bounded here instead, per session and for
# the server, by releasing the oldest uploads as new ones arrive (the page notes what went).


@dataclass(frozen=True)
class HeldUpload:
    """One upload the server holds: whose, which, how large, and when it arrived (any clock: only the
    order counts)."""

    session_id: str
    file_id: str
    name: str
    size: int
    arrived: float


@dataclass(frozen=True)
class Release:
    """An upload to let go of, and the budget it was released for."""

    upload: HeldUpload
    budget: Literal["session", "server"]


def uploads_to_release(
    held: Sequence[HeldUpload],
    session_budget: int,
    server_budget: int,
    keep: Collection[str] = (),
    closed: Collection[str] = (),
) -> list[Release]:
    """The uploads to release, in order, so that each session holds at most session_budget bytes and the
    server at most server_budget.

    - A session over its budget loses its oldest uploads first, never its newest: one file within the
      per-file limit can always be read, even under a budget set below that limit.
    - The server over its budget then takes from closed sessions first (`closed`: session ids whose tab is
      gone, kept only for a reconnect), then from whichever session holds the most bytes, oldest upload
      first: a visitor who sent little is the last to lose anything to another's batch.
    - Uploads whose file id is in `keep` (the one arriving now) are never released; if only those are
      left, the server stays over its budget.

    Ties in arrival keep the order of `held`."""
    oldest_first = [held[i] for i in sorted(range(len(held)), key=lambda i: held[i].arrived)]
    by_session: dict[str, list[HeldUpload]] = {}
    for upload in oldest_first:
        by_session.setdefault(upload.session_id, []).append(upload)
    totals = {sid: sum(u.size for u in uploads) for sid, uploads in by_session.items()}
    releases: list[Release] = []
    for sid, uploads in by_session.items():
        for upload in uploads[:-1]:  # the newest stays
            if totals[sid] <= session_budget:
                break
            if upload.file_id not in keep:
                releases.append(Release(upload, "session"))
                totals[sid] -= upload.size
    gone = {r.upload.file_id for r in releases}
    left = {
        sid: [u for u in uploads if u.file_id not in gone and u.file_id not in keep]
        for sid, uploads in by_session.items()
    }
    total = sum(totals.values())
    while total > server_budget:
        candidates = [sid for sid, uploads in left.items() if uploads]
        if not candidates:
            break
        # Closed sessions first, then the largest holder; between equals, the one with the oldest upload.
        sid = min(candidates, key=lambda s: (s not in closed, -totals[s], left[s][0].arrived))
        upload = left[sid].pop(0)
        releases.append(Release(upload, "server"))
        totals[sid] -= upload.size
        total -= upload.size
    return releases


# The budgets in force (bytes per session, bytes for the server), set by the page from the settings; when
# each upload arrived, by (session id, file id); and what was released, by session, until its page says so.
_BUDGETS: list[int] = []
_ARRIVED: dict[tuple[str, str], float] = {}
_RELEASED: dict[str, list[Release]] = {}
_UPLOADS_LOCK = threading.RLock()


def _held(mgr: Any) -> list[HeldUpload]:
    """Every upload Streamlit's in-memory manager holds. list() of a dict's items runs in C under the GIL (keys
    are strings): a snapshot, whatever the upload handler adds meanwhile."""
    held = []
    for session_id, files in list(mgr.file_storage.items()):
        for file_id, rec in list(files.items()):
            # Not seen arriving (held before the budget was watched): older than anything seen since.
            arrived = _ARRIVED.get((session_id, file_id), 0.0)
            held.append(HeldUpload(session_id, file_id, rec.name, len(rec.data), arrived))
    return held


def _release_over_budget(mgr: Any, rt: Any, incoming: HeldUpload | None = None) -> None:
    """Release what the budgets in force leave no room for (with the upload arriving, if any, counted and
    kept), through the manager's public remove_file, noting each release for its session's page."""
    if not _BUDGETS:
        return
    held = _held(mgr)
    keep: set[str] = set()
    if incoming is not None:
        held = [h for h in held if (h.session_id, h.file_id) != (incoming.session_id, incoming.file_id)]
        held.append(incoming)
        keep.add(incoming.file_id)
    still = {(h.session_id, h.file_id) for h in held}
    for key in [k for k in _ARRIVED if k not in still]:
        del _ARRIVED[key]
    closed: set[str] = set()
    if rt is not None:
        closed = {sid for sid in {h.session_id for h in held} if not rt.is_active_session(sid)}
    session_budget, server_budget = _BUDGETS
    for release in uploads_to_release(held, session_budget, server_budget, keep=keep, closed=closed):
        mgr.remove_file(release.upload.session_id, release.upload.file_id)
        _ARRIVED.pop((release.upload.session_id, release.upload.file_id), None)
        _RELEASED.setdefault(release.upload.session_id, []).append(release)


def _budgeted(mgr: Any, rt: Any, add_file: Callable[..., None]) -> Callable[..., None]:
    """The manager's add_file, releasing first what the arriving file leaves no room for: the budgets hold
    before a file is stored, not only at the next run of a page (a batch arrives whole before its run)."""

    def add(session_id: str, file: Any) -> None:
        with _UPLOADS_LOCK:
            now = time.monotonic()
            try:
                _release_over_budget(mgr, rt, HeldUpload(session_id, file.file_id, file.name, len(file.data), now))
            except Exception as exc:  # a budget that cannot be applied must not refuse the upload
                print(f"pneumo: upload budget not applied: {exc}", file=sys.stderr)
            add_file(session_id=session_id, file=file)
            _ARRIVED[(session_id, file.file_id)] = now

    add.pneumo_budgeted = True  # type: ignore[attr-defined]
    return add


def enforce_upload_budgets(session_budget: int, server_budget: int) -> list[Release]:
    """Hold the running session's and the server's uploads within their budgets (bytes); returns what was
    released from this session since its last call, for the page to say.

    Called by the upload page before its uploader widget reads the files. The first call watches Streamlit's
    upload manager: from then on each arriving file first releases what it leaves no room for. This call also
    releases what arrived before (and applies budgets that changed). Without a Streamlit upload manager that
    keeps its files in memory (file_storage), nothing is watched or released."""
    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None:
        return []
    mgr: Any = ctx.uploaded_file_mgr  # MemoryUploadedFileManager: add_file and file_storage are not in the protocol
    if not hasattr(mgr, "file_storage"):
        return []
    rt = runtime.get_instance() if runtime.exists() else None
    with _UPLOADS_LOCK:
        _BUDGETS[:] = [int(session_budget), int(server_budget)]
        if not getattr(mgr.add_file, "pneumo_budgeted", False):
            # An attribute of this manager object: the server's upload route looks add_file up on each call.
            mgr.add_file = _budgeted(mgr, rt, mgr.add_file)
        _release_over_budget(mgr, rt)
        return _RELEASED.pop(ctx.session_id, [])
