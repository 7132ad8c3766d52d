"""Checks that can tell a robust recipe from a fragile one: shifted hold-out splits, an acquisition
stress suite, bootstrap spread, and where the explanations fall.

A random patient-level split of one collection is saturated (every candidate scores AUC ≈ 0.999), so
it cannot rank recipes. These checks hold out a different population instead:

- ``temporal``: the lowest-numbered patients of each file-name series and class (a proxy for another
  acquisition period: patient numbers were assigned in order);
- ``family``: one whole series of normal films (``NORMAL2-IM-*``) against a patient-level draw of the
  pneumonias, so specificity is measured on normals from a series the model never saw;
- the stress suite: the held-out films under exposure, gamma, contrast, blur, sharpening, noise, crop,
  zoom, rotation, JPEG re-compression, resampling and CLAHE.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from . import data as D
from . import transforms as T
from .evaluate import metrics_at, threshold_for_recall
from .explain import gradcam
from .imaging import resize
from .runs import read_json

SPLITS = ("patient", "fold", "temporal", "family")
_NUMBER = re.compile(r"(\d+)$")


def series(path: str) -> str:
    """The file-name series of a Kermany-style image: NORMAL2-IM, IM or person; '' otherwise."""
    name = Path(path).name.upper()
    if name.startswith("NORMAL2-IM-"):
        return "NORMAL2-IM"
    if name.startswith("IM-"):
        return "IM"
    if name.startswith("PERSON"):
        return "person"
    return ""


def patient_number(patient_id: str) -> int | None:
    m = _NUMBER.search(str(patient_id))
    return int(m.group(1)) if m and not str(patient_id).endswith((".png", ".jpeg", ".jpg")) else None


def _group_frame(frame: pd.DataFrame, duplicates: list[list[str]]) -> pd.DataFrame:
    out = frame.copy()
    out["group"] = D.patient_groups(frame, duplicates)
    out["series"] = [series(p) for p in frame["path"]]
    out["number"] = [patient_number(p) for p in frame["patient_id"]]
    return out


def holdout(
    frame: pd.DataFrame,
    kind: str = "temporal",
    fraction: float = 0.15,
    seed: int = 0,
    duplicates: list[list[str]] | None = None,
    fold: int = 0,
    folds: int = 5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the non-test images into (train, held-out) by kind: patient, fold, temporal or family.

    ``fold`` holds out fold `fold` of `folds` (StratifiedGroupKFold by patient and duplicate group,
    shuffled by `seed`): the folds of one seed partition the images, so a run per fold gives every film
    a prediction from a model that never saw it.

    Every split keeps each patient and each exact-duplicate group on one side. Where the file names
    carry no series or patient number (not a Kermany-style collection), temporal and family fall back
    to the patient split and say so through ``describe_holdout``.
    """
    if kind not in SPLITS:
        raise ValueError(f"unknown split '{kind}'; choose one of: {', '.join(SPLITS)}")
    pool = frame[frame["split"] != "test"].reset_index(drop=True)
    if duplicates is None:
        duplicates = D.duplicate_groups(D.inspect_images(pool["path"]))
    if kind == "fold":
        return D.fold_split(pool, fold, folds, seed, duplicates)
    if kind == "patient" or not _has_series(pool):
        return D.split(pool, fraction, seed, duplicates)
    g = _group_frame(pool, duplicates)
    if kind == "temporal":
        held_groups = _lowest_numbers(g, fraction)
    else:
        normals = set(g.loc[(g["label"] == 0) & (g["series"] == "NORMAL2-IM"), "group"])
        positives = g[(g["label"] == 1) & ~g["group"].isin(normals)]
        _, held_pos = D.split(positives.drop(columns=["group", "series", "number"]), max(fraction, 0.1), seed, duplicates)
        held_groups = normals | set(g.loc[g["path"].isin(held_pos["path"]), "group"])
    held = g["group"].isin(held_groups)
    if pool.loc[held, "label"].nunique() < 2 or pool.loc[~held, "label"].nunique() < 2:
        raise D.DatasetError(f"a {kind} split needs both classes on both sides")
    return pool[~held].reset_index(drop=True), pool[held].reset_index(drop=True)


def _has_series(frame: pd.DataFrame) -> bool:
    known = frame["path"].map(series) != ""
    return bool(known.mean() > 0.9) and frame.loc[known, "label"].nunique() == 2


