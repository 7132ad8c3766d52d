"""Streamlit glue shared by the pages: cached loaders, the sidebar pickers, state keys. The only module of the
package that imports Streamlit; the library never imports it. No maths here."""

from __future__ import annotations

import functools
import gc
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import streamlit as st
from cachetools import LRUCache
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

import pandas as pd
from streamlit.runtime.pages_manager import PagesManager

from pneumo import data as D, drift, pacs, site
from pneumo import explain, predict, report
from pneumo.imaging import resize
from pneumo.memory import release_file_pages, trim
from pneumo.models import LoadedModel, card_path, load_model, read_card
from pneumo.settings import CACHE_DIR, PROJECT_ROOT, SAMPLES_DIR, AppSettings

# pneumo.evaluate (scikit-learn, ~2 s) is imported where used: only predicting a labelled folder needs it.

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
    explain.warm_up(loaded)
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
    try:  # a copy with the operating point chosen in the sidebar in force; the cached model is shared
        return site.apply_operating_point(cached, st.session_state.get("operating_point"))
    except ValueError as exc:
        st.warning(f"The chosen operating point is not in this model's card ({plain(exc)}); the shipped one is in "
                   "force.", icon=":material/warning:")
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


_DEVICE_PROBE = "from pneumo.train import detect_device; print(detect_device().describe())"  # its stderr is dropped
_DEVICE: dict[str, str] = {}


def _probe_device() -> None:
    try:
        done = subprocess.run([sys.executable, "-c", _DEVICE_PROBE], capture_output=True, text=True, timeout=300,
                              cwd=PROJECT_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
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
    _device_probe().join(wait_s)
    return _DEVICE.get("description", "checking…")


_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|:<>~$&=])")


def plain(text: Any) -> str:
    """A visitor's text (a file name, a DICOM field, a card string) for a Markdown element, every markup
    character escaped: links, images, badges and colours in a name show as the characters they are."""
    return _MARKUP.sub(r"\\\1", " ".join(str(text).split()))


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
        return D.summarize(root, progress=update, cache_dir=CACHE_DIR)
    finally:
        bar.empty()


class SharedCache:
    """A cache shared by every session and bounded by the bytes it holds, least recently used out first.

    Values are plain objects kept as they are: no copy and no pickling on the way in or out (what
    st.cache_data does, at a few milliseconds a call for a card's pictures), so a value must not be
    changed by whoever gets it. A value larger than the whole bound is made and not kept.
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int]):
        self._items: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=sizeof)
        self._sizeof, self._lock = sizeof, threading.Lock()

    def peek(self, key: Any) -> Any:
        with self._lock:
            return self._items.get(key)

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        value = self.peek(key)
        if value is None:
            value = make()  # outside the lock: two sessions may make the same value once each, never wait
            if self._sizeof(value) <= self._items.maxsize:
                with self._lock:
                    self._items[key] = value
        return value


def _picture_bytes(value: bytes | dict[str, Any]) -> int:
    """Encoded bytes, or a {method: heat map} dict's arrays."""
    return sum(v.nbytes for v in value.values()) if isinstance(value, dict) else len(value)


# Readings shared by every session, bounded by the bytes they hold (each keeps an 8-bit film of at most
# predict.SCREEN_SIDE px, 1 MB): a batch of 200 large films costs this much at most, and is read again only
# past it. At most DECODE_SLOTS films are decoded at once across sessions, each decode's own peak
# (several hundred MB for a 50 MP DICOM) multiplied by that and no more.
READING_CACHE_BYTES = 64 * 2**20  # 64 films at 1024 px: two pages of 25 cards and then some
DECODE_SLOTS = 2
READINGS = SharedCache(READING_CACHE_BYTES, predict.nbytes)
_DECODES = threading.BoundedSemaphore(DECODE_SLOTS)
# What the cards draw, shared by every session: heat maps at the model's input size (200 KB a method)
# and the encoded screen pictures (films and maps at most 640 px a side, one colour bar per film size).
PICTURES = SharedCache(64 * 2**20, _picture_bytes)


