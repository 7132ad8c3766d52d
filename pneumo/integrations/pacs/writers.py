"""The DICOM pneumo writes into the source's study: a TID 1500 measurement report (highdicom Comprehensive 3D SR), an
Encapsulated PDF of the reading and a Secondary Capture of the Grad-CAM overlay with a research-use banner burned in,
all referencing the source film.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from pneumo import __version__
from pneumo.integrations.pacs.config import MANUFACTURER
from pneumo.integrations.pacs.results import InstanceResult
from pneumo.integrations.pacs.tid1500 import (
    Region,
    codes,
    coding_scheme,
    contributing_equipment,
    measurement_report,
    software_versions,
)
from pneumo.model.loading import LoadedModel
from pneumo.model.reading import DEFAULT_BAND

RESEARCH_USE = (
    "Research use only - not a medical device. pneumo has not been cleared by any regulator; its "
    "output must not be used to diagnose or treat patients without a qualified clinician's own reading."
)
BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SR_SERIES_DESCRIPTION = "pneumo pneumonia screening SR - RESEARCH USE ONLY"
SC_SERIES_DESCRIPTION = "pneumo Grad-CAM overlay - RESEARCH USE ONLY"
PDF_SERIES_DESCRIPTION = "pneumo screening report PDF - RESEARCH USE ONLY"
PDF_TITLE = "Chest X-ray pneumonia screening report - RESEARCH USE ONLY"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


# High series numbers: viewers list series by number, so the results follow the acquisitions.
SR_SERIES_NUMBER, SC_SERIES_NUMBER, PDF_SERIES_NUMBER = 9901, 9902, 9903


def _codes() -> dict[str, Any]:
    return codes()


# --- the DICOM we write --------------------------------------------------------------------------------------


def _header(source_bytes: bytes) -> Any:
    """The source's header without its pixels, with the patient and study attributes SR and SC copy
    made present (a PACS may omit type-2 attributes; highdicom reads them unconditionally)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(source_bytes), force=True, stop_before_pixels=True)
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    ):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _ascii(text: str) -> str:
    return text.replace("—", "-").replace("–", "-").replace("±", "+/-").encode("ascii", "replace").decode()


