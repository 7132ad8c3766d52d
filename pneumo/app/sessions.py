"""Closed sessions give back what they held: Streamlit drops an expired session from its store without shutting it
down, so its uploads and pictures are released here, through the runtime's public managers, once it can no
longer resume; a trim thread returns freed memory to the system.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from typing import Any

import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from pneumo.core.memory import trim

# Sessions by id, with when each was first found disconnected (None while connected); see
# release_expired_sessions.
_SESSIONS: dict[str, float | None] = {}
_SESSIONS_LOCK = threading.Lock()


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
