"""One film's screening result and one run's, as the CLI, the app and the stored SR describe them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pneumo.core.text import terminal_safe

SCREENED, ALREADY, SKIPPED, FAILED = "screened", "already screened", "skipped", "failed"


@dataclass
class InstanceResult:
    """One image of one study: its reading, or why it was skipped or failed, and what was stored."""

    study_uid: str
    series_uid: str | None
    sop_uid: str | None
    path: str
    status: str
    probability: float | None = None
    prediction: str | None = None
    threshold: float | None = None
    operating_point: str | None = None
    model: str | None = None
    card_hash: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    stored: dict[str, str] = field(default_factory=dict)  # {"sr": uid, "sc": uid, "pdf": uid} once in the PACS
    seconds: float | None = None
    retryable: bool = False  # failed on the server's side (another try may pass), not on the film itself
    reading: Any = field(default=None, repr=False)  # predict.Reading, for the app's cards and worklist
    source: Any = field(default=None, repr=False)  # the source header (no pixels), for sending later
    heatmap: Any = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study_uid,
            "series": self.series_uid,
            "instance": self.sop_uid,
            "path": self.path,
            "status": self.status,
            "probability": self.probability,
            "prediction": self.prediction,
            "threshold": self.threshold,
            "operating_point": self.operating_point,
            "model": self.model,
            "card_hash": self.card_hash,
            "warnings": list(self.warnings),
            "error": self.error,
            "skipped": self.skipped,
            "stored": dict(self.stored),
            "seconds": None if self.seconds is None else round(self.seconds, 3),
        }


@dataclass
class ScreenRun:
    """A run over several studies: every result so far, and the one line that ended it early, if any."""

    results: list[InstanceResult] = field(default_factory=list)
    error: str | None = None
    drift: Any = None  # pneumo.evaluation.drift.DriftResult of the films read, when a check could be made
    drift_note: str | None = None  # its advice when the batch is shifted, or why the check failed
    log_note: str | None = None  # why the readings were not stored in the readings database (log=True)
    studies_done: int = 0
    studies_left: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.status == FAILED for r in self.results)

    def readings(self) -> list[Any]:
        return [r.reading for r in self.results if r.reading is not None]


def describe(result: InstanceResult) -> str:
    """One human-readable line per image (the CLI without --json), and a line per warning below it. Every field
    that came from outside (UIDs, a server's error, a DICOM field quoted in a reason) is escaped for a terminal:
    an escape sequence in a ViewPosition or an error page cannot clear the screen or forge a line of its own."""
    where = f"study {terminal_safe(result.study_uid)}" + (
        f" instance {terminal_safe(result.sop_uid)}" if result.sop_uid else ""
    )
    if result.status == FAILED:
        return f"{where}: FAILED {terminal_safe(result.error)}"
    if result.status == SKIPPED:
        return f"{where}: skipped, {terminal_safe(result.skipped)}"
    score = f"score={result.probability:.4f}" if result.probability is not None else "no score"
    threshold = f"{result.threshold:.4f}" if result.threshold is not None else "n/a"
    line = (
        f"{where}: {terminal_safe(result.prediction)}  {score}  "
        f"(threshold {threshold}, {terminal_safe(result.operating_point)})"
    )
    if result.status == ALREADY:
        line += "  [already screened]"
    elif result.stored:
        line += f"  stored SR {terminal_safe(result.stored.get('sr'))}"
    return line + "".join(f"\n  warning: {terminal_safe(w)}" for w in result.warnings)
