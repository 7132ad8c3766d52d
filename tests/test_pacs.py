"""The PACS round trip against a real Orthanc with DICOMweb: seed, search, screen, push, read back, resume, fail.

Skipped only where Orthanc is not installed and this is not CI (`make pacs-deps` installs it); on CI (CI=true) a
missing Orthanc fails (tests.conftest.require), so the round trip cannot silently drop out of `make test`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, free_ports, require_orthanc

pytestmark = [pytest.mark.pacs, pytest.mark.timeout(900)]

ARTIFACTS = ROOT / "artifacts" / "pacs"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    require_orthanc()
    from pneumo.integrations.pacs_server import seed, start_orthanc

    server = start_orthanc(free_ports()[0], workdir=tmp_path_factory.mktemp("orthanc"))
    try:
        yield server, seed(server.dicomweb_url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded() -> Any:
    from pneumo.model.loading import load_model

    return load_model()


def _pacs(url: str, timeout: float = 30.0) -> Any:
    from pneumo.integrations.pacs import Pacs

    return Pacs(url, timeout=timeout)


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PNEUMO_PACS_URL", None)  # the server is always named on the command line here
    return subprocess.run(
        [sys.executable, "-m", "pneumo", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def _dataset(raw: bytes) -> Any:
    import pydicom

    return pydicom.dcmread(io.BytesIO(raw), force=True)


def _study_instances(pacs: Any, study: str) -> list[str]:
    from pneumo.integrations.pacs.dicomjson import _value

    return sorted(str(_value(m, "SOPInstanceUID")) for m in pacs.study_metadata(study))


def test_seeded_studies_one_per_child_with_attribution(orthanc: tuple[Any, Any]) -> None:
    from pneumo.data.collection import parse_name
    from pneumo.integrations.pacs import search_studies
    from pneumo.integrations.pacs.dicomjson import _value
    from pneumo.integrations.pacs_server import sample_films

    server, report = orthanc
    pacs = _pacs(server.dicomweb_url)
    children = sample_films()
    studies = search_studies(pacs, limit=None)
    assert len(studies) == len(children) == len(report.studies)
    assert sum(len(f) for f in children.values()) + 1 == report.instances  # every film, and the one lateral
    # Modality and date searches select, and select both modalities the seeding wrote.
    cr = search_studies(pacs, modalities=["CR"], limit=None)
    assert 0 < len(cr) < len(studies) and {m for s in studies for m in s.modalities} == {"CR", "DX"}
    recent = search_studies(pacs, since="20240201", limit=None)
    assert recent and all(s.date >= "20240201" for s in recent) and len(recent) < len(studies)
    assert [s.study_uid for s in search_studies(pacs, accession="PNEU00002")] == [report.studies[1]]
    # No patient identifiers in a row unless the deployment enables them.
    row = studies[0].row()
    assert not {"patient_id", "patient_name", "patient_birth_date", "accession"} & set(row)
    shown = {s.row(show_identifiers=True)["patient_id"] for s in studies}
    assert shown == set(children) and all(parse_name(f.path.name)[0] in shown for fs in children.values() for f in fs)
    metadata = pacs.study_metadata(report.studies[0])
    assert all("CC BY 4.0" in str(_value(m, "ImageComments")) for m in metadata)


def test_round_trip_sr_equals_predict_and_overlay_opens(orthanc: tuple[Any, Any], loaded: Any, tmp_path: Path) -> None:
    import cv2
    import highdicom as hd
    from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

    from pneumo.integrations.pacs import (
        ALREADY,
        RESEARCH_USE,
        SC_SERIES_DESCRIPTION,
        SCHEME,
        SCREENED,
        SKIPPED,
        SR_SERIES_DESCRIPTION,
        operating_point,
        screen_studies,
    )
    from pneumo.integrations.pacs.tid1500 import device_uid, read_measurement_report
    from pneumo.integrations.pacs.writers import ENCAPSULATED_PDF
    from pneumo.model.reading import card_hash, read

    server, report = orthanc
    pacs = _pacs(server.dicomweb_url)
    study = report.lateral_study
    started = time.perf_counter()
    run = screen_studies(pacs, loaded, [study], push=True)
    seconds = time.perf_counter() - started
    assert run.error is None and not run.failed
    screened = [r for r in run.results if r.status == SCREENED]
    laterals = [r for r in run.results if r.status == SKIPPED]
    assert len(screened) == 1 and len(laterals) == 1
    assert "lateral" in laterals[0].skipped and "LL" in laterals[0].skipped and not laterals[0].stored
    result = screened[0]
    assert set(result.stored) == {"sr", "sc", "pdf"}

    # The SR read back holds the probability predict gives for the very pixels the PACS serves.
    source_raw = pacs.retrieve_instance(study, result.series_uid, result.sop_uid)
    expected = read(loaded, source_raw, name="source")
    assert expected.probability is not None and result.probability == expected.probability
    metadata = pacs.study_metadata(study)
    series_of = {m["00080018"]["Value"][0]: m["0020000E"]["Value"][0] for m in metadata}
    source = _dataset(source_raw)
    sr = _dataset(pacs.retrieve_instance(study, series_of[result.stored["sr"]], result.stored["sr"]))
    assert sr.Modality == "SR" and sr.SeriesDescription == SR_SERIES_DESCRIPTION and sr.StudyInstanceUID == study
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    # A TID 1500 Imaging Measurement Report, filed under the source's patient, study and accession.
    assert (
        sr.ConceptNameCodeSequence[0].CodeValue == "126000"
        and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    )
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate"):
        assert sr.get(keyword) == source.get(keyword), keyword
    # pneumo as Contributing Equipment (IHE AIR): processing equipment, model, versions, the model file's device UID.
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "pneumo"]
    assert len(ours) == 1 and ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert ours[0].ManufacturerModelName == loaded.card.name and ours[0].DeviceUID == device_uid(loaded)
    assert any(str(v).startswith("pneumo ") for v in ours[0].SoftwareVersions)
    # Read back through highdicom's own TID 1500 classes: probability, decision, threshold and the region.
    back = read_measurement_report(sr)
    assert back.probability == expected.probability and back.decision == expected.decision
    assert back.source_uid == result.sop_uid and back.threshold == loaded.threshold
    assert back.operating_point == operating_point(loaded) and back.warnings == expected.warnings
    assert back.presence == {"PNEUMONIA": "Present", "NORMAL": "Absent"}.get(expected.decision, "Indeterminate")
    assert back.region is not None and 0 <= back.region.left < back.region.right <= source.Columns
    assert 0 <= back.region.top < back.region.bottom <= source.Rows
    texts = {}
    for item in hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.TEXT, recursive=True):
        texts.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(item)
    assert texts["CARDHASH"][0].TextValue == card_hash(loaded) and texts["111001"][0].TextValue == loaded.card.name
    assert texts["RESEARCH"][0].TextValue == RESEARCH_USE and len(texts["SEAL"][0].TextValue) == 64
    assert all(i.ConceptNameCodeSequence[0].CodingSchemeDesignator == SCHEME for i in texts["DECISION"])
    evidence = {
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert {result.sop_uid, result.stored["sc"], result.stored["pdf"]} <= evidence

    # The Encapsulated PDF: the reading's report, in the same study, under the same patient.
    pdf = _dataset(pacs.retrieve_instance(study, series_of[result.stored["pdf"]], result.stored["pdf"]))
    assert pdf.SOPClassUID == ENCAPSULATED_PDF and pdf.Modality == "DOC" and pdf.StudyInstanceUID == study
    assert pdf.PatientID == source.PatientID and pdf.AccessionNumber == source.AccessionNumber
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf" and pdf.VerificationFlag == "UNVERIFIED"
    document = bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)]
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == result.sop_uid
    # Each object as the PACS serves it passes dicom3tools' IOD check without an error.
    if shutil.which("dciodvfy"):
        for uid in result.stored.values():
            path = tmp_path / f"{uid}.dcm"
            path.write_bytes(pacs.retrieve_instance(study, series_of[uid], uid))
            checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            assert not [line for line in checked.stderr.splitlines() if line.startswith("Error")], checked.stderr

    # The Secondary Capture opens as an RGB image referencing its source, with the red banner on top.
    sc = _dataset(pacs.retrieve_instance(study, series_of[result.stored["sc"]], result.stored["sc"]))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.SeriesDescription == SC_SERIES_DESCRIPTION
    assert sc.StudyInstanceUID == study and sc.PatientID == source.PatientID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == result.sop_uid
    pixels = sc.pixel_array
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 512
    banner = pixels[2:6, pixels.shape[1] // 4 : pixels.shape[1] // 3].reshape(-1, 3).mean(axis=0)
    assert banner[0] > 120 and banner[1] < 60 and banner[2] < 60  # red research-use band
    assert float(pixels[..., 0].std()) > 10 and (np.abs(pixels[..., 0].astype(int) - pixels[..., 2]) > 40).mean() > 0.01
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(ARTIFACTS / "secondary_capture.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    (ARTIFACTS / "timing.json").write_text(
        json.dumps(
            {"one_study_screen_and_push_s": round(seconds, 3), "images_screened": 1, "first_in_process": True}, indent=2
        )
    )

    # A second screen reads nothing again and stores nothing, and reports the stored reading.
    before = _study_instances(pacs, study)
    again = screen_studies(pacs, loaded, [study], push=True)
    assert [r.status for r in again.results] == [ALREADY, SKIPPED]
    assert again.results[0].probability == expected.probability and again.results[0].stored == result.stored
    assert _study_instances(pacs, study) == before
    forced = screen_studies(pacs, loaded, [study], push=False, force=True)
    assert forced.results[0].status == SCREENED and forced.results[0].probability == expected.probability
    assert _study_instances(pacs, study) == before


def test_resume_and_unscreened_search(orthanc: tuple[Any, Any], loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after some studies loses nothing: the next run skips those and reads the rest; the batch
    drift check sees exactly the films read in the run."""
    from types import SimpleNamespace

    from pneumo.integrations.pacs import ALREADY, SCREENED, screen_studies, search_studies

    seen: list[tuple[int, tuple[int, ...], list[float]]] = []

    def check_batch(loaded: Any, images: list[np.ndarray], probabilities: list[float] | None = None) -> Any:
        seen.append((len(images), images[0].shape, list(probabilities or [])))
        return SimpleNamespace(shifted=True, advice="shifted batch (test double)")

    try:
        import pneumo.evaluation.drift
    except ImportError:  # the drift check is optional: screening runs without it
        drift = False
    else:
        drift = True
        monkeypatch.setattr(pneumo.evaluation.drift, "check_batch", check_batch)
    server, report = orthanc
    pacs = _pacs(server.dicomweb_url)
    first, second = report.studies[2], report.studies[3]
    done = screen_studies(pacs, loaded, [first], push=True)
    assert not done.failed
    unscreened = {s.study_uid for s in search_studies(pacs, unscreened_by=loaded, limit=None)}
    assert first not in unscreened and second in unscreened
    resumed = screen_studies(pacs, loaded, [first, second], push=True)
    assert [r.status for r in resumed.results] == [ALREADY, SCREENED]
    assert resumed.results[0].stored == done.results[0].stored
    size = (loaded.input_size, loaded.input_size)
    assert (
        not drift
        or seen[-1] == (1, size, [resumed.results[1].probability])
        and resumed.drift_note == "shifted batch (test double)"
    )


