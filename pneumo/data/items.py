"""One item of a labelled collection read as a film: a file, or an image inside a MedMNIST .npz named
`archive.npz::split::index` (NPZ_SEPARATOR), with the open archives kept."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from pneumo.data.decode import load_image

NPZ_SEPARATOR = "::"

NPZ_OPEN_MAX = 8  # open .npz archives kept; a run reads one or two, a long-lived app may see many


@functools.lru_cache(maxsize=NPZ_OPEN_MAX)
def _open_npz(file: str, mtime_ns: int, size: int) -> Any:
    """An open .npz archive, kept so items are not re-opened one by one. Keyed by the file's modification
    time and size too: a file rewritten in place is opened afresh, never read through a stale handle.
    An evicted archive is closed by NpzFile's own finaliser once no reader holds it."""
    return np.load(file)


def read_item(path: str) -> np.ndarray:
    """Decode one dataset item (a file, or an image inside a MedMNIST .npz) to [0, 1] grayscale."""
    if NPZ_SEPARATOR in path:
        file, split, index = path.split(NPZ_SEPARATOR)
        stat = os.stat(file)
        archive = _open_npz(file, stat.st_mtime_ns, stat.st_size)
        img = np.asarray(archive[f"{split}_images"][int(index)], dtype=np.float32)
        img = img.mean(axis=-1) if img.ndim == 3 else img
        return img / 255.0
    return load_image(path)
