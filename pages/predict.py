"""Predict: drop X-rays, read the worklist, the probability, the decision and the Grad-CAM maps."""

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from pneumo.app.cards import (
    CARD_NOTES_KEY,
    CARD_PICTURE_ALT,
    CARD_PICTURES_KEY,
    Upload,
    batch_pdf_on_click,
    cached_reading,
    card_film,
    card_heatmaps,
    card_pictures,
    card_rules,
    map_peak_note,
    overlay_png_on_click,
    reading_pdf_on_click,
)
from pneumo.app.pacs_panel import pacs_source, ui_pacs_config
from pneumo.app.settings import SAMPLES_DIR
from pneumo.app.ui import DISCLAIMER, active_model, model_state_key, plain, progress_bar, require_entry_point
from pneumo.core.memory import trim
from pneumo.data.pixels import resize
from pneumo.evaluation import drift
from pneumo.integrations.report import safe_csv
from pneumo.model import reading as predict

require_entry_point()
CARDS_PER_PAGE = 25
LIST_SIDE = 384  # the 8-bit film kept for every reading of a batch; cards on screen fetch theirs at display size

st.title("Predict")
st.caption(DISCLAIMER)
loaded = active_model()
if loaded is None:
    st.error("No model is available. Train one on the Train page, or restore models/model.keras.")
    st.stop()
model_key = model_state_key(loaded)


@st.cache_data(show_spinner="Checking the batch for drift…", max_entries=16, ttl=3600)
def cached_drift(
    digests: tuple[str, ...], model_key: str, _images: list[np.ndarray], _probabilities: list[float]
) -> Any:
    return drift.check_batch(loaded, _images, _probabilities)


controls = st.columns([2, 2, 3])
band = controls[0].number_input(
    "Uncertain band (± probability)",
    0.0,
    0.3,
    0.05,
    0.01,
    help="Cases this close to the threshold are labelled 'UNCERTAIN — review'.",
)
opacity = controls[1].slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05)
controls[2].markdown(
    f"Operating point **{plain(loaded.operating_point)}**, threshold **{loaded.threshold:.4f}**  \n"
    f"{plain(loaded.card.threshold_rule)}"
)

pacs_config = ui_pacs_config()
source_kind = (
    st.radio("Source", ["Upload files", "From PACS"], horizontal=True, key="predict-source")
    if pacs_config is not None
    else "Upload files"
)
files: list[tuple[str, Any]] = []
pacs_run = None
if source_kind == "From PACS":
    pacs_run = pacs_source(pacs_config, loaded, model_key)
    if pacs_run is None:
        st.stop()
else:
    uploads = st.file_uploader(
        "Drop chest X-rays (PNG, JPEG, BMP, TIFF or DICOM)",
        accept_multiple_files=True,
        help="The format is read from the content, not the file name.",
    )
    files = [(u.name, u) for u in uploads or []]
if not files and pacs_run is None:
    st.session_state.setdefault("use_samples", False)
    use = st.toggle("Use the bundled sample images", key="use_samples")
    if use:
        samples = sorted(SAMPLES_DIR.glob("*/*.jpeg"))
        picked = st.multiselect(
            "Samples",
            [str(p.relative_to(SAMPLES_DIR)) for p in samples],
            default=[str(p.relative_to(SAMPLES_DIR)) for p in samples[:1] + samples[-1:]],
        )
        files = [(name, SAMPLES_DIR / name) for name in picked]
if not files and pacs_run is None:
    st.info("Drop one or more X-rays above, or switch on the sample images.")
    st.stop()

digests, readings = [], []
if pacs_run is not None:
    pacs_readings = pacs_run.readings()  # the run's own readings; a card shows a compacted copy of its one
    readings = [predict.pack(predict.compact(r, LIST_SIDE)) for r in pacs_readings]
    digests = [
        hashlib.sha256(f"{r.study_uid}/{r.sop_uid}".encode()).hexdigest()
        for r in pacs_run.results
        if r.reading is not None
    ]
bar, update = progress_bar("Reading…") if len(files) > 1 else (None, None)
for i, (name, source) in enumerate(files):
    # One file's bytes at a time: an upload is read when its turn comes and dropped after.
    data = source.read_bytes() if isinstance(source, Path) else source.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    digests.append(digest)
    # The batch keeps each film at LIST_SIDE px as 8-bit samples (for repeats, drift, the maps and the
    # reports: 147 KB a film); a card on screen fetches its film again at display size (card_source).
    full = cached_reading(loaded, digest, name, data, model_key, band)
    readings.append(predict.pack(predict.compact(full, LIST_SIDE)))
    del data, full
    if update:
        update(i + 1, len(files))
