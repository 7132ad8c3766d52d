"""A validation split and cross-validation folds of a labelled collection, stratified by class and grouped by
patient and by exact-duplicate group, so that no child and no film sits on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pneumo.data.imagestats import duplicate_groups, inspect_images
from pneumo.data.layouts import Dataset, DatasetError

# scikit-learn is imported where used: the dashboard imports this module at start, and scikit-learn adds ~2 s.


def patient_groups(frame: pd.DataFrame, duplicates: list[list[str]]) -> np.ndarray:
    """One group id per image: patients joined with every duplicate group they share an image with."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    patient_of = dict(zip(frame["path"], frame["patient_id"]))
    for group in duplicates:
        patients = [patient_of[p] for p in group if p in patient_of]
        for other in patients[1:]:
            union(patients[0], other)
    return np.array([find(p) for p in frame["patient_id"]])


def split(
    data: Dataset | pd.DataFrame,
    val_fraction: float = 0.15,
    seed: int = 0,
    duplicates: list[list[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a validation split from the non-test images, stratified by class and grouped by patient
    and by duplicate group, so no patient and no duplicated image sits on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    frame = data.frame if isinstance(data, Dataset) else data
    pool = frame[frame["split"] != "test"].reset_index(drop=True)
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be between 0 and 0.5, got {val_fraction}")
    if duplicates is None:
        duplicates = duplicate_groups(inspect_images(pool["path"]))
    groups = patient_groups(pool, duplicates)
    n_splits = max(2, int(round(1.0 / val_fraction)))
    if len(np.unique(groups)) < n_splits:
        raise DatasetError(
            f"only {len(np.unique(groups))} patients: too few to carve a {val_fraction:.0%} validation split"
        )
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(folds.split(pool, pool["label"], groups))
    return pool.iloc[train_idx].reset_index(drop=True), pool.iloc[val_idx].reset_index(drop=True)


def fold_split(
    data: Dataset | pd.DataFrame,
    fold: int,
    folds: int = 5,
    seed: int = 0,
    duplicates: list[list[str]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) for fold `fold` of `folds`, stratified by class and grouped by patient and
    duplicate group: the held-out parts of one seed's folds partition the non-test images."""
    from sklearn.model_selection import StratifiedGroupKFold

    frame = data.frame if isinstance(data, Dataset) else data
    pool = frame[frame["split"] != "test"].reset_index(drop=True)
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be between 0 and {folds - 1}; got {fold}")
    if duplicates is None:
        duplicates = duplicate_groups(inspect_images(pool["path"]))
    groups = patient_groups(pool, duplicates)
    if len(np.unique(groups)) < folds:
        raise DatasetError(f"only {len(np.unique(groups))} patients: too few for {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = list(splitter.split(pool, pool["label"], groups))[fold]
    return pool.iloc[train_idx].reset_index(drop=True), pool.iloc[val_idx].reset_index(drop=True)
