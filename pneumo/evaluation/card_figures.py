"""What the Overview shows of a model beyond its card's own words: the stored predictions' label-audit column, the
sensitivity on the pneumonias the label audit trusts beside the one on all of them, the audit's suspects by label
in words, and which columns of the card's tables are shown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumo.core.paths import CLASS_NAMES

# The columns of the card's tables the Overview shows, in this order, where the card holds them.
EVALUATION_COLUMNS = ("name", "date", "n", "threshold", "roc_auc", "sensitivity", "specificity", "accuracy")
EVALUATION_FIGURES = ("threshold", "roc_auc", "sensitivity", "specificity", "accuracy")  # four decimals
SITE_COLUMNS = (
    "name",
    "date",
    "n",
    "n_positive",
    "threshold",
    "sensitivity",
    "sensitivity_lower_95",
    "specificity",
    "specificity_lower_95",
)
FRAMING_COLUMNS = ("condition", "n", "sensitivity", "specificity", "flagged_fraction", "roc_auc")
FRAMING_FIGURES = ("sensitivity", "specificity", "flagged_fraction", "roc_auc")  # three decimals
WATCHED_ZOOMS = (0.85, 1.3)  # the zooms a framing caution watches when the card does not say


def shown_columns(frame: pd.DataFrame, wanted: Iterable[str]) -> list[str]:
    """The wanted columns the frame has, in the wanted order."""
    return [c for c in wanted if c in frame]


def watched_zooms(framing: Mapping[str, Any]) -> tuple[float, ...]:
    """The zooms a framing sweep's caution watches (shaded on its chart)."""
    return tuple((framing.get("worst_in_range") or {}).get("zooms") or WATCHED_ZOOMS)


def label_suspects(path: str | Path) -> list[bool] | None:
    """The label audit's verdict on each stored prediction row (its label_suspect column, in file order), or None
    when the file has no such column. The validated reader keeps path, label and probability only; this column
    says which pneumonias the threshold rule's recall target was asked of."""
    try:
        column = pd.read_csv(path, usecols=["label_suspect"], dtype=str, keep_default_na=False)["label_suspect"]
    except (ValueError, OSError):  # no such column, or a file the validated reader refuses anyway
        return None
    return [value.strip().lower() == "true" for value in column]


def with_suspects(preds: pd.DataFrame, suspects: list[bool] | None) -> pd.DataFrame:
    """The predictions with their label_suspect column, when the audit's verdicts match them row for row."""
    if suspects is None or len(suspects) != len(preds):
        return preds
    return preds.assign(label_suspect=suspects)


@dataclass(frozen=True)
class TrustedSensitivity:
    """The sensitivity at a threshold on the pneumonias the label audit trusts, beside how many there are of
    those and of all pneumonias."""

    positives: int
    trusted: int
    sensitivity: float | None  # None when the audit trusts none of them


def trusted_sensitivity(preds: pd.DataFrame, threshold: float) -> TrustedSensitivity | None:
    """On predictions with a label_suspect column and at least one pneumonia: the sensitivity on the pneumonias
    not suspected of a label error; None otherwise."""
    if "label_suspect" not in preds or not (preds["label"] == 1).any():
        return None
    positives = preds[preds["label"] == 1]
    trusted = positives[~positives["label_suspect"].astype(bool)]
    sensitivity = float((trusted["probability"] >= threshold).mean()) if len(trusted) else None
    return TrustedSensitivity(len(positives), len(trusted), sensitivity)


def by_label_in_words(counts: Mapping[str, Any]) -> str:
    """The audit's suspects by given label ({"1": 32}) as words: "32 labelled PNEUMONIA"."""
    parts = []
    for key, n in sorted(counts.items()):
        try:
            index = int(key)
        except ValueError:
            index = -1
        # A label this version does not know is shown as the card holds it (a negative one must not count from
        # the end of the names).
        name = CLASS_NAMES[index] if 0 <= index < len(CLASS_NAMES) else str(key)
        parts.append(f"{int(n):,} labelled {name}")
    return " and ".join(parts) or "none"
