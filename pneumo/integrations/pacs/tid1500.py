"""The reading as a TID 1500 Imaging Measurement Report (highdicom), the structure a department's viewer shows: the
finding coded, the probability measured, the Grad-CAM's hottest region on the film, pneumo named as IHE AIR asks.

Building blocks only (codes, region, equipment, content tree) and the read-back; writers.py makes the SR document
and seals it. The content tree:

    Imaging Measurement Report (DCM 126000, TID 1500)
      language, device observer (the model: name, device UID from the model file's hash), procedure (chest film)
      Imaging Measurements
        Measurement Group (TID 1501) "pneumonia screening", source film referenced
          Finding: Pneumonia; algorithm (name, version, parameters)
          Probability (NUM, UCUM {probability}); Pneumonia: Present / Absent / Indeterminate (CODE)
          decision, operating point, threshold, band, card hash, engine, seal, warnings, research use (TEXT)
          the overlay (IMAGE) and the PDF report (COMPOSITE)
        Measurement Group (TID 1410) "Grad-CAM hottest region": a closed POLYLINE on the source film
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pneumo import __version__
from pneumo.integrations.pacs.config import MANUFACTURER, SCHEME
from pneumo.integrations.pacs.results import InstanceResult
from pneumo.model.loading import LoadedModel
from pneumo.model.reading import NORMAL, PNEUMONIA, UNCERTAIN

# pydicom and highdicom are imported where used, as everywhere in pneumo.integrations.pacs: the CLI imports this at
# start.

TRACKING_SCREENING = "pneumonia screening"
TRACKING_REGION = "Grad-CAM hottest region"
# The hottest region: the connected pixels around the map's peak whose heat is within this share of the peak
# (relative to the map's own range). 0.8 keeps the blob a reader would circle, not the whole lung.
REGION_SHARE = 0.8


def codes() -> dict[str, Any]:
    """Every concept the reports use: standard codes where DICOM has one (SCT, DCM, LN, UCUM), pneumo's own
    (coding scheme 99PNEUMO) for what only pneumo says. The old Enhanced SR used the same private codes, so one
    reader finds both."""
    from pydicom.sr.codedict import codes as dcm
    from pydicom.sr.coding import Code

    return {
        "title": Code("18748-4", "LN", "Diagnostic imaging report"),
        "probability": dcm.DCM.Probability,  # DCM 122157
        "finding": dcm.DCM.Finding,
        "pneumonia": Code("233604007", "SCT", "Pneumonia"),
        "present": Code("52101004", "SCT", "Present"),
        "absent": Code("2667000", "SCT", "Absent"),
        "indeterminate": Code("82334004", "SCT", "Indeterminate"),
        "procedure": Code("399208008", "SCT", "Plain chest X-ray"),
        "probability_unit": Code("{probability}", "UCUM", "probability"),
        "source": dcm.DCM.SourceImageForImageProcessingOperation,  # DCM 121322, the old SR's source reference
        "algorithm": dcm.DCM.AlgorithmName,
        "version": dcm.DCM.AlgorithmVersion,
        "no_units": dcm.UCUM.NoUnits,
        "device": dcm.DCM.Device,
        "processing": dcm.DCM.ProcessingEquipment,  # DCM 109102, IHE AIR's purpose of reference
        "decision": Code("DECISION", SCHEME, "Screening decision"),
        "threshold": Code("THRESHOLD", SCHEME, "Decision threshold"),
        "band": Code("BAND", SCHEME, "Uncertain band half-width"),
        "operating_point": Code("OPPOINT", SCHEME, "Operating point"),
        "card_hash": Code("CARDHASH", SCHEME, "Model card SHA-256 (12 hex)"),
        "seal": Code("SEAL", SCHEME, "HMAC-SHA256 of the reading under the deployment's key"),
        "engine": Code("ENGINE", SCHEME, "Inference engine"),
        "warning": Code("WARNING", SCHEME, "Input check warning"),
        "research": Code("RESEARCH", SCHEME, "Research use statement"),
        "overlay": Code("GRADCAM", SCHEME, "Grad-CAM overlay"),
        "pdf": Code("REPORTPDF", SCHEME, "Screening report (PDF)"),
        "region": Code("GRADCAMREGION", SCHEME, "Highest Grad-CAM attribution region"),
        "explained": Code("EXPLAINED", SCHEME, "Class the Grad-CAM map explains"),
        "region_note": Code("REGIONNOTE", SCHEME, "What the region means"),
    }


REGION_NOTE = (
    "The region where the Grad-CAM map of the decided class peaks: what drove the score, not an outline of disease."
)


# --- the region ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A rectangle on the source film in its own pixel space (DICOM image coordinates: column, row, with (0, 0)
    the top-left corner of the first pixel, so a pixel's centre is at +0.5), and the map's peak inside it."""

    left: float
    top: float
    right: float
    bottom: float
    peak: tuple[float, float]  # (column, row)

    def polyline(self) -> np.ndarray:
        """The rectangle as a closed POLYLINE: five (column, row) points, the last the first."""
        corners = [
            (self.left, self.top),
            (self.right, self.top),
            (self.right, self.bottom),
            (self.left, self.bottom),
            (self.left, self.top),
        ]
        return np.asarray(corners, dtype=np.float32)

    @classmethod
    def from_polyline(cls, points: Sequence[float] | np.ndarray) -> Region:
        """The rectangle back from a POLYLINE's GraphicData (flat column, row pairs); its peak is its centre."""
        pairs = np.asarray(points, dtype=float).reshape(-1, 2)
        left, top = pairs.min(axis=0)
        right, bottom = pairs.max(axis=0)
        return cls(
            float(left), float(top), float(right), float(bottom), (float(left + right) / 2, float(top + bottom) / 2)
        )


