"""The DICOMweb server: QIDO-RS search, WADO-RS retrieve and STOW-RS store through one authenticated session, with
store failures read from the server's answer.

What is asked and what may come back: UIDs checked against the DICOM UID grammar before they go into a URL (a
"UID" holding "/../" would reach another endpoint with the deployment's credentials), and each answer's cap (a
search's `limit` enforced here as well). How a request travels, under one deadline, with its retries and
redirects, is pneumo.integrations.pacs.transport's; the bodies exchanged are pneumo.integrations.pacs.bodies'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pneumo.core.text import terminal_safe
from pneumo.integrations.pacs.bodies import (
    FAILURE_REASONS,
    failure_reasons,
    first_part,
    json_items,
    stow_body,
    stow_failure_detail,
)
from pneumo.integrations.pacs.config import DEFAULT_TIMEOUT, PacsConfig, PacsError
from pneumo.integrations.pacs.dicomjson import _value
from pneumo.integrations.pacs.transport import SHOWN_UID, Deadline, Transport, body_chunks, read_body, shown_uid

# What other modules take from here: the package's public names (pneumo.integrations.pacs), and the bodies'
# helpers, which the SR writers' notes name as client.stow_body.
__all__ = [
    "ACCEPT_DICOM",
    "ACCEPT_JSON",
    "FAILURE_REASONS",
    "Pacs",
    "check_uid",
    "first_part",
    "json_items",
    "stow_body",
]

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_JSON = "application/dicom+json, application/json"

# PS3.5 9.1: components of digits without leading zeros, separated by dots, at most 64 characters. Checked before
# a UID goes into a path: "1.2.3/../../tools/execute-script" would otherwise reach another endpoint of the server
# with the deployment's credentials.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64

# What an answer may hold. A search keeps at most its limit (the server may ignore it), and at most
# MAX_SEARCH_RESULTS without one; a study's metadata at most MAX_STUDY_INSTANCES instances (a chest film study has
# a handful); an instance at most MAX_INSTANCE_BYTES (a 43 cm detector at 70 µm, 16 bits: ~75 MB).
MAX_SEARCH_RESULTS = 5000
MAX_SEARCH_BYTES = 64 * 2**20
MAX_STUDY_INSTANCES = 2000
MAX_METADATA_BYTES = 64 * 2**20
MAX_INSTANCE_BYTES = 128 * 2**20
MAX_ANSWER_BYTES = 4 * 2**20  # a store's answer, an instance search


def check_uid(uid: Any, what: str = "study", where: str | None = None) -> str:
    """uid as a string when it is a DICOM UID (PS3.5 9.1); otherwise PacsError naming it (escaped and cut), which
    `where` (the request it was meant for) begins. Nothing is requested for a UID that is not one."""
    text = str(uid)
    if len(text) > MAX_UID_LENGTH or not UID_PATTERN.fullmatch(text):
        raise PacsError(
            (f"{where} failed: " if where else "")
            + f"{what} UID {terminal_safe(text, SHOWN_UID)!r} is not a DICOM UID (digits and dots, at most "
            f"{MAX_UID_LENGTH} characters); nothing was requested for it"
        )
    return text


class Pacs(Transport):
    """A DICOMweb server: QIDO-RS, WADO-RS (metadata and instances) and STOW-RS over one requests session, every
    request bounded in time and size (pneumo.integrations.pacs.transport)."""

    def __init__(self, url: str, session: Any = None, timeout: float = DEFAULT_TIMEOUT, secret: str | None = None):
        super().__init__(url, session, timeout)
        self.secret = secret  # seals the SRs this deployment writes; see pneumo.integrations.pacs.seal

    @classmethod
    def from_config(cls, config: PacsConfig) -> Pacs:
        return cls(config.url, session=config.session(), timeout=config.timeout, secret=config.secret)

    def _error_detail(self, content: bytes) -> str:
        """A refused store's failure reasons, read from its DICOM JSON answer; any other body's first words."""
        return stow_failure_detail(content) or super()._error_detail(content)

    # --- the DICOMweb services -------------------------------------------------------------------------------------

    def ping(self) -> None:
        """One QIDO request (limit 1): PacsError when the server cannot be searched."""
        self.search_studies({}, limit=1)

    def search_studies(self, filters: Mapping[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        """QIDO-RS studies matching filters: at most limit (MAX_SEARCH_RESULTS without one), whatever the server
        sends."""
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
        keep = MAX_SEARCH_RESULTS if limit is None else min(max(int(limit), 0), MAX_SEARCH_RESULTS)
        params: dict[str, Any] = {**dict(filters), "includefield": fields}
        if limit is not None:
            params["limit"] = int(limit)

        def read(response: Any, deadline: Deadline) -> list[dict[str, Any]]:
            # A search past MAX_SEARCH_RESULTS keeps the first ones (the cap is far above a department's day).
            return json_items(body_chunks(response, deadline, MAX_SEARCH_BYTES), keep)[0]

        return self._request(
            "GET", ["studies"], "searching studies", None, read, params=params, headers={"Accept": ACCEPT_JSON}
        )

    def study_metadata(self, study_uid: str) -> list[dict[str, Any]]:
        """WADO-RS metadata of every instance of the study (DICOM JSON objects); PacsError past
        MAX_STUDY_INSTANCES instances or MAX_METADATA_BYTES."""
        what = "reading the study's metadata"
        where = self._where(what, study_uid)
        uid = check_uid(study_uid, "study", where)

        def read(response: Any, deadline: Deadline) -> list[dict[str, Any]]:
            items, more = json_items(body_chunks(response, deadline, MAX_METADATA_BYTES), MAX_STUDY_INSTANCES)
            if more:
                raise PacsError(
                    f"{where} failed: more than {MAX_STUDY_INSTANCES} instances in the study; not screened (a chest "
                    "film study has a few)"
                )
            return items

        return self._request(
            "GET", ["studies", uid, "metadata"], what, study_uid, read, headers={"Accept": ACCEPT_JSON}
        )

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance's bytes as the server holds them (any transfer syntax); PacsError past MAX_INSTANCE_BYTES.
        Read from the multipart answer as it is, without re-parsing: files stored without the 128-byte preamble
        (Orthanc keeps such files as they were sent) are read by the decoder, which forces them."""
        what = f"retrieving instance {shown_uid(sop_uid)}"
        where = self._where(what, study_uid)
        path = ["studies", check_uid(study_uid, "study", where)]
        path += ["series", check_uid(series_uid, "series", where)]
        path += ["instances", check_uid(sop_uid, "SOP instance", where)]

        def read(response: Any, deadline: Deadline) -> bytes:
            # Read within the cap before parsing; the cap is looked up now, so a test can lower it.
            body = read_body(response, deadline, MAX_INSTANCE_BYTES)
            part = first_part(response.headers.get("Content-Type", ""), body)
            if not part:
                raise ValueError("no DICOM part in the answer")
            return part

        return self._request("GET", path, what, study_uid, read, headers={"Accept": ACCEPT_DICOM})

    def store(self, study_uid: str, datasets: Sequence[Any]) -> list[str]:
        """STOW-RS into the study, then a check that every instance can be found there: some servers answer
        success for what a filter dropped (Orthanc does for an instance its Lua filter refuses), and a
        result that is not in the study would be screened again by the next run as if never sent.
        Returns the stored SOP Instance UIDs; PacsError when any was refused or is missing."""
        where = self._where("storing results", study_uid)
        uid = check_uid(study_uid, "study", where)
        uids = [check_uid(ds.SOPInstanceUID, "SOP instance", where) for ds in datasets]
        body, content_type = stow_body(datasets)

        def read_answer(response: Any, deadline: Deadline) -> Any:
            from pydicom import Dataset

            content = read_body(response, deadline, MAX_ANSWER_BYTES)
            if not content.strip() or "json" not in response.headers.get("Content-Type", "json"):
                return Dataset()  # no answer, or XML: the search below checks what was stored
            return Dataset.from_json(json.loads(content))

        answer = self._request(
            "POST",
            ["studies", uid],
            "storing results",
            study_uid,
            read_answer,
            headers={"Content-Type": content_type, "Accept": ACCEPT_JSON},
            body=body,
        )
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            raise PacsError(
                f"{where} was rejected: {len(failed)} of {len(uids)} instance(s) refused ({failure_reasons(failed)})"
            )

        def read_found(response: Any, deadline: Deadline) -> list[dict[str, Any]]:
            return json_items(body_chunks(response, deadline, MAX_ANSWER_BYTES), MAX_STUDY_INSTANCES)[0]

        found = self._request(
            "GET",
            ["studies", uid, "instances"],
            "checking the stored results",
            study_uid,
            read_found,
            params={"includefield": ["SOPInstanceUID"], "SOPInstanceUID": ",".join(uids)},
            headers={"Accept": ACCEPT_JSON},
        )
        present = {str(_value(item, "SOPInstanceUID")) for item in found}
        missing = [u for u in uids if u not in present]
        if missing:
            raise PacsError(
                f"{where} was rejected: the server answered success but {len(missing)} of {len(uids)} instance(s) "
                "are not in the study (refused by a filter or a policy?)"
            )
        return uids
