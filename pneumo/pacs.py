"""Screen chest films where they live: a PACS reached over DICOMweb, with the results stored back into the study.

Search (QIDO-RS), retrieve (WADO-RS), screen through the one prediction path (``predict.read``), and store
(STOW-RS) a DICOM SR (highdicom) holding the probability, decision, threshold, operating point, model,
card hash, warnings and the research-use statement, plus a Secondary Capture of the Grad-CAM overlay with
its colour bar and a research-use banner burned in. Both reference the source image and go into the same
study as new series.

Resuming: the SR is the record of a screening. Before reading a study, its metadata is fetched once; any
frontal image already referenced by a pneumo SR of the same model, version, operating point and threshold
is reported from that SR instead of being read again (unless forced). Results are stored image by image,
so an interrupted run loses nothing stored, and the next run carries on from there.

Every failure of the server (unreachable, timeout, a rejected store, an unreadable answer) becomes a
``PacsError`` whose message is one line naming the server and the study; connection-level ones end a
run (every later call would fail the same way), the others fail only that study or image.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from . import __version__
from .imaging import resize
from .models import PROJECT_ROOT, LoadedModel
from .predict import DEFAULT_BAND, NOT_ASSESSABLE, card_hash, read

# pydicom, highdicom, dicomweb-client, requests, OpenCV and pneumo.explain (OpenCV) are imported where used: the CLI
# and the dashboard import this module at start; pneumo.drift is optional (see _drift).

# dicomweb-client logs failed requests at ERROR; without a handler Python's last resort would print them
# on stderr beside our own one line. A handler here keeps them for an app that configures logging.
logging.getLogger("dicomweb_client").addHandler(logging.NullHandler())

RESEARCH_USE = ("Research use only - not a medical device. pneumo has not been cleared by any regulator; its "
                "output must not be used to diagnose or treat patients without a qualified clinician's own reading.")
BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SR_SERIES_DESCRIPTION = "pneumo pneumonia screening SR - RESEARCH USE ONLY"
SC_SERIES_DESCRIPTION = "pneumo Grad-CAM overlay - RESEARCH USE ONLY"
MANUFACTURER = "pneumo"
# High series numbers: viewers list series by number, so the results follow the acquisitions.
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SCREENED_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = {"AP", "PA"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLAT", "RLAT", "XTABLE LATERAL", "LATERAL LEFT", "LATERAL RIGHT"}
DECUBITUS_VIEWS = {"LLD", "RLD", "DECUBITUS", "AP DECUBITUS", "PA DECUBITUS"}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS"}
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
DX_MAMMO_INTRAORAL_PREFIXES = ("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.3")
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'

ENV_URL = "PNEUMO_PACS_URL"
ENV_TOKEN = "PNEUMO_PACS_TOKEN"
ENV_USERNAME = "PNEUMO_PACS_USERNAME"
ENV_PASSWORD = "PNEUMO_PACS_PASSWORD"
ENV_TIMEOUT = "PNEUMO_PACS_TIMEOUT"
ENV_CA_BUNDLE = "PNEUMO_PACS_CA_BUNDLE"
ENV_SHOW_IDENTIFIERS = "PNEUMO_PACS_SHOW_IDENTIFIERS"
ENV_ALLOW_SEND = "PNEUMO_PACS_ALLOW_SEND"
DEFAULT_TIMEOUT = 30.0

# Concepts without a standard code get codes of this local scheme (PS3.16 8.2: "99" + name).
SCHEME = "99PNEUMO"


def _codes() -> dict[str, Any]:
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    return {
        "title": Code("18748-4", "LN", "Diagnostic imaging report"),
        "probability": codes.DCM.Probability,
        "finding": codes.DCM.Finding,
        "pneumonia": Code("233604007", "SCT", "Pneumonia"),
        "source": codes.DCM.SourceImageForImageProcessingOperation,
        "algorithm": codes.DCM.AlgorithmName,
        "version": codes.DCM.AlgorithmVersion,
        "no_units": codes.UCUM.NoUnits,
        "decision": Code("DECISION", SCHEME, "Screening decision"),
        "threshold": Code("THRESHOLD", SCHEME, "Decision threshold"),
        "band": Code("BAND", SCHEME, "Uncertain band half-width"),
        "operating_point": Code("OPPOINT", SCHEME, "Operating point"),
        "card_hash": Code("CARDHASH", SCHEME, "Model card SHA-256 (12 hex)"),
        "engine": Code("ENGINE", SCHEME, "Inference engine"),
        "warning": Code("WARNING", SCHEME, "Input check warning"),
        "research": Code("RESEARCH", SCHEME, "Research use statement"),
        "overlay": Code("GRADCAM", SCHEME, "Grad-CAM overlay"),
    }


# --- errors and configuration ------------------------------------------------------------------------------

class PacsError(OSError):
    """A PACS failure as one line naming the server and the study. fatal: the server cannot be reached
    (unreachable, timed out, refused our credentials), so a run stops rather than fail every study alike."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.message = message
        self.fatal = fatal

    def __str__(self) -> str:
        return self.message


