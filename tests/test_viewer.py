"""The full-size viewer's figure (pneumo.app.viewer) and the worklist's rows and markup (pneumo.app.worklist),
without Streamlit."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from pneumo.app import viewer, worklist
from pneumo.data.decode import XRay
from pneumo.model import reading as predict


def _shown(fig: object) -> np.ndarray:
    """The film a viewer figure draws, decoded from its image layer."""
    source = fig.data[0].source
    assert source.startswith("data:image/png;base64,")
    return cv2.imdecode(np.frombuffer(base64.b64decode(source.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)


def test_window_maps_levels_by_the_dicom_linear_function() -> None:
    """Every 8-bit level through a window, against PS3.3 C.11.2.1.2.1 worked by hand: centre 100, width 51 gives
    0 up to 74.5, 255 above 124.5, and between ((x - 99.5) / 50 + 0.5) * 255."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    windowed = viewer.window(levels, 100, 51)
    assert windowed.dtype == np.uint8 and windowed.shape == levels.shape
    out = windowed.ravel().astype(int)
    assert (out[:75] == 0).all() and (out[125:] == 255).all()
    assert out[75] == round(((75 - 99.5) / 50 + 0.5) * 255) == 3
    assert out[100] == round((0.5 / 50 + 0.5) * 255) == 130
    assert out[124] == round(((124 - 99.5) / 50 + 0.5) * 255) == 252
    assert (np.diff(out) >= 0).all()  # monotone: a window never swaps two levels
    # The full window shows every level as it is; a float film is taken at its 8-bit levels.
    assert (viewer.window(levels, *viewer.FULL_WINDOW) == levels).all()
    assert (viewer.window(levels.astype(np.float32) / 255, *viewer.FULL_WINDOW) == levels).all()
    # Width 1 is a threshold at the centre: levels up to 99 black, from 100 white.
    step = viewer.window(levels, 100, 1).ravel()
    assert (step[:100] == 0).all() and (step[100:] == 255).all()
    with pytest.raises(ValueError):
        viewer.window(levels, 100, 0)
    # Each named window is a window: inside the gray levels, and not the identity (it changes what is seen).
    for name, (centre, width) in viewer.PRESETS.items():
        assert 0 <= centre <= 255 and 1 <= width <= 256, name
        assert name == "Full range" or (viewer.window(levels, centre, width) != levels).any(), name


def test_the_figure_is_the_film_at_its_own_resolution_under_the_window() -> None:
    rng = np.random.default_rng(3)
    film = rng.integers(0, 256, (300, 200), dtype=np.uint8)  # taller than wide: rows and columns not confused
    fig = viewer.film_figure(film, 90, 60)
    shown = _shown(fig)
    assert shown.shape == film.shape  # one image pixel per film pixel, no resampling
    assert (shown == viewer.window(film, 90, 60)).all()  # the window, exactly (PNG is lossless)
    assert list(fig.layout.xaxis.range) == [-0.5, 199.5] and list(fig.layout.yaxis.range) == [299.5, -0.5]
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1  # square pixels
    assert fig.layout.dragmode == "pan" and viewer.CONFIG["scrollZoom"] is True  # drag pans, the wheel zooms
    assert viewer.layers(fig) == ["X-ray"]
    assert (_shown(viewer.film_figure(film)) == film).all()  # by default the film as it is stored
    # A [0, 1] float film (what a reading holds) is drawn at its 8-bit levels.
    assert (_shown(viewer.film_figure(film.astype(np.float32) / 255)) == film).all()


def test_the_map_is_a_layer_over_the_whole_film_that_can_be_left_out() -> None:
    film = np.full((300, 200), 128, np.uint8)
    heat = np.zeros((7, 7), np.float32)
    heat[3, 5] = 1.0
    fig = viewer.film_figure(film, heat=heat, opacity=0.3)
    assert viewer.layers(fig) == ["X-ray", "Grad-CAM"]
    layer = fig.data[1]
    assert layer.type == "heatmap" and layer.opacity == pytest.approx(0.3)
    assert (layer.zmin, layer.zmax) == (0.0, 1.0) and layer.colorbar.title.text == viewer.MAP_TITLE
    # Its 7 × 7 cells cover the film's extent exactly: the first cell's left edge at -0.5, the last's right at 199.5.
    assert layer.x0 - layer.dx / 2 == pytest.approx(-0.5) and layer.x0 + 6.5 * layer.dx == pytest.approx(199.5)
    assert layer.y0 - layer.dy / 2 == pytest.approx(-0.5) and layer.y0 + 6.5 * layer.dy == pytest.approx(299.5)
    # The peak cell (row 3, column 5) lies where that cell of the film is.
    z = np.asarray(layer.z)
    row, col = np.unravel_index(np.argmax(z), z.shape)
    assert (row, col) == (3, 5)
    x, y = layer.x0 + col * layer.dx, layer.y0 + row * layer.dy
    assert 5 * 200 / 7 <= x <= 6 * 200 / 7 and 3 * 300 / 7 <= y <= 4 * 300 / 7
    # The film under it is the same with or without the layer.
    assert (_shown(fig) == _shown(viewer.film_figure(film))).all()
    assert viewer.layers(viewer.film_figure(film, heat=None)) == ["X-ray"]


