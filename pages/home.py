"""Overview: what is known of the active model (shift checks and external evaluations first), the data, the device."""

import pandas as pd
import streamlit as st

from pneumo.app import plots, texts
from pneumo.app.ui import (
    DISCLAIMER,
    LAST_DRIFT_KEY,
    USE_SAMPLES_KEY,
    active_model,
    card_summary,
    data_root,
    device_description,
    figure_table,
    plain,
    require_entry_point,
    stored_predictions,
)
from pneumo.evaluation import card_figures
from pneumo.evaluation import metrics as E
from pneumo.model.loading import STORED_KINDS, stored_predictions_file

require_entry_point()


@st.cache_data(show_spinner=False, max_entries=4)
def label_suspects(path: str, mtime: float) -> list[bool] | None:
    """The stored file's label_suspect column (card_figures.label_suspects), read again when the file changes."""
    return card_figures.label_suspects(path)


st.title("pneumo — chest X-ray pneumonia screening")
st.warning(DISCLAIMER, icon=":material/warning:")
st.markdown(
    "Drop an X-ray on **Predict** to see the probability of pneumonia, the decision at a recall-first operating "
    "point and a Grad-CAM map of where the model looked. **Dataset Explorer**, **Train** and **Threshold** are for "
    "the analyst: understand a collection, train on it with live curves, and set the operating point."
)
if st.button("Try it on a sample X-ray →", type="primary"):
    st.session_state[USE_SAMPLES_KEY] = True
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
            st.warning(texts.caution_line(caution), icon=":material/report:")
        st.markdown(
            f"**{plain(card.name)}** · {plain(card.architecture)} · input "
            f"{texts.input_line(loaded.input_size, loaded.framing)} · {(card.parameters or 0):,} parameters"
        )
        st.markdown(texts.operating_point_line(loaded.operating_point, loaded.threshold, card.threshold_rule))
        last_drift = st.session_state.get(LAST_DRIFT_KEY)
        if last_drift:
            st.caption(texts.last_drift_line(last_drift))

        st.markdown("##### Evaluations on films the model never saw")
        if card.external_evaluations:
            evaluations = pd.DataFrame(card.external_evaluations)
            st.dataframe(
                evaluations[card_figures.shown_columns(evaluations, card_figures.EVALUATION_COLUMNS)],
                hide_index=True,
                width="stretch",
                column_config={
                    k: st.column_config.NumberColumn(format="%.4f") for k in card_figures.EVALUATION_FIGURES
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
                sites[card_figures.shown_columns(sites, card_figures.SITE_COLUMNS)], hide_index=True, width="stretch"
            )

        stored = stored_predictions_file(loaded.path)
        if stored is not None:
            try:
                preds = stored_predictions(str(stored), stored.stat().st_mtime)[0]
            except ValueError as exc:
                st.error(texts.stored_unusable(exc), icon=":material/error:")
                st.stop()
            preds = card_figures.with_suspects(preds, label_suspects(str(stored), stored.stat().st_mtime))
            preds = preds[preds["probability"].notna()]
            figures = E.metrics_at(preds["label"], preds["probability"], loaded.threshold)
            st.markdown(texts.stored_figures_heading(STORED_KINDS[stored.name], card.in_distribution))
            st.caption(
                f"{plain(card.validation.get('split') or card.training_data.get('split', ''))}; n = {figures['n']:,}, "
                f"recomputed from {stored.name} at the threshold in force ({loaded.threshold:.4f})."
            )
            st.dataframe(figure_table(figures), hide_index=True, width="stretch")
            # The rule above ("sensitivity >= 0.97 on the films the label audit trusts") and this table's
            # sensitivity count different pneumonias: both are said, at the threshold in force.
            trusted = card_figures.trusted_sensitivity(preds, loaded.threshold)
            if trusted is not None:
                target = (card.validation.get("operating_point") or {}).get("target_recall")
                st.caption(texts.trusted_sensitivity_line(figures["sensitivity"], trusted, target))
            if card.in_distribution:
                st.caption(
                    "Children of the same hospital and period as the training films: expect lower figures on "
                    "other hospitals, devices and periods, and check a site's own films on the Threshold page."
                )
        audit_info = card.extra.get("label_audit")
        if audit_info:
            st.caption(texts.label_audit_line(audit_info))

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
            st.plotly_chart(
                plots.framing_chart(framing["conditions"], card_figures.watched_zooms(framing)),
                width="stretch",
                key="framing",
                config={"displayModeBar": False},
            )
            st.caption(
                f"Each film zoomed about its centre, the film's edge mirrored where it is zoomed out; "
                f"{plain(framing.get('how', ''))}. Shaded: the zooms a caution watches."
            )
            st.dataframe(
                pd.DataFrame(framing["conditions"] + (framing.get("stress") or []))[list(card_figures.FRAMING_COLUMNS)],
                hide_index=True,
                width="stretch",
                column_config={k: st.column_config.NumberColumn(format="%.3f") for k in card_figures.FRAMING_FIGURES},
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
                f"Trained on {plain(td.get('train_images', '?'))} images of {plain(td.get('images', '?'))}; "
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
    st.markdown(f"**Device:** {plain(device_description())}")
    st.markdown(
        "**Limits:** trained on pediatric (ages 1–5) anterior-posterior films from one hospital; not validated on "
        "adults, lateral views or other sites."
    )