def redact(url: str) -> str:
    """The URL without any user:password part, for messages and results."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PacsConfig:
    """Where the PACS is and how to sign in: from the deployment (environment or secrets), never a visitor.

    Authentication goes on the requests session every DICOMweb call uses: a bearer token, or HTTP basic
    with username and password; ca_bundle verifies a department's own TLS certificate authority."""

    url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    ca_bundle: str | None = None
    show_identifiers: bool = False  # patient name, id, birth date and accession shown in lists
    allow_send: bool | None = None  # storing results from the app; None: as the deployment's allow_changes

    def may_send(self, allow_changes: bool) -> bool:
        """Whether the app may store results: allow_send when the deployment set it, else allow_changes
        (a shared deployment, where changes are off, does not write into a PACS by default)."""
        return bool(allow_changes) if self.allow_send is None else bool(self.allow_send)

    @classmethod
    def load(cls, secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
             url: str | None = None) -> "PacsConfig | None":
        """From `[pneumo.pacs]` in .streamlit/secrets.toml and PNEUMO_PACS_* variables (the environment
        wins); url overrides both (the CLI's --url). None when no URL is configured anywhere."""
        environ = os.environ if environ is None else environ
        section: Mapping[str, Any] = {}
        if secrets:
            pneumo = secrets.get("pneumo", {}) or {}
            section = dict(pneumo.get("pacs", {}) or {}) if hasattr(pneumo, "get") else {}

        def pick(env: str, key: str) -> Any:
            value = environ.get(env)
            return value if value not in (None, "") else section.get(key)

        chosen = url or pick(ENV_URL, "url")
        if not chosen:
            return None
        timeout = pick(ENV_TIMEOUT, "timeout")
        try:
            timeout_s = float(timeout) if timeout not in (None, "") else DEFAULT_TIMEOUT
        except (TypeError, ValueError):
            raise ValueError(f"PACS timeout must be a number of seconds, got {timeout!r}") from None
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"PACS timeout must be a positive number of seconds, got {timeout!r}")
        send = pick(ENV_ALLOW_SEND, "allow_send")
        return cls(url=str(chosen).rstrip("/"), token=pick(ENV_TOKEN, "token") or None,
                   username=pick(ENV_USERNAME, "username") or None, password=pick(ENV_PASSWORD, "password") or None,
                   timeout=timeout_s, ca_bundle=pick(ENV_CA_BUNDLE, "ca_bundle") or None,
                   show_identifiers=_truthy(pick(ENV_SHOW_IDENTIFIERS, "show_identifiers") or False),
                   allow_send=None if send in (None, "") else _truthy(send))

    def session(self) -> Any:
        """A requests session carrying the configured authentication and certificate authority."""
        import requests

        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            session.auth = (self.username, self.password or "")
        if self.ca_bundle:
            session.verify = self.ca_bundle
        return session