def _reading(name: str, probability: float | None, decision: str | None, *warnings: str, error: str | None = None):
    xray = None if error else XRay(np.zeros((8, 8), np.float32), name, "PNG", (8, 8))
    return predict.Reading(name, xray, probability, decision, error, list(warnings))


class _Table(HTMLParser):
    """The worklist's rows as the browser would read them: each row's cells' text, links and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, object]] = []
        self.tags: list[str] = []
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "tr" and a.get("data-item"):
            self.rows.append({"item": a["data-item"], "links": [], "fills": 0, "text": {}})
        elif self.rows and tag == "td":
            self._cell = str(a.get("class", "")).removeprefix("pn-")
            self.rows[-1]["text"][self._cell] = ""
        elif self.rows and tag == "a":
            self.rows[-1]["links"].append((a.get("href"), a.get("aria-label")))
        elif self.rows and tag == "span" and a.get("class") == "pn-fill":
            self.rows[-1]["fills"] += 1
            self.rows[-1]["fill"] = a.get("style")

    def handle_data(self, data: str) -> None:
        if self.rows and self._cell:
            self.rows[-1]["text"][self._cell] += data


def test_the_worklist_reads_in_order_with_reasons_empty_bars_and_named_links() -> None:
    long = "unlike the films the model was checked on (feature distance 23.4, alarm level 14.5): not a chest film"
    readings = [
        _reading("ok.png", 0.35, predict.NORMAL),
        _reading("flower.png", 0.937, predict.NOT_ASSESSABLE, "colour image (channel spread 0.55): a photo", long),
        _reading("broken.png", None, None, error="not an image (the content is PDF)"),
        _reading("high.png", 0.9, predict.PNEUMONIA),
        _reading("<img src=x onerror=alert(1)>.png", 0.6, predict.PNEUMONIA, "repeats item 4 (high.png): the same"),
    ]
    rows = worklist.rows(readings)
    # Reading order: the unreadable file, then the warned ones by probability, then the rest by probability.
    assert [r.item for r in rows] == [3, 2, 5, 4, 1]
    assert worklist.sequence(readings) == [2, 1, 4, 3, 0]
    assert worklist.sections(readings) == ([2, 1, 4], [3, 0])
    flower = rows[1]
    assert not flower.scored and flower.probability == pytest.approx(0.937)  # listed, not a score
    assert flower.reasons == ["colour image", "unlike the films the model was checked on"]
    assert flower.details[1] == long  # the full warning, not cut
    assert rows[0].reasons == ["could not be read"] and rows[0].decision == worklist.REJECTED
    markup = worklist.worklist_html(rows)
    parsed = _Table()
    parsed.feed(markup)
    by_item = {r["item"]: r for r in parsed.rows}
    assert list(by_item) == ["3", "2", "5", "4", "1"]
    # The bar: empty for the film with no decision and the unreadable file, filled to the score otherwise.
    assert by_item["2"]["fills"] == 0 and by_item["3"]["fills"] == 0
    assert by_item["4"]["fills"] == 1 and "width: 90.0%" in by_item["4"]["fill"]
    assert "0.937 (not assessed)" in by_item["2"]["text"]["probability"]
    # The reason in its own column, short; the whole warning in the same cell, folded.
    reason = by_item["2"]["text"]["reason"]
    assert "colour image; unlike the films the model was checked on" in reason and long in reason
    assert "<details" in markup and "<summary>" in markup
    assert by_item["1"]["text"]["reason"].strip() == "—"
    # Links named for where they go, never a bare number, each to its card.
    for item, row in by_item.items():
        ((href, label),) = row["links"]
        assert href == f"#item-{item}" and label.startswith(f"Go to item {item}, ") and not re.fullmatch(r"\d+", label)
    assert by_item["2"]["links"][0][1] == "Go to item 2, flower.png, NOT ASSESSABLE"
    # A visitor's text is text: the hostile file name is escaped, never an element.
    assert "img" not in parsed.tags and "&lt;img src=x onerror=alert(1)&gt;.png" in markup
    assert by_item["5"]["text"]["file"] == "<img src=x onerror=alert(1)>.png"


def test_scored_means_a_decision_was_made() -> None:
    assert worklist.scored(_reading("a.png", 0.2, predict.NORMAL))
    assert worklist.scored(_reading("a.png", 0.31, predict.UNCERTAIN))
    assert not worklist.scored(_reading("a.png", 0.96, predict.NOT_ASSESSABLE, "colour image: photo"))
    assert not worklist.scored(_reading("a.png", None, None, error="empty file"))


def test_cards_come_in_pages_of_25_in_worklist_order() -> None:
    assert [worklist.page_count(n) for n in (0, 1, 25, 26, 50, 200)] == [1, 1, 1, 2, 2, 8]
    assert worklist.page_count(7, per_page=3) == 3
    assert worklist.page_label(8) == "Cards, page of 25 (1–8)"
    order = list(range(59, -1, -1))  # 60 films, the worklist's order reversing the batch's
    first = worklist.card_page(order, 1)
    assert first.items == list(range(59, 34, -1)) and (first.first, first.last, first.of) == (1, 25, 60)
    assert first.caption == "Cards 1–25 of 60; every film is in the worklist and the reports."
    last = worklist.card_page(order, 3)
    assert last.items == list(range(9, -1, -1)) and last.caption == (
        "Cards 51–60 of 60; every film is in the worklist and the reports."
    )
    assert worklist.card_page(order, 9).number == 3 and worklist.card_page(order, 0).items == first.items
    one = worklist.card_page([2, 0, 1], 1)
    assert one.items == [2, 0, 1] and one.pages == 1 and one.caption is None  # one page: nothing to say
    assert worklist.card_page(list(range(200)), 1).caption.startswith("Cards 1–25 of 200;")


def test_a_page_of_cards_keeps_its_headings_only_where_it_has_cards() -> None:
    readings = [
        _reading("warned.png", 0.5, predict.PNEUMONIA, "repeats item 2"),
        _reading("low.png", 0.1, predict.NORMAL),
        _reading("broken.png", None, None, error="empty file"),
        _reading("high.png", 0.9, predict.PNEUMONIA),
    ]
    # Reading order: broken (2), warned (0), then high (3), low (1).
    both = worklist.card_page(worklist.sequence(readings), 1, per_page=3)
    assert worklist.page_sections(readings, both) == [
        ("Needs attention (2)", [2, 0]),
        ("Readings, highest probability first", [3]),
    ]
    rest = worklist.card_page(worklist.sequence(readings), 2, per_page=3)
    assert worklist.page_sections(readings, rest) == [("Readings, highest probability first", [1])]
    attention = worklist.card_page(worklist.sequence(readings), 1, per_page=1)
    assert worklist.page_sections(readings, attention) == [("Needs attention (2)", [2])]  # the batch's count


def test_the_viewer_steps_through_the_films_in_worklist_order() -> None:
    viewable = [4, 0, 2]
    assert worklist.neighbours(viewable, 4) == (1, None, 0)
    assert worklist.neighbours(viewable, 0) == (2, 4, 2)
    assert worklist.neighbours(viewable, 2) == (3, 0, None)
    assert worklist.neighbours([7], 7) == (1, None, None)


def test_a_decision_s_badge_and_a_pacs_film_s_key() -> None:
    assert worklist.badge(predict.PNEUMONIA) == ":red-badge[**PNEUMONIA**]"
    assert worklist.badge(predict.NOT_ASSESSABLE) == ":gray-badge[**NOT ASSESSABLE**]"
    assert worklist.badge("something new") == ":gray-badge[**something new**]"
    # The key of instance 1.2.3 of study 1.2: the SHA-256 of "1.2/1.2.3".
    assert (
        worklist.pacs_digest("1.2", "1.2.3") == "5e3b3f62503fb97c695d92a700db0ebb2603c5030855da6eca0cd004d3c5b761"
    )  # sha256sum of it
    assert worklist.pacs_digest("1.2", "1.2.3") != worklist.pacs_digest("1.2", "1.2.4")


def test_the_viewer_opens_only_a_film_of_this_batch_and_says_what_it_shows() -> None:
    readings = [
        _reading("a.png", 0.2, predict.NORMAL),
        _reading("broken.png", None, None, error="empty file"),
        _reading("b.png", 0.9, predict.PNEUMONIA),
    ]
    assert worklist.viewable(readings) == [2, 0]  # worklist order, the unreadable file left out
    digests = ["da", "dbroken", "db"]
    assert worklist.still_open((2, "db"), [2, 0], digests)
    assert not worklist.still_open((2, "an earlier batch's film"), [2, 0], digests)
    assert not worklist.still_open((1, "dbroken"), [2, 0], digests)  # no film to show
    assert not worklist.still_open((7, "dz"), [2, 0], digests) and not worklist.still_open(None, [2, 0], digests)
    assert viewer.view_caption((1024, 800), 128, 256, False) == (
        "The film at its own resolution (800×1024 px), window centre 128, width 256 of gray levels 0–255. Drag to "
        "pan, scroll or pinch to zoom, double-click to fit."
    )
    assert viewer.view_caption((10, 20), 80, 140, True).endswith(
        "double-click to fit. The map is scaled to its own peak (1.0 on the bar)."
    )


def test_a_score_is_said_as_a_decision_s_or_as_listed_only() -> None:
    plain_score = _reading("a.png", 0.25, predict.NORMAL)
    assert worklist.score_help(plain_score) is None
    assert worklist.viewer_score(plain_score) == "probability of pneumonia **0.250**"
    calibrated = predict.Reading("c.png", None, 0.4321, predict.NORMAL, calibrated=0.2)
    assert worklist.score_help(calibrated) == "Calibrated out of fold; the model's score is 0.4321."
    photo = _reading("photo.png", 0.937, predict.NOT_ASSESSABLE, "colour image")
    assert worklist.score_help(photo) == worklist.NOT_SCORED_HELP
    assert worklist.viewer_score(photo) == ":gray[probability 0.937, listed: no decision is made]"
