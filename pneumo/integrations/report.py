"""A study report to file with the images: one PDF for one reading or a whole batch (fpdf2)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from pneumo.data.pixels import to_uint8
from pneumo.model.explain import colorbar_panel, gradcam, overlay, png_bytes
from pneumo.model.reading import Reading, card_hash, order

# fpdf is imported where used: only a PDF report needs it.

DISCLAIMER = (
    "Research use only - not a medical device. pneumo has not been cleared by any regulator. Its output must not "
    "be used to diagnose or treat patients without a qualified clinician's own reading."
)

# What a reader must know before giving a score any weight: the population the network learned from. The
# shipped model and every run on the Kermany collection carry that collection's limits; another collection's
# limits are its own, so a model trained elsewhere names its card instead of borrowing these.
KERMANY_LIMITS = (
    "Limits of use: trained on the chest X-rays of Kermany et al. 2018 (Cell 172:1122): children aged 1-5, from "
    "one hospital in Guangzhou (Guangzhou Women and Children's Medical Center), anterior-posterior films. Not "
    "validated on adults, lateral or posterior-anterior views, other hospitals, devices or periods, or other "
    "diseases; it tells pneumonia from normal only. For research use."
)
OTHER_LIMITS = (
    "Limits of use: validated only on the collection named in the model's card ({data}); not validated on other "
    "populations, views, hospitals or devices. For research use."
)


def limits_of_use(card: Any) -> str:
    """The limits-of-use paragraph for the model behind a report (see KERMANY_LIMITS)."""
    attribution = str(getattr(card, "data_attribution", "") or "")
    if "kermany" in attribution.lower():
        return KERMANY_LIMITS
    data = (getattr(card, "training_data", None) or {}).get("path") or "not recorded"
    return OTHER_LIMITS.format(data=data)


# C0 and C1 control characters. A line break, tab or carriage return in a file name or a DICOM field would
# start a line of its own in the PDF (a forged "decision" line under a real one): they become spaces; the
# others, which no font draws, become "?".
_BREAKS = re.compile(r"[\t\n\r\v\f\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(value: Any) -> str:
    """Plain, printable Latin-1 text for the core PDF fonts, whatever a file name, header or card holds.

    Every string reaches the PDF through this and through fpdf2 calls with markdown off: a name carrying
    `**bold**`, a link or HTML is printed as those characters, never rendered."""
    replacements = {"—": "-", "–": "-", "×": "x", "≥": ">=", "≤": "<=", "±": "+/-", "°": " deg", "→": "->", "…": "..."}
    text = _CONTROLS.sub("?", _BREAKS.sub(" ", str(value)))
    for a, b in replacements.items():
        text = text.replace(a, b)
    # Characters outside Latin-1 (CJK names, emoji, bidirectional overrides) print as "?" instead of raising.
    return text.encode("latin-1", "replace").decode("latin-1")


def _short(value: Any, limit: int = 160) -> str:
    """A name for a heading or a table cell: whole when it is of a sane length, else its end (a path's
    informative part) behind "...", so one crafted name cannot fill pages."""
    text = _text(value)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


# Cells a spreadsheet would run as a formula (OWASP, CSV injection): =, +, -, @, tab, carriage return; also a
# line feed and NUL (OWASP ASVS 1.2.10). A leading space does not hide a formula from every spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")


def csv_safe(value: Any) -> Any:
    """One CSV cell neutralised against formula injection: text that a spreadsheet would read as a formula
    gets a leading single quote, as OWASP advises; anything that is not text (a number, None) is returned
    unchanged, so -0.5 stays a number."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START) or value.lstrip(" ").startswith(_FORMULA_START[:4]):
        return "'" + value
    return value


