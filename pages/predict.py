"""Predict: drop X-rays, read the worklist, the probability, the decision and the Grad-CAM maps."""

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from pneumo.ui import DISCLAIMER, active_model, model_state_key, require_entry_point
from pneumo import explain, predict, report
from pneumo.imaging import resize
from pneumo.settings import SAMPLES_DIR

require_entry_point()

st.title("Predict")
st.caption(DISCLAIMER)
loaded = active_model()
if loaded is None:
    st.error("No model is available. Train one on the Train page, or restore models/model.keras.")
    st.stop()
model_key = model_state_key(loaded)


# Bounded by entry count over inputs the decoder already keeps under 2048 px a side (16 MB at most each).
@st.cache_data(show_spinner=False, max_entries=16, ttl=3600)
def cached_reading(digest: str, name: str, _data: bytes, model_key: str, band: float) -> predict.Reading:
    return predict.read(loaded, _data, name=name, band=band)


# Heat maps are kept at the model's input size (200 KB each) and stretched onto the film when drawn.
@st.cache_data(show_spinner=False, max_entries=64, ttl=3600)
def cached_heatmap(digest: str, method: str, model_key: str, _small: np.ndarray) -> np.ndarray:
    return explain.gradcam(loaded, _small, method=method)


controls = st.columns([2, 2, 3])
band = controls[0].number_input("Uncertain band (± probability)", 0.0, 0.3, 0.05, 0.01,
                                help="Cases this close to the threshold are labelled 'UNCERTAIN — review'.")
opacity = controls[1].slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05)
controls[2].markdown(f"Operating threshold **{loaded.threshold:.4f}**  \n{loaded.card.threshold_rule}")

uploads = st.file_uploader("Drop chest X-rays (PNG, JPEG, BMP, TIFF or DICOM)", accept_multiple_files=True,
                           help="The format is read from the content, not the file name.")
files: list[tuple[str, bytes]] = [(u.name, u.getvalue()) for u in uploads or []]
if not files:
    st.session_state.setdefault("use_samples", False)
    use = st.toggle("Use the bundled sample images", key="use_samples")
    if use:
        samples = sorted(SAMPLES_DIR.glob("*/*.jpeg"))
        picked = st.multiselect("Samples", [str(p.relative_to(SAMPLES_DIR)) for p in samples],
                                default=[str(p.relative_to(SAMPLES_DIR)) for p in samples[:1] + samples[-1:]])
        files = [(name, (SAMPLES_DIR / name).read_bytes()) for name in picked]
if not files:
    st.info("Drop one or more X-rays above, or switch on the sample images.")
    st.stop()

digests, readings = [], []
progress = st.progress(0.0, text="Reading…") if len(files) > 1 else None
for i, (name, data) in enumerate(files):
    digest = hashlib.sha256(data).hexdigest()
    digests.append(digest)
    readings.append(cached_reading(digest, name, data, model_key, band))
    if progress:
        progress.progress((i + 1) / len(files), text=f"Reading… {i + 1}/{len(files)}")
if progress:
    progress.empty()


def heatmap(i: int, method: str = "gradcam") -> np.ndarray:
    return cached_heatmap(digests[i], method, model_key, resize(readings[i].xray.pixels, loaded.input_size))


def batch_report() -> bytes:
    return report.study_pdf(readings, loaded, {i: heatmap(i) for i, r in enumerate(readings) if r.xray is not None})


table = predict.worklist(readings, loaded)
st.subheader("Worklist")
links = table.assign(open=[f"#item-{i}" for i in table["item"]])
HUES = {predict.PNEUMONIA: "#c0392b", predict.NORMAL: "#1e8449", predict.UNCERTAIN: "#d68910", "rejected": "#7f8c8d"}
styled = links[["item", "open", "path", "probability", "decision", "warnings", "error"]].style.map(
    lambda v: f"color: {HUES.get(v, 'inherit')}; font-weight: 600", subset=["decision"])
st.dataframe(
    styled, hide_index=True, width="stretch",
    column_config={
        "probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f"),
        "open": st.column_config.LinkColumn("card", display_text="open ↓"),
        "decision": st.column_config.TextColumn("decision", width="medium"),
    },
)
downloads = st.columns(2)
downloads[0].download_button("Download worklist CSV", table.to_csv(index=False), "pneumo_worklist.csv", "text/csv",
                             help="Path, probability, decision, warnings, threshold, model name, card hash and time.")
downloads[1].download_button("Download study report (PDF)", batch_report, "pneumo_report.pdf", "application/pdf",
                             key=f"pdf-batch-{model_key}",
                             help="Every image with its Grad-CAM, the decision, the operating point and the model's figures.")

COLOURS = {predict.PNEUMONIA: "red", predict.NORMAL: "green", predict.UNCERTAIN: "orange"}


def show_card(i: int) -> None:
    reading = readings[i]
    with st.container(border=True):
        st.subheader(f"{i + 1}. {Path(reading.name).name}", anchor=f"item-{i + 1}")
        if reading.error:
            st.error(f"**{reading.name}** could not be read: {reading.error}", icon=":material/block:")
            return
        cols = st.columns([1, 1, 2])
        cols[0].metric("Probability of pneumonia", f"{reading.probability:.3f}")
        cols[1].markdown(f"Decision  \n:{COLOURS[reading.decision]}-badge[**{reading.decision}**]")
        for warning in reading.warnings:
            cols[2].warning(warning, icon=":material/warning:")
        pixels = reading.xray.pixels
        heat, heat_pp = heatmap(i), heatmap(i, "gradcam++")
        images = st.columns(3)
        images[0].image(pixels, caption="X-ray", clamp=True, width="stretch")
        cam = explain.with_colorbar(explain.overlay(pixels, heat, opacity))
        images[1].image(cam, caption="Grad-CAM", width="stretch")
        images[2].image(explain.with_colorbar(explain.overlay(pixels, heat_pp, opacity)), caption="Grad-CAM++",
                        width="stretch")
        st.caption("Warm colours mark the regions that drove the model towards its decision for this image; they "
                   "are not a segmentation of disease.")
        buttons = st.columns(2)
        buttons[0].download_button(
            f"Grad-CAM overlay ({pixels.shape[1]}×{pixels.shape[0]} PNG)", explain.png_bytes(cam),
            f"{Path(reading.name).stem}_gradcam.png", "image/png", key=f"png-{i}-{digests[i]}")
        buttons[1].download_button(
            "Report for this image (PDF)", lambda: report.study_pdf([reading], loaded, {0: heat}),
            f"{Path(reading.name).stem}_report.pdf", "application/pdf", key=f"pdf-{i}-{digests[i]}-{model_key}")
        if reading.xray.dicom:
            with st.expander("DICOM header (no patient identifiers)"):
                st.table({"field": list(reading.xray.dicom), "value": list(reading.xray.dicom.values())})


ordered = predict.order(readings)
attention = [i for i in ordered if readings[i].error or readings[i].warnings]
if attention:
    st.subheader(f"Needs attention ({len(attention)})")
    for i in attention:
        show_card(i)
st.subheader("Readings, highest probability first")
for i in ordered:
    if i not in attention:
        show_card(i)
