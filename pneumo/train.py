"""Train a model into a run directory: config, live metrics, status, best model, card, validation predictions."""

from __future__ import annotations

import math
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import runs

MetricsHook = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as config.json next to it."""

    data: str = "../shared/data/chest_xray/train"
    model: str = "compact_cnn"
    image_size: int = 0  # 0: the architecture's own input size
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    val_fraction: float = 0.15
    augment: bool = True
    class_weighting: bool = True
    label_smoothing: float = 0.05
    dropout: float = 0.3
    weights: str = "none"  # "imagenet" for keras.applications backbones when the file can be obtained
    seed: int = 0
    split_seed: int | None = None  # None: same as seed; fix it to train several models on one validation split
    mixed_precision: bool = True  # used only on a GPU
    target_recall: float = 0.98
    max_images: int = 0  # 0: all; otherwise a stratified subsample, for quick trials
    notes: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def resolved_image_size(self) -> int:
        from .models import get_architecture

        return self.image_size or get_architecture(self.model).input_size


@dataclass
class DeviceInfo:
    kind: str  # "GPU" or "CPU"
    names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{len(self.names)}× GPU ({', '.join(self.names)})" if self.kind == "GPU" else f"CPU ({platform.processor() or platform.machine()})"


def detect_device() -> DeviceInfo:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return DeviceInfo("CPU")
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:
            names.append(gpu.name)
    return DeviceInfo("GPU", names)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "numpy", "scikit-learn", "tf-keras-vis", "opencv-python-headless", "pydicom"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _subsample(frame: Any, n: int, seed: int) -> Any:
    if not n or n >= len(frame):
        return frame
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(frame, train_size=n, stratify=frame["label"], random_state=seed)
    return keep.sort_index()


def _run_logger(run_dir: Path, steps: int, epochs: int, schedule: Any, hook: MetricsHook | None) -> Any:
    """The Keras callback that writes metrics.jsonl, keeps the best model and honours the STOP file."""
    import keras

    class RunLogger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best_auc = -math.inf
            self.every = max(1, steps // 25)
            self.t_epoch = time.time()
            self.t_start = time.time()
            self.epoch = 1

        def _emit(self, record: dict[str, Any]) -> None:
            runs.append_jsonl(run_dir / "metrics.jsonl", record)
            if hook:
                hook(record)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t_epoch = time.time()
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if runs.stop_requested(run_dir):
                self.model.stop_training = True
            done = batch + 1
            if done % self.every == 0 or done == steps:
                elapsed = time.time() - self.t_epoch
                epoch = self.epoch
                per_step = elapsed / done
                remaining = (steps - done) * per_step + (epochs - epoch) * steps * per_step
                self._emit({
                    "type": "progress", "epoch": epoch, "epochs": epochs, "batch": done, "batches": steps,
                    "loss": float((logs or {}).get("loss", float("nan"))), "eta_s": round(remaining, 1),
                    "elapsed_s": round(time.time() - self.t_start, 1),
                })

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = dict(logs or {})
            lr = float(schedule(self.model.optimizer.iterations)) if callable(schedule) else float(schedule)
            record = {"type": "epoch", "epoch": epoch + 1, "epochs": epochs, "lr": lr,
                      "seconds": round(time.time() - self.t_epoch, 2)}
            record.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
            val_auc = record.get("val_auc", -math.inf)
            if val_auc > self.best_auc:
                self.best_auc = val_auc
                _save_model(self.model, run_dir / "model.keras")
                record["best"] = True
            self._emit(record)

    return RunLogger()


def _save_model(model: Any, path: Path) -> None:
    # Keras insists on the .keras suffix; the temporary name keeps it and the rename is atomic.
    tmp = path.with_name(f".tmp-{path.stem}.keras")
    model.save(tmp)
    tmp.replace(path)


def train(config: TrainConfig, run_dir: str | Path, hook: MetricsHook | None = None) -> dict[str, Any]:
    """Run a training job into run_dir and return the card; status.json records how it ended."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(run_dir / "config.json", asdict(config))
    started = time.time()
    runs.write_status(run_dir, "running", pid=os.getpid(), started=runs.now_iso(), error=None)
    try:
        card = _train(config, run_dir, hook, started)
    except BaseException as exc:
        runs.write_status(
            run_dir, "failed", ended=runs.now_iso(), error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8),
        )
        raise
    state = "stopped" if runs.stop_requested(run_dir) else "finished"
    runs.write_status(run_dir, state, ended=runs.now_iso(), seconds=round(time.time() - started, 1))
    return card


