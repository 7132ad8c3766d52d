"""The PACS client against a hostile DICOMweb server started here on 127.0.0.1 (no Orthanc): busy, malformed,
slow, oversized, redirecting and escape-laden answers, UIDs that would leave the DICOMweb root, and arguments
refused before any request. Every run ends with one line per failed study, the results of the others printed,
and exit 2; the command line runs in this process (the shipped model loaded once).
"""

from __future__ import annotations

import copy
import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from tests.conftest import synthetic_xray

pytestmark = pytest.mark.timeout(60)

ROOT = "/dicom-web"
Route = Callable[["_Handler"], None]


# --- the hostile server ----------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """One request: recorded, then answered by the first override whose pattern matches, else as a PACS would."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows what a test asserts
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.method = method
        self.server.seen.append((method, self.path))
        path = urlsplit(self.path).path
        try:
            for verb, pattern, route in self.server.overrides:
                if verb == method and re.fullmatch(pattern, path):
                    route(self)
                    return
            self.server.pacs.answer(self, method, path)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client hung up, as it should on an answer it refuses

    def send(self, status: int, body: bytes, content_type: str = "application/dicom+json", reason: str | None = None):
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, value: Any, status: int = 200) -> None:
        self.send(status, json.dumps(value).encode())

    def stream(self, chunks: Iterable[bytes], length: int | None = None, content_type: str = "application/dicom+json"):
        """An answer written chunk by chunk (chunked encoding without a length), counting what got out."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        for chunk in chunks:
            if self.server.closing.is_set():
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if length is None else chunk)
            self.server.sent += len(chunk)
        if length is None:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str]] = []
        self.overrides: list[tuple[str, str, Route]] = []
        self.pacs = _FakePacs()
        self.sent = 0  # body bytes written by stream()
        self.closing = threading.Event()
        self.errors: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.errors.append(repr(sys.exc_info()[1]))  # kept for a failing test to show, not printed into its output

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return self.origin + ROOT

    def on(self, method: str, pattern: str, route: Route) -> None:
        self.overrides.append((method, ROOT + pattern, route))


class _FakePacs:
    """What a well-behaved server holds: studies of DICOM datasets, answered as QIDO, metadata, WADO and STOW."""

    def __init__(self) -> None:
        self.studies: dict[str, list[Any]] = {}
        self.stored: list[str] = []  # SOP Instance UIDs received over STOW-RS

    def add(self, study: str, **fields: Any) -> Any:
        from pneumo.integrations.pacs_server import film_dataset

        index = len(self.studies) + 1
        pixels = (synthetic_xray(np.random.default_rng(index), 128) * 255).astype(np.uint8)
        ds = film_dataset(
            pixels,
            patient_id=f"P{index}",
            study_uid=study,
            series_uid=f"{study}.1",
            sop_uid=f"{study}.1.1",
            study_date="20240101",
            accession=f"A{index}",
            series_number=1,
            modality="CR",
            view_position="PA",
            source_name="synthetic",
            series_description="CHEST PA",
        )
        for keyword, value in fields.items():
            setattr(ds, keyword, value)
        self.studies.setdefault(study, []).append(ds)
        return ds

    def metadata(self, study: str) -> list[dict[str, Any]]:
        items = []
        for ds in self.studies.get(study, []):
            header = copy.deepcopy(ds)
            del header.PixelData
            items.append(header.to_json_dict())
        return items

    def answer(self, request: _Handler, method: str, path: str) -> None:
        parts = path[len(ROOT) :].strip("/").split("/")
        if method == "GET" and parts == ["studies"]:
            request.send_json([_study_entry(uid) for uid in self.studies])
        elif method == "GET" and len(parts) == 3 and parts[2] == "metadata":
            request.send_json(self.metadata(parts[1]))
        elif method == "GET" and len(parts) == 6 and parts[2] == "series":
            found = [ds for ds in self.studies.get(parts[1], []) if str(ds.SOPInstanceUID) == parts[5]]
            if not found:
                request.send(404, b"")
                return
            body, content_type = _multipart([_dicom(found[0])])
            request.send(200, body, content_type)
        elif method == "POST" and len(parts) == 2:
            for part in _parts(request.headers.get("Content-Type", ""), request.body):
                import pydicom

                ds = pydicom.dcmread(io.BytesIO(part), force=True)
                self.studies.setdefault(parts[1], []).append(ds)
                self.stored.append(str(ds.SOPInstanceUID))
            request.send_json({})
        elif method == "GET" and len(parts) == 3 and parts[2] == "instances":
            wanted = (parse_qs(urlsplit(request.path).query).get("SOPInstanceUID") or [""])[0].split(",")
            have = [str(ds.SOPInstanceUID) for ds in self.studies.get(parts[1], [])]
            request.send_json([{"00080018": {"vr": "UI", "Value": [uid]}} for uid in wanted if uid in have])
        else:
            request.send(404, b"")


def _study_entry(uid: str, date: str = "20240101") -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080061": {"vr": "CS", "Value": ["CR"]},
    }


def _dicom(ds: Any) -> bytes:
    import pydicom

    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = "hostile-boundary"
    body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p) for p in parts)
    return body + b"--%s--\r\n" % boundary.encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    found = []
    for chunk in body.split(b"--" + boundary.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, payload = chunk.partition(b"\r\n\r\n")
        found.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return found


@pytest.fixture
def server() -> Iterator[_Server]:
    yield from _running()


@pytest.fixture
def elsewhere() -> Iterator[_Server]:
    """A second server on another port: where a redirect to another origin would lead."""
    yield from _running()


def _running() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.closing.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# --- the command line, in this process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded() -> Any:
    from pneumo.model.loading import load_model

    return load_model()


@pytest.fixture(autouse=True)
def _deployment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No deployment settings leak in; the seal key is a test secret, never a key file in the runs folder."""
    for name in ("URL", "TOKEN", "USERNAME", "PASSWORD", "TIMEOUT", "CA_BUNDLE", "ALLOW_SEND"):
        monkeypatch.delenv(f"PNEUMO_PACS_{name}", raising=False)
    monkeypatch.setenv("PNEUMO_PACS_SECRET", "hostile-test-secret")
    monkeypatch.chdir(tmp_path)  # no .streamlit/secrets.toml of the working directory


