"""Streamlit glue shared by the pages: the cached model, the sidebar pickers, state keys, progress bars, the
entry-point guard. pneumo.app is the only package that imports Streamlit; no maths here."""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from cachetools import LRUCache
from streamlit.runtime.pages_manager import PagesManager

from pneumo.app.cards import SharedCache
from pneumo.app.sessions import _trim_forever
from pneumo.app.settings import CACHE_DIR, PROJECT_ROOT, SAMPLES_DIR, AppSettings
from pneumo.app.texts import input_line, plain
from pneumo.core.memory import release_file_pages
from pneumo.data import collection as D
from pneumo.data import overview
from pneumo.evaluation import drift, site
from pneumo.model import explain
from pneumo.model.loading import LoadedModel, card_path, load_model, read_card

# pneumo.evaluation.metrics (scikit-learn, ~2 s) is imported where used: only predicting a labelled folder needs it.

ENTRY_MARK = "_entry_point_ran"
# Session state shared by pages: the Overview's "Try it on a sample" switches on Predict's sample toggle (its widget
# key), and Predict leaves the last batch's drift check in words for the Overview.
USE_SAMPLES_KEY = "use_samples"
LAST_DRIFT_KEY = "last_drift"
RESEARCH_ONLY = "Research use only — not a medical device."
DISCLAIMER = (
    f"**{RESEARCH_ONLY}** pneumo has not been cleared by any regulator; its output "
    "must not be used to diagnose or treat patients without a qualified clinician's own reading."
)


# The serving install (requirements.txt, Streamlit Community Cloud) is ONNX Runtime without TensorFlow: it reads
# films and draws their maps from a model's ONNX export. Training, and serving a model that has no export, need
# the full install (pyproject.toml's dependencies, TensorFlow included).
TRAINING_NEEDS = (
    "Training needs TensorFlow, which this install leaves out: it serves models through ONNX Runtime only "
    "(requirements.txt). Train on the full install — `pip install -e .` in a checkout of pneumo, or `make run` — "
    "and the finished run's model can be served here."
)


