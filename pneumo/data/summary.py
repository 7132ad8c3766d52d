"""What an analyst wants to know about a labelled collection before training on it: counts by split and class,
imbalance and class weights (of the films that decode), patients, subtypes, duplicates, image statistics, and the
films left out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.paths import CLASS_NAMES
from pneumo.data.imagestats import Progress, duplicate_groups, inspect_images
from pneumo.data.layouts import SPLIT_NAMES, Dataset, scan
from pneumo.data.links import LinkReport

# scikit-learn is imported where used: the dashboard imports this module at start, and scikit-learn adds ~2 s.


@dataclass
class Summary:
    """What an analyst wants to know about a labelled collection before training on it."""

    root: str
    layout: str
    n_images: int
    counts: pd.DataFrame  # rows: split, columns: class names
    imbalance_ratio: float  # majority / minority class count
    class_weights: dict[int, float]
    patients_per_class: dict[str, int]
    images_per_patient: pd.Series  # index: patient_id
    subtypes: dict[str, int]
    duplicate_groups: list[list[str]]
    image_stats: pd.DataFrame  # path, class_name, width, height, mean, std, hash (of the decoded pixels)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    links: LinkReport = field(default_factory=LinkReport)  # films reached through symbolic links
    # Films that decode: the imbalance and the class weights are computed on these only (a weight from files
    # that cannot be read is computed from nothing: 100,000 empty files once reported "balanced" weights).
    n_readable: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "n_images": self.n_images,
            "n_readable": self.n_images if self.n_readable is None else self.n_readable,
            "counts": {split: {k: int(v) for k, v in row.items()} for split, row in self.counts.iterrows()},
            # null, not Infinity or NaN (neither is JSON): one class, or no readable film, has no ratio
            "imbalance_ratio": round(self.imbalance_ratio, 3) if math.isfinite(self.imbalance_ratio) else None,
            "class_weights": {CLASS_NAMES[k]: round(v, 4) for k, v in self.class_weights.items()},
            "patients_per_class": self.patients_per_class,
            "images_per_patient": {
                "mean": round(float(self.images_per_patient.mean()), 3) if len(self.images_per_patient) else 0.0,
                "max": int(self.images_per_patient.max()) if len(self.images_per_patient) else 0,
                "patients_with_several": int((self.images_per_patient > 1).sum()),
            },
            "subtypes": self.subtypes,
            "duplicate_groups": self.duplicate_groups,
            "image_size": _describe(self.image_stats, ["width", "height"]),
            "intensity": _describe(self.image_stats, ["mean", "std"]),
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "links": self.links.to_dict(),
        }


def _describe(frame: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, float]]:
    if frame.empty:
        return {}
    desc = frame[columns].describe().loc[["min", "mean", "max"]]
    return {c: {k: round(float(v), 4) for k, v in desc[c].items()} for c in columns}


def summarize(
    root: str | Path | Dataset,
    progress: Progress | None = None,
    cache_dir: str | Path | None = None,
    *,
    follow_links: bool = False,
    allowed_roots: Sequence[str | Path] | None = None,
) -> Summary:
    """Counts, imbalance, patients, subtypes, duplicates and image statistics for a labelled collection
    (the decoded statistics kept in cache_dir, see inspect_images). follow_links and allowed_roots: which
    symbolic links to films are followed (see scan); the summary's ``links`` counts them.

    The counts are of the films listed; the imbalance ratio and the class weights are of the films that
    decode (what training can use): with none readable there are no weights (an empty dict) and no ratio
    (NaN; null in to_dict), never figures computed from nothing."""
    dataset = root if isinstance(root, Dataset) else scan(root, follow_links=follow_links, allowed_roots=allowed_roots)
    frame = dataset.frame
    stats = inspect_images(frame["path"], progress, cache_dir=cache_dir)
    merged = frame.merge(stats, on="path", how="left")
    unreadable = [(r.path, r.error) for r in merged.itertuples() if isinstance(r.error, str)] + dataset.problems
    readable = merged[merged["error"].isna()]
    counts = (
        frame.groupby(["split", "class_name"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=list(CLASS_NAMES), fill_value=0)
    )
    counts = counts.reindex(
        [s for s in (*SPLIT_NAMES, *sorted(set(counts.index) - set(SPLIT_NAMES))) if s in counts.index]
    )
    per_class = readable["label"].value_counts()
    minority = per_class.min() if len(per_class) == 2 else 0
    imbalance = float(per_class.max() / minority) if minority else float("inf") if len(per_class) else float("nan")
    return Summary(
        root=str(dataset.root),
        layout=dataset.layout,
        n_images=len(frame),
        counts=counts,
        imbalance_ratio=imbalance,
        class_weights=class_weights(readable["label"].to_numpy()),
        patients_per_class={c: int(frame.loc[frame.class_name == c, "patient_id"].nunique()) for c in CLASS_NAMES},
        images_per_patient=frame.groupby("patient_id").size().sort_values(ascending=False),
        subtypes={str(k): int(v) for k, v in frame.loc[frame.subtype != "", "subtype"].value_counts().items()},
        duplicate_groups=duplicate_groups(stats),
        image_stats=readable[["path", "class_name", "width", "height", "mean", "std", "hash"]].reset_index(drop=True),
        unreadable=unreadable,
        links=dataset.links,
        n_readable=len(readable),
    )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """'Balanced' class weights (n_samples / (n_classes × count)) for the classes present."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).astype(int)
    present = np.unique(labels)
    if len(present) == 0:
        return {}
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}
