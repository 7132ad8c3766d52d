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


def order(readings: list[Reading]) -> list[int]:
    """Worklist order: rejected and warned inputs first (they need a person before any score is used),
    then the highest probability first."""
    def key(i: int) -> tuple[int, float]:
        r = readings[i]
        return (0 if r.error else 1 if r.warnings else 2, -(r.probability if r.probability is not None else 0.0))

    return sorted(range(len(readings)), key=key)


def worklist(readings: list[Reading], loaded: LoadedModel | None = None, when: str | None = None) -> pd.DataFrame:
    """A review list in worklist order, with what a record of the reading needs: the input, the score,
    the decision, the operating point, which model (name and card hash) and when."""
    from datetime import datetime, timezone

    when = when or datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    for i in order(readings):
        r = readings[i]
        rows.append({
            "item": i + 1, "path": r.name, "probability": r.probability, "decision": r.decision or "rejected",
            "warnings": " | ".join(r.warnings), "error": r.error or "",
            "threshold": loaded.threshold if loaded else None,
            "model": loaded.card.name if loaded else "", "card_sha256_12": card_hash(loaded) if loaded else "",
            "time": when,
        })
    columns = ["item", "path", "probability", "decision", "warnings", "error", "threshold", "model", "card_sha256_12", "time"]
    return pd.DataFrame(rows, columns=columns)


def card_hash(loaded: LoadedModel) -> str:
    """A short hash of the card in force: which operating point and figures a reading was made under."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(loaded.card.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
