"""Decision-level checks: what a condition does to the decision at the operating point, not only to the ranking.

A change that lifts every score keeps the ROC AUC and wrecks specificity, so a threshold-free figure cannot
see it. Every condition here (the framing sweep below and the acquisition stress suite) is reported at the
model's threshold: sensitivity, specificity and share flagged, each with a patient-bootstrap 95 % interval,
beside its AUC.

The framing sweep zooms each film about its centre from 0.7× (out) to 1.6× (in), shifts it and stretches it.
Where the warp samples outside the film it mirrors the film's edge: a real film framed wider shows more of
the child (shoulders, abdomen), never a black frame, and a black frame would test a second change at once.

Out of fold: for a cross-fitted ensemble each film is scored by the member that never trained on it
(``oof_member``), so the sweep of the shipped model is measured on 5,216 unseen films, not on its own
training films.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumo.data import transforms as T
from pneumo.evaluation.metrics import rank_auc


@dataclass(frozen=True)
class Framing:
    """One framing of a film: zoom about its centre (> 1 zooms in), log width-to-height stretch, shift."""

    name: str
    zoom: float = 1.0
    aspect: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    family: str = "zoom"

    def apply(self, img: np.ndarray) -> np.ndarray:
        if self.zoom == 1.0 and not (self.aspect or self.shift_x or self.shift_y):
            return np.asarray(img, np.float32)
        out = T.affine(img, scale=self.zoom, aspect=self.aspect, shift=(self.shift_x, self.shift_y), border="reflect")
        return np.clip(out, 0.0, 1.0)


ZOOMS = (0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.45, 1.6)
SWEEP: tuple[Framing, ...] = (
    *(Framing(f"zoom {z:g}×", zoom=z) for z in ZOOMS),
    Framing("shift left 10 %", shift_x=-0.10, family="shift"),
    Framing("shift right 10 %", shift_x=0.10, family="shift"),
    Framing("shift up 10 %", shift_y=-0.10, family="shift"),
    Framing("shift down 10 %", shift_y=0.10, family="shift"),
    Framing("wider ×1.2", aspect=float(np.log(1.2)), family="aspect"),
    Framing("taller ×1.2", aspect=-float(np.log(1.2)), family="aspect"),
)
# A model whose sensitivity or specificity at any zoom in this range falls further than TOLERANCE below its
# clean figure carries a caution: these are framings real films of other periods and sites arrive with.
CAUTION_ZOOMS = (0.85, 1.3)
TOLERANCE = 0.05

Scorer = Callable[[np.ndarray], np.ndarray]  # a batch of [0, 1] films (n, side, side) → one probability each


def oof_member(member_probabilities: Callable[[np.ndarray], np.ndarray], folds: Sequence[int] | np.ndarray) -> Scorer:
    """A scorer that gives film i the probability of ensemble member folds[i] (the one that never saw it)."""
    index = np.asarray(folds, dtype=int)

    def score(batch: np.ndarray) -> np.ndarray:
        each = np.asarray(member_probabilities(batch))
        if each.ndim != 2 or index.max(initial=0) >= each.shape[1]:
            raise ValueError(f"the model has {each.shape[-1]} members; the predictions name fold {index.max()}")
        return each[np.arange(len(batch)), index[: len(batch)]]

    return score


def probabilities(
    score: Callable[[np.ndarray, slice], np.ndarray],
    images: np.ndarray,
    conditions: dict[str, Callable[[np.ndarray], np.ndarray]],
    chunk: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Each condition's probabilities for every film, `chunk` films at a time (memory stays bounded).

    score(batch, rows) scores the films at `rows` of `images` after a change: the rows let an
    out-of-fold scorer pick each film's own member."""
    out = {name: np.empty(len(images)) for name in conditions}
    for i, (name, change) in enumerate(conditions.items()):
        for start in range(0, len(images), chunk):
            rows = slice(start, min(start + chunk, len(images)))
            batch = np.stack([change(img) for img in images[rows]]).astype(np.float32)
            out[name][rows] = score(batch, rows)
        if progress:
            progress(i + 1, len(conditions))
    return out


def sweep_conditions(framings: Iterable[Framing] = SWEEP) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {f.name: f.apply for f in framings}


@dataclass
class Interval:
    value: float | None
    low: float | None
    high: float | None


def _rate(hit: np.ndarray, mask: np.ndarray) -> float | None:
    return float(hit[mask].mean()) if mask.any() else None


def children(groups: np.ndarray) -> list[np.ndarray]:
    """The row indices of each child (each distinct group), for a bootstrap that resamples children."""
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)