def training_available() -> bool:
    """Whether TensorFlow is installed (found, not imported: importing it costs ~600 MB resident)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a broken or half-removed installation counts as none
        return False


def settings() -> AppSettings:
    try:
        secrets: Any = dict(st.secrets)
    except Exception:  # no secrets.toml: defaults and the environment only
        secrets = {}
    return AppSettings.load(secrets)


# Freed memory goes back to the system even when no script runs: one daemon thread per server process.
# - Streamlit collects cycles after every run, but what it lets go of later (a closed session, a
#   download callable replaced after the run) is often a cycle too (a page's functions hold its whole
#   namespace as their globals), freed only by the next collection.
# - A session that closed released its uploads and pictures (release_expired_sessions), but glibc keeps
#   the pages until asked.
if not any(t.name == "pneumo-trim" for t in threading.enumerate()):
    threading.Thread(target=_trim_forever, name="pneumo-trim", daemon=True).start()


# One model resident at a time: a switch replaces it instead of piling networks up in memory.
@st.cache_resource(show_spinner="Loading model…", max_entries=1)
def _cached_model(path: str, mtime: float) -> LoadedModel:
    loaded = load_model(path, shared_cores=True)
    try:
        explain.warm_up(loaded)
    except ImportError:
        # No TensorFlow (the serving install) and an export without a Grad-CAM graph: predictions are served;
        # maps are drawn where they can be, and each place that draws one says when it cannot.
        pass
    drift.warm_up(loaded)
    release_file_pages()  # the start-up pages of TensorFlow, now that everything has been traced once
    _freeze_start_up()
    return loaded


_FROZEN = threading.Event()


def _freeze_start_up() -> None:
    """Once per process, after the first model has loaded: the libraries' objects live as long as the
    server, and taken out of the collector's view, the full collection Streamlit runs after every script
    run scans only what runs made (160 ms per run without this, holding the interpreter while the last
    elements are sent). Never again: a later freeze would keep a replaced model, or another session's
    run, from ever being collected."""
    if not _FROZEN.is_set():
        _FROZEN.set()
        gc.collect()
        gc.freeze()


def active_model() -> LoadedModel | None:
    """The model picked in the sidebar, with its card read afresh (the threshold may have changed).

    A model or card that cannot be used shows an error box naming the file, never a traceback.
    """
    path = st.session_state.get("model_path")
    if not path or not Path(path).exists() or not settings().is_allowed_model(Path(path)):
        return None
    try:
        cached = _cached_model(path, Path(path).stat().st_mtime)
        cached.card = read_card(Path(path))  # keep the traced graph; only the card may have changed
    except (ValueError, OSError) as exc:
        st.error(f"The selected model cannot be used: {plain(exc)}", icon=":material/error:")
        return None
    except ImportError as exc:
        # A model without a usable ONNX export needs TensorFlow, which the serving install leaves out.
        st.error(
            f"The selected model cannot be served by this install ({plain(exc)}): it has no ONNX export that "
            "ONNX Runtime accepts (`python -m pneumo export` on the full install writes one), and TensorFlow is "
            "not installed here.",
            icon=":material/error:",
        )
        return None
    try:  # a copy with the operating point chosen in the sidebar in force; the cached model is shared
        return site.apply_operating_point(cached, st.session_state.get("operating_point"))
    except ValueError as exc:
        st.warning(
            f"The chosen operating point is not in this model's card ({plain(exc)}); the shipped one is in force.",
            icon=":material/warning:",
        )
        return cached


def model_state_key(loaded: LoadedModel) -> str:
    """What widget state depending on the model is keyed by: its path and its card's version.

    Switching model or saving a new operating point changes the key, so sliders and figures start
    again from the card instead of keeping a value that belonged to another model or card.
    """
    card = card_path(loaded.path)
    version = card.stat().st_mtime_ns if card.exists() else 0
    return f"{loaded.path}:{loaded.path.stat().st_mtime_ns}:{version}"


def remember_choice(key: str, value: str | None) -> None:
    """Keep the active model and data folder in the URL, so a reload or a shared link restores them."""
    st.session_state[key] = value
    if value is not None and st.query_params.get(key) != value:
        st.query_params[key] = value


@st.cache_data(show_spinner=False, max_entries=8)
def stored_predictions(path: str, mtime: float) -> tuple[Any, Any, int]:
    """A model's stored predictions, validated, re-read when the file changes: (every row, for figures;
    the rows inside the allowed roots, the only ones a page may open; how many were refused)."""
    return settings().stored_predictions(path)


def data_root() -> Path | None:
    root = st.session_state.get("data_root")
    return Path(root) if root else None


_DEVICE_PROBE = (
    "from pneumo.training.job import detect_device; print(detect_device().describe())"  # its stderr is dropped
)
_DEVICE: dict[str, str] = {}


def _probe_device() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _DEVICE_PROBE],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=PROJECT_ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        lines = done.stdout.strip().splitlines()
        _DEVICE["description"] = lines[-1] if done.returncode == 0 and lines else "unknown (the device check failed)"
    except (OSError, subprocess.SubprocessError) as exc:
        _DEVICE["description"] = f"unknown ({type(exc).__name__})"


@st.cache_resource(show_spinner=False)
def _device_probe() -> threading.Thread:
    # Asking TensorFlow which device training would use costs a process about 600 MB resident for good;
    # serving never needs TensorFlow (ONNX Runtime serves) and training runs in a process of its own, so
    # the question is asked once, in a child process, without holding up the first page.
    thread = threading.Thread(target=_probe_device, name="pneumo-device-probe", daemon=True)
    thread.start()
    return thread


def device_description(wait_s: float = 0.0) -> str:
    """The device training would use ("checking…" until the one-off check in a child process is done)."""
    if not training_available():  # nothing to ask: the child process would fail to import TensorFlow
        return "none for training (serving install: ONNX Runtime, no TensorFlow)"
    _device_probe().join(wait_s)
    return _DEVICE.get("description", "checking…")


def progress_bar(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """A progress bar and its callback(done, total), drawn at most ten times a second.

    The bar is made here, by the page, and the callback is handed to library code that is not cached
    by Streamlit: an element called from inside an st.cache_* function is recorded for replay, and the
    replay of an element created outside it fails (CacheReplayClosureError) on every later visit.
    """
    bar = st.progress(0.0, text=text)
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.1 or done >= total:
            bar.progress(min(done / max(total, 1), 1.0), text=f"{text} {done}/{total}")
            last[0] = now

    return bar, update


def summarize_with_bar(root: Path) -> D.Summary:
    """The folder's summary; its decoded statistics come from the disk cache after the first visit."""
    bar, update = progress_bar("Reading images…")
    try:
        return D.summarize(root, progress=update, cache_dir=CACHE_DIR, allowed_roots=settings().allowed_roots())
    finally:
        bar.empty()


