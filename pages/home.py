"""Overview: what is known of the active model (shift checks and external evaluations first), the data, the device."""

import pandas as pd
import streamlit as st

from pneumo.app import plots
from pneumo.app.ui import (
    DISCLAIMER,
    active_model,
    card_summary,
    data_root,
    device_description,
    figure_table,
    plain,
    require_entry_point,
    stored_predictions,
)
from pneumo.core.paths import CLASS_NAMES
from pneumo.evaluation import metrics as E
from pneumo.model.loading import STORED_KINDS, stored_predictions_file

require_entry_point()


@st.cache_data(show_spinner=False, max_entries=4)
def label_suspects(path: str, mtime: float) -> list[bool] | None:
    """The label audit's verdict on each stored row (label_suspect, in file order), or None when the file has
    none. The validated reader keeps path, label and probability only; this column says which pneumonias the
    threshold rule's recall target was asked of."""
    try:
        column = pd.read_csv(path, usecols=["label_suspect"], dtype=str, keep_default_na=False)["label_suspect"]
    except (ValueError, OSError):  # no such column, or a file the validated reader refuses anyway
        return None
    return [value.strip().lower() == "true" for value in column]


def by_label_in_words(counts: dict[str, int]) -> str:
    """The audit's suspects by given label ({"1": 32}) as words: "32 labelled PNEUMONIA"."""
    parts = []
    for key, n in sorted(counts.items()):
        try:
            name = CLASS_NAMES[int(key)]
        except (ValueError, IndexError):
            name = str(key)  # a label this version does not know: shown as the card holds it
        parts.append(f"{int(n):,} labelled {name}")
    return " and ".join(parts) or "none"


st.title("pneumo — chest X-ray pneumonia screening")
st.warning(DISCLAIMER, icon=":material/warning:")
st.markdown(
    "Drop an X-ray on **Predict** to see the probability of pneumonia, the decision at a recall-first operating "
    "point and a Grad-CAM map of where the model looked. **Dataset Explorer**, **Train** and **Threshold** are for "
    "the analyst: understand a collection, train on it with live curves, and set the operating point."
)
if st.button("Try it on a sample X-ray →", type="primary"):
    st.session_state["use_samples"] = True
    st.switch_page("pages/predict.py")


