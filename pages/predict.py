"""Predict: drop X-rays, read the probability, the decision and the Grad-CAM maps."""

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from pages.common import DISCLAIMER, active_model, require_entry_point
from pneumo import explain, predict
from pneumo.settings import SAMPLES_DIR

require_entry_point()

st.title("Predict")
st.caption(DISCLAIMER)
loaded = active_model()
if loaded is None:
    st.error("No model is available. Train one on the Train page, or restore models/model.keras.")
    st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def cached_reading(digest: str, name: str, _data: bytes, model_key: str, threshold: float, band: float) -> predict.Reading:
    return predict.read(loaded, _data, name=name, band=band)


@st.cache_data(show_spinner=False, max_entries=128)
def cached_heatmap(digest: str, method: str, model_key: str, _pixels: np.ndarray) -> np.ndarray:
    return explain.gradcam(loaded, _pixels, method=method)


controls = st.columns([2, 2, 3])
band = controls[0].number_input("Uncertain band (± probability)", 0.0, 0.3, 0.05, 0.01,
                                help="Cases this close to the threshold are labelled 'uncertain, review'.")
opacity = controls[1].slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05)
controls[2].markdown(f"Operating threshold **{loaded.threshold:.4f}**  \n{loaded.card.get('threshold_rule', '')}")

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

model_key = f"{loaded.path}:{loaded.path.stat().st_mtime}"
readings = []
progress = st.progress(0.0, text="Reading…") if len(files) > 1 else None
for i, (name, data) in enumerate(files):
    digest = hashlib.sha256(data).hexdigest()
    readings.append((digest, cached_reading(digest, name, data, model_key, loaded.threshold, band)))
    if progress:
        progress.progress((i + 1) / len(files), text=f"Reading… {i + 1}/{len(files)}")
if progress:
    progress.empty()

if len(readings) > 1:
    st.subheader("Worklist")
    table = predict.worklist([r for _, r in readings])
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"probability": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f")})
    st.download_button("Download worklist CSV", table.to_csv(index=False), "pneumo_worklist.csv", "text/csv")

for digest, reading in readings:
    with st.container(border=True):
        if reading.error:
            st.error(f"**{reading.name}** could not be read: {reading.error}", icon=":material/block:")
            continue
        color = {"PNEUMONIA": "red", "NORMAL": "green"}.get(reading.decision, "orange")
        st.markdown(f"#### :{color}[:material/circle:] {Path(reading.name).name}")
        cols = st.columns([1, 1, 1, 1])
        cols[0].metric("Probability of pneumonia", f"{reading.probability:.3f}")
        cols[1].metric("Decision", reading.decision)
        heat = cached_heatmap(digest, "gradcam", model_key, reading.xray.pixels)
        heat_pp = cached_heatmap(digest, "gradcam++", model_key, reading.xray.pixels)
        images = st.columns(3)
        images[0].image(reading.xray.pixels, caption="X-ray", clamp=True, width="stretch")
        cam = explain.overlay(reading.xray.pixels, heat, opacity)
        images[1].image(cam, caption="Grad-CAM", width="stretch")
        images[2].image(explain.overlay(reading.xray.pixels, heat_pp, opacity), caption="Grad-CAM++", width="stretch")
        st.caption("Warm colours mark the regions that drove the model towards its decision for this image; they "
                   "are not a segmentation of disease.")
        st.download_button("Download Grad-CAM overlay (PNG)", explain.png_bytes(cam),
                           f"{Path(reading.name).stem}_gradcam.png", "image/png", key=f"dl-{digest}")
        if reading.xray.dicom:
            with st.expander("DICOM header (no patient identifiers)"):
                st.table({"field": list(reading.xray.dicom), "value": list(reading.xray.dicom.values())})
