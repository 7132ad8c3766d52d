"""A study report to file with the images: one PDF for one reading or a whole batch (fpdf2)."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from pneumo.data.pixels import to_uint8
from pneumo.model.explain import gradcam, overlay, png_bytes, with_colorbar
from pneumo.model.reading import Reading, card_hash, order

# fpdf is imported where used: only a PDF report needs it.

DISCLAIMER = (
    "Research use only - not a medical device. pneumo has not been cleared by any regulator. Its output must not "
    "be used to diagnose or treat patients without a qualified clinician's own reading."
)


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


def _image(pdf: Any, pixels: np.ndarray, x: float, y: float, w: float) -> float:
    data = png_bytes(pixels if pixels.ndim == 3 else to_uint8(pixels))
    info = pdf.image(io.BytesIO(data), x=x, y=y, w=w)
    return float(info.rendered_height)


def study_pdf(
    readings: list[Reading],
    loaded: Any,
    heatmaps: dict[int, np.ndarray] | None = None,
    title: str = "Chest X-ray pneumonia screening report",
    drift: str | None = None,
) -> bytes:
    """PDF bytes: a summary table of the batch, then a page per image with the X-ray, the Grad-CAM overlay
    with its colour bar, probability, decision, operating point, model and card figures, warnings and the
    DICOM study fields (the decoder never keeps patient identifiers). heatmaps maps a reading's index to its
    Grad-CAM map (computed when missing)."""
    from fpdf import FPDF

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

    validation = card.validation
    header(title)
    line(f"Generated {when} - model {card.name} ({card.architecture}), card {card_hash(loaded)}")
    point = getattr(loaded, "operating_point", "shipped")
    line(f"Operating point '{point}', threshold {card.threshold:.4f}: {card.threshold_rule}")
    for caution in card.cautions():
        line(f"CAUTION: this model {caution}.", bold=True)
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
            prob = "-" if r.probability is None else f"{r.probability:.3f}"
            table.row(
                [
                    str(i + 1),
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
        header(f"#{i + 1}  {_short(r.name)}")
        line(
            f"Probability of pneumonia {r.probability:.3f} - decision: {r.decision} (threshold {card.threshold:.4f})",
            bold=True,
            size=11,
        )
        for w in r.warnings:
            pdf.set_text_color(170, 90, 0)
            line(f"Warning: {w}")
            pdf.set_text_color(0, 0, 0)
        heat = heatmaps.get(i)
        if heat is None:
            heat = gradcam(loaded, r.xray.pixels)
        y = pdf.get_y() + 2
        left = _image(pdf, r.xray.pixels, x=10, y=y, w=88)
        right = _image(pdf, with_colorbar(overlay(r.xray.pixels, heat, 0.45)), x=102, y=y, w=98)
        pdf.set_y(y + max(left, right) + 2)
        line(
            "Left: the X-ray as read. Right: Grad-CAM, the regions that drove the score "
            "(not a segmentation of disease).",
            size=8,
        )
        if r.xray.dicom:
            line("DICOM study fields (no patient identifiers)", bold=True)
            for key, value in r.xray.dicom.items():
                line(f"{key}: {value}", size=9)
    return bytes(pdf.output())
