"""A local Orthanc PACS with DICOMweb for trying and testing the PACS round trip, seeded with the sample films.

``make pacs`` and the tests share this: start Orthanc as this process's child (never the system service)
with a generated configuration, wait until its REST API answers, store the bundled samples as DICOM
studies over STOW-RS, stop it and remove its storage at the end. With screen_on_arrival, Orthanc's Python plugin
(orthanc-python) runs pneumo's screening on each study once it is stable (pacs/onchange.py), with no polling.

    python -m pneumo.integrations.pacs_server [--port 8042] [--no-screen-on-arrival] [--stable-age S]
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.core.paths import PROJECT_ROOT, SAMPLES_DIR
from pneumo.data.collection import parse_name
from pneumo.data.decode import load_xray
from pneumo.data.pixels import to_uint8

# requests, pydicom and dicomweb-client are imported where used, as in pneumo.integrations.pacs: the test PACS starts
# without
# them and loads each for the request that needs it.

DEFAULT_PORT = 8042
DICOMWEB_ROOT = "/dicom-web/"
# Debian's orthanc package installs the server in /usr/sbin (not on a normal user's PATH) and
# orthanc-dicomweb links its plugin into /usr/share/orthanc/plugins/.
ORTHANC_CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc", "/usr/local/sbin/Orthanc")
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
)
ENV_ORTHANC = "PNEUMO_ORTHANC"  # a non-packaged Orthanc binary
ENV_PLUGIN = "PNEUMO_ORTHANC_DICOMWEB"  # ... and its DICOMweb plugin
# orthanc-python (Debian) links its plugin beside the DICOMweb one; it runs pacs/onchange.py inside Orthanc.
PYTHON_PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancPython.so*",
    "/usr/lib/orthanc/libOrthancPython.so*",
    "/usr/local/share/orthanc/plugins/libOrthancPython.so*",
)
ENV_PYTHON_PLUGIN = "PNEUMO_ORTHANC_PYTHON"  # a non-packaged Python plugin
ONCHANGE_SCRIPT = Path(__file__).resolve().with_name("pacs") / "onchange.py"

SAMPLE_ATTRIBUTION = (
    "Sample film from Kermany D.S., Goldbaum M., Cai W. et al., Cell 172(5):1122-1131.e9 (2018), "
    "https://doi.org/10.1016/j.cell.2018.02.010; data: Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, "
    "https://doi.org/10.17632/rscbjbr9sj.2; licence CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); "
    "resized to 224x224 and converted to DICOM by pneumo (identifiers, dates and accession numbers are synthetic)."
)
# The seeded studies get one date each, a day apart from here, so date searches have something to select.
FIRST_STUDY_DATE = date(2024, 1, 1)
UID_NAMESPACE = "pneumo-sample-v1"  # changes every seeded UID if the seeding ever changes meaning


class PacsServerError(RuntimeError):
    """Orthanc is missing, cannot start, or the seeding failed; the message says which and why."""


def find_orthanc() -> tuple[str, str] | None:
    """(Orthanc binary, DICOMweb plugin) when both are installed, else None."""
    binary = os.environ.get(ENV_ORTHANC) or next(
        (
            found
            for name in ORTHANC_CANDIDATES
            if (found := shutil.which(name) or (name if os.access(name, os.X_OK) else None))
        ),
        None,
    )
    plugins = (
        [os.environ[ENV_PLUGIN]]
        if os.environ.get(ENV_PLUGIN)
        else sorted(p for pattern in PLUGIN_GLOBS for p in glob.glob(pattern))
    )
    if not binary or not plugins:
        return None
    return binary, plugins[0]


def find_python_plugin() -> str | None:
    """Orthanc's Python plugin (orthanc-python) when installed, else None."""
    if os.environ.get(ENV_PYTHON_PLUGIN):
        return os.environ[ENV_PYTHON_PLUGIN]
    return next(iter(sorted(p for pattern in PYTHON_PLUGIN_GLOBS for p in glob.glob(pattern))), None)


@dataclass
class ScreenOnArrival:
    """Screening as each study arrives: Orthanc's Python plugin runs `python -m pneumo pacs screen --push` for every
    study that has had no new instance for stable_age seconds (Orthanc's StableAge), in a child process of its own.

    python: pneumo's interpreter (this one by default); arguments: more `pacs screen` options (e.g. --model PATH);
    timeout: the longest one run may take."""

    python: str = field(default_factory=lambda: sys.executable)
    arguments: Sequence[str] = ()
    stable_age: int = 10
    timeout: float = 3600.0
    workdir: Path = PROJECT_ROOT

    def config(self, dicomweb_url: str, log_file: Path) -> dict[str, Any]:
        """The "PneumoOnChange" section onchange.py reads."""
        return {
            "Url": dicomweb_url,
            "Python": self.python,
            "Arguments": [str(a) for a in self.arguments],
            "WorkingDirectory": str(self.workdir),
            "LogFile": str(log_file),
            "Timeout": float(self.timeout),
        }