class Ran:
    def __init__(self, code: int, out: str, err: str, seconds: float):
        self.code, self.out, self.err, self.seconds = code, out, err, seconds

    def entries(self) -> list[dict[str, Any]]:
        return json.loads(self.out)

    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], loaded: Any) -> Callable[..., Ran]:
    import pneumo.cli.pacs
    from pneumo.cli import main

    monkeypatch.setattr(pneumo.cli.pacs, "load_model", lambda path=None: loaded)

    def run(*args: str) -> Ran:
        capsys.readouterr()
        started = time.perf_counter()
        try:
            code = main(["pacs", *args])
        except SystemExit as exc:  # argparse's refusals
            code = int(exc.code or 0)
        seconds = time.perf_counter() - started
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err, seconds)

    return run


def _no_traceback(ran: Ran) -> None:
    assert "Traceback" not in ran.err and "Traceback" not in ran.out, ran.err


GOOD, BAD, OTHER = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"


# --- a busy server ----------------------------------------------------------------------------------------------


def test_busy_server_fails_each_study_in_one_line_and_prints_the_run(server: _Server, cli: Callable[..., Ran]) -> None:
    server.on("GET", ".*", lambda r: r.send(503, b"busy, try later", "text/plain"))
    ran = cli("screen", "--url", server.url, "--study", GOOD, "--study", BAD, "--json", "--timeout", "5")
    _no_traceback(ran)
    assert ran.code == 2
    entries = ran.entries()  # the run is printed: one failed entry per study, saying why
    assert [e["study"] for e in entries] == [GOOD, BAD] and all(e["status"] == "failed" for e in entries)
    assert all("HTTP 503" in e["error"] and e["study"] in e["error"] for e in entries)
    lines = ran.lines()
    assert len(lines) == 2 and all(line.startswith("error: ") and "503" in line for line in lines)
    # Retries are bounded (a few per request, backing off), and the whole run stays short.
    per_study = [sum(1 for _, path in server.seen if uid in path) for uid in (GOOD, BAD)]
    assert all(1 < n <= 3 for n in per_study), per_study
    assert ran.seconds < 8


def test_watch_backs_off_from_a_busy_server_and_says_so_each_poll(server: _Server, cli: Callable[..., Ran]) -> None:
    server.on("GET", ".*", lambda r: r.send(503, b"", "text/plain"))
    ran = cli("watch", "--url", server.url, "--interval", "0.05", "--max-polls", "3", "--json", "--timeout", "5")
    _no_traceback(ran)
    assert ran.code == 2 and ran.out == ""
    polls = [line for line in ran.lines() if line.startswith("poll ")]
    assert [p.split()[1].rstrip(":") for p in polls] == ["1", "2", "3"], ran.err
    assert all("503" in p for p in polls)
    waits = [float(m.group(1)) for p in polls for m in [re.search(r"next poll in ([0-9.]+) s", p)] if m]
    assert waits == [0.1, 0.2], polls  # doubled after each failed poll (the interval is 0.05 s)