def _reason(exc: BaseException) -> str:
    """The useful end of a requests error: '[Errno 111] Connection refused', not the whole pool repr."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if found:
        return found.group(1).strip().rstrip(".").lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# --- the server -----------------------------------------------------------------------------------------

class Pacs:
    """A DICOMweb server: dicomweb-client for QIDO-RS, metadata and STOW-RS, the same session for WADO-RS."""

    def __init__(self, url: str, session: Any = None, timeout: float = DEFAULT_TIMEOUT):
        from dicomweb_client.api import DICOMwebClient
        import requests

        self.url = url.rstrip("/")
        self.display_url = redact(self.url)
        self.timeout = float(timeout)
        self.session = session if session is not None else requests.Session()
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a DICOMweb URL (expected http(s)://host[:port]/path): {self.display_url}")
        try:
            self.client = DICOMwebClient(self.url, session=self.session, timeout=self.timeout)
        except ValueError as exc:
            raise ValueError(f"not a DICOMweb URL: {self.display_url} ({exc})") from None
        # Retry only what a busy server answers (429/503/504), briefly: a triage loop polls again anyway.
        self.client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)

    @classmethod
    def from_config(cls, config: PacsConfig) -> "Pacs":
        return cls(config.url, session=config.session(), timeout=config.timeout)

    def _call(self, what: str, study: str | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import requests
        from pydicom.errors import InvalidDicomError

        where = f"PACS {self.display_url}: {what}" + (f" for study {study}" if study else "")
        try:
            return fn(*args, **kwargs)
        except requests.Timeout:
            raise PacsError(f"{where} failed: no answer within {self.timeout:g} s", fatal=True) from None
        except requests.ConnectionError as exc:
            raise PacsError(f"{where} failed: server unreachable ({_reason(exc)})", fatal=True) from None
        except requests.HTTPError as exc:
            response = exc.response
            code = response.status_code if response is not None else 0
            detail = _http_detail(response)
            verb = "was rejected" if what.startswith("storing") else "failed"
            # Wrong credentials fail every later call too.
            raise PacsError(f"{where} {verb}: HTTP {code} {response.reason if response is not None else ''}"
                            f"{detail}".rstrip(), fatal=code in (401, 403)) from None
        except requests.RequestException as exc:
            raise PacsError(f"{where} failed: {_reason(exc)}", fatal=True) from None
        except (ValueError, KeyError, TypeError, InvalidDicomError) as exc:
            raise PacsError(f"{where} failed: the answer could not be read ({type(exc).__name__}: "
                            f"{_reason(exc)})") from None

    def ping(self) -> None:
        """One QIDO request (limit 1): PacsError when the server cannot be searched."""
        self._call("searching studies", None, self.client.search_for_studies, limit=1)

    def search_studies(self, filters: Mapping[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        fields = ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "StudyDescription",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "PatientID", "PatientName",
                  "PatientBirthDate"]
        return self._call("searching studies", None, self.client.search_for_studies,
                          search_filters=dict(filters), fields=fields, limit=limit)

    def study_metadata(self, study_uid: str) -> list[dict[str, Any]]:
        return self._call("reading the study's metadata", study_uid, self.client.retrieve_study_metadata, study_uid)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance's bytes as the server holds them (any transfer syntax). Fetched on the client's own
        session rather than through retrieve_instance, which re-parses without force and so refuses files
        stored without the 128-byte preamble (Orthanc keeps such files as they were sent)."""

        def get() -> bytes:
            url = f"{self.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
            response = self.session.get(url, headers={"Accept": ACCEPT_DICOM}, timeout=self.timeout)
            response.raise_for_status()
            parts = _multipart_parts(response.headers.get("Content-Type", ""), response.content)
            if not parts:
                raise ValueError("no DICOM part in the answer")
            return parts[0]

        return self._call(f"retrieving instance {sop_uid}", study_uid, get)

    def store(self, study_uid: str, datasets: Sequence[Any]) -> list[str]:
        """STOW-RS into the study, then a check that every instance can be found there: some servers answer
        success for what a filter dropped (Orthanc does for an instance its Lua filter refuses), and a
        result that is not in the study would be screened again by the next run as if never sent.
        Returns the stored SOP Instance UIDs; PacsError when any was refused or is missing."""
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        answer = self._call("storing results", study_uid, self.client.store_instances, list(datasets),
                            study_instance_uid=study_uid)
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            raise PacsError(f"PACS {self.display_url}: storing results for study {study_uid} was rejected: "
                            f"{len(failed)} of {len(uids)} instance(s) refused ({_failure_reasons(failed)})")
        found = self._call("checking the stored results", study_uid, self.client.search_for_instances,
                           study_uid, fields=["SOPInstanceUID"], search_filters={"SOPInstanceUID": ",".join(uids)})
        present = {str(_value(item, "SOPInstanceUID")) for item in found}
        missing = [uid for uid in uids if uid not in present]
        if missing:
            raise PacsError(f"PACS {self.display_url}: storing results for study {study_uid} was rejected: the server "
                            f"answered success but {len(missing)} of {len(uids)} instance(s) are not in the study "
                            "(refused by a filter or a policy?)")
        return uids


FAILURE_REASONS = {0xA700: "out of resources", 0xA900: "data set does not match SOP class or study",
                   0xC000: "cannot understand", 0x0110: "processing failure", 0x0122: "SOP class not supported",
                   0x0124: "not authorized", 0xA770: "out of resources", 0xC122: "SOP class not supported",
                   0xB000: "coercion of data elements"}


def _failure_reasons(failed: Sequence[Any]) -> str:
    codes = sorted({int(getattr(f, "FailureReason", 0) or 0) for f in failed})
    return "; ".join(f"failure reason 0x{c:04X}" + (f" {FAILURE_REASONS[c]}" if c in FAILURE_REASONS else "")
                     for c in codes)


def _http_detail(response: Any) -> str:
    """A STOW failure's DICOM JSON reduced to its failure reasons; other bodies to their first words."""
    if response is None or not response.content:
        return ""
    try:
        from pydicom import Dataset

        failed = list(getattr(Dataset.from_json(response.json()), "FailedSOPSequence", None) or [])
        if failed:
            return f" ({_failure_reasons(failed)})"
    except Exception:  # not DICOM JSON: show the text
        pass
    return ": " + " ".join(response.text.split())[:160]


def _multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related answer; a single-part application/dicom answer is itself."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        return [body] if body else []
    delimiter = b"--" + found.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


# --- DICOM JSON helpers ---------------------------------------------------------------------------------

def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _value(item: Mapping[str, Any], keyword: str, default: Any = "") -> Any:
    values = item.get(_tag(keyword), {}).get("Value")
    if not values:
        return default
    first = values[0]
    if isinstance(first, dict) and "Alphabetic" in first:
        return str(first["Alphabetic"])
    return first


def _values(item: Mapping[str, Any], keyword: str) -> list[Any]:
    return list(item.get(_tag(keyword), {}).get("Value") or [])


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
        row: dict[str, Any] = {"study_uid": self.study_uid, "date": self.date, "time": self.time,
                               "modalities": ",".join(self.modalities), "description": self.description,
                               "series": self.series, "instances": self.instances}
        if self.screened is not None:
            row["screened"] = self.screened
        if show_identifiers:
            row.update({"accession": self.accession, "patient_id": self.patient_id,
                        "patient_name": self.patient_name, "patient_birth_date": self.patient_birth_date})
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
    except (TypeError, ValueError):
        return None


