"""The DICOMweb server: QIDO-RS search, WADO-RS retrieve and STOW-RS store through one authenticated session, with
store failures read from the server's answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pneumo.integrations.pacs.config import DEFAULT_TIMEOUT, PacsConfig, PacsError, _reason, redact
from pneumo.integrations.pacs.dicomjson import _value

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# --- the server -----------------------------------------------------------------------------------------


class Pacs:
    """A DICOMweb server: dicomweb-client for QIDO-RS, metadata and STOW-RS, the same session for WADO-RS."""

    def __init__(self, url: str, session: Any = None, timeout: float = DEFAULT_TIMEOUT, secret: str | None = None):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        self.display_url = redact(self.url)
        self.timeout = float(timeout)
        self.session = session if session is not None else requests.Session()
        self.secret = secret  # seals the SRs this deployment writes; see pneumo.integrations.pacs.seal
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
    def from_config(cls, config: PacsConfig) -> Pacs:
        return cls(config.url, session=config.session(), timeout=config.timeout, secret=config.secret)

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
            raise PacsError(
                f"{where} {verb}: HTTP {code} {response.reason if response is not None else ''}{detail}".rstrip(),
                fatal=code in (401, 403),
            ) from None
        except requests.RequestException as exc:
            raise PacsError(f"{where} failed: {_reason(exc)}", fatal=True) from None
        except (ValueError, KeyError, TypeError, InvalidDicomError) as exc:
            raise PacsError(
                f"{where} failed: the answer could not be read ({type(exc).__name__}: {_reason(exc)})"
            ) from None

    def ping(self) -> None:
        """One QIDO request (limit 1): PacsError when the server cannot be searched."""
        self._call("searching studies", None, self.client.search_for_studies, limit=1)

    def search_studies(self, filters: Mapping[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        fields = [
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "StudyDescription",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "PatientID",
            "PatientName",
            "PatientBirthDate",
        ]
        return self._call(
            "searching studies",
            None,
            self.client.search_for_studies,
            search_filters=dict(filters),
            fields=fields,
            limit=limit,
        )

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
        answer = self._call(
            "storing results", study_uid, self.client.store_instances, list(datasets), study_instance_uid=study_uid
        )
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            raise PacsError(
                f"PACS {self.display_url}: storing results for study {study_uid} was rejected: "
                f"{len(failed)} of {len(uids)} instance(s) refused ({_failure_reasons(failed)})"
            )
        found = self._call(
            "checking the stored results",
            study_uid,
            self.client.search_for_instances,
            study_uid,
            fields=["SOPInstanceUID"],
            search_filters={"SOPInstanceUID": ",".join(uids)},
        )
        present = {str(_value(item, "SOPInstanceUID")) for item in found}
        missing = [uid for uid in uids if uid not in present]
        if missing:
            raise PacsError(
                f"PACS {self.display_url}: storing results for study {study_uid} was rejected: the server "
                f"answered success but {len(missing)} of {len(uids)} instance(s) are not in the study "
                "(refused by a filter or a policy?)"
            )
        return uids


FAILURE_REASONS = {
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class or study",
    0xC000: "cannot understand",
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA770: "out of resources",
    0xC122: "SOP class not supported",
    0xB000: "coercion of data elements",
}


def _failure_reasons(failed: Sequence[Any]) -> str:
    codes = sorted({int(getattr(f, "FailureReason", 0) or 0) for f in failed})
    return "; ".join(
        f"failure reason 0x{c:04X}" + (f" {FAILURE_REASONS[c]}" if c in FAILURE_REASONS else "") for c in codes
    )


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
