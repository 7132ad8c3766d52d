"""Watching training runs: a run's progress and ETA in words, its validation size, the runs table's rows, and
which run a visitor may activate. The files a page polls every few seconds are read again only when they change
(by modification time and size)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from pneumo.core import files
from pneumo.training.config import WRITTEN_BEFORE
from pneumo.training.runs import RunInfo

ETA_AFTER_STEPS = 10  # the first steps include tracing: an ETA from them says little
# The hyperparameters the runs table shows, from each run's config.json.
HYPERPARAMETERS = (
    "split",
    "augmentation",
    "framing",
    "mixup",
    "epochs",
    "batch_size",
    "learning_rate",
    "image_size",
    "seed",
)
ACTIVATABLE_STATES = ("finished", "stopped")

_JSON_CACHE: LRUCache = LRUCache(maxsize=512)
_JSON_LOCK = threading.Lock()


def json_object(path: str | Path) -> dict[str, Any]:
    """A run's JSON object file (config.json, data_summary.json), read again only when its modification time or
    size changed; {} when it is missing, damaged or not an object. A copy: the caller may change it."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return {}
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _JSON_LOCK:
        hit = _JSON_CACHE.get(key)
    if hit is None:
        hit = files.read_json_object(path)
        with _JSON_LOCK:
            _JSON_CACHE[key] = hit
    return dict(hit)


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json as written ({} when missing or damaged)."""
    return json_object(Path(run_dir) / "config.json")


def val_size(run_dir: str | Path) -> int | None:
    """How many validation films a run's figures come from (its data_summary.json), or None when unknown: a
    "best val AUC 1.0000" from 7 films is not one from 700, and the figure alone does not say which."""
    n = json_object(Path(run_dir) / "data_summary.json").get("val_images")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def on_n(n: int | None) -> str:
    """The "(n = 7 val films)" put beside a validation figure."""
    return f"(n = {n:,} val films)" if n is not None else "(n unknown)"


def phase_progress(state: str, status: Mapping[str, Any]) -> tuple[float, str] | None:
    """The bar of a running run's phase before or after training (preparing data, checking the model): its share
    done and its text; None while it trains, when it is done, or when it is not running."""
    phase = status.get("phase")
    if state != "running" or phase in (None, "training", "done"):
        return None
    total = status.get("phase_total") or 0
    done = status.get("phase_done", 0) or 0
    return (done / total if total else 0.0), f"{phase}" + (f" · {done}/{total}" if total else " …")


def training_progress(record: Mapping[str, Any]) -> tuple[float, str]:
    """A progress record's share of the run done (at most 1) and its bar's text, the ETA said only once steps have
    been measured (after the first epoch, or ETA_AFTER_STEPS batches into it)."""
    epoch, epochs, batch, batches = record["epoch"], record["epochs"], record["batch"], record["batches"]
    done = ((epoch - 1) * batches + batch) / (epochs * batches) if epochs and batches else 0.0
    measured = epoch > 1 or batch >= ETA_AFTER_STEPS
    eta = f"ETA {record['eta_s'] / 60:.1f} min" if measured else "ETA after a few steps"
    return min(done, 1.0), f"epoch {epoch}/{epochs} · batch {batch}/{batches} · loss {record['loss']:.3f} · {eta}"


def latest_progress(records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest progress record of a run's metrics, or None."""
    last = None
    for record in records:
        if record.get("type") == "progress":
            last = record
    return last


def table_row(run: RunInfo) -> dict[str, Any]:
    """One run as the runs table shows it."""
    config = run_config(run.path)
    return {
        "run": run.name,
        "status": run.state,
        "model": run.model,
        "kept model's val AUC": run.kept_val_auc,
        "best val AUC": run.best_val_auc,
        "val films (n)": val_size(run.path),  # what both AUCs are measured on
        **{k: config.get(k, WRITTEN_BEFORE.get(k)) for k in HYPERPARAMETERS},
        "epochs done": run.epochs_done,
        "duration (min)": round((run.duration_s or 0) / 60, 1),
        "started": run.started,
        "problem": run.damaged or "",
    }


def watched_index(listed: Sequence[RunInfo], watched: str | None) -> int:
    """Which run the watch box starts at: the visitor's own (by path), else the newest (the first listed)."""
    return next((i for i, r in enumerate(listed) if str(r.path) == watched), 0)


def own_run_waiting(busy: Sequence[RunInfo], mine: str | None, max_concurrent: int) -> RunInfo | None:
    """The visitor's own run (by path) when it holds one of the run slots and none is free: Start pressed again
    is then told their run is on its way, not refused as if it had been lost."""
    own = next((r for r in busy if str(r.path) == mine), None)
    return own if own is not None and len(busy) >= max_concurrent else None


def activatable(selected: Iterable[RunInfo]) -> list[RunInfo]:
    """The selected runs that ended with a model to serve."""
    return [r for r in selected if r.has_model and r.state in ACTIVATABLE_STATES]
