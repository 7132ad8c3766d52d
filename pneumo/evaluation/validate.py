"""Checks that can tell a robust recipe from a fragile one: shifted hold-out splits, an acquisition
stress suite, bootstrap spread, and where the explanations fall.

A random patient-level split of one collection is saturated (every candidate scores AUC ≈ 0.999), so
it cannot rank recipes. These checks hold out a different population instead:

- ``temporal``: the lowest-numbered patients of each file-name series and class (a proxy for another
  acquisition period: patient numbers were assigned in order);
- ``family``: one whole series of normal films (``NORMAL2-IM-*``) against a patient-level draw of the
  pneumonias, so specificity is measured on normals from a series the model never saw;
- the stress suite: the held-out films under exposure, gamma, contrast, blur, sharpening, noise, crop,
  zoom, rotation, JPEG re-compression, resampling and CLAHE."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pneumo.core.files import read_json
from pneumo.core.paths import PROJECT_ROOT
from pneumo.data import collection as D
from pneumo.data.pixels import resize
from pneumo.data.transforms import STRESS, Transform
from pneumo.evaluation.metrics import metrics_at, rank_auc, threshold_for_recall
from pneumo.model.explain import gradcam


@dataclass
class ConditionResult:
    condition: str
    roc_auc: float | None
    sensitivity: float | None
    specificity: float | None


@dataclass
class StressReport:
    threshold: float
    conditions: list[ConditionResult]
    probabilities: dict[str, list[float]] = field(repr=False, default_factory=dict)

    @property
    def worst_auc(self) -> ConditionResult:
        return min(self.conditions, key=lambda c: c.roc_auc if c.roc_auc is not None else 1.0)

    @property
    def worst_specificity(self) -> ConditionResult:
        return min(self.conditions, key=lambda c: c.specificity if c.specificity is not None else 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "conditions": [asdict(c) for c in self.conditions],
            "worst_auc": asdict(self.worst_auc),
            "worst_specificity": asdict(self.worst_specificity),
            "mean_auc": float(np.mean([c.roc_auc for c in self.conditions if c.roc_auc is not None])),
            "mean_specificity": float(np.mean([c.specificity for c in self.conditions if c.specificity is not None])),
        }


def load_images(paths: list[str], size: int) -> np.ndarray:
    """Decode and resize the held-out films once; every condition starts from these."""
    return np.stack([resize(D.read_item(p), size) for p in paths]).astype(np.float32)


def stressed_probabilities(
    loaded: Any,
    images: np.ndarray,
    conditions: dict[str, Transform] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Probabilities for the clean images and under each stress condition."""
    conditions = STRESS if conditions is None else conditions
    out = {"clean": loaded.predict(images, batch_size=64)}
    for i, (name, transform) in enumerate(conditions.items()):
        changed = np.stack([np.clip(transform(img), 0.0, 1.0) for img in images]).astype(np.float32)
        out[name] = loaded.predict(changed, batch_size=64)
        if progress:
            progress(i + 1, len(conditions))
    return out


def stress_report(labels: np.ndarray, probabilities: dict[str, np.ndarray], threshold: float) -> StressReport:
    results = []
    for name, p in probabilities.items():
        if name == "clean":
            continue
        m = metrics_at(labels, p, threshold)
        results.append(ConditionResult(name, m["roc_auc"], m["sensitivity"], m["specificity"]))
    return StressReport(threshold, results, {k: [float(x) for x in v] for k, v in probabilities.items()})


def robust_threshold(labels: np.ndarray, probabilities: dict[str, np.ndarray], target: float) -> float:
    """The highest threshold whose sensitivity, pooled over the clean and every stressed copy of the
    held-out films, reaches target: the operating point keeps its recall under acquisition shift."""
    pooled_y = np.concatenate([labels] * len(probabilities))
    pooled_p = np.concatenate(list(probabilities.values()))
    return threshold_for_recall(pooled_y, pooled_p, target)