def test_screen_then_send_results_as_the_app_does(orthanc: tuple[Any, Any], loaded: Any) -> None:
    from pneumo.integrations.pacs import ALREADY, SCREENED, list_studies, screen_studies, send_results

    server, report = orthanc
    pacs = _pacs(server.dicomweb_url)
    study = report.studies[4]
    rows = list_studies(pacs, since="20240105", until="20240105")
    assert [r["study_uid"] for r in rows] == [study] and "patient_id" not in rows[0]
    assert list_studies(pacs, show_identifiers=True, accession="PNEU00005")[0]["patient_id"]
    run = screen_studies(pacs, loaded, [study], keep_pixels=True)
    result = run.results[0]
    assert result.status == SCREENED and not result.stored
    # keep_pixels keeps the very film that was scored: the model gives its score back on those pixels.
    assert result.reading.probability == pytest.approx(float(loaded.predict(result.reading.xray.pixels)[0]), abs=1e-6)
    before = len(_study_instances(pacs, study))
    assert (
        send_results(pacs, loaded, run.results) == []
        and set(result.stored) <= {"sr", "sc", "pdf"}
        and {"sr", "pdf"} <= set(result.stored)
    )
    assert len(_study_instances(pacs, study)) == before + len(result.stored)
    assert send_results(pacs, loaded, run.results) == []  # sent once only
    assert len(_study_instances(pacs, study)) == before + len(result.stored)
    assert screen_studies(pacs, loaded, [study]).results[0].status == ALREADY