def cached_reading(loaded: LoadedModel, digest: str, name: str, data: bytes, model_key: str, band: float) -> Any:
    """One upload read through the one prediction path, compacted and cached by content (see above)."""
    def read() -> predict.Reading:
        with _DECODES:
            return predict.pack(predict.compact(predict.read(loaded, data, name=name, band=band)))

    # The threshold in force is part of the key: a reading's decision is made at it, and an operating point
    # chosen in the sidebar changes it for the same model.
    key = (digest, name, model_key, band, loaded.threshold)
    return predict.unpack(READINGS.get(key, read))  # a film and notes of its own


@dataclass(frozen=True)
class Upload:
    """Where one uploaded (or bundled) film's reading comes from: small enough to keep in a download
    button, and read again from the shared cache (or the bytes) when it is needed."""

    loaded: LoadedModel
    digest: str
    name: str
    source: Any  # a Streamlit UploadedFile or a Path
    model_key: str
    band: float

    def data(self) -> bytes:
        return self.source.read_bytes() if isinstance(self.source, Path) else self.source.getvalue()

    def reading(self) -> predict.Reading:
        return cached_reading(self.loaded, self.digest, self.name, self.data(), self.model_key, self.band)


# Downloads made on click. Streamlit keeps a download button's callable until the session's next run, or
# after the session ends until some session finishes a run; a function of the page would keep the page's
# whole namespace alive with it (every film of the batch). These are module functions bound to small
# arguments with functools.partial instead: a film is fetched again when the button is pressed.
def card_film(item: Upload | predict.Reading, notes: predict.Reading) -> predict.Reading:
    """The reading a card shows: its film at display size (a copy of its own) with the page's notes on it
    (warnings, repeats) taken from the batch's reading."""
    reading = item.reading() if isinstance(item, Upload) else predict.unpack(item)
    reading.warnings, reading.repeat_of = list(notes.warnings), notes.repeat_of
    return reading


def _overlay_png(item: Upload | predict.Reading, notes: predict.Reading, heat: Any, opacity: float) -> bytes:
    pixels = card_film(item, notes).xray.pixels
    return explain.png_bytes(explain.with_colorbar(explain.overlay(pixels, heat, opacity)))


def _reading_pdf(item: Upload | predict.Reading, notes: predict.Reading, loaded: LoadedModel, heat: Any) -> bytes:
    return report.study_pdf([card_film(item, notes)], loaded, {0: heat})


def _batch_pdf(packed: list[predict.Reading], digests: list[str], loaded: LoadedModel, model_key: str,
               drift: str | None) -> bytes:
    readings = [predict.unpack(r) for r in packed]
    heat = {i: card_heatmaps(loaded, digests[i], model_key, r)["gradcam"]
            for i, r in enumerate(readings) if r.xray is not None}
    return report.study_pdf(readings, loaded, heat, drift=drift)


def _target(loaded: LoadedModel, reading: predict.Reading) -> int:
    """The class a card's maps explain: the reading's own at the threshold in force (an operating point
    chosen in the sidebar may move it), so the maps need no pass of their own to find it."""
    return int(reading.probability >= loaded.threshold)


def card_heatmaps(loaded: LoadedModel, digest: str, model_key: str, reading: predict.Reading) -> dict[str, Any]:
    """Both maps of a reading's film at the model's input size, from PICTURES (or made in one pass): the
    cards and the batch report show the same ones."""
    target = _target(loaded, reading)
    return PICTURES.get(("heat", digest, model_key, target), lambda: explain.gradcams(
        loaded, resize(predict.unpack(reading).xray.pixels, loaded.input_size), target=target))


def card_pictures(loaded: LoadedModel, digest: str, model_key: str, reading: predict.Reading,
                  film: Any) -> list[bytes]:
    """A card's seven pictures, encoded once for every session (PICTURES): the film, then for each method
    of explain.METHODS the film again (the same bytes: one download), its coloured map (JPEG) and the
    colour bar (PNG, one for every film of that size). The browser blends each map over its film at the
    chosen opacity and sets the bar beside them. `film` is the card's film at display size; the maps are
    the reading's."""
    heat = card_heatmaps(loaded, digest, model_key, reading)
    screen = explain.shrink(film)
    xray = PICTURES.get(("xray", digest), lambda: explain.jpeg_bytes(screen))
    bar = PICTURES.get(("bar", *screen.shape[:2]),
                       lambda: explain.png_bytes(explain.screen_colorbar(*screen.shape[:2])))
    target = _target(loaded, reading)
    pictures = [xray]
    for method in explain.METHODS:
        pictures += [xray, PICTURES.get((method, digest, model_key, target),
                                        lambda: explain.jpeg_bytes(explain.map_layer(screen, heat[method]))), bar]
    return pictures


