"""Train: launch a background training run, watch it live, compare runs, activate a model."""

from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from pneumo.app import auth, plots
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
from pneumo.core import files
from pneumo.core.card import ModelCard
from pneumo.training import metrics_log, runs
from pneumo.training.job import TrainConfig, field_choices

require_entry_point()

st.title("Train")
cfg = settings()
root = data_root()
st.caption(f"Device: **{device_description()}** · runs folder `{cfg.runs_dir}`")

FORM_SKIP = {"data", "split_seed", "mixed_precision", "notes", "label_review"}
ETA_AFTER_STEPS = 10
can_train = training_available()
if not can_train:
    # The serving install (requirements.txt: ONNX Runtime, no TensorFlow) reads and explains films; training
    # needs TensorFlow. Said here, instead of a run that fails in its log.
    st.info(TRAINING_NEEDS, icon=":material/info:")


def val_size(run_dir: Path) -> int | None:
    """How many validation films a run's figures come from (its data_summary.json), or None when unknown: a
    "best val AUC 1.0000" from 7 films is not one from 700, and the figure alone does not say which."""
    n = files.read_json_object(run_dir / "data_summary.json").get("val_images")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def on_n(n: int | None) -> str:
    """The "(n = 7 val films)" put beside a validation figure."""
    return f"(n = {n:,} val films)" if n is not None else "(n unknown)"


def config_widget(f: Any, column: Any) -> Any:
    """One form widget per TrainConfig field, typed, bounded and explained by the field itself."""
    meta, default, label = f.metadata, f.default, f.name.replace("_", " ").capitalize()
    choices = field_choices(f)
    if isinstance(default, bool):
        # In a container: placed directly in a column, a checkbox cuts a long label with an ellipsis.
        return column.container().checkbox(label, default, help=meta.get("help"))
    if choices:
        return column.selectbox(label, choices, index=list(choices).index(default), help=meta.get("help"))
    kind = int if isinstance(default, int) else float
    lo = kind(meta["min"]) if meta.get("min") is not None else None
    hi = kind(meta["max"]) if meta.get("max") is not None else None
    return column.number_input(
        label,
        min_value=lo,
        max_value=hi,
        value=default,
        help=meta.get("help"),
        format="%.5g" if kind is float else "%d",
    )


with st.form("config"):
    st.markdown(f"Training data: `{root}`" if root else "Select a data folder in the sidebar first.")
    shown = [f for f in fields(TrainConfig) if f.name not in FORM_SKIP]
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
        busy = runs.active_runs(cfg.runs_dir)
        mine = next((r for r in busy if str(r.path) == st.session_state.get("watch_run")), None)
        if mine is not None and len(busy) >= cfg.max_concurrent_runs:
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
                st.toast(f"Started {run_dir.name}")

all_runs = runs.list_runs(cfg.runs_dir)
if not all_runs:
    st.info("No runs yet. Fill in the form and press Start; the run keeps going if you close this tab.")
    st.stop()
names = [r.name for r in all_runs]
watch = st.session_state.get("watch_run")
default = next((i for i, r in enumerate(all_runs) if str(r.path) == watch), 0)
watched = all_runs[st.selectbox("Watch run", range(len(names)), index=default, format_func=lambda i: names[i])].path


@st.fragment(run_every=2)
def live_view() -> None:
    info = runs.run_info(watched)
    status = runs.read_status(watched)
    records = metrics_log.read_metrics(watched)
    epochs = metrics_log.epochs_of(records)
    progress = [r for r in records if r.get("type") == "progress"]
    icon = {
        "running": ":green[:material/play_circle:]",
        "queued": ":orange[:material/schedule:]",
        "finished": ":green[:material/check_circle:]",
        "stopped": ":gray[:material/stop_circle:]",
        "failed": ":red[:material/error:]",
    }.get(info.state, ":material/help:")
    cols = st.columns([2, 2, 2, 1])
    cols[0].markdown(f"**Status:** {icon} `{info.state}`  \n{status.get('device', '')}")
    if info.state == "running" and status.get("phase") not in (None, "training", "done"):
        total = status.get("phase_total") or 0
        st.progress(
            status.get("phase_done", 0) / total if total else 0.0,
            text=f"{status['phase']}" + (f" · {status.get('phase_done', 0)}/{total}" if total else " …"),
        )
    if epochs:
        last = epochs[-1]
        cols[1].markdown(
            f"**Epoch** {last['epoch']}/{last['epochs']} · lr {last.get('lr', 0):.2e}  \n"
            f"best val AUC {info.best_val_auc:.4f} {on_n(val_size(watched))}"
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
        if progress and not stopping:
            p = progress[-1]
            done = ((p["epoch"] - 1) * p["batches"] + p["batch"]) / (p["epochs"] * p["batches"])
            # An ETA only once steps have been measured: the first step includes tracing and says little.
            measured = p["epoch"] > 1 or p["batch"] >= ETA_AFTER_STEPS
            eta = f"ETA {p['eta_s'] / 60:.1f} min" if measured else "ETA after a few steps"
            st.progress(
                min(done, 1.0),
                text=f"epoch {p['epoch']}/{p['epochs']} · batch {p['batch']}/{p['batches']} · "
                f"loss {p['loss']:.3f} · {eta}",
            )
    if info.state == "failed":
        st.error(status.get("error") or "failed")
        st.code(runs.log_tail(watched), language="text")
    if epochs:
        st.plotly_chart(
            plots.learning_curves({watched.name: epochs}, {watched.name: val_size(watched)}),
            width="stretch",
            key="live-curves",
        )
    elif info.state in ("running", "queued"):
        st.caption("Curves appear after the first epoch.")


live_view()

st.subheader("All runs")
HYPER = ("split", "augmentation", "mixup", "epochs", "batch_size", "learning_rate", "image_size", "seed")


@st.fragment(run_every=5)
def runs_section() -> None:
    """The runs table and what a selection shows, in one fragment: a tick reruns the fragment, and the
    curves and the activate button it drives must be drawn in that same rerun."""
    listed = runs.list_runs(cfg.runs_dir)
    rows = []
    for r in listed:
        config = files.read_json(r.path / "config.json", {}) or {}
        config = config if isinstance(config, dict) else {}
        rows.append(
            {
                "run": r.name,
                "status": r.state,
                "model": r.model,
                "kept model's val AUC": r.kept_val_auc,
                "best val AUC": r.best_val_auc,
                "val films (n)": val_size(r.path),  # what both AUCs are measured on
                **{k: config.get(k) for k in HYPER},
                "epochs done": r.epochs_done,
                "duration (min)": round((r.duration_s or 0) / 60, 1),
                "started": r.started,
                "problem": getattr(r, "damaged", None) or "",
            }
        )
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
            {r.name: val_size(r.path) for r in selected},
        ),
        width="stretch",
        key="compare-curves",
    )
    done = [r for r in selected if r.has_model and r.state in ("finished", "stopped")]
    if len(done) == 1:
        try:
            card = ModelCard.read(done[0].path / "card.json")
        except ValueError as exc:
            st.error(f"{done[0].name}: its card cannot be used ({plain(exc)})", icon=":material/error:")
        else:
            for caution in card.cautions():
                st.warning(f"{done[0].name}: {caution}.", icon=":material/warning:")
            st.button(
                f"Make {done[0].name} the active model",
                on_click=activate_model,
                args=(done[0].path / "model.keras",),
                key=f"activate:{done[0].name}",
                help="For this browser session only; other visitors keep their own choice.",
            )
    with st.expander(f"Config of {selected[0].name}"):
        st.json(files.read_json(selected[0].path / "config.json", {}) or {})


runs_section()
