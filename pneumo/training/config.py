"""What decides a training run and where it runs: TrainConfig (each field's flag, widget and range), the device,
the TF_CONFIG cluster, the library versions a card records."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pneumo.data.anatomy import FRAMINGS
from pneumo.model.architectures import ARCHITECTURES, get_architecture

# TensorFlow is imported where used: the CLI imports this module at start, through pneumo.training.job.

MetricsHook = Callable[[dict[str, Any]], None]  # called with each metrics.jsonl record as it is written


def _opt(
    default: Any,
    help: str,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A config field with what the CLI, the Train form and validation need to know about it."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": minimum, "max": maximum})


def field_choices(f: Any) -> tuple[Any, ...] | None:
    """The values a TrainConfig field may take, if it is a choice (the model's come from the registry)."""
    if f.name == "model":
        return tuple(ARCHITECTURES)
    return f.metadata.get("choices")


def _check_type(name: str, value: Any, annotation: str) -> None:
    """ValueError unless value has a type the field's annotation allows ("int", "float", "str", "bool",
    "int | None"): a config.json is user input, and a number given as text must be refused here, not fail
    deep inside training. An int passes for a float; a bool passes for neither."""
    allowed = {part.strip() for part in annotation.split("|")}
    if value is None and "None" in allowed:
        return
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }
    if not any(ok.get(kind, False) for kind in allowed):
        wanted = " or ".join(sorted(allowed - {"None"}))
        raise ValueError(f"{name} must be {wanted}; got {type(value).__name__} {str(value)[:40]!r}")


AUGMENTATIONS = ("none", "basic", "shift", "frame", "frame_mirror")
# What a config.json written before a key existed meant by leaving it out.
WRITTEN_BEFORE = {"framing": "none"}
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
    batch_size: int = _opt(
        32, "images per step (over TF_CONFIG workers: all of theirs together)", minimum=1, maximum=1024
    )
    learning_rate: float = _opt(
        2e-3, "peak learning rate (AdamW, warm-up then cosine decay)", minimum=1e-7, maximum=1.0
    )
    weight_decay: float = _opt(1e-4, "AdamW weight decay", minimum=0.0, maximum=1.0)
    warmup_epochs: int = _opt(1, "epochs of linear warm-up", minimum=0, maximum=100)
    split: str = _opt(
        "temporal", "how the validation images are held out", choices=("patient", "fold", "temporal", "family")
    )
    fold: int = _opt(0, "with --split fold: the fold held out (0-based)", minimum=0, maximum=99)
    folds: int = _opt(5, "with --split fold: how many folds partition the images", minimum=2, maximum=100)
    val_fraction: float = _opt(0.15, "share of images held out for validation", minimum=0.05, maximum=0.45)
    augmentation: str = _opt("shift", "augmentation recipe", choices=AUGMENTATIONS)
    framing: str = _opt(
        "none",
        "canonical framing before the network, in training and serving alike: none, or lungs (each film cropped "
        "to its lung field, found by image analysis)",
        choices=FRAMINGS,
    )
    mixup: float = _opt(0.0, "mixup Beta(α, α) parameter; 0 turns it off", minimum=0.0, maximum=2.0)
    work_resolution_augmentation: bool = _opt(
        False,
        "augment at the network's working resolution (shift_cnn: 112 px, 4× cheaper; off by default: in "
        "one check it cost robustness to CLAHE, see models/EXPERIMENTS.md)",
    )
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
    label_review: str = _opt(
        "", "a label-review CSV (pneumo audit-labels; verdicts keep, relabel, exclude) applied to the training films"
    )
    notes: str = _opt("", "free text kept with the run")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        values = dict(values)
        if "augment" in values:  # config.json files written before augmentation recipes had names
            values.setdefault("augmentation", "basic" if values.pop("augment") else "none")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first field of the wrong type or outside its allowed values."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), str(f.type))
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
        return (
            f"{len(self.names)}× GPU ({', '.join(self.names)})"
            if self.kind == "GPU"
            else f"CPU ({platform.processor() or platform.machine()})"
        )


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
    try:
        return max(1, len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])))
    except (ValueError, AttributeError):
        return 1


def worker_index() -> int:
    """This process's place in the TF_CONFIG cluster (0, the chief, when there is none)."""
    if cluster_workers() == 1:
        return 0
    return int(json.loads(os.environ["TF_CONFIG"]).get("task", {}).get("index", 0))


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "numpy", "scikit-learn", "tf-keras-vis", "opencv-python-headless", "pydicom"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