def orthanc_config(
    port: int,
    storage: Path,
    plugin: str,
    lua_scripts: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    name: str = "pneumo-pacs",
    on_arrival: tuple[str, str, dict[str, Any], int] | None = None,
) -> dict[str, Any]:
    """The configuration of a private, loopback-only Orthanc with DICOMweb and no DICOM listener. on_arrival: (Python
    plugin, script, the script's "PneumoOnChange" section, StableAge in seconds) to screen each study once stable."""
    config: dict[str, Any] = {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": int(port),
        # Orthanc 1.10 has no bind-address option: it listens on every interface and, with remote access
        # off, answers only 127.0.0.1 (others get 403). That is what makes running it without
        # authentication acceptable.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port to collide with or expose
        "HttpDescribeErrors": True,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "StorageCompression": False,
        "Plugins": [plugin],
        "LuaScripts": list(lua_scripts),
        # "Full" metadata (the default, said here because screening depends on it): study metadata carries
        # every attribute, so one request lists the views and the SR content of earlier screenings.
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": False,
            "Host": f"127.0.0.1:{port}",
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }
    if on_arrival is not None:
        python_plugin, script, section, stable_age = on_arrival
        config["Plugins"].append(python_plugin)
        config["PythonScript"] = script
        config["PythonVerbose"] = False
        config["StableAge"] = int(stable_age)  # seconds without a new instance before a study counts as complete
        config["PneumoOnChange"] = section
    config.update(extra or {})
    return config