# A card's pictures are one image element (card_pictures, in that order) that these rules lay out in three
# columns: the film; then each map's film and map in one grid cell, the map on top at the chosen opacity,
# with the colour bar beside them (explain.SCREEN_BAR_SHARE). With 25 cards the browser's main thread is
# what a batch waits for: it builds, styles and lays out every element of a run, so one element here
# instead of eleven (three columns, two stacks of two pictures) counts for more than the server's work.
# The captions are generated content of the same rules: a caption element is a Markdown element, and
# Markdown was a sixth of the browser's work with 25 cards. The alternative texts say the same to a
# screen reader.
CARD_PICTURES_KEY = "cardpics"  # the container around a card's pictures: key f"{CARD_PICTURES_KEY}-{item}"
CARD_NOTES_KEY = "cardnotes"  # the container of a card's notes beside its probability and decision
_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}  # each of explain.METHODS as a card names it
# In card_pictures' order: the film, then for each method its film, its map and its colour bar.
CARD_PICTURE_ALT = ["X-ray"] + [alt for m in explain.METHODS for alt in (
    f"X-ray under the {_TITLES[m]} map", f"{_TITLES[m]} map", "colour bar: share of the map's peak, 0 to 1")]
_CAPTIONS = [(1, "X-ray")] + [(2 + 3 * k, _TITLES[m]) for k, m in enumerate(explain.METHODS)]  # under each film
_GRID = f"[class*='st-key-{CARD_PICTURES_KEY}-'] [data-testid='stImage']"
_PIC = f"[class*='st-key-{CARD_PICTURES_KEY}-'] [data-testid='stImageContainer']"
_MAP_CELL = 1 + 1 / explain.SCREEN_BAR_SHARE  # a map's cell: its film's width and its bar's
_CARD_PICTURE_LAYOUT = (
    f"[class*='st-key-{CARD_PICTURES_KEY}-'] [data-testid='stFullScreenFrame'] > div {{width: 100%}} "
    f"{_GRID} {{display: grid; width: 100%; gap: 1rem; align-items: start; "
    f"grid-template-columns: minmax(0, 1fr) minmax(0, {_MAP_CELL}fr) minmax(0, {_MAP_CELL}fr)}} "
    f"{_PIC} img {{width: 100% !important}} {_PIC}:nth-child(1) {{grid-area: 1 / 1}} "
    f"{_PIC}:nth-child(n+2):nth-child(-n+4) {{grid-area: 1 / 2}} {_PIC}:nth-child(n+5) {{grid-area: 1 / 3}} "
    f"{_PIC}:nth-child(3n+2), {_PIC}:nth-child(3n+3) {{width: {100 / _MAP_CELL:.4f}%}} "
    f"{_PIC}:nth-child(3n+4) {{width: {100 - 100 / _MAP_CELL:.4f}%; justify-self: end}} "
    # On a phone the three pictures stand one under the other, full width, as columns would.
    f"@media (max-width: 640px) {{{_GRID} {{grid-template-columns: minmax(0, 1fr)}} "
    f"{_PIC}:nth-child(n+2):nth-child(-n+4) {{grid-area: 2 / 1}} {_PIC}:nth-child(n+5) {{grid-area: 3 / 1}}}} "
    # A card's notes take the rest of its first row, or a row of their own where less than 20 rem is left.
    f"[data-testid='stLayoutWrapper']:has(> [class*='st-key-{CARD_NOTES_KEY}-']) {{min-width: min(100%, 20rem)}} "
    + " ".join(f"{_PIC}:nth-child({n})::after {{content: '{text}'; display: block; text-align: center; "
               f"font-size: 0.875rem; opacity: 0.6; padding-top: 0.25rem}}"
               for n, text in _CAPTIONS))


