"""What was screened before: earlier screening SRs in a study, read back and matched to the model and operating point
in force.
"""

# Two layouts are read: the TID 1500 measurement report pneumo writes now (tid1500.py: the items nested in measurement
# groups, the threshold as text, the source film as "Source of Measurement") and the Enhanced SR it wrote before (the
# items at the root, the threshold as a number, the source as "Source image for image processing operation"). Both use
# the same concept codes for what is sealed, so one walk over the tree by concept finds either.

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pneumo.integrations.pacs.config import MANUFACTURER, SCHEME
from pneumo.integrations.pacs.dicomjson import _value, _values
from pneumo.model.loading import LoadedModel

# --- what was screened before --------------------------------------------------------------------------------


def operating_point(loaded: LoadedModel) -> str:
    """The named operating point in force ("shipped" for a card without one)."""
    value = getattr(loaded, "operating_point", None) or "shipped"
    return str(getattr(value, "name", None) or value)


@dataclass(frozen=True)
class ScreeningKey:
    """What makes two screenings the same: the model (name and version) and its operating point (name and
    threshold). Not the card hash: recording an evaluation changes the card, not a single reading."""

    model: str
    version: str
    operating_point: str
    threshold: float

    @classmethod
    def of(cls, loaded: LoadedModel) -> ScreeningKey:
        return cls(
            str(loaded.card.name),
            str(loaded.card.created or "unrecorded"),
            operating_point(loaded),
            float(loaded.threshold),
        )

    def matches(self, other: ScreeningKey) -> bool:
        return (self.model, self.version, self.operating_point) == (
            other.model,
            other.version,
            other.operating_point,
        ) and abs(self.threshold - other.threshold) <= 1e-9


def sealed_fields(
    source_uid: str, key: ScreeningKey, probability: float | None, decision: str, card_hash: str
) -> dict[str, Any]:
    """What a seal covers: the film and every field a reader of the result would act on."""
    return {
        "source": source_uid,
        "model": key.model,
        "version": key.version,
        "operating_point": key.operating_point,
        "threshold": float(key.threshold),
        "probability": None if probability is None else float(probability),
        "decision": decision,
        "card_hash": card_hash,
    }


@dataclass
class PriorScreening:
    """A pneumo SR found in the study: what it said, for the worklist, and what it stands for."""

    sr_uid: str
    source_uid: str
    key: ScreeningKey
    probability: float | None
    decision: str
    warnings: list[str]
    card_hash: str
    overlay_uid: str | None
    seal: str = ""
    pdf_uid: str | None = None  # the Encapsulated PDF the report references (TID 1500 reports only)
    region: tuple[float, ...] | None = None  # the Grad-CAM region's GraphicData (column, row pairs on the source film)
    layout: str = "enhanced"  # "tid1500" or "enhanced"

    def distrust(self, key: bytes, card_hash: str) -> str | None:
        """Why this SR is not believed, or None when its seal checks out and its card is the one in force."""
        from pneumo.integrations.pacs.seal import verify

        fields = sealed_fields(self.source_uid, self.key, self.probability, self.decision, self.card_hash)
        if not self.seal:
            return "carries no seal"
        if not verify(key, fields, self.seal):
            return "its seal does not match its content (forged or altered)"
        if self.card_hash != card_hash:
            return f"written under card {self.card_hash[:12]!r}, not the card in force ({card_hash[:12]})"
        return None


MAX_CONTENT_DEPTH = 16  # our SRs nest at most five levels; a deeper tree is not ours, and is not walked to its end
# The source film: "Source image for image processing operation" in the Enhanced SR, "Source of Measurement" in the TID
# 1500 report (the first one met, the probability's own, walking depth first).
SOURCE_CONCEPTS = ("DCM:121322", "DCM:121112")
TID1500_ROOT = "DCM:126000"  # Imaging Measurement Report


def _content_items(item: Mapping[str, Any], depth: int = 0) -> Iterable[Mapping[str, Any]]:
    if depth >= MAX_CONTENT_DEPTH:
        return
    for child in _values(item, "ContentSequence"):
        if isinstance(child, dict):
            yield child
            yield from _content_items(child, depth + 1)