if bar:
    bar.empty()
trim()  # the decoders' large buffers go back to the system, not into the heap's free lists
readings = predict.mark_repeats(readings)
assessed = [r for r in readings if r.xray is not None]
st.session_state["last_drift"] = None  # until this batch's check is made (a run cut short leaves none)
# The batch's drift check shows here, but is made after the cards: a reader wants those first.
drift_box = st.container()
for caution in loaded.card.cautions():
    st.warning(f"**This model carries a caution:** {caution}.", icon=":material/report:")


def heatmap(i: int) -> np.ndarray:
    """Reading i's Grad-CAM map, the one its card, its downloads and the batch report show."""
    return card_heatmaps(loaded, digests[i], model_key, readings[i])["gradcam"]


table = predict.worklist(readings, loaded)
st.subheader("Worklist")
HUES = {
    predict.PNEUMONIA: "#c0392b",
    predict.NORMAL: "#1e8449",
    predict.UNCERTAIN: "#d68910",
    predict.NOT_ASSESSABLE: "#7f8c8d",
    "rejected": "#7f8c8d",
}
# The decision leads, right after the item number: on a phone the grid shows its first columns only.
styled = table[["item", "decision", "probability", "path", "warnings", "error"]].style.map(
    lambda v: f"color: {HUES.get(v, 'inherit')}; font-weight: 600", subset=["decision"]
)
st.dataframe(
    styled,
    hide_index=True,
    width="stretch",
    column_config={
        "item": st.column_config.NumberColumn("#", width="small"),
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f"),
        "decision": st.column_config.TextColumn("decision", width="medium"),
    },
)
# Links to the cards below, in this page and tab (item numbers only: no user text in markup).
st.markdown("Go to: " + " · ".join(f"[{i}](#item-{i})" for i in table["item"]))
downloads = st.columns(2)
downloads[0].download_button(
    "Download worklist CSV",
    safe_csv(table),
    "pneumo_worklist.csv",
    "text/csv",
    help="Path, probability, decision, warnings, threshold, model name, card hash and time.",
)

COLOURS = {
    predict.PNEUMONIA: "red",
    predict.NORMAL: "green",
    predict.UNCERTAIN: "orange",
    predict.NOT_ASSESSABLE: "gray",
}


def card_source(i: int) -> Upload | predict.Reading:
    """Where reading i's film at display size comes from: the PACS run's reading, or the upload (the shared
    cache, or its bytes read again)."""
    if pacs_run is not None:
        return predict.compact(pacs_readings[i])
    name, source = files[i]
    return Upload(loaded, digests[i], name, source, model_key, band)


def show_card(i: int) -> None:
    source = card_source(i) if readings[i].xray is not None else None
    reading = readings[i]
    if source is not None:
        reading = card_film(source, readings[i])
        source = source if isinstance(source, Upload) else predict.pack(source)  # what the downloads keep
    with st.container(border=True):
        # A heading holds the item number only; the file name (a visitor's text) is shown as plain text.
        st.subheader(f"Item {i + 1}", anchor=f"item-{i + 1}")
        st.text(Path(reading.name).name)
        if reading.error:
            st.error(f"This file could not be read: {plain(reading.error)}", icon=":material/block:")
            return
        with st.container(horizontal=True, gap="medium"):  # side by side; wrapped on a phone
            st.metric("Probability of pneumonia", f"{reading.probability:.3f}", width="content")
            st.markdown(f"Decision  \n:{COLOURS[reading.decision]}-badge[**{reading.decision}**]", width="content")
            if reading.decision == predict.NOT_ASSESSABLE or reading.repeat_of is not None or reading.warnings:
                with st.container(key=f"{CARD_NOTES_KEY}-{i}"):  # the rest of the row (card_rules)
                    if reading.decision == predict.NOT_ASSESSABLE:
                        st.caption(
                            "The input check does not take this for a chest film the model can read: the "
                            "probability is listed, no decision is made."
                        )
                    if reading.repeat_of is not None:
                        st.markdown(f"Repeats [item {reading.repeat_of + 1}](#item-{reading.repeat_of + 1}).")
                    for warning in reading.warnings:
                        st.warning(plain(warning), icon=":material/warning:")
        pixels = reading.xray.pixels
        heat = heatmap(i)
        with st.container(key=f"{CARD_PICTURES_KEY}-{i}"):  # one element, laid out by card_rules
            st.image(
                card_pictures(loaded, digests[i], model_key, readings[i], pixels), alt=CARD_PICTURE_ALT, width="stretch"
            )
        peak_note = map_peak_note(loaded, digests[i], model_key, readings[i], pixels, heat)
        if peak_note:
            st.caption(f":material/center_focus_weak: {peak_note}")
        with st.container(horizontal=True):
            st.download_button(
                f"Grad-CAM overlay ({pixels.shape[1]}×{pixels.shape[0]} PNG)",
                overlay_png_on_click(source, readings[i], heat, opacity),
                f"{Path(reading.name).stem}_gradcam.png",
                "image/png",
                key=f"png-{i}-{digests[i]}",
            )
            st.download_button(
                "Report for this image (PDF)",
                reading_pdf_on_click(source, readings[i], loaded, heat),
                f"{Path(reading.name).stem}_report.pdf",
                "application/pdf",
                key=f"pdf-{i}-{digests[i]}-{model_key}",
            )
        if reading.xray.dicom:
            with st.expander("DICOM header (no patient identifiers)"):
                st.table({"field": list(reading.xray.dicom), "value": list(reading.xray.dicom.values())})