def hottest_region(heatmap: np.ndarray, rows: int, columns: int, share: float = REGION_SHARE) -> Region | None:
    """The Grad-CAM map's hottest region on a film of rows × columns: the connected pixels around the peak whose
    heat is within `share` of it, as their bounding rectangle. The map may be at any size (the model's input, the
    decoded film, which pneumo keeps at 2048 px at most); it is scaled to the source film's pixel space here, each
    axis on its own as the map was stretched onto the film. None for a flat or empty map: no region is claimed."""
    from scipy import ndimage

    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    if heat.ndim != 2 or heat.size == 0 or rows < 1 or columns < 1:
        return None
    low, high = float(heat.min()), float(heat.max())
    if high - low <= 1e-8:
        return None
    peak_row, peak_col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    labels, _ = ndimage.label(heat >= low + share * (high - low))
    ys, xs = np.nonzero(labels == labels[peak_row, peak_col])
    sy, sx = rows / heat.shape[0], columns / heat.shape[1]
    return Region(
        left=float(xs.min() * sx),
        top=float(ys.min() * sy),
        right=float((xs.max() + 1) * sx),
        bottom=float((ys.max() + 1) * sy),
        peak=(float((peak_col + 0.5) * sx), float((peak_row + 0.5) * sy)),
    )


# --- who made it (IHE AIR) -------------------------------------------------------------------------------------


