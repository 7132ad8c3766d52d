"""A run's metrics.jsonl, read as untrusted input: its last records, bounded, with what was left out."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pneumo.core.files import _is_number

METRICS_MAX_BYTES = 8 * 2**20
METRICS_MAX_RECORDS = 50_000

# Record fields the app formats as numbers: a wrong type there is a skipped line, not a crash.
_RECORD_INTS = {"epoch": ("epoch", "epochs"), "progress": ("epoch", "epochs", "batch", "batches")}
_RECORD_NUMBERS = frozenset({"lr", "seconds", "loss", "eta_s", "elapsed_s", "accuracy", "auc", "recall", "precision"})


class Metrics(list):
    """The records of a metrics.jsonl (a list of dicts), with what the reader left out.

    truncated: only the file's last max_bytes (or last max_records records) were read; skipped: the
    complete lines that were not usable records, with their problem (the first few are kept).
    """

    def __init__(
        self,
        records: Iterable[dict[str, Any]] = (),
        truncated: bool = False,
        size: int = 0,
        skipped: int = 0,
        problems: list[str] | None = None,
    ):
        super().__init__(records)
        self.truncated, self.size, self.skipped, self.problems = truncated, size, skipped, list(problems or [])

    @property
    def note(self) -> str | None:
        """One line for the page when anything was left out, else None."""
        parts = []
        if self.truncated:
            parts.append(f"metrics.jsonl is {self.size / 2**20:.0f} MB: only its last {len(self)} records are read")
        if self.skipped:
            parts.append(f"{self.skipped} unusable line(s) skipped ({'; '.join(self.problems[:3])})")
        return "; ".join(parts) or None


_METRICS_CACHE: OrderedDict[tuple[str, int, int, int, int, int], Metrics] = OrderedDict()


def read_metrics(
    run_dir: str | Path, max_bytes: int = METRICS_MAX_BYTES, max_records: int = METRICS_MAX_RECORDS
) -> Metrics:
    """Every usable complete line of metrics.jsonl, reading at most its last max_bytes.

    A half-written last line is skipped silently (a run is writing it); a line that is not a JSON object,
    or an epoch/progress record with a non-number where a number belongs, is skipped and counted.
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns, max_bytes, max_records)
            if key in _METRICS_CACHE:  # every render of the Train page reads every run: unchanged files once
                _METRICS_CACHE.move_to_end(key)
                cached = _METRICS_CACHE[key]
                return Metrics(cached, cached.truncated, cached.size, cached.skipped, cached.problems)
            start = max(0, info.st_size - max_bytes)
            fh.seek(start)
            data = fh.read(max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return Metrics()
    except OSError as exc:
        return Metrics(skipped=1, problems=[f"cannot be read ({exc.strerror or exc})"])
    truncated = start > 0
    lines = data.split(b"\n")
    if truncated:
        lines = lines[1:]  # the first line starts somewhere inside a record
    lines = lines[:-1]  # the part after the last newline is empty or still being written
    records: list[dict[str, Any]] = []
    skipped = 0
    problems: list[str] = []
    first_line = None if truncated else 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        problem = None
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            problem = "not JSON"
        else:
            problem = _record_problem(record)
        if problem:
            skipped += 1
            if len(problems) < 5:
                problems.append(f"line {first_line + i}: {problem}" if first_line else problem)
            continue
        records.append(record)
    if len(records) > max_records:
        records, truncated = records[-max_records:], True
    result = Metrics(records, truncated, info.st_size, skipped, problems)
    _METRICS_CACHE[key] = result
    while len(_METRICS_CACHE) > 64:
        _METRICS_CACHE.popitem(last=False)
    return Metrics(result, truncated, info.st_size, skipped, problems)


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record"
    kind = record.get("type")
    if kind not in _RECORD_INTS:
        return None  # records of other kinds are kept as they are; nothing here formats them
    for key in _RECORD_INTS[kind]:
        value = record.get(key)
        if key == "epoch" or key in record:  # every epoch and progress record carries its epoch
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
                return f"{kind} record: {key} must be a whole number, got {type(value).__name__}"
    for key, value in record.items():
        if key not in _RECORD_NUMBERS and not key.startswith("val_"):
            continue  # fields nothing formats are kept as they are
        if value is not None and not _is_number(value):
            return f"{kind} record: {key} must be a number, got {type(value).__name__}"
    return None


def epochs_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if isinstance(r, dict) and r.get("type") == "epoch"]
