"""Train: launch a background training run, watch it live, compare runs, activate a model."""

from typing import Any

import pandas as pd
import streamlit as st

from pneumo.app import auth, plots, texts
from pneumo.app.ui import (
    TRAINING_NEEDS,
    activate_model,
    data_root,
    device_description,
    plain,
    require_entry_point,
    settings,
    training_available,
)
from pneumo.app.verdicts import audit_event
from pneumo.core.card import ModelCard
from pneumo.training import metrics_log, runs, watch
from pneumo.training.form import FormField, form_fields
from pneumo.training.job import TrainConfig

require_entry_point()

st.title("Train")
cfg = settings()
root = data_root()
st.caption(f"Device: **{plain(device_description())}** · runs folder {texts.code_span(cfg.runs_dir)}")
can_train = training_available()
if not can_train:
    # The serving install (requirements.txt: ONNX Runtime, no TensorFlow) reads and explains films; training
    # needs TensorFlow. Said here, instead of a run that fails in its log.
    st.info(TRAINING_NEEDS, icon=":material/info:")


def config_widget(f: FormField, column: Any) -> Any:
    """The widget of one TrainConfig field (pneumo.training.form): typed, bounded and explained by the field."""
    if f.kind == "flag":
        # In a container: placed directly in a column, a checkbox cuts a long label with an ellipsis.
        return column.container().checkbox(f.label, f.default, help=f.help)
    if f.kind == "choice":
        return column.selectbox(f.label, f.choices, index=f.index, help=f.help)
    return column.number_input(
        f.label, min_value=f.minimum, max_value=f.maximum, value=f.default, help=f.help, format=f.number_format
    )


with st.form("config"):
    st.markdown(f"Training data: {texts.code_span(root)}" if root else "Select a data folder in the sidebar first.")
    shown = form_fields()
    columns = st.columns(4)
    values = {f.name: config_widget(f, columns[i % 4]) for i, f in enumerate(shown)}
    blocked = auth.refusal(auth.TRAIN) or (None if can_train else TRAINING_NEEDS)  # role, deployment, install
    start = st.form_submit_button("Start", type="primary", disabled=root is None or blocked is not None, help=blocked)

if start and root is not None and auth.can(auth.TRAIN) and can_train:
    try:
        config = TrainConfig.from_dict({**values, "data": str(root)}).validate()
    except ValueError as exc:
        st.error(f"Not started: {plain(exc)}", icon=":material/block:")
    else:
        mine = watch.own_run_waiting(
            runs.active_runs(cfg.runs_dir), st.session_state.get("watch_run"), cfg.max_concurrent_runs
        )
        if mine is not None:
            # Start pressed again while this visitor's own run waits or trains: nothing is wrong, their run is
            # on its way (a red "Not started" read as if it had been lost).
            st.info(
                f"Your run **{plain(mine.name)}** is {mine.state}: it is shown below. Another run can start when it "
                "has ended (or press Stop).",
                icon=":material/schedule:",
            )
        else:
            try:
                run_dir = runs.launch(config, cfg.runs_dir, max_concurrent=cfg.max_concurrent_runs)
            except (ValueError, OSError) as exc:
                st.error(f"Not started: {plain(exc)}", icon=":material/block:")
                audit_event("training_started", str(cfg.runs_dir), "failed", {"error": str(exc)})
            else:
                audit_event("training_started", str(run_dir), details={"data": str(root), "model": config.model})
                st.session_state["watch_run"] = str(run_dir)
                st.toast(f"Started {plain(run_dir.name)}")

all_runs = runs.list_runs(cfg.runs_dir)
if not all_runs:
    st.info("No runs yet. Fill in the form and press Start; the run keeps going if you close this tab.")
    st.stop()
names = [r.name for r in all_runs]
default = watch.watched_index(all_runs, st.session_state.get("watch_run"))
watched = all_runs[st.selectbox("Watch run", range(len(names)), index=default, format_func=lambda i: names[i])].path


