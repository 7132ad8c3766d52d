"""Train: launch a background training run, watch it live, compare runs, activate a model."""

from dataclasses import fields

import pandas as pd
import streamlit as st

from pages.common import activate_model, data_root, device_description, require_entry_point, settings
from pneumo import plots, runs
from pneumo.models import ARCHITECTURES
from pneumo.train import TrainConfig

require_entry_point()

st.title("Train")
cfg = settings()
root = data_root()
st.caption(f"Device: **{device_description()}** · runs folder `{cfg.runs_dir}`")

with st.form("config"):
    st.markdown(f"Training data: `{root}`" if root else "Select a data folder in the sidebar first.")
    c = st.columns(4)
    model = c[0].selectbox("Model", list(ARCHITECTURES), help="compact_cnn trains from scratch; the others are "
                           "keras.applications backbones (ImageNet weights only where they can be downloaded).")
    image_size = c[1].selectbox("Image size", [64, 96, 128, 160, 192, 224, 256], index=5)
    epochs = c[2].number_input("Epochs", 1, 500, 30)
    batch_size = c[3].selectbox("Batch size", [8, 16, 32, 64, 128], index=2)
    c = st.columns(4)
    learning_rate = c[0].number_input("Learning rate", 1e-5, 1.0, 2e-3, format="%.5f")
    val_fraction = c[1].slider("Validation fraction (by patient)", 0.05, 0.45, 0.15, 0.01)
    seed = c[2].number_input("Seed", 0, 1_000_000, 0)
    max_images = c[3].number_input("Subsample (0 = all images)", 0, 1_000_000, 0)
    c = st.columns(3)
    augment = c[0].checkbox("Augmentation", True)
    class_weighting = c[1].checkbox("Class weighting", True)
    weights = c[2].selectbox("Initial weights", ["none", "imagenet"])
    start = st.form_submit_button("Start", type="primary", disabled=root is None)

if start and root is not None:
    config = TrainConfig(data=str(root), model=model, image_size=int(image_size), epochs=int(epochs),
                         batch_size=int(batch_size), learning_rate=float(learning_rate), val_fraction=float(val_fraction),
                         augment=augment, class_weighting=class_weighting, weights=weights, seed=int(seed),
                         max_images=int(max_images))
    run_dir = runs.launch(config, cfg.runs_dir)
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
    records = runs.read_metrics(watched)
    epochs = runs.epochs_of(records)
    progress = [r for r in records if r.get("type") == "progress"]
    icon = {"running": ":green[:material/play_circle:]", "queued": ":orange[:material/schedule:]",
            "finished": ":green[:material/check_circle:]", "stopped": ":gray[:material/stop_circle:]",
            "failed": ":red[:material/error:]"}.get(info.state, ":material/help:")
    cols = st.columns([2, 2, 2, 1])
    cols[0].markdown(f"**Status:** {icon} `{info.state}`  \n{status.get('device', '')}")
    if epochs:
        last = epochs[-1]
        cols[1].markdown(f"**Epoch** {last['epoch']}/{last['epochs']} · lr {last.get('lr', 0):.2e}  \n"
                         f"best val AUC {info.best_val_auc:.4f}" if info.best_val_auc is not None else "")
    if info.state in ("running", "queued"):
        if cols[3].button("Stop", key=f"stop-{watched.name}"):
            runs.request_stop(watched)
            st.toast("Stop requested: the run ends after the current batch and keeps its best model.")
        if progress:
            p = progress[-1]
            done = ((p["epoch"] - 1) * p["batches"] + p["batch"]) / (p["epochs"] * p["batches"])
            st.progress(min(done, 1.0), text=f"epoch {p['epoch']}/{p['epochs']} · batch {p['batch']}/{p['batches']} · "
                                             f"loss {p['loss']:.3f} · ETA {p['eta_s'] / 60:.1f} min")
    if info.state == "failed":
        st.error(status.get("error") or "failed")
        st.code(runs.log_tail(watched), language="text")
    if epochs:
        st.plotly_chart(plots.learning_curves({watched.name: epochs}), width="stretch", key="live-curves")
    elif info.state in ("running", "queued"):
        st.caption("Curves appear after the first epoch.")


live_view()

st.subheader("All runs")
table = pd.DataFrame([{"run": r.name, "status": r.state, "model": r.model, "best val AUC": r.best_val_auc,
                       "epochs": f"{r.epochs_done}/{r.epochs}", "duration (min)": round((r.duration_s or 0) / 60, 1),
                       "started": r.started} for r in all_runs])
event = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row", key="runs_table")
selected = [all_runs[i] for i in event.selection.rows] if event and event.selection else []
if selected:
    st.plotly_chart(plots.learning_curves({r.name: runs.epochs_of(runs.read_metrics(r.path)) for r in selected}),
                    width="stretch", key="compare-curves")
    done = [r for r in selected if r.has_model and r.state in ("finished", "stopped")]
    if len(done) == 1:
        st.button(f"Make {done[0].name} the active model", on_click=activate_model, args=(done[0].path / "model.keras",))
with st.expander("Config fields"):
    st.write({f.name: f.default for f in fields(TrainConfig)})
