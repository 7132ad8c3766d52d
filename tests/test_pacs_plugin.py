"""Screening as each study arrives, with no polling and no command: Orthanc's Python plugin (orthanc-python) runs
pneumo's `pacs screen --push` on every study once it is stable (pneumo/integrations/pacs/onchange.py).

The queue and its worker are tested here with Orthanc's API stood in for; the real plugin in a real Orthanc with a
StableAge of 2 s. Those skip only where Orthanc or its Python plugin is missing and this is not CI
(tests.conftest.require).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_ports, require, require_orthanc

pytestmark = [pytest.mark.pacs, pytest.mark.timeout(600)]

STABLE_AGE = 2  # seconds without a new instance before Orthanc calls a study stable
WITHIN = 30.0  # seconds after that by which the study's SR must be in the PACS


def _onchange() -> Any:
    import pneumo.integrations.pacs.onchange as onchange

    return onchange


class _Orthanc:
    """What onchange.py uses of Orthanc's `orthanc` module: two studies, one with a CR film, one with only our SR."""

    class ChangeType:
        STABLE_STUDY, ORTHANC_STOPPED, NEW_INSTANCE = 7, 4, 1

    def __init__(self, section: dict[str, Any] | None = None) -> None:
        self.section = section
        self.logged: list[str] = []
        self.callbacks: list[Any] = []
        self.studies = {
            "o-film": ("1.2.3.1", [{"MainDicomTags": {"Modality": "CR"}, "Instances": ["i1"]}]),
            "o-ours": (
                "1.2.3.2",
                [{"MainDicomTags": {"Modality": "SR", "Manufacturer": "pneumo"}, "Instances": ["s"]}],
            ),
        }

    def GetConfiguration(self) -> str:  # noqa: N802 (Orthanc's names)
        return json.dumps({} if self.section is None else {"PneumoOnChange": self.section})

    def RestApiGet(self, uri: str) -> bytes:  # noqa: N802
        parts = uri.strip("/").split("/")
        if parts[1] not in self.studies:
            raise RuntimeError("Unknown resource")
        uid, series = self.studies[parts[1]]
        if len(parts) == 2:
            return json.dumps({"MainDicomTags": {"StudyInstanceUID": uid}}).encode()
        return json.dumps(series).encode()

    def LogWarning(self, line: str) -> None:  # noqa: N802
        self.logged.append(line)

    def RegisterOnChangeCallback(self, callback: Any) -> None:  # noqa: N802
        self.callbacks.append(callback)


def _fake_screen(tmp_path: Path, status: str = "screened", code: int = 0, sleep: float = 0.0) -> list[str]:
    """A stand-in for `python -m pneumo pacs screen ... --json`: records its arguments, prints one entry per study."""
    script = tmp_path / "fake_screen.py"
    script.write_text(
        "import json, sys, time\n"
        f"time.sleep({sleep})\n"
        "args = sys.argv[1:]\n"
        f"open({str(tmp_path / 'calls.jsonl')!r}, 'a').write(json.dumps(args) + '\\n')\n"
        "studies = [args[i + 1] for i, a in enumerate(args) if a == '--study']\n"
        f"print(json.dumps([{{'study': s, 'status': {status!r}}} for s in studies]))\n"
        f"sys.exit({code})\n"
    )
    return [sys.executable, str(script)]