def device_uid(loaded: LoadedModel) -> str:
    """A UID for the model as a device: a name-based UUID (2.25) of the model file's SHA-256, so the same file gives
    the same UID on every machine and a retrained one a new UID. A model without a readable file (an in-memory test
    double) is named by its card instead."""

    def build() -> str:
        digest = hashlib.sha256()
        try:
            with open(loaded.path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            name = f"pneumo-model-sha256:{digest.hexdigest()}"
        except OSError:
            from pneumo.model.reading import card_hash

            name = f"pneumo-model-card:{card_hash(loaded)}"
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"

    # The cache lives as long as the loaded network, so a run over many studies hashes the file once.
    return loaded.cache.get(("pacs", "device-uid", str(loaded.path)), build)


def _lo(text: str) -> str:
    """A DICOM LO value: ASCII-safe, at most 64 characters."""
    return text.encode("ascii", "replace").decode()[:64]


def software_versions(loaded: LoadedModel) -> list[str]:
    return [_lo(f"pneumo {__version__}"), _lo(f"{loaded.card.name} {loaded.card.created or 'unrecorded'}")]


def coding_scheme() -> Any:
    """The Coding Scheme Identification item of pneumo's own codes (99PNEUMO), so a reader of a report learns whose
    codes they are."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "pneumo screening concepts"
    item.CodingSchemeResponsibleOrganization = "pneumo project"
    return item


def contributing_equipment(loaded: LoadedModel, what: str) -> Any:
    """pneumo as Contributing Equipment (IHE AIR): purpose of reference Processing Equipment (DCM 109102),
    manufacturer, model name, software versions (pneumo's and the model's), the model's device UID, and when and what
    it contributed. highdicom lists it beside the source's acquisition equipment and itself."""
    import highdicom as hd

    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes()["processing"],
        manufacturer_model_name=_lo(str(loaded.card.name)),
        software_versions=software_versions(loaded),
        contribution_datetime=datetime.now(timezone.utc),
        contribution_description=_lo(what),
    )
    item.DeviceUID = device_uid(loaded)
    return item


# --- the content tree ------------------------------------------------------------------------------------------


def presence(decision: str | None) -> Any | None:
    """The decision as a coded Present / Absent / Indeterminate (the uncertain band); None for a film that is not
    assessable, where no claim about pneumonia is made at all."""
    c = codes()
    return {PNEUMONIA: c["present"], NORMAL: c["absent"], UNCERTAIN: c["indeterminate"]}.get(str(decision))


def explained_class(probability: float, threshold: float) -> str:
    """The class a map explains: the decided one at the threshold (the overlay and the PDF say the same)."""
    return PNEUMONIA if probability >= threshold else NORMAL


def measurement_report(
    source: Any,
    result: InstanceResult,
    loaded: LoadedModel,
    *,
    band: float,
    research_use: str,
    seal: str | None = None,
    region: Region | None = None,
    overlay: Any | None = None,
    pdf: Any | None = None,
) -> Any:
    """The TID 1500 content tree (highdicom MeasurementReport) of one screened film; see the module's docstring."""
    import highdicom as hd

    if result.threshold is None:
        raise ValueError(f"{result.path}: no threshold recorded; only a screened film has a report")
    c = codes()
    rel = hd.sr.RelationshipTypeValues
    name, version = str(loaded.card.name), str(loaded.card.created or "unrecorded")
    algorithm = hd.sr.AlgorithmIdentification(
        name=name,
        version=version,
        parameters=[
            f"operating point {result.operating_point}",
            f"threshold {float(result.threshold)!r}",
            f"uncertain band +/-{float(band)!r}",
        ],
        manufacturer=MANUFACTURER,
    )
    measurements = []
    if result.probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=c["probability"],
                value=float(result.probability),
                unit=c["probability_unit"],
                referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(source)],
            )
        )
    coded = presence(result.prediction)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=TRACKING_SCREENING),
        finding_type=c["pneumonia"],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(c["pneumonia"], coded)] if coded is not None else None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    # What TID 1501 has no row for goes in as text (the template is extensible): what a reader acts on (decision,
    # operating point, threshold, band, warnings, research use) and what proves the reading ours (card hash, seal).
    texts = [
        (c["decision"], str(result.prediction)),
        (c["operating_point"], str(result.operating_point)),
        (c["threshold"], repr(float(result.threshold))),  # repr: the float reads back exactly, for the seal
        (c["band"], repr(float(band))),
        (c["card_hash"], str(result.card_hash)),
        (c["engine"], f"pneumo {__version__}, {loaded.engine_name}"),
    ]
    if seal:
        texts.append((c["seal"], seal))
    texts += [(c["warning"], str(w)[:1024]) for w in result.warnings]
    texts.append((c["research"], research_use))
    content = group[0].ContentSequence
    for concept, value in texts:
        content.append(hd.sr.TextContentItem(concept, value, relationship_type=rel.CONTAINS))
    if overlay is not None:
        content.append(
            hd.sr.ImageContentItem(
                c["overlay"], overlay.SOPClassUID, overlay.SOPInstanceUID, relationship_type=rel.CONTAINS
            )
        )
    if pdf is not None:
        content.append(
            hd.sr.CompositeContentItem(c["pdf"], pdf.SOPClassUID, pdf.SOPInstanceUID, relationship_type=rel.CONTAINS)
        )
    groups: list[Any] = [group]
    if region is not None and result.probability is not None:
        roi = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=TRACKING_REGION),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=region.polyline(),
                source_image=hd.sr.SourceImageForRegion.from_source_image(source),
            ),
            finding_type=c["region"],
            algorithm_id=algorithm,
        )
        for concept, value in (
            (c["explained"], explained_class(float(result.probability), float(result.threshold))),
            (c["region_note"], REGION_NOTE),
        ):
            roi[0].ContentSequence.append(hd.sr.TextContentItem(concept, value, relationship_type=rel.CONTAINS))
        groups.append(roi)
    observer = hd.sr.ObserverContext(
        observer_type=c["device"],
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(loaded),
            name=_lo(name),
            manufacturer_name=MANUFACTURER,
            model_name=_lo(name),
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=c["procedure"],
        imaging_measurements=groups,
    )