@st.fragment(run_every=2)
def live_view() -> None:
    info = runs.run_info(watched)
    status = runs.read_status(watched)
    records = metrics_log.read_metrics(watched)
    epochs = metrics_log.epochs_of(records)
    progress = watch.latest_progress(records)
    cols = st.columns([2, 2, 2, 1])
    cols[0].markdown(texts.run_status(info.state, status.get("device")))
    phase = watch.phase_progress(info.state, status)
    if phase is not None:
        st.progress(phase[0], text=plain(phase[1]))
    if epochs:
        last = epochs[-1]
        cols[1].markdown(
            f"**Epoch** {last['epoch']}/{last['epochs']} · lr {last.get('lr', 0):.2e}  \n"
            f"best val AUC {info.best_val_auc:.4f} {watch.on_n(watch.val_size(watched))}"
            if info.best_val_auc is not None
            else ""
        )
    if info.state in ("running", "queued"):
        stopping = runs.stop_requested(watched)
        if stopping:
            # Training ends after the current batch; the run then checks and writes the model it kept.
            cols[0].markdown(":orange[**stopping…**] the run checks and saves the model it kept, then ends")
        elif cols[3].button(
            "Stop", key=f"stop-{watched.name}", disabled=not auth.can(auth.TRAIN), help=auth.refusal(auth.TRAIN)
        ):
            runs.request_stop(watched)
            audit_event("training_stopped", str(watched), details={"requested": "stop"})
            st.toast("Stop requested: the run ends after the current batch and keeps the model it has so far.")
            st.rerun(scope="fragment")
        if progress is not None and not stopping:
            share, text = watch.training_progress(progress)
            st.progress(share, text=text)
    if info.state == "failed":
        st.error(plain(status.get("error") or "failed"))
        st.code(runs.log_tail(watched), language="text")
    if epochs:
        st.plotly_chart(
            plots.learning_curves({watched.name: epochs}, {watched.name: watch.val_size(watched)}),
            width="stretch",
            key="live-curves",
        )
    elif info.state in ("running", "queued"):
        st.caption("Curves appear after the first epoch.")


live_view()

st.subheader("All runs")


@st.fragment(run_every=5)
def runs_section() -> None:
    """The runs table and what a selection shows, in one fragment: a tick reruns the fragment, and the
    curves and the activate button it drives must be drawn in that same rerun."""
    listed = runs.list_runs(cfg.runs_dir)
    rows = [watch.table_row(r) for r in listed]  # each run's config.json read again only when it changes
    # Keyed by the runs listed: a new run shifts the rows, and a selection must not then point at another run.
    names = "|".join(r.name for r in listed)
    event = st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        on_select="rerun",
        selection_mode="multi-row",
        key=f"runs_table:{hash(names)}",
    )
    selected = [listed[i] for i in event.selection.rows if i < len(listed)] if event and event.selection else []
    if not selected:
        st.caption("Tick runs to compare their curves.")
        return
    st.plotly_chart(
        plots.learning_curves(
            {r.name: metrics_log.epochs_of(metrics_log.read_metrics(r.path)) for r in selected},
            {r.name: watch.val_size(r.path) for r in selected},
        ),
        width="stretch",
        key="compare-curves",
    )
    done = watch.activatable(selected)
    if len(done) == 1:
        try:
            card = ModelCard.read(done[0].path / "card.json")
        except ValueError as exc:
            st.error(f"{plain(done[0].name)}: its card cannot be used ({plain(exc)})", icon=":material/error:")
        else:
            for caution in card.cautions():
                st.warning(f"{plain(done[0].name)}: {plain(caution)}.", icon=":material/warning:")
            st.button(
                f"Make {plain(done[0].name)} the active model",
                on_click=activate_model,
                args=(done[0].path / "model.keras",),
                key=f"activate:{done[0].name}",
                help="For this browser session only; other visitors keep their own choice.",
            )
    with st.expander(f"Config of {plain(selected[0].name)}"):
        st.json(watch.run_config(selected[0].path))


runs_section()