def test_cli_screen_json_contract(orthanc: tuple[Any, Any]) -> None:
    server, report = orthanc
    study = report.studies[5]
    out = _cli("pacs", "screen", "--url", server.dicomweb_url, "--study", study, "--push", "--json")
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)
    keys = {
        "study",
        "series",
        "instance",
        "path",
        "probability",
        "prediction",
        "threshold",
        "operating_point",
        "warnings",
        "error",
        "stored",
    }
    assert len(entries) == 1 and keys <= set(entries[0])
    entry = entries[0]
    assert entry["study"] == study and entry["status"] == "screened" and entry["error"] is None
    # The score is the stored instance's own: fetched back over WADO-RS and read here, in this process.
    from pneumo.model.loading import load_model
    from pneumo.model.reading import read

    raw = _pacs(server.dicomweb_url).retrieve_instance(study, entry["series"], entry["instance"])
    here = read(load_model(), raw, name="instance.dcm")
    assert entry["probability"] == pytest.approx(here.probability, abs=1e-5)
    t = entry["threshold"]
    rule = (
        "UNCERTAIN — review"
        if abs(entry["probability"] - t) < 0.05
        else "PNEUMONIA"
        if entry["probability"] >= t
        else "NORMAL"
    )
    assert entry["prediction"] == rule  # the README's rule: ±0.05 around the threshold is a second look
    assert set(entry["stored"]) == {"sr", "sc", "pdf"} and entry["path"].endswith(f"/instances/{entry['instance']}")
    again = _cli("pacs", "screen", "--url", server.dicomweb_url, "--study", study, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)[0]["status"] == "already screened"
    assert json.loads(again.stdout)[0]["probability"] == entry["probability"]