def search_studies(pacs: Pacs, since: str | None = None, until: str | None = None, accession: str | None = None,
                   modalities: Sequence[str] = SCREENED_MODALITIES, study_uids: Sequence[str] = (),
                   unscreened_by: LoadedModel | None = None, limit: int | None = 200) -> list[StudySummary]:
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
        filters["StudyInstanceUID"] = ",".join(study_uids)
    found: dict[str, dict[str, Any]] = {}
    for modality in (modalities or [None]):
        query = dict(filters, **({"ModalitiesInStudy": modality} if modality else {}))
        for item in pacs.search_studies(query, limit):
            uid = str(_value(item, "StudyInstanceUID"))
            if uid:
                found.setdefault(uid, item)
    studies = [StudySummary(
        study_uid=uid, date=str(_value(item, "StudyDate")), time=str(_value(item, "StudyTime")),
        modalities=[str(m) for m in _values(item, "ModalitiesInStudy")], description=str(_value(item, "StudyDescription")),
        series=_int_or_none(_value(item, "NumberOfStudyRelatedSeries", None)),
        instances=_int_or_none(_value(item, "NumberOfStudyRelatedInstances", None)),
        accession=str(_value(item, "AccessionNumber")), patient_id=str(_value(item, "PatientID")),
        patient_name=str(_value(item, "PatientName")), patient_birth_date=str(_value(item, "PatientBirthDate")),
    ) for uid, item in found.items()]
    studies.sort(key=lambda s: (s.date, s.time, s.study_uid), reverse=True)
    if limit is not None:
        studies = studies[:limit]
    if unscreened_by is not None:
        key = ScreeningKey.of(unscreened_by)
        for study in studies:
            metadata = pacs.study_metadata(study.study_uid)
            frontal, _ = select_instances(metadata)
            done = prior_screenings(metadata, key)
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
    image_type = [str(v).upper() for v in _values(item, "ImageType")]
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
    described = " ".join(str(_value(item, k)) for k in ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"))
    if _is_lateral_text(codes) or _is_lateral_text(described):
        return "skip", "lateral view (from the view code or series description); the model reads frontal films only"
    return "frontal", "view position not recorded: read as a frontal film, check the view"


def select_instances(metadata: Iterable[Mapping[str, Any]]) -> tuple[list[Candidate], list[Skip]]:
    """The frontal chest films of a study, and the films left out with the reason, in series order."""
    frontal: list[Candidate] = []
    skipped: list[Skip] = []
    ordered = sorted(metadata, key=lambda m: (_int_or_none(_value(m, "SeriesNumber", None)) or 0,
                                              _int_or_none(_value(m, "InstanceNumber", None)) or 0))
    for item in ordered:
        verdict = classify(item)
        if verdict is None:
            continue
        ids = (str(_value(item, "StudyInstanceUID")), str(_value(item, "SeriesInstanceUID")), str(_value(item, "SOPInstanceUID")))
        if verdict[0] == "frontal":
            frontal.append(Candidate(*ids, sop_class_uid=str(_value(item, "SOPClassUID")),
                                     view=str(_value(item, "ViewPosition")), note=verdict[1]))
        else:
            skipped.append(Skip(*ids, reason=str(verdict[1])))
    return frontal, skipped


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
    def of(cls, loaded: LoadedModel) -> "ScreeningKey":
        return cls(str(loaded.card.name), str(loaded.card.created or "unrecorded"), operating_point(loaded),
                   float(loaded.threshold))

    def matches(self, other: "ScreeningKey") -> bool:
        return (self.model, self.version, self.operating_point) == (other.model, other.version, other.operating_point) \
            and abs(self.threshold - other.threshold) <= 1e-9


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


def _content_items(item: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for child in _values(item, "ContentSequence"):
        if isinstance(child, dict):
            yield child
            yield from _content_items(child)


def read_screening_sr(item: Mapping[str, Any]) -> PriorScreening | None:
    """A pneumo screening SR (as DICOM JSON) read back; None for any other SR."""
    if str(_value(item, "Modality")) != "SR" or str(_value(item, "Manufacturer")) != MANUFACTURER:
        return None
    found: dict[str, list[Any]] = {}
    source = overlay = None
    for child in _content_items(item):
        concept = next(iter(_values(child, "ConceptNameCodeSequence")), {})
        code = f"{_value(concept, 'CodingSchemeDesignator')}:{_value(concept, 'CodeValue')}"
        kind = str(_value(child, "ValueType"))
        if kind == "NUM":
            measured = next(iter(_values(child, "MeasuredValueSequence")), {})
            number = _value(measured, "FloatingPointValue", None)
            number = float(number) if number is not None else float(_value(measured, "NumericValue", "nan"))
            found.setdefault(code, []).append(number)
        elif kind == "TEXT":
            found.setdefault(code, []).append(str(_value(child, "TextValue")))
        elif kind == "IMAGE":
            ref = next(iter(_values(child, "ReferencedSOPSequence")), {})
            if code == f"{SCHEME}:GRADCAM":
                overlay = str(_value(ref, "ReferencedSOPInstanceUID")) or None
            elif code == "DCM:121322":
                source = str(_value(ref, "ReferencedSOPInstanceUID")) or None
    first = lambda code, default=None: (found.get(code) or [default])[0]  # noqa: E731
    if not source or first(f"{SCHEME}:THRESHOLD") is None:
        return None
    key = ScreeningKey(str(first("DCM:111001", "")), str(first("DCM:111003", "")), str(first(f"{SCHEME}:OPPOINT", "")),
                       float(first(f"{SCHEME}:THRESHOLD")))
    probability = first("DCM:122157")
    return PriorScreening(sr_uid=str(_value(item, "SOPInstanceUID")), source_uid=source, key=key,
                          probability=None if probability is None or math.isnan(probability) else float(probability),
                          decision=str(first(f"{SCHEME}:DECISION", "")), warnings=list(found.get(f"{SCHEME}:WARNING", [])),
                          card_hash=str(first(f"{SCHEME}:CARDHASH", "")), overlay_uid=overlay)


def prior_screenings(metadata: Iterable[Mapping[str, Any]], key: ScreeningKey) -> dict[str, PriorScreening]:
    """Source SOP Instance UID → the latest SR of this model and operating point that screened it."""
    done: dict[str, PriorScreening] = {}
    for item in metadata:
        prior = read_screening_sr(item)
        if prior is not None and prior.key.matches(key):
            done[prior.source_uid] = prior
    return done


# --- results --------------------------------------------------------------------------------------------------

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
    stored: dict[str, str] = field(default_factory=dict)  # {"sr": uid, "sc": uid} once in the PACS
    seconds: float | None = None
    retryable: bool = False  # failed on the server's side (another try may pass), not on the film itself
    reading: Any = field(default=None, repr=False)  # predict.Reading, for the app's cards and worklist
    source: Any = field(default=None, repr=False)  # the source header (no pixels), for sending later
    heatmap: Any = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study_uid, "series": self.series_uid, "instance": self.sop_uid, "path": self.path,
                "status": self.status, "probability": self.probability, "prediction": self.prediction,
                "threshold": self.threshold, "operating_point": self.operating_point, "model": self.model,
                "card_hash": self.card_hash, "warnings": list(self.warnings), "error": self.error,
                "skipped": self.skipped, "stored": dict(self.stored),
                "seconds": None if self.seconds is None else round(self.seconds, 3)}


@dataclass
class ScreenRun:
    """A run over several studies: every result so far, and the one line that ended it early, if any."""

    results: list[InstanceResult] = field(default_factory=list)
    error: str | None = None
    drift: Any = None  # pneumo.drift.DriftResult of the films read, when a check could be made
    drift_note: str | None = None  # its advice when the batch is shifted, or why the check failed
    studies_done: int = 0
    studies_left: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r.status == FAILED for r in self.results)

    def readings(self) -> list[Any]:
        return [r.reading for r in self.results if r.reading is not None]