def test_watch_backoff_is_exponential_and_capped() -> None:
    from pneumo.integrations.pacs import ScreenRun, backoff_delay, watch

    assert [backoff_delay(60.0, n) for n in range(5)] == [60.0, 120.0, 240.0, 480.0, 900.0]
    assert backoff_delay(0.5, 40) == 900.0 and backoff_delay(3600.0, 3) == 3600.0  # capped, never below the interval

    class Busy:
        display_url, secret = "http://busy/dw", "k"

        def search_studies(self, *args: Any, **kwargs: Any) -> Any:
            from pneumo.integrations.pacs import PacsError

            raise PacsError("PACS http://busy/dw: searching studies failed: HTTP 503 Service Unavailable")

    slept: list[float] = []
    runs: list[ScreenRun] = []
    lines: list[str] = []
    assert watch(
        Busy(), None, interval=10, max_polls=12, sleep=slept.append, on_poll=runs.append, progress=lines.append
    )  # type: ignore[arg-type]
    assert slept == [20, 40, 80, 160, 320, 640, 900, 900, 900, 900, 900]
    assert len(runs) == 12 and all("503" in (r.error or "") for r in runs) and len(lines) == 12


# --- malformed answers --------------------------------------------------------------------------------------------


def test_malformed_metadata_fails_that_study_only(server: _Server, cli: Callable[..., Ran]) -> None:
    server.pacs.add(GOOD)
    odd = {
        "1.2.3.1": b"[1,2,3]",
        "1.2.3.2": b'{"00080060": {"vr": "CS"}}',
        "1.2.3.3": b"[" * 100_000 + b"]" * 100_000,
        "1.2.3.4": b'[{"00080060": 5, "00080018": [1], "00080016": {"Value": "x"}}]',
        "1.2.3.5": b'[{"00080060": {"vr": "CS", "Value": [[[[["CR"]]]]]}}]',
        "1.2.3.6": b"[{",
    }
    for uid, body in odd.items():
        server.on("GET", f"/studies/{re.escape(uid)}/metadata", lambda r, body=body: r.send(200, body))
    ran = cli("screen", "--url", server.url, *[a for uid in odd for a in ("--study", uid)], "--study", GOOD, "--json")
    _no_traceback(ran)
    assert ran.code == 2
    entries = {e["study"]: e for e in ran.entries()}
    assert set(entries) == {*odd, GOOD}
    assert entries[GOOD]["status"] == "screened" and entries[GOOD]["probability"] is not None
    for uid in ("1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.6"):
        assert entries[uid]["status"] == "failed" and "could not be read" in entries[uid]["error"], entries[uid]
    for uid in ("1.2.3.4", "1.2.3.5"):  # odd elements read as absent: no CR or DX film in the study
        assert entries[uid]["status"] in ("failed", "skipped"), entries[uid]
    assert len(ran.lines()) == 4


def test_malformed_search_answer_is_one_line(server: _Server, cli: Callable[..., Ran]) -> None:
    for body in (b"[1,2,3]", b"[" * 100_000 + b"]" * 100_000, b'{"not": "a list"}'):
        server.overrides = [("GET", ROOT + "/studies", lambda r, body=body: r.send(200, body))]
        ran = cli("screen", "--url", server.url, "--since", "20240101", "--json")
        _no_traceback(ran)
        assert ran.code == 2 and ran.entries() == []
        (line,) = ran.lines()
        assert line.startswith("error: ") and server.url in line and "searching studies" in line, line


def test_one_bad_study_between_good_ones_keeps_the_others_and_their_stored_results(
    server: _Server, cli: Callable[..., Ran]
) -> None:
    server.pacs.add(GOOD)
    server.pacs.add(OTHER)
    server.on("GET", f"/studies/{re.escape(BAD)}/metadata", lambda r: r.send(200, b"[1,2,3]"))
    ran = cli("screen", "--url", server.url, "--study", GOOD, "--study", BAD, "--study", OTHER, "--push", "--json")
    _no_traceback(ran)
    assert ran.code == 2
    entries = ran.entries()
    assert [e["study"] for e in entries] == [GOOD, BAD, OTHER]
    assert [e["status"] for e in entries] == ["screened", "failed", "screened"]
    assert entries[0]["stored"]["sr"] in server.pacs.stored and entries[2]["stored"]["sr"] in server.pacs.stored
    (line,) = ran.lines()
    assert BAD in line and "could not be read" in line
    # Each store is an event of the audit trail (the session's database, tests/conftest.py), naming its study.
    from pneumo.integrations.records import iter_events, open_records

    stores = [e for e in iter_events(open_records()) if e["kind"] == "pacs_store" and server.url in e["object"]]
    assert sorted(e["object"].rsplit("/", 1)[1] for e in stores) == sorted([GOOD, OTHER])
    assert {e["details"]["sr"] for e in stores} == {entries[0]["stored"]["sr"], entries[2]["stored"]["sr"]}


