"""A Predict card's pieces, cached for every session: readings, maps and screen pictures in byte-bounded shared
caches, the card's picture grid and its rules, and downloads made on click.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from pneumo.data.decode import load_xray
from pneumo.data.pixels import resize, shrink, to_uint8
from pneumo.integrations import report
from pneumo.model import explain
from pneumo.model import reading as predict
from pneumo.model.loading import LoadedModel


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
# One decode at a time per session, taken before a shared slot: a session's page run and its download
# threads (Streamlit runs download callables beside the script) could otherwise hold every shared slot
# and make every other visitor wait behind one visitor's batch. A session's semaphore lives while it is
# held or waited on (a weak dictionary), so closed sessions leave nothing behind.
_SESSION_DECODES: weakref.WeakValueDictionary[str, threading.Semaphore] = weakref.WeakValueDictionary()
_SESSION_DECODES_LOCK = threading.Lock()


@contextmanager
def session_slot(session: str) -> Iterator[None]:
    """Hold this session's one decode slot (an empty session id shares one slot: callers outside the app)."""
    with _SESSION_DECODES_LOCK:
        slot = _SESSION_DECODES.get(session)
        if slot is None:
            slot = _SESSION_DECODES[session] = threading.Semaphore(1)
    with slot:
        yield


# What the cards draw, shared by every session: heat maps at the model's input size (200 KB a method)
# and the encoded screen pictures (films and maps at most 640 px a side, one colour bar per film size).
PICTURES = SharedCache(64 * 2**20, _picture_bytes)


def cached_reading(
    loaded: LoadedModel, digest: str, name: str, data: bytes, model_key: str, band: float, session: str = ""
) -> Any:
    """One upload read through the one prediction path, compacted and cached by content (see above);
    session: whose decode this is, for the one-slot-per-session rule."""

    def read() -> predict.Reading:
        with session_slot(session), _DECODES:
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
    session: str = ""  # the visitor's session id: one decode at a time each

    def data(self) -> bytes:
        return self.source.read_bytes() if isinstance(self.source, Path) else self.source.getvalue()

    def reading(self) -> predict.Reading:
        return cached_reading(self.loaded, self.digest, self.name, self.data(), self.model_key, self.band, self.session)


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
    xray = card_film(item, notes).xray
    assert xray is not None  # only a card of a decoded film offers its overlay
    return explain.png_bytes(explain.with_colorbar(explain.overlay(xray.pixels, heat, opacity)))


def _reading_pdf(
    item: Upload | predict.Reading, notes: predict.Reading, loaded: LoadedModel, heat: Any, number: int
) -> bytes:
    return report.study_pdf([card_film(item, notes)], loaded, {0: heat}, numbers=[number])


def _batch_pdf(
    packed: list[predict.Reading], digests: list[str], loaded: LoadedModel, model_key: str, drift: str | None
) -> bytes:
    readings = [predict.unpack(r) for r in packed]
    heat = {
        i: card_heatmaps(loaded, digests[i], model_key, r)["gradcam"]
        for i, r in enumerate(readings)
        if r.xray is not None
    }
    return report.study_pdf(readings, loaded, heat, drift=drift)


def _target(loaded: LoadedModel, reading: predict.Reading) -> int:
    """The class a card's maps explain: the reading's own at the threshold in force (an operating point
    chosen in the sidebar may move it), so the maps need no pass of their own to find it."""
    assert reading.probability is not None  # maps are made only for decoded films, which all have one
    return int(reading.probability >= loaded.threshold)


def card_heatmaps(loaded: LoadedModel, digest: str, model_key: str, reading: predict.Reading) -> dict[str, Any]:
    """Both maps of a reading's film at the model's input size, from PICTURES (or made in one pass): the
    cards and the batch report show the same ones."""
    target = _target(loaded, reading)

    def make() -> dict[str, Any]:
        xray = predict.unpack(reading).xray
        assert xray is not None  # maps are made only for decoded films
        return explain.gradcams(loaded, resize(xray.pixels, loaded.input_size), target=target)

    return PICTURES.get(("heat", digest, model_key, target), make)


