"""Label audit: films whose given label their out-of-fold prediction contradicts (confident learning),
and a reviewer's verdicts on them, kept beside the data.

The scores come from predictions out of fold, from a model that never saw the film: in-sample scores
agree with the labels the model memorised and find nothing. cleanlab's confident learning estimates
each class's noise rate from the confident joint and flags the films most likely mislabelled; the
images themselves are never touched. A reviewer's verdict for each suspect (keep, relabel, exclude) is
a CSV that `train --label-review FILE` applies.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.files import atomic_write_text, now_iso
from pneumo.core.paths import CLASS_NAMES
from pneumo.data.collection import scan
from pneumo.model.loading import OOF_FILE, load_model

# cleanlab and pneumo.evaluation.metrics (scikit-learn) are imported where an audit runs: pneumo.training.data imports
# this module only to apply a review and needs neither.

REVIEW_FILE = "label_review.csv"
VERDICTS = ("keep", "relabel", "exclude")
REVIEW_COLUMNS = ["path", "label", "verdict", "score", "reviewed"]


class ReviewError(ValueError):
    """A label-review file that cannot be applied; the message names the file and the row."""


def find_suspects(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Per film: cleanlab's label-quality score (self-confidence: the out-of-fold probability of the
    given label; low is suspicious) and whether confident learning flags it as a label issue."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-6, 1 - 1e-6)
    pred_probs = np.column_stack([1.0 - p, p])
    # n_jobs=1: cleanlab's multiprocessing pool costs more than the work on a few thousand films.
    suspect = find_label_issues(y, pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)
    score = get_label_quality_scores(y, pred_probs, method="self_confidence")
    return pd.DataFrame({"score": score, "suspect": suspect})


def audit(predictions: pd.DataFrame) -> pd.DataFrame:
    """Every film of `predictions` (path, label, probability[, fold]) with its score and flag, the most
    suspicious first."""
    missing = {"path", "label", "probability"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack the column(s) {', '.join(sorted(missing))}")
    ok = predictions[predictions["probability"].notna()].reset_index(drop=True)
    if ok["label"].nunique() < 2:
        raise ValueError("a label audit needs films of both classes")
    found = find_suspects(ok["label"].to_numpy(), ok["probability"].to_numpy())
    out = pd.concat([ok, found], axis=1)
    return out.sort_values("score", kind="stable").reset_index(drop=True)


def summary(audited: pd.DataFrame) -> dict[str, Any]:
    """How many films are suspects, per class."""
    suspects = audited[audited["suspect"]]
    return {
        "n": int(len(audited)),
        "suspects": int(len(suspects)),
        "suspect_share": float(len(suspects) / max(len(audited), 1)),
        "suspects_by_label": {str(k): int(v) for k, v in suspects["label"].value_counts().sort_index().items()},
        "method": "cleanlab find_label_issues (confident learning, prune_by_noise_rate) on out-of-fold "
        "probabilities; score = self-confidence",
    }


def audit_folder(data: str | Path, model_path: str | Path | None = None, progress: Any = None) -> pd.DataFrame:
    """Audit a labelled collection: films with a stored out-of-fold prediction of the model use it
    (source "out of fold"); the others are predicted by the model itself (source "model": out of sample
    only if the model never trained on them, which evaluate.leakage tells)."""
    from pneumo.evaluation.metrics import predict_frame

    loaded = load_model(model_path)
    frame = scan(data).frame
    stored_path = loaded.path.with_name(OOF_FILE)
    stored = pd.read_csv(stored_path) if stored_path.exists() else pd.DataFrame(columns=["path", "probability"])
    oof = dict(zip((_key(p) for p in stored["path"]), stored["probability"]))
    known = np.array([_key(p) in oof for p in frame["path"]], dtype=bool)
    frame = frame.assign(
        probability=[oof.get(_key(p), np.nan) for p in frame["path"]], source=np.where(known, "out of fold", "model")
    )
    if (~known).any():
        predicted = predict_frame(loaded, frame[~known], progress=progress)
        frame.loc[~known, "probability"] = predicted["probability"].to_numpy()
    return audit(frame[["path", "label", "probability", "source"]])


def review_path(data_root: str | Path) -> Path:
    """Where a collection's label review lives: beside its films, never inside a class folder."""
    root = Path(data_root)
    return (root.parent if root.is_file() else root) / REVIEW_FILE


def read_review(path: str | Path) -> pd.DataFrame:
    """A label-review CSV, validated row by row; ReviewError names the first bad row."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ReviewError(f"{path}: cannot be read as a label review ({exc})") from exc
    missing = {"path", "verdict"} - set(frame.columns)
    if missing:
        raise ReviewError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    for i, verdict in enumerate(frame["verdict"], start=2):
        if verdict not in VERDICTS:
            raise ReviewError(f"{path}, row {i}: verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
    return frame


def write_review(path: str | Path, verdicts: dict[str, str], audited: pd.DataFrame | None = None) -> Path:
    """Merge verdicts {film path: verdict} into the review CSV at path (atomically; earlier verdicts on
    other films are kept). The films themselves are never touched."""
    path = Path(path)
    bad = {v for v in verdicts.values() if v not in VERDICTS}
    if bad:
        raise ReviewError(f"verdicts must be one of {', '.join(VERDICTS)}; got {', '.join(sorted(bad))}")
    rows: dict[str, dict[str, str]] = {}
    if path.exists():
        for r in read_review(path).to_dict("records"):
            rows[r["path"]] = {c: str(r.get(c, "")) for c in REVIEW_COLUMNS}
    info: dict[Any, Any] = {} if audited is None else {t.path: t for t in audited.itertuples()}
    for film, verdict in verdicts.items():
        seen = info.get(film)
        rows[film] = {
            "path": film,
            "label": "" if seen is None else str(int(seen.label)),
            "verdict": verdict,
            "score": "" if seen is None else f"{seen.score:.6f}",
            "reviewed": now_iso(),
        }
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REVIEW_COLUMNS)
    writer.writeheader()
    writer.writerows(rows.values())
    atomic_write_text(path, buf.getvalue())
    return path


def apply_review(frame: pd.DataFrame, review: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The dataset frame with verdicts applied: 'exclude' drops the film, 'relabel' flips its label,
    'keep' changes nothing. Films are matched by resolved path, then by class folder and file name."""
    verdicts = read_review(review)
    by_key: dict[str, str] = {}
    for film, verdict in zip(verdicts["path"], verdicts["verdict"]):
        by_key[_key(film)] = verdict
    keys = [_key(p) for p in frame["path"]]
    chosen = [by_key.get(k) for k in keys]
    out = frame.copy()
    relabel = np.array([c == "relabel" for c in chosen])
    out.loc[relabel, "label"] = 1 - out.loc[relabel, "label"]
    if "class_name" in out.columns:
        out.loc[relabel, "class_name"] = [CLASS_NAMES[int(v)] for v in out.loc[relabel, "label"]]
    keep = np.array([c != "exclude" for c in chosen])
    counts = {v: int(sum(c == v for c in chosen)) for v in VERDICTS}
    counts["unmatched"] = len(set(by_key) - set(keys))
    return out[keep].reset_index(drop=True), counts


def _key(path: str) -> str:
    # Class folder and file name: a review written on one machine applies to the same collection elsewhere.
    p = Path(str(path))
    return f"{p.parent.name.upper()}/{p.name}"