# --- the DICOM we write --------------------------------------------------------------------------------------

def _header(source_bytes: bytes) -> Any:
    """The source's header without its pixels, with the patient and study attributes SR and SC copy
    made present (a PACS may omit type-2 attributes; highdicom reads them unconditionally)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(source_bytes), force=True, stop_before_pixels=True)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime", "ReferringPhysicianName"):
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
    cv2.putText(canvas, text, ((width - w) // 2, y0 + (height + h) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                thick, cv2.LINE_AA)


def overlay_picture(pixels: np.ndarray, heatmap: np.ndarray, lines: Sequence[str], alpha: float = 0.4,
                    min_side: int = 512) -> np.ndarray:
    """The Grad-CAM overlay with its colour bar, a red research-use banner on top and the reading below,
    as RGB uint8. Small films are enlarged first so the burned-in text stays legible in a viewer."""
    import cv2

    from .explain import overlay, with_colorbar

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


def build_overlay_sc(source: Any, picture: np.ndarray, series_uid: str, instance_number: int, loaded: LoadedModel) -> Any:
    """The overlay as a Secondary Capture (highdicom) in the source's study, referencing the source image."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        orientation = _orientation(source)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=picture, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
            patient_orientation=orientation, transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=SC_SERIES_DESCRIPTION, manufacturer_model_name=_ascii(str(loaded.card.name))[:64],
            software_versions=f"pneumo {__version__}")
    except ValueError:  # an orientation value highdicom does not know: keep the image, drop the claim
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=picture, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"), transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=SC_SERIES_DESCRIPTION, manufacturer_model_name=_ascii(str(loaded.card.name))[:64],
            software_versions=f"pneumo {__version__}")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.DerivationDescription = _ascii(f"Grad-CAM overlay of the pneumonia score by {loaded.card.name}; {RESEARCH_USE}")[:1024]
    sc.BurnedInAnnotation = "NO"  # the burned-in text names the model and score, never the patient
    sc.ImageComments = RESEARCH_USE
    if "SpecificCharacterSet" not in sc:
        sc.SpecificCharacterSet = "ISO_IR 192"
    return sc


