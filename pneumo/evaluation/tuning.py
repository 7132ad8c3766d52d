"""Tuning an operating point on a labelled set: which rule set the threshold and what the target-recall box shows,
when a save must be confirmed first, and which misread films a threshold puts in its galleries.

Plain values in and out: the Threshold page keeps a ThresholdChoice in its state and draws what it says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumo.data.collection import NPZ_SEPARATOR

HAND_RULE = "set by hand on the Threshold page"
TARGET_RULE = "target recall"  # the rule's name, followed by the target: "target recall 0.980"
CONFIRM_FIRST = "Tick the confirmation first."
GALLERY_SIZE = 8  # films shown per gallery: the ones a small change of threshold would flip first


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold in force on the Threshold page, the rule that set it (None: the card's own), and the target
    the target-recall box shows (only while a target recall is the rule in force).

    Kept exactly as the card or the rule gave it, never snapped to the slider's steps: the slider shows it to four
    decimals, as every other place does, and the figures are those of the threshold itself."""

    threshold: float
    rule: str | None = None
    target: float | None = None

    @classmethod
    def from_card(cls, threshold: float) -> ThresholdChoice:
        return cls(float(threshold))

    def by_hand(self, value: float) -> ThresholdChoice:
        """The slider moved: the threshold is the hand's, and no target is claimed."""
        return ThresholdChoice(float(value), HAND_RULE)

    def by_rule(self, name: str, y: Any, p: Any) -> ThresholdChoice:
        """A named rule of pneumo.evaluation.metrics.THRESHOLD_RULES on these labels and scores ("max F1",
        "Youden J"): the box is emptied, since no target set the threshold (after Youden J it kept saying 0.980)."""
        from pneumo.evaluation.metrics import THRESHOLD_RULES  # scikit-learn: imported when a rule is applied

        return ThresholdChoice(float(THRESHOLD_RULES[name](y, p)), name)

    def by_target(self, target: float | None, y: Any, p: Any) -> ThresholdChoice:
        """The box's target: the highest threshold whose sensitivity on this set reaches it. An emptied box leaves
        the threshold where it is, under the rule that set it."""
        if target is None:
            return dataclasses.replace(self, target=None)
        from pneumo.evaluation.metrics import threshold_for_recall

        return ThresholdChoice(float(threshold_for_recall(y, p, target)), f"{TARGET_RULE} {target:.3f}", float(target))

    def set_by(self, card_rule: str) -> str:
        """Which rule set the threshold, in words: the buttons and the box leave no trace of their own once used."""
        return f"the card's own rule ({card_rule})" if self.rule is None else self.rule

    def saved_rule(self, card_rule: str, computed_on: str, n: int) -> str:
        """The rule as the card records it when this threshold is saved: the card's own was not derived on this set
        and keeps its words; any other says the set it was set on."""
        return card_rule if self.rule is None else f"{self.rule} (on {computed_on}, n={n})"


def overlaps(leak: Mapping[str, Any] | None) -> bool:
    """Whether a leakage finding (pneumo.evaluation.metrics.leakage) found any of the model's own films."""
    return bool(leak) and float((leak or {}).get("fraction", 0) or 0) > 0


def overlap_record(leak: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a saved operating point records of an overlap its saver confirmed: the finding itself, or nothing."""
    return {"overlap_confirmed": dict(leak or {})} if overlaps(leak) else {}


def is_shipped(model_path: str | Path, models_dir: str | Path) -> bool:
    """Whether the model is the deployment's shipped one (in its models folder): changing its card changes every
    user's operating point."""
    return Path(model_path).resolve().parent == Path(models_dir).resolve()


def save_refusal(refusal: str | None, *confirmed: bool) -> str | None:
    """Why Save is refused, or None: the role's or deployment's refusal first, then any confirmation not ticked
    (pass True for a confirmation that is not asked for)."""
    if refusal:
        return refusal
    return None if all(confirmed) else CONFIRM_FIRST


def site_name_taken(name: str, points: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a site point of this name is in the card already, the name compared as the card would store it
    ("ward 3 " finds "ward 3"); a name the card would refuse is compared as given (saving says why it is refused)."""
    from pneumo.evaluation.site import check_name

    try:
        stored = check_name(name)
    except ValueError:
        stored = name
    return stored in {p.get("name") for p in points}


@dataclass(frozen=True)
class Gallery:
    """One gallery of misread films at a threshold: its title, how many films it counts, and its films closest to
    the threshold first (a small change of threshold would flip them)."""

    title: str
    count: int
    rows: pd.DataFrame

    def on_disk(self, limit: int = GALLERY_SIZE, exists: Callable[[Path], bool] = Path.exists) -> list[Any]:
        """The first `limit` rows (as named tuples) whose file is on this machine: a fresh clone has the stored
        predictions of films it does not have."""
        found = []
        for row in self.rows.itertuples():
            if exists(Path(str(row.path).split(NPZ_SEPARATOR)[0])):
                found.append(row)
                if len(found) == limit:
                    break
        return found


def error_galleries(frame: pd.DataFrame, threshold: float) -> list[Gallery]:
    """The false negatives (pneumonia scored under the threshold, highest score first) and the false positives
    (normals at or over it, lowest score first) of a frame of path, label and probability; unscored rows are left
    out."""
    scored = frame[frame["probability"].notna()]
    missed = (scored["label"] == 1) & (scored["probability"] < threshold)
    flagged = (scored["label"] == 0) & (scored["probability"] >= threshold)
    return [
        Gallery(
            "False negatives (missed pneumonia)",
            int(missed.sum()),
            scored[missed].sort_values("probability", ascending=False),
        ),
        Gallery(
            "False positives (normal flagged)",
            int(flagged.sum()),
            scored[flagged].sort_values("probability", ascending=True),
        ),
    ]