# --- read back with highdicom ----------------------------------------------------------------------------------


@dataclass
class ReportReading:
    """What a TID 1500 report of pneumo says, read back through highdicom's own template classes."""

    sop_uid: str
    source_uid: str | None
    probability: float | None
    decision: str | None
    presence: str | None  # "Present", "Absent" or "Indeterminate" as coded; None when no claim is made
    threshold: float | None
    operating_point: str | None
    region: Region | None
    warnings: list[str]


def read_measurement_report(dataset: Any) -> ReportReading:
    """A stored report read back with highdicom (Comprehensive3DSR and MeasurementReport): ValueError when it is not a
    TID 1500 report."""
    import highdicom as hd

    c = codes()
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    report = hd.sr.MeasurementReport.from_sequence([sr])  # the document is its own root item
    groups = report.get_image_measurement_groups()
    if not groups:
        raise ValueError(f"SR {dataset.SOPInstanceUID}: no image measurement group")
    group = groups[0]
    found = group.get_measurements(name=c["probability"])
    evaluations = group.get_qualitative_evaluations(name=c["pneumonia"])
    texts: dict[str, list[str]] = {}
    for item in hd.sr.utils.find_content_items(group[0], value_type=hd.sr.ValueTypeValues.TEXT):
        texts.setdefault(str(item.ConceptNameCodeSequence[0].CodeValue), []).append(str(item.TextValue))
    sources = group.source_images
    region = None
    rois = report.get_planar_roi_measurement_groups(finding_type=c["region"])
    if rois and rois[0].roi is not None:
        region = Region.from_polyline(rois[0].roi.value)

    def one(code: str) -> str | None:
        values = texts.get(code)
        return values[0] if values else None

    threshold = one("THRESHOLD")
    # highdicom types a qualitative evaluation's value as a number; it is the coded concept (CodeContentItem.value).
    coded = getattr(evaluations[0].value, "meaning", None) if evaluations else None
    return ReportReading(
        sop_uid=str(dataset.SOPInstanceUID),
        source_uid=str(sources[0].referenced_sop_instance_uid) if sources else None,
        probability=float(found[0].value) if found else None,
        decision=one("DECISION"),
        presence=None if coded is None else str(coded),
        threshold=None if threshold is None else float(threshold),
        operating_point=one("OPPOINT"),
        region=region,
        warnings=list(texts.get("WARNING", [])),
    )
