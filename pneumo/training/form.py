"""The Train form's fields, each made from a TrainConfig field: its widget kind, label, bounds, choices and help
come from the field itself, so a rule written in TrainConfig holds in the form too."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from pneumo.training.config import TrainConfig, field_choices

# Fields the form leaves out: the data folder is the sidebar's, and the rest are for the command line.
SKIPPED = frozenset({"data", "split_seed", "mixed_precision", "notes", "label_review"})


@dataclass(frozen=True)
class FormField:
    """One widget of the Train form."""

    name: str
    label: str
    kind: Literal["flag", "choice", "int", "float"]
    default: Any
    help: str | None = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def index(self) -> int:
        """Where the default stands among the choices."""
        return list(self.choices).index(self.default)

    @property
    def number_format(self) -> str:
        return "%d" if self.kind == "int" else "%.5g"


def _field(f: Any) -> FormField:
    meta, default = f.metadata, f.default
    label = f.name.replace("_", " ").capitalize()
    choices = field_choices(f)
    if isinstance(default, bool):
        return FormField(f.name, label, "flag", default, meta.get("help"))
    if choices:
        return FormField(f.name, label, "choice", default, meta.get("help"), tuple(choices))
    kind: type = int if isinstance(default, int) else float
    return FormField(
        f.name,
        label,
        "int" if kind is int else "float",
        default,
        meta.get("help"),
        minimum=kind(meta["min"]) if meta.get("min") is not None else None,
        maximum=kind(meta["max"]) if meta.get("max") is not None else None,
    )


def form_fields(skipped: frozenset[str] = SKIPPED) -> list[FormField]:
    """The form's widgets, in TrainConfig's order."""
    return [_field(f) for f in fields(TrainConfig) if f.name not in skipped]
