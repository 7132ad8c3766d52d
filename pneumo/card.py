"""The model card: what a model is, how its operating point was chosen, and what is known of it.

One type, built in one place for single runs and ensembles, read and validated on load. Its sections
keep apart what was measured where: ``validation`` (the run's own held-out split, named by kind),
``shift_checks`` (stress suite, bootstrap spread, other held-out populations), ``explanation_trust``
and ``external_evaluations`` (labelled collections evaluated later with ``evaluate --record``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CLASS_NAMES = ("NORMAL", "PNEUMONIA")


class CardError(ValueError):
    """A card that cannot be used for inference; the message names the card and the problem."""


def check_threshold(value: Any, where: str) -> float:
    """A threshold as a float in [0, 1], or CardError naming where it came from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CardError(f"{where}: threshold must be a number in [0, 1], got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise CardError(f"{where}: threshold must be a number in [0, 1], got {value}")
    return float(value)


@dataclass
class ModelCard:
    name: str
    architecture: str
    threshold: float
    threshold_rule: str = "not recorded"
    input_size: int | None = None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    gradcam_layer: str | None = None
    description: str = ""
    preprocessing: str = ""
    parameters: int | None = None
    training_data: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    shift_checks: dict[str, Any] = field(default_factory=dict)
    explanation_trust: dict[str, Any] = field(default_factory=dict)
    external_evaluations: list[dict[str, Any]] = field(default_factory=list)
    threshold_history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    data_attribution: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, name: str) -> "ModelCard":
        return cls(name=name, architecture="unknown", threshold=0.5, threshold_rule="no card: default 0.5")

    @classmethod
    def from_dict(cls, obj: Any, where: str = "card") -> "ModelCard":
        if not isinstance(obj, dict):
            raise CardError(f"{where}: a card must be a JSON object, got {type(obj).__name__}")
        values = dict(obj)
        if "validation_metrics" in values and "validation" not in values:  # cards written before sections
            values["validation"] = values.pop("validation_metrics")
        if "threshold" not in values:
            raise CardError(f"{where}: no threshold; inference needs the operating threshold")
        values["threshold"] = check_threshold(values["threshold"], where)
        names = values.get("class_names", list(CLASS_NAMES))
        if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) for n in names)):
            raise CardError(f"{where}: class_names must be two names, got {names!r}")
        size = values.get("input_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise CardError(f"{where}: input_size must be a positive integer, got {size!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {**values.pop("extra", {}), **{k: values.pop(k) for k in list(values) if k not in known}}
        for key, kind in (("training_data", dict), ("validation", dict), ("shift_checks", dict),
                          ("explanation_trust", dict), ("external_evaluations", list), ("threshold_history", list),
                          ("training", dict)):
            if key in values and not isinstance(values[key], kind):
                raise CardError(f"{where}: {key} must be a JSON {'object' if kind is dict else 'array'}")
        values.setdefault("name", Path(where).parent.name or "model")
        values.setdefault("architecture", "unknown")
        for key in ("name", "architecture", "threshold_rule", "description", "preprocessing", "data_attribution",
                    "created"):
            if key in values and values[key] is not None:
                values[key] = str(values[key])
            elif key in values:
                values.pop(key)
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        """The card at path; CardError when it is unreadable or unusable."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except OSError as exc:
            raise CardError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise CardError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(obj, str(path))

    def write(self, path: str | Path) -> None:
        from .runs import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @property
    def validation_kind(self) -> str:
        return str(self.validation.get("kind", "patient"))

    @property
    def in_distribution(self) -> bool:
        """True when the validation images were a random patient draw of the training collection."""
        return self.validation_kind == "patient"