def bootstrap(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, threshold: float, rounds: int = 300, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Percentile 95 % intervals of AUC, sensitivity and specificity, resampling patients (not films)."""
    rng = np.random.default_rng(seed)
    labels, probs, groups = np.asarray(labels), np.asarray(probs), np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(unique))]
    draws: dict[str, list[float]] = {"roc_auc": [], "sensitivity": [], "specificity": []}
    for _ in range(rounds):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        y, p = labels[idx], probs[idx]
        if len(np.unique(y)) < 2:
            continue
        pred = p >= threshold
        draws["roc_auc"].append(rank_auc(y, p))
        draws["sensitivity"].append(float(pred[y == 1].mean()))
        draws["specificity"].append(float((~pred[y == 0]).mean()))
    return {
        k: {"low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5)), "sd": float(np.std(v))}
        for k, v in draws.items()
        if v
    }


# ---------------------------------------------------------------- explanation faithfulness

DELETION_STEPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # share of the film's pixels deleted, most heated first


def _blob(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    return np.exp(-(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / (2 * 0.18**2))).astype(np.float32)


def deletion_score(loaded: Any, images: np.ndarray, maps: np.ndarray, classes: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per film, the mean score of its decided class as the most heated pixels are deleted (replaced by a
    blurred copy of the film, so deletion removes detail rather than adding edges), over DELETION_STEPS.

    A map that shows what drives the score makes the score fall fast: lower is more faithful. Ties
    (a flat map) are broken at random, so a flat map scores like a random one.
    """
    rng = np.random.default_rng(seed)
    n, side = len(images), images.shape[1]
    blurred = np.stack([cv2.GaussianBlur(x, (0, 0), side / 16) for x in images])
    order = np.argsort(-(maps.reshape(n, -1) + rng.uniform(0, 1e-6, (n, side * side))), axis=1)
    curve = []
    for share in DELETION_STEPS:
        k = int(round(share * side * side))
        changed = images.reshape(n, -1).copy()
        rows = np.repeat(np.arange(n), k)
        cols = order[:, :k].ravel()
        changed[rows, cols] = blurred.reshape(n, -1)[rows, cols]
        p = loaded.predict(changed.reshape(images.shape), batch_size=64)
        curve.append(np.where(classes == 1, p, 1.0 - p))
    return np.trapezoid(np.stack(curve, axis=1), x=DELETION_STEPS, axis=1) / DELETION_STEPS[-1]


@dataclass(frozen=True)
class ExplainedFilms:
    """The films the explanation checks look at, the class each is decided at the threshold and its Grad-CAM map
    for that class: drawn and computed once (explain_films), then read by both the deletion check
    (faithfulness_of) and the anatomy check (anatomy_of), which see the same films and the same maps."""

    films: np.ndarray  # (n, side, side) float32, in the order of the images they were drawn from
    classes: np.ndarray  # (n,) int: 1 decided PNEUMONIA, 0 decided NORMAL
    cams: np.ndarray  # (n, side, side) float32 in [0, 1]: each film's map for its decided class
    threshold: float
    seed: int  # of the draw; the deletion check breaks its ties with it too
    # The draw's generator state just after picking the films: the deletion check's random baseline continues
    # from it, so its figure is the one a check drawing its own films would give.
    draw_state: Mapping[str, Any] = field(repr=False, compare=False)

    def rng(self) -> np.random.Generator:
        """A generator where the draw of the films left off (a fresh one on each call)."""
        generator = np.random.default_rng()
        generator.bit_generator.state = dict(self.draw_state)
        return generator


def explain_films(loaded: Any, images: np.ndarray, threshold: float, limit: int = 96, seed: int = 0) -> ExplainedFilms:
    """At most `limit` of the images drawn with `seed`, each decided at `threshold` and explained by one Grad-CAM
    map of its decided class: the costly part of the explanation checks (a forward and backward pass per film)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(limit, len(images)), replace=False))
    films = images[pick]
    classes = (loaded.predict(films, batch_size=64) >= threshold).astype(int)
    cams = np.stack([gradcam(loaded, x, target=int(c)) for x, c in zip(films, classes)]).astype(np.float32)
    return ExplainedFilms(films, classes, cams, float(threshold), seed, rng.bit_generator.state)


def explanation_checks(
    loaded: Any, images: np.ndarray, threshold: float, limit: int = 96, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(explanation_faithfulness, map_anatomy) of the same films from one set of Grad-CAM maps: each figure is the
    one its own function gives, at half the maps' cost."""
    explained = explain_films(loaded, images, threshold, limit, seed)
    return faithfulness_of(loaded, explained), anatomy_of(explained)


def explanation_faithfulness(
    loaded: Any, images: np.ndarray, threshold: float, limit: int = 96, seed: int = 0
) -> dict[str, Any]:
    """The deletion score of the model's Grad-CAM maps beside four baselines that know nothing of the
    film: a random map, a centred blob, the average of the model's own maps (the network's spatial prior,
    the same for every film) and a flat map. Per class decided at `threshold`. The maps beat the average
    map only if they say something about each film. With map_anatomy too, explanation_checks computes the
    maps once for both."""
    return faithfulness_of(loaded, explain_films(loaded, images, threshold, limit, seed))


def faithfulness_of(loaded: Any, explained: ExplainedFilms) -> dict[str, Any]:
    """explanation_faithfulness of films already explained (explain_films)."""
    films, classes, cams, threshold = explained.films, explained.classes, explained.cams, explained.threshold
    rng = explained.rng()
    side = films.shape[1]
    baselines = {
        "Grad-CAM (model)": cams,
        "average map": np.broadcast_to(cams.mean(axis=0), cams.shape),
        "centred blob": np.broadcast_to(_blob(side), cams.shape),
        "random map": rng.random(cams.shape).astype(np.float32),
        "flat map": np.zeros_like(cams),
    }
    scores = {name: deletion_score(loaded, films, maps, classes, explained.seed) for name, maps in baselines.items()}
    table = []
    for name, values in scores.items():
        row = {"map": name, "deletion score (all)": round(float(values.mean()), 4)}
        for c, label in ((1, "decided PNEUMONIA"), (0, "decided NORMAL")):
            row[label] = round(float(values[classes == c].mean()), 4) if (classes == c).any() else None
        table.append(row)
    model, average = scores["Grad-CAM (model)"].mean(), scores["average map"].mean()
    return {
        "table": table,
        "n": int(len(films)),
        "n_pneumonia": int(classes.sum()),
        "threshold": float(threshold),
        "beats_average_map": bool(model < average),
        "how": (
            f"Deletion score: the mean score of the decided class as the most heated 0–50 % of pixels are "
            f"blurred away, over {len(films)} films decided at threshold {threshold:.4f}; lower means the map "
            "found what drives the score. Baselines know nothing of the film."
        ),
    }


# ---------------------------------------------------------------- comparing runs


def check_row(run_dir: str | Path) -> dict[str, Any]:
    """One run's figures on every check (from its checks.json and config.json), for a comparison table."""
    run_dir = Path(run_dir)
    checks = read_json(run_dir / "checks.json")
    if not isinstance(checks, dict):
        raise ValueError(f"{run_dir}: no checks.json (train the run with this version of pneumo)")
    config = read_json(run_dir / "config.json", {}) or {}
    missing = [k for k in ("stress", "clean", "bootstrap_95") if not isinstance(checks.get(k), dict)]
    if missing:
        raise ValueError(f"{run_dir / 'checks.json'}: no {', '.join(missing)} (damaged, or written by another tool)")
    stress, clean, ci = checks["stress"], checks["clean"], checks["bootstrap_95"]
    return {
        "run": run_dir.name,
        "split": config.get("split", "patient"),
        "model": config.get("model"),
        "augmentation": config.get("augmentation"),
        "framing": config.get("framing", "none"),
        "mixup": config.get("mixup", 0.0),
        "seed": config.get("seed"),
        "n": clean["n"],
        "threshold": checks["threshold"],
        "auc": clean["roc_auc"],
        "auc_low": ci["roc_auc"]["low"],
        "auc_high": ci["roc_auc"]["high"],
        "sensitivity": clean["sensitivity"],
        "specificity": clean["specificity"],
        "stress_mean_auc": stress["mean_auc"],
        "stress_worst_auc": stress["worst_auc"]["roc_auc"],
        "stress_mean_specificity": stress["mean_specificity"],
        "stress_worst_specificity": stress["worst_specificity"]["specificity"],
        "stress_worst_condition": stress["worst_specificity"]["condition"],
        # Runs checked before the explanation figure could fail report the old heat share outside the chest.
        # Runs checked before the framing sweep existed have none: their cells stay empty.
        **_framing(checks),
        "deletion_score": _deletion(checks),
        "deletion_score_average_map": _deletion(checks, "average map"),
    }


def _framing(checks: dict[str, Any]) -> dict[str, Any]:
    worst = (checks.get("framing") or {}).get("worst_in_range") or {}
    return {
        "framing_worst_sensitivity": worst.get("sensitivity"),
        "framing_worst_specificity": worst.get("specificity"),
        "framing_specificity_range": worst.get("specificity_range"),
    }


def _deletion(checks: dict[str, Any], name: str = "Grad-CAM (model)") -> float | None:
    rows = (checks.get("explanation") or {}).get("table") or []
    return next((r["deletion score (all)"] for r in rows if r.get("map") == name), None)


def compare(run_dirs: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs side by side, and per recipe (runs differing only in seed) the mean and spread over seeds."""
    rows = pd.DataFrame([check_row(r) for r in run_dirs])
    keys = ["split", "model", "augmentation", "framing", "mixup"]
    figures = [
        "auc",
        "specificity",
        "stress_mean_auc",
        "stress_worst_auc",
        "stress_mean_specificity",
        "stress_worst_specificity",
        "framing_worst_sensitivity",
        "framing_worst_specificity",
        "deletion_score",
    ]
    grouped = rows.groupby(keys, dropna=False)[figures].agg(["mean", "std", "count"])
    grouped.columns = [f"{a}_{b}" for a, b in grouped.columns]
    return rows, grouped.reset_index()


# ---------------------------------------------------------------- decisions under framing and stress


def sample_groups(frame: pd.DataFrame, limit: int, seed: int = 0) -> pd.DataFrame:
    """At most `limit` films, whole patients at a time, each class in its share: a bootstrap by patient
    on the sample stays a bootstrap by patient."""
    if limit <= 0 or len(frame) <= limit:
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    parts = []
    for _, part in frame.groupby("label"):
        want = round(limit * len(part) / len(frame))
        ids = np.array(part["patient_id"].astype(str).unique())
        rng.shuffle(ids)
        sizes = part["patient_id"].astype(str).value_counts().reindex(ids)
        keep = ids[(sizes.cumsum() <= max(want, 1)).to_numpy()]
        parts.append(part[part["patient_id"].astype(str).isin(set(keep))])
    return pd.concat(parts).sort_index().reset_index(drop=True)


def decision_checks(
    loaded: Any,
    frame: pd.DataFrame,
    threshold: float,
    limit: int = 1500,
    seed: int = 0,
    stress: bool = True,
    rounds: int = 200,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The framing sweep and the stress suite at `threshold`, on films the model never trained on.

    frame: stored predictions (path, label, patient_id, and fold for a cross-fitted ensemble's out-of-fold
    films: each film is then scored by the member that never saw it). At most `limit` films, sampled by
    patient."""
    from pneumo.evaluation import framing as F

    films = sample_groups(frame, limit, seed)
    # Stored predictions name films relative to the project when they lie beside it (../shared/… in a checkout).
    paths = [p if Path(p).is_absolute() else str(PROJECT_ROOT / p) for p in films["path"].astype(str)]
    images = load_images(paths, loaded.input_size)
    if "fold" in films and loaded.member_probabilities(images[:1]).shape[1] > 1:
        folds = films["fold"].to_numpy(int)
        score = lambda batch, rows: F.oof_member(loaded.member_probabilities, folds[rows])(batch)  # noqa: E731
        how = "each film scored by the ensemble member that never trained on it (out of fold)"
    else:
        score = lambda batch, rows: loaded.predict(batch, batch_size=64)  # noqa: E731
        how = "the model on its own held-out films"
    conditions = F.sweep_conditions()
    if stress:
        conditions.update(STRESS)
    probs = F.probabilities(score, images, conditions, progress=progress)
    labels, groups = films["label"].to_numpy(int), films["patient_id"].astype(str).to_numpy()
    n_pos = int(labels.sum())
    how = (
        f"{len(films)} films ({n_pos} pneumonia, {len(films) - n_pos} normal; patients sampled by class), {how}; "
        f"figures at threshold {threshold:.4f} with patient-bootstrap 95 % intervals ({rounds} rounds)"
    )
    return decision_block(labels, groups, probs, threshold, how, rounds, seed)


def decision_block(
    labels: np.ndarray,
    groups: np.ndarray,
    probs: dict[str, np.ndarray],
    threshold: float,
    how: str,
    rounds: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The card's shift_checks.framing block from each condition's probabilities: the framing sweep's rows with
    their cautions, and every other condition (the stress suite) at the same threshold under "stress"."""
    from pneumo.evaluation import framing as F

    names = {f.name for f in F.SWEEP}
    rows = F.decision_report(
        labels, {k: v for k, v in probs.items() if k != "clean"}, groups, threshold, rounds=rounds, seed=seed
    )
    out = F.summary([r for r in rows if r["condition"] in names], threshold, how)
    out["stress"] = [r for r in rows if r["condition"] not in names]
    return out


def sweep_model(
    loaded: Any,
    limit: int = 1500,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    at_recall: float | None = None,
    fold: int | None = None,
) -> dict[str, Any]:
    """The decision checks of a model on the predictions stored beside it (out of fold for a cross-fitted
    ensemble, its held-out films for a single run), at its card's threshold, or with at_recall at the highest
    threshold keeping that sensitivity on every stored prediction: recipes whose cards set their thresholds by
    different rules are then compared at equal recall. fold: a cross-fitted ensemble's fold K alone, scored by
    its member K, so that one member compares with a single run held out on the same fold."""
    from pneumo.core.predictions import read_predictions
    from pneumo.model.loading import stored_predictions_file

    stored = stored_predictions_file(loaded.path)
    if stored is None:
        raise ValueError(
            f"{loaded.path.parent}: no stored predictions beside the model (oof_predictions.csv or "
            "val_predictions.csv); the sweep needs films the model never trained on"
        )
    frame = read_predictions(stored)
    raw = pd.read_csv(stored, usecols=lambda c: c in ("fold", "patient_id"))
    if "patient_id" not in raw:
        raise ValueError(f"{stored.name}: no patient_id column; the intervals resample patients")
    frame = frame.assign(
        patient_id=raw["patient_id"].astype(str).to_numpy(),
        **({"fold": raw["fold"].to_numpy()} if "fold" in raw else {}),
    )
    if fold is not None:
        if "fold" not in frame:
            raise ValueError(f"{stored.name}: no fold column; --fold needs a cross-fitted ensemble's predictions")
        frame = frame[frame["fold"] == fold].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"{stored.name}: no films in fold {fold}")
    threshold = loaded.threshold
    if at_recall is not None:
        from pneumo.evaluation.metrics import threshold_for_recall

        threshold = threshold_for_recall(frame["label"].to_numpy(int), frame["probability"].to_numpy(), at_recall)
    return decision_checks(loaded, frame, threshold, limit=limit, seed=seed, progress=progress)


def map_anatomy(loaded: Any, images: np.ndarray, threshold: float, limit: int = 96, seed: int = 0) -> dict[str, Any]:
    """Where the Grad-CAM maps fall: the share of each map's heat inside the film's lung field and the share of
    maps whose peak lies inside it, per class decided at `threshold`, beside maps that know nothing of the film
    (a flat map's share is the lung field's own share of the film; the average map is the network's spatial
    prior). The lung field is pneumo.data.anatomy's image-analysis estimate. With explanation_faithfulness too,
    explanation_checks computes the maps once for both."""
    return anatomy_of(explain_films(loaded, images, threshold, limit, seed))


def anatomy_of(explained: ExplainedFilms) -> dict[str, Any]:
    """map_anatomy of films already explained (explain_films)."""
    from pneumo.data.anatomy import heat_inside, lung_field, peak_inside

    films, classes, cams, threshold = explained.films, explained.classes, explained.cams, explained.threshold
    fields = [lung_field(x) for x in films]
    maps = {
        "Grad-CAM (model)": cams,
        "average map": np.broadcast_to(cams.mean(axis=0), cams.shape),
        "centred blob": np.broadcast_to(_blob(films.shape[1]), cams.shape),
        "flat map": np.ones_like(cams),
    }
    table = []
    for name, stack in maps.items():
        shares = np.array([heat_inside(m, f.mask) for m, f in zip(stack, fields)])
        peaks = np.array([peak_inside(m, f.mask) for m, f in zip(stack, fields)]) if name != "flat map" else None
        row: dict[str, Any] = {
            "map": name,
            "heat inside lungs": round(float(shares.mean()), 4),
            "peak inside lungs": None if peaks is None else round(float(peaks.mean()), 4),
        }
        for c, label in ((1, "decided PNEUMONIA"), (0, "decided NORMAL")):
            row[f"heat inside lungs, {label}"] = (
                round(float(shares[classes == c].mean()), 4) if (classes == c).any() else None
            )
        table.append(row)
    found = float(np.mean([f.found for f in fields]))
    return {
        "table": table,
        "n": int(len(films)),
        "lung_field_found": round(found, 4),
        "how": (
            f"{len(films)} held-out films decided at {threshold:.4f}; lung field estimated by image analysis "
            f"(found on {found:.0%} of them, a fixed chest box on the others). A flat map's share is the "
            "lung field's own share of the film: a map that looks at the lungs scores well above it."
        ),
    }
