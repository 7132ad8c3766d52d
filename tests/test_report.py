"""The study PDF and the CSV export print what users supplied as plain text (issue 20)."""

from __future__ import annotations

import csv
import io
import re
import zlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pneumo.core.card import ModelCard
from pneumo.data.decode import XRay
from pneumo.integrations.report import _text, csv_safe, safe_csv, study_pdf
from pneumo.model.reading import Reading, worklist

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
        try:
            content = zlib.decompress(match.group(1))
        except zlib.error:
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
