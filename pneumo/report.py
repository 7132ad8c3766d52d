"""A study report to file with the images: one PDF for one reading or a whole batch (fpdf2)."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .explain import overlay, png_bytes, with_colorbar
from .imaging import to_uint8
from .predict import Reading, card_hash, order

DISCLAIMER = (
    "Research use only - not a medical device. pneumo has not been cleared by any regulator. Its output must not "
    "be used to diagnose or treat patients without a qualified clinician's own reading."
)


def _text(value: Any) -> str:
    """Core PDF fonts are Latin-1: keep the text printable whatever a file name or header holds."""
    replacements = {"—": "-", "–": "-", "×": "x", "≥": ">=", "≤": "<=", "±": "+/-", "°": " deg", "→": "->", "…": "..."}
    text = str(value)
    for a, b in replacements.items():
        text = text.replace(a, b)
    return text.encode("latin-1", "replace").decode("latin-1")


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
) -> bytes:
    """PDF bytes: a summary table of the batch, then a page per image with the X-ray, the Grad-CAM overlay
    with its colour bar, probability, decision, operating point, model and card figures, warnings and the
    DICOM study fields (the decoder never keeps patient identifiers). heatmaps maps a reading's index to its Grad-CAM map (computed when missing)."""
    from fpdf import FPDF

    from .explain import gradcam

    heatmaps = dict(heatmaps or {})
    card = loaded.card
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.set_title(title)

    def header(text: str) -> None:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 15)
        pdf.cell(0, 9, _text(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(150, 20, 20)
        pdf.multi_cell(0, 4, _text(DISCLAIMER), new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        pdf.ln(2)

    def line(text: str, bold: bool = False, size: int = 10) -> None:
        pdf.set_font("Helvetica", "B" if bold else "", size)
        pdf.multi_cell(0, 5, _text(text), new_x="LMARGIN", new_y="NEXT")

    validation = card.validation
    header(title)
    line(f"Generated {when} - model {card.name} ({card.architecture}), card {card_hash(loaded)}")
    line(f"Operating threshold {card.threshold:.4f}: {card.threshold_rule}")
    if validation:
        line(f"Held-out validation ({validation.get('kind', 'patient')} split, n = {validation.get('n')}): "
             f"ROC AUC {_num(validation.get('roc_auc'), 4)}, sensitivity {_num(validation.get('sensitivity'))}, "
             f"specificity {_num(validation.get('specificity'))}")
    for ev in card.external_evaluations[-3:]:
        line(f"External evaluation '{ev.get('name')}' (n = {ev.get('n')}, {str(ev.get('date', ''))[:10]}): ROC AUC "
             f"{_num(ev.get('roc_auc'), 4)}, sensitivity {_num(ev.get('sensitivity'))}, "
             f"specificity {_num(ev.get('specificity'))} at threshold {_num(ev.get('threshold'), 4)}")
    pdf.ln(3)
    line("Worklist (rejected and warned inputs first, then highest probability)", bold=True)
    pdf.set_font("Helvetica", "", 9)
    with pdf.table(col_widths=(8, 62, 22, 30, 68), text_align=("RIGHT", "LEFT", "RIGHT", "LEFT", "LEFT")) as table:
        table.row(["#", "image", "probability", "decision", "warnings / error"])
        for i in order(readings):
            r = readings[i]
            prob = "-" if r.probability is None else f"{r.probability:.3f}"
            table.row([str(i + 1), _text(r.name)[-60:], prob, _text(r.decision or "rejected"),
                       _text(r.error or "; ".join(r.warnings) or "")[:160]])

    for i in order(readings):
        r = readings[i]
        if r.xray is None:
            continue
        header(f"#{i + 1}  {r.name}"[:90])
        line(f"Probability of pneumonia {r.probability:.3f} - decision: {r.decision} "
             f"(threshold {card.threshold:.4f})", bold=True, size=11)
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
        line("Left: the X-ray as read. Right: Grad-CAM, the regions that drove the score (not a segmentation of disease).",
             size=8)
        if r.xray.dicom:
            line("DICOM study fields (no patient identifiers)", bold=True)
            for key, value in r.xray.dicom.items():
                line(f"{key}: {value}", size=9)
    return bytes(pdf.output())
