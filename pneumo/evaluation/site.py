"""Set an operating point on a site's own labelled films, say how sure it is, and put a named point in force.

The rule: the highest threshold whose sensitivity on the site's films reaches the target recall, placed
midway between the lowest pneumonia score it must flag and the next lower score of any film (never on one
film's exact score, so a serving engine that rounds differently cannot flip that film).

How sure: one-sided 95 % lower bounds (Clopper-Pearson) on sensitivity and specificity. The specificity
bound is exact as it stands: the threshold is chosen from the positives only. The sensitivity bound is
computed on the films the threshold was chosen on, and it is still honest: a threshold just below the
k-th highest of n positive scores has a true sensitivity distributed as Beta(k, n - k + 1) (order
statistics of continuous scores), whose 5 % quantile is exactly the Clopper-Pearson lower bound for k of
n; placing it midway to the next lower score only lowers the threshold, so the bound stays valid.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core.card import (
    SHIPPED_POINT,
    ModelCard,
    check_site_name,
    check_threshold,
    site_name_skeleton,
    update_card,
)
from pneumo.core.files import check_writable as runs_check_writable
from pneumo.core.files import now_iso
from pneumo.model.loading import card_path, read_card

# SciPy, pneumo.data.collection and pneumo.evaluation.metrics (pandas, scikit-learn) are imported where used: the CLI
# and the dashboard
# import this module at start.

CONFIDENCE = 0.95  # one-sided
SHIPPED = SHIPPED_POINT
MAX_POSITIVES = 100_000  # positives_needed searches this far, then says "more than"
FEW_NORMALS = 20
SUMMARY_KEYS = (
    "name",
    "threshold",
    "n",
    "n_positive",
    "sensitivity",
    "sensitivity_lower_95",
    "specificity",
    "specificity_lower_95",
    "positives_needed",
)

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------- the statistics


def lower_bound(successes: int, trials: int, confidence: float = CONFIDENCE) -> float | None:
    """One-sided Clopper-Pearson lower bound: the low end of the two-sided interval at 2·confidence − 1."""
    from scipy.stats import binomtest

    if trials <= 0:
        return None
    if successes <= 0:
        return 0.0
    return float(
        binomtest(int(successes), int(trials)).proportion_ci(confidence_level=2 * confidence - 1, method="exact").low
    )


def _lower_bounds(successes: np.ndarray, trials: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """lower_bound for many (k, n) at once: the beta quantile Clopper-Pearson is defined by."""
    from scipy.stats import beta

    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    out = beta.ppf(1 - confidence, np.maximum(k, 1), n - k + 1)
    return np.where(k <= 0, 0.0, out)


def site_threshold(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, target: float
) -> float:
    """The highest threshold with sensitivity >= target on these films, midway between the lowest
    positive score it must flag and the next lower score of any film."""
    y, p = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"--target-recall must be in (0, 1], got {target}")
    positives = np.sort(p[y == 1])[::-1]
    if not len(positives):
        raise ValueError("no PNEUMONIA films: a threshold for a target recall needs positives")
    needed = min(max(int(math.ceil(target * len(positives) - 1e-9)), 1), len(positives))
    lowest_flagged = float(positives[needed - 1])
    below = p[p < lowest_flagged]
    return (lowest_flagged + (float(below.max()) if below.size else 0.0)) / 2


def minimum_positives(target: float, confidence: float = CONFIDENCE) -> int:
    """Fewest positives for which the lower bound can reach target at all (every one of them found)."""
    return int(math.ceil(math.log(1 - confidence) / math.log(target))) if target < 1 else MAX_POSITIVES + 1


def positives_needed(
    found: int, positives: int, target: float, confidence: float = CONFIDENCE, cap: int = MAX_POSITIVES
) -> int | None:
    """How many more positives the site would need for the sensitivity bound to reach target, if the
    observed sensitivity held; 0 when it already does, None when no number would (observed <= target,
    or more than cap)."""
    if positives <= 0:
        return None
    bound = lower_bound(found, positives, confidence)
    if bound is not None and bound >= target:
        return 0
    rate = found / positives
    if rate <= target:
        return None
    # Scanned in growing chunks: the answer is usually near, and the floor makes the bound a sawtooth in n,
    # so the first n that reaches the target is found by looking at every n, not by bisection.
    start, size = positives, 512
    while start <= cap:
        n = np.arange(start, min(start + size, cap + 1))
        hit = np.flatnonzero(_lower_bounds(np.floor(rate * n + 1e-9), n, confidence) >= target)
        if hit.size:
            return int(n[hit[0]] - positives)
        start, size = start + size, size * 4
    return None


def bound_curve(
    found: int, positives: int, target: float, points: int = 40, confidence: float = CONFIDENCE
) -> list[tuple[int, float]]:
    """[(n positives, lower bound)] at the observed sensitivity, for a plot of the bound against n: from
    5 positives to past where the bound reaches target (or 4× the site's positives when it never does)."""
    if positives <= 0:
        return []
    rate = found / positives
    needed = positives_needed(found, positives, target, confidence)
    top = positives + needed if needed else 0
    n_max = int(min(MAX_POSITIVES, max(4 * positives, 1.25 * top, 50)))
    grid = np.unique(np.concatenate([np.geomspace(5, n_max, points).round(), [positives, top or positives]]))
    grid = grid[grid >= 1].astype(int)
    bounds = _lower_bounds(np.floor(rate * grid + 1e-9), grid, confidence)
    return [(int(n), float(b)) for n, b in zip(grid, bounds)]


def resampled_figures(
    labels: Sequence[int],
    probabilities: Sequence[float],
    n_labelled: int,
    target: float,
    draws: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The site rule as a site would live it: label n films (a class-stratified draw), set the threshold
    on them, and measure sensitivity and specificity on the site's remaining films; median and 10th
    percentile over draws."""
    y, p = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos = int(round(n_labelled * len(pos) / len(y)))
    n_neg = n_labelled - n_pos
    if not (0 < n_pos < len(pos) and 0 < n_neg < len(neg)):
        raise ValueError(
            f"cannot label {n_labelled} of {len(pos)} positives and {len(neg)} normals with both left over"
        )
    sens, spec, thresholds = [], [], []
    for _ in range(draws):
        chosen = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
        rest = np.setdiff1d(np.arange(len(y)), chosen)
        t = site_threshold(y[chosen], p[chosen], target)
        flagged = p[rest] >= t
        sens.append(flagged[y[rest] == 1].mean())
        spec.append((~flagged[y[rest] == 0]).mean())
        thresholds.append(t)

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": float(np.median(values)), "p10": float(np.percentile(values, 10))}

    return {
        "n_labelled": n_labelled,
        "labelled_positives": n_pos,
        "labelled_normals": n_neg,
        "draws": draws,
        "remaining": int(len(y) - n_labelled),
        "sensitivity": summary(sens),
        "specificity": summary(spec),
        "threshold": summary(thresholds),
    }


# ---------------------------------------------------------------------- a site's calibration


@dataclass
class SiteCalibration:
    """A site operating point and what the site's films say of it."""

    name: str
    threshold: float
    rule: str
    target_recall: float
    n: int
    n_positive: int
    n_negative: int
    confusion: dict[str, int]
    sensitivity: float
    sensitivity_lower_95: float | None
    specificity: float | None
    specificity_lower_95: float | None
    positives_needed: int | None
    note: str | None
    data: str
    file_list_sha256_16: str
    date: str
    leakage: dict[str, Any] | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    # Films reached through symbolic links, followed and refused (pneumo.data.collection.LinkReport.to_dict):
    # the films a site point was set on are said in full, links included.
    links: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The CLI's --json object: SUMMARY_KEYS, then the note."""
        return {**{k: getattr(self, k) for k in SUMMARY_KEYS}, "note": self.note}

    def card_entry(self) -> dict[str, Any]:
        """What the card keeps of it (everything but the curve and the unreadable list)."""
        out = dataclasses.asdict(self)
        out.pop("curve")
        out["unreadable"] = len(self.unreadable)
        out["counts"] = {"NORMAL": self.n_negative, "PNEUMONIA": self.n_positive}
        out["bound"] = (
            "one-sided 95 % Clopper-Pearson (sensitivity on the films the threshold was set on: valid, "
            "see pneumo.evaluation.site)"
        )
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_name(name: Any) -> str:
    """A new site point's name, normalised; ValueError when it is unusable or looks like "shipped"
    (pneumo.core.card.check_site_name says the rule and why)."""
    return check_site_name(name, "--name")


class NameTaken(ValueError):
    """A site point of that name (or one that looks like it) is in the card already; nothing was written."""


def _check_free(card: ModelCard, name: str, replace: bool, where: Path) -> dict[str, Any] | None:
    """The point this name replaces (replace=True), None when the name is new; NameTaken when the name is taken
    and replace is False, or when another point's name looks like it (never replaced: it is another name)."""
    for point in card.site_operating_points:
        if point.get("name") == name:
            if replace:
                return point
            raise NameTaken(
                f"the card {where} already has a site operating point '{name}' (threshold "
                f"{_figure(point.get('threshold'))}, set {point.get('date') or 'at an unknown date'} on "
                f"{point.get('n', '?')} films); replacing it must be asked for (calibrate --replace), "
                "or choose another name; nothing written"
            )
        if site_name_skeleton(str(point.get("name"))) == site_name_skeleton(name):
            raise NameTaken(
                f"--name {ascii(name)} looks like the site operating point {ascii(point.get('name'))} already in the "
                f"card {where}; choose a name that cannot be mistaken for it; nothing written"
            )
    return None


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def check_can_record(model_path: str | Path, name: str, replace: bool = False) -> Path:
    """Before any work: the card's path when the name may be recorded in it (a new name, or replace=True);
    ReadOnlyError for a read-only card, NameTaken for a taken name. record checks again, under the lock."""
    path = check_writable(model_path)
    name = check_name(name)
    if path.exists():
        _check_free(read_card(path), name, replace, path)
    return path


def figures(
    name: str,
    labels: Sequence[int],
    probabilities: Sequence[float],
    target: float,
    *,
    data: str = "",
    file_list_sha256_16: str = "",
    leakage: dict[str, Any] | None = None,
) -> SiteCalibration:
    """The site point and its figures from the site films' labels and scores."""
    from pneumo.evaluation.metrics import metrics_at

    name = check_name(name)
    y, p = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=float)
    t = site_threshold(y, p, target)
    m = metrics_at(y, p, t)
    c = m["confusion"]
    n_pos, n_neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    needed = positives_needed(c["tp"], n_pos, target)
    sens_low, spec_low = lower_bound(c["tp"], n_pos), lower_bound(c["tn"], n_neg)
    notes: list[str] = []
    floor = minimum_positives(target)
    if n_pos < floor:
        notes.append(
            f"Too few pneumonia films for the bound to mean anything: with {n_pos}, the one-sided 95 % lower "
            f"bound on sensitivity cannot reach {target:g} even if every one is found (that needs at least "
            f"{floor}). The threshold is set, but this site's sensitivity is not established by these films."
        )
    elif needed is None and sens_low is not None and sens_low < target:
        notes.append(
            f"At the observed sensitivity {m['sensitivity']:.3f} no number of pneumonia films brings the "
            f"lower bound to {target:g}: the bound says the target is not shown to hold."
        )
    if n_neg == 0:
        notes.append("No normal films: specificity is unknown.")
    elif n_neg < FEW_NORMALS:
        notes.append(f"Only {n_neg} normal films: the specificity bound ({spec_low:.2f}) says little.")
    if leakage and (leakage.get("train") or leakage.get("validation")):
        notes.append(
            f"{leakage['train'] + leakage['validation']} of these films were used to train or validate this "
            "model (by pixel hash): its figures here are optimistic; leave them out."
        )
    rule = (
        f"site '{name}': highest threshold with sensitivity >= {target:g} on the site's {n_pos} pneumonia films "
        f"({len(y)} films), midway between two adjacent scores"
    )
    return SiteCalibration(
        name=name,
        threshold=float(t),
        rule=rule,
        target_recall=float(target),
        n=int(len(y)),
        n_positive=n_pos,
        n_negative=n_neg,
        confusion=c,
        sensitivity=float(m["sensitivity"]),
        sensitivity_lower_95=sens_low,
        specificity=m["specificity"],
        specificity_lower_95=spec_low,
        positives_needed=needed,
        note=" ".join(notes) or None,
        data=data,
        file_list_sha256_16=file_list_sha256_16,
        date=now_iso(),
        leakage=leakage,
        curve=bound_curve(c["tp"], n_pos, target),
    )


def calibrate(
    loaded: Any,
    data: str | Path,
    target_recall: float,
    name: str,
    progress: Progress | None = None,
    *,
    follow_links: bool = False,
    allowed_roots: Sequence[str | Path] | None = None,
) -> SiteCalibration:
    """ "Calibrate to this site": a labelled folder (any layout pneumo.data.collection.scan reads) -> the site point,
    its figures and the bound-against-n curve (``.curve``), with the leakage check against the model's
    own training and validation films. Nothing is written (``record`` does that). follow_links and
    allowed_roots: which symbolic links to films are followed (pneumo.data.collection.scan); what was
    followed and refused is in ``.links``."""
    from pneumo.data.collection import file_list_hash, scan
    from pneumo.evaluation.metrics import leakage, predict_frame

    check_name(name)
    dataset = scan(data, follow_links=follow_links, allowed_roots=allowed_roots)
    frame = dataset.frame
    predicted = predict_frame(loaded, frame, progress=progress, hashes=True)  # one decode: scores and pixel hashes
    ok = predicted[predicted["probability"].notna()]
    if ok.empty:
        raise ValueError(f"{data}: no readable images")
    hashes = ok["hash"].dropna().tolist()
    result = figures(
        name,
        ok["label"].to_numpy(),
        ok["probability"].to_numpy(),
        target_recall,
        data=str(data),
        file_list_sha256_16=file_list_hash(frame),
        leakage=leakage(loaded.path, hashes),
    )
    result.unreadable = [
        {"path": r.path, "error": str(r.error)} for r in predicted[predicted["probability"].isna()].itertuples()
    ]
    result.links = dataset.links.to_dict()
    return result


def check_writable(model_path: str | Path) -> Path:
    """The model's card path; ReadOnlyError (a PermissionError) when the card or its folder is read-only,
    before any work is done."""
    model_path = Path(model_path) / "model.keras" if Path(model_path).is_dir() else Path(model_path)
    path = card_path(model_path)
    runs_check_writable(path)
    return path


def record(model_path: str | Path, calibration: SiteCalibration, replace: bool = False) -> Path:
    """Add the site point to the model's card; returns the card's path.

    A point of the same name is replaced only with replace=True (the new entry keeps the old threshold and
    date under ``replaces``); otherwise NameTaken names the point in the card, and nothing is written. A
    name that looks like another point's is refused either way. A read-only card is refused, never replaced
    (the card is written by renaming a new file over it, which a read-only file would not stop). Read,
    changed and written under the card's lock (update_card): calibrations recorded at once all land."""
    path = check_writable(model_path)
    name = check_name(calibration.name)
    entry = {**calibration.card_entry(), "name": name}

    def add(card: ModelCard) -> None:
        earlier = _check_free(card, name, replace, path)
        if earlier is not None:
            entry["replaces"] = {"threshold": earlier.get("threshold"), "date": earlier.get("date")}
        card.site_operating_points = [p for p in card.site_operating_points if p.get("name") != name] + [entry]

    update_card(path, add)
    return path


# ---------------------------------------------------------------------- operating points in force


def operating_points(card: Any) -> list[dict[str, Any]]:
    """Every operating point a card offers, the card's own ("shipped") first: name, threshold, rule and
    where its figures come from, for the sidebar's choice."""
    own = {
        "name": SHIPPED,
        "threshold": card.threshold,
        "rule": card.threshold_rule,
        "origin": f"{card.validation_kind} held-out films" + (" (in-distribution)" if card.in_distribution else ""),
    }
    sites = [
        {
            "name": p["name"],
            "threshold": p["threshold"],
            "rule": p.get("rule", ""),
            "origin": (
                f"site: {p.get('n')} films, sensitivity lower 95 % bound {p.get('sensitivity_lower_95')}, "
                f"specificity lower 95 % bound {p.get('specificity_lower_95')}"
            ),
        }
        for p in card.site_operating_points
        # A card read from disk holds no point named (or looking like) "shipped": ModelCard refuses it. One
        # built in memory might: it is never offered beside the card's own under the same name.
        if site_name_skeleton(str(p.get("name"))) != site_name_skeleton(SHIPPED)
    ]
    return [own, *sites]


def apply_operating_point(loaded: Any, name: str | None) -> Any:
    """A copy of the loaded model with the named operating point in force (its threshold and rule in the
    copy's card, its name in ``operating_point``); the network, engine and input check are shared and the
    given model is left as it was (the app caches one model for every session). None or "shipped": the
    card's own point. An unknown name is a ValueError naming the known ones."""
    if not name or name == SHIPPED:
        if loaded.operating_point == SHIPPED:
            return loaded
        return dataclasses.replace(loaded, card=read_card(loaded.path), operating_point=SHIPPED)
    points = {p["name"]: p for p in loaded.card.site_operating_points}
    if name not in points:
        known = ", ".join([SHIPPED, *points])
        raise ValueError(f"no operating point '{name}' in the card of {loaded.path} (known: {known})")
    card = copy.deepcopy(loaded.card)
    card.threshold = check_threshold(points[name]["threshold"], f"operating point '{name}'")
    card.threshold_rule = str(points[name].get("rule", f"site '{name}'"))
    return dataclasses.replace(loaded, card=card, operating_point=name)
