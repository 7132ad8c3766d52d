"""A labelled collection's summary (pneumo.data.collection.Summary) in the figures and words the Dataset Explorer
shows: whether it has splits, its imbalance, its images' sizes, the films drawn for its sample grid, and small
copies of films for the screen."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo.core.paths import CLASS_NAMES
from pneumo.data.collection import NPZ_SEPARATOR, Summary, read_item
from pneumo.data.pixels import shrink, to_uint8

GRID_PER_CLASS = 8  # films of each class in one draw of the sample grid
DUPLICATE_GROUPS_SHOWN = 12
THUMBNAIL_SIDE = 640  # px on a film's long side: a grid cell is at most a quarter of a wide page
# The layouts whose films the scanner files under "train" when the folder has no split of its own.
SPLITLESS_LAYOUTS = ("class folders", "CSV manifest")


def has_splits(summary: Summary) -> bool:
    """Whether the folder has train/val/test splits of its own: class folders (and a manifest without a split
    column) have none, and their films are filed under "train", which is not a training split."""
    return summary.layout not in SPLITLESS_LAYOUTS or list(summary.counts.index) != ["train"]


def readable_count(summary: Summary) -> int:
    """How many films decode (every film, for a summary that did not count them)."""
    return summary.n_images if summary.n_readable is None else summary.n_readable


def imbalance_words(summary: Summary) -> str:
    """The majority : minority ratio over the readable films, or a dash when none could be read."""
    return f"{summary.imbalance_ratio:.2f} : 1" if readable_count(summary) else "—"


def normal_share(summary: Summary) -> float:
    """The share of the folder's images labelled NORMAL (0 for an empty folder)."""
    normal = summary.counts["NORMAL"].sum() if "NORMAL" in summary.counts else 0
    return float(normal) / max(summary.n_images, 1)


def weights_words(summary: Summary) -> str:
    """The loss weight of each class, by name: "NORMAL × 1.94, PNEUMONIA × 0.67"."""
    return ", ".join(f"{CLASS_NAMES[k]} × {v:.2f}" for k, v in summary.class_weights.items())


def patients_words(summary: Summary) -> str:
    """Patients per class: "NORMAL: 1,341, PNEUMONIA: 3,875"."""
    return ", ".join(f"{k}: {v:,}" for k, v in summary.patients_per_class.items())


def varying_sizes(stats: pd.DataFrame) -> list[str]:
    """The image dimensions ("width", "height") that differ between the films; none for a folder of one size."""
    return [c for c in ("width", "height") if not stats.empty and stats[c].nunique() > 1]


def one_size_words(stats: pd.DataFrame) -> str | None:
    """When every film has the same size, that size in words; None when they differ or there are none."""
    if stats.empty or varying_sizes(stats):
        return None
    return f"Every image is {int(stats['width'].iloc[0])}×{int(stats['height'].iloc[0])} px."


def more_groups_words(groups: int, shown: int = DUPLICATE_GROUPS_SHOWN) -> str | None:
    """What is said under the duplicate groups shown when there are more."""
    return f"… and {groups - shown} more groups." if groups > shown else None


def sample_draw(stats: pd.DataFrame, draw: int, per_class: int = GRID_PER_CLASS) -> dict[str, list[str]]:
    """Draw `draw` of the sample grid: up to per_class films of each class at random, the same films for the same
    draw (each class drawn with its own generator seeded by the draw); a class without films is left out."""
    picked = {}
    for cls in CLASS_NAMES:
        paths = stats.loc[stats.class_name == cls, "path"].tolist()
        if paths:
            picked[cls] = random.Random(draw).sample(paths, min(per_class, len(paths)))
    return picked


def file_name(path: str) -> str:
    """The name a film is captioned with: its file's (an image inside an .npz archive shows the archive's)."""
    return Path(path.split(NPZ_SEPARATOR)[0]).name


def file_stamp(path: str) -> tuple[int, int]:
    """The modification time and size of the file behind a dataset item (OSError when it is gone): a cached copy
    of the film is made again when its file changes."""
    stat = os.stat(path.split(NPZ_SEPARATOR)[0])
    return stat.st_mtime_ns, stat.st_size


def thumbnail(path: str, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A dataset item decoded and made no larger than side px on its long side, as 8-bit gray: what a grid cell
    shows, at a fraction of the decoded film's bytes (ValueError or OSError when it cannot be read)."""
    return to_uint8(shrink(read_item(path), side))
