"""Upload budgets: which uploads go when a session or the server holds too much (a pure function), the
upload manager held within them as files arrive, the settings that set them, and the Predict page's note."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.uploaded_file_manager import UploadedFileRec

from pneumo.app import sessions
from pneumo.app.sessions import HeldUpload, enforce_upload_budgets, uploads_to_release
from pneumo.app.settings import (
    DEFAULT_SERVER_UPLOAD_BYTES,
    DEFAULT_SESSION_UPLOAD_BYTES,
    ENV_SERVER_UPLOAD_MB,
    ENV_SESSION_UPLOAD_MB,
    AppSettings,
)
from tests.conftest import ROOT

MB = 2**20


def _uploads(session: str, sizes: list[int], start: float = 0.0) -> list[HeldUpload]:
    """Uploads of one session, one a second from `start`, named and numbered in arrival order."""
    return [HeldUpload(session, f"{session}{i}", f"{session}{i}.dcm", size, start + i) for i, size in enumerate(sizes)]


def _ids(releases: list[sessions.Release]) -> list[str]:
    return [r.upload.file_id for r in releases]


# ---------------------------------------------------------------- which uploads go


def test_fifty_large_films_keep_the_newest_within_the_session_budget() -> None:
    """50 films of 49 MB in one session: the 40 oldest go, the 10 newest (490 MB) stay within 512 MB."""
    held = _uploads("a", [49 * MB] * 50)
    releases = uploads_to_release(held, 512 * MB, 2048 * MB)
    assert _ids(releases) == [f"a{i}" for i in range(40)]
    assert {r.budget for r in releases} == {"session"}
    assert sum(u.size for u in held) - sum(r.upload.size for r in releases) == 490 * MB


def test_within_budget_nothing_goes_and_the_newest_upload_always_stays() -> None:
    assert uploads_to_release(_uploads("a", [100, 200, 212]), 512, 10_000) == []
    # A budget below one file (set under the per-file limit): that newest file can still be read.
    assert _ids(uploads_to_release(_uploads("a", [300, 900]), 512, 10_000)) == ["a0"]


def test_arrival_decides_not_the_order_given() -> None:
    held = _uploads("a", [300, 300, 300])[::-1]  # newest listed first
    assert _ids(uploads_to_release(held, 600, 10_000)) == ["a0"]


def test_the_server_budget_takes_from_the_largest_holder_so_a_small_visitor_keeps_their_film() -> None:
    """Two visitors' batches and a third visitor's one small JPEG: the server sheds the big batches' oldest
    films, the JPEG stays."""
    held = _uploads("a", [400] * 3) + _uploads("b", [400] * 2, start=0.5) + _uploads("c", [5], start=-10)
    releases = uploads_to_release(held, 1200, 1000)
    assert {r.budget for r in releases} == {"server"}
    assert "c0" not in _ids(releases)
    assert _ids(releases) == ["a0", "b0", "a1"]  # a (1200) first; then b and a hold 800 each: b's is older
    assert sum(u.size for u in held) - sum(r.upload.size for r in releases) <= 1000


def test_closed_sessions_go_first_and_the_arriving_file_is_kept() -> None:
    held = _uploads("open", [400, 400]) + _uploads("gone", [300], start=5) + _uploads("new", [400], start=9)
    releases = uploads_to_release(held, 1000, 1000, keep={"new0"}, closed={"gone"})
    assert _ids(releases) == ["gone0", "open0"]
    # Only kept files left: the server stays over rather than refuse the file arriving.
    assert uploads_to_release(_uploads("a", [900]), 1000, 100, keep={"a0"}) == []


# ---------------------------------------------------------------- the upload manager within its budgets


@pytest.fixture
def budget_state() -> Iterator[None]:
    """The module's budgets, arrivals and notes, empty before and after each test."""

    def clear() -> None:
        sessions._BUDGETS.clear()
        sessions._ARRIVED.clear()
        sessions._RELEASED.clear()

    clear()
    yield
    clear()