def build_screening_sr(source: Any, result: InstanceResult, loaded: LoadedModel, series_uid: str,
                       instance_number: int, overlay: Any | None = None, band: float | None = None) -> Any:
    """The reading as an Enhanced SR (highdicom): probability (NUM, inferred from the source image),
    decision, threshold, band, operating point, model name and version, card hash, engine, warnings and
    the research-use statement; the overlay (when stored with it) referenced too."""
    import highdicom as hd

    c = _codes()
    rel = hd.sr.RelationshipTypeValues
    source_ref = hd.sr.ImageContentItem(c["source"], source.SOPClassUID, source.SOPInstanceUID,
                                        relationship_type=rel.INFERRED_FROM)
    items: list[Any] = [
        hd.sr.TextContentItem(c["research"], RESEARCH_USE, relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(c["algorithm"], str(loaded.card.name), relationship_type=rel.HAS_OBS_CONTEXT),
        hd.sr.TextContentItem(c["version"], str(loaded.card.created or "unrecorded"), relationship_type=rel.HAS_OBS_CONTEXT),
        hd.sr.TextContentItem(c["card_hash"], str(result.card_hash), relationship_type=rel.HAS_OBS_CONTEXT),
        hd.sr.TextContentItem(c["engine"], f"pneumo {__version__}, {loaded.engine_name}", relationship_type=rel.HAS_OBS_CONTEXT),
        hd.sr.TextContentItem(c["operating_point"], str(result.operating_point), relationship_type=rel.CONTAINS),
        hd.sr.NumContentItem(c["threshold"], float(result.threshold), c["no_units"], relationship_type=rel.CONTAINS),
        hd.sr.NumContentItem(c["band"], float(DEFAULT_BAND if band is None else band), c["no_units"],
                             relationship_type=rel.CONTAINS),
    ]
    if result.probability is not None:
        probability = hd.sr.NumContentItem(c["probability"], float(result.probability), c["no_units"],
                                           relationship_type=rel.CONTAINS)
        probability.ContentSequence = hd.sr.ContentSequence([
            hd.sr.CodeContentItem(c["finding"], c["pneumonia"], relationship_type=rel.HAS_CONCEPT_MOD), source_ref])
        items.append(probability)
    items.append(hd.sr.TextContentItem(c["decision"], str(result.prediction), relationship_type=rel.CONTAINS))
    for warning in result.warnings:
        items.append(hd.sr.TextContentItem(c["warning"], str(warning)[:1024], relationship_type=rel.CONTAINS))
    # The source image at the root as well: a reader of the tree finds it without knowing our layout.
    items.append(hd.sr.ImageContentItem(c["source"], source.SOPClassUID, source.SOPInstanceUID,
                                        relationship_type=rel.CONTAINS))
    evidence = [source]
    if overlay is not None:
        items.append(hd.sr.ImageContentItem(c["overlay"], overlay.SOPClassUID, overlay.SOPInstanceUID,
                                            relationship_type=rel.CONTAINS))
        evidence.append(overlay)
    root = hd.sr.ContainerContentItem(c["title"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    return hd.sr.EnhancedSR(
        evidence=evidence, content=root, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False,  # PRELIMINARY and UNVERIFIED: no person has read it
        series_description=SR_SERIES_DESCRIPTION, manufacturer_model_name=_ascii(str(loaded.card.name))[:64],
        software_versions=f"pneumo {__version__}")


# --- screening ------------------------------------------------------------------------------------------------

def _result_from_reading(result: InstanceResult, reading: Any, loaded: LoadedModel) -> None:
    result.reading = reading
    result.threshold = float(loaded.threshold)
    result.operating_point = operating_point(loaded)
    result.model = str(loaded.card.name)
    result.card_hash = card_hash(loaded)
    if reading.error:
        result.status, result.error = FAILED, f"{reading.name}: {reading.error}"
        return
    result.status = SCREENED
    result.probability = None if reading.probability is None else float(reading.probability)
    result.prediction = reading.decision
    result.warnings = list(reading.warnings)


@dataclass
class _StudyOutput:
    """The result series of one study in one run: images are stored one by one into the same two series."""

    sr_series: str
    sc_series: str
    count: int = 0


def _new_output() -> _StudyOutput:
    import highdicom as hd

    return _StudyOutput(str(hd.UID()), str(hd.UID()))


def push_result(pacs: Pacs, loaded: LoadedModel, result: InstanceResult, output: _StudyOutput | None = None) -> None:
    """Store one screened image's SC (when assessable) and SR, in one STOW-RS request; on success the
    result holds their UIDs. PacsError otherwise (the reading itself stays in the result)."""
    if result.status != SCREENED or result.reading is None or result.source is None:
        return
    output = output or _new_output()
    output.count += 1
    overlay = None
    reading = result.reading
    if result.prediction != NOT_ASSESSABLE and reading.xray is not None:
        # No explanation for a film the input check cannot assess: a heat map would lend it a reading.
        heatmap = result.heatmap
        if heatmap is None:
            from .explain import gradcam

            heatmap = result.heatmap = gradcam(loaded, reading.xray.pixels)
        lines = [f"{loaded.card.name}: p(pneumonia) {result.probability:.3f} -> {result.prediction} "
                 f"(threshold {result.threshold:.4f}, {result.operating_point})",
                 # Grad-CAM explains the decided class (as the app and the PDF report do); say which.
                 f"heat: what drove the {'PNEUMONIA' if result.probability >= result.threshold else 'NORMAL'} "
                 "score, not where disease is"]
        overlay = build_overlay_sc(result.source, overlay_picture(reading.xray.pixels, heatmap, lines),
                                   output.sc_series, output.count, loaded)
    sr = build_screening_sr(result.source, result, loaded, output.sr_series, output.count, overlay)
    pacs.store(result.study_uid, [d for d in (overlay, sr) if d is not None])
    result.stored = {"sr": str(sr.SOPInstanceUID), **({"sc": str(overlay.SOPInstanceUID)} if overlay is not None else {})}


def screen_study(pacs: Pacs, loaded: LoadedModel, study_uid: str, push: bool = False, force: bool = False,
                 keep_pixels: bool = False, drift_images: list[tuple[np.ndarray, float]] | None = None) -> list[InstanceResult]:
    """Every image of one study: frontal films screened (or reported from an earlier SR of this model and
    operating point unless force), the rest skipped with the reason; with push each reading is stored
    as it is made. Fatal PacsErrors propagate; others fail that image only.

    keep_pixels keeps the decoded film and the source header in the results (the app's cards and a
    later send_results); the CLI drops them to keep a long run's memory flat. drift_images collects each
    film read (at the model's input size) with its probability, for the batch drift check."""
    key = ScreeningKey.of(loaded)
    metadata = pacs.study_metadata(study_uid)
    frontal, skipped = select_instances(metadata)
    done = {} if force else prior_screenings(metadata, key)
    base = f"{pacs.display_url}/studies/{study_uid}"

    def path(series: str, sop: str) -> str:
        return f"{base}/series/{series}/instances/{sop}"

    results: list[InstanceResult] = []
    order = {c.sop_uid: i for i, c in enumerate(frontal)}
    for s in skipped:
        results.append(InstanceResult(s.study_uid or study_uid, s.series_uid, s.sop_uid, path(s.series_uid, s.sop_uid),
                                      SKIPPED, skipped=s.reason))
    if not frontal and not skipped:
        results.append(InstanceResult(study_uid, None, None, base, SKIPPED,
                                      skipped="no CR or DX image in the study"))
    output: _StudyOutput | None = None
    for candidate in frontal:
        result = InstanceResult(study_uid, candidate.series_uid, candidate.sop_uid,
                                path(candidate.series_uid, candidate.sop_uid), FAILED)
        prior = done.get(candidate.sop_uid)
        if prior is not None:
            result.status = ALREADY
            result.probability, result.prediction, result.warnings = prior.probability, prior.decision, prior.warnings
            result.threshold, result.operating_point, result.model = prior.key.threshold, prior.key.operating_point, prior.key.model
            result.card_hash = prior.card_hash
            result.stored = {"sr": prior.sr_uid, **({"sc": prior.overlay_uid} if prior.overlay_uid else {})}
            result.skipped = f"already screened by {prior.key.model} at operating point {prior.key.operating_point} (SR {prior.sr_uid})"
            results.append(result)
            continue
        started = time.perf_counter()
        try:
            raw = pacs.retrieve_instance(study_uid, candidate.series_uid, candidate.sop_uid)
            reading = read(loaded, raw, name=result.path)
            _result_from_reading(result, reading, loaded)
            if candidate.note and result.status == SCREENED:
                result.warnings.append(candidate.note)
            if result.status == SCREENED:
                result.source = _header(raw)
            if push and result.status == SCREENED:
                output = output or _new_output()
                push_result(pacs, loaded, result, output)
        except PacsError as exc:
            result.status, result.error, result.retryable = FAILED, str(exc), True
            result.seconds = time.perf_counter() - started
            results.append(result)
            if exc.fatal:
                raise _Interrupted(results, exc) from None
            continue
        except Exception as exc:  # writing the SR or overlay from an unusual header: this image fails, not the run
            result.status = FAILED
            result.error = (f"{result.path}: the results could not be written ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]})")
        result.seconds = time.perf_counter() - started
        if drift_images is not None and result.reading is not None and result.reading.xray is not None \
                and result.probability is not None and len(drift_images) < MAX_DRIFT_IMAGES:
            drift_images.append((resize(result.reading.xray.pixels, loaded.input_size), result.probability))
        if not keep_pixels:
            result.source, result.heatmap = None, None
            if result.reading is not None:
                result.reading.xray = None
        results.append(result)
    rank = {SKIPPED: 1}
    results.sort(key=lambda r: (rank.get(r.status, 0), order.get(r.sop_uid or "", len(order))))
    return results


class _Interrupted(Exception):
    """A fatal PacsError inside a study, carrying the study's results so far."""

    def __init__(self, results: list[InstanceResult], error: PacsError):
        super().__init__(str(error))
        self.results, self.error = results, error


MAX_DRIFT_IMAGES = 1000  # at the model's input size: ~200 MB at most, however long the run


def _drift(loaded: LoadedModel, images: Sequence[np.ndarray], probabilities: Sequence[float]) -> Any:
    """pneumo.drift's batch check of the films read in this run (a DriftResult), or None when there is
    no check (no reference beside the model, too few films) or pneumo.drift is absent."""
    try:
        from .drift import DriftUnavailable, check_batch
    except ImportError:
        return None
    if not images:
        return None
    try:
        return check_batch(loaded, list(images), probabilities=list(probabilities))
    except DriftUnavailable:  # e.g. no predicted class has enough films to test
        return None


def screen_studies(pacs: Pacs, loaded: LoadedModel, study_uids: Sequence[str], push: bool = False,
                   force: bool = False, keep_pixels: bool = False,
                   progress: Callable[[int, int, list[InstanceResult]], None] | None = None) -> ScreenRun:
    """Screen studies in order. A failing study is recorded and the run goes on; an unreachable server
    ends the run with one line in run.error and the studies not reached in run.studies_left. The batch
    drift check runs over the films read, at the model's input size."""
    run = ScreenRun()
    drift_images: list[tuple[np.ndarray, float]] = []
    uids = list(dict.fromkeys(study_uids))
    for index, uid in enumerate(uids):
        try:
            results = screen_study(pacs, loaded, uid, push=push, force=force, keep_pixels=keep_pixels,
                                   drift_images=drift_images)
        except _Interrupted as stop:
            run.results.extend(stop.results)
            run.error, run.studies_left = str(stop.error), uids[index + 1:]
            break
        except PacsError as exc:
            run.results.append(InstanceResult(uid, None, None, f"{pacs.display_url}/studies/{uid}", FAILED,
                                              error=str(exc), retryable=True))
            if exc.fatal:
                run.error, run.studies_left = str(exc), uids[index + 1:]
                break
            continue
        run.results.extend(results)
        run.studies_done += 1
        if progress is not None:
            progress(index + 1, len(uids), results)
    try:
        run.drift = _drift(loaded, [i for i, _ in drift_images], [p for _, p in drift_images])
        if run.drift is not None and getattr(run.drift, "shifted", False):
            run.drift_note = str(getattr(run.drift, "advice", "") or "this batch is unlike the reference films")
    except Exception as exc:  # the drift check must not cost the run its results
        run.drift_note = f"batch drift check failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    return run


def send_results(pacs: Pacs, loaded: LoadedModel, results: Sequence[InstanceResult]) -> list[str]:
    """Store readings made without push (the app's "Send results to PACS"): the results screened with
    keep_pixels and not yet stored. Returns one line per failure (empty when all were stored); a fatal
    failure stops at once, and what was stored keeps its UIDs in result.stored."""
    errors: list[str] = []
    outputs: dict[str, _StudyOutput] = {}
    for result in results:
        if result.status != SCREENED or result.stored:
            continue
        if result.source is None or result.reading is None:
            errors.append(f"{result.path}: screened without its pixels kept (keep_pixels=True); screen again to send")
            continue
        try:
            push_result(pacs, loaded, result, outputs.setdefault(result.study_uid, _new_output()))
        except PacsError as exc:
            errors.append(str(exc))
            if exc.fatal:
                break
    return errors


def watch(pacs: Pacs, loaded: LoadedModel, interval: float = 60.0, max_polls: int | None = None,
          since: str | None = None, push: bool = False,
          on_poll: Callable[[ScreenRun], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll for studies (from `since`, default today) and screen each new one: the triage loop. A study
    screened completely in this process is not read again; with push, the PACS's SRs carry that across
    restarts. A failed poll is reported through on_poll and the loop goes on. True when anything failed."""
    since = _check_date(since, "since") or date.today().strftime("%Y%m%d")
    finished: set[str] = set()
    polls, failed = 0, False
    while max_polls is None or polls < max_polls:
        polls += 1
        try:
            studies = [s.study_uid for s in search_studies(pacs, since=since, limit=None) if s.study_uid not in finished]
            run = screen_studies(pacs, loaded, studies, push=push)
        except PacsError as exc:
            run = ScreenRun(error=str(exc))
        # A study is done once nothing in it failed on the server's side; a film that cannot be read
        # fails the same way every poll, so it is reported once, not at every interval.
        for uid in {r.study_uid for r in run.results}:
            if not any(r.retryable for r in run.results if r.study_uid == uid) and uid not in run.studies_left:
                finished.add(uid)
        failed = failed or run.failed
        if on_poll is not None:
            on_poll(run)
        if max_polls is None or polls < max_polls:
            sleep(interval)
    return failed


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe(result: InstanceResult) -> str:
    """One human-readable line per image (the CLI without --json)."""
    where = f"study {result.study_uid}" + (f" instance {result.sop_uid}" if result.sop_uid else "")
    if result.status == FAILED:
        return f"{where}: FAILED {result.error}"
    if result.status == SKIPPED:
        return f"{where}: skipped, {result.skipped}"
    score = f"p={result.probability:.4f}" if result.probability is not None else "no score"
    line = f"{where}: {result.prediction}  {score}  (threshold {result.threshold:.4f}, {result.operating_point})"
    if result.status == ALREADY:
        line += "  [already screened]"
    elif result.stored:
        line += f"  stored SR {result.stored.get('sr')}"
    return line + "".join(f"\n  warning: {w}" for w in result.warnings)


def load_secrets_file(paths: Sequence[str] | None = None) -> dict[str, Any]:
    """`.streamlit/secrets.toml` (the working directory's, else the project's) for the CLI, which runs
    outside Streamlit; {} when there is none or tomllib is missing (Python 3.10)."""
    try:
        import tomllib
    except ImportError:
        return {}
    candidates = paths or [os.path.join(".streamlit", "secrets.toml"), str(PROJECT_ROOT / ".streamlit" / "secrets.toml")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            try:
                with open(candidate, "rb") as handle:
                    return tomllib.load(handle)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"{candidate}: cannot be read as TOML ({exc})") from None
    return {}
