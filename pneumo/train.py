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
from .card import ModelCard

MetricsHook = Callable[[dict[str, Any]], None]
LEAKAGE_FILE = "image_hashes.json"


def _opt(default: Any, help: str, choices: tuple[Any, ...] | None = None, minimum: float | None = None,
         maximum: float | None = None) -> Any:
    """A config field with what the CLI, the Train form and validation need to know about it."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": minimum, "max": maximum})


def field_choices(f: Any) -> tuple[Any, ...] | None:
    """The values a TrainConfig field may take, if it is a choice (the model's come from the registry)."""
    if f.name == "model":
        from .architectures import ARCHITECTURES

        return tuple(ARCHITECTURES)
    return f.metadata.get("choices")


AUGMENTATIONS = ("none", "basic", "shift")
KEEP = ("last", "best")


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as config.json next to it.

    Each field's metadata generates its CLI flag and its Train-form widget, and `validate()` checks
    its range, so a rule written here holds everywhere a run is started.
    """

    data: str = _opt("../shared/data/chest_xray/train", "labelled folder, CSV manifest or pneumoniamnist .npz")
    model: str = _opt("shift_cnn", "architecture", choices=None)
    image_size: int = _opt(0, "input side in pixels; 0: the architecture's own", minimum=0, maximum=1024)
    epochs: int = _opt(40, "passes over the training images", minimum=1, maximum=1000)
    batch_size: int = _opt(32, "images per step", minimum=1, maximum=1024)
    learning_rate: float = _opt(2e-3, "peak learning rate (AdamW, warm-up then cosine decay)", minimum=1e-7, maximum=1.0)
    weight_decay: float = _opt(1e-4, "AdamW weight decay", minimum=0.0, maximum=1.0)
    warmup_epochs: int = _opt(1, "epochs of linear warm-up", minimum=0, maximum=100)
    split: str = _opt("temporal", "how the validation images are held out", choices=("patient", "fold", "temporal", "family"))
    fold: int = _opt(0, "with --split fold: the fold held out (0-based)", minimum=0, maximum=99)
    folds: int = _opt(5, "with --split fold: how many folds partition the images", minimum=2, maximum=100)
    val_fraction: float = _opt(0.15, "share of images held out for validation", minimum=0.05, maximum=0.45)
    augmentation: str = _opt("shift", "augmentation recipe", choices=AUGMENTATIONS)
    mixup: float = _opt(0.0, "mixup Beta(α, α) parameter; 0 turns it off", minimum=0.0, maximum=2.0)
    work_resolution_augmentation: bool = _opt(
        False, "augment at the network's working resolution (shift_cnn: 112 px, 4× cheaper; off by default: in "
               "one check it cost robustness to CLAHE, see models/EXPERIMENTS.md)")
    class_weighting: bool = _opt(True, "balance the classes' weight in the loss")
    label_smoothing: float = _opt(0.05, "binary label smoothing", minimum=0.0, maximum=0.5)
    dropout: float = _opt(0.3, "dropout before the classifier", minimum=0.0, maximum=0.9)
    keep: str = _opt("last", "model kept: the last epoch, or the best validation AUC", choices=KEEP)
    weights: str = _opt("none", "initial weights for keras.applications backbones", choices=("none", "imagenet"))
    seed: int = _opt(0, "initialisation, shuffling and augmentation seed", minimum=0)
    split_seed: int | None = _opt(None, "validation split seed (default: the seed)", minimum=0)
    mixed_precision: bool = _opt(True, "float16 compute on a GPU (ignored on a CPU)")
    target_recall: float = _opt(0.98, "sensitivity the operating threshold must keep", minimum=0.5, maximum=1.0)
    max_images: int = _opt(0, "stratified subsample for quick trials; 0: all", minimum=0)
    label_review: str = _opt("", "a label-review CSV (pneumo audit-labels; verdicts keep, relabel, exclude) applied "
                                 "to the training films")
    notes: str = _opt("", "free text kept with the run")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        if "augment" in values:  # config.json files written before augmentation recipes had names
            values.setdefault("augmentation", "basic" if values.pop("augment") else "none")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first field outside its allowed values."""
        if self.fold >= self.folds:
            raise ValueError(f"fold must be below folds ({self.folds}); got {self.fold}")
        if self.label_review and not Path(self.label_review).is_file():
            raise ValueError(f"label_review: {self.label_review} is not a file")
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None:
                continue
            choices = field_choices(f)
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}; got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number; got {value}")
                if meta.get("min") is not None and value < meta["min"]:
                    raise ValueError(f"{f.name} must be at least {meta['min']}; got {value}")
                if meta.get("max") is not None and value > meta["max"]:
                    raise ValueError(f"{f.name} must be at most {meta['max']}; got {value}")
        return self

    def resolved_image_size(self) -> int:
        from .architectures import get_architecture

        return self.image_size or get_architecture(self.model).input_size

    def flags(self) -> list[str]:
        """The CLI flags that reproduce this config (fields left at their defaults are omitted)."""
        defaults = TrainConfig()
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "data" or value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            out.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
        return out


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


