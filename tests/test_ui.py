"""pneumo.app.ui's downloads made on click and its shared reading cache, without a running app."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from pneumo.app import cards, sessions
from pneumo.data.pixels import resize, to_uint8
from pneumo.evaluation import site
from pneumo.model import explain
from pneumo.model import reading as predict
from pneumo.model.loading import load_model
from tests.conftest import synthetic_xray, write_png


def _arrays(value: object) -> list[np.ndarray]:
    """Every array a download's callable keeps alive through its arguments."""
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _arrays(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    if isinstance(value, predict.Reading):
        return _arrays(value.xray.pixels) if value.xray is not None else []
    return []


def test_downloads_keep_small_arguments_and_make_what_the_screen_shows(tiny_run: Path, tmp_path: Path) -> None:
    """A download's callable is a module function bound to small arguments: it keeps no page namespace and
    no float film (Streamlit holds it beyond the run), and still makes the overlay and the PDFs."""
    loaded = load_model(tiny_run)
    rng = np.random.default_rng(4)
    path = write_png(tmp_path / "film.png", synthetic_xray(rng, 300, pneumonia=True))
    data = path.read_bytes()
    upload = cards.Upload(loaded, hashlib.sha256(data).hexdigest(), path.name, path, "model-key", 0.05)
    shown = upload.reading()  # what the card shows: the film at display size
    shown.warnings.append("repeats item 1 (other.png): the same pixels; read them as one film")
    heat = explain.gradcam(loaded, shown.xray.pixels)

    overlay = cards.overlay_png_on_click(upload, shown, heat, 0.45)
    pdf = cards.reading_pdf_on_click(upload, shown, loaded, heat, 3)
    batch = cards.batch_pdf_on_click(
        [shown, predict.Reading("junk.png", None, None, None, "not an image")],
        [upload.digest, "junk"],
        loaded,
        "model-key",
        None,
    )
    for made in (overlay, pdf, batch):
        assert isinstance(made, functools.partial) and made.func.__module__ == "pneumo.app.cards"
        kept = _arrays(made.args)
        assert all(a.dtype == np.uint8 or a.size <= heat.size for a in kept), [(a.dtype, a.shape) for a in kept]
    assert _arrays(batch.args) and all(a.dtype == np.uint8 for a in _arrays(batch.args[0]))
    from tests.test_report import _pdf_text

    assert "Item 3" in _pdf_text(pdf())  # the card's own number, not the PDF's list position

    # The overlay blends the map at the chosen opacity over the grey film. A map that is 0 on the left half
    # and 1 on the right gives, by the jet colour scale's ends (dark blue (0, 0, 128) at 0, dark red
    # (128, 0, 0) at 1), 0.55 × grey + 0.45 × that colour in each channel; the colour bar lies to the right.
    film = shown.xray.pixels
    half = np.zeros_like(film)
    half[:, film.shape[1] // 2 :] = 1.0
    picture = _decoded(cards.overlay_png_on_click(upload, shown, half, 0.45)())[..., ::-1].astype(float)  # BGR
    grey = np.round(film.astype(float) * 255)
    h, w = film.shape
    assert picture.shape[0] == h and picture.shape[1] > w
    for columns, colour in ((slice(0, w // 2), (0, 0, 128)), (slice(w // 2, w), (128, 0, 0))):
        for channel, value in enumerate(colour):
            expected = 0.55 * grey[:, columns] + 0.45 * value
            assert np.abs(picture[:, columns, channel] - expected).max() <= 1.0, (columns, channel)
    assert _decoded(overlay()).shape == picture.shape  # the Grad-CAM map's overlay: the same film, the same bar
    assert pdf().startswith(b"%PDF") and batch().startswith(b"%PDF")
    # The batch report draws the map its card shows: the one kept for this film and model.
    assert (
        cards.PICTURES.peek(("heat", upload.digest, "model-key", int(shown.probability >= loaded.threshold)))
        is not None
    )
    assert shown.warnings[-1].startswith("repeats item 1")  # the page's note stays on the page's copy
    assert upload.reading().warnings == shown.warnings[:-1]


def _decoded(picture: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_UNCHANGED)


def test_card_pictures_share_the_film_and_the_bar_and_explain_the_class_in_force(
    tiny_run: Path, tmp_path: Path
) -> None:
    """A card's seven pictures: the film once (the same bytes under each map), each map at the film's size
    and the colour bar shared by films of one size; the maps explain the class at the threshold in force,
    so an operating point that turns a film's decision around gets maps of its own, not the cached ones."""
    loaded = load_model(tiny_run)
    rng = np.random.default_rng(8)
    films = [write_png(tmp_path / f"film{i}.png", synthetic_xray(rng, 200, pneumonia=i == 0)) for i in range(2)]
    readings = [predict.read(loaded, f) for f in films]
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in films]
    first, second = (cards.card_pictures(loaded, d, "model-key", r, r.xray.pixels) for d, r in zip(digests, readings))
    assert len(first) == len(cards.CARD_PICTURE_ALT) == 7
    assert first[0] == first[1] == first[4] and first[3] == first[6] == second[3]
    assert "nth-child(3n) img {opacity: 0.30}" in cards.card_rules(0.3)  # the 3rd and 6th: the maps
    assert first[0] != second[0] and first[2] != first[5]  # each film its own; Grad-CAM and Grad-CAM++ differ
    film, grad_map, bar = _decoded(first[0]), _decoded(first[2]), _decoded(first[3])
    assert film.shape == (200, 200) and grad_map.shape == (200, 200, 3) and bar.shape[2] == 4
    # What the screen shows, up to JPEG: the card's film, and the map its downloads and reports are made of.
    assert np.abs(film.astype(int) - to_uint8(readings[0].xray.pixels)).mean() < 3
    heat = cards.card_heatmaps(loaded, digests[0], "model-key", readings[0])["gradcam"]
    drawn = explain.map_layer(readings[0].xray.pixels, heat)
    assert np.abs(grad_map[..., ::-1].astype(int) - drawn).mean() < 6  # cv2 decodes BGR
    # Another operating point, on the other side of the first film's probability: the other class explained.
    p = readings[0].probability
    loaded.card.site_operating_points = [
        {"name": "other side", "threshold": (p + 1) / 2 if p >= loaded.threshold else p / 2}
    ]
    other = site.apply_operating_point(loaded, "other side")
    assert int(p >= other.threshold) != int(p >= loaded.threshold)
    flipped = cards.card_pictures(other, digests[0], "model-key", readings[0], readings[0].xray.pixels)
    assert flipped[0] == first[0] and flipped[2] != first[2]
    at_input = resize(readings[0].xray.pixels, loaded.input_size)  # the maps are kept at the model's input size
    expected = explain.gradcams(other, at_input, target=int(p >= other.threshold))["gradcam"]
    assert np.allclose(cards.card_heatmaps(other, digests[0], "model-key", readings[0])["gradcam"], expected, atol=1e-3)


def test_the_shared_reading_cache_keeps_8_bit_films_and_hands_out_copies(tiny_run: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny_run)
    path = write_png(tmp_path / "film.png", synthetic_xray(np.random.default_rng(6), 200, pneumonia=False))
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    first = cards.cached_reading(loaded, digest, path.name, data, "model-key", 0.05)
    kept = cards.READINGS.peek((digest, path.name, "model-key", 0.05, loaded.threshold))
    assert kept.xray.pixels.dtype == np.uint8 and first.xray.pixels.dtype == np.float32
    first.warnings.append("a note of one page")
    second = cards.cached_reading(loaded, digest, path.name, data, "model-key", 0.05)
    assert "a note of one page" not in second.warnings and second.xray.pixels is not first.xray.pixels
    assert second.probability == predict.read(loaded, data, name=path.name).probability
    # Another operating point of the same model, with the film on the other side of it: the decision is
    # made at the threshold in force, not taken from the reading cached under the first.
    p = second.probability
    loaded.card.site_operating_points = [
        {"name": "other side", "threshold": (p + 1) / 2 if p >= loaded.threshold else p / 2}
    ]
    other = site.apply_operating_point(loaded, "other side")
    before = cards.cached_reading(loaded, digest, path.name, data, "model-key", 0.0)  # no band: a class either way
    moved = cards.cached_reading(other, digest, path.name, data, "model-key", 0.0)
    assert before.decision == predict.decide(p, loaded.threshold, 0.0)
    assert moved.decision == predict.decide(p, other.threshold, 0.0) != before.decision


def test_a_shared_cache_is_bounded_by_bytes_and_makes_each_value_once() -> None:
    cache = cards.SharedCache(100, len)
    made: list[str] = []

    def make(key: str, size: int) -> bytes:
        made.append(key)
        return b"x" * size

    assert cache.get("a", lambda: make("a", 40)) == b"x" * 40
    assert cache.get("a", lambda: make("a", 40)) == b"x" * 40 and made == ["a"]  # a hit makes nothing
    cache.get("b", lambda: make("b", 40))
    cache.get("a", lambda: make("a", 40))  # "a" is now the most recently used
    cache.get("c", lambda: make("c", 40))  # 120 bytes: the least recently used ("b") goes
    assert cache.peek("b") is None and cache.peek("a") is not None and cache.peek("c") is not None
    assert cache.get("huge", lambda: make("huge", 101)) == b"x" * 101  # made, and not kept
    assert cache.peek("huge") is None and cache.peek("a") is not None


class _Manager:
    """A Streamlit runtime manager that records what it was asked to release."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __getattr__(self, name: str):  # remove_session_files, clear_session_refs, remove_orphaned_files, ...
        return lambda session_id=None: self.calls.append((name, session_id))


class _Runtime:
    def __init__(self, active: set[str]) -> None:
        self.active = active
        self.uploaded_file_mgr, self.media_file_mgr, self.dataframe_source_mgr = _Manager(), _Manager(), _Manager()

    def is_active_session(self, session_id: str) -> bool:
        return session_id in self.active


def test_a_closed_session_is_released_only_once_it_can_no_longer_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that disconnected keeps its uploads while Streamlit could still resume it (the TTL and a
    margin from when it was first found disconnected, however late that check came), then loses them, its
    pictures and its tables; a session still connected is never released, however old."""
    import streamlit as st

    monkeypatch.setattr(sessions, "_SESSIONS", {})  # none of the sessions app tests ran in this process
    ttl = float(st.get_option("server.disconnectedSessionTTL"))
    rt = _Runtime(active={"open", "closing"})
    for session_id in ("open", "closing"):
        sessions.track_session(session_id)
    assert sessions.release_expired_sessions(rt, now=5, margin_s=2) == []
    rt.active.discard("closing")  # the tab closes; the next check comes late, 40 s on
    assert sessions.release_expired_sessions(rt, now=45, margin_s=2) == []  # first found gone: the TTL starts now
    assert sessions.release_expired_sessions(rt, now=45 + ttl + 1, margin_s=2) == []  # could still resume
    assert rt.uploaded_file_mgr.calls == []
    assert sessions.release_expired_sessions(rt, now=45 + ttl + 3, margin_s=2) == ["closing"]
    assert rt.uploaded_file_mgr.calls == [("remove_session_files", "closing")]
    assert ("clear_session_refs", "closing") in rt.media_file_mgr.calls
    assert ("remove_orphaned_files", None) in rt.media_file_mgr.calls
    assert rt.dataframe_source_mgr.calls == [("clear_all_for_session", "closing")]
    # Released once; the open session stays tracked and untouched an hour on.
    assert sessions.release_expired_sessions(rt, now=3600, margin_s=2) == []
    assert all(session_id == "closing" for _, session_id in rt.uploaded_file_mgr.calls)
    # A session that reconnects before its TTL is out starts again from connected.
    rt.active.discard("open")
    sessions.release_expired_sessions(rt, now=4000, margin_s=2)
    rt.active.add("open")
    sessions.release_expired_sessions(rt, now=4000 + ttl, margin_s=2)
    rt.active.discard("open")
    assert sessions.release_expired_sessions(rt, now=4000 + ttl + 10, margin_s=2) == []


def test_one_session_holds_one_decode_slot_and_others_go_past_it() -> None:
    """A visitor's page run and its download threads share one decode slot: a second decode of the same
    session waits, another session's goes ahead (the shared slots are never all one visitor's)."""
    import threading

    from pneumo.app import cards

    second_of_a = threading.Event()

    def decode_again() -> None:
        with cards.session_slot("a"):
            second_of_a.set()

    with cards.session_slot("a"):
        waiting = threading.Thread(target=decode_again)
        waiting.start()
        assert not second_of_a.wait(0.3)  # the same session waits for its own slot
        other = threading.Event()

        def decode_for_b() -> None:
            with cards.session_slot("b"):
                other.set()

        threading.Thread(target=decode_for_b, daemon=True).start()
        assert other.wait(5)  # another session is not held up by a's
    waiting.join(5)
    assert second_of_a.is_set()


def test_the_viewer_gets_the_film_at_its_own_resolution_and_keeps_it_once(tiny_run: Path, tmp_path: Path) -> None:
    """A card holds its film at display size (at most predict.SCREEN_SIDE); the full-size viewer gets the film as
    the decoder gives it (8-bit), decoded again once and then kept in the shared picture cache."""
    from pneumo.data.decode import load_xray

    loaded = load_model(tiny_run)
    rng = np.random.default_rng(11)
    side = predict.SCREEN_SIDE + 276  # larger than a card keeps, under the decoder's 2048
    film = np.clip(resize(synthetic_xray(rng, 200), side) + rng.normal(0, 0.01, (side, side)), 0, 1)
    path = write_png(tmp_path / "large.png", film[:, : side - 100])  # not square: rows and columns kept apart
    data = path.read_bytes()
    upload = cards.Upload(loaded, hashlib.sha256(data).hexdigest(), path.name, path, "model-key", 0.05)
    assert max(upload.reading().xray.pixels.shape) == predict.SCREEN_SIDE  # the card's copy is smaller
    native = cards.native_film(upload)
    assert native.dtype == np.uint8 and native.shape == (side, side - 100)
    assert (native == to_uint8(load_xray(data, name=path.name).pixels)).all()
    kept = cards.PICTURES.peek(("native", upload.digest))
    assert kept is not None and kept["film"] is native
    assert cards.native_film(upload) is native  # not decoded again
    # A PACS run's reading: its own film, at 8 bits.
    reading = predict.read(loaded, data, name=path.name)
    assert (cards.native_film(reading) == to_uint8(reading.xray.pixels)).all()


def test_card_rules_grey_a_score_without_decision_and_hide_maps_that_are_off() -> None:
    """The rules the page relies on for a not-assessable card (the browser test sees their effect): its score
    greyed and small, its maps hidden while off (the film, the first picture, stays), the colour bars titled."""
    rules = cards.card_rules(0.45)
    value = r"\[data-testid='stMetricValue'\]"
    muted = re.search(rf"\[class\*='st-key-{cards.CARD_MUTED_KEY}-'\] {value} \{{([^}}]*)\}}", rules)
    assert muted and "opacity: 0.55" in muted.group(1) and "font-size: 1.1rem" in muted.group(1)
    hidden = re.search(rf"\[class\*='st-key-{cards.CARD_MAPS_OFF_KEY}-'\] ([^{{]*)\{{display: none\}}", rules)
    assert hidden and hidden.group(1).strip() == "[data-testid='stImageContainer']:nth-child(n+2)"
    for n in (4, 7):  # the two colour bars (card_pictures' order)
        assert re.search(rf":nth-child\({n}\)::after \{{content: 'share of peak'", rules), n


def test_without_tensorflow_the_app_says_training_needs_the_full_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving install (requirements.txt) has no TensorFlow: found by its spec, never by importing it, and the
    device line says training is not available instead of a device check that fails in a child process."""
    import importlib.util

    from pneumo.app import ui

    assert ui.training_available()  # this environment is the full install
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert not ui.training_available()
    assert "no TensorFlow" in ui.device_description()
    assert "pip install -e ." in ui.TRAINING_NEEDS and "make run" in ui.TRAINING_NEEDS


def test_the_explorer_s_films_are_decoded_once_and_again_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun of the Dataset Explorer (a click, a verdict) shows its grids again without decoding any film."""
    import os

    from pneumo.app import ui
    from pneumo.data import overview

    decoded: list[str] = []
    real = overview.thumbnail
    monkeypatch.setattr(overview, "thumbnail", lambda path, side=640: decoded.append(path) or real(path, side))
    film = write_png(tmp_path / "a.png", synthetic_xray(np.random.default_rng(1), size=800))
    first = ui.film_thumbnail(str(film))
    assert first.dtype == np.uint8 and first.shape == (640, 640)  # kept small: 800 px down to 640
    assert ui.film_thumbnail(str(film)) is first and decoded == [str(film)]
    write_png(film, synthetic_xray(np.random.default_rng(2), size=300))
    os.utime(film, ns=(1, 1))
    assert ui.film_thumbnail(str(film)).shape == (300, 300) and len(decoded) == 2
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises((ValueError, OSError)):
        ui.film_thumbnail(str(tmp_path / "bad.png"))
    with pytest.raises(OSError):
        ui.film_thumbnail(str(tmp_path / "gone.png"))
