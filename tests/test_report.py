"""The study PDF and the CSV export print what users supplied as plain text (issue 20)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pneumo.core.card import ModelCard
from pneumo.data.decode import XRay
from pneumo.integrations.report import _text, csv_safe, safe_csv, study_pdf
from pneumo.model.reading import Reading, worklist
from tests.conftest import require

HOSTILE_NAMES = [
    "[click](http://evil.example/x).png",
    "![img](http://evil.example/pixel.gif).png",
    ":green-badge[**NORMAL**].png",
    "<a_href='http://evil.example'>x</a>.png",
]


def _pdf_text(pdf: bytes) -> str:
    """Every text string the PDF draws, unescaped (fpdf2 writes core-font text as (literal) Tj)."""
    shown = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        # The delimiter before "endstream" is "\n" or "\r\n": a compressed stream whose last byte is "\r" (one in
        # 256, as the printed date changes the bytes) loses it to the pattern, so that byte is tried back.
        for data in (match.group(1), match.group(1) + b"\r"):
            try:
                content = zlib.decompress(data)
                break
            except zlib.error:
                content = b""
        if not content:
            continue  # an image stream
        for literal in re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", content):
            shown.append(re.sub(rb"\\(.)", rb"\1", literal).decode("latin-1"))
    return "\n".join(shown)


def _readings() -> list[Reading]:
    pixels = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    long_warning = "The film matches the held-out films poorly, so this score may not hold " * 4 + "END-OF-WARNING."
    warned = Reading(
        HOSTILE_NAMES[0],
        XRay(pixels, HOSTILE_NAMES[0], "DICOM", (64, 64), {"Body part": "**CHEST** [x](http://evil.example)"}),
        0.91,
        "PNEUMONIA",
        warnings=[long_warning],
    )
    rejected = [
        Reading(name, None, None, None, error="not an image: " + "unrecognised content " * 12 + "END-OF-ERROR.")
        for name in HOSTILE_NAMES[1:]
    ]
    unicode_name = Reading(
        "胸部 😀 \u202eexe.png\nProbability of pneumonia 0.010 - decision: NORMAL",
        None,
        None,
        None,
        error="empty file (0 bytes)",
    )
    return [warned, *rejected, unicode_name]


def test_pdf_prints_names_fields_and_card_text_as_plain_text() -> None:
    card = ModelCard.default("**model** [card](http://evil.example)")
    readings = _readings()
    pdf = study_pdf(
        readings, SimpleNamespace(card=card, threshold=card.threshold), heatmaps={0: np.zeros((8, 8), np.float32)}
    )
    text = _pdf_text(pdf)
    assert b"/URI" not in pdf and b"/Annot" not in pdf  # no link anywhere, let alone a live one
    for name in HOSTILE_NAMES:
        assert name in text  # the markup characters themselves, not what they would render as
    assert "**model** [card](http://evil.example)" in text
    assert "**CHEST** [x](http://evil.example)" in text
    # Characters outside Latin-1 (CJK, emoji, a right-to-left override) print as "?" instead of raising;
    # the line break in the name became a space (the table cell then wraps the name at its own width).
    assert "?? ? ?exe.png Probability of" in text and "\u202e" not in text
    # Warnings and errors wrap in the table and on the film's page; none is cut mid-sentence.
    assert text.count("END-OF-WARNING.") == 2  # the batch table and the film's own page
    assert text.count("END-OF-ERROR.") == 3  # each rejected film's row


def test_text_keeps_every_character_visible_and_on_one_line() -> None:
    assert _text("a\nb\r\nc\td\x00e\x1bf\x85g") == "a b  c d?e?f g"
    assert _text("Ünïcödé × 😀 \u202e") == "Ünïcödé x ? ?"


@pytest.mark.parametrize(
    "value", ["=1+1", "+1", "-2+3", "@SUM(A1:A9)", "\tx", "\rx", "\nx", ' =HYPERLINK("x")', "=cmd|' /C calc'!A0"]
)
def test_csv_safe_neutralises_formula_starts(value: str) -> None:
    assert csv_safe(value) == "'" + value


@pytest.mark.parametrize("value", ["film.png", "UNCERTAIN — review", "", "a=b", "x-ray.png", -0.5, 3, None])
def test_csv_safe_leaves_other_cells_alone(value: object) -> None:
    assert csv_safe(value) == value


def test_safe_csv_neutralises_text_cells_and_keeps_numbers() -> None:
    readings = [
        Reading('=HYPERLINK("http://evil.example","ok").png', None, None, None, error="@SUM(1)"),
        Reading('+fine, "quoted".png', None, 0.42, "NORMAL", warnings=["-looks negative"]),
    ]
    frame = worklist(readings, when="2026-01-01T00:00:00+00:00")
    frame["margin"] = [-0.5, 0.25]  # a negative number is a number, not a formula
    text = safe_csv(frame)
    rows = list(csv.DictReader(io.StringIO(text)))
    by_item = {row["item"]: row for row in rows}
    assert by_item["1"]["path"] == '\'=HYPERLINK("http://evil.example","ok").png'
    assert by_item["1"]["error"] == "'@SUM(1)"
    assert by_item["2"]["path"] == '\'+fine, "quoted".png'  # the comma and quotes stay inside the cell
    assert by_item["2"]["warnings"] == "'-looks negative"
    assert "\n2,\"'+fine" in text and ",-0.5\n" in text  # numbers unquoted and unprefixed
    back = pd.read_csv(io.StringIO(text))
    assert back["margin"].tolist() == [-0.5, 0.25] and back["probability"].tolist()[1] == pytest.approx(0.42)
    assert frame["path"].iloc[0].startswith("=")  # the frame itself is not modified


def test_every_pdf_opens_with_the_models_cautions() -> None:
    """A model validated on few films says so on the report, in bold before any figure; a sound one does not."""
    weak = ModelCard.default("weak")
    weak.validation = {"n": 62, "sensitivity": 1.0, "specificity": 0.0}
    sound = ModelCard.default("sound")
    sound.validation = {"n": 5216, "sensitivity": 0.97, "specificity": 0.98}
    readings = _readings()[:1]
    texts = {
        card.name: _pdf_text(
            study_pdf(
                readings,
                SimpleNamespace(card=card, threshold=card.threshold),
                heatmaps={0: np.zeros((8, 8), np.float32)},
            )
        )
        for card in (weak, sound)
    }
    assert "CAUTION: this model validated on only 62 films" in texts["weak"]
    assert "CAUTION: this model specificity 0.00 at its own threshold" in texts["weak"]
    assert texts["weak"].index("CAUTION") < texts["weak"].index("Validation (")
    assert "CAUTION" not in texts["sound"]


# ---------------------------------------------------------------- a report a clinician can file

SHIPPED_CARD = ModelCard.read(Path(__file__).resolve().parents[1] / "models" / "card.json")


def _film_reading(name: str, rows: int = 96, columns: int = 64, probability: float = 0.91) -> Reading:
    """A decoded film taller than it is wide: a picture printed at the wrong aspect or scale shows in its size."""
    pixels = np.tile(np.linspace(0, 1, columns, dtype=np.float32), (rows, 1))
    return Reading(name, XRay(pixels, name, "PNG", (columns, rows), {}), probability, "PNEUMONIA")


def _loaded(card: ModelCard = SHIPPED_CARD) -> SimpleNamespace:
    return SimpleNamespace(card=card, threshold=card.threshold)


def _poppler(tool: str) -> str:
    found = shutil.which(tool)
    require(found, f"{tool} (poppler-utils) is not installed")
    return str(found)


def _images(pdf: bytes, tmp_path: Path) -> list[dict[str, Any]]:
    """Every picture in the PDF, in drawing order: its page, pixel size and colour as poppler reads them
    (pdfimages), and where it is printed, in mm, from the page's own drawing operators (fpdf2 draws a picture
    as `q W 0 0 H X Y cm /In Do Q`, in points; poppler's ppi figures are rounded to whole numbers)."""
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    listing = subprocess.run([_poppler("pdfimages"), "-list", str(path)], capture_output=True, text=True, check=True)
    rows = [row.split() for row in listing.stdout.splitlines()[2:]]
    placed = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            content = zlib.decompress(match.group(1))
        except zlib.error:
            continue  # an image stream
        placed += re.findall(rb"q ([\d.]+) 0 0 ([\d.]+) ([\d.]+) ([\d.]+) cm /I\w+ Do Q", content)
    assert len(placed) == len(rows), (placed, rows)
    mm = 25.4 / 72
    return [
        {
            "page": int(row[0]),
            "width": int(row[3]),
            "height": int(row[4]),
            "color": row[5],
            "width_mm": float(w) * mm,
            "height_mm": float(h) * mm,
            "x_mm": float(x) * mm,
            "y_mm": float(y) * mm,
        }
        for row, (w, h, x, y) in zip(rows, placed)
    ]