def cluster_workers() -> int:
    """How many workers TF_CONFIG names (1 when it is unset or malformed)."""
    import json

    try:
        return max(1, len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])))
    except (ValueError, AttributeError):
        return 1


def _worker_index() -> int:
    import json

    return int(json.loads(os.environ["TF_CONFIG"]).get("task", {}).get("index", 0))


def _fit_multi_worker(model: Any, strategy: Any, train_ds: Any, val_df: Any, size: int, config: TrainConfig,
                      steps: int, callback: Any) -> None:
    """Training under MultiWorkerMirroredStrategy with a custom loop: Keras 3's fit() cannot run under that
    strategy (keras-team/keras#20585), but its layers, optimiser and callbacks can. The run logger is
    driven by hand, so metrics, kept models and Stop behave as in a single-process run; a Stop on any
    worker stops all of them after the same step (a worker left alone would wait for the others forever)."""
    import tensorflow as tf

    from . import evaluate as E
    from . import validate as V

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded by hand
    batches = iter(strategy.experimental_distribute_dataset(train_ds.repeat().with_options(options)))
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    loss_fn = model.loss
    loss_fn.reduction = None

    @tf.function
    def step(stop: Any) -> tuple[Any, Any]:
        def replica(batch: Any, stop: Any) -> tuple[Any, Any]:
            x, y, *w = batch
            with tf.GradientTape() as tape:
                per_image = loss_fn(tf.reshape(y, [-1, 1]), model(x, training=True))
                if w:
                    per_image = per_image * tf.reshape(w[0], [-1])
                loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss, stop

        loss, stops = strategy.run(replica, args=(next(batches), stop))
        total = tf.distribute.ReduceOp.SUM
        return strategy.reduce(total, loss, axis=None), strategy.reduce(total, stops, axis=None)

    val_images = V.load_images(val_df["path"].tolist(), size)[..., None]
    y_val = val_df["label"].to_numpy()
    callback.set_model(model)
    model.stop_training = False
    for epoch in range(config.epochs):
        callback.on_epoch_begin(epoch)
        losses = []
        for i in range(steps):
            loss, stops = step(tf.constant(float(runs.stop_requested(callback.run_dir))))
            losses.append(float(loss))
            callback.on_train_batch_end(i, {"loss": float(np.mean(losses))})
            if float(stops) > 0:
                model.stop_training = True
                break
        probs = np.concatenate([np.asarray(model(val_images[j: j + 64], training=False)).ravel()
                                for j in range(0, len(val_images), 64)])
        figures = E.metrics_at(y_val, probs, 0.5)
        callback.on_epoch_end(epoch, {"loss": float(np.mean(losses)), "val_auc": figures["roc_auc"] or 0.0,
                                      "val_recall": figures["sensitivity"] or 0.0,
                                      "val_precision": figures["precision"] or 0.0,
                                      "val_loss": float(np.mean(loss_fn(y_val.reshape(-1, 1).astype(np.float32),
                                                                        probs.reshape(-1, 1))))})
        if model.stop_training:
            break


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


