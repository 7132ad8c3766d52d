"""What a department screens: studies found by date or accession, and within them the frontal CR and DX chest films
(laterals, decubitus and for-processing images listed as skipped, with the reason). DICOM JSON read by keyword.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pneumo.integrations.pacs.client import Pacs, check_uid
from pneumo.integrations.pacs.config import PacsError
from pneumo.integrations.pacs.dicomjson import _texts, _value, _values
from pneumo.integrations.pacs.priors import ScreeningKey, prior_screenings
from pneumo.model.loading import LoadedModel

SCREENED_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = {"AP", "PA"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "XTABLE LATERAL", "LATERAL LEFT", "LATERAL RIGHT"}
DECUBITUS_VIEWS = {"LLD", "RLD", "DECUBITUS", "AP DECUBITUS", "PA DECUBITUS"}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS"}
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
DX_MAMMO_INTRAORAL_PREFIXES = ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.3")


# --- DICOM JSON helpers ---------------------------------------------------------------------------------

# --- what a department screens ------------------------------------------------------------------------------


@dataclass
class StudySummary:
    """One study of a search; patient identifiers only leave through row(show_identifiers=True)."""

    study_uid: str
    date: str
    time: str
    modalities: list[str]
    description: str
    series: int | None
    instances: int | None
    accession: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    patient_birth_date: str = field(default="", repr=False)
    screened: bool | None = None  # by the model asked about (None when not asked)

    def row(self, show_identifiers: bool = False) -> dict[str, Any]:
        """A table row for the page; identifiers (and the accession number, which leads to them) only when
        the deployment enables them."""
        row: dict[str, Any] = {
            "study_uid": self.study_uid,
            "date": self.date,
            "time": self.time,
            "modalities": ",".join(self.modalities),
            "description": self.description,
            "series": self.series,
            "instances": self.instances,
        }
        if self.screened is not None:
            row["screened"] = self.screened
        if show_identifiers:
            row.update(
                {
                    "accession": self.accession,
                    "patient_id": self.patient_id,
                    "patient_name": self.patient_name,
                    "patient_birth_date": self.patient_birth_date,
                }
            )
        return row


def _check_date(value: str | None, what: str) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).replace("-", "")
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise ValueError(f"{what} must be a date as YYYYMMDD, got {value!r}") from None
    return text


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON number read as infinity
        return None


def search_studies(
    pacs: Pacs,
    since: str | None = None,
    until: str | None = None,
    accession: str | None = None,
    modalities: Sequence[str] = SCREENED_MODALITIES,
    study_uids: Sequence[str] = (),
    unscreened_by: LoadedModel | None = None,
    limit: int | None = 200,
) -> list[StudySummary]:
    """Studies by date range (YYYYMMDD, inclusive), modality, accession number or UID, newest first.

    One query per modality (ModalitiesInStudy lists are not matched alike by every server). With
    unscreened_by, each study's metadata is read to keep those with a frontal film that model (at its
    operating point) has not screened yet."""
    start, end = _check_date(since, "since"), _check_date(until, "until")
    filters: dict[str, str] = {}
    if start or end:
        filters["StudyDate"] = f"{start or ''}-{end or ''}"
    if accession:
        filters["AccessionNumber"] = str(accession)
    if study_uids:
        # Checked like any UID bound for the server: a list of them is a filter, never free text.
        filters["StudyInstanceUID"] = ",".join(check_uid(uid) for uid in study_uids)
    found: dict[str, dict[str, Any]] = {}
    queried: Sequence[str | None] = modalities or [None]  # [None]: one query for every modality
    for modality in queried:
        query = dict(filters, **({"ModalitiesInStudy": modality} if modality else {}))
        for item in pacs.search_studies(query, limit):
            uid = str(_value(item, "StudyInstanceUID"))
            if uid:
                found.setdefault(uid, item)
    studies = [
        StudySummary(
            study_uid=uid,
            date=str(_value(item, "StudyDate")),
            time=str(_value(item, "StudyTime")),
            modalities=_texts(item, "ModalitiesInStudy"),
            description=str(_value(item, "StudyDescription")),
            series=_int_or_none(_value(item, "NumberOfStudyRelatedSeries", None)),
            instances=_int_or_none(_value(item, "NumberOfStudyRelatedInstances", None)),
            accession=str(_value(item, "AccessionNumber")),
            patient_id=str(_value(item, "PatientID")),
            patient_name=str(_value(item, "PatientName")),
            patient_birth_date=str(_value(item, "PatientBirthDate")),
        )
        for uid, item in found.items()
    ]
    studies.sort(key=lambda s: (s.date, s.time, s.study_uid), reverse=True)
    if limit is not None:
        studies = studies[:limit]
    if unscreened_by is not None:
        from pneumo.integrations.pacs.seal import seal_key
        from pneumo.model.reading import card_hash

        key, sealing, in_force = ScreeningKey.of(unscreened_by), seal_key(pacs.secret), card_hash(unscreened_by)
        for study in studies:
            try:
                metadata = pacs.study_metadata(study.study_uid)
            except PacsError as exc:
                if exc.fatal:
                    raise
                study.screened = False  # not known: listed, and screening it says what is wrong with it
                continue
            frontal, _ = select_instances(metadata)
            done, _ = prior_screenings(metadata, key, sealing, in_force)
            study.screened = all(c.sop_uid in done for c in frontal)
        studies = [s for s in studies if not s.screened]
    return studies


def list_studies(pacs: Pacs, show_identifiers: bool = False, **search: Any) -> list[dict[str, Any]]:
    """The app's study list: search_studies(pacs, **search) as table rows, patient identifiers and accession
    numbers only when show_identifiers (the deployment's PacsConfig.show_identifiers)."""
    return [study.row(show_identifiers) for study in search_studies(pacs, **search)]


@dataclass
class Candidate:
    """A frontal chest image chosen for screening, from its metadata."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    view: str
    note: str | None = None  # a reason to look twice (e.g. no view position recorded)


@dataclass
class Skip:
    study_uid: str
    series_uid: str
    sop_uid: str
    reason: str


def _is_lateral_text(text: str) -> bool:
    return bool(re.search(r"\b(LAT|LATERAL|LL|RL)\b", text.upper()))


def classify(item: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """('frontal', note) for a film to screen, ('skip', reason) for one a department would not send to a
    frontal-chest model, None for what is not a projection radiograph at all (reports, our own results)."""
    modality = str(_value(item, "Modality")).upper()
    if modality not in SCREENED_MODALITIES:
        return None
    sop_class = str(_value(item, "SOPClassUID"))
    view = str(_value(item, "ViewPosition")).strip().upper()
    body = str(_value(item, "BodyPartExamined")).strip().upper()
    image_type = [v.upper() for v in _texts(item, "ImageType")]
    if sop_class == DX_FOR_PROCESSING or str(_value(item, "PresentationIntentType")).upper() == "FOR PROCESSING":
        return "skip", "for-processing image (raw detector data); its for-presentation image is the one read"
    if sop_class.startswith(DX_MAMMO_INTRAORAL_PREFIXES):
        return "skip", "mammography or intra-oral image, not a chest film"
    if "SECONDARY" in image_type:
        return "skip", "secondary (derived) image, not an acquisition"
    if body not in CHEST_BODY_PARTS:
        return "skip", f"body part {body}, not chest"
    if _int_or_none(_value(item, "NumberOfFrames", 1)) not in (None, 0, 1):
        return "skip", "multi-frame image; a chest film has one frame"
    if "LOCALIZER" in image_type:
        return "skip", "localizer image"
    if view in LATERAL_VIEWS:
        return "skip", f"lateral view (ViewPosition {view}); the model reads frontal (AP/PA) chest films only"
    if view in DECUBITUS_VIEWS:
        return "skip", f"decubitus view (ViewPosition {view}); the model reads erect or supine frontal films only"
    if view in FRONTAL_VIEWS:
        return "frontal", None
    if view:
        return "skip", f"view position {view} is not frontal (AP/PA)"
    codes = " ".join(str(_value(c, "CodeMeaning")) for c in _values(item, "ViewCodeSequence") if isinstance(c, dict))
    described = " ".join(
        str(_value(item, k)) for k in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription")
    )
    if _is_lateral_text(codes) or _is_lateral_text(described):
        return "skip", "lateral view (from the view code or series description); the model reads frontal films only"
    return "frontal", "view position not recorded: read as a frontal film, check the view"


def select_instances(metadata: Iterable[Mapping[str, Any]]) -> tuple[list[Candidate], list[Skip]]:
    """The frontal chest films of a study, and the films left out with the reason, in series order."""
    frontal: list[Candidate] = []
    skipped: list[Skip] = []
    ordered = sorted(
        metadata,
        key=lambda m: (
            _int_or_none(_value(m, "SeriesNumber", None)) or 0,
            _int_or_none(_value(m, "InstanceNumber", None)) or 0,
        ),
    )
    for item in ordered:
        verdict = classify(item)
        if verdict is None:
            continue
        ids = (
            str(_value(item, "StudyInstanceUID")),
            str(_value(item, "SeriesInstanceUID")),
            str(_value(item, "SOPInstanceUID")),
        )
        if verdict[0] == "frontal":
            frontal.append(
                Candidate(
                    *ids,
                    sop_class_uid=str(_value(item, "SOPClassUID")),
                    view=str(_value(item, "ViewPosition")),
                    note=verdict[1],
                )
            )
        else:
            skipped.append(Skip(*ids, reason=str(verdict[1])))
    return frontal, skipped
