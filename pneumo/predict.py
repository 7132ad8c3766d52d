"""Read one X-ray with a model: probability, decision with an uncertainty band, and a worklist."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import quality
from .imaging import InvalidImageError, Source, XRay, load_xray
from .models import LoadedModel

PNEUMONIA, NORMAL, UNCERTAIN = "PNEUMONIA", "NORMAL", "UNCERTAIN — review"


def decide(probability: float, threshold: float, band: float = 0.0) -> str:
    """The decision at threshold; within ±band of it the case is flagged for a human second look."""
    if band > 0 and abs(probability - threshold) < band:
        return UNCERTAIN
    return PNEUMONIA if probability >= threshold else NORMAL


@dataclass
class Reading:
    """One input's outcome: a prediction, or the reason it was rejected."""

    name: str
    xray: XRay | None
    probability: float | None
    decision: str | None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def read(loaded: LoadedModel, source: Source, name: str | None = None, band: float = 0.0) -> Reading:
    """Decode and predict one input; a bad input becomes a Reading with its error instead of raising."""
    try:
        xray = load_xray(source, name=name)
    except InvalidImageError as exc:
        return Reading(exc.name, None, None, None, exc.reason)
    probability = float(loaded.predict(xray.pixels)[0])
    warnings = quality.check(loaded, xray.pixels, loaded.density, xray.colour)
    return Reading(xray.name, xray, probability, decide(probability, loaded.threshold, band), warnings=warnings)


def worklist(readings: list[Reading]) -> pd.DataFrame:
    """A review list: highest probability first, rejected files last with their reason."""
    rows: list[dict[str, Any]] = [
        {"file": r.name, "probability": r.probability, "decision": r.decision or "rejected", "error": r.error or ""}
        for r in readings
    ]
    frame = pd.DataFrame(rows, columns=["file", "probability", "decision", "error"])
    return frame.sort_values("probability", ascending=False, na_position="last").reset_index(drop=True)
