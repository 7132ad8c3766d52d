"""Held-out splits that keep each patient and each exact-duplicate group on one side, and the shifted ones that
can tell recipes apart:

- ``fold``: StratifiedGroupKFold by patient and duplicate group (every film out of fold once);
- ``temporal``: the lowest-numbered patients of each file-name series and class (a proxy for another acquisition
  period: patient numbers were assigned in order);
- ``family``: one whole series of normal films (``NORMAL2-IM-*``) against a patient-level draw of the pneumonias.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pneumo.data import collection as D

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
        _, held_pos = D.split(
            positives.drop(columns=["group", "series", "number"]), max(fraction, 0.1), seed, duplicates
        )
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
        return (
            f"fold {fold + 1} of {folds} (StratifiedGroupKFold by patient and exact-duplicate group): "
            "in-distribution, out of fold"
        )
    if kind == "patient" or not _has_series(frame):
        return "random patient-level draw (StratifiedGroupKFold by patient and exact-duplicate group)"
    if kind == "temporal":
        return "lowest-numbered patients of each file-name series and class (a proxy for another period)"
    return "the whole NORMAL2-IM series of normals and a patient-level draw of pneumonias"