def decision_figures(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, threshold: float, rounds: int = 200, seed: int = 0
) -> dict[str, Interval]:
    """AUC, sensitivity, specificity and share flagged at `threshold`, with patient-bootstrap 95 % intervals
    (children resampled, not films: a child's films are not independent)."""
    y, p = np.asarray(labels, int), np.asarray(probs, float)
    flagged = p >= threshold
    point = {
        "roc_auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None,
        "sensitivity": _rate(flagged, y == 1),
        "specificity": _rate(~flagged, y == 0),
        "flagged_fraction": float(flagged.mean()) if len(y) else None,
    }
    members = children(groups)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(rounds):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        yy, ff = y[idx], flagged[idx]
        if len(np.unique(yy)) == 2:
            draws["roc_auc"].append(rank_auc(yy, p[idx]))
            draws["sensitivity"].append(float(ff[yy == 1].mean()))
            draws["specificity"].append(float((~ff[yy == 0]).mean()))
        draws["flagged_fraction"].append(float(ff.mean()))
    return {
        k: Interval(
            v, *(float(np.percentile(draws[k], q)) for q in (2.5, 97.5)) if draws[k] and v is not None else (None, None)
        )
        for k, v in point.items()
    }


def decision_report(
    labels: np.ndarray,
    by_condition: dict[str, np.ndarray],
    groups: np.ndarray,
    threshold: float,
    framings: Iterable[Framing] = SWEEP,
    rounds: int = 200,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per condition ('clean' first when given): its figures at `threshold` with their intervals, and
    the framing parameters where the condition is one of `framings`."""
    known = {f.name: f for f in framings}
    rows = []
    for name, probs in by_condition.items():
        figures = decision_figures(labels, probs, groups, threshold, rounds, seed)
        row: dict[str, Any] = {"condition": name, "n": int(len(probs))}
        if name in known:
            f = known[name]
            row.update(family=f.family, zoom=f.zoom, aspect=f.aspect, shift_x=f.shift_x, shift_y=f.shift_y)
        for key, iv in figures.items():
            row[key] = iv.value
            row[f"{key}_95"] = {"low": iv.low, "high": iv.high}
        rows.append(row)
    return rows


def framing_cautions(
    rows: list[dict[str, Any]],
    clean: dict[str, Any],
    zooms: tuple[float, float] = CAUTION_ZOOMS,
    tolerance: float = TOLERANCE,
) -> list[str]:
    """A caution for each of sensitivity and specificity that falls more than `tolerance` below its clean
    figure at some zoom within `zooms`, naming the worst zoom."""
    out = []
    for key in ("sensitivity", "specificity"):
        base = clean.get(key)
        inside = [
            r
            for r in rows
            if r.get("family") == "zoom" and zooms[0] <= r["zoom"] <= zooms[1] and r.get(key) is not None
        ]
        if base is None or not inside:
            continue
        worst = min(inside, key=lambda r: r[key])
        if worst[key] < base - tolerance:
            out.append(
                f"framing: {key} {worst[key]:.2f} at zoom {worst['zoom']:g}× against {base:.2f} as sent "
                f"(more than {tolerance:.2f} lower within {zooms[0]:g}–{zooms[1]:g}×): the decision depends on "
                "how the film is framed"
            )
    return out


def summary(rows: list[dict[str, Any]], threshold: float, how: str) -> dict[str, Any]:
    """The block a card stores under shift_checks.framing: the rows, the clean row, the zoom range's worst
    figures and the cautions they raise."""
    clean = next((r for r in rows if r.get("family") == "zoom" and r.get("zoom") == 1.0), rows[0] if rows else {})
    inside = [r for r in rows if r.get("family") == "zoom" and CAUTION_ZOOMS[0] <= r["zoom"] <= CAUTION_ZOOMS[1]]
    worst = {
        key: min((r[key] for r in inside if r.get(key) is not None), default=None)
        for key in ("sensitivity", "specificity")
    }
    spread = [r["specificity"] for r in inside if r.get("specificity") is not None]
    return {
        "threshold": float(threshold),
        "how": how,
        "conditions": rows,
        "worst_in_range": {
            "zooms": list(CAUTION_ZOOMS),
            **worst,
            "specificity_range": (max(spread) - min(spread)) if spread else None,
        },
        "cautions": framing_cautions(rows, clean),
    }


def as_dict(f: Framing) -> dict[str, Any]:
    return asdict(f)


def record_in_card(card_file: Path, block: dict[str, Any]) -> Path:
    """Store a sweep in the card (shift_checks.framing), replacing the earlier one. Read, changed and written
    under the card's lock (update_card): no concurrent update of the card is lost. The card must exist."""
    from pneumo.core.card import ModelCard, update_card

    def put(card: ModelCard) -> None:
        card.shift_checks["framing"] = block

    update_card(card_file, put, create=False)
    return card_file