def test_cli_watch_polls_and_screens(orthanc: tuple[Any, Any]) -> None:
    from pneumo.integrations.pacs_server import FIRST_STUDY_DATE

    server, report = orthanc
    last = FIRST_STUDY_DATE.toordinal() + len(report.studies) - 1
    from datetime import date

    since = date.fromordinal(last).strftime("%Y%m%d")  # the newest study only
    out = _cli(
        "pacs",
        "watch",
        "--url",
        server.dicomweb_url,
        "--since",
        since,
        "--interval",
        "0.1",
        "--max-polls",
        "2",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    # First poll screens the study; the second finds nothing new to read (the loop remembers it).
    assert [e["status"] for e in lines] == ["screened"] and lines[0]["study"] == report.studies[-1]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_stopped_server_is_one_line(tmp_path: Path) -> None:
    require_orthanc()
    from pneumo.integrations.pacs_server import seed, start_orthanc

    server = start_orthanc(free_ports()[0], workdir=tmp_path / "orthanc")
    study = seed(server.dicomweb_url, limit=1).studies[0]
    url = server.dicomweb_url
    server.stop()
    out = _cli("pacs", "screen", "--url", url, "--study", study, "--push", "--json")
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert line.startswith("error: ") and url in line and study in line and "unreachable" in line
    entries = json.loads(out.stdout)
    assert len(entries) == 1 and entries[0]["study"] == study and entries[0]["error"]
    search = _cli("pacs", "screen", "--url", url, "--since", "20240101", "--json")
    assert search.returncode == 2 and json.loads(search.stdout) == []
    assert url in _one_line(search.stderr)


def test_timeout_is_one_line() -> None:
    """A server that accepts the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        out = _cli("pacs", "screen", "--url", url, "--study", "1.2.3.4", "--timeout", "1", "--json")
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        listener.close()
    assert out.returncode == 2
    line = _one_line(out.stderr)
    assert url in line and "1.2.3.4" in line and "no answer within 1 s" in line


def test_rejected_store_is_one_line_and_keeps_the_reading(tmp_path: Path, loaded: Any) -> None:
    """Orthanc's Lua filter drops the SR while STOW-RS answers success: the check after the store catches it,
    the reading stays in the output, and nothing counts as screened, so the next run tries again."""
    require_orthanc()
    from pneumo.integrations.pacs import FAILED, screen_studies
    from pneumo.integrations.pacs_server import seed, start_orthanc

    lua = tmp_path / "reject_sr.lua"
    lua.write_text("function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.Modality ~= 'SR'\nend\n")
    with start_orthanc(free_ports()[0], workdir=tmp_path / "orthanc", lua_scripts=[str(lua)]) as server:
        study = seed(server.dicomweb_url, limit=2).studies[1]
        run = screen_studies(_pacs(server.dicomweb_url), loaded, [study], push=True)
        assert [r.status for r in run.results] == [FAILED] and run.failed
        result = run.results[0]
        assert result.prediction and not result.stored
        # The reading kept is the instance's own: read again here from the bytes the server holds.
        from pneumo.model.reading import read

        raw = _pacs(server.dicomweb_url).retrieve_instance(study, result.series_uid, result.sop_uid)
        assert result.probability == pytest.approx(read(loaded, raw, name="instance.dcm").probability, abs=1e-6)
        assert server.dicomweb_url in result.error and study in result.error and "rejected" in result.error
        out = _cli("pacs", "screen", "--url", server.dicomweb_url, "--study", study, "--push")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        line = _one_line(out.stderr)
        assert "rejected" in line and study in line and server.dicomweb_url in line
        # Not recorded as done: the next run reads it again rather than skipping it.
        assert screen_studies(_pacs(server.dicomweb_url), loaded, [study]).results[0].status == "screened"


def test_views_are_picked_as_a_department_would() -> None:
    from pneumo.integrations.pacs import classify

    def meta(**values: Any) -> dict[str, Any]:
        from pydicom.datadict import tag_for_keyword

        return {
            f"{tag_for_keyword(k):08X}": {"Value": [v] if not isinstance(v, list) else v} for k, v in values.items()
        }

    cr = "1.2.840.10008.5.1.4.1.1.1"
    assert classify(meta(Modality="CR", SOPClassUID=cr, ViewPosition="PA")) == ("frontal", None)
    assert classify(meta(Modality="DX", SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1", ViewPosition="AP"))[0] == "frontal"
    assert "lateral" in classify(meta(Modality="CR", SOPClassUID=cr, ViewPosition="LL"))[1]
    assert "lateral" in classify(meta(Modality="CR", SOPClassUID=cr, SeriesDescription="CHEST LAT"))[1]
    assert "not recorded" in classify(meta(Modality="CR", SOPClassUID=cr, SeriesDescription="CHEST"))[1]
    assert (
        "for-processing"
        in classify(meta(Modality="DX", SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1.1", ViewPosition="PA"))[1]
    )
    assert "body part" in classify(meta(Modality="CR", SOPClassUID=cr, ViewPosition="PA", BodyPartExamined="HAND"))[1]
    assert "decubitus" in classify(meta(Modality="CR", SOPClassUID=cr, ViewPosition="LLD"))[1]
    assert classify(meta(Modality="SR", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.22")) is None


def test_config_from_environment_and_secrets_never_leaks_credentials() -> None:
    from pneumo.integrations.pacs import PacsConfig, redact

    assert PacsConfig.load({}, {}) is None
    env = {"PNEUMO_PACS_URL": "https://pacs.example/dicom-web/", "PNEUMO_PACS_TOKEN": "t0k"}
    config = PacsConfig.load({"pneumo": {"pacs": {"url": "https://other/dicom-web", "show_identifiers": True}}}, env)
    assert config.url == "https://pacs.example/dicom-web" and config.show_identifiers
    assert config.session().headers["Authorization"] == "Bearer t0k"
    basic = PacsConfig.load({"pneumo": {"pacs": {"url": "https://p/dw", "username": "u", "password": "p"}}}, {})
    assert basic.session().auth == ("u", "p") and basic.token is None
    # Sending follows the deployment's allow_changes unless the PACS section says otherwise.
    assert not basic.may_send(False) and basic.may_send(True)
    assert not PacsConfig.load({}, {**env, "PNEUMO_PACS_ALLOW_SEND": "0"}).may_send(True)
    assert PacsConfig.load({}, {**env, "PNEUMO_PACS_ALLOW_SEND": "1"}).may_send(False)
    assert redact("https://u:secret@pacs:8443/dicom-web") == "https://pacs:8443/dicom-web"
    with pytest.raises(ValueError, match="timeout"):
        PacsConfig.load({}, {"PNEUMO_PACS_URL": "http://x/dw", "PNEUMO_PACS_TIMEOUT": "soon"})