def _running(
    monkeypatch: pytest.MonkeyPatch, mgr: MemoryUploadedFileManager, session_id: str, active: set[str] | None = None
) -> None:
    """Make `session_id` the running script's session over `mgr`, and (if given) a runtime whose active
    sessions are `active`: what Streamlit provides to a page, without a server."""
    ctx = SimpleNamespace(session_id=session_id, uploaded_file_mgr=mgr)
    monkeypatch.setattr(sessions, "get_script_run_ctx", lambda suppress_warning=False: ctx)
    rt = SimpleNamespace(is_active_session=lambda sid: active is None or sid in active)
    monkeypatch.setattr(sessions, "runtime", SimpleNamespace(exists=lambda: True, get_instance=lambda: rt))


def _rec(file_id: str, size: int) -> UploadedFileRec:
    return UploadedFileRec(file_id, f"{file_id}.dcm", "application/dicom", bytes(size))


def _held_bytes(mgr: MemoryUploadedFileManager) -> int:
    return sum(len(f.data) for files in mgr.file_storage.values() for f in files.values())


def test_a_batch_never_takes_the_server_past_its_budgets_as_it_arrives(
    monkeypatch: pytest.MonkeyPatch, budget_state: None
) -> None:
    """A batch of 50 uploads of 49 MB at a thousandth of its size (50 files of 49 kB, budgets 512 kB and 2 MB), sent
    through the manager's add_file as the server's upload route does: the session never holds more than
    its budget plus nothing, and the page is told which files went."""
    mgr = MemoryUploadedFileManager("/upload")
    _running(monkeypatch, mgr, "a")
    assert enforce_upload_budgets(512 * 1024, 2 * MB) == []  # the page's first run, before any upload
    peak = 0
    for i in range(50):
        mgr.add_file(session_id="a", file=_rec(f"f{i:02}", 49 * 1024))
        peak = max(peak, _held_bytes(mgr))
    assert peak <= 512 * 1024
    assert sorted(mgr.file_storage["a"]) == [f"f{i:02}" for i in range(40, 50)]  # the 10 newest
    released = enforce_upload_budgets(512 * 1024, 2 * MB)  # the page's run after the batch
    assert [r.upload.name for r in released] == [f"f{i:02}.dcm" for i in range(40)]
    assert enforce_upload_budgets(512 * 1024, 2 * MB) == []  # said once


def test_uploads_held_before_the_budget_was_watched_are_released_at_the_pages_run(
    monkeypatch: pytest.MonkeyPatch, budget_state: None
) -> None:
    mgr = MemoryUploadedFileManager("/upload")
    for i in range(5):
        mgr.add_file("a", _rec(f"f{i}", 300))
    _running(monkeypatch, mgr, "a")
    released = enforce_upload_budgets(1000, 10_000)
    assert [r.upload.file_id for r in released] == ["f0", "f1"]
    assert sorted(mgr.file_storage["a"]) == ["f2", "f3", "f4"]


def test_the_server_budget_holds_across_sessions_and_each_session_hears_of_its_own(
    monkeypatch: pytest.MonkeyPatch, budget_state: None
) -> None:
    """A closed tab's uploads go first; a visitor whose files went to make room is told at their next run."""
    mgr = MemoryUploadedFileManager("/upload")
    _running(monkeypatch, mgr, "b", active={"a", "b"})
    enforce_upload_budgets(1000, 1500)
    mgr.add_file("closed", _rec("c0", 400))
    mgr.add_file("a", _rec("a0", 500))
    mgr.add_file("a", _rec("a1", 500))
    assert _held_bytes(mgr) == 1400  # within both budgets: nothing went
    mgr.add_file("b", _rec("b0", 600))  # 2000 with it: the closed tab's upload, then a's oldest (a holds most)
    assert _held_bytes(mgr) == 1100
    assert sorted(f for files in mgr.file_storage.values() for f in files) == ["a1", "b0"]
    assert enforce_upload_budgets(1000, 1500) == []  # b lost nothing
    _running(monkeypatch, mgr, "a", active={"a", "b"})
    assert [(r.upload.file_id, r.budget) for r in enforce_upload_budgets(1000, 1500)] == [("a0", "server")]