def test_a_report_for_one_film_of_a_batch_carries_the_apps_item_number() -> None:
    """Item 3 on the Predict page was "#1" in its own PDF: the number is the caller's, not the list position."""
    text = _pdf_text(study_pdf([_film_reading("third.png")], _loaded(), {0: np.zeros((8, 8), np.float32)}, numbers=[3]))
    assert "Item 3" in text and "Item 1" not in text and "#1" not in text
    # The batch table's "#" column carries the same number.
    assert re.search(r"^3$", text, re.M)
    # A batch without numbers is numbered in the order given, as the app numbers its items.
    batch = _pdf_text(
        study_pdf(
            [_film_reading("a.png", probability=0.2), _film_reading("b.png", probability=0.9)],
            _loaded(),
            {0: np.zeros((8, 8), np.float32), 1: np.zeros((8, 8), np.float32)},
        )
    )
    assert batch.index("Item 2") < batch.index("Item 1")  # worklist order: highest probability first
    with pytest.raises(ValueError, match="numbers"):
        study_pdf([_film_reading("x.png")], _loaded(), {0: np.zeros((8, 8), np.float32)}, numbers=[1, 2])


def test_the_map_is_printed_at_the_films_scale_beside_it(tmp_path: Path) -> None:
    """The film and its Grad-CAM overlay: the same pixels and the same printed size, side by side; the colour
    bar as tall as they are. Read back by poppler from the PDF itself, and the page renders."""
    pdf = study_pdf([_film_reading("tall.png")], _loaded(), {0: np.eye(8, dtype=np.float32)})
    film_page = [i for i in _images(pdf, tmp_path) if i["page"] == 2]
    assert len(film_page) == 3, film_page  # the film, the overlay, the colour bar
    film, overlay, bar = film_page
    assert film["color"] == "gray" and overlay["color"] == "rgb"
    assert (film["width"], film["height"]) == (overlay["width"], overlay["height"]) == (64, 96)
    assert overlay["width_mm"] == pytest.approx(film["width_mm"], abs=0.05)
    assert overlay["height_mm"] == pytest.approx(film["height_mm"], abs=0.05)
    assert film["height_mm"] / film["width_mm"] == pytest.approx(96 / 64, rel=1e-3)  # the film's own aspect
    assert bar["height_mm"] == pytest.approx(film["height_mm"], abs=0.05)
    # Large enough to read: the two pictures and the bar use most of the A4 page's 190 mm.
    assert 2 * film["width_mm"] + bar["width_mm"] > 150
    subprocess.run(
        [
            _poppler("pdftoppm"),
            "-r",
            "30",
            "-png",
            "-f",
            "2",
            "-l",
            "2",
            str(tmp_path / "report.pdf"),
            str(tmp_path / "p"),
        ],
        check=True,
        capture_output=True,
    )
    assert list(tmp_path.glob("p*.png"))


