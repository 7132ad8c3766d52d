"""Train a model into a run directory: config, live metrics, status, kept model, card, validation predictions.

The pieces live in their own modules, each importing only those before it (train_config ← train_data,
train_callbacks ← train_loop ← this job; qualify ← ensemble); the names below are re-exported so that
`pneumo.training.job.X` keeps working:

- train_config: TrainConfig and its fields' flags and ranges, the device, the TF_CONFIG cluster;
- train_data: the images scanned, checked, split, shared between workers and recorded;
- train_callbacks: per-epoch held-out figures, the kept model, the run folder's live files;
- train_loop: optimiser, loss, metrics, schedule, and fitting in one process or several;
- qualify: the checks on held-out films, the serving export and the card;
- ensemble: averaging finished runs into one checked model.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pneumo.core import files
from pneumo.core.card import ModelCard
from pneumo.model.architectures import build_model, get_architecture
from pneumo.model.loading import load_model
from pneumo.training import metrics_log, runs
from pneumo.training.config import (
    AUGMENTATIONS,
    KEEP,
    DeviceInfo,
    MetricsHook,
    TrainConfig,
    cluster_workers,
    detect_device,
    field_choices,
    library_versions,
    worker_index,
)
from pneumo.training.data import LEAKAGE_FILE, Phase, TrainingData, prepare
from pneumo.training.qualify import finish_run, fit_input_check, shift_checks

# TensorFlow, Keras and the training modules are imported when a run starts: the CLI imports this module at start
# (for TrainConfig and the lazy re-exports below).

# Names whose modules import Keras: loaded on first use, so that importing pneumo.training.job (the CLI's parser, the
# Train page's form) stays as light as TrainConfig.
_LAZY = {
    "compile_for_training": ("loop", "compile_for_training"),
    "save_model": ("callbacks", "save_model"),
    "ensemble": ("ensemble", "ensemble"),
    "average_model": ("ensemble", "average_model"),
}

# The lazy names above are reached through __getattr__, not listed here (a star import would load Keras).
__all__ = [
    "AUGMENTATIONS",
    "KEEP",
    "LEAKAGE_FILE",
    "DeviceInfo",
    "MetricsHook",
    "TrainConfig",
    "cluster_workers",
    "detect_device",
    "field_choices",
    "finish_run",
    "fit_input_check",
    "library_versions",
    "shift_checks",
    "train",
    "worker_index",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def train(
    config: TrainConfig, run_dir: str | Path, hook: MetricsHook | None = None, overwrite: bool = False
) -> ModelCard:
    """Run a training job into run_dir and return the card; status.json records how it ended.

    The config is checked and the folder claimed (see runs.claim) before any work starts.
    """
    config.validate()
    with runs.claim(run_dir, overwrite) as run_dir:
        files.atomic_write_json(run_dir / "config.json", asdict(config))
        started = time.time()
        runs.write_status(
            run_dir,
            "running",
            pid=os.getpid(),
            started=files.now_iso(),
            error=None,
            heartbeat=files.now_iso(),
            phase="reading data",
        )
        try:
            card = _train(config, run_dir, hook, started)
        except BaseException as exc:
            try:
                runs.write_status(
                    run_dir,
                    "failed",
                    ended=files.now_iso(),
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=8),
                )
            except OSError:
                pass  # a full disk or read-only folder: read_status reports the dead pid as failed
            raise
        state = "stopped" if runs.stop_requested(run_dir) else "finished"
        runs.write_status(run_dir, state, ended=files.now_iso(), seconds=round(time.time() - started, 1), phase="done")
    return card


def _train(config: TrainConfig, run_dir: Path, hook: MetricsHook | None, started: float) -> ModelCard:
    import keras
    import tensorflow as tf

    from pneumo.training import loop as L
    from pneumo.training import pipeline as P
    from pneumo.training.callbacks import MODEL_FILE, epoch_callbacks, save_model

    # Our datasets are shuffled by tf.data: Keras warns that its own shuffle=True is ignored on every run.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed")

    arch = get_architecture(config.model)
    size = config.resolved_image_size()
    workers = cluster_workers()
    batch = L.per_worker_batch(config.batch_size, workers)  # refused before any work when it does not divide
    # Several workers in TF_CONFIG: MultiWorkerMirroredStrategy, created before any other TensorFlow work.
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else None
    worker = worker_index()
    keras.utils.set_random_seed(config.seed)
    device = detect_device()
    runs.write_status(run_dir, "running", device=device.describe(), workers=workers, worker_index=worker)
    if device.kind == "GPU" and config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    def phase(name: str, done: int = 0, total: int = 0) -> None:
        runs.write_status(run_dir, "running", phase=name, phase_done=done, phase_total=total, heartbeat=files.now_iso())

    data = prepare(config, run_dir, size, phase, workers, worker)
    train_ds = P.make_dataset(
        data.shard,
        size,
        batch,
        training=True,
        augmentation=P.Augmentation.preset(config.augmentation),
        seed=config.seed,
        class_weights=data.class_weights,
        mixup=config.mixup,
        augment_size=arch.augmentation_size(size) if config.work_resolution_augmentation else None,
        framing=config.framing,
    )
    steps = L.steps_per_epoch(len(data.train_df), config.batch_size)
    schedule = L.learning_rate_schedule(config, steps)

    if strategy is None:
        strategy = tf.distribute.MirroredStrategy() if len(device.names) > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        # One replica has nothing to synchronise; several normalise over all their images, as one process would.
        model = build_model(
            config.model,
            size,
            None if config.weights == "none" else config.weights,
            config.dropout,
            synchronized=strategy.num_replicas_in_sync > 1,
        )
        L.compile_for_training(model, config, schedule)
    callbacks = epoch_callbacks(
        run_dir,
        steps,
        config.epochs,
        schedule,
        hook,
        config.keep,
        data.val_images,
        data.val_df["label"].to_numpy(),
        L.training_loss(config),
    )
    phase("tracing the first training step")
    L.fit(
        model, strategy, train_ds, config.epochs, steps, callbacks, L.training_loss(config, reduction="none"), run_dir
    )
    if not (run_dir / MODEL_FILE).exists():  # stopped before the first epoch ended
        save_model(model, run_dir / MODEL_FILE)
    if worker > 0:
        # The chief (worker 0) checks the model and writes its card; this worker's folder keeps its metrics
        # and its copy of the same weights, and the run ends when the chief's does.
        phase("waiting for the chief's checks")
        L.wait_for_all(strategy)
        return ModelCard.default(run_dir.name)
    try:
        return _check_and_card(config, run_dir, data, arch, device, started, phase)
    finally:
        L.wait_for_all(strategy)  # the other workers end with this one, its card written or not


def _check_and_card(
    config: TrainConfig, run_dir: Path, data: TrainingData, arch: Any, device: DeviceInfo, started: float, phase: Phase
) -> ModelCard:
    """The chief's last step: check the kept model on the held-out and stressed images and write its card."""
    from pneumo.data import collection as D
    from pneumo.training.callbacks import MODEL_FILE

    phase("checking the model on held-out and stressed images")
    best = load_model(run_dir / MODEL_FILE)
    # The card is written after the checks, which must already see the films framed as the network learned them.
    best.card.extra["framing"] = config.framing
    beat = lambda done, total: phase("checking the model on held-out and stressed images", done, total)  # noqa: E731
    history = metrics_log.epochs_of(metrics_log.read_metrics(run_dir))
    files.atomic_write_json(run_dir / "history.json", history)
    return finish_run(
        run_dir,
        best,
        data.val_df,
        config.target_recall,
        architecture=config.model,
        description=arch.description,
        preprocessing=arch.preprocessing,
        gradcam_layer=arch.gradcam_layer,
        training_data={"path": str(config.data), "layout": data.layout, **data.summary},
        validation_kind=config.split,
        training={
            "best_epoch": next((h["epoch"] for h in reversed(history) if h.get("kept")), None),
            "epochs_run": len(history),
            "seconds": round(time.time() - started, 1),
            "device": device.describe(),
            "library_versions": library_versions(),
            "config": asdict(config),
            "command": _command(config, run_dir),
        },
        attribution=D.KERMANY_ATTRIBUTION if D.looks_like_kermany(data.frame) else "",
        progress=beat,
    )


def _command(config: TrainConfig, run_dir: Path) -> str:
    return " ".join(["python -m pneumo train", f"--data {config.data}", *config.flags(), f"--out {run_dir}"])
