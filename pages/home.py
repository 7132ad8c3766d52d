"""Overview: the active model's card, the data in use, the device."""

import streamlit as st

from pages.common import DISCLAIMER, active_model, data_root, device_description, metric_row, require_entry_point

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

loaded = active_model()
left, right = st.columns([3, 2])
with left:
    st.subheader("Active model")
    if loaded is None:
        st.info("No model loaded yet: train one on the Train page.")
    else:
        card = loaded.card
        st.markdown(
            f"**{card.get('architecture', loaded.model.name)}** · input {loaded.input_size}×{loaded.input_size} "
            f"grayscale · {card.get('parameters', loaded.model.count_params()):,} parameters  \n"
            f"Operating threshold **{loaded.threshold:.4f}** — {card.get('threshold_rule', 'not recorded')}"
        )
        vm = card.get("validation_metrics", {})
        if vm:
            st.caption(f"Validation (patient-level split, n = {vm.get('n')}) at the operating threshold")
            metric_row(vm, [("roc_auc", "ROC AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                            ("accuracy", "Accuracy"), ("precision", "Precision")])
        td = card.get("training_data", {})
        if td:
            st.markdown(
                f"Trained on {td.get('train_images', '?')} images ({td.get('train_patients', '?')} patients), "
                f"validated on {td.get('val_images', '?')} images ({td.get('val_patients', '?')} patients) — "
                f"{td.get('split', '')}."
            )
        with st.expander("Full model card"):
            st.json(card)
with right:
    st.subheader("Environment")
    root = data_root()
    st.markdown(f"**Data folder:** `{root if root else 'none configured'}`")
    st.markdown(f"**Device:** {device_description()}")
    st.markdown(
        "**Limits:** trained on pediatric (ages 1–5) anterior-posterior films from one hospital; not validated on "
        "adults, lateral views or other sites."
    )