def test_expired_sessions_drop_their_notes(monkeypatch: pytest.MonkeyPatch, budget_state: None) -> None:
    monkeypatch.setattr(sessions, "_SESSIONS", {})  # only this test's session: app tests before it track theirs
    sessions._RELEASED["gone"] = uploads_to_release(_uploads("gone", [5, 5]), 5, 100)
    mgr = MemoryUploadedFileManager("/upload")
    rt = SimpleNamespace(
        is_active_session=lambda sid: False,
        uploaded_file_mgr=mgr,
        media_file_mgr=SimpleNamespace(clear_session_refs=lambda sid: None, remove_orphaned_files=lambda: None),
    )
    monkeypatch.setattr(sessions.st, "get_option", lambda name: 30)
    sessions.track_session("gone")
    assert sessions.release_expired_sessions(rt, now=0.0) == []
    assert sessions.release_expired_sessions(rt, now=100.0) == ["gone"]
    assert "gone" not in sessions._RELEASED


# ---------------------------------------------------------------- settings


def test_budgets_default_and_come_from_the_environment_or_secrets() -> None:
    default = AppSettings.load({}, environ={})
    assert (default.session_upload_bytes, default.server_upload_bytes) == (512 * MB, 2048 * MB)
    assert (DEFAULT_SESSION_UPLOAD_BYTES, DEFAULT_SERVER_UPLOAD_BYTES) == (512 * MB, 2048 * MB)
    env = AppSettings.load({}, environ={ENV_SESSION_UPLOAD_MB: "0.5", ENV_SERVER_UPLOAD_MB: "1024"})
    assert (env.session_upload_bytes, env.server_upload_bytes) == (MB // 2, 1024 * MB)
    secrets = AppSettings.load({"pneumo": {"session_upload_mb": 64, "server_upload_mb": 256}}, environ={})
    assert (secrets.session_upload_bytes, secrets.server_upload_bytes) == (64 * MB, 256 * MB)
    for bad in ("0", "-5", "lots", "inf"):
        with pytest.raises(ValueError, match=ENV_SESSION_UPLOAD_MB):
            AppSettings.load({}, environ={ENV_SESSION_UPLOAD_MB: bad})


# ---------------------------------------------------------------- the Predict page


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped model and an empty runs folder, as tests/test_app.py sets up the app."""
    shutil.copytree(ROOT / "models", tmp_path / "models")
    monkeypatch.setenv("PNEUMO_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("PNEUMO_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", "")
    return tmp_path


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((96, 96)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_reads_only_what_the_budget_kept_and_says_what_went(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, budget_state: None
) -> None:
    from streamlit.testing.v1 import AppTest

    films = [_png(i) for i in range(3)]
    # A session budget of two films: the oldest of three is released before the page reads any.
    monkeypatch.setenv(ENV_SESSION_UPLOAD_MB, str((len(films[1]) + len(films[2])) / MB))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/predict.py").run()
    at.file_uploader[0].set_value([(f"film{i}.png", data, "image/png") for i, data in enumerate(films)]).run()
    assert not at.exception, [e.value for e in at.exception]
    notes = [w.value for w in at.warning if "upload(s) released" in w.value]
    assert len(notes) == 1 and "1 earlier upload(s)" in notes[0] and "film0" in notes[0], notes
    # The cards read: each names its film (st.text under its heading); the released film has none.
    shown = sorted(t.value for t in at.text if t.value.startswith("film"))
    assert shown == ["film1.png", "film2.png"], shown
