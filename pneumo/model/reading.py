"""Read one X-ray with a model: probability, decision with an uncertainty band, and a worklist."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from pneumo.data.collection import pixel_hash
from pneumo.data.decode import Source, XRay, load_xray
from pneumo.data.pixels import InvalidImageError, to_uint8
from pneumo.model import input_check as quality
from pneumo.model.loading import LoadedModel

# pneumo.model.explain (OpenCV) is imported where used: only a thumbnail of the heat map needs it.

PNEUMONIA, NORMAL, UNCERTAIN = "PNEUMONIA", "NORMAL", "UNCERTAIN — review"
NOT_ASSESSABLE = "NOT ASSESSABLE"
# The one uncertain band (± probability around the threshold) of the CLI, the app, the reports and PACS.
DEFAULT_BAND = 0.05


def decide(probability: float, threshold: float, band: float = DEFAULT_BAND, assessable: bool = True) -> str:
    """The decision at threshold: none for a film the input check cannot assess; within ±band of the
    threshold the case is flagged for a human second look."""
    if not assessable:
        return NOT_ASSESSABLE
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
    repeat_of: int | None = None  # index of an earlier reading with the same pixels (see mark_repeats)
    # The probability the score stands for, by the card's out-of-fold calibration map (None: the card has
    # none). `probability` stays the served score: the threshold, the seal and every stored figure use it.
    calibrated: float | None = None

    @property
    def shown(self) -> float | None:
        """What pages and reports call the probability of pneumonia: the calibrated one where the card maps
        scores, else the score (an older card)."""
        return self.calibrated if self.calibrated is not None else self.probability


def read(loaded: LoadedModel, source: Source, name: str | None = None, band: float = DEFAULT_BAND) -> Reading:
    """Decode and predict one input; a bad input becomes a Reading with its error instead of raising."""
    try:
        xray = load_xray(source, name=name)
    except InvalidImageError as exc:
        return Reading(exc.name, None, None, None, exc.reason)
    probability = float(loaded.predict(xray.pixels)[0])
    found = quality.inspect(loaded, xray.pixels, loaded.density, xray.colour)
    return Reading(
        xray.name,
        xray,
        probability,
        decide(probability, loaded.threshold, band, found.assessable),
        warnings=[*xray.warnings, *found.warnings],
        calibrated=loaded.card.probability(probability) if loaded.card.calibrated else None,
    )  # the decoder's notes (a broken DICOM window) first


SCREEN_SIDE = 1024  # the long side a reading keeps for display and maps once its probability is known


def compact(reading: Reading, side: int = SCREEN_SIDE) -> Reading:
    """The reading with its film kept at most `side` pixels on the long side (area resampling).

    The probability and the input check were computed on the full film; what stays is for the screen,
    the maps (made at the model's input size) and the reports. A 2048 px film is 16 MB as float32, a
    1024 px one 4 MB: a batch of large films then fits a bounded cache.
    """
    from pneumo.data.pixels import shrink

    if reading.xray is None or max(reading.xray.pixels.shape) <= side:
        return reading
    return replace(reading, xray=replace(reading.xray, pixels=shrink(reading.xray.pixels, side)))


def pack(reading: Reading) -> Reading:
    """The reading with its film as 8-bit samples: a quarter of the memory, for readings that are kept
    (caches, downloads made later). The probability and the input check came from the full film; an
    8-bit film is what the screen and the reports show anyway. ``unpack`` gives the [0, 1] film back."""
    if reading.xray is None or reading.xray.pixels.dtype == np.uint8:
        return reading
    xray = replace(reading.xray, pixels=to_uint8(reading.xray.pixels), warnings=list(reading.xray.warnings))
    return replace(reading, xray=xray, warnings=list(reading.warnings))  # notes added later stay on this copy


def unpack(reading: Reading) -> Reading:
    """A packed reading as a fresh one with a float32 [0, 1] film and lists of its own (the page adds notes)."""
    xray = reading.xray
    if xray is not None:
        pixels = xray.pixels.astype(np.float32) / 255.0 if xray.pixels.dtype == np.uint8 else xray.pixels
        xray = replace(xray, pixels=pixels, warnings=list(xray.warnings), dicom=dict(xray.dicom))
    return replace(reading, xray=xray, warnings=list(reading.warnings))


def nbytes(reading: Reading) -> int:
    """What a reading holds in memory, for caches bounded by bytes."""
    return 4096 + (reading.xray.pixels.nbytes if reading.xray is not None else 0)


class Repeats:
    """Readings whose pixels repeat an earlier reading's say so (repeat_of and a warning): the same film
    sent twice, under two names, is one film, not two independent readings. Fed one reading at a time,
    so a long command-line batch keeps only hashes, not films."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[int, str]] = {}

    def note(self, index: int, reading: Reading) -> Reading:
        if reading.xray is None:
            return reading
        digest = pixel_hash(reading.xray.pixels)
        if digest in self.first:
            j, name = self.first[digest]
            reading.repeat_of = j
            note = f"repeats item {j + 1} ({name}): the same pixels; read them as one film"
            if note not in reading.warnings:
                reading.warnings.append(note)
        else:
            self.first[digest] = (index, reading.name)
        return reading


def mark_repeats(readings: list[Reading]) -> list[Reading]:
    """Every reading of a batch through Repeats, in order."""
    tracker = Repeats()
    return [tracker.note(i, r) for i, r in enumerate(readings)]


def order(readings: list[Reading]) -> list[int]:
    """Worklist order: rejected and warned inputs first (they need a person before any score is used),
    then the highest probability first."""

    def key(i: int) -> tuple[int, float]:
        r = readings[i]
        return (0 if r.error else 1 if r.warnings else 2, -(r.probability if r.probability is not None else 0.0))

    return sorted(range(len(readings)), key=key)


def worklist(readings: list[Reading], loaded: LoadedModel | None = None, when: str | None = None) -> pd.DataFrame:
    """A review list in worklist order, with what a record of the reading needs: the input, the score
    (`probability`, the model's output the threshold applies to) and its calibrated probability (empty where
    the card has no map), the decision, the operating point, which model (name and card hash) and when."""
    when = when or datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict[str, Any]] = []
    card_sha = card_hash(loaded) if loaded else ""
    for i in order(readings):
        r = readings[i]
        rows.append(
            {
                "item": i + 1,
                "path": r.name,
                "probability": r.probability,
                "probability_calibrated": r.calibrated,
                "decision": r.decision or "rejected",
                "warnings": " | ".join(r.warnings),
                "error": r.error or "",
                "threshold": loaded.threshold if loaded else None,
                "operating_point": getattr(loaded, "operating_point", "shipped") if loaded else "",
                "model": loaded.card.name if loaded else "",
                "card_sha256_12": card_sha,
                "time": when,
            }
        )
    columns = [
        "item",
        "path",
        "probability",
        "probability_calibrated",
        "decision",
        "warnings",
        "error",
        "threshold",
        "operating_point",
        "model",
        "card_sha256_12",
        "time",
    ]
    return pd.DataFrame(rows, columns=columns)


def card_hash(loaded: LoadedModel) -> str:
    """A short hash of the card in force: which operating point and figures a reading was made under."""
    return hashlib.sha256(json.dumps(loaded.card.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
