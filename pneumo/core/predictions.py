"""Stored predictions (val_predictions.csv, oof_predictions.csv) read as untrusted input: bounded in size,
every row checked, the first bad row named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PREDICTIONS_MAX_BYTES = 64 * 2**20  # 5,216 films make 0.5 MB


class PredictionsError(ValueError):
    """A stored predictions file (val_predictions.csv) that cannot be used; the message names file and row."""


# ---------------------------------------------------------------- stored predictions


def read_predictions(path: str | Path, max_bytes: int = PREDICTIONS_MAX_BYTES) -> Any:
    """A val_predictions.csv, validated: path, label (0 or 1) and probability (in [0, 1], or empty for an
    unreadable film) on every row; PredictionsError names the file and the first bad row.

    The returned frame has those columns (patient_id when present) and `row`, the CSV line of each
    entry, so that a page can name a row without naming what it points at.
    """
    import pandas as pd

    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise PredictionsError(f"{name}: {size / 2**20:.0f} MB, larger than {max_bytes // 2**20} MB; not read")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except PredictionsError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise PredictionsError(f"{name}: cannot be read as CSV ({type(exc).__name__})") from None
    missing = [c for c in ("path", "label", "probability") if c not in frame.columns]
    if missing:
        raise PredictionsError(f"{name}: missing column(s) {', '.join(missing)}; expected path,label,probability")
    rows = frame.index.to_numpy() + 2  # the header is line 1
    labels = pd.to_numeric(frame["label"].str.strip(), errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise PredictionsError(
            f"{name} row {rows[i]}: label must be 0 (normal) or 1 (pneumonia), got {frame['label'].iloc[i][:20]!r}"
        )
    text = frame["probability"].str.strip()
    probs = pd.to_numeric(text, errors="coerce")
    bad = (probs.isna() & (text != "") & (text.str.lower() != "nan")) | (probs < 0) | (probs > 1)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise PredictionsError(
            f"{name} row {rows[i]}: probability must be a number in [0, 1], got {frame['probability'].iloc[i][:20]!r}"
        )
    empty = frame["path"].str.strip() == ""
    if empty.any():
        raise PredictionsError(f"{name} row {rows[int(empty.to_numpy().argmax())]}: no path")
    out = pd.DataFrame({"path": frame["path"], "label": labels.astype(int), "probability": probs.astype(float)})
    if "patient_id" in frame.columns:
        out["patient_id"] = frame["patient_id"]
    out["row"] = rows
    return out
