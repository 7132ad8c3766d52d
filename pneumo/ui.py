"""Streamlit glue shared by the pages: cached loaders, the sidebar pickers, state keys. The only module of the
package that imports Streamlit; the library never imports it. No maths here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from pneumo import data as D
from pneumo import explain
from pneumo.memory import release_file_pages
from pneumo.models import LoadedModel, card_path, load_model, read_card
from pneumo.settings import PROJECT_ROOT, SAMPLES_DIR, AppSettings

ENTRY_MARK = "_entry_point_ran"
DISCLAIMER = (
    "**Research use only — not a medical device.** pneumo has not been cleared by any regulator; its output "
    "must not be used to diagnose or treat patients without a qualified clinician's own reading."
)


def settings() -> AppSettings:
    try:
        secrets: Any = dict(st.secrets)
    except Exception:  # no secrets.toml: defaults and the environment only
        secrets = {}
    return AppSettings.load(secrets)


# One model resident at a time: a switch replaces it instead of piling networks up in memory.
@st.cache_resource(show_spinner="Loading model…", max_entries=1)
def _cached_model(path: str, mtime: float) -> LoadedModel:
    loaded = load_model(path)
    explain.warm_up(loaded)
    release_file_pages()  # the start-up pages of TensorFlow, now that everything has been traced once
    return loaded


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
        st.error(f"The selected model cannot be used: {exc}", icon=":material/error:")
        return None
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
def stored_predictions(path: str, mtime: float) -> Any:
    """A model's val_predictions.csv, re-read when the file changes."""
    import pandas as pd

    return pd.read_csv(path)


def data_root() -> Path | None:
    root = st.session_state.get("data_root")
    return Path(root) if root else None


@st.cache_resource(show_spinner=False)
def device_description() -> str:
    from pneumo.train import detect_device

    return detect_device().describe()


@st.cache_data(show_spinner=False, max_entries=8)
def summary_for(root: str, _progress: Any = None) -> D.Summary:
    return D.summarize(root, progress=_progress)


def summarize_with_bar(root: Path) -> D.Summary:
    bar = st.progress(0.0, text="Reading images…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Reading images… {done}/{total}")

    try:
        return summary_for(str(root), _progress=progress)
    finally:
        bar.empty()


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
            remember_choice("model_path", str(choices[label]))
        else:
            st.warning("No model found: train one on the Train page.")
            st.session_state["model_path"] = None
        st.markdown("### Data")
        roots = [r for r in cfg.data_roots if r.exists()]
        labels = [_root_label(r) for r in roots]
        if roots:
            current = st.session_state.get("data_root") or st.query_params.get("data_root")
            index = next((i for i, r in enumerate(roots) if str(r) == current), 0)
            picked = st.selectbox("Data folder", labels, index=index, key="data_choice",
                                  help="Configured roots only: the bundled samples, data/, and paths from "
                                       ".streamlit/secrets.toml ([pneumo] data_roots) or PNEUMO_DATA_ROOTS.")
            remember_choice("data_root", str(roots[labels.index(picked)]))
        else:
            st.session_state["data_root"] = None
        st.caption(f"Device: {device_description()}")
        st.caption("Research use only — not a medical device.")


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
    from streamlit.runtime.pages_manager import PagesManager

    if not st.session_state.get(ENTRY_MARK):
        PagesManager.uses_pages_directory = False
        st.rerun()
