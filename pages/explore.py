"""Dataset Explorer: what is in a labelled collection before training on it."""

import random
from pathlib import Path

import pandas as pd
import streamlit as st

from pneumo.ui import data_root, require_entry_point, summarize_with_bar
from pneumo import data as D
from pneumo import plots

require_entry_point()

st.title("Dataset Explorer")
root = data_root()
if root is None:
    st.info("No data folder is configured. Add one under data/, in .streamlit/secrets.toml ([pneumo] data_roots) "
            "or in the PNEUMO_DATA_ROOTS environment variable.")
    st.stop()
try:
    summary = summarize_with_bar(root)
except (ValueError, OSError) as exc:  # DatasetError and any unreadable folder: a message, never a traceback
    st.error(f"This data folder cannot be read: {exc}", icon=":material/error:")
    st.stop()

st.caption(f"`{summary.root}` — {summary.layout}, {summary.n_images:,} images")
cols = st.columns(5)
cols[0].metric("Images", f"{summary.n_images:,}")
cols[1].metric("Imbalance ratio", f"{summary.imbalance_ratio:.2f} : 1", help="majority : minority class")
cols[2].metric("Patients", f"{len(summary.images_per_patient):,}")
cols[3].metric("Duplicate groups", len(summary.duplicate_groups))
cols[4].metric("Unreadable files", len(summary.unreadable))

left, right = st.columns(2)
left.plotly_chart(plots.class_counts(summary.counts), width="stretch")
with right:
    weights = ", ".join(f"{D.CLASS_NAMES[k]} × {v:.2f}" for k, v in summary.class_weights.items())
    st.markdown(
        f"**What the imbalance means for training.** The majority class has {summary.imbalance_ratio:.2f}× the images "
        f"of the minority. Unweighted, a model can score well by leaning towards the majority; training weights the "
        f"loss per class ({weights}) so both classes count equally. Held-out sets may have a different mix (the "
        "official test split of the Kermany collection is 37.5 % normal against 26 % in train), which is why the "
        "operating threshold is chosen on held-out patients from another period and stressed copies of their films, and "
        "checked on the Threshold page."
    )
    st.markdown("**Patients per class:** " + ", ".join(f"{k}: {v:,}" for k, v in summary.patients_per_class.items()))

left, right = st.columns(2)
left.plotly_chart(plots.images_per_patient(summary.images_per_patient), width="stretch")
if summary.subtypes:
    right.plotly_chart(plots.subtypes(summary.subtypes), width="stretch")
stats = summary.image_stats
left, right = st.columns(2)
left.plotly_chart(plots.violins(stats, "mean", "Mean intensity per image, by class"), width="stretch")
right.plotly_chart(plots.violins(stats, "std", "Contrast (intensity std) per image, by class"), width="stretch")
varying = [c for c in ("width", "height") if not stats.empty and stats[c].nunique() > 1]
if varying:
    cols = st.columns(len(varying))
    for col, c in zip(cols, varying):
        col.plotly_chart(plots.distribution(stats, c, f"Image {c} (px)"), width="stretch")
elif not stats.empty:
    st.caption(f"Every image is {int(stats['width'].iloc[0])}×{int(stats['height'].iloc[0])} px.")

with st.expander(f"Exact duplicates: {len(summary.duplicate_groups)} groups (same pixels under different names)"):
    if summary.duplicate_groups:
        for group in summary.duplicate_groups[:12]:
            cols = st.columns(max(len(group), 4))
            for col, path in zip(cols, group):
                col.image(D.read_item(path), caption=Path(path.split(D.NPZ_SEPARATOR)[0]).name, clamp=True, width="stretch")
        if len(summary.duplicate_groups) > 12:
            st.caption(f"… and {len(summary.duplicate_groups) - 12} more groups.")
        st.caption("Duplicates are kept on one side of the validation split together with their patients.")
    else:
        st.write("None found.")
if summary.unreadable:
    with st.expander(f"Unreadable files: {len(summary.unreadable)}", expanded=True):
        st.dataframe(pd.DataFrame(summary.unreadable, columns=["path", "reason"]), hide_index=True, width="stretch")

st.subheader("Sample grid")
readable = summary.image_stats
seed = st.number_input("Shuffle", 0, 10_000, 0, help="Another draw of images")
for cls in D.CLASS_NAMES:
    paths = readable.loc[readable.class_name == cls, "path"].tolist()
    if not paths:
        continue
    st.markdown(f"**{cls}**")
    pick = random.Random(seed).sample(paths, min(8, len(paths)))
    cols = st.columns(8)
    for col, path in zip(cols, pick):
        col.image(D.read_item(path), caption=Path(path.split(D.NPZ_SEPARATOR)[0]).name, clamp=True, width="stretch")
