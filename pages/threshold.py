"""Threshold: tune the operating point on labelled predictions and save it into the model card."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from pneumo.app import auth, plots
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
from pneumo.evaluation import drift, site
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
        st.error(f"The stored predictions cannot be used: {plain(exc)}", icon=":material/error:")
        st.stop()
    if refused:
        st.caption(f"{refused} stored rows point outside the allowed folders: counted in the figures, never opened.")
    computed_on = (
        f"{STORED_KINDS[stored.name]} predictions stored with the model ({stored.name}): "
        + loaded.card.validation.get("split", "films the model's own networks never saw")
    )
else:
    try:
        preds = folder_predictions(loaded, root, model_key)
        openable = preds
    except (ValueError, OSError) as exc:  # DatasetError and unreadable folders: a message, never a traceback
        st.error(f"This data folder cannot be predicted: {plain(exc)}", icon=":material/error:")
        st.stop()
    leak = E.leakage(loaded.path, preds["hash"])
    computed_on = f"the data folder {root.name} ({len(preds)} films), predicted now"
    drift_key = f"folder-drift:{model_key}:{root}"
    if st.button("Check this folder for drift", key=f"drift-button:{model_key}"):
        readable = preds[preds["probability"].notna()]
        with st.spinner("Comparing the folder with the films the operating point was set on…"):
            st.session_state[drift_key] = drift.report(
                loaded, readable["path"].tolist(), readable["probability"].tolist()
            )
    found = st.session_state.get(drift_key)
    if found:
        if found.get("shifted"):
            st.error(
                f"**This folder is unlike the films the operating point was set on** ({plain(found.get('method'))}, "
                f"n = {found.get('n')}, p = {found.get('p_value', 0):.2g}): its figures here will not match the "
                "card's; calibrate to this site below.",
                icon=":material/trending_up:",
            )
        elif found.get("p_value") is not None:
            st.caption(
                f"Drift check: no shift detected ({plain(found.get('method'))}, n = {found.get('n')}, "
                f"p = {found['p_value']:.2g})."
            )
        else:
            st.caption(f"Drift check: {plain(found.get('reason') or found.get('note') or 'not available')}.")
if leak and leak["fraction"] > 0:
    st.warning(
        f"**{leak['train'] + leak['validation']} of {leak['n']} images ({leak['fraction']:.0%}) in this folder "
        "are images "
        f"this model was trained on ({leak['train']}) or validated on ({leak['validation']}).** Figures here are "
        "optimistic, and a threshold tuned on them will not hold on new patients.",
        icon=":material/warning:",
    )
preds = preds[preds["probability"].notna()]
y, p = preds["label"].to_numpy(), preds["probability"].to_numpy()
if len(np.unique(y)) < 2:
    st.warning("This set holds only one class: curves and most metrics need both NORMAL and PNEUMONIA images.")
    st.stop()


# The threshold lives under its own key, by model and card version, apart from the slider's widget state:
# Streamlit drops a widget's state in any run that does not draw it (an error, another source), and the
# value must survive that. Switching model or saving starts again from the card.
# The value is kept exactly as the card or the rule gave it, never snapped to the slider's 0.0001 steps: the
# slider shows it to four decimals (rounded, as every other place on the page and the card do), and the
# figures are those of the threshold itself. Snapping down showed 0.4380 on the slider beside 0.4381 elsewhere.
value_key, slider_key = f"threshold-value:{model_key}", f"threshold:{model_key}"
rule_key, target_key = f"rule:{model_key}", f"target_recall:{model_key}"
HAND = "set by hand on the Threshold page"
st.session_state.setdefault(value_key, float(loaded.threshold))
st.session_state.setdefault(rule_key, None)  # None: the card's own threshold and rule
if slider_key not in st.session_state:
    st.session_state[slider_key] = st.session_state[value_key]


def set_threshold(value: float, rule: str) -> None:
    st.session_state[value_key] = st.session_state[slider_key] = float(value)
    st.session_state[rule_key] = rule
    if not rule.startswith("target recall"):
        # The target-recall box shows a target only while it is the rule in force: after Youden J it kept
        # saying 0.980, as if that target had set the threshold.
        st.session_state[target_key] = None


def apply_target() -> None:
    target = st.session_state[target_key]
    if target is None:  # the box emptied: the threshold stays where it is, under the rule that set it
        return
    set_threshold(E.threshold_for_recall(y, p, target), f"target recall {target:.3f}")


def apply_rule(name: str) -> None:
    set_threshold(E.THRESHOLD_RULES[name](y, p), name)


controls = st.columns([3, 2, 2])
threshold = controls[0].slider(
    "Decision threshold",
    0.0,
    1.0,
    step=0.0001,
    format="%.4f",
    key=slider_key,
    on_change=lambda: set_threshold(st.session_state[slider_key], HAND),
)
controls[1].number_input(
    "Target recall",
    0.5,
    1.0,
    None,
    0.005,
    format="%.3f",
    key=target_key,
    on_change=apply_target,
    placeholder="e.g. 0.980",
    help="Sets the threshold to the highest value whose sensitivity on this set reaches the target. Empty while "
    "another rule (the card's own, Max F1, Youden J, the slider) sets the threshold.",
)
with controls[2]:
    st.button("Max F1", on_click=apply_rule, args=("max F1",), key=f"maxf1:{model_key}")
    st.button("Youden J", on_click=apply_rule, args=("Youden J",), key=f"youden:{model_key}")
threshold = st.session_state[value_key]
rule = st.session_state[rule_key]
# Which rule set the threshold the figures below are computed at: the buttons and the box leave no trace of
# their own once pressed.
st.markdown(
    f"**Threshold {threshold:.4f}, set by:** "
    + (f"the card's own rule ({plain(loaded.card.threshold_rule)})" if rule is None else plain(rule))
)
st.caption(f"Figures on {computed_on}.")

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
right2.plotly_chart(plots.calibration(E.calibration(y, p)), width="stretch")
st.caption(f"n = {m['n']} · ROC AUC {m['roc_auc']:.4f} · PR AUC {m['pr_auc']:.4f}")

save_cols = st.columns([2, 3])
shipped = loaded.path.resolve().parent == cfg.models_dir.resolve()
# In a container of their own: a checkbox placed directly in a column keeps one line and cuts its label
# with an ellipsis, which hides what is being confirmed on a phone.
with save_cols[1].container():
    st.caption(f"Card threshold now: {loaded.threshold:.4f} — {loaded.card.threshold_rule}")
    confirm_leak = (
        st.checkbox(
            "I know this folder overlaps the model's own images and still want to save", key=f"leak-ok:{model_key}"
        )
        if leak and leak["fraction"] > 0
        else True
    )
    confirm_shipped = (
        st.checkbox(
            "Replace the shipped model's operating point for every user of this app", key=f"shipped-ok:{model_key}"
        )
        if shipped
        else True
    )
blocked = auth.refusal(auth.APPLY_OPERATING_POINT) or (
    None if confirm_leak and confirm_shipped else "Tick the confirmation first."
)
# The refusal is checked again on the click itself, not left to the button being drawn disabled.
if (
    save_cols[0].button("Save operating point", type="primary", disabled=blocked is not None, help=blocked)
    and not blocked
):
    record = {"overlap_confirmed": leak} if leak and leak["fraction"] > 0 else {}
    try:
        # The card's own rule was not derived on this set: saved as the card words it.
        words = loaded.card.threshold_rule if rule is None else f"{rule} (on {computed_on}, n={m['n']})"
        save_operating_point(loaded.path, threshold, words, **record)
    except (ValueError, OSError) as exc:  # a read-only card is refused, not replaced
        st.error(f"Not saved: {plain(exc)}", icon=":material/block:")
        audit_event(
            "threshold_saved", str(card_path(loaded.path)), "failed", {"threshold": threshold, "error": str(exc)}
        )
    else:
        audit_event("threshold_saved", str(card_path(loaded.path)), details={"threshold": threshold, "rule": words})
        st.toast(f"Saved threshold {threshold:.4f} into {loaded.path.with_name('card.json')}; every page uses it now.")
        st.rerun()

st.subheader("Errors at this threshold")


@st.cache_data(show_spinner=False, max_entries=256)
def overlay_for(path: str, key: str) -> np.ndarray:
    img = shrink(D.read_item(path), 320)
    return explain.overlay(img, explain.gradcam(loaded, img, target=1), 0.45)


# Galleries open only rows inside the allowed folders (stored rows were resolved and checked; a folder's
# own films are inside it). Closest to the threshold first: a small change of threshold would flip them.
inside = openable[openable["probability"].notna()]
for title, mask, ascending in (
    ("False negatives (missed pneumonia)", (inside["label"] == 1) & (inside["probability"] < threshold), False),
    ("False positives (normal flagged)", (inside["label"] == 0) & (inside["probability"] >= threshold), True),
):
    rows = inside[mask].sort_values("probability", ascending=ascending)
    st.markdown(f"**{title}: {int(mask.sum())}**")
    if rows.empty:
        continue
    present = [r for r in rows.itertuples() if Path(str(r.path).split(D.NPZ_SEPARATOR)[0]).exists()]
    if not present:
        st.info(
            "The images behind these predictions are not on this machine (a fresh clone has only the samples); "
            "everything above still works."
        )
        continue
    cols = st.columns(4)
    maps_off = False
    for i, r in enumerate(present[:8]):
        try:
            try:
                picture = overlay_for(str(r.path), model_key)
            except ImportError:
                # The serving install has no TensorFlow, and this model's export no Grad-CAM graph: the film alone.
                picture, maps_off = shrink(D.read_item(str(r.path)), 320), True
        except (ValueError, OSError) as exc:
            where = f"row {r.row}" if hasattr(r, "row") else "a film of this folder"
            cols[i % 4].warning(f"{where}: {plain(getattr(exc, 'reason', exc))}")
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
    if c.leakage and c.leakage.get("fraction", 0) > 0:
        st.warning(
            f"{c.leakage['train'] + c.leakage['validation']} of these films are the model's own training or "
            "validation films: the site figures are optimistic.",
            icon=":material/warning:",
        )
    if c.curve:
        st.plotly_chart(plots.bound_curve(c.curve, c.target_recall), width="stretch", key=f"bound:{model_key}")
    for line in link_lines(c.links):
        st.info(plain(line), icon=":material/link:")
    # As with the main Save: a site point set on the model's own training or validation films is saved only
    # once someone confirms they know, and the confirmation is recorded with the point in the card.
    overlap = bool(c.leakage and c.leakage.get("fraction", 0) > 0)
    confirm_site_leak = (
        st.checkbox(
            "I know these films overlap the model's own training or validation images and still want to save",
            key=f"site-leak-ok:{model_key}:{c.name}",
        )
        if overlap
        else True
    )
    site_blocked = auth.refusal(auth.APPLY_OPERATING_POINT) or (
        None if confirm_site_leak else "Tick the confirmation first."
    )
    try:  # the name as the card would store it (normalised), so "ward 3 " finds "ward 3"
        stored_name = site.check_name(c.name)
    except ValueError:
        stored_name = c.name  # record() refuses it with the reason
    taken = stored_name in {p["name"] for p in loaded.card.site_operating_points}
    replace = taken and st.checkbox(
        f"Replace the site point '{c.name}' already in the card",
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
        confirmed = dataclasses.replace(c, leakage={**c.leakage, "overlap_confirmed": True}) if overlap else c
        try:
            site.record(loaded.path, confirmed, replace=replace)
        except (ValueError, OSError) as exc:
            st.error(f"Not saved: {plain(exc)}", icon=":material/block:")
            audit_event(
                "threshold_saved", str(card_path(loaded.path)), "failed", {"site_point": c.name, "error": str(exc)}
            )
        else:
            audit_event(
                "threshold_saved",
                str(card_path(loaded.path)),
                details={"site_point": c.name, "threshold": c.threshold, "n": c.n, "replaced": replace},
            )
            st.toast(f"Saved '{c.name}' into the card; choose it in the sidebar under Operating point.")
