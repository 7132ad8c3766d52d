"""The images a run learns from and is checked on: scanned, subsampled, label-reviewed, de-duplicated, split
into training and held-out films, shared between TF_CONFIG workers, recorded in the run folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core import files
from pneumo.core.paths import CLASS_NAMES
from pneumo.training.config import TrainConfig

# scikit-learn and pneumo.data.collection, pneumo.evaluation.validate and pneumo.evaluation.audit are imported where
# used: the CLI imports this
# module at start, through pneumo.training.job.

LEAKAGE_FILE = "image_hashes.json"
Phase = Callable[..., None]


@dataclass
class TrainingData:
    """What preparation hands the training loop and the checks after it."""

    frame: Any  # every usable image (pandas DataFrame)
    layout: str
    train_df: Any
    val_df: Any
    shard: Any  # this worker's share of train_df (all of it in one process)
    class_weights: dict[int, float] | None
    summary: dict[str, Any]  # data_summary.json
    val_images: np.ndarray  # the held-out films, (N, size, size, 1) float32 in [0, 1]


def subsample(frame: Any, n: int, seed: int) -> Any:
    """A stratified subsample of n images (all of them when n is 0 or not below their number)."""
    if not n or n >= len(frame):
        return frame
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(frame, train_size=n, stratify=frame["label"], random_state=seed)
    return keep.sort_index()


def prepare(
    config: TrainConfig, run_dir: Path, size: int, phase: Phase, workers: int = 1, worker: int = 0
) -> TrainingData:
    """Read, check and split config.data; write data_summary.json and the images' content hashes."""
    from pneumo.data import collection as D
    from pneumo.data import splits
    from pneumo.evaluation import validate as V

    dataset = D.scan(config.data)
    frame = subsample(dataset.frame[dataset.frame["split"] != "test"], config.max_images, config.seed)
    review_counts = None
    if config.label_review:
        from pneumo.evaluation.audit import apply_review

        frame, review_counts = apply_review(frame, config.label_review, root=config.data)
    present = set(frame["label"])
    if present != {0, 1}:
        missing = [CLASS_NAMES[c] for c in (0, 1) if c not in present]
        raise D.DatasetError(f"{config.data}: training needs both classes; no {', '.join(missing)} images found")

    phase("checking images for duplicates", 0, len(frame))
    last = [0.0]

    def inspect_progress(done: int, total: int) -> None:
        if time.time() - last[0] > 2 or done == total:
            phase("checking images for duplicates", done, total)
            last[0] = time.time()

    stats = D.inspect_images(frame["path"], progress=inspect_progress)
    unreadable = int(stats["error"].notna().sum())
    # Unreadable files are left out here, once: tf.data would skip them, but the checks after training
    # read every held-out film and must not fail on one.
    frame = frame[frame["path"].isin(stats.loc[stats["error"].isna(), "path"])].reset_index(drop=True)
    dups = D.duplicate_groups(stats)
    phase("building the model")
    split_seed = config.seed if config.split_seed is None else config.split_seed
    train_df, val_df = splits.holdout(
        frame, config.split, config.val_fraction, split_seed, dups, config.fold, config.folds
    )
    weights = D.class_weights(train_df["label"].to_numpy()) if config.class_weighting else None
    # Each worker reads its own share of the training images; every step averages all workers' gradients.
    shard = train_df.iloc[worker::workers] if workers > 1 else train_df
    summary = {
        "images": int(len(frame)),
        "train_images": int(len(train_df)),
        "val_images": int(len(val_df)),
        "train_counts": {c: int((train_df["class_name"] == c).sum()) for c in CLASS_NAMES},
        "val_counts": {c: int((val_df["class_name"] == c).sum()) for c in CLASS_NAMES},
        "train_patients": int(train_df["patient_id"].nunique()),
        "val_patients": int(val_df["patient_id"].nunique()),
        "duplicate_groups": len(dups),
        "unreadable_left_out": unreadable,
        "file_list_sha256_16": D.file_list_hash(frame),
        "split": splits.describe_holdout(config.split, frame, config.fold, config.folds),
        "fold": config.fold if config.split == "fold" else None,
        "label_review": {"file": config.label_review, **review_counts} if review_counts else None,
        "class_weights": {CLASS_NAMES[k]: round(v, 4) for k, v in (weights or {}).items()},
        "workers": workers,
        "worker_index": worker,
        "worker_train_images": int(len(shard)),
    }
    files.atomic_write_json(run_dir / "data_summary.json", summary)
    # Content hashes of every image the model learned from or was checked on: the app warns when a
    # folder it is asked to tune a threshold on overlaps them.
    hash_of = dict(zip(stats["path"], stats["hash"]))
    files.atomic_write_json(
        run_dir / LEAKAGE_FILE,
        {
            "train": sorted({hash_of[p] for p in train_df["path"] if isinstance(hash_of.get(p), str)}),
            "validation": sorted({hash_of[p] for p in val_df["path"] if isinstance(hash_of.get(p), str)}),
        },
    )
    # Read as the checks after training read them, so an epoch's val_auc is the card's figure for that model.
    # A canonical framing is applied as LoadedModel.prepare applies it to these same films in the checks.
    val_images = V.load_images(val_df["path"].tolist(), size)
    if config.framing != "none":
        from pneumo.data.anatomy import framed_input

        val_images = np.stack([framed_input(x, config.framing, size) for x in val_images]).astype(np.float32)
    val_images = val_images[..., None]
    return TrainingData(frame, dataset.layout, train_df, val_df, shard, weights, summary, val_images)