def card_pictures(loaded: LoadedModel, digest: str, model_key: str, reading: predict.Reading, film: Any) -> list[bytes]:
    """A card's seven pictures, encoded once for every session (PICTURES): the film, then for each method
    of explain.METHODS the film again (the same bytes: one download), its coloured map (JPEG) and the
    colour bar (PNG, one for every film of that size). The browser blends each map over its film at the
    chosen opacity and sets the bar beside them. `film` is the card's film at display size; the maps are
    the reading's."""
    heat = card_heatmaps(loaded, digest, model_key, reading)
    screen = shrink(film)
    xray = PICTURES.get(("xray", digest), lambda: explain.jpeg_bytes(screen))
    bar = PICTURES.get(
        ("bar", *screen.shape[:2]), lambda: explain.png_bytes(explain.screen_colorbar(*screen.shape[:2]))
    )
    target = _target(loaded, reading)
    pictures = [xray]
    for method in explain.METHODS:
        # The layer is built at once when missing (get calls it before the loop moves on): bind method anyway.
        layer = functools.partial(lambda m: explain.jpeg_bytes(explain.map_layer(screen, heat[m])), method)
        pictures += [xray, PICTURES.get((method, digest, model_key, target), layer), bar]
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
# A not-assessable reading's score: greyed and small (no decision is made; the CSV, PDF and PACS list it).
CARD_MUTED_KEY = "cardmuted"  # the container around such a card's probability: f"{CARD_MUTED_KEY}-{item}"
# Around the pictures of a card whose maps are off (a not-assessable film, until its toggle shows them): the film
# only is shown. The maps stay in the one image element, hidden, so showing them fetches nothing new.
CARD_MAPS_OFF_KEY = "cardmapsoff"
_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}  # each of explain.METHODS as a card names it
# In card_pictures' order: the film, then for each method its film, its map and its colour bar.
CARD_PICTURE_ALT = ["X-ray"] + [
    alt
    for m in explain.METHODS
    for alt in (f"X-ray under the {_TITLES[m]} map", f"{_TITLES[m]} map", "colour bar: share of the map's peak, 0 to 1")
]
_CAPTIONS = [(1, "X-ray")] + [(2 + 3 * k, _TITLES[m]) for k, m in enumerate(explain.METHODS)]  # under each film
# Under each colour bar, its title: what its numbers are.
_BAR_TITLES = [(4 + 3 * k, "share of peak") for k in range(len(explain.METHODS))]
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
    + " ".join(
        f"{_PIC}:nth-child({n})::after {{content: '{text}'; display: block; text-align: center; "
        f"font-size: 0.875rem; opacity: 0.6; padding-top: 0.25rem}}"
        for n, text in _CAPTIONS
    )
    + " "
    + " ".join(
        f"{_PIC}:nth-child({n})::after {{content: '{text}'; display: block; text-align: center; "
        f"font-size: 0.75rem; line-height: 1.2; opacity: 0.6; padding-top: 0.25rem}}"
        for n, text in _BAR_TITLES
    )
    + f" [class*='st-key-{CARD_MAPS_OFF_KEY}-'] [data-testid='stImageContainer']:nth-child(n+2) {{display: none}}"
    + f" [class*='st-key-{CARD_MUTED_KEY}-'] [data-testid='stMetricValue'] {{font-size: 1.1rem; opacity: 0.55}}"
    + f" [class*='st-key-{CARD_MUTED_KEY}-'] [data-testid='stMetricLabel'] {{opacity: 0.7}}"
)


def card_rules(opacity: float) -> str:
    """The style rules of every card: its notes, its score (greyed and small where no decision is made) and its
    pictures, the maps (the 3rd and 6th picture) at `opacity`, or the film only where the maps are off."""
    return f"{_CARD_PICTURE_LAYOUT} {_PIC}:nth-child(3n) img {{opacity: {float(opacity):.2f}}}"


def overlay_png_on_click(
    item: Upload | predict.Reading, notes: predict.Reading, heat: Any, opacity: float
) -> Callable[[], bytes]:
    """The film's Grad-CAM overlay at display size with its colour bar, made when the button is pressed."""
    return functools.partial(_overlay_png, _pack_item(item), _notes(notes), heat, opacity)


def reading_pdf_on_click(
    item: Upload | predict.Reading, notes: predict.Reading, loaded: LoadedModel, heat: Any, number: int
) -> Callable[[], bytes]:
    """One film's PDF report, made when the button is pressed; number: the item number its card shows."""
    return functools.partial(_reading_pdf, _pack_item(item), _notes(notes), loaded, heat, number)


def batch_pdf_on_click(
    readings: list[predict.Reading], digests: list[str], loaded: LoadedModel, model_key: str, drift: str | None
) -> Callable[[], bytes]:
    """The batch's PDF report (every film with the Grad-CAM its card shows), made when the button is
    pressed; the films are kept as 8-bit copies until then."""
    return functools.partial(_batch_pdf, [predict.pack(r) for r in readings], list(digests), loaded, model_key, drift)


def _pack_item(item: Upload | predict.Reading) -> Upload | predict.Reading:
    return item if isinstance(item, Upload) else predict.pack(item)


def _notes(reading: predict.Reading) -> predict.Reading:
    """What the page added to a reading (warnings, repeats), without its film."""
    return predict.Reading(
        reading.name,
        None,
        reading.probability,
        reading.decision,
        reading.error,
        list(reading.warnings),
        reading.repeat_of,
        reading.calibrated,
    )


PEAK_OUTSIDE_NOTE = (
    "The map's peak lies outside the lung field (estimated by image analysis): something other than the lungs, "
    "such as the neck, a side marker or the film's edge, drove the score. Read the film, not the map."
)


def map_peak_note(
    loaded: LoadedModel, digest: str, model_key: str, reading: predict.Reading, film: Any, heat: Any
) -> str | None:
    """PEAK_OUTSIDE_NOTE when the card's Grad-CAM map peaks outside the lungs, else None; cached per film, model
    and the class the map explains (an operating point chosen in the sidebar may change it)."""
    target = _target(loaded, reading)
    # Kept as one byte (b"1": inside) in the byte-bounded picture cache.
    inside = PICTURES.get(
        ("peak-in-lungs", digest, model_key, target), lambda: b"1" if explain.peak_in_lungs(film, heat) else b"0"
    )
    return None if inside == b"1" else PEAK_OUTSIDE_NOTE


def native_film(item: Upload | predict.Reading) -> Any:
    """The film at its own resolution for the full-size viewer, as 8-bit samples: an upload decoded again (as the
    decoder keeps it, at most 2048 px a side; one decode slot per session and the shared ones, like a reading)
    and kept in PICTURES; a reading's (a PACS run's) film as it is."""
    if isinstance(item, predict.Reading):
        assert item.xray is not None  # only a decoded film is viewed
        return to_uint8(item.xray.pixels)

    def make() -> dict[str, Any]:
        with session_slot(item.session), _DECODES:
            return {"film": to_uint8(load_xray(item.data(), name=item.name).pixels)}

    return PICTURES.get(("native", item.digest), make)["film"]