def _lowest_numbers(g: pd.DataFrame, fraction: float) -> set[str]:
    """Groups whose smallest patient number is among the lowest `fraction` of images in their series and class."""
    held: set[str] = set()
    for _, part in g[g["number"].notna()].groupby(["label", "series"]):
        first = part.groupby("group")["number"].min().sort_values(kind="stable")
        sizes = part.groupby("group").size().reindex(first.index)
        take = sizes.cumsum() <= max(1, round(fraction * len(part)))
        held |= set(first.index[take])
    return held


def describe_holdout(kind: str, frame: pd.DataFrame, fold: int = 0, folds: int = 5) -> str:
    if kind == "fold":
        return (f"fold {fold + 1} of {folds} (StratifiedGroupKFold by patient and exact-duplicate group): "
                "in-distribution, out of fold")
    if kind == "patient" or not _has_series(frame):
        return "random patient-level draw (StratifiedGroupKFold by patient and exact-duplicate group)"
    if kind == "temporal":
        return "lowest-numbered patients of each file-name series and class (a proxy for another period)"
    return "the whole NORMAL2-IM series of normals and a patient-level draw of pneumonias"


# ---------------------------------------------------------------- stress suite

Transform = Callable[[np.ndarray], np.ndarray]

# Fixed parameter values of the families in ``transforms``, the ones training augmentation draws from
# (the names are what stored cards and reports refer to: keep them). Geometry meets black at the border
# here, as a real crop or zoom-out does; augmentation reflects instead.
STRESS: dict[str, Transform] = {
    "darker (exposure ×0.7)": lambda x: T.exposure(x, 0.7),
    "brighter (+0.15)": lambda x: T.brightness(x, 0.15),
    "gamma 0.6": lambda x: T.gamma(x, 0.6),
    "gamma 1.6": lambda x: T.gamma(x, 1.6),
    "low contrast ×0.6": lambda x: T.contrast(x, 0.6),
    "high contrast ×1.4": lambda x: T.contrast(x, 1.4),
    "blur σ=2 px": lambda x: T.blur(x, sigma=2.0, amount=1.0),
    "sharpened": lambda x: T.blur(x, sigma=2.0, amount=-1.0),  # unsharp mask: the σ=2 detail layer doubled
    "noise σ=0.04": lambda x: T.noise(x, 0.04, seed=0),
    "crop 85 % (zoom in)": lambda x: T.affine(x, scale=1 / 0.85),
    "zoom out 85 %": lambda x: T.affine(x, scale=0.85),
    "rotate +8°": lambda x: T.affine(x, rotate_deg=8.0),
    "rotate -8°": lambda x: T.affine(x, rotate_deg=-8.0),
    "JPEG quality 20": lambda x: T.jpeg(x, 20),
    "resampled from 96 px": lambda x: T.resample(x, 96),
    "CLAHE": lambda x: T.clahe(x, clip_limit=2.0, tiles=8),
}


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
    loaded: Any, images: np.ndarray, conditions: dict[str, Transform] | None = None,
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
        draws["roc_auc"].append(roc_auc_score(y, p))
        draws["sensitivity"].append(float(pred[y == 1].mean()))
        draws["specificity"].append(float((~pred[y == 0]).mean()))
    return {k: {"low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5)), "sd": float(np.std(v))}
            for k, v in draws.items() if v}


# ---------------------------------------------------------------- explanation faithfulness

DELETION_STEPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # share of the film's pixels deleted, most heated first


def _blob(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    return np.exp(-(((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / (2 * 0.18**2))).astype(np.float32)


def deletion_score(loaded: Any, images: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                   seed: int = 0) -> np.ndarray:
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


def explanation_faithfulness(loaded: Any, images: np.ndarray, threshold: float, limit: int = 96,
                             seed: int = 0) -> dict[str, Any]:
    """The deletion score of the model's Grad-CAM maps beside four baselines that know nothing of the
    film: a random map, a centred blob, the average of the model's own maps (the network's spatial prior,
    the same for every film) and a flat map. Per class decided at `threshold`. The maps beat the average
    map only if they say something about each film."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(limit, len(images)), replace=False))
    films = images[pick]
    p = loaded.predict(films, batch_size=64)
    classes = (p >= threshold).astype(int)
    cams = np.stack([gradcam(loaded, x, target=int(c)) for x, c in zip(films, classes)]).astype(np.float32)
    side = films.shape[1]
    baselines = {
        "Grad-CAM (model)": cams,
        "average map": np.broadcast_to(cams.mean(axis=0), cams.shape),
        "centred blob": np.broadcast_to(_blob(side), cams.shape),
        "random map": rng.random(cams.shape).astype(np.float32),
        "flat map": np.zeros_like(cams),
    }
    scores = {name: deletion_score(loaded, films, maps, classes, seed) for name, maps in baselines.items()}
    table = []
    for name, values in scores.items():
        row = {"map": name, "deletion score (all)": round(float(values.mean()), 4)}
        for c, label in ((1, "decided PNEUMONIA"), (0, "decided NORMAL")):
            row[label] = round(float(values[classes == c].mean()), 4) if (classes == c).any() else None
        table.append(row)
    model, average = scores["Grad-CAM (model)"].mean(), scores["average map"].mean()
    return {"table": table, "n": int(len(films)), "n_pneumonia": int(classes.sum()), "threshold": float(threshold),
            "beats_average_map": bool(model < average),
            "how": (f"Deletion score: the mean score of the decided class as the most heated 0–50 % of pixels are "
                    f"blurred away, over {len(films)} films decided at threshold {threshold:.4f}; lower means the map "
                    "found what drives the score. Baselines know nothing of the film.")}


# ---------------------------------------------------------------- comparing runs


def check_row(run_dir: str | Path) -> dict[str, Any]:
    """One run's figures on every check (from its checks.json and config.json), for a comparison table."""
    run_dir = Path(run_dir)
    checks = read_json(run_dir / "checks.json")
    if not isinstance(checks, dict):
        raise ValueError(f"{run_dir}: no checks.json (train the run with this version of pneumo)")
    config = read_json(run_dir / "config.json", {}) or {}
    stress, clean, ci = checks["stress"], checks["clean"], checks["bootstrap_95"]
    return {
        "run": run_dir.name, "split": config.get("split", "patient"), "model": config.get("model"),
        "augmentation": config.get("augmentation"), "mixup": config.get("mixup", 0.0), "seed": config.get("seed"),
        "n": clean["n"], "threshold": checks["threshold"],
        "auc": clean["roc_auc"], "auc_low": ci["roc_auc"]["low"], "auc_high": ci["roc_auc"]["high"],
        "sensitivity": clean["sensitivity"], "specificity": clean["specificity"],
        "stress_mean_auc": stress["mean_auc"], "stress_worst_auc": stress["worst_auc"]["roc_auc"],
        "stress_mean_specificity": stress["mean_specificity"],
        "stress_worst_specificity": stress["worst_specificity"]["specificity"],
        "stress_worst_condition": stress["worst_specificity"]["condition"],
        # Runs checked before the explanation figure could fail report the old heat share outside the chest.
        "deletion_score": _deletion(checks),
        "deletion_score_average_map": _deletion(checks, "average map"),
    }


def _deletion(checks: dict[str, Any], name: str = "Grad-CAM (model)") -> float | None:
    rows = (checks.get("explanation") or {}).get("table") or []
    return next((r["deletion score (all)"] for r in rows if r.get("map") == name), None)


def compare(run_dirs: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs side by side, and per recipe (runs differing only in seed) the mean and spread over seeds."""
    rows = pd.DataFrame([check_row(r) for r in run_dirs])
    keys = ["split", "model", "augmentation", "mixup"]
    figures = ["auc", "specificity", "stress_mean_auc", "stress_worst_auc", "stress_mean_specificity",
               "stress_worst_specificity", "deletion_score"]
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


def decision_checks(loaded: Any, frame: pd.DataFrame, threshold: float, limit: int = 1500, seed: int = 0,
                    stress: bool = True, rounds: int = 200,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The framing sweep and the stress suite at `threshold`, on films the model never trained on.

    frame: stored predictions (path, label, patient_id, and fold for a cross-fitted ensemble's out-of-fold
    films: each film is then scored by the member that never saw it). At most `limit` films, sampled by
    patient."""
    from . import framing as F

    films = sample_groups(frame, limit, seed)
    images = load_images(films["path"].tolist(), loaded.input_size)
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
    names = {f.name for f in F.SWEEP}
    rows = F.decision_report(labels, probs, groups, threshold, rounds=rounds, seed=seed)
    n_pos = int(labels.sum())
    how = (f"{len(films)} films ({n_pos} pneumonia, {len(films) - n_pos} normal; patients sampled by class), {how}; "
           f"figures at threshold {threshold:.4f} with patient-bootstrap 95 % intervals ({rounds} rounds)")
    out = F.summary([r for r in rows if r["condition"] in names], threshold, how)
    out["stress"] = [r for r in rows if r["condition"] not in names]
    out["probabilities"] = {k: v.tolist() for k, v in probs.items()}
    out["films"] = films["path"].tolist()
    return out
