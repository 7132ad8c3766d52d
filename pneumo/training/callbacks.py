"""The callbacks every training epoch goes through, in one process or several: the held-out figures, Keras'
ModelCheckpoint for the kept model, and the run-folder pieces Keras has no callback for (live metrics,
status heartbeat, the stop file)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pneumo.core import files
from pneumo.training import runs
from pneumo.training.config import MetricsHook

# pneumo.evaluation.metrics (scikit-learn) is imported where used: only the end-of-run evaluation needs it.

MODEL_FILE = "model.keras"
# ModelCheckpoint writes here and the run logger renames it over model.keras: a reader (the app, a stopped
# run's checks) never sees a half-written model. Keras insists on the .keras suffix.
CHECKPOINT_FILE = ".tmp-checkpoint.keras"
VAL_BATCH = 64


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model atomically: to a temporary name beside it, then renamed."""
    tmp = path.with_name(f".tmp-{path.stem}.keras")
    try:
        model.save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed save (full disk) never leaves a half file behind


def predict_probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    """The model's probabilities for `images` (N, H, W, 1), in inference mode, batch by batch.

    Called directly rather than through model.predict(), which Keras 3 cannot run under
    MultiWorkerMirroredStrategy: one and several processes then score the held-out films the same way."""
    return np.concatenate(
        [
            np.asarray(model(images[j : j + VAL_BATCH], training=False), dtype=np.float64).ravel()
            for j in range(0, len(images), VAL_BATCH)
        ]
    )


class HeldOutFigures(keras.callbacks.Callback):
    """At each epoch's end, add val_loss, val_accuracy, val_auc, val_recall and val_precision to the logs.

    val_auc is scikit-learn's exact ROC AUC, the figure the card reports, rather than Keras' 500-bucket
    estimate: it is computed here, from the same predictions, whether one process trains or several.
    Listed before ModelCheckpoint and the run logger, which read the logs dict this fills in (Keras hands
    every callback the same dict)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, loss: Any) -> None:
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels)
        self.loss = loss

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from pneumo.evaluation import metrics as E

        if logs is None:
            return
        probs = predict_probabilities(self.model, self.images)
        figures = E.metrics_at(self.labels, probs, 0.5)
        loss = self.loss(self.labels.reshape(-1, 1).astype(np.float32), probs.reshape(-1, 1).astype(np.float32))
        logs.update(
            {
                "val_loss": float(loss),
                "val_accuracy": figures["accuracy"] or 0.0,
                "val_auc": figures["roc_auc"] if figures["roc_auc"] is not None else 0.0,
                "val_recall": figures["sensitivity"] or 0.0,
                "val_precision": figures["precision"] or 0.0,
            }
        )


class RunLogger(keras.callbacks.Callback):
    """metrics.jsonl (progress every few steps, one record per epoch), the status heartbeat, the STOP file,
    and moving the model ModelCheckpoint just saved into place."""

    def __init__(self, run_dir: Path, steps: int, epochs: int, schedule: Any, hook: MetricsHook | None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.steps = steps
        self.epochs = epochs
        self.schedule = schedule
        self.hook = hook
        self.best_auc = -math.inf
        self.every = max(1, steps // 25)
        self.t_epoch = self.t_start = self.t_first = time.time()
        self.t_beat = 0.0
        self.epoch_seconds: list[float] = []
        self.epoch = 1

    def _emit(self, record: dict[str, Any]) -> None:
        files.append_jsonl(self.run_dir / "metrics.jsonl", record)
        if time.time() - self.t_beat > runs.HEARTBEAT_S:
            runs.write_status(self.run_dir, "running", heartbeat=files.now_iso(), phase="training")
            self.t_beat = time.time()
        if self.hook:
            self.hook(record)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.t_epoch = time.time()
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if runs.stop_requested(self.run_dir):
            self.model.stop_training = True
        done, steps = batch + 1, self.steps
        if done == 1:
            self.t_first = time.time()  # the first step includes tracing: the rate is measured after it
        if done % self.every == 0 or done == steps:
            measured = done > 1 and time.time() > self.t_first
            per_step = (time.time() - self.t_first) / (done - 1) if measured else time.time() - self.t_epoch
            # Later epochs cost what finished ones did (validation included); before any, the step rate.
            per_epoch = float(np.mean(self.epoch_seconds)) if self.epoch_seconds else steps * per_step
            remaining = (steps - done) * per_step + (self.epochs - self.epoch) * per_epoch
            self._emit(
                {
                    "type": "progress",
                    "epoch": self.epoch,
                    "epochs": self.epochs,
                    "batch": done,
                    "batches": steps,
                    "loss": float((logs or {}).get("loss", float("nan"))),
                    "eta_s": round(remaining, 1),
                    "elapsed_s": round(time.time() - self.t_start, 1),
                }
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        schedule = self.schedule
        lr = float(schedule(self.model.optimizer.iterations)) if callable(schedule) else float(schedule)
        record: dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch + 1,
            "epochs": self.epochs,
            "lr": lr,
            "seconds": round(time.time() - self.t_epoch, 2),
        }
        self.epoch_seconds.append(record["seconds"])
        record.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
        val_auc = record.get("val_auc", -math.inf)
        if val_auc > self.best_auc:
            self.best_auc = val_auc
            record["best"] = True
        saved = self.run_dir / CHECKPOINT_FILE
        if saved.exists():  # ModelCheckpoint (listed before this callback) kept this epoch's model
            saved.replace(self.run_dir / MODEL_FILE)
            record["kept"] = True
        self._emit(record)


def epoch_callbacks(
    run_dir: Path,
    steps: int,
    epochs: int,
    schedule: Any,
    hook: MetricsHook | None,
    keep: str,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    loss: Any,
) -> list[keras.callbacks.Callback]:
    """The callbacks of a run, in the order they must see each epoch's logs."""
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(run_dir / CHECKPOINT_FILE), monitor="val_auc", mode="max", save_best_only=keep == "best"
    )
    return [HeldOutFigures(val_images, val_labels, loss), checkpoint, RunLogger(run_dir, steps, epochs, schedule, hook)]