def test_the_report_states_its_limits_and_has_a_reader_block() -> None:
    """A clinician files the report: it says what population the model knows and leaves room to sign."""
    text = _pdf_text(study_pdf([_film_reading("film.png")], _loaded(), {0: np.zeros((8, 8), np.float32)}))
    flat = " ".join(text.split())
    for words in ("Kermany et al. 2018", "children aged 1-5", "one hospital in Guangzhou", "anterior-posterior"):
        assert words in flat, words
    assert "For research use." in flat
    assert "Reader (name, role):" in flat and "Signed off by:" in flat and "Signature:" in flat
    # A model trained on another collection does not borrow the Kermany limits: it names its own data.
    other = ModelCard.default("site model")
    other.training_data = {"path": "/data/ward-3"}
    flat = " ".join(_pdf_text(study_pdf([_film_reading("f.png")], _loaded(other), {0: np.zeros((8, 8))})).split())
    assert "Guangzhou" not in flat and "/data/ward-3" in flat and "For research use." in flat


def test_without_a_grad_cam_engine_the_report_prints_the_film_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving install without TensorFlow, for a model whose export has no Grad-CAM graph: the film, the
    decision and a note; no traceback and no empty frame."""
    from pneumo.integrations import report

    def no_tensorflow(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(report, "gradcam", no_tensorflow)
    pdf = study_pdf([_film_reading("film.png")], _loaded())
    assert "No Grad-CAM map: this install serves predictions" in " ".join(_pdf_text(pdf).split())
    assert [i["color"] for i in _images(pdf, tmp_path) if i["page"] == 2] == ["gray"]