def card_rules(opacity: float) -> str:
    """The style rules of every card: its notes and its pictures, the maps (the 3rd and 6th picture) at
    `opacity`."""
    return f"{_CARD_PICTURE_LAYOUT} {_PIC}:nth-child(3n) img {{opacity: {float(opacity):.2f}}}"


def overlay_png_on_click(item: Upload | predict.Reading, notes: predict.Reading, heat: Any,
                         opacity: float) -> Callable[[], bytes]:
    """The film's Grad-CAM overlay at display size with its colour bar, made when the button is pressed."""
    return functools.partial(_overlay_png, _pack_item(item), _notes(notes), heat, opacity)


def reading_pdf_on_click(item: Upload | predict.Reading, notes: predict.Reading, loaded: LoadedModel,
                         heat: Any) -> Callable[[], bytes]:
    """One film's PDF report, made when the button is pressed."""
    return functools.partial(_reading_pdf, _pack_item(item), _notes(notes), loaded, heat)


def batch_pdf_on_click(readings: list[predict.Reading], digests: list[str], loaded: LoadedModel, model_key: str,
                       drift: str | None) -> Callable[[], bytes]:
    """The batch's PDF report (every film with the Grad-CAM its card shows), made when the button is
    pressed; the films are kept as 8-bit copies until then."""
    return functools.partial(_batch_pdf, [predict.pack(r) for r in readings], list(digests), loaded, model_key, drift)


def _pack_item(item: Upload | predict.Reading) -> Upload | predict.Reading:
    return item if isinstance(item, Upload) else predict.pack(item)


def _notes(reading: predict.Reading) -> predict.Reading:
    """What the page added to a reading (warnings, repeats), without its film."""
    return predict.Reading(reading.name, None, reading.probability, reading.decision, reading.error,
                           list(reading.warnings), reading.repeat_of)


_FOLDER_PREDICTIONS: LRUCache = LRUCache(maxsize=4)
_FOLDER_LOCK = threading.Lock()


def folder_predictions(loaded: LoadedModel, root: Path, model_key: str) -> Any:
    """Every film of a labelled folder predicted through the one batched path, with a progress bar.

    Kept for the last few (model, folder content) pairs in a bounded cache shared by sessions; the
    cache is a plain one, not Streamlit's, because the computation draws progress (see progress_bar).
    """
    from pneumo.evaluate import predict_frame

    frame = D.scan(root).frame
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
            picked = st.selectbox("Data folder", labels, index=index, key="data_choice",
                                  help="Configured roots only: the bundled samples, data/, and paths from "
                                       ".streamlit/secrets.toml ([pneumo] data_roots) or PNEUMO_DATA_ROOTS.")
            remember_choice("data_root", str(roots[labels.index(picked)]))
        else:
            st.session_state["data_root"] = None
        st.caption(f"Device: {device_description()}")
        st.caption("Research use only — not a medical device.")


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
    picked = st.selectbox("Operating point", names, index=index, key=f"operating_point_choice:{model_path}",
                          help="The threshold in force: the card's own, or one set on a site's own labelled films "
                               "(Threshold page, Calibrate to this site).")
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


