"""What a department's viewer gets: the TID 1500 measurement report, the Encapsulated PDF and the overlay pneumo stores
for a film, made here as push_result makes them (a stand-in server records the store), then checked by dicom3tools'
dciodvfy, read by dcmtk's dsrdump and read back through highdicom.

Tests that need dciodvfy or dsrdump skip without them, except on CI (CI=true), where a missing tool fails
(tests.conftest.require): `make pacs-deps` installs both.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.conftest import require

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@pytest.fixture(scope="module")
def loaded() -> Any:
    from pneumo.model.loading import load_model

    return load_model()


def _film(
    rows: int = 224, columns: int = 224, charset: bool = True, request: bool = False, modality: str = "CR"
) -> Any:
    """A frontal chest film as a PACS holds it: a sample film (one the input check takes for a chest film), at any
    shape, with or without a character set and a request (Request Attributes Sequence) it answers."""
    import cv2
    from pydicom.dataset import Dataset

    from pneumo.data.decode import load_xray
    from pneumo.data.pixels import to_uint8
    from pneumo.integrations.pacs_server import film_dataset, sample_films

    sample = next(f for films in sample_films().values() for f in films if f.label == "PNEUMONIA")
    picture = to_uint8(load_xray(sample.path).pixels)
    pixels = cv2.resize(picture, (columns, rows), interpolation=cv2.INTER_LINEAR)
    ds = film_dataset(
        pixels,
        patient_id="P-TID",
        study_uid=f"1.2.826.0.1.3680043.8.498.{rows}.{columns}.1",
        series_uid=f"1.2.826.0.1.3680043.8.498.{rows}.{columns}.2",
        sop_uid=f"1.2.826.0.1.3680043.8.498.{rows}.{columns}.3",
        study_date="20240301",
        accession="ACC-TID-1",
        series_number=1,
        modality=modality,
        view_position="PA",
        source_name="synthetic",
        series_description="CHEST PA",
    )
    if not charset:
        del ds.SpecificCharacterSet
    if request:
        item = Dataset()
        item.RequestedProcedureID = "RP-77"
        item.RequestedProcedureDescription = "XR CHEST PA"
        item.ScheduledProcedureStepID = "SPS-1"
        ds.RequestAttributesSequence = [item]
    return ds


def _screened(loaded: Any, film: Any, prediction: str | None = None) -> Any:
    """The film read as screen_study reads it (read, then the header kept), ready for push_result."""
    from pneumo.integrations.pacs.results import SCREENED, InstanceResult
    from pneumo.integrations.pacs.writers import _header
    from pneumo.model.reading import card_hash, read

    raw = io.BytesIO()
    film.save_as(raw, enforce_file_format=True)
    reading = read(loaded, raw.getvalue(), name="film.dcm")
    assert reading.probability is not None
    result = InstanceResult(
        str(film.StudyInstanceUID),
        str(film.SeriesInstanceUID),
        str(film.SOPInstanceUID),
        "film.dcm",
        SCREENED,
        probability=float(reading.probability),
        prediction=prediction or reading.decision,
        threshold=float(loaded.threshold),
        operating_point="shipped",
        model=str(loaded.card.name),
        card_hash=card_hash(loaded),
        warnings=list(reading.warnings),
    )
    if prediction is not None:
        reading.decision = prediction
    result.reading, result.source = reading, _header(raw.getvalue())
    return result


def _pushed(loaded: Any, result: Any) -> dict[str, Any]:
    """push_result against a stand-in server: what it stored, by kind, written and read back as files are."""
    import pydicom

    from pneumo.integrations.pacs.screening import push_result

    stored: list[Any] = []
    pacs = SimpleNamespace(
        secret="a deployment's secret",
        display_url="http://pacs.test/dicom-web",
        store=lambda study, datasets: stored.extend(datasets),
    )
    push_result(pacs, loaded, result)  # type: ignore[arg-type]
    by_uid = {}
    for ds in stored:
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds)  # as the STOW-RS body carries it (client.stow_body): the file meta as built
        by_uid[str(ds.SOPInstanceUID)] = pydicom.dcmread(io.BytesIO(out.getvalue()))
    return {kind: by_uid[uid] for kind, uid in result.stored.items()}


def _dciodvfy(ds: Any, folder: Path) -> list[str]:
    """dciodvfy's error lines for one object (warnings, such as pneumo's private coding scheme, are not errors)."""
    import pydicom

    path = folder / f"{ds.SOPInstanceUID}.dcm"
    pydicom.dcmwrite(path, ds)  # nothing added: the meta read back is the meta that was sent
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


# --- the region ----------------------------------------------------------------------------------------------


def test_the_hottest_region_is_scaled_onto_the_source_film() -> None:
    from pneumo.integrations.pacs.tid1500 import Region, hottest_region

    yy, xx = np.mgrid[0:56, 0:56]
    heat = np.exp(-((yy - 14) ** 2 + (xx - 42) ** 2) / (2 * 3.0**2)) + 0.3 * np.exp(
        -((yy - 40) ** 2 + (xx - 10) ** 2) / 50
    )
    region = hottest_region(heat, rows=1000, columns=800)  # a portrait film, each axis scaled on its own
    assert region is not None
    assert region.peak == pytest.approx((42.5 * 800 / 56, 14.5 * 1000 / 56))
    assert region.left < region.peak[0] < region.right and region.top < region.peak[1] < region.bottom
    # Only the blob around the peak, not the lesser one elsewhere; and inside the film.
    assert region.right - region.left < 800 / 4 and region.bottom - region.top < 1000 / 4
    assert 0 <= region.left and region.right <= 800 and 0 <= region.top and region.bottom <= 1000
    line = region.polyline()
    assert line.shape == (5, 2) and (line[0] == line[-1]).all()  # closed
    back = Region.from_polyline(line.ravel())
    assert (back.left, back.top, back.right, back.bottom) == pytest.approx(
        (region.left, region.top, region.right, region.bottom)
    )
    # A flat map (or one of NaN) claims no region.
    assert hottest_region(np.zeros((7, 7)), 100, 100) is None
    assert hottest_region(np.full((7, 7), np.nan), 100, 100) is None


def test_the_device_uid_is_the_model_files_own(tmp_path: Path) -> None:
    from pneumo.integrations.pacs.tid1500 import device_uid
    from pneumo.model.loading import ServingCache

    def model(content: bytes) -> Any:
        path = tmp_path / f"{len(content)}.keras"
        path.write_bytes(content)
        return SimpleNamespace(path=path, cache=ServingCache())

    first, same, other = model(b"weights"), model(b"weights"), model(b"other weights")
    same.path = first.path.with_name("copy.keras")
    same.path.write_bytes(b"weights")  # the same file elsewhere is the same device
    uid = device_uid(first)
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid == device_uid(same) != device_uid(other)


# --- the objects, checked by other tools -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "film",
    [
        pytest.param({}, id="sample-like-CR"),
        pytest.param({"rows": 600, "columns": 480, "charset": False, "request": True, "modality": "DX"}, id="DX"),
    ],
)
def test_each_object_passes_dciodvfy_and_the_report_reads_back(
    loaded: Any, tmp_path: Path, film: dict[str, Any]
) -> None:
    require(shutil.which("dciodvfy"), "dicom3tools' dciodvfy is not installed (make pacs-deps)")
    require(shutil.which("dsrdump"), "dcmtk's dsrdump is not installed (make pacs-deps)")
    from pneumo.integrations.pacs.tid1500 import device_uid, hottest_region, read_measurement_report

    source = _film(**film)
    result = _screened(loaded, source)
    stored = _pushed(loaded, result)
    assert set(stored) == {"sr", "sc", "pdf"}
    for kind, ds in stored.items():
        assert _dciodvfy(ds, tmp_path) == [], kind

    sr = stored["sr"]
    path = tmp_path / "report.dcm"
    sr.save_as(path, enforce_file_format=True)
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    for text in ("Imaging Measurement Report", "Probability", "Pneumonia", "SCOORD", "POLYLINE", "UNVERIFIED"):
        assert text in dump.stdout, text

    back = read_measurement_report(sr)
    assert back.probability == result.probability and back.decision == result.prediction
    assert back.source_uid == source.SOPInstanceUID and back.threshold == loaded.threshold
    assert back.presence == {"PNEUMONIA": "Present", "NORMAL": "Absent"}.get(str(result.prediction), "Indeterminate")
    expected = hottest_region(result.heatmap, int(source.Rows), int(source.Columns))
    assert expected is not None and back.region is not None
    assert (back.region.left, back.region.top, back.region.right, back.region.bottom) == pytest.approx(
        (expected.left, expected.top, expected.right, expected.bottom), abs=1e-3
    )
    assert back.region.right <= source.Columns and back.region.bottom <= source.Rows
    # Patient, study, accession from the source; requested-procedure evidence; the film's request, when it had one.
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
        assert sr.get(keyword) == source.get(keyword) == stored["pdf"].get(keyword), keyword
    assert sr.VerificationFlag == "UNVERIFIED" and stored["pdf"].VerificationFlag == "UNVERIFIED"
    referenced = {
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert referenced == {source.SOPInstanceUID, stored["sc"].SOPInstanceUID, stored["pdf"].SOPInstanceUID}
    if film.get("request"):
        assert sr.ReferencedRequestSequence[0].RequestedProcedureID == "RP-77"
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "pneumo"]
    assert len(ours) == 1 and ours[0].DeviceUID == device_uid(loaded)
    assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    pdf = stored["pdf"]
    assert pdf.SOPClassUID == ENCAPSULATED_PDF and pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)].startswith(b"%PDF-")


def test_a_film_not_assessable_gets_no_coded_finding_no_region_and_no_overlay(loaded: Any, tmp_path: Path) -> None:
    require(shutil.which("dciodvfy"), "dicom3tools' dciodvfy is not installed (make pacs-deps)")
    from pneumo.integrations.pacs.tid1500 import read_measurement_report
    from pneumo.model.reading import NOT_ASSESSABLE

    stored = _pushed(loaded, _screened(loaded, _film(), prediction=NOT_ASSESSABLE))
    assert set(stored) == {"sr", "pdf"}
    for ds in stored.values():
        assert _dciodvfy(ds, tmp_path) == []
    back = read_measurement_report(stored["sr"])
    assert back.decision == NOT_ASSESSABLE and back.presence is None and back.region is None
    assert back.probability is not None  # listed, as everywhere; no decision is made on it


def test_an_uncertain_reading_is_coded_indeterminate(loaded: Any) -> None:
    from pneumo.integrations.pacs.tid1500 import read_measurement_report
    from pneumo.model.reading import UNCERTAIN

    back = read_measurement_report(_pushed(loaded, _screened(loaded, _film(), prediction=UNCERTAIN))["sr"])
    assert back.decision == UNCERTAIN and back.presence == "Indeterminate"


def test_a_report_that_cannot_be_made_costs_the_pdf_not_the_reading(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pneumo.integrations.report
    from pneumo.integrations.pacs.tid1500 import read_measurement_report

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("font missing")

    monkeypatch.setattr(pneumo.integrations.report, "study_pdf", broken)
    result = _screened(loaded, _film())
    stored = _pushed(loaded, result)
    assert set(stored) == {"sr", "sc"}
    assert any("no PDF report stored" in w and "font missing" in w for w in result.warnings)
    assert any("no PDF report stored" in w for w in read_measurement_report(stored["sr"]).warnings)