def read_screening_sr(item: Mapping[str, Any]) -> PriorScreening | None:
    """A pneumo screening SR (as DICOM JSON) read back, the TID 1500 report or the Enhanced SR before it; None for any
    other SR."""
    if str(_value(item, "Modality")) != "SR" or str(_value(item, "Manufacturer")) != MANUFACTURER:
        return None
    found: dict[str, list[Any]] = {}
    refs: dict[str, str] = {}
    region: tuple[float, ...] | None = None
    for child in _content_items(item):
        concept: Mapping[str, Any] = next(iter(_values(child, "ConceptNameCodeSequence")), {})
        code = f"{_value(concept, 'CodingSchemeDesignator')}:{_value(concept, 'CodeValue')}"
        kind = str(_value(child, "ValueType"))
        if kind == "NUM":
            measured: Mapping[str, Any] = next(iter(_values(child, "MeasuredValueSequence")), {})
            number = _value(measured, "FloatingPointValue", None)
            number = float(number) if number is not None else float(_value(measured, "NumericValue", "nan"))
            found.setdefault(code, []).append(number)
        elif kind == "TEXT":
            found.setdefault(code, []).append(str(_value(child, "TextValue")))
        elif kind in ("IMAGE", "COMPOSITE"):
            ref: Mapping[str, Any] = next(iter(_values(child, "ReferencedSOPSequence")), {})
            refs.setdefault(code, str(_value(ref, "ReferencedSOPInstanceUID")))
        elif kind == "SCOORD" and code == "DCM:111030" and region is None:  # Image Region
            region = tuple(float(v) for v in _values(child, "GraphicData"))
    first = lambda code, default=None: (found.get(code) or [default])[0]  # noqa: E731
    source = next((refs[c] for c in SOURCE_CONCEPTS if refs.get(c)), None)
    threshold = first(f"{SCHEME}:THRESHOLD")
    if not source or threshold is None:
        return None
    root: Mapping[str, Any] = next(iter(_values(item, "ConceptNameCodeSequence")), {})
    tid1500 = f"{_value(root, 'CodingSchemeDesignator')}:{_value(root, 'CodeValue')}" == TID1500_ROOT
    key = ScreeningKey(
        str(first("DCM:111001", "")),
        str(first("DCM:111003", "")),
        str(first(f"{SCHEME}:OPPOINT", "")),
        float(threshold),  # a number in the Enhanced SR, its repr() as text in the TID 1500 report
    )
    probability = first("DCM:122157")
    return PriorScreening(
        sr_uid=str(_value(item, "SOPInstanceUID")),
        source_uid=source,
        key=key,
        probability=None if probability is None or math.isnan(probability) else float(probability),
        decision=str(first(f"{SCHEME}:DECISION", "")),
        warnings=list(found.get(f"{SCHEME}:WARNING", [])),
        card_hash=str(first(f"{SCHEME}:CARDHASH", "")),
        overlay_uid=refs.get(f"{SCHEME}:GRADCAM") or None,
        seal=str(first(f"{SCHEME}:SEAL", "")),
        pdf_uid=refs.get(f"{SCHEME}:REPORTPDF") or None,
        region=region or None,
        layout="tid1500" if tid1500 else "enhanced",
    )


def prior_screenings(
    metadata: Iterable[Mapping[str, Any]], key: ScreeningKey, seal_key: bytes, card_hash: str
) -> tuple[dict[str, PriorScreening], dict[str, list[str]]]:
    """Source SOP Instance UID → the latest SR of this model and operating point that screened it and proves it
    (PriorScreening.distrust), and source UID → why each other SR claiming it was not believed."""
    done: dict[str, PriorScreening] = {}
    untrusted: dict[str, list[str]] = {}
    for item in metadata:
        try:
            prior = read_screening_sr(item)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, OverflowError):
            continue  # a damaged or crafted SR claims nothing we can read: no film is skipped on its word
        if prior is None or not prior.key.matches(key):
            continue
        why = prior.distrust(seal_key, card_hash)
        if why is None:
            done[prior.source_uid] = prior
        else:
            untrusted.setdefault(prior.source_uid, []).append(f"SR {prior.sr_uid} ignored: {why}")
    return done, untrusted