def _calls(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_stable_study_is_screened_once_per_set_of_films(tmp_path: Path) -> None:
    onchange = _onchange()
    orthanc = _Orthanc()
    screener = onchange.Screener(_fake_screen(tmp_path), orthanc.RestApiGet, orthanc.LogWarning)
    assert screener.screen(["o-film", "o-ours", "o-gone"]) == {"o-film": True}  # only a study with a film to read
    assert _calls(tmp_path)[-1][-2:] == ["--study", "1.2.3.1"]
    # Our own stores make the study stable again: the same films, nothing to read, no run.
    assert screener.screen(["o-film"]) == {} and len(_calls(tmp_path)) == 1
    # A film added later is a change: the study is screened again (pneumo itself skips what it already read).
    orthanc.studies["o-film"][1].append({"MainDicomTags": {"Modality": "DX"}, "Instances": ["i2"]})
    assert screener.screen(["o-film"]) == {"o-film": True} and len(_calls(tmp_path)) == 2
    assert "1 screened" in orthanc.logged[-1]


def test_a_failed_run_leaves_the_study_to_be_retried(tmp_path: Path) -> None:
    onchange = _onchange()
    orthanc = _Orthanc()
    failing = onchange.Screener(_fake_screen(tmp_path, "failed", 2), orthanc.RestApiGet, orthanc.LogWarning)
    assert failing.screen(["o-film"]) == {"o-film": False} and "o-film" not in failing.done
    assert "retry" in orthanc.logged[-1]
    assert failing.screen(["o-film"]) == {"o-film": False} and len(_calls(tmp_path)) == 2  # tried again, not skipped
    # No interpreter at all, or a run that never ends: the same, and the worker goes on.
    missing = onchange.Screener(["/nonexistent/python"], orthanc.RestApiGet, orthanc.LogWarning)
    assert missing.screen(["o-film"]) == {"o-film": False}
    hung = onchange.Screener(_fake_screen(tmp_path, sleep=30), orthanc.RestApiGet, orthanc.LogWarning, timeout=1)
    started = time.monotonic()
    assert hung.screen(["o-film"]) == {"o-film": False} and time.monotonic() - started < 20


def test_studies_that_became_stable_together_share_one_run(tmp_path: Path) -> None:
    onchange = _onchange()
    orthanc = _Orthanc()
    orthanc.studies["o-two"] = ("1.2.3.3", [{"MainDicomTags": {"Modality": "DX"}, "Instances": ["i9"]}])
    screener = onchange.Screener(_fake_screen(tmp_path), orthanc.RestApiGet, orthanc.LogWarning)
    screener.submit("o-film")
    screener.submit("o-two")
    screener.start()
    deadline = time.monotonic() + 30
    while len(screener.done) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    screener.stop()
    assert set(screener.done) == {"o-film", "o-two"} and not screener._thread.is_alive()
    (call,) = _calls(tmp_path)  # one model load for both
    assert [call[i + 1] for i, a in enumerate(call) if a == "--study"] == ["1.2.3.1", "1.2.3.3"]


def test_the_registered_callback_queues_stable_studies_and_returns_at_once(tmp_path: Path) -> None:
    onchange = _onchange()
    fake = _fake_screen(tmp_path, sleep=2)
    script = Path(fake[1])  # run as pneumo's "interpreter": `SCRIPT -m pneumo pacs screen --push ... --study UID`
    script.write_text(f"#!{sys.executable}\n" + script.read_text())
    script.chmod(0o755)
    orthanc = _Orthanc({"Url": "http://127.0.0.1:1/dicom-web", "Python": str(script)})
    screener = onchange.register(orthanc)
    assert screener is not None and screener.command[1:6] == ["-m", "pneumo", "pacs", "screen", "--push"]
    # The URL reaches the run through its environment: a user:password in it is never in a log line or `ps`.
    assert "--url" not in screener.command and screener.env == {"PNEUMO_PACS_URL": "http://127.0.0.1:1/dicom-web"}
    (callback,) = orthanc.callbacks
    callback(_Orthanc.ChangeType.NEW_INSTANCE, 0, "o-film")  # not stable yet: nothing
    started = time.monotonic()
    callback(_Orthanc.ChangeType.STABLE_STUDY, 0, "o-film")
    assert time.monotonic() - started < 0.5  # Orthanc's change thread never waits on a run (this one takes 2 s)
    deadline = time.monotonic() + 30
    while not screener.done and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(screener.done) == ["o-film"] and len(_calls(tmp_path)) == 1
    callback(_Orthanc.ChangeType.ORTHANC_STOPPED, 0, "")
    assert not screener._thread.is_alive()
    # Without a section, Orthanc runs on and says why nothing is screened.
    bare = _Orthanc()
    assert onchange.register(bare) is None and "not screened on arrival" in bare.logged[-1] and not bare.callbacks


# --- the real plugin in a real Orthanc -----------------------------------------------------------------------


def _require_plugin() -> None:
    require_orthanc()
    from pneumo.integrations.pacs_server import find_python_plugin

    require(find_python_plugin() is not None, "Orthanc's Python plugin is not installed (make pacs-deps)")


def _srs(pacs: Any, study: str) -> list[dict[str, Any]]:
    from pneumo.integrations.pacs.dicomjson import _value

    return [m for m in pacs.study_metadata(study) if str(_value(m, "Modality")) == "SR"]


def test_a_stored_study_gets_its_report_with_no_command_run(tmp_path: Path) -> None:
    _require_plugin()
    from pneumo.integrations.pacs import Pacs, read_screening_sr
    from pneumo.integrations.pacs.dicomjson import _value
    from pneumo.integrations.pacs_server import ScreenOnArrival, seed, start_orthanc

    with start_orthanc(
        free_ports()[0], workdir=tmp_path / "orthanc", screen_on_arrival=ScreenOnArrival(stable_age=STABLE_AGE)
    ) as server:
        pacs = Pacs(server.dicomweb_url)
        study = seed(server.dicomweb_url, limit=1).studies[0]  # a frontal film and a stand-in lateral
        stored = time.monotonic()
        found: list[dict[str, Any]] = []
        while not found and time.monotonic() - stored < STABLE_AGE + WITHIN:
            time.sleep(0.5)
            found = _srs(pacs, study)
        seconds = time.monotonic() - stored
        log = server.on_arrival_log.read_text() if server.on_arrival_log and server.on_arrival_log.exists() else ""
        assert found, f"no SR {STABLE_AGE + WITHIN:g} s after the store: {server.log_tail()} | {log[-2000:]}"
        prior = read_screening_sr(found[0])
        assert prior is not None and prior.layout == "tid1500" and prior.region and prior.pdf_uid and prior.overlay_uid
        modalities = sorted(str(_value(m, "Modality")) for m in pacs.study_metadata(study))
        assert modalities == ["CR", "CR", "DOC", "OT", "SR"]
        # Our own store made the study stable again: with the same films, nothing more is read or stored.
        time.sleep(STABLE_AGE + 4)
        assert len(_srs(pacs, study)) == 1 and "pneumo: screened 1 study on arrival" in server.log_tail(40)
    (Path(__file__).resolve().parents[1] / "artifacts" / "pacs").mkdir(parents=True, exist_ok=True)
    timing = Path(__file__).resolve().parents[1] / "artifacts" / "pacs" / "on_arrival.json"
    timing.write_text(json.dumps({"stable_age_s": STABLE_AGE, "store_to_sr_s": round(seconds, 1)}, indent=2))


def test_a_failed_screening_on_arrival_leaves_the_study_for_pacs_screen(tmp_path: Path) -> None:
    _require_plugin()
    from pneumo.integrations.pacs import SCREENED, Pacs, screen_studies
    from pneumo.integrations.pacs_server import ScreenOnArrival, seed, start_orthanc
    from pneumo.model.loading import load_model

    broken = ScreenOnArrival(python=str(tmp_path / "no-such-python"), stable_age=STABLE_AGE)
    with start_orthanc(free_ports()[0], workdir=tmp_path / "orthanc", screen_on_arrival=broken) as server:
        pacs = Pacs(server.dicomweb_url)
        study = seed(server.dicomweb_url, limit=1).studies[0]
        deadline = time.monotonic() + STABLE_AGE + WITHIN
        while "retry" not in server.log_tail(40) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "failed studies stay for `pacs screen` to retry" in server.log_tail(40)
        assert server.process.poll() is None and _srs(pacs, study) == []  # Orthanc runs on; nothing half-stored
        run = screen_studies(pacs, load_model(), [study], push=True)
        assert [r.status for r in run.results if r.status == SCREENED] == [SCREENED] and len(_srs(pacs, study)) == 1
