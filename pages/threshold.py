"""Threshold: tune the operating point on labelled predictions and save it into the model card."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pneumo.ui import (active_model, data_root, metric_row, model_state_key, require_entry_point, settings,
                       stored_predictions, summary_for)
from pneumo import data as D
from pneumo import evaluate as E
from pneumo import explain, plots
from pneumo.models import PROJECT_ROOT, save_operating_point

require_entry_point()

st.title("Threshold")
loaded = active_model()
if loaded is None:
    st.error("No model is available. Train one on the Train page.")
    st.stop()
model_key = model_state_key(loaded)
cfg = settings()


@st.cache_data(show_spinner=False, max_entries=8)
def folder_predictions(root: str, key: str, _progress=None) -> pd.DataFrame:
    frame = D.scan(root).frame
    return E.predict_frame(loaded, frame, progress=_progress)


stored = loaded.path.with_name("val_predictions.csv")
sources = []
if stored.exists():
    sources.append("Stored validation predictions")
root = data_root()
if root is not None:
    sources.append(f"Predict the data folder ({root.name})")
if not sources:
    st.info("This model has no stored validation predictions and no data folder is selected.")
    st.stop()
source = st.radio("Labelled set", sources, horizontal=True)
if source.startswith("Stored"):
    preds = stored_predictions(str(stored), stored.stat().st_mtime)
else:
    bar = st.progress(0.0, text="Predicting…")
    try:
        preds = folder_predictions(str(root), model_key,
                                   _progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Predicting… {d}/{t}"))
    except (ValueError, OSError) as exc:  # DatasetError and unreadable folders: a message, never a traceback
        st.error(f"This data folder cannot be predicted: {exc}", icon=":material/error:")
        st.stop()
    finally:
        bar.empty()
leak = None if source.startswith("Stored") else E.leakage(loaded.path, summary_for(str(root)).image_stats["hash"])
if leak and leak["fraction"] > 0:
    st.warning(
        f"**{leak['train'] + leak['validation']} of {leak['n']} images ({leak['fraction']:.0%}) in this folder are images "
        f"this model was trained on ({leak['train']}) or validated on ({leak['validation']}).** Figures here are "
        "optimistic, and a threshold tuned on them will not hold on new patients.", icon=":material/warning:")
preds = preds[preds["probability"].notna()]
y, p = preds["label"].to_numpy(), preds["probability"].to_numpy()
if len(np.unique(y)) < 2:
    st.warning("This set holds only one class: curves and most metrics need both NORMAL and PNEUMONIA images.")
    st.stop()

def _snap(t: float) -> float:
    # Round down to the slider's resolution: rounding up could drop recall below the target.
    return math.floor(t * 10_000) / 10_000


# Keyed by the model and its card's version: switching model or saving starts again from the card.
slider_key = f"threshold:{model_key}"
if slider_key not in st.session_state:
    st.session_state[slider_key] = _snap(loaded.threshold)
    st.session_state["rule"] = "set by hand on the Threshold page"


def apply_target() -> None:
    st.session_state[slider_key] = _snap(E.threshold_for_recall(y, p, st.session_state["target_recall"]))
    st.session_state["rule"] = f"target recall {st.session_state['target_recall']:.3f}"


def apply_rule(name: str) -> None:
    st.session_state[slider_key] = _snap(E.THRESHOLD_RULES[name](y, p))
    st.session_state["rule"] = name


controls = st.columns([3, 2, 2])
threshold = controls[0].slider("Decision threshold", 0.0, 1.0, step=0.0001, format="%.4f", key=slider_key,
                               on_change=lambda: st.session_state.update(rule="set by hand on the Threshold page"))
controls[1].number_input("Target recall", 0.5, 1.0, 0.98, 0.005, format="%.3f", key="target_recall", on_change=apply_target,
                         help="Sets the threshold to the highest value whose sensitivity on this set reaches the target.")
with controls[2]:
    st.button("Max F1", on_click=apply_rule, args=("max F1",))
    st.button("Youden J", on_click=apply_rule, args=("Youden J",))

m = E.metrics_at(y, p, threshold)
metric_row(m, [("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("precision", "Precision"),
               ("npv", "NPV"), ("f1", "F1"), ("flagged_fraction", "Flagged for review")])
left, right = st.columns([1, 2])
left.plotly_chart(plots.confusion(m["confusion"]), width="stretch")
c = E.curves(y, p)
right.plotly_chart(plots.roc_pr(c.roc, c.pr, m), width="stretch")
left2, right2 = st.columns(2)
left2.plotly_chart(plots.probability_histogram(y, p, threshold), width="stretch")
right2.plotly_chart(plots.calibration(E.calibration(y, p)), width="stretch")
st.caption(f"n = {m['n']} · ROC AUC {m['roc_auc']:.4f} · PR AUC {m['pr_auc']:.4f}")

save_cols = st.columns([2, 3])
rule = st.session_state.get("rule", "set by hand on the Threshold page")
shipped = loaded.path.resolve().parent == cfg.models_dir.resolve()
with save_cols[1]:
    st.caption(f"Card threshold now: {loaded.threshold:.4f} — {loaded.card.threshold_rule}")
    confirm_leak = st.checkbox("I know this folder overlaps the model's own images and still want to save",
                               key=f"leak-ok:{model_key}") if leak and leak["fraction"] > 0 else True
    confirm_shipped = st.checkbox("Replace the shipped model's operating point for every user of this app",
                                  key=f"shipped-ok:{model_key}") if shipped else True
blocked = (None if cfg.allow_changes else "Saving is switched off in this deployment (set PNEUMO_ALLOW_CHANGES=1 or "
           "[pneumo] allow_changes = true).") or (None if confirm_leak and confirm_shipped else "Tick the confirmation first.")
if save_cols[0].button("Save operating point", type="primary", disabled=blocked is not None, help=blocked):
    record = {"overlap_confirmed": leak} if leak and leak["fraction"] > 0 else {}
    save_operating_point(loaded.path, threshold, f"{rule} (on {source.lower()}, n={m['n']})", **record)
    st.toast(f"Saved threshold {threshold:.4f} into {loaded.path.with_name('card.json')}; every page uses it now.")
    st.rerun()

st.subheader("Errors at this threshold")


@st.cache_data(show_spinner=False, max_entries=256)
def overlay_for(path: str, key: str) -> np.ndarray:
    img = D.read_item(path)
    return explain.overlay(img, explain.gradcam(loaded, img, target=1), 0.45)


def resolve(path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else PROJECT_ROOT / candidate


# Closest to the threshold first: those are the cases a small change of threshold would flip.
for title, mask, ascending in (("False negatives (missed pneumonia)", (y == 1) & (p < threshold), False),
                               ("False positives (normal flagged)", (y == 0) & (p >= threshold), True)):
    rows = preds[mask].sort_values("probability", ascending=ascending)
    st.markdown(f"**{title}: {len(rows)}**")
    if rows.empty:
        continue
    present = [r for r in rows.itertuples() if resolve(r.path).exists() or D.NPZ_SEPARATOR in r.path]
    if not present:
        st.info("The images behind these predictions are not on this machine (a fresh clone has only the samples); "
                "everything above still works.")
        continue
    cols = st.columns(4)
    for i, r in enumerate(present[:8]):
        path = str(resolve(r.path)) if D.NPZ_SEPARATOR not in r.path else r.path
        cols[i % 4].image(overlay_for(path, model_key), caption=f"{Path(r.path).name} · p={r.probability:.3f}", width="stretch")
