"""Every film of a collection decoded once: its size, intensity and pixel hash, or why it cannot be read; kept on
disk by the files' content fingerprint, and the groups of films whose pixels are identical."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.files import atomic_write_text
from pneumo.data.items import NPZ_SEPARATOR, read_item
from pneumo.data.pixels import InvalidImageError, to_uint8

Progress = Callable[[int, int], None]


def _inspect(path: str) -> dict[str, Any]:
    try:
        img = read_item(path)
    except (InvalidImageError, OSError, ValueError) as exc:
        return {"path": path, "error": str(getattr(exc, "reason", exc))}
    return {
        "path": path,
        "height": img.shape[0],
        "width": img.shape[1],
        "mean": float(img.mean()),
        "std": float(img.std()),
        "hash": pixel_hash(img),
    }


def pixel_hash(img: np.ndarray) -> str:
    """The hash of a decoded film's 8-bit pixels: equal for the same image under any name or format."""
    pixels = to_uint8(img)
    return hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).hexdigest()


STATS_COLUMNS = ["path", "height", "width", "mean", "std", "hash", "error"]
STATS_CACHE_FILES = 16  # folders whose image statistics stay cached on disk


def inspect_images(
    paths: Iterable[str], progress: Progress | None = None, workers: int = 4, cache_dir: str | Path | None = None
) -> pd.DataFrame:
    """Decode every image once: size, intensity, pixel hash, or the reason it is unreadable.

    cache_dir: keep the result on disk, keyed by the files' paths, sizes and modification times, so the
    same folder is decoded once, not on every visit (any changed, added or removed file is a new key).
    """
    paths = list(paths)
    cached = _stats_cache_file(paths, cache_dir) if cache_dir else None
    if cached is not None and cached.exists():
        try:
            frame = pd.read_csv(
                cached,
                dtype={"path": str, "hash": str, "error": str},
                keep_default_na=False,
                na_values={"height": [""], "width": [""], "mean": [""], "std": [""]},
            )
            frame["error"] = frame["error"].replace("", None)
            frame["hash"] = frame["hash"].replace("", None)
            if list(frame.columns) == STATS_COLUMNS and frame["path"].tolist() == paths:
                if progress:
                    progress(len(paths), len(paths))
                return frame
        except (OSError, ValueError):
            pass  # a damaged cache entry is decoded again and replaced
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(_inspect, paths, chunksize=16)):
            results.append(result)
            if progress and (i % 50 == 0 or i + 1 == len(paths)):
                progress(i + 1, len(paths))
    frame = pd.DataFrame(results, columns=STATS_COLUMNS)
    if cached is not None:
        _store_stats(frame, cached)
    return frame


def content_fingerprint(paths: Iterable[str]) -> str:
    """A hash of the files' paths, sizes and modification times: it changes when any film is replaced,
    added or removed, without reading a single one."""
    digest = hashlib.sha256()
    for p in paths:
        file = p.split(NPZ_SEPARATOR)[0]
        try:
            st = os.stat(file)
            digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{p}\0missing\n".encode())
    return digest.hexdigest()[:32]


def _stats_cache_file(paths: list[str], cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"image-stats-{content_fingerprint(paths)}.csv"


def _store_stats(frame: pd.DataFrame, path: Path) -> None:
    try:
        atomic_write_text(path, frame.to_csv(index=False))
        entries = sorted(path.parent.glob("image-stats-*.csv"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in entries[STATS_CACHE_FILES:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full cache folder only costs the next visit a decode


def duplicate_groups(stats: pd.DataFrame) -> list[list[str]]:
    """Groups of paths whose decoded pixels are identical."""
    ok = stats[stats["error"].isna()]
    groups = ok.groupby("hash")["path"].apply(list)
    return sorted((sorted(g) for g in groups if len(g) > 1), key=lambda g: g[0])