FIGURE_NAMES = [("roc_auc", "ROC AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                ("accuracy", "Accuracy"), ("precision", "Precision"), ("npv", "NPV"), ("flagged_fraction", "Flagged")]


def figure_table(figures: dict[str, Any]) -> Any:
    """Figures as a two-row table: it wraps at any width, where a row of st.metric truncates to '0.99…'."""
    return pd.DataFrame([{label: (f"{figures[k]:.4f}" if isinstance(figures.get(k), float) else "—")
                          for k, label in FIGURE_NAMES}])


def card_summary(card: Any) -> Any:
    """The card's main facts as readable rows (the whole card is a download)."""
    v, td, tr = card.validation, card.training_data, card.training
    rows = [("name", card.name), ("architecture", card.architecture), ("parameters", f"{card.parameters or 0:,}"),
            ("input", f"{card.input_size} px grayscale"), ("threshold", f"{card.threshold:.4f}"),
            ("threshold rule", card.threshold_rule), ("validation", f"{v.get('kind', '?')}: {v.get('split', '')}"),
            ("validation n", str(v.get("n", "?"))), ("training films", str(td.get("train_images", "?"))),
            ("training time", f"{tr.get('seconds', '?')} s on {tr.get('device', '?')}"),
            ("reproduce", str(tr.get("command", ""))[:400]), ("created", card.created),
            ("data attribution", card.data_attribution[:300])]
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


def ui_pacs_config() -> Any:
    """The deployment's PACS (secrets.toml [pneumo.pacs] or PNEUMO_PACS_*), never a visitor's URL; None
    when none is configured or its settings are unusable (said once, as an error box)."""
    try:
        return pacs.PacsConfig.load(_secrets())
    except ValueError as exc:
        st.error(f"The configured PACS cannot be used: {plain(exc)}", icon=":material/error:")
        return None


def _secrets() -> dict[str, Any]:
    try:
        return {k: v for k, v in st.secrets.items()}
    except Exception:  # no secrets.toml
        return {}


def pacs_source(config: Any, loaded: LoadedModel, model_key: str) -> Any:
    """Predict's "From PACS" source: search the configured server's studies, screen the ticked ones
    through the one prediction path, and send the results back (with the deployment's permission).
    Returns the screening run (kept in this session) or None before one."""
    server = pacs.Pacs.from_config(config)
    st.caption(f"PACS: {plain(pacs.redact(config.url))}" + (" · patient identifiers shown" if config.show_identifiers
                                                            else " · no patient identifiers shown"))
    cols = st.columns([2, 2, 2])
    since = cols[0].text_input("Studies since (YYYYMMDD)", key="pacs-since", placeholder="any date")
    accession = cols[1].text_input("Accession number", key="pacs-accession")
    unscreened = cols[2].toggle("Not yet screened by this model", key="pacs-unscreened")
    try:
        rows = pacs.list_studies(server, show_identifiers=config.show_identifiers, since=since or None,
                                 accession=accession or None, unscreened_by=loaded if unscreened else None, limit=200)
    except (pacs.PacsError, ValueError) as exc:
        st.error(plain(exc), icon=":material/cloud_off:")
        return None
    if not rows:
        st.info("No studies match.")
        return None
    table = pd.DataFrame(rows)
    picked = st.dataframe(table.drop(columns=[c for c in ("study_uid",) if c in table]), hide_index=True,
                          width="stretch", on_select="rerun", selection_mode="multi-row",
                          key=f"pacs-studies:{hash(tuple(table.get('study_uid', [])))}")
    chosen = [rows[i]["study_uid"] for i in picked.selection.rows] if picked and picked.selection else []
    run_key = f"pacs-run:{model_key}"
    if st.button(f"Screen {len(chosen)} selected stud{'y' if len(chosen) == 1 else 'ies'}", disabled=not chosen,
                 type="primary", key="pacs-screen"):
        bar, update = progress_bar("Screening studies…")
        try:
            st.session_state[run_key] = pacs.screen_studies(server, loaded, chosen, keep_pixels=True,
                                                            progress=lambda d, t, _r: update(d, t))
        finally:
            bar.empty()
    run = st.session_state.get(run_key)
    if run is None:
        st.caption("Tick studies and screen them; the readings appear below as a worklist.")
        return None
    if run.error:
        st.error(plain(run.error), icon=":material/cloud_off:")
    skipped = [r for r in run.results if r.status in (pacs.SKIPPED, pacs.ALREADY)]
    if skipped:
        st.caption(f"{len(skipped)} image(s) not read: " + "; ".join(plain(f"{r.path}: {r.skipped or r.status}")
                                                                      for r in skipped[:6]))
    allowed = config.may_send(settings().allow_changes)
    unsent = [r for r in run.results if r.status == pacs.SCREENED and not r.stored]
    if st.button("Send results to PACS", disabled=not (allowed and unsent), key="pacs-send",
                 help=None if allowed else "Sending is switched off in this deployment."):
        errors = pacs.send_results(server, loaded, run.results)
        stored = sum(bool(r.stored) for r in unsent)
        st.session_state[f"{run_key}:sent"] = (f"Stored the results of {stored} film(s) in their studies."
                                               if not errors else None, errors)
    message, errors = st.session_state.get(f"{run_key}:sent", (None, []))
    for line in errors:
        st.error(plain(line), icon=":material/cloud_off:")
    if message:
        st.success(message, icon=":material/cloud_done:")
    return run