def _train(config: TrainConfig, run_dir: Path, hook: MetricsHook | None, started: float) -> dict[str, Any]:
    import warnings

    import keras
    import tensorflow as tf

    from . import data as D
    from . import evaluate as E
    from .models import build_model, get_architecture, load_model

    # Our datasets are shuffled by tf.data and have unknown length (unreadable files are skipped):
    # Keras warns about both on every run.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed")
    warnings.filterwarnings("ignore", message="Your input ran out of data")

    arch = get_architecture(config.model)
    size = config.resolved_image_size()
    keras.utils.set_random_seed(config.seed)
    device = detect_device()
    runs.write_status(run_dir, "running", device=device.describe())
    if device.kind == "GPU" and config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    dataset = D.scan(config.data)
    frame = _subsample(dataset.frame[dataset.frame["split"] != "test"], config.max_images, config.seed)
    dups = D.duplicate_groups(D.inspect_images(frame["path"]))
    split_seed = config.seed if config.split_seed is None else config.split_seed
    train_df, val_df = D.split(frame, config.val_fraction, split_seed, dups)
    aug = D.Augmentation() if config.augment else None
    train_ds = D.make_dataset(train_df, size, config.batch_size, training=True, augmentation=aug, seed=config.seed)
    val_ds = D.make_dataset(val_df, size, config.batch_size)
    steps = math.ceil(len(train_df) / config.batch_size)
    warmup = min(config.warmup_epochs * steps, max(config.epochs * steps - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=max(config.epochs * steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.02,
    )

    strategy = tf.distribute.MirroredStrategy() if len(device.names) > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config.model, size, None if config.weights == "none" else config.weights, config.dropout)
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay),
            loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
            metrics=[
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(name="auc", num_thresholds=500),
                keras.metrics.Recall(name="recall"),
                keras.metrics.Precision(name="precision"),
            ],
        )
    weights = D.class_weights(train_df["label"].to_numpy()) if config.class_weighting else None
    summary = {
        "images": int(len(frame)),
        "train_images": int(len(train_df)),
        "val_images": int(len(val_df)),
        "train_counts": {c: int((train_df["class_name"] == c).sum()) for c in D.CLASS_NAMES},
        "val_counts": {c: int((val_df["class_name"] == c).sum()) for c in D.CLASS_NAMES},
        "train_patients": int(train_df["patient_id"].nunique()),
        "val_patients": int(val_df["patient_id"].nunique()),
        "duplicate_groups": len(dups),
        "file_list_sha256_16": D.file_list_hash(frame),
        "split": "stratified by class, grouped by patient and exact-duplicate group (StratifiedGroupKFold)",
        "class_weights": {D.CLASS_NAMES[k]: round(v, 4) for k, v in (weights or {}).items()},
    }
    runs.atomic_write_json(run_dir / "data_summary.json", summary)
    callback = _run_logger(run_dir, steps, config.epochs, schedule, hook)
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, class_weight=weights, callbacks=[callback], verbose=0)
    if not (run_dir / "model.keras").exists():  # stopped before the first epoch ended
        _save_model(model, run_dir / "model.keras")

    best = load_model(run_dir / "model.keras")
    predicted = E.predict_frame(best, val_df)
    predicted[["path", "label", "probability", "patient_id"]].to_csv(run_dir / "val_predictions.csv", index=False)
    ok = predicted[predicted["probability"].notna()]
    threshold = E.threshold_for_recall(ok["label"], ok["probability"], config.target_recall)
    history = runs.epochs_of(runs.read_metrics(run_dir))
    runs.atomic_write_json(run_dir / "history.json", history)
    card = {
        "name": run_dir.name,
        "architecture": config.model,
        "description": arch.description,
        "input_size": size,
        "input": "single-channel grayscale, float32 in [0, 1], resized to input_size × input_size (area)",
        "preprocessing": arch.preprocessing,
        "gradcam_layer": arch.gradcam_layer,
        "class_names": list(D.CLASS_NAMES),
        "output": "sigmoid probability of PNEUMONIA",
        "parameters": int(best.model.count_params()),
        "training_data": {"path": str(config.data), "layout": dataset.layout, **summary},
        "validation_metrics": E.metrics_at(ok["label"], ok["probability"], threshold),
        "threshold": threshold,
        "threshold_rule": f"highest threshold with validation sensitivity >= {config.target_recall}",
        "best_epoch": next((h["epoch"] for h in reversed(history) if h.get("best")), None),
        "epochs_run": len(history),
        "training_seconds": round(time.time() - started, 1),
        "device": device.describe(),
        "library_versions": library_versions(),
        "config": asdict(config),
        "command": _command(config, run_dir),
        "data_attribution": D.KERMANY_ATTRIBUTION if D.looks_like_kermany(frame) else "",
        "created": runs.now_iso(),
    }
    runs.atomic_write_json(run_dir / "card.json", card)
    return card