@dataclass
class OrthancServer:
    """A running Orthanc child process; stop() ends it and removes storage it created."""

    port: int
    process: subprocess.Popen
    workdir: Path
    own_workdir: bool
    log_path: Path
    name: str = "pneumo-pacs"  # unique per start: /system must answer with it, not another server's
    on_arrival_log: Path | None = None  # what each screening-on-arrival run printed (its command, JSON and errors)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + DICOMWEB_ROOT.rstrip("/")

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()  # Orthanc flushes its index on SIGTERM
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_orthanc(
    port: int = DEFAULT_PORT,
    workdir: str | Path | None = None,
    timeout: float = 60.0,
    lua_scripts: Sequence[str] = (),
    extra_config: dict[str, Any] | None = None,
    screen_on_arrival: ScreenOnArrival | None = None,
) -> OrthancServer:
    """Start Orthanc on 127.0.0.1:port with storage in workdir (a new temporary folder by default) and
    return once GET /system answers; PacsServerError names what is missing or why it did not start.
    screen_on_arrival: load the Python plugin with pacs/onchange.py, so each stable study is screened and its
    results stored with no command run."""
    found = find_orthanc()
    if found is None:
        raise PacsServerError(
            "Orthanc with its DICOMweb plugin is not installed: `make pacs-deps` "
            "(apt-get install orthanc orthanc-dicomweb)"
        )
    binary, plugin = found
    python_plugin = find_python_plugin() if screen_on_arrival is not None else None
    if screen_on_arrival is not None and python_plugin is None:
        raise PacsServerError(
            "screening on arrival needs Orthanc's Python plugin: `make pacs-deps` (apt-get install orthanc-python)"
        )
    with socket.socket() as probe:  # a busy port would let another server answer our readiness check
        if probe.connect_ex(("127.0.0.1", int(port))) == 0:
            raise PacsServerError(f"port {port} on 127.0.0.1 is already in use; choose another PACS_PORT")
    name = f"pneumo-pacs-{uuid.uuid4().hex[:8]}"
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="pneumo-orthanc-")) if workdir is None else Path(workdir)
    (root / "storage").mkdir(parents=True, exist_ok=True)
    config_path = root / "orthanc.json"
    on_arrival, on_arrival_log = None, None
    if screen_on_arrival is not None and python_plugin is not None:
        # A copy beside the configuration: Orthanc puts the script's folder on its Python path, and pneumo's package
        # folder there would offer its modules to Orthanc's interpreter under bare names (config, client, ...).
        script = root / "pneumo_onchange.py"
        shutil.copyfile(ONCHANGE_SCRIPT, script)
        on_arrival_log = root / "pneumo-onchange.log"
        url = f"http://127.0.0.1:{int(port)}{DICOMWEB_ROOT.rstrip('/')}"
        section = screen_on_arrival.config(url, on_arrival_log)
        on_arrival = (python_plugin, str(script), section, screen_on_arrival.stable_age)
    config_path.write_text(
        json.dumps(
            orthanc_config(port, root / "storage", plugin, lua_scripts, extra_config, name, on_arrival), indent=2
        )
    )
    log_path = root / "orthanc.log"
    with open(log_path, "ab") as log:
        # Its own session: a Ctrl-C in the terminal reaches this process, which stops Orthanc in order.
        process = subprocess.Popen(
            [binary, str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = OrthancServer(port, process, root, own, log_path, name, on_arrival_log)
    atexit.register(server.stop)  # a script that ends on an exception leaves no Orthanc behind
    try:
        wait_until_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the starting thread's process dies, even by
    SIGKILL (strictly, when the thread that started it ends: start servers from a long-lived thread)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def wait_until_ready(server: OrthancServer, timeout: float = 60.0) -> None:
    """Poll GET /system until Orthanc answers; a process that exits first is an error with its log."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise PacsServerError(
                f"Orthanc exited with status {server.process.returncode} before answering on "
                f"port {server.port}: {server.log_tail()}"
            )
        try:
            answer = requests.get(server.url + "/system", timeout=2)
            if answer.ok and answer.json().get("Name") == server.name:
                return
            if answer.ok:  # another server took the port between the probe and our start
                raise PacsServerError(
                    f"port {server.port} is served by another server "
                    f"({answer.json().get('Name')}); choose another PACS_PORT"
                )
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise PacsServerError(
                f"Orthanc did not answer on {server.url}/system within {timeout:g} s: {server.log_tail()}"
            )
        time.sleep(0.2)


# --- the sample films as DICOM studies -------------------------------------------------------------------


@dataclass
class SampleFilm:
    path: Path
    patient_id: str
    label: str


@dataclass
class SeedReport:
    studies: list[str] = field(default_factory=list)  # StudyInstanceUIDs in seeding order
    instances: int = 0
    lateral_study: str | None = None  # the study given an extra lateral view


def sample_films(samples_dir: str | Path = SAMPLES_DIR) -> dict[str, list[SampleFilm]]:
    """Patient id (from the Kermany file name) → that child's films, in a stable order."""
    by_patient: dict[str, list[SampleFilm]] = {}
    for label in ("NORMAL", "PNEUMONIA"):
        for path in sorted((Path(samples_dir) / label).glob("*.jpeg")):
            patient, _ = parse_name(str(path))
            by_patient.setdefault(patient, []).append(SampleFilm(path, patient, label))
    if not by_patient:
        raise PacsServerError(f"no sample films (*.jpeg under NORMAL/ and PNEUMONIA/) in {samples_dir}")
    return by_patient


def _uid(*parts: str) -> str:
    """A deterministic 2.25 UID (a name-based UUID): seeding twice stores the same instances (Orthanc keeps
    the first), so a re-seed never duplicates a study. Not pydicom's generate_uid: with the 2.25 prefix it
    ignores its entropy sources and draws a random UUID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join((UID_NAMESPACE, *parts))).int}"


def film_dataset(
    pixels: Any,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    study_date: str,
    accession: str,
    series_number: int,
    modality: str,
    view_position: str,
    source_name: str,
    series_description: str,
    comments: str = SAMPLE_ATTRIBUTION,
) -> Any:
    """One 8-bit MONOCHROME2 chest film as a CR or DX (for presentation) instance."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    sop_class = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128  # written as a DICOM file (preamble and DICM), as every reader expects
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID = patient_id
    ds.PatientName = f"SAMPLE^{patient_id}"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "public research collection (Kermany 2018); synthetic identifiers"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = accession
    ds.StudyID = accession[-8:]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST (pneumo sample)"
    ds.SeriesDescription = series_description
    ds.Modality = modality
    ds.SeriesNumber, ds.InstanceNumber = series_number, 1
    ds.Manufacturer = "pneumo sample seeding"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"] if view_position in ("AP", "PA") else ["A", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageComments = f"{comments} Source file: {source_name}."
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    return ds


def sample_datasets(samples_dir: str | Path = SAMPLES_DIR, lateral: bool = True) -> tuple[list[Any], SeedReport]:
    """The sample films as DICOM instances, one study per child; the first study also gets a lateral view
    (the frontal film mirrored, labelled as a stand-in: the samples hold no real lateral) so "laterals
    are skipped" has something to skip."""
    datasets: list[Any] = []
    report = SeedReport()
    for index, (patient, films) in enumerate(sample_films(samples_dir).items()):
        study_uid = _uid(patient, "study")
        report.studies.append(study_uid)
        study_date = (FIRST_STUDY_DATE + timedelta(days=index)).strftime("%Y%m%d")
        accession = f"PNEU{index + 1:05d}"
        # Alternate CR and DX by seeding order (not by class), so a modality filter selects both classes.
        modality = "CR" if index % 2 == 0 else "DX"
        for number, film in enumerate(films, start=1):
            pixels = to_uint8(load_xray(film.path).pixels)
            datasets.append(
                film_dataset(
                    pixels,
                    patient_id=patient,
                    study_uid=study_uid,
                    series_uid=_uid(patient, film.path.name, "series"),
                    sop_uid=_uid(patient, film.path.name, "instance"),
                    study_date=study_date,
                    accession=accession,
                    series_number=number,
                    modality=modality,
                    view_position="AP",
                    source_name=film.path.name,
                    series_description="CHEST AP",
                )
            )
        if lateral and index == 0:
            report.lateral_study = study_uid
            datasets.append(
                film_dataset(
                    np.ascontiguousarray(to_uint8(load_xray(films[0].path).pixels)[:, ::-1]),
                    patient_id=patient,
                    study_uid=study_uid,
                    series_uid=_uid(patient, "lateral", "series"),
                    sop_uid=_uid(patient, "lateral", "instance"),
                    study_date=study_date,
                    accession=accession,
                    series_number=len(films) + 1,
                    modality=modality,
                    view_position="LL",
                    source_name=films[0].path.name,
                    series_description="CHEST LAT",
                    comments="Stand-in lateral view for testing (the frontal sample film mirrored, labelled "
                    "ViewPosition LL). " + SAMPLE_ATTRIBUTION,
                )
            )
    report.instances = len(datasets)
    return datasets, report


def seed(
    dicomweb_url: str,
    samples_dir: str | Path = SAMPLES_DIR,
    lateral: bool = True,
    limit: int | None = None,
    session: Any = None,
) -> SeedReport:
    """Store the samples (the first `limit` studies when given) into a DICOMweb server over STOW-RS."""
    from dicomweb_client.api import DICOMwebClient

    datasets, report = sample_datasets(samples_dir, lateral)
    if limit is not None:
        report.studies = report.studies[:limit]
        datasets = [ds for ds in datasets if ds.StudyInstanceUID in report.studies]
        report.instances = len(datasets)
    client = DICOMwebClient(dicomweb_url, session=session)
    by_study: dict[str, list[Any]] = {}
    for ds in datasets:
        by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
    for study_uid, items in by_study.items():
        try:
            answer = client.store_instances(items, study_instance_uid=study_uid)
        except Exception as exc:  # requests' errors and a malformed answer alike: one line naming the study
            raise PacsServerError(
                f"seeding {dicomweb_url}: storing study {study_uid} failed ({type(exc).__name__}: {exc})"
            ) from exc
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            raise PacsServerError(
                f"seeding {dicomweb_url}: {len(failed)} instance(s) of study {study_uid} were rejected"
            )
    return report


def serve(
    port: int = DEFAULT_PORT, samples_dir: str | Path = SAMPLES_DIR, screen_on_arrival: ScreenOnArrival | None = None
) -> int:
    """`make pacs`: start, seed, print where it is, and serve until Ctrl-C or SIGTERM. With screen_on_arrival the
    seeded studies, and any stored later, are screened as each becomes stable."""
    stop = {"now": False}

    def ask_to_stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, ask_to_stop)
    signal.signal(signal.SIGINT, ask_to_stop)
    server = start_orthanc(port, screen_on_arrival=screen_on_arrival)
    try:
        report = seed(server.dicomweb_url, samples_dir)
        print(
            f"Orthanc on {server.url} (DICOMweb {server.dicomweb_url}, explorer {server.url}/app/explorer.html), "
            f"storage {server.workdir}\nseeded {report.instances} instances in {len(report.studies)} studies "
            f"(a lateral view in study {report.lateral_study})\n"
            + (
                f"each study is screened {screen_on_arrival.stable_age} s after its last instance arrives "
                f"(log: {server.on_arrival_log})\n"
                if screen_on_arrival is not None
                else ""
            )
            + f"try: python -m pneumo pacs screen --url {server.dicomweb_url} --since 20240101 --push\n"
            "Ctrl-C stops it and deletes the storage.",
            flush=True,
        )
        while not stop["now"]:
            if server.process.poll() is not None:
                raise PacsServerError(f"Orthanc stopped (status {server.process.returncode}): {server.log_tail()}")
            time.sleep(0.5)
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.integrations.pacs_server",
        description="a local Orthanc with DICOMweb, seeded with the sample films",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("PACS_PORT", DEFAULT_PORT)))
    parser.add_argument("--samples", default=str(SAMPLES_DIR))
    parser.add_argument(
        "--no-screen-on-arrival",
        dest="screen_on_arrival",
        action="store_false",
        help="do not screen each study as it arrives (Orthanc's Python plugin); `pacs screen` still does",
    )
    parser.add_argument(
        "--stable-age", type=int, default=10, help="seconds without a new instance before a study is screened"
    )
    args = parser.parse_args(argv)
    try:
        on_arrival = ScreenOnArrival(stable_age=max(1, args.stable_age)) if args.screen_on_arrival else None
        return serve(args.port, args.samples, on_arrival)
    except (PacsServerError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