def _fit_text(canvas: np.ndarray, text: str, y0: int, height: int, colour: tuple[int, int, int]) -> None:
    import cv2

    width = canvas.shape[1]
    scale, thick = height / 30.0, max(1, round(height / 22))
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    if w > width * 0.96:  # shrink to fit the band's width
        scale *= width * 0.96 / w
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.putText(
        canvas,
        text,
        ((width - w) // 2, y0 + (height + h) // 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        colour,
        thick,
        cv2.LINE_AA,
    )


def overlay_picture(
    pixels: np.ndarray, heatmap: np.ndarray, lines: Sequence[str], alpha: float = 0.4, min_side: int = 512
) -> np.ndarray:
    """The Grad-CAM overlay with its colour bar, a red research-use banner on top and the reading below,
    as RGB uint8. Small films are enlarged first so the burned-in text stays legible in a viewer."""
    import cv2

    from pneumo.model.explain import overlay, with_colorbar

    if min(pixels.shape) < min_side:
        scale = min_side / min(pixels.shape)
        size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
        heatmap = cv2.resize(heatmap, size, interpolation=cv2.INTER_LINEAR)
    picture = with_colorbar(overlay(pixels, heatmap, alpha))
    band = max(24, picture.shape[0] // 16)
    top = np.zeros((band, picture.shape[1], 3), np.uint8)
    top[:] = (170, 0, 0)
    _fit_text(top, BANNER, 0, band, (255, 255, 255))
    bottom = np.zeros((band * len(lines), picture.shape[1], 3), np.uint8)
    for i, line in enumerate(lines):
        _fit_text(bottom, _ascii(line), i * band, band, (255, 255, 255))
    return np.ascontiguousarray(np.concatenate([top, picture, bottom], axis=0))


def _orientation(source: Any) -> tuple[str, str]:
    value = list(source.get("PatientOrientation") or [])
    if len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return "L", "F"  # a frontal chest film as displayed: rows run to the patient's left, columns to the feet


def build_overlay_sc(
    source: Any, picture: np.ndarray, series_uid: str, instance_number: int, loaded: LoadedModel
) -> Any:
    """The overlay as a Secondary Capture (highdicom) in the source's study, referencing the source image."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        orientation = _orientation(source)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=picture,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            patient_orientation=orientation,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=SC_SERIES_DESCRIPTION,
            manufacturer_model_name=_ascii(str(loaded.card.name))[:64],
            software_versions=f"pneumo {__version__}",
        )
    except ValueError:  # an orientation value highdicom does not know: keep the image, drop the claim
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=picture,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=SC_SERIES_DESCRIPTION,
            manufacturer_model_name=_ascii(str(loaded.card.name))[:64],
            software_versions=f"pneumo {__version__}",
        )
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = _ascii(f"Grad-CAM overlay of the pneumonia score by {loaded.card.name}; {RESEARCH_USE}")[
        :1024
    ]
    sc.BurnedInAnnotation = "NO"  # the burned-in text names the model and score, never the patient
    # Only chest films are screened (studies.py); saying so tells a validator the body part is unpaired, so no
    # Laterality is owed (dciodvfy asks for one when the body part is unknown).
    sc.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")[:16]
    sc.ImageComments = RESEARCH_USE
    if "SpecificCharacterSet" not in sc:
        sc.SpecificCharacterSet = "ISO_IR 192"
    return sc


def _seal(source: Any, result: InstanceResult, loaded: LoadedModel, seal_key: bytes) -> str:
    """The seal of what a reader acts on (seal.py), the same for the TID 1500 report and the Enhanced SR before it."""
    from pneumo.integrations.pacs.priors import ScreeningKey, sealed_fields
    from pneumo.integrations.pacs.seal import seal

    assert result.threshold is not None  # checked by the builders
    key = ScreeningKey(
        str(loaded.card.name),
        str(loaded.card.created or "unrecorded"),
        str(result.operating_point),
        float(result.threshold),
    )
    fields = sealed_fields(
        str(source.SOPInstanceUID), key, result.probability, str(result.prediction), str(result.card_hash)
    )
    return seal(seal_key, fields)


def build_screening_sr(
    source: Any,
    result: InstanceResult,
    loaded: LoadedModel,
    series_uid: str,
    instance_number: int,
    overlay: Any | None = None,
    band: float | None = None,
    seal_key: bytes | None = None,
    region: Region | None = None,
    pdf: Any | None = None,
) -> Any:
    """The reading as a TID 1500 Imaging Measurement Report in a Comprehensive 3D SR (highdicom): the finding coded,
    the probability measured, decision, operating point, threshold, warnings and research use as text, the Grad-CAM's
    hottest region (a POLYLINE on the source film) when given, the overlay and the PDF referenced when stored with it,
    pneumo as Contributing Equipment and device observer (IHE AIR), sealed with seal_key. UNVERIFIED and PRELIMINARY:
    no person has read it. Patient, study and accession come from the source (highdicom copies them from the first
    evidence), which is also the requested procedure's evidence."""
    import highdicom as hd

    if result.threshold is None:
        raise ValueError(f"{result.path}: no threshold recorded; only a screened film has an SR")
    content = measurement_report(
        source,
        result,
        loaded,
        band=float(DEFAULT_BAND if band is None else band),
        research_use=RESEARCH_USE,
        seal=_seal(source, result, loaded, seal_key) if seal_key is not None else None,
        region=region,
        overlay=overlay,
        pdf=pdf,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[d for d in (source, overlay, pdf) if d is not None],
        content=content[0],
        requested_procedures=_requests(source) or None,
        contributing_equipment=[contributing_equipment(loaded, "pneumonia screening of the referenced film")],
        software_versions=software_versions(loaded),
        **_sr_series(series_uid, instance_number, loaded),
    )
    sr.CodingSchemeIdentificationSequence = [coding_scheme()]
    return sr


def _sr_series(series_uid: str, instance_number: int, loaded: LoadedModel) -> dict[str, Any]:
    """What every SR pneumo writes says of its series, its instance and its state, whichever template it holds."""
    import highdicom as hd

    return {
        # UTF-8, whatever the source film declares (often nothing, i.e. ASCII): the sealed text (site and operating
        # point names) must read back as written.
        "specific_character_set": "ISO_IR 192",
        "series_instance_uid": series_uid,
        "series_number": SR_SERIES_NUMBER,
        "sop_instance_uid": hd.UID(),
        "instance_number": instance_number,
        "manufacturer": MANUFACTURER,
        "is_complete": True,
        "is_final": False,
        "is_verified": False,  # PRELIMINARY and UNVERIFIED: no person has read it
        "series_description": SR_SERIES_DESCRIPTION,
        "manufacturer_model_name": _ascii(str(loaded.card.name))[:64],
    }


def _requests(source: Any) -> list[Any]:
    """The source's requests (Request Attributes Sequence) as the SR's Referenced Request Sequence: the order the
    film answered is the order the report answers, with the study's accession number."""
    from pydicom.dataset import Dataset

    items = []
    for request in list(source.get("RequestAttributesSequence") or [])[:16]:
        item = Dataset()
        item.StudyInstanceUID = source.StudyInstanceUID
        item.ReferencedStudySequence = list(request.get("ReferencedStudySequence") or [])
        item.AccessionNumber = source.get("AccessionNumber", "")
        if source.get("IssuerOfAccessionNumberSequence"):
            item.IssuerOfAccessionNumberSequence = list(source.IssuerOfAccessionNumberSequence)[:1]
        item.PlacerOrderNumberImagingServiceRequest = ""
        item.FillerOrderNumberImagingServiceRequest = ""
        item.RequestedProcedureID = request.get("RequestedProcedureID", "")
        item.RequestedProcedureDescription = request.get("RequestedProcedureDescription", "")
        item.RequestedProcedureCodeSequence = list(request.get("RequestedProcedureCodeSequence") or [])
        items.append(item)
    return items


def build_report_pdf(source: Any, pdf_bytes: bytes, series_uid: str, instance_number: int, loaded: LoadedModel) -> Any:
    """The reading's PDF report (pneumo.integrations.report) as an Encapsulated PDF in the source's study: patient,
    study and accession copied from the source, which it names as its source instance; pneumo as equipment and as
    Contributing Equipment; UNVERIFIED."""
    import highdicom as hd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    if not pdf_bytes.startswith(b"%PDF-"):
        raise ValueError("not a PDF document")
    sop_uid = hd.UID()
    now = datetime.now(timezone.utc)
    meta = FileMetaDataset()
    # Complete as a file's: the STOW-RS body (client.stow_body) writes the meta as it is, and the PACS serves it so.
    meta.FileMetaInformationGroupLength = 0  # pydicom writes the real length in its place
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP Common
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ContributingEquipmentSequence = [contributing_equipment(loaded, "screening report of the referenced film")]
    ds.CodingSchemeIdentificationSequence = [coding_scheme()]
    # Patient and General Study: the source's, so the document files under the same patient, study and accession.
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "IssuerOfAccessionNumberSequence",
        "StudyDescription",
    ):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    for keyword in ("ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    # Encapsulated Document Series, General Equipment, SC Equipment
    ds.Modality = "DOC"
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, PDF_SERIES_NUMBER
    ds.SeriesDescription = PDF_SERIES_DESCRIPTION
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = _ascii(str(loaded.card.name))[:64]
    ds.SoftwareVersions = software_versions(loaded)
    ds.ConversionType = "SYN"  # made by software, not scanned
    # Encapsulated Document
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"  # the report prints the study fields the decoder keeps, never patient identifiers
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = PDF_TITLE
    title = _codes()["title"]
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        title.value,
        title.scheme_designator,
        title.meaning,
    )
    ds.ConceptNameCodeSequence = [concept]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    ds.SourceInstanceSequence = [ref]
    ds.VerificationFlag = "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf_bytes)  # the document's own length; the value is padded to even
    ds.EncapsulatedDocument = pdf_bytes + (b"\0" if len(pdf_bytes) % 2 else b"")
    return ds


def build_enhanced_sr(
    source: Any,
    result: InstanceResult,
    loaded: LoadedModel,
    series_uid: str,
    instance_number: int,
    overlay: Any | None = None,
    band: float | None = None,
    seal_key: bytes | None = None,
) -> Any:
    """The Enhanced SR pneumo wrote before the TID 1500 report: probability (NUM, inferred from the source image),
    decision, threshold, band, operating point, model name and version, card hash, engine, warnings and
    the research-use statement; the overlay (when stored with it) referenced too. PACS hold such SRs from earlier
    runs; priors.py still reads them, and the tests make them with this to prove it."""
    import highdicom as hd

    if result.threshold is None:
        raise ValueError(f"{result.path}: no threshold recorded; only a screened film has an SR")
    c = _codes()
    rel = hd.sr.RelationshipTypeValues
    source_ref = hd.sr.ImageContentItem(
        c["source"], source.SOPClassUID, source.SOPInstanceUID, relationship_type=rel.INFERRED_FROM
    )
    items: list[Any] = [
        hd.sr.TextContentItem(c["research"], RESEARCH_USE, relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(c["algorithm"], str(loaded.card.name), relationship_type=rel.HAS_OBS_CONTEXT),
        hd.sr.TextContentItem(
            c["version"], str(loaded.card.created or "unrecorded"), relationship_type=rel.HAS_OBS_CONTEXT
        ),
        hd.sr.TextContentItem(c["card_hash"], str(result.card_hash), relationship_type=rel.HAS_OBS_CONTEXT),
        hd.sr.TextContentItem(
            c["engine"], f"pneumo {__version__}, {loaded.engine_name}", relationship_type=rel.HAS_OBS_CONTEXT
        ),
        hd.sr.TextContentItem(c["operating_point"], str(result.operating_point), relationship_type=rel.CONTAINS),
        hd.sr.NumContentItem(c["threshold"], float(result.threshold), c["no_units"], relationship_type=rel.CONTAINS),
        hd.sr.NumContentItem(
            c["band"], float(DEFAULT_BAND if band is None else band), c["no_units"], relationship_type=rel.CONTAINS
        ),
    ]
    if result.probability is not None:
        probability = hd.sr.NumContentItem(
            c["probability"], float(result.probability), c["no_units"], relationship_type=rel.CONTAINS
        )
        probability.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.CodeContentItem(c["finding"], c["pneumonia"], relationship_type=rel.HAS_CONCEPT_MOD), source_ref]
        )
        items.append(probability)
    items.append(hd.sr.TextContentItem(c["decision"], str(result.prediction), relationship_type=rel.CONTAINS))
    if seal_key is not None:
        sealed = _seal(source, result, loaded, seal_key)
        items.append(hd.sr.TextContentItem(c["seal"], sealed, relationship_type=rel.HAS_OBS_CONTEXT))
    for warning in result.warnings:
        items.append(hd.sr.TextContentItem(c["warning"], str(warning)[:1024], relationship_type=rel.CONTAINS))
    # The source image at the root as well: a reader of the tree finds it without knowing our layout.
    items.append(
        hd.sr.ImageContentItem(c["source"], source.SOPClassUID, source.SOPInstanceUID, relationship_type=rel.CONTAINS)
    )
    evidence = [source]
    if overlay is not None:
        items.append(
            hd.sr.ImageContentItem(
                c["overlay"], overlay.SOPClassUID, overlay.SOPInstanceUID, relationship_type=rel.CONTAINS
            )
        )
        evidence.append(overlay)
    root = hd.sr.ContainerContentItem(c["title"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    return hd.sr.EnhancedSR(
        evidence=evidence,
        content=root,
        software_versions=f"pneumo {__version__}",
        **_sr_series(series_uid, instance_number, loaded),
    )
