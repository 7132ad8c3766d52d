"""Overview: what is known of the active model (shift checks and external evaluations first), the data, the device."""

import pandas as pd
import streamlit as st

from pneumo.ui import (DISCLAIMER, active_model, data_root, device_description, metric_row, require_entry_point,
                       stored_predictions)
from pneumo import evaluate as E
from pneumo import plots

require_entry_point()

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


FIGURES = [("roc_auc", "ROC AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
           ("accuracy", "Accuracy"), ("precision", "Precision")]

loaded = active_model()
left, right = st.columns([3, 2])
with left:
    st.subheader("Active model")
    if loaded is None:
        st.info("No model loaded yet: train one on the Train page.")
    else:
        card = loaded.card
        st.markdown(
            f"**{card.name}** · {card.architecture} · input {loaded.input_size}×{loaded.input_size} grayscale · "
            f"{(card.parameters or loaded.model.count_params()):,} parameters  \n"
            f"Operating threshold **{loaded.threshold:.4f}** — {card.threshold_rule}"
        )
        st.markdown("##### External evaluations")
        if card.external_evaluations:
            evaluations = pd.DataFrame(card.external_evaluations)
            st.dataframe(evaluations[
                [c for c in ("name", "date", "n", "threshold", "roc_auc", "sensitivity", "specificity", "accuracy")
                 if c in evaluations]], hide_index=True, width="stretch",
                column_config={k: st.column_config.NumberColumn(format="%.4f")
                               for k in ("threshold", "roc_auc", "sensitivity", "specificity", "accuracy")})
            st.caption("Recorded with `python -m pneumo evaluate --data DIR --record NAME` on collections the model "
                       "never saw; each at the threshold in force when it was run.")
        else:
            st.caption("None recorded yet: `python -m pneumo evaluate --data DIR --out R.json --record NAME` adds one.")

        stress = card.shift_checks.get("stress")
        if stress:
            st.markdown("##### Shift checks (held-out films under acquisition changes)")
            table = pd.DataFrame(stress["conditions"]).rename(columns={"condition": "change"})
            st.plotly_chart(plots.stress_chart(table, stress["threshold"]), width="stretch")
            ci = card.shift_checks.get("bootstrap_95", {})
            worst = stress["worst_specificity"]
            st.caption(
                f"Worst ROC AUC {stress['worst_auc']['roc_auc']:.4f} ({stress['worst_auc']['condition']}); worst "
                f"specificity {worst['specificity']:.3f} ({worst['condition']}) at the threshold the checks were run "
                f"at ({stress['threshold']:.4f})."
                + (f" 95 % interval of the held-out AUC, resampling patients: {ci['roc_auc']['low']:.4f}–"
                   f"{ci['roc_auc']['high']:.4f}." if "roc_auc" in ci else "")
            )

        stored = loaded.path.with_name("val_predictions.csv")
        if stored.exists():
            preds = stored_predictions(str(stored), stored.stat().st_mtime)
            preds = preds[preds["probability"].notna()]
            figures = E.metrics_at(preds["label"], preds["probability"], loaded.threshold)
            kind = card.validation_kind
            label = ("in-distribution: a random patient-level draw of the training collection" if card.in_distribution
                     else f"{kind} hold-out: {card.validation.get('split') or card.training_data.get('split', '')}")
            st.markdown("##### Held-out validation")
            st.caption(f"{label}; n = {figures['n']}, recomputed at the current threshold {loaded.threshold:.4f}")
            metric_row(figures, FIGURES, digits=4)
            if card.in_distribution:
                st.caption("In-distribution figures describe images like the training ones; expect lower figures on "
                           "other hospitals, devices and periods.")
        trust = card.explanation_trust
        if trust:
            st.caption(f"Explanation trust: on average {trust['outside_chest_mean']:.1%} of the Grad-CAM heat falls "
                       f"outside the chest (border, corners, neck, abdomen); 90th percentile "
                       f"{trust['outside_chest_p90']:.1%}, over {trust['n']} held-out films. Lower is better.")
        td = card.training_data
        if td:
            st.markdown(
                f"Trained on {td.get('train_images', '?')} images ({td.get('train_patients', '?')} patients), "
                f"validated on {td.get('val_images', '?')} images ({td.get('val_patients', '?')} patients)."
            )
        with st.expander("Full model card"):
            st.json(card.to_dict(), expanded=False)
with right:
    st.subheader("Environment")
    root = data_root()
    st.markdown(f"**Data folder:** `{root if root else 'none configured'}`")
    st.markdown(f"**Device:** {device_description()}")
    st.markdown(
        "**Limits:** trained on pediatric (ages 1–5) anterior-posterior films from one hospital; not validated on "
        "adults, lateral views or other sites."
    )