loaded = active_model()
left, right = st.columns([3, 2])
with left:
    st.subheader("Active model")
    if loaded is None:
        st.info("No model loaded yet: train one on the Train page.")
    else:
        card = loaded.card
        for caution in card.cautions():
            st.warning(f"**This model carries a caution:** {caution}.", icon=":material/report:")
        st.markdown(
            f"**{plain(card.name)}** · {plain(card.architecture)} · input {loaded.input_size}×{loaded.input_size} "
            f"grayscale · {(card.parameters or 0):,} parameters"
        )
        point = getattr(loaded, "operating_point", None) or "shipped"
        st.markdown(
            f"**Operating point in force: {plain(point)}**, threshold **{loaded.threshold:.4f}**  \n"
            f"{plain(card.threshold_rule)}"
        )
        last_drift = st.session_state.get("last_drift")
        if last_drift:
            st.caption(f"Drift of the last batch read on Predict: {plain(last_drift)}")

        st.markdown("##### Evaluations on films the model never saw")
        if card.external_evaluations:
            evaluations = pd.DataFrame(card.external_evaluations)
            st.dataframe(
                evaluations[
                    [
                        c
                        for c in ("name", "date", "n", "threshold", "roc_auc", "sensitivity", "specificity", "accuracy")
                        if c in evaluations
                    ]
                ],
                hide_index=True,
                width="stretch",
                column_config={
                    k: st.column_config.NumberColumn(format="%.4f")
                    for k in ("threshold", "roc_auc", "sensitivity", "specificity", "accuracy")
                },
            )
            st.caption(
                "Recorded with `python -m pneumo evaluate --data DIR --record NAME` on collections the model "
                "never saw; each at the threshold in force when it was run."
            )
        else:
            st.caption(
                "None recorded yet: `python -m pneumo evaluate --data DIR --out R.json --record NAME` adds one. "
                "Until then every figure below is in-distribution."
            )

        if card.site_operating_points:
            st.markdown("##### Site operating points (each set on a site's own labelled films)")
            sites = pd.DataFrame(card.site_operating_points)
            st.dataframe(
                sites[
                    [
                        c
                        for c in (
                            "name",
                            "date",
                            "n",
                            "n_positive",
                            "threshold",
                            "sensitivity",
                            "sensitivity_lower_95",
                            "specificity",
                            "specificity_lower_95",
                        )
                        if c in sites
                    ]
                ],
                hide_index=True,
                width="stretch",
            )

        stored = stored_predictions_file(loaded.path)
        if stored is not None:
            try:
                preds = stored_predictions(str(stored), stored.stat().st_mtime)[0]
            except ValueError as exc:
                st.error(f"The stored predictions cannot be used: {plain(exc)}", icon=":material/error:")
                st.stop()
            suspects = label_suspects(str(stored), stored.stat().st_mtime)
            if suspects is not None and len(suspects) == len(preds):
                preds = preds.assign(label_suspect=suspects)
            preds = preds[preds["probability"].notna()]
            figures = E.metrics_at(preds["label"], preds["probability"], loaded.threshold)
            kind = STORED_KINDS[stored.name]
            st.markdown(
                f"##### {kind.capitalize()} figures "
                f"({'in-distribution' if card.in_distribution else 'shifted hold-out'})"
            )
            st.caption(
                f"{plain(card.validation.get('split') or card.training_data.get('split', ''))}; n = {figures['n']:,}, "
                f"recomputed from {stored.name} at the threshold in force ({loaded.threshold:.4f})."
            )
            st.dataframe(figure_table(figures), hide_index=True, width="stretch")
            if "label_suspect" in preds and (preds["label"] == 1).any():
                # The rule above ("sensitivity >= 0.97 on the films the label audit trusts") and this table's
                # sensitivity count different pneumonias: both are said, at the threshold in force.
                positives = preds[preds["label"] == 1]
                trusted = positives[~positives["label_suspect"]]
                target = (card.validation.get("operating_point") or {}).get("target_recall")
                asked = f" (the rule's sensitivity ≥ {target:.2f} is asked of these)" if target is not None else ""
                st.caption(
                    f"Sensitivity **{figures['sensitivity']:.4f}** in the table is on **all {len(positives):,} "
                    f"pneumonia films**, suspected label errors included; on the **{len(trusted):,} the label audit "
                    f"trusts** it is **{(trusted['probability'] >= loaded.threshold).mean():.4f}**{asked}."
                )
            if card.in_distribution:
                st.caption(
                    "Children of the same hospital and period as the training films: expect lower figures on "
                    "other hospitals, devices and periods, and check a site's own films on the Threshold page."
                )
        audit_info = card.extra.get("label_audit")
        if audit_info:
            st.caption(
                f"Label audit: {audit_info['suspects']} of {audit_info['n']:,} training films "
                f"({audit_info['suspect_share']:.1%}) are suspected label errors "
                f"({by_label_in_words(audit_info.get('suspects_by_label') or {})}); the threshold's recall target "
                "is asked of the others. See the Dataset Explorer."
            )

        pops = card.shift_checks.get("populations")
        if pops:
            st.markdown("##### Populations (out of fold, at the threshold in force when the card was written)")
            st.plotly_chart(
                plots.population_chart(pops["by_population"], "Normals by file-name series, pneumonias by subtype"),
                width="stretch",
                key="populations",
            )
            if pops.get("by_band"):
                st.plotly_chart(
                    plots.population_chart(pops["by_band"], "Bands of patient numbers, in order"),
                    width="stretch",
                    key="bands",
                )
        for held in card.shift_checks.get("leave_population_out", []):
            st.caption(
                f"Leave-population-out run {plain(held['run'])} ({plain(held['held_out'])}): n = {held['n']:,}, "
                f"ROC AUC {held['roc_auc']:.4f}, sensitivity {held['sensitivity']:.3f}, specificity "
                f"{held['specificity']:.3f} at the card's threshold."
            )
        stress = card.shift_checks.get("stress")
        if stress and stress.get("conditions"):
            st.markdown("##### Shift checks (held-out films under acquisition changes)")
            table = pd.DataFrame(stress["conditions"]).rename(columns={"condition": "change"})
            st.plotly_chart(plots.stress_chart(table, stress["threshold"]), width="stretch", key="stress")
            st.caption(
                f"Worst ROC AUC {stress['worst_auc']['roc_auc']:.4f} ({plain(stress['worst_auc']['condition'])}), "
                f"at the threshold the checks were run at ({stress['threshold']:.4f})."
            )
        elif stress and stress.get("folds"):
            st.caption(
                f"Stress suite (16 acquisition changes), each fold network on its own held-out films: mean ROC "
                f"AUC {stress['mean_auc']:.4f}, worst {stress['worst_auc']:.4f}."
            )
        framing = card.shift_checks.get("framing")
        if framing and framing.get("conditions"):
            st.markdown("##### Does the decision depend on how the film is framed?")
            zooms = tuple((framing.get("worst_in_range") or {}).get("zooms") or (0.85, 1.3))
            st.plotly_chart(
                plots.framing_chart(framing["conditions"], zooms),
                width="stretch",
                key="framing",
                config={"displayModeBar": False},
            )
            st.caption(
                f"Each film zoomed about its centre, the film's edge mirrored where it is zoomed out; "
                f"{plain(framing.get('how', ''))}. Shaded: the zooms a caution watches."
            )
            st.dataframe(
                pd.DataFrame(framing["conditions"] + (framing.get("stress") or []))[
                    ["condition", "n", "sensitivity", "specificity", "flagged_fraction", "roc_auc"]
                ],
                hide_index=True,
                width="stretch",
                column_config={
                    k: st.column_config.NumberColumn(format="%.3f")
                    for k in ("sensitivity", "specificity", "flagged_fraction", "roc_auc")
                },
            )
        else:
            st.caption(
                "No framing sweep recorded for this model: `python -m pneumo sweep --model PATH --record` "
                "measures the decision under zoom, shift and aspect changes."
            )
        faith = card.extra.get("explanation")
        if faith:
            st.markdown("##### Do the maps show what drives the score?")
            st.dataframe(pd.DataFrame(faith["table"]), hide_index=True, width="stretch")
            st.caption(plain(faith["how"]))
        td = card.training_data
        if td:
            st.markdown(
                f"Trained on {td.get('train_images', '?')} images of {td.get('images', '?')}; "
                f"{plain(td.get('split', ''))}."
            )
        with st.expander("Model card"):
            st.dataframe(card_summary(card), hide_index=True, width="stretch")
            st.download_button(
                "Download card.json",
                loaded.path.with_name("card.json").read_bytes()
                if loaded.path.with_name("card.json").exists()
                else b"{}",
                "card.json",
                "application/json",
                key="card-json",
            )
with right:
    st.subheader("Environment")
    root = data_root()
    st.markdown("**Data folder:**")
    st.text(str(root) if root else "none configured")
    st.markdown(f"**Device:** {device_description()}")
    st.markdown(
        "**Limits:** trained on pediatric (ages 1–5) anterior-posterior films from one hospital; not validated on "
        "adults, lateral views or other sites."
    )
