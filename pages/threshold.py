"""Threshold: tune the operating point on labelled predictions and save it into the model card."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pneumo.app import auth, plots, texts
from pneumo.app.ui import (
    active_model,
    data_root,
    folder_predictions,
    metric_row,
    model_state_key,
    plain,
    progress_bar,
    require_entry_point,
    settings,
    stored_predictions,
)
from pneumo.app.verdicts import audit_event
from pneumo.data import collection as D
from pneumo.data.collection import link_lines
from pneumo.data.pixels import shrink
from pneumo.evaluation import drift, site, tuning
from pneumo.evaluation import metrics as E
from pneumo.model import explain
from pneumo.model.loading import STORED_KINDS, card_path, save_operating_point, stored_predictions_file

require_entry_point()

st.title("Threshold")
loaded = active_model()
if loaded is None:
    st.error("No model is available. Train one on the Train page.")
    st.stop()
model_key = model_state_key(loaded)
cfg = settings()


stored = stored_predictions_file(loaded.path)
sources = {}
if stored is not None:
    sources[f"Stored {STORED_KINDS[stored.name]} predictions"] = "stored"
root = data_root()
if root is not None:
    sources[f"Predict the data folder ({root.name})"] = "folder"
if not sources:
    st.info("This model has no stored predictions and no data folder is selected.")
    st.stop()
source = st.radio("Labelled set", list(sources), horizontal=True, key=f"source:{model_key}")
leak = None
if sources[source] == "stored":
    try:
        preds, openable, refused = stored_predictions(str(stored), stored.stat().st_mtime)
    except ValueError as exc:
        st.error(texts.stored_unusable(exc), icon=":material/error:")
        st.stop()
    if refused:
        st.caption(f"{refused} stored rows point outside the allowed folders: counted in the figures, never opened.")
    computed_on = texts.stored_set(STORED_KINDS[stored.name], stored.name, loaded.card.validation.get("split"))
else:
    try:
        preds = folder_predictions(loaded, root, model_key)
        openable = preds
    except (ValueError, OSError) as exc:  # DatasetError and unreadable folders: a message, never a traceback
        st.error(f"This data folder cannot be predicted: {plain(exc)}", icon=":material/error:")
        st.stop()
    leak = E.leakage(loaded.path, preds["hash"])
    computed_on = texts.folder_set(root.name, len(preds))
    drift_key = f"folder-drift:{model_key}:{root}"
    if st.button("Check this folder for drift", key=f"drift-button:{model_key}"):
        readable = preds[preds["probability"].notna()]
        with st.spinner("Comparing the folder with the films the operating point was set on…"):
            st.session_state[drift_key] = drift.report(
                loaded, readable["path"].tolist(), readable["probability"].tolist()
            )
    found = st.session_state.get(drift_key)
    if found:
        notice = texts.folder_drift_notice(found)
        if notice.kind == "error":
            st.error(notice.text, icon=":material/trending_up:")
        else:
            st.caption(notice.text)
overlap = tuning.overlaps(leak)
if overlap:
    st.warning(texts.leak_warning(leak), icon=":material/warning:")
preds = preds[preds["probability"].notna()]
y, p = preds["label"].to_numpy(), preds["probability"].to_numpy()
if len(np.unique(y)) < 2:
    st.warning("This set holds only one class: curves and most metrics need both NORMAL and PNEUMONIA images.")
    st.stop()


# The threshold in force (tuning.ThresholdChoice: the value, the rule that set it, the target the box shows) lives
# under its own key, by model and card version, apart from the widgets' state: Streamlit drops a widget's state in
# any run that does not draw it (an error, another source), and the choice must survive that. Switching model or
# saving starts again from the card.
choice_key, slider_key = f"threshold-value:{model_key}", f"threshold:{model_key}"
target_key = f"target_recall:{model_key}"
st.session_state.setdefault(choice_key, tuning.ThresholdChoice.from_card(loaded.threshold))
if slider_key not in st.session_state:
    st.session_state[slider_key] = st.session_state[choice_key].threshold


def choose(choice: tuning.ThresholdChoice) -> None:
    """Put a choice in force, with the slider and the box in step (a callback: before the widgets are drawn)."""
    st.session_state[choice_key] = choice
    st.session_state[slider_key] = choice.threshold
    st.session_state[target_key] = choice.target


def held() -> tuning.ThresholdChoice:
    return st.session_state[choice_key]


controls = st.columns([3, 2, 2])
controls[0].slider(
    "Decision threshold",
    0.0,
    1.0,
    step=0.0001,
    format="%.4f",
    key=slider_key,
    on_change=lambda: choose(held().by_hand(st.session_state[slider_key])),
)
controls[1].number_input(
    "Target recall",
    0.5,
    1.0,
    None,
    0.005,
    format="%.3f",
    key=target_key,
    on_change=lambda: choose(held().by_target(st.session_state[target_key], y, p)),
    placeholder="e.g. 0.980",
    help="Sets the threshold to the highest value whose sensitivity on this set reaches the target. Empty while "
    "another rule (the card's own, Max F1, Youden J, the slider) sets the threshold.",
)
with controls[2]:
    st.button("Max F1", on_click=lambda: choose(held().by_rule("max F1", y, p)), key=f"maxf1:{model_key}")
    st.button("Youden J", on_click=lambda: choose(held().by_rule("Youden J", y, p)), key=f"youden:{model_key}")
choice = held()
threshold = choice.threshold
st.markdown(texts.threshold_line(threshold, choice.set_by(loaded.card.threshold_rule)))
st.caption(f"Figures on {plain(computed_on)}.")

m = E.metrics_at(y, p, threshold)
metric_row(
    m,
    [
        ("sensitivity", "Sensitivity"),
        ("specificity", "Specificity"),
        ("precision", "Precision"),
        ("npv", "NPV"),
        ("f1", "F1"),
        ("flagged_fraction", "Flagged for review"),
    ],
)
left, right = st.columns([1, 2])
left.plotly_chart(plots.confusion(m["confusion"]), width="stretch")
c = E.curves(y, p)
right.plotly_chart(plots.roc_pr(c.roc, c.pr, m), width="stretch")
left2, right2 = st.columns(2)
left2.plotly_chart(plots.probability_histogram(y, p, threshold), width="stretch")
shown = E.calibration(y, [loaded.card.probability(v) for v in p]) if loaded.card.calibrated else None
right2.plotly_chart(plots.calibration(E.calibration(y, p), shown), width="stretch")
st.caption(f"n = {m['n']} · ROC AUC {m['roc_auc']:.4f} · PR AUC {m['pr_auc']:.4f}")

save_cols = st.columns([2, 3])
shipped = tuning.is_shipped(loaded.path, cfg.models_dir)
# In a container of their own: a checkbox placed directly in a column keeps one line and cuts its label
# with an ellipsis, which hides what is being confirmed on a phone.
with save_cols[1].container():
    st.caption(texts.card_threshold_line(loaded.threshold, loaded.card.threshold_rule))
    confirm_leak = (
        st.checkbox(
            "I know this folder overlaps the model's own images and still want to save", key=f"leak-ok:{model_key}"
        )
        if overlap
        else True
    )
    confirm_shipped = (
        st.checkbox(
            "Replace the shipped model's operating point for every user of this app", key=f"shipped-ok:{model_key}"
        )
        if shipped
        else True
    )
blocked = tuning.save_refusal(auth.refusal(auth.APPLY_OPERATING_POINT), confirm_leak, confirm_shipped)
# The refusal is checked again on the click itself, not left to the button being drawn disabled.
if (
    save_cols[0].button("Save operating point", type="primary", disabled=blocked is not None, help=blocked)
    and not blocked
):
    words = choice.saved_rule(loaded.card.threshold_rule, computed_on, m["n"])
    try:
        save_operating_point(loaded.path, threshold, words, **tuning.overlap_record(leak))
    except (ValueError, OSError) as exc:  # a read-only card is refused, not replaced
        st.error(texts.not_saved(exc), icon=":material/block:")
        audit_event(
            "threshold_saved", str(card_path(loaded.path)), "failed", {"threshold": threshold, "error": str(exc)}
        )
    else:
        audit_event("threshold_saved", str(card_path(loaded.path)), details={"threshold": threshold, "rule": words})
        st.toast(f"Saved threshold {threshold:.4f} into {plain(card_path(loaded.path))}; every page uses it now.")
        st.rerun()

st.subheader("Errors at this threshold")


@st.cache_data(show_spinner=False, max_entries=256)
def overlay_for(path: str, key: str) -> np.ndarray:
    img = shrink(D.read_item(path), 320)
    return explain.overlay(img, explain.gradcam(loaded, img, target=1), 0.45)


# Galleries open only rows inside the allowed folders (stored rows were resolved and checked; a folder's own films
# are inside it).
for gallery in tuning.error_galleries(openable, threshold):
    st.markdown(f"**{gallery.title}: {gallery.count}**")
    if not gallery.count:
        continue
    present = gallery.on_disk()
    if not present:
        st.info(
            "The images behind these predictions are not on this machine (a fresh clone has only the samples); "
            "everything above still works."
        )
        continue
    cols = st.columns(4)
    maps_off = False
    for i, r in enumerate(present):
        try:
            try:
                picture = overlay_for(str(r.path), model_key)
            except ImportError:
                # The serving install has no TensorFlow, and this model's export no Grad-CAM graph: the film alone.
                picture, maps_off = shrink(D.read_item(str(r.path)), 320), True
        except (ValueError, OSError) as exc:
            cols[i % 4].warning(texts.unreadable_film(r, exc))
            continue
        cols[i % 4].image(
            picture, caption=f"{plain(Path(str(r.path)).name)} · p={r.probability:.3f}", clamp=True, width="stretch"
        )
    if maps_off:
        st.caption(
            "Films without their Grad-CAM maps: this install has no TensorFlow and this model's export no Grad-CAM "
            "graph (`python -m pneumo export` on the full install writes one)."
        )

st.subheader("Calibrate to this site")
if root is None:
    st.info("Select a labelled data folder of this site's own films in the sidebar.")
    st.stop()
st.caption(
    f"Sets an operating point on the labelled films of {plain(root.name)}: the threshold for a target recall on "
    "them, with one-sided 95 % lower bounds (Clopper–Pearson) of sensitivity and specificity, recorded in the "
    "model's card under a name and chosen in the sidebar."
)
site_cols = st.columns([2, 2, 2])
site_target = site_cols[0].number_input(
    "Target recall at the site", 0.5, 0.999, 0.98, 0.005, format="%.3f", key=f"site-target:{model_key}"
)
site_name = site_cols[1].text_input("Site name", key=f"site-name:{model_key}", placeholder="e.g. ward-3 2027")
calibration_key = f"site-calibration:{model_key}:{root}"
if site_cols[2].button("Calibrate", key=f"site-calibrate:{model_key}", disabled=not site_name.strip()):
    bar, update = progress_bar("Predicting the site's films…")
    try:
        st.session_state[calibration_key] = site.calibrate(
            loaded, root, site_target, site_name, progress=update, allowed_roots=cfg.allowed_roots()
        )
    except (ValueError, OSError) as exc:
        st.error(f"Not calibrated: {plain(exc)}", icon=":material/block:")
    finally:
        bar.empty()
calibration = st.session_state.get(calibration_key)
if calibration is not None:
    c = calibration
    st.markdown(
        f"**{plain(c.name)}**: threshold **{c.threshold:.4f}** on {c.n} films ({c.n_positive} pneumonia, "
        f"{c.n_negative} normal)."
    )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "sensitivity": c.sensitivity,
                    "lower 95 % bound": c.sensitivity_lower_95,
                    "specificity": c.specificity,
                    "lower 95 % bound ": c.specificity_lower_95,
                    "more positives needed": c.positives_needed,
                }
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    if c.note:
        st.warning(plain(c.note), icon=":material/info:")
    # As with the main Save: a site point set on the model's own training or validation films is saved only once
    # someone confirms they know, and the confirmation is recorded with the point in the card.
    site_overlap = tuning.overlaps(c.leakage)
    if site_overlap:
        st.warning(texts.site_leak_warning(c.leakage), icon=":material/warning:")
    if c.curve:
        st.plotly_chart(plots.bound_curve(c.curve, c.target_recall), width="stretch", key=f"bound:{model_key}")
    for line in link_lines(c.links):
        st.info(plain(line), icon=":material/link:")
    confirm_site_leak = (
        st.checkbox(
            "I know these films overlap the model's own training or validation images and still want to save",
            key=f"site-leak-ok:{model_key}:{c.name}",
        )
        if site_overlap
        else True
    )
    site_blocked = tuning.save_refusal(auth.refusal(auth.APPLY_OPERATING_POINT), confirm_site_leak)
    replace = tuning.site_name_taken(c.name, loaded.card.site_operating_points) and st.checkbox(
        f"Replace the site point '{plain(c.name)}' already in the card",
        key=f"site-replace:{model_key}:{c.name}",
        help="Without this, a name already in the card is refused: another calibration is never overwritten unseen.",
    )
    if (
        st.button(
            "Save site operating point",
            disabled=site_blocked is not None,
            help=site_blocked,
            key=f"site-save:{model_key}",
        )
        and not site_blocked
    ):
        confirmed = dataclasses.replace(c, leakage={**c.leakage, "overlap_confirmed": True}) if site_overlap else c
        try:
            site.record(loaded.path, confirmed, replace=replace)
        except (ValueError, OSError) as exc:
            st.error(texts.not_saved(exc), icon=":material/block:")
            audit_event(
                "threshold_saved", str(card_path(loaded.path)), "failed", {"site_point": c.name, "error": str(exc)}
            )
        else:
            audit_event(
                "threshold_saved",
                str(card_path(loaded.path)),
                details={"site_point": c.name, "threshold": c.threshold, "n": c.n, "replaced": replace},
            )
            st.toast(f"Saved '{plain(c.name)}' into the card; choose it in the sidebar under Operating point.")
