"""The shortcut audit: how well cues that are not anatomy predict the label of a labelled collection.

A collection whose classes differ in framing, borders, burned-in text or exposure lets a network learn those
instead of the lungs, and a figure measured on the same collection cannot tell. Each cue below is measured on
every film; a gradient-boosted classifier on that cue alone, cross-validated by patient, says how well it predicts
the label (ROC AUC 0.5: no better than chance). All cues together give the collection's total non-anatomical
signal. The framing distribution per class is reported beside them, and, with a model, its decision under the
framing sweep (from its card).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pneumo.data.anatomy import lung_field

Progress = Callable[[int, int], None]
BORDER = 0.04  # the outer 4 % of each side: the film's frame
CORNER = 0.15  # each corner's square, as a share of the side: where labels and time stamps are burned in


@dataclass(frozen=True)
class Cue:
    name: str
    kind: str  # framing, border, text, intensity
    meaning: str


CUES = (
    Cue("lung field share", "framing", "share of the film the lung field covers (tighter framing: larger)"),
    Cue("lung field top", "framing", "top of the lung field, as a share of the height"),
    Cue("lung field bottom", "framing", "bottom of the lung field, as a share of the height"),
    Cue("lung field width", "framing", "width of the lung field, as a share of the film's"),
    Cue("border brightness", "border", "mean brightness of the film's outer 4 % frame"),
    Cue("corner marks", "text", "share of near-white pixels in the four corners (labels, markers, time stamps)"),
    Cue("5th percentile", "intensity", "the film's 5th intensity percentile"),
    Cue("mean", "intensity", "mean intensity"),
    Cue("spread", "intensity", "standard deviation of intensity"),
    Cue("dark share", "intensity", "share of pixels below 0.1"),
)


def cues(img: np.ndarray) -> dict[str, float]:
    """Every cue of one 2-D [0, 1] film."""
    img = np.asarray(img, np.float32)
    h, w = img.shape
    field = lung_field(img)
    x0, y0, x1, y1 = field.box
    b = max(1, round(BORDER * min(h, w)))
    frame = np.ones_like(img, bool)
    frame[b:-b, b:-b] = False
    c = max(2, round(CORNER * min(h, w)))
    corners = np.concatenate([img[:c, :c].ravel(), img[:c, -c:].ravel(), img[-c:, :c].ravel(), img[-c:, -c:].ravel()])
    return {
        "lung field share": field.share,
        "lung field top": y0,
        "lung field bottom": y1,
        "lung field width": x1 - x0,
        "border brightness": float(img[frame].mean()),
        "corner marks": float((corners > 0.92).mean()),
        "5th percentile": float(np.percentile(img, 5)),
        "mean": float(img.mean()),
        "spread": float(img.std()),
        "dark share": float((img < 0.1).mean()),
    }


def cue_table(
    paths: list[str], read: Callable[[str], np.ndarray], progress: Progress | None = None, workers: int = 2
) -> pd.DataFrame:
    """One row of cues per film (OpenCV releases the GIL: threads share the work); an unreadable film's row is
    empty, with the reason in `error`."""

    def one(path: str) -> dict[str, Any]:
        try:
            return {"path": path, **cues(read(path))}
        except (OSError, ValueError) as exc:
            return {"path": path, "error": str(getattr(exc, "reason", exc))}

    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, row in enumerate(pool.map(one, paths)):
            rows.append(row)
            if progress and (i + 1 == len(paths) or (i + 1) % 64 == 0):
                progress(i + 1, len(paths))
    return pd.DataFrame(rows)


def _oof_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    scores = np.zeros(len(y))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(x, y, groups):
        model = HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.1, random_state=seed)
        model.fit(x[train], y[train])
        scores[held] = model.predict_proba(x[held])[:, 1]
    return float(roc_auc_score(y, scores))


def audit(table: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Each cue's cross-validated ROC AUC for the label (patients kept within one fold), all cues together, and
    the framing distribution per class. table: cue_table's rows, in the order of labels and groups."""
    ok = table["error"].isna().to_numpy() if "error" in table else np.ones(len(table), bool)
    y, g = np.asarray(labels, int)[ok], np.asarray(groups).astype(str)[ok]
    feats = table.loc[ok, [c.name for c in CUES]].to_numpy(float)
    if len(np.unique(y)) < 2 or min(np.bincount(y)) < folds or len(np.unique(g)) < folds:
        raise ValueError(
            f"the shortcut audit needs at least {folds} patients and {folds} films of each class; "
            f"got {int((y == 0).sum())} normal and {int((y == 1).sum())} pneumonia films"
        )
    rows: list[dict[str, Any]] = []
    for i, cue in enumerate(CUES):
        auc = _oof_auc(feats[:, [i]], y, g, folds, seed)
        rows.append(
            {"cue": cue.name, "kind": cue.kind, "meaning": cue.meaning, "roc_auc": auc, "strength": abs(auc - 0.5) * 2}
        )
    rows.sort(key=lambda r: -r["strength"])
    together = _oof_auc(feats, y, g, folds, seed)
    framing = []
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        part = table.loc[ok].loc[y == label]
        for cue in (c for c in CUES if c.kind == "framing"):
            q = part[cue.name].quantile([0.1, 0.5, 0.9]).to_numpy()
            framing.append(
                {"class": name, "cue": cue.name, "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}
            )
    strongest = rows[0]
    return {
        "n": int(ok.sum()),
        "unreadable": int((~ok).sum()),
        "folds": folds,
        "cues": rows,
        "all_cues_roc_auc": together,
        "framing_by_class": framing,
        "strongest": strongest["cue"],
        "how": (
            f"Each cue alone, and all {len(CUES)} together, predict the label with a gradient-boosted classifier "
            f"({folds}-fold cross-validation by patient, {int(ok.sum())} films). ROC AUC 0.5 is chance; a cue far "
            "from it is something other than the lungs that tells the classes apart in this collection."
        ),
    }


def audit_folder(root: str, folds: int = 5, progress: Progress | None = None) -> dict[str, Any]:
    """The shortcut audit of a labelled folder (any layout pneumo.data.collection.scan reads)."""
    from pneumo.data.collection import read_item, scan

    frame = scan(root).frame
    frame = frame[frame["label"].isin([0, 1])].reset_index(drop=True)
    table = cue_table(frame["path"].astype(str).tolist(), read_item, progress)
    return audit(table, frame["label"].to_numpy(), frame["patient_id"].astype(str).to_numpy(), folds)