def _command(config: TrainConfig, run_dir: Path) -> str:
    defaults = TrainConfig()
    parts = ["python -m pneumo train", f"--data {config.data}"]
    flags = {"model": "--model", "epochs": "--epochs", "image_size": "--image-size", "batch_size": "--batch-size",
             "val_fraction": "--val-fraction", "seed": "--seed", "split_seed": "--split-seed",
             "learning_rate": "--learning-rate"}
    for key, flag in flags.items():
        if getattr(config, key) != getattr(defaults, key):
            parts.append(f"{flag} {getattr(config, key)}")
    parts.append(f"--out {run_dir}")
    return " ".join(parts)


def ensemble(run_dirs: list[str | Path], out_dir: str | Path, target_recall: float = 0.98) -> dict[str, Any]:
    """Average the probabilities of several runs trained on one validation split into one model.

    The members must share their validation images (same data and split seed), so the ensemble's
    threshold and figures still come from images none of its members trained on.
    """
    import keras
    import pandas as pd

    from . import evaluate as E
    from .models import load_model

    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    members = [load_model(r / "model.keras") for r in run_dirs]
    vals = [pd.read_csv(r / "val_predictions.csv") for r in run_dirs]
    if any(set(v["path"]) != set(vals[0]["path"]) for v in vals[1:]):
        raise ValueError("the runs do not share one validation split; train them with the same --split-seed")
    sizes = {m.input_size for m in members}
    if len(sizes) != 1:
        raise ValueError(f"members have different input sizes {sorted(sizes)}")
    size = sizes.pop()
    inp = keras.Input((size, size, 1), name="xray")
    outputs = []
    for i, member in enumerate(members):
        member.model.name = f"member{i + 1}"  # nested models need distinct names
        outputs.append(member.model(inp))
    model = keras.Model(inp, keras.layers.Average(name="mean_probability")(outputs), name="ensemble")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model(model, out_dir / "model.keras")

    loaded = load_model(out_dir / "model.keras")
    val = vals[0][["path", "label", "patient_id"]]
    predicted = E.predict_frame(loaded, val)
    predicted[["path", "label", "probability", "patient_id"]].to_csv(out_dir / "val_predictions.csv", index=False)
    threshold = E.threshold_for_recall(predicted["label"], predicted["probability"], target_recall)
    cards = [m.card for m in members]
    first = cards[0]
    histories = {r.name: runs.read_json(r / "history.json", []) for r in run_dirs}
    runs.atomic_write_json(out_dir / "history.json", histories)
    card = {
        **{k: first.get(k) for k in ("input", "preprocessing", "class_names", "output", "training_data", "data_attribution")},
        "name": out_dir.name,
        "architecture": f"ensemble of {len(members)} × {first.get('architecture')}",
        "description": f"Mean probability of {len(members)} {first.get('architecture')} models trained with different "
                       "initialisation and augmentation seeds on one patient-level split.",
        "members": [{"run": r.name, "seed": c.get("config", {}).get("seed"), "best_epoch": c.get("best_epoch"),
                     "val_roc_auc": c.get("validation_metrics", {}).get("roc_auc")} for r, c in zip(run_dirs, cards)],
        "input_size": size,
        "gradcam_layer": first.get("gradcam_layer"),
        "gradcam_note": "Grad-CAM is taken on the first member's feature map.",
        "parameters": int(model.count_params()),
        "validation_metrics": E.metrics_at(predicted["label"], predicted["probability"], threshold),
        "threshold": threshold,
        "threshold_rule": f"highest threshold with validation sensitivity >= {target_recall}",
        "training_seconds": round(sum(c.get("training_seconds", 0.0) for c in cards), 1),
        "device": first.get("device"),
        "library_versions": library_versions(),
        "config": first.get("config"),
        "command": " && ".join(c.get("command", "") for c in cards)
        + f" && python -m pneumo ensemble {' '.join(str(r) for r in run_dirs)} --out {out_dir}",
        "created": runs.now_iso(),
    }
    runs.atomic_write_json(out_dir / "card.json", card)
    return card