def safe_csv(frame: pd.DataFrame, index: bool = False) -> str:
    """The frame as CSV text with every text cell passed through csv_safe; numeric, boolean and date
    columns are written as they are (a negative number is a number, not a formula). Every text cell is
    quoted, as OWASP also advises, so a comma or quote in a file name cannot shift the columns."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if (
            pd.api.types.is_numeric_dtype(series)
            or pd.api.types.is_bool_dtype(series)
            or pd.api.types.is_datetime64_any_dtype(series)
        ):
            continue
        out[column] = series.map(csv_safe, na_action="ignore")
    return out.to_csv(index=index, quoting=csv.QUOTE_NONNUMERIC)


def _num(value: Any, digits: int = 3) -> str:
    """A figure for the report; a missing one (one class only, no cases) prints as '-'."""
    return "-" if value is None else f"{value:.{digits}f}"


def _image(pdf: Any, pixels: np.ndarray, x: float, y: float, w: float, h: float) -> None:
    """A picture at exactly w × h mm (the caller keeps the film's aspect ratio)."""
    data = png_bytes(pixels if pixels.ndim == 3 else to_uint8(pixels))
    pdf.image(io.BytesIO(data), x=x, y=y, w=w, h=h)


# The film and its Grad-CAM overlay are printed at one scale, side by side, so a region of the map sits at the
# same place and size as the film beside it; the colour bar is a picture of its own to their right, as tall as
# the film, drawn from a fixed-size panel (a panel made at a small film's resolution would print blurred).
PICTURE_GAP_MM = 4.0
_BAR_PANEL = (512, 128)  # height, width in pixels: the proportions of the panel beside a 224 px film
MAX_PICTURE_MM = 120.0  # the tallest film printed: room below it for the caption and the reader's block


def picture_size(rows: int, columns: int, width_mm: float, height_mm: float) -> tuple[float, float]:
    """The printed width and height (mm) of the film and of its overlay, each, so that both plus their colour
    bar fit width_mm across and height_mm down at the film's own aspect ratio."""
    aspect = rows / max(columns, 1)
    bar_share = _BAR_PANEL[1] / _BAR_PANEL[0]  # the bar's width per mm of height
    width = (width_mm - 2 * PICTURE_GAP_MM) / (2 + bar_share * aspect)
    width = min(width, height_mm / aspect)
    return width, width * aspect


READER_LINE = "_" * 34


def study_pdf(
    readings: list[Reading],
    loaded: Any,
    heatmaps: dict[int, np.ndarray] | None = None,
    title: str = "Chest X-ray pneumonia screening report",
    drift: str | None = None,
    numbers: Sequence[int] | None = None,
) -> bytes:
    """PDF bytes: a summary table of the batch, then a page per image with the X-ray and its Grad-CAM overlay
    at the same scale side by side (the colour bar beside them), probability, decision, operating point, model
    and card figures, warnings, the DICOM study fields (the decoder never keeps patient identifiers) and a
    reader's block to sign. The first page states the model's limits of use.

    heatmaps maps a reading's index in `readings` to its Grad-CAM map (computed when missing, and left out
    with a note where this install cannot compute one). numbers: the item number the app shows for each
    reading (readings[k] is "Item numbers[k]"), so a report made for one film of a batch carries that film's
    number, not 1; by default 1, 2, … in the order given."""
    from fpdf import FPDF

    if numbers is None:
        numbers = range(1, len(readings) + 1)
    numbers = [int(n) for n in numbers]
    if len(numbers) != len(readings):
        raise ValueError(f"numbers: {len(numbers)} item numbers for {len(readings)} readings")
    heatmaps = dict(heatmaps or {})
    card = loaded.card
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.set_title(title)

    def header(text: str) -> None:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 15)
        # multi_cell: a long file name in the heading wraps instead of running off the page.
        pdf.multi_cell(0, 7, _text(text), new_x="LMARGIN", new_y="NEXT", markdown=False)
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(150, 20, 20)
        pdf.multi_cell(0, 4, _text(DISCLAIMER), new_x="LMARGIN", new_y="NEXT", markdown=False)
        pdf.set_text_color(0, 0, 0)
        pdf.ln(2)

    def line(text: str, bold: bool = False, size: int = 10) -> None:
        pdf.set_font("Helvetica", "B" if bold else "", size)
        pdf.multi_cell(0, 5, _text(text), new_x="LMARGIN", new_y="NEXT", markdown=False)

    def reader_block() -> None:
        """Where the clinician who read the film writes their own reading and signs: the report is filed with it."""
        if pdf.get_y() > pdf.h - pdf.b_margin - 48:  # the block is never split over two pages
            pdf.add_page()
        pdf.ln(3)
        line("Reader's own reading (the score above does not replace it)", bold=True)
        for _ in range(3):
            pdf.ln(6)
            pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
        pdf.ln(4)
        line(f"Reader (name, role): {READER_LINE}   Date and time: {READER_LINE[:20]}")
        pdf.ln(3)
        line(f"Signed off by: {READER_LINE}   Signature: {READER_LINE[:20]}")

    validation = card.validation
    header(title)
    line(f"Generated {when} - model {card.name} ({card.architecture}), card {card_hash(loaded)}")
    point = getattr(loaded, "operating_point", "shipped")
    line(f"Operating point '{point}', threshold {card.threshold:.4f}: {card.threshold_rule}")
    for caution in card.cautions():
        line(f"CAUTION: this model {caution}.", bold=True)
    line(limits_of_use(card), bold=True, size=9)
    if drift is not None:
        line(f"Drift of this batch: {drift}")
    if validation:
        line(
            f"Validation ({validation.get('kind', 'patient')}, n = {validation.get('n')}; in-distribution unless an "
            f"external evaluation says otherwise): "
            f"ROC AUC {_num(validation.get('roc_auc'), 4)}, sensitivity {_num(validation.get('sensitivity'))}, "
            f"specificity {_num(validation.get('specificity'))}"
        )
    for ev in card.external_evaluations[-3:]:
        line(
            f"External evaluation '{ev.get('name')}' (n = {ev.get('n')}, {str(ev.get('date', ''))[:10]}): ROC AUC "
            f"{_num(ev.get('roc_auc'), 4)}, sensitivity {_num(ev.get('sensitivity'))}, "
            f"specificity {_num(ev.get('specificity'))} at threshold {_num(ev.get('threshold'), 4)}"
        )
    pdf.ln(3)
    line("Worklist (rejected and warned inputs first, then highest probability)", bold=True)
    pdf.set_font("Helvetica", "", 9)
    # Table cells wrap (fpdf2 lays each cell out like multi_cell): a warning is printed whole, never cut
    # mid-sentence; only an absurdly long file name is shortened, from the left.
    with pdf.table(
        col_widths=(8, 62, 22, 30, 68), text_align=("RIGHT", "LEFT", "RIGHT", "LEFT", "LEFT"), markdown=False
    ) as table:
        table.row(["#", "image", "probability", "decision", "warnings / error"])
        for i in order(readings):
            r = readings[i]
            prob = "-" if r.shown is None else f"{r.shown:.3f}"
            table.row(
                [
                    str(numbers[i]),
                    _short(r.name),
                    prob,
                    _text(r.decision or "rejected"),
                    _text(r.error or "; ".join(r.warnings) or ""),
                ]
            )

    for i in order(readings):
        r = readings[i]
        if r.xray is None:
            continue
        # "Item N", the words of the app's own card heading for this film.
        header(f"Item {numbers[i]}  {_short(r.name)}")
        line(
            f"Probability of pneumonia {r.shown:.3f} - decision: {r.decision} (threshold {card.threshold:.4f}"
            + (f" on the score {r.probability:.4f})" if r.calibrated is not None else ")"),
            bold=True,
            size=11,
        )
        if r.calibrated is not None:
            line(
                "The probability is calibrated out of fold on the training films (their share of pneumonia); "
                "the decision is made on the model's score."
            )
        for warning in r.warnings:
            pdf.set_text_color(170, 90, 0)
            line(f"Warning: {warning}")
            pdf.set_text_color(0, 0, 0)
        heat = heatmaps.get(i)
        map_note = None
        if heat is None:
            try:
                heat = gradcam(loaded, r.xray.pixels)
            except ImportError:
                # A serving install without TensorFlow, for a model whose export holds no Grad-CAM graph: the
                # decision stands on its own, and the report says why no map is printed.
                map_note = (
                    "No Grad-CAM map: this install serves predictions through ONNX Runtime without TensorFlow, "
                    "and this model's export holds no Grad-CAM graph."
                )
        pixels = r.xray.pixels
        left_x, room = pdf.l_margin, pdf.w - pdf.l_margin - pdf.r_margin
        y = pdf.get_y() + 2
        below = pdf.h - pdf.b_margin - y - 12  # what this page has left under the pictures' top, less a caption
        if below < 50:  # too little room left by long warnings: the pictures start a page of their own
            pdf.add_page()
            y = pdf.get_y()
            below = pdf.h - pdf.b_margin - y - 12
        w, h = picture_size(pixels.shape[0], pixels.shape[1], room, min(below, MAX_PICTURE_MM))
        _image(pdf, pixels, x=left_x, y=y, w=w, h=h)
        if heat is not None:
            # The overlay at the film's own pixel size (overlay() stretches the map onto the film), printed
            # at the film's width and height: one scale for both.
            _image(pdf, overlay(pixels, heat, 0.45), x=left_x + w + PICTURE_GAP_MM, y=y, w=w, h=h)
            bar = colorbar_panel(*_BAR_PANEL, panel_width=_BAR_PANEL[1])
            bar_w = h * bar.shape[1] / bar.shape[0]
            _image(pdf, bar, x=left_x + 2 * (w + PICTURE_GAP_MM), y=y, w=bar_w, h=h)
        pdf.set_y(y + h + 2)
        if map_note is None:
            line(
                "Left: the X-ray as read. Right: Grad-CAM at the same scale, the regions that drove the score "
                "(not a segmentation of disease); the bar is each region's share of this film's peak.",
                size=8,
            )
        else:
            line("The X-ray as read. " + map_note, size=8)
        if r.xray.dicom:
            line("DICOM study fields (no patient identifiers)", bold=True)
            for key, value in r.xray.dicom.items():
                line(f"{key}: {value}", size=9)
        reader_block()
    return bytes(pdf.output())