_FOLDER_PREDICTIONS: LRUCache = LRUCache(maxsize=4)
_FOLDER_LOCK = threading.Lock()


def folder_predictions(loaded: LoadedModel, root: Path, model_key: str) -> Any:
    """Every film of a labelled folder predicted through the one batched path, with a progress bar.

    Kept for the last few (model, folder content) pairs in a bounded cache shared by sessions; the
    cache is a plain one, not Streamlit's, because the computation draws progress (see progress_bar).
    """
    from pneumo.evaluation.metrics import predict_frame

    frame = D.scan(root, allowed_roots=settings().allowed_roots()).frame  # links out of the roots: refused
    key = (model_key, str(root), D.file_list_hash(frame), D.content_fingerprint(frame["path"]))
    with _FOLDER_LOCK:
        hit = _FOLDER_PREDICTIONS.get(key)
    if hit is not None:
        return hit
    bar, update = progress_bar("Predicting…")
    try:
        result = predict_frame(loaded, frame, progress=update, hashes=True)
    finally:
        bar.empty()
    with _FOLDER_LOCK:
        _FOLDER_PREDICTIONS[key] = result
    return result


# Films shown in the Dataset Explorer's grids, decoded once and kept small (overview.thumbnail) for every session,
# bounded by the bytes they hold: a rerun (a click, a verdict) shows them again without decoding a file.
_THUMBNAILS = SharedCache(48 * 2**20, lambda image: image.nbytes)


def film_thumbnail(path: str) -> Any:
    """A dataset item as a grid shows it (8-bit, at most overview.THUMBNAIL_SIDE px), decoded again only when its
    file changed; ValueError or OSError when it cannot be read. Shared: the caller must not change it."""
    return _THUMBNAILS.get((path, *overview.file_stamp(path)), lambda: overview.thumbnail(path))


def sidebar(cfg: AppSettings) -> None:
    """Model and data pickers; values live in session_state for every page."""
    with st.sidebar:
        st.markdown("### Model")
        choices = cfg.model_choices()
        if choices:
            labels = list(choices)
            current = st.session_state.get("model_path") or st.query_params.get("model_path")
            index = next((i for i, label in enumerate(labels) if str(choices[label]) == current), 0)
            label = st.selectbox("Active model", labels, index=index, key="model_choice")
            assert label is not None  # a selectbox with options and an index always holds one
            remember_choice("model_path", str(choices[label]))
            operating_point_picker(Path(str(choices[label])))
        else:
            st.warning("No model found: train one on the Train page.")
            st.session_state["model_path"] = None
        st.markdown("### Data")
        roots = [r for r in cfg.data_roots if r.exists()]
        labels = [_root_label(r) for r in roots]
        if roots:
            current = st.session_state.get("data_root") or st.query_params.get("data_root")
            index = next((i for i, r in enumerate(roots) if str(r) == current), 0)
            picked = st.selectbox(
                "Data folder",
                labels,
                index=index,
                key="data_choice",
                help="Configured roots only: the bundled samples, data/, and paths from "
                ".streamlit/secrets.toml ([pneumo] data_roots) or PNEUMO_DATA_ROOTS.",
            )
            assert picked is not None  # a selectbox with options and an index always holds one
            remember_choice("data_root", str(roots[labels.index(picked)]))
        else:
            st.session_state["data_root"] = None
        st.caption(f"Device: {plain(device_description())}")
        st.caption(RESEARCH_ONLY)