def _run_logger(run_dir: Path, steps: int, epochs: int, schedule: Any, hook: MetricsHook | None, keep: str = "last") -> Any:
    """The Keras callback that writes metrics.jsonl, keeps the best model and honours the STOP file."""
    import keras

    class RunLogger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.best_auc = -math.inf
            self.every = max(1, steps // 25)
            self.t_epoch = time.time()
            self.t_start = time.time()
            self.t_beat = 0.0
            self.t_first = time.time()
            self.epoch_seconds: list[float] = []
            self.epoch = 1

        def _emit(self, record: dict[str, Any]) -> None:
            runs.append_jsonl(run_dir / "metrics.jsonl", record)
            if time.time() - self.t_beat > runs.HEARTBEAT_S:
                runs.write_status(run_dir, "running", heartbeat=runs.now_iso(), phase="training")
                self.t_beat = time.time()
            if hook:
                hook(record)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t_epoch = time.time()
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if runs.stop_requested(run_dir):
                self.model.stop_training = True
            done = batch + 1
            if done == 1:
                self.t_first = time.time()  # the first step includes tracing: the rate is measured after it
            if done % self.every == 0 or done == steps:
                epoch = self.epoch
                measured = done > 1 and time.time() > self.t_first
                per_step = (time.time() - self.t_first) / (done - 1) if measured else time.time() - self.t_epoch
                # Later epochs cost what finished ones did (validation included); before any, the step rate.
                per_epoch = float(np.mean(self.epoch_seconds)) if self.epoch_seconds else steps * per_step
                remaining = (steps - done) * per_step + (epochs - epoch) * per_epoch
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
            self.epoch_seconds.append(record["seconds"])
            record.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
            val_auc = record.get("val_auc", -math.inf)
            if val_auc > self.best_auc:
                self.best_auc = val_auc
                record["best"] = True
            if keep == "last" or record.get("best"):
                _save_model(self.model, run_dir / "model.keras")
                record["kept"] = True
            self._emit(record)

    return RunLogger()


def _save_model(model: Any, path: Path) -> None:
    # Keras insists on the .keras suffix; the temporary name keeps it and the rename is atomic.
    tmp = path.with_name(f".tmp-{path.stem}.keras")
    try:
        model.save(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed save (full disk) never leaves a half file behind


def train(config: TrainConfig, run_dir: str | Path, hook: MetricsHook | None = None, overwrite: bool = False) -> ModelCard:
    """Run a training job into run_dir and return the card; status.json records how it ended.

    The config is checked and the folder claimed (see runs.claim) before any work starts.
    """
    config.validate()
    with runs.claim(run_dir, overwrite) as run_dir:
        runs.atomic_write_json(run_dir / "config.json", asdict(config))
        started = time.time()
        runs.write_status(run_dir, "running", pid=os.getpid(), started=runs.now_iso(), error=None,
                          heartbeat=runs.now_iso(), phase="reading data")
        try:
            card = _train(config, run_dir, hook, started)
        except BaseException as exc:
            try:
                runs.write_status(
                    run_dir, "failed", ended=runs.now_iso(), error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=8),
                )
            except OSError:
                pass  # a full disk or read-only folder: read_status reports the dead pid as failed
            raise
        state = "stopped" if runs.stop_requested(run_dir) else "finished"
        runs.write_status(run_dir, state, ended=runs.now_iso(), seconds=round(time.time() - started, 1), phase="done")
    return card


def _train(config: TrainConfig, run_dir: Path, hook: MetricsHook | None, started: float) -> ModelCard:
    import warnings

    import keras
    import tensorflow as tf

    from . import data as D
    from . import pipeline as P
    from . import validate as V
    from .architectures import build_model, get_architecture
    from .models import load_model

    # Our datasets are shuffled by tf.data and have unknown length (unreadable files are skipped):
    # Keras warns about both on every run.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*was passed")
    warnings.filterwarnings("ignore", message="Your input ran out of data")

    arch = get_architecture(config.model)
    size = config.resolved_image_size()
    workers = cluster_workers()
    # Several workers in TF_CONFIG: MultiWorkerMirroredStrategy, created before any other TensorFlow work.
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else None
    worker = _worker_index() if workers > 1 else 0
    keras.utils.set_random_seed(config.seed)
    device = detect_device()
    runs.write_status(run_dir, "running", device=device.describe(), workers=workers, worker_index=worker)
    if device.kind == "GPU" and config.mixed_precision and workers == 1:
        keras.mixed_precision.set_global_policy("mixed_float16")

    dataset = D.scan(config.data)
    frame = _subsample(dataset.frame[dataset.frame["split"] != "test"], config.max_images, config.seed)
    review_counts = None
    if config.label_review:
        from .audit import apply_review

        frame, review_counts = apply_review(frame, config.label_review)
    present = set(frame["label"])
    if present != {0, 1}:
        missing = [D.CLASS_NAMES[c] for c in (0, 1) if c not in present]
        raise D.DatasetError(f"{config.data}: training needs both classes; no {', '.join(missing)} images found")

    def phase(name: str, done: int = 0, total: int = 0) -> None:
        runs.write_status(run_dir, "running", phase=name, phase_done=done, phase_total=total, heartbeat=runs.now_iso())

    phase("checking images for duplicates", 0, len(frame))
    last = [0.0]

    def inspect_progress(done: int, total: int) -> None:
        if time.time() - last[0] > 2 or done == total:
            phase("checking images for duplicates", done, total)
            last[0] = time.time()

    stats = D.inspect_images(frame["path"], progress=inspect_progress)
    unreadable = int(stats["error"].notna().sum())
    # Unreadable files are left out here, once: tf.data would skip them, but the checks after training
    # read every held-out film and must not fail on one.
    frame = frame[frame["path"].isin(stats.loc[stats["error"].isna(), "path"])].reset_index(drop=True)
    dups = D.duplicate_groups(stats)
    phase("building the model")
    split_seed = config.seed if config.split_seed is None else config.split_seed
    train_df, val_df = V.holdout(frame, config.split, config.val_fraction, split_seed, dups, config.fold, config.folds)
    weights = D.class_weights(train_df["label"].to_numpy()) if config.class_weighting else None
    # Each worker reads its own share of the training images; every step averages all workers' gradients.
    shard = train_df.iloc[worker::workers] if workers > 1 else train_df
    train_ds = P.make_dataset(shard, size, config.batch_size, training=True,
                              augmentation=P.Augmentation.preset(config.augmentation), seed=config.seed,
                              class_weights=weights, mixup=config.mixup,
                              augment_size=arch.augmentation_size(size) if config.work_resolution_augmentation else None)
    val_ds = P.make_dataset(val_df, size, config.batch_size)
    steps = math.ceil(len(train_df) / (config.batch_size * workers))
    warmup = min(config.warmup_epochs * steps, max(config.epochs * steps - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=max(config.epochs * steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.02,
    )

    if strategy is None:
        strategy = tf.distribute.MirroredStrategy() if len(device.names) > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config.model, size, None if config.weights == "none" else config.weights, config.dropout)
        compile_for_training(model, config, schedule)
    summary = {
        "images": int(len(frame)),
        "train_images": int(len(train_df)),
        "val_images": int(len(val_df)),
        "train_counts": {c: int((train_df["class_name"] == c).sum()) for c in D.CLASS_NAMES},
        "val_counts": {c: int((val_df["class_name"] == c).sum()) for c in D.CLASS_NAMES},
        "train_patients": int(train_df["patient_id"].nunique()),
        "val_patients": int(val_df["patient_id"].nunique()),
        "duplicate_groups": len(dups),
        "unreadable_left_out": unreadable,
        "file_list_sha256_16": D.file_list_hash(frame),
        "split": V.describe_holdout(config.split, frame, config.fold, config.folds),
        "fold": config.fold if config.split == "fold" else None,
        "label_review": {"file": config.label_review, **review_counts} if review_counts else None,
        "class_weights": {D.CLASS_NAMES[k]: round(v, 4) for k, v in (weights or {}).items()},
        "workers": workers,
        "worker_index": worker,
        "worker_train_images": int(len(shard)),
    }
    runs.atomic_write_json(run_dir / "data_summary.json", summary)
    # Content hashes of every image the model learned from or was checked on: the app warns when a
    # folder it is asked to tune a threshold on overlaps them.
    hash_of = dict(zip(stats["path"], stats["hash"]))
    runs.atomic_write_json(run_dir / LEAKAGE_FILE, {
        "train": sorted({hash_of[p] for p in train_df["path"] if isinstance(hash_of.get(p), str)}),
        "validation": sorted({hash_of[p] for p in val_df["path"] if isinstance(hash_of.get(p), str)}),
    })
    callback = _run_logger(run_dir, steps, config.epochs, schedule, hook, config.keep)
    phase("tracing the first training step")
    if workers > 1:
        _fit_multi_worker(model, strategy, train_ds, val_df, size, config, steps, callback)
    else:
        model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=[callback], verbose=0)
    if not (run_dir / "model.keras").exists():  # stopped before the first epoch ended
        _save_model(model, run_dir / "model.keras")
    if worker > 0:
        # The chief (worker 0) checks the model and writes its card; this worker's folder keeps its metrics
        # and its copy of the same weights.
        return ModelCard.default(run_dir.name)

    phase("checking the model on held-out and stressed images")
    best = load_model(run_dir / "model.keras")
    beat = lambda done, total: phase("checking the model on held-out and stressed images", done, total)  # noqa: E731
    history = runs.epochs_of(runs.read_metrics(run_dir))
    runs.atomic_write_json(run_dir / "history.json", history)
    card = finish_run(
        run_dir, best, val_df, config.target_recall,
        architecture=config.model, description=arch.description, preprocessing=arch.preprocessing,
        gradcam_layer=arch.gradcam_layer,
        training_data={"path": str(config.data), "layout": dataset.layout, **summary},
        validation_kind=config.split,
        training={"best_epoch": next((h["epoch"] for h in reversed(history) if h.get("kept")), None),
                  "epochs_run": len(history), "seconds": round(time.time() - started, 1), "device": device.describe(),
                  "library_versions": library_versions(), "config": asdict(config),
                  "command": _command(config, run_dir)},
        attribution=D.KERMANY_ATTRIBUTION if D.looks_like_kermany(frame) else "",
        progress=beat,
    )
    return card


def compile_for_training(model: Any, config: TrainConfig, learning_rate: Any, jit_compile: bool | str = "auto") -> None:
    """The optimiser, loss and metrics every run trains with (the benchmark times this same step).

    jit_compile "auto" is Keras' choice, XLA off on a CPU: bench/ measures XLA beside it on each run.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc", num_thresholds=500),
            keras.metrics.Recall(name="recall"),
            keras.metrics.Precision(name="precision"),
        ],
        jit_compile=jit_compile,
    )


def finish_run(
    run_dir: Path, loaded: Any, val_df: Any, target_recall: float, *, architecture: str, description: str,
    preprocessing: str, gradcam_layer: str | None, training_data: dict[str, Any], validation_kind: str,
    training: dict[str, Any], attribution: str, progress: Callable[[int, int], None] | None = None,
) -> ModelCard:
    """Check a trained model on its held-out images and write val_predictions.csv, checks.json and its
    card: the one place a card is built, for single runs and ensembles alike."""
    from . import validate as V

    loaded.card.gradcam_layer = gradcam_layer  # the card is written below; the checks need its layer now
    serving = _export_for_serving(loaded)  # before the checks, so they measure the engine that will serve
    images = V.load_images(val_df["path"].tolist(), loaded.input_size)
    checks = shift_checks(loaded, val_df, images, target_recall, progress=progress)
    predicted = val_df.assign(probability=checks.pop("clean_probabilities"))
    predicted[["path", "label", "probability", "patient_id"]].to_csv(run_dir / "val_predictions.csv", index=False)
    runs.atomic_write_json(run_dir / "checks.json", checks)
    if progress:
        progress(len(V.STRESS) + 1, len(V.STRESS) + 2)  # a heartbeat between the stages
    input_check = _fit_input_check(loaded, images, run_dir)
    card = ModelCard(
        name=run_dir.name,
        architecture=architecture,
        threshold=checks["threshold"],
        threshold_rule=checks["threshold_rule"],
        input_size=loaded.input_size,
        gradcam_layer=gradcam_layer,
        description=description,
        preprocessing=preprocessing,
        parameters=int(loaded.model.count_params()),
        training_data=training_data,
        validation={"kind": validation_kind, "split": training_data.get("split", ""),
                    "predictions": "val_predictions.csv", **checks["clean"]},
        shift_checks={"stress": checks["stress"], "bootstrap_95": checks["bootstrap_95"]},
        training=training,
        data_attribution=attribution,
        created=runs.now_iso(),
        extra={"input_check": input_check, "serving": serving, "explanation": checks["explanation"],
               "input": "single-channel grayscale, float32 in [0, 1], resized to input_size × input_size (area)",
               "output": "sigmoid probability of PNEUMONIA"},
    )
    card.write(run_dir / "card.json")
    return card


def _export_for_serving(loaded: Any) -> dict[str, Any]:
    """Export model.onnx beside the saved model and serve it from there; TensorFlow when export fails."""
    from .engine import ExportError, export_onnx, open_onnx
    from .explain import cam_functions

    try:
        layer = loaded.gradcam_layer
        export_onnx(loaded.model, loaded.path, layer, cam_functions(loaded.model, layer) if layer else None)
    except ExportError as exc:
        return {"engine": loaded.engine_name, "onnx_export": str(exc)}
    loaded.engine = open_onnx(loaded.path)
    return {"engine": loaded.engine_name, "onnx_export": "model.onnx"}


def _fit_input_check(loaded: Any, images: np.ndarray, run_dir: Path) -> dict[str, Any]:
    """Fit the wrong-input check on the held-out films' features and save it beside the model."""
    from . import quality

    try:
        density = quality.fit(quality.features(loaded, images))
    except ValueError as exc:
        return {"available": False, "reason": str(exc)}
    density.save(run_dir / quality.FILE_NAME)
    return {"available": True, "alarm_distance": density.alarm, "false_alarm_rate_on_held_out": density.false_alarm_rate,
            "fit_images": density.n_fit, "calibration_images": density.n_calibrate,
            "warned_share": quality.detection_rates(loaded, images, density)}


def shift_checks(loaded: Any, val_df: Any, images: np.ndarray, target_recall: float, explain_limit: int = 48,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Threshold, clean figures, stress suite, bootstrap spread and explanation trust on held-out images.

    The threshold is the highest one that keeps `target_recall` pooled over the clean held-out films and
    every stressed copy of them, so that it still holds under acquisition shift.
    """
    from . import evaluate as E
    from . import validate as V

    labels = val_df["label"].to_numpy()
    probs = V.stressed_probabilities(loaded, images, progress=progress)
    threshold = V.robust_threshold(labels, probs, target_recall)
    stress = V.stress_report(labels, probs, threshold)
    return {
        "threshold": threshold,
        "threshold_rule": f"highest threshold with sensitivity >= {target_recall} pooled over the held-out images "
                          f"and {len(V.STRESS)} stressed copies of them",
        "clean": E.metrics_at(labels, probs["clean"], threshold),
        "clean_probabilities": probs["clean"].tolist(),
        "bootstrap_95": V.bootstrap(labels, probs["clean"], val_df["patient_id"].to_numpy(), threshold),
        "stress": {k: v for k, v in stress.to_dict().items() if k != "probabilities"},
        "explanation": V.explanation_faithfulness(loaded, images, threshold, limit=explain_limit),
    }


def _command(config: TrainConfig, run_dir: Path) -> str:
    return " ".join(["python -m pneumo train", f"--data {config.data}", *config.flags(), f"--out {run_dir}"])


def ensemble(run_dirs: list[str | Path], out_dir: str | Path, target_recall: float = 0.98, overwrite: bool = False) -> ModelCard:
    """Average the probabilities of several runs trained on one validation split into one model.

    The members must share their validation images (same data and split), so the ensemble's threshold
    and checks still come from images none of its members trained on. out_dir is claimed like a run
    folder (new, or an ended run replaced with overwrite=True).
    """
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    if Path(out_dir).resolve() in {r.resolve() for r in run_dirs}:
        raise ValueError(f"{out_dir}: the ensemble cannot be written into one of its members")
    for r in run_dirs:  # checked before the output folder is claimed: a refused request creates nothing
        for name in ("model.keras", "val_predictions.csv"):
            if not (r / name).is_file():
                raise ValueError(f"{r}: not a finished run (no {name})")
    with runs.claim(out_dir, overwrite) as out:
        runs.write_status(out, "running", pid=os.getpid(), started=runs.now_iso(), heartbeat=runs.now_iso())
        card = _ensemble(run_dirs, out, target_recall)
        runs.write_status(out, "finished", ended=runs.now_iso())
    return card


def average_model(networks: list[Any]) -> Any:
    """One Keras model whose output is the mean probability of `networks` (same input size), each
    nested under the name member1, member2, … in the order given."""
    import keras

    sizes = {int(n.input_shape[1]) for n in networks}
    if len(sizes) != 1:
        raise ValueError(f"members have different input sizes {sorted(sizes)}")
    size = sizes.pop()
    inp = keras.Input((size, size, 1), name="xray")
    outputs = []
    for i, network in enumerate(networks):
        network.name = f"member{i + 1}"  # nested models need distinct names
        outputs.append(network(inp))
    return keras.Model(inp, keras.layers.Average(name="mean_probability")(outputs), name="ensemble")


def _ensemble(run_dirs: list[Path], out_dir: Path, target_recall: float) -> ModelCard:
    import pandas as pd

    from .models import load_model

    members = [load_model(r / "model.keras") for r in run_dirs]
    vals = [pd.read_csv(r / "val_predictions.csv") for r in run_dirs]
    if any(set(v["path"]) != set(vals[0]["path"]) for v in vals[1:]):
        raise ValueError("the runs do not share one validation split; train them with the same --split and --split-seed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_model(average_model([m.model for m in members]), out_dir / "model.keras")
    # Members share one split, so any member's record of its images is the ensemble's.
    hashes = next((h for h in (runs.read_json(r / LEAKAGE_FILE) for r in run_dirs) if h), None)
    if hashes:
        runs.atomic_write_json(out_dir / LEAKAGE_FILE, hashes)
    histories = {r.name: runs.read_json(r / "history.json", []) for r in run_dirs}
    runs.atomic_write_json(out_dir / "history.json", histories)
    cards = [m.card for m in members]
    first = cards[0]
    configs = [c.training.get("config") or c.extra.get("config") or {} for c in cards]
    recipes = [f"{c.architecture} ({cfg.get('augmentation', 'basic' if cfg.get('augment') else 'none')} augmentation, "
               f"seed {cfg.get('seed')})" for c, cfg in zip(cards, configs)]
    return finish_run(
        out_dir, load_model(out_dir / "model.keras"), vals[0][["path", "label", "patient_id"]], target_recall,
        architecture=f"ensemble of {len(members)} × {first.architecture}" if len({c.architecture for c in cards}) == 1
        else "ensemble of " + " + ".join(c.architecture for c in cards),
        description=f"Mean probability of {len(members)} models trained on one held-out split: " + "; ".join(recipes) + ".",
        preprocessing=first.preprocessing,
        gradcam_layer=first.gradcam_layer,
        training_data=first.training_data,
        validation_kind=str(first.validation.get("kind") or runs.read_json(run_dirs[0] / "config.json", {}).get("split")
                            or "patient"),
        training={
            "members": [{"run": r.name, "recipe": recipe, "val_roc_auc": c.validation.get("roc_auc")}
                        for r, c, recipe in zip(run_dirs, cards, recipes)],
            "seconds": round(sum(c.training.get("seconds", c.extra.get("training_seconds", 0.0)) for c in cards), 1),
            "device": first.training.get("device"),
            "library_versions": library_versions(),
            "config": configs[0],
            "command": " && ".join(c.training.get("command", "") for c in cards)
            + f" && python -m pneumo ensemble {' '.join(str(r) for r in run_dirs)} --out {out_dir}",
            "gradcam_note": "Grad-CAM is taken on the first member's feature map.",
        },
        attribution=first.data_attribution,
    )