# Every card's pictures laid out, the maps over their films at the slider's opacity: a change of opacity
# re-sends this rule only, not the pictures.
st.html(f"<style>{card_rules(opacity)}</style>")
ordered = predict.order(readings)
attention = [
    i for i in ordered if readings[i].error or readings[i].warnings or readings[i].decision == predict.NOT_ASSESSABLE
]
rest = [i for i in ordered if i not in attention]
# Cards in pages of CARDS_PER_PAGE, in worklist order: the worklist above lists every film, and a batch of
# hundreds of films does not hold hundreds of pictures per session in the browser and the server.
sequence = attention + rest
pages_total = max(1, -(-len(sequence) // CARDS_PER_PAGE))
page_no = 1
if pages_total > 1:
    page_no = int(
        st.number_input(
            f"Cards, page of {CARDS_PER_PAGE} (1–{pages_total})",
            1,
            pages_total,
            1,
            key=f"card-page:{hash(tuple(digests))}",
        )
    )
shown = set(sequence[(page_no - 1) * CARDS_PER_PAGE : page_no * CARDS_PER_PAGE])
if any(readings[i].xray is not None for i in shown):  # said once for every card's maps
    st.caption(
        "In the maps, warm colours mark the regions that drove the model towards its decision for that "
        "image; they are not a segmentation of disease. Each map is scaled to its own peak (1.0 on the bar): "
        "compare regions within a film, not colours between films."
    )
if any(i in shown for i in attention):
    st.subheader(f"Needs attention ({len(attention)})")
    for i in attention:
        if i in shown:
            show_card(i)
if any(i in shown for i in rest):
    st.subheader("Readings, highest probability first")
    for i in rest:
        if i in shown:
            show_card(i)
if pages_total > 1:
    st.caption(
        f"Cards {(page_no - 1) * CARDS_PER_PAGE + 1}–{min(page_no * CARDS_PER_PAGE, len(sequence))} of "
        f"{len(sequence)}; every film is in the worklist and the reports."
    )

# The batch-level check, in its place above the worklist; the batch PDF carries its words.
with drift_box:
    if len(readings) > 1:
        # Drift is a property of a batch, not of a film: one test over every film read here.
        drift_result = cached_drift(
            tuple(d for d, r in zip(digests, readings) if r.xray is not None),
            model_key,
            [resize(predict.unpack(r).xray.pixels, loaded.input_size) for r in assessed],
            [r.probability for r in assessed],
        )
        if drift_result is None:
            st.caption(f"Drift check: {drift.why_unavailable(loaded, len(assessed))}.")
        else:
            test = f"{drift_result.method}, n = {drift_result.n}, p = {drift_result.p_value:.2g}"
            # The same words on the Overview and in the batch PDF.
            st.session_state["last_drift"] = f"{'shifted' if drift_result.shifted else 'no shift detected'} ({test})"
            if drift_result.shifted:
                st.error(
                    f"**This batch is unlike the films the operating point was set on** ({plain(test)}). "
                    f"{plain(drift.advice(True, drift_result.p_value, drift_result.n))}",
                    icon=":material/trending_up:",
                )
            else:
                st.caption(f"Drift check: no shift detected ({plain(test)}).")
downloads[1].download_button(
    "Download study report (PDF)",
    batch_pdf_on_click(readings, digests, loaded, model_key, st.session_state.get("last_drift")),
    "pneumo_report.pdf",
    "application/pdf",
    key=f"pdf-batch-{model_key}",
    help="Every image with its Grad-CAM, the decision, the operating point and the model's figures.",
)