def operating_point_picker(model_path: Path) -> None:
    """The operating point in force for this session: the card's own or a named site point, kept in the
    URL like the model (a reload or a shared link keeps it)."""
    try:
        points = site.operating_points(read_card(model_path))
    except (ValueError, OSError):
        return  # the model's own error box says why
    names = [p["name"] for p in points]
    current = st.session_state.get("operating_point") or st.query_params.get("operating_point") or names[0]
    index = names.index(current) if current in names else 0
    origin = {p["name"]: p["origin"] for p in points}
    picked = st.selectbox(
        "Operating point",
        names,
        index=index,
        key=f"operating_point_choice:{model_path}",
        help="The threshold in force: the card's own, or one set on a site's own labelled films "
        "(Threshold page, Calibrate to this site).",
    )
    st.caption(f"{plain(origin[picked])}")
    remember_choice("operating_point", picked)


def activate_model(path: Path) -> None:
    """on_click callback: make path the sidebar's chosen model (widget state may only change before it renders)."""
    for label, candidate in settings().model_choices().items():
        if candidate == path:
            st.session_state["model_choice"] = label
    st.session_state["model_path"] = str(path)


def _root_label(root: Path) -> str:
    if root == SAMPLES_DIR:
        return f"Bundled samples ({sum(1 for _ in SAMPLES_DIR.glob('*/*.jpeg'))} images)"
    try:
        return str(root.resolve().relative_to(PROJECT_ROOT.resolve().parent))
    except ValueError:
        return str(root)


FIGURE_NAMES = [
    ("roc_auc", "ROC AUC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("accuracy", "Accuracy"),
    ("precision", "Precision"),
    ("npv", "NPV"),
    ("flagged_fraction", "Flagged"),
]


def figure_table(figures: dict[str, Any]) -> Any:
    """Figures as a two-row table: it wraps at any width, where a row of st.metric truncates to '0.99…'."""
    return pd.DataFrame(
        [{label: (f"{figures[k]:.4f}" if isinstance(figures.get(k), float) else "—") for k, label in FIGURE_NAMES}]
    )


def card_summary(card: Any) -> Any:
    """The card's main facts as readable rows (the whole card is a download)."""
    v, td, tr = card.validation, card.training_data, card.training
    rows = [
        ("name", card.name),
        ("architecture", card.architecture),
        ("parameters", f"{card.parameters or 0:,}"),
        ("input", input_line(card.input_size, card.extra.get("framing", "none"))),
        ("threshold", f"{card.threshold:.4f}"),
        ("threshold rule", card.threshold_rule),
        ("validation", f"{v.get('kind', '?')}: {v.get('split', '')}"),
        ("validation n", str(v.get("n", "?"))),
        ("training films", str(td.get("train_images", "?"))),
        ("training time", f"{tr.get('seconds', '?')} s on {tr.get('device', '?')}"),
        ("reproduce", str(tr.get("command", ""))[:400]),
        ("created", card.created),
        ("data attribution", card.data_attribution[:300]),
    ]
    return pd.DataFrame(rows, columns=["field", "value"])


def metric_row(metrics: dict[str, Any], keys: list[tuple[str, str]], digits: int = 3) -> None:
    cols = st.columns(len(keys))
    for col, (key, label) in zip(cols, keys):
        value = metrics.get(key)
        col.metric(label, "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value)))


def require_entry_point() -> None:
    """Make sure this run went through streamlit_app.py; call first on every page.

    Streamlit treats a folder named pages/ beside the entry point as an old-style multipage app until
    st.navigation has run once in the server process: a visitor whose first request after a (re)start
    is a deep link (/predict) would get the page alone, without the sidebar and navigation. Clearing
    that flag and rerunning sends the session through the entry point, which opens the same page.
    Streamlit has no public switch for this (its issue #9624 was closed as not reproducible without a
    pages/ folder), and the project keeps its pages in pages/, so this private flag stays; the browser
    test's deep link after a restart fails if an upgrade breaks it.
    """
    if not st.session_state.get(ENTRY_MARK):
        PagesManager.uses_pages_directory = False
        st.rerun()