# --- bounds: time and size -------------------------------------------------------------------------------------


def _trickle_body(request: _Handler) -> None:
    request.send_response(200)
    request.send_header("Content-Type", "application/dicom+json")
    request.send_header("Content-Length", "100")
    request.end_headers()
    request.wfile.write(b"[")
    request.wfile.flush()
    for _ in range(40):  # a byte every 0.4 s: each read is quick, the answer never complete
        if request.server.closing.wait(0.4):
            return
        request.wfile.write(b" ")
        request.wfile.flush()


def _trickle_headers(request: _Handler) -> None:
    request.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    request.wfile.flush()
    for _ in range(40):
        if request.server.closing.wait(0.4):
            return
        request.wfile.write(b"a")
        request.wfile.flush()


@pytest.mark.parametrize("trickle", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_a_trickling_server_is_cut_at_the_whole_request_deadline(
    server: _Server, cli: Callable[..., Ran], trickle: Route
) -> None:
    server.on("GET", r"/studies/[0-9.]+/metadata", trickle)
    ran = cli("screen", "--url", server.url, "--study", GOOD, "--study", OTHER, "--json", "--timeout", "2")
    _no_traceback(ran)
    assert ran.seconds < 6, ran.seconds  # 2 s for the request, not 2 s per byte read
    assert ran.code == 2
    (first,) = ran.entries()
    assert first["study"] == GOOD and "no answer within 2 s" in first["error"]
    line = ran.lines()[0]
    assert "no answer within 2 s" in line and "1 studies not reached" in line


def test_a_server_ignoring_limit_is_capped_on_our_side(server: _Server, cli: Callable[..., Ran]) -> None:
    count = 50_000
    entry = [json.dumps(_study_entry(f"1.2.840.99.{i}", "20240101")).encode() for i in range(count)]
    total = sum(len(e) + 1 for e in entry) + 1

    def everything(request: _Handler) -> None:  # whatever limit said
        request.stream([b"[" + entry[0], *(b"," + e for e in entry[1:]), b"]"])

    server.on("GET", "/studies", everything)
    ran = cli("screen", "--url", server.url, "--since", "20240101", "--limit", "3", "--json")
    _no_traceback(ran)
    assert ran.code == 0, ran.err
    assert len({e["study"] for e in ran.entries()}) == 3
    assert len([1 for method, path in server.seen if "/metadata" in path]) == 3
    # Two searches (CR, DX), each closed after its first three studies: far from everything offered.
    assert server.sent < total / 2, (server.sent, total)


def test_an_oversized_answer_is_refused_without_reading_it(
    server: _Server, cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumo.integrations.pacs import client

    size = 200 * 2**20
    declared = [b"[" + b" " * (2**20 - 1), *[b" " * 2**20] * 198, b" " * (2**20 - 1) + b"]"]
    server.on("GET", f"/studies/{re.escape(BAD)}/metadata", lambda r: r.stream(declared, length=size))
    server.pacs.add(GOOD)
    # An instance answer without a length, past a cap lowered for the test: read up to the cap, then refused.
    monkeypatch.setattr(client, "MAX_INSTANCE_BYTES", 2 * 2**20)  # read by retrieve_instance at each call
    endless = (b"\0" * 2**20 for _ in range(128))
    server.on(
        "GET", f"/studies/{re.escape(GOOD)}/series/.*", lambda r: r.stream(endless, content_type="application/dicom")
    )
    ran = cli("screen", "--url", server.url, "--study", BAD, "--study", GOOD, "--json")
    _no_traceback(ran)
    assert ran.code == 2
    bad, good = ran.entries()
    assert bad["study"] == BAD and "larger than" in bad["error"] and BAD in bad["error"]
    assert good["study"] == GOOD and "larger than" in good["error"] and GOOD in good["error"]
    assert server.sent < 48 * 2**20, server.sent  # not the 200 + 128 MiB offered; at most the socket buffers


# --- where requests may go ---------------------------------------------------------------------------------------


def test_uids_that_would_leave_the_dicomweb_root_are_refused_before_any_request(
    server: _Server, cli: Callable[..., Ran]
) -> None:
    server.pacs.add(GOOD, SOPInstanceUID="1.2.3/../../../../tools/execute-script")
    hostile = "1.2.3/../../../../tools/execute-script?x="
    ran = cli("screen", "--url", server.url, "--study", hostile, "--study", "1.2.3", "--study", GOOD, "--json")
    _no_traceback(ran)
    assert ran.code == 2
    entries = {e["study"]: e for e in ran.entries()}
    assert "not a DICOM UID" in entries[hostile]["error"]
    assert "not a DICOM UID" in entries[GOOD]["error"]  # the instance's UID from the metadata, likewise
    assert not [path for _, path in server.seen if "tools" in path or ".." in path or "%2F" in path], server.seen
    assert [m for m, p in server.seen if p.startswith(f"{ROOT}/studies/1.2.3/metadata")] == ["GET"]


SAME = "1.2.826.0.1.3680043.8.498.4"


def test_redirects_to_another_origin_are_refused(server: _Server, elsewhere: _Server, cli: Callable[..., Ran]) -> None:
    def away(request: _Handler) -> None:
        request.send_response(307)
        request.send_header("Location", elsewhere.origin + request.path)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def within(request: _Handler) -> None:  # a redirect within the server's own origin is followed
        if "relocated" in request.path:
            server.pacs.answer(request, "GET", urlsplit(request.path).path)
            return
        request.send_response(302)
        request.send_header("Location", request.path + "?relocated=1")
        request.send_header("Content-Length", "0")
        request.end_headers()

    server.on("GET", f"/studies/{re.escape(BAD)}/metadata", away)
    server.on("POST", f"/studies/{re.escape(GOOD)}", away)
    server.on("GET", f"/studies/{re.escape(SAME)}/metadata", within)
    server.pacs.add(GOOD)
    server.pacs.add(SAME)
    ran = cli("screen", "--url", server.url, "--study", BAD, "--study", GOOD, "--study", SAME, "--push", "--json")
    _no_traceback(ran)
    assert ran.code == 2
    assert elsewhere.seen == []  # neither the search nor the store (with its body and credentials) went there
    bad, good, same = ran.entries()
    assert "redirect" in bad["error"] and elsewhere.origin in bad["error"] and BAD in bad["error"]
    # The reading is kept; only the store, redirected away, failed.
    assert good["status"] == "failed" and good["probability"] is not None and not good["stored"]
    assert "redirect" in good["error"] and GOOD in good["error"]
    assert same["status"] == "screened" and set(server.pacs.stored) == set(same["stored"].values())


# --- what reaches the terminal -----------------------------------------------------------------------------------


def test_escape_sequences_from_the_server_are_shown_escaped(server: _Server, cli: Callable[..., Ran]) -> None:
    forged = "\x1b[2J\x1b[H\r\nstudy 1.2.3.9: NORMAL  p=0.0100"
    server.pacs.add(GOOD, ViewPosition="\x1b[2J\x9b31m")
    server.on("GET", f"/studies/{re.escape(BAD)}/metadata", lambda r: r.send(404, forged.encode(), "text/plain"))
    ran = cli("screen", "--url", server.url, "--study", GOOD, "--study", BAD)
    _no_traceback(ran)
    assert ran.code == 2
    shown = ran.out + ran.err
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", shown), repr(shown)
    assert "\\x1b[2J" in shown and "\\x9b31" in ran.out
    assert not [line for line in shown.splitlines() if line.startswith("study 1.2.3.9")]


# --- arguments refused before any request --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["screen", "--timeout", "0"],
        ["screen", "--timeout", "-1"],
        ["screen", "--timeout", "nan"],
        ["screen", "--timeout", "inf"],
        ["screen", "--limit", "0"],
        ["screen", "--limit", "-3"],
        ["watch", "--interval", "-1"],
        ["watch", "--interval", "0"],
        ["watch", "--interval", "nan"],
    ],
    ids=lambda a: " ".join(a),
)
def test_arguments_are_refused_before_any_request(server: _Server, cli: Callable[..., Ran], args: list[str]) -> None:
    command, flag, value = args
    extra = ["--max-polls", "1"] if command == "watch" else ["--json"]
    ran = cli(command, "--url", server.url, "--since", "20240101", *extra, flag, value)
    assert ran.code == 2
    assert f"argument {flag}" in ran.err and "must be" in ran.err, ran.err
    assert server.seen == []
