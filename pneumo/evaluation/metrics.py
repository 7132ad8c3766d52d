"""Metrics at a threshold, curves, calibration, threshold choice, and evaluation of a labelled folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pneumo.core.files import read_json
from pneumo.data.collection import pixel_hash, read_item

Progress = Callable[[int, int], None]


def _arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=int).reshape(-1)
    p = np.asarray(y_prob, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    return y, p


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def rank_auc(y_true: Any, y_prob: Any) -> float:
    """ROC AUC as the Mann-Whitney statistic over average ranks: the same number as scikit-learn's
    roc_auc_score (ties count one half), without its input validation, which costs ~10 ms a call and
    dominated the patient bootstraps (hundreds of rounds per condition). Both classes must be present."""
    from scipy.stats import rankdata

    y, p = _arrays(y_true, y_prob)
    positive = y == 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if not n1 or not n0:
        raise ValueError("ROC AUC needs both classes")
    ranks = rankdata(p)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def metrics_at(y_true: Any, y_prob: Any, threshold: float) -> dict[str, Any]:
    """Screening metrics with 'pneumonia' meaning probability >= threshold."""
    y, p = _arrays(y_true, y_prob)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else None,
        "pr_auc": float(skm.average_precision_score(y, p)) if both else None,
        "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else None,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "flagged_fraction": _ratio(tp + fp, len(y)),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def threshold_for_recall(y_true: Any, y_prob: Any, target: float = 0.98) -> float:
    """The highest threshold whose sensitivity (recall) is at least target."""
    y, p = _arrays(y_true, y_prob)
    if not (y == 1).any():
        raise ValueError("no positive cases: recall is undefined")
    # Candidate thresholds are the scores of the positives: recall only changes there.
    positives = np.sort(p[y == 1])[::-1]
    needed = int(np.ceil(target * len(positives) - 1e-9))
    needed = min(max(needed, 1), len(positives))
    return float(positives[needed - 1])


def max_f1_threshold(y_true: Any, y_prob: Any) -> float:
    y, p = _arrays(y_true, y_prob)
    precision, recall, thresholds = skm.precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    return float(thresholds[int(np.argmax(f1))])


def youden_threshold(y_true: Any, y_prob: Any) -> float:
    y, p = _arrays(y_true, y_prob)
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


THRESHOLD_RULES: dict[str, Callable[..., float]] = {
    "target recall": threshold_for_recall,
    "max F1": max_f1_threshold,
    "Youden J": youden_threshold,
}


@dataclass
class Curves:
    roc: pd.DataFrame  # fpr, tpr, threshold
    pr: pd.DataFrame  # recall, precision, threshold


def curves(y_true: Any, y_prob: Any) -> Curves:
    y, p = _arrays(y_true, y_prob)
    fpr, tpr, roc_t = skm.roc_curve(y, p)
    precision, recall, pr_t = skm.precision_recall_curve(y, p)
    return Curves(
        roc=pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(roc_t, 1.0)}),
        pr=pd.DataFrame({"recall": recall[:-1], "precision": precision[:-1], "threshold": pr_t}),
    )


def calibration(y_true: Any, y_prob: Any, bins: int = 10) -> pd.DataFrame:
    """Observed pneumonia rate against mean predicted probability, per probability bin (empty bins left out).

    Bin k holds k/bins <= p < (k+1)/bins, the last also p = 1: the counts, rates and means all come from this
    one assignment. The edges are k/bins as divided, so a probability written 0.3 falls in [0.3, 0.4).
    """
    y, p = _arrays(y_true, y_prob)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if len(p) and (np.isnan(p).any() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.arange(bins + 1) / bins
    which = np.minimum(np.searchsorted(edges, p, side="right") - 1, bins - 1)
    counts = np.bincount(which, minlength=bins)
    positives = np.bincount(which, weights=y, minlength=bins)
    totals = np.bincount(which, weights=p, minlength=bins)
    kept = counts > 0
    return pd.DataFrame(
        {
            "predicted": totals[kept] / counts[kept],
            "observed": positives[kept] / counts[kept],
            "count": counts[kept],
        }
    )


def predict_frame(
    loaded: Any,
    frame: pd.DataFrame,
    batch_size: int = 32,
    progress: Progress | None = None,
    hashes: bool = False,
) -> pd.DataFrame:
    """Probabilities for every row of a dataset frame; unreadable images get NaN and their error.
    hashes: also each film's pixel hash (data.pixel_hash), for the leakage check, in the same decode.

    The one batched path of the CLI's evaluate and the app's folder views: images are decoded on every
    core (the decoders release the GIL) while the model works batch by batch.
    """

    def read(path: str) -> tuple[np.ndarray | None, str | None, str | None]:
        try:
            image = read_item(path)
        except (ValueError, OSError) as exc:
            return None, str(exc), None
        return image, None, pixel_hash(image) if hashes else None

    paths = frame["path"].tolist()
    probs = np.full(len(paths), np.nan)
    errors: list[str | None] = [None] * len(paths)
    digests: list[str | None] = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pending = pool.map(read, paths)
        for start in range(0, len(paths), batch_size):
            images, index = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                image, errors[i], digests[i] = next(pending)
                if image is not None:
                    images.append(image)
                    index.append(i)
            if images:
                probs[index] = loaded.predict(images, batch_size=batch_size)
            if progress:
                progress(min(start + batch_size, len(paths)), len(paths))
    out = frame.copy()
    out["probability"] = probs
    out["error"] = errors
    if hashes:
        out["hash"] = digests
    return out


def leakage(model_path: str | Path, hashes: Any) -> dict[str, Any] | None:
    """How many of a folder's images (by decoded-pixel hash) the model trained or was validated on;
    None when the model kept no record of its images."""
    seen = read_json(Path(model_path).with_name("image_hashes.json"))
    if not isinstance(seen, dict):
        return None
    folder = {h for h in hashes if isinstance(h, str)}
    train, val = folder & set(seen.get("train", [])), folder & set(seen.get("validation", []))
    return {
        "n": len(folder),
        "train": len(train),
        "validation": len(val),
        "fraction": (len(train) + len(val)) / len(folder) if folder else 0.0,
    }
