"""The DICOMweb server: QIDO-RS search, WADO-RS retrieve and STOW-RS store through one authenticated session, with
store failures read from the server's answer.

Every request is bounded, because the server is not ours to trust: a deadline for the whole request (connecting,
sending, every byte of the answer and any retries; a watchdog shuts the socket when it passes, so a server sending
one byte a second cannot hold a run), a few retries only for what a busy server answers (429, 5xx) and broken
connections, answers read as they arrive and refused past a size (a search's `limit` enforced here as well), UIDs
checked against the DICOM UID grammar before they go into a URL, and redirects followed only within the server's
own origin (never carrying the deployment's credentials or a store to another host).
"""

from __future__ import annotations

import codecs
import functools
import json
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from pneumo.core.text import terminal_safe
from pneumo.integrations.pacs.config import DEFAULT_TIMEOUT, PacsConfig, PacsError, _reason, redact
from pneumo.integrations.pacs.dicomjson import _value

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_JSON = "application/dicom+json, application/json"

# PS3.5 9.1: components of digits without leading zeros, separated by dots, at most 64 characters. Checked before
# a UID goes into a path: "1.2.3/../../tools/execute-script" would otherwise reach another endpoint of the server
# with the deployment's credentials.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64

# Retries: only what another try may cure (a busy server's 429 and 5xx, a connection that failed or broke off),
# at most MAX_ATTEMPTS tries with waits doubling from RETRY_WAIT up to MAX_RETRY_WAIT, all inside the deadline.
MAX_ATTEMPTS = 3
RETRY_WAIT = 0.25
MAX_RETRY_WAIT = 2.0
MAX_REDIRECTS = 5

# What an answer may hold. A search keeps at most its limit (the server may ignore it), and at most
# MAX_SEARCH_RESULTS without one; a study's metadata at most MAX_STUDY_INSTANCES instances (a chest film study has
# a handful); an instance at most MAX_INSTANCE_BYTES (a 43 cm detector at 70 µm, 16 bits: ~75 MB).
MAX_SEARCH_RESULTS = 5000
MAX_SEARCH_BYTES = 64 * 2**20
MAX_STUDY_INSTANCES = 2000
MAX_METADATA_BYTES = 64 * 2**20
MAX_INSTANCE_BYTES = 128 * 2**20
MAX_ANSWER_BYTES = 4 * 2**20  # a store's answer, an instance search
MAX_ERROR_BYTES = 64 * 2**10  # of an error's body, for its first words
CHUNK_BYTES = 64 * 2**10

SHOWN_UID = 80  # characters of a refused UID shown in a message

T = TypeVar("T")


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


def _shown(uid: Any) -> str:
    return terminal_safe(uid, SHOWN_UID)


def _origin(url: str) -> tuple[str, str, int | None]:
    """scheme, host and port (the scheme's default made explicit): what a redirect must keep."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1  # no origin of ours has an unreadable port
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


# --- the whole-request deadline ------------------------------------------------------------------------------------


class _Deadline:
    """One request's end in time. A timer shuts down every socket the request uses when it passes: a read blocked on
    a server that trickles its headers or body then returns at once (requests' own timeout is per read, which a
    byte every few seconds never trips)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = self._closed = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    @property
    def fired(self) -> bool:
        """Whether the watchdog has shut the request's sockets."""
        return self._fired

    @property
    def expired(self) -> bool:
        return self._fired or self.remaining() <= 0

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                return
            if not self._fired:
                self._sockets.append(sock)
                return
        _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._fired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sockets = []
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop its TLS state under
        # the thread still reading from it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError, ValueError):
        pass  # already closed


_current = threading.local()  # the deadline of the request this thread is making


def _watch(sock: Any) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.watch(sock)


@functools.cache
def _adapter_class() -> type:
    """A requests adapter whose connections hand their sockets to the deadline of the request in this thread
    (new connections as they open, kept-alive ones as they are reused). Built on first use: requests and urllib3
    stay out of the CLI's and the dashboard's start."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class WatchedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _watch(sock)
            return sock

        def request(self, *args: Any, **kwargs: Any) -> None:
            _watch(self.sock)
            super().request(*args, **kwargs)

    class WatchedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _watch(sock)  # before the TLS handshake, which the deadline covers too
            return sock

        def request(self, *args: Any, **kwargs: Any) -> None:
            _watch(self.sock)
            super().request(*args, **kwargs)

    class WatchedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    pools = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}

    class DeadlineAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kwargs)
            if hasattr(manager, "pool_classes_by_scheme") and not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return DeadlineAdapter


# --- reading an answer as it arrives ---------------------------------------------------------------------------------


class _TooLarge(Exception):
    def __init__(self, cap: int, declared: int | None = None):
        super().__init__(cap)
        self.cap, self.declared = cap, declared


class _Expired(Exception):
    pass


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def _chunks(response: Any, deadline: _Deadline, cap: int) -> Iterator[bytes]:
    """The answer's body chunk by chunk: refused when its declared length is over cap (before reading any of it)
    or once more than cap bytes arrived, and stopped when the deadline passes."""
    declared = response.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > cap:
        raise _TooLarge(cap, int(declared))
    got = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        got += len(chunk)
        if got > cap:
            raise _TooLarge(cap)
        if deadline.expired:
            raise _Expired()
        yield chunk


def _read_bytes(response: Any, deadline: _Deadline, cap: int) -> bytes:
    return b"".join(_chunks(response, deadline, cap))


def json_items(chunks: Iterator[bytes], max_items: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """The objects of a JSON array read as its bytes arrive, and whether more followed: reading stops after
    max_items, so a server that ignores a search's limit is cut off here rather than read to its end.

    ValueError when the answer is not an array of objects (a DICOM JSON answer is one); RecursionError for
    nesting deeper than the parser goes. An item is parsed again only once its unread part has doubled, so an
    item arriving in many chunks costs linear time."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    text, pos = "", 0
    items: list[dict[str, Any]] = []

    def more() -> bool:
        nonlocal text, pos
        chunk = next(chunks, None)
        if pos > 2**20:  # drop what is parsed
            text, pos = text[pos:], 0
        text += utf8.decode(chunk or b"", final=chunk is None)
        return chunk is not None

    def next_char() -> str | None:
        nonlocal pos
        while True:
            while pos < len(text) and text[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(text):
                return text[pos]
            if not more():
                return None

    if next_char() != "[":
        raise ValueError("the answer is not a JSON array")
    pos += 1
    while True:
        found = next_char()
        if found == "]":
            return items, False
        if items:
            if found != ",":
                raise ValueError(f"the JSON array is broken after item {len(items)}")
            pos += 1
            found = next_char()
        if found is None:
            raise ValueError("the answer ends inside its JSON array")
        if max_items is not None and len(items) >= max_items:
            return items, True
        while True:
            try:
                value, pos = decoder.raw_decode(text, pos)
                break
            except json.JSONDecodeError:
                unread = len(text) - pos
                ended = False
                while len(text) - pos < max(2 * unread, unread + CHUNK_BYTES):
                    if not more():
                        ended = True
                        break
                if ended and len(text) - pos == unread:
                    raise ValueError(f"item {len(items) + 1} of the JSON array is not valid JSON") from None
        if not isinstance(value, dict):
            raise ValueError(f"item {len(items) + 1} of the answer is not a DICOM JSON object ({type(value).__name__})")
        items.append(value)


class _Retry(Exception):
    """A failure another try may cure; error is what to report when none is left."""

    def __init__(self, error: PacsError):
        super().__init__(str(error))
        self.error = error


# --- the server -----------------------------------------------------------------------------------------------------


class Pacs:
    """A DICOMweb server: QIDO-RS, WADO-RS (metadata and instances) and STOW-RS over one requests session, every
    request bounded in time and size (see the module's docstring)."""

    def __init__(self, url: str, session: Any = None, timeout: float = DEFAULT_TIMEOUT, secret: str | None = None):
        import requests

        self.url = url.rstrip("/")
        self.display_url = redact(self.url)
        timeout = float(timeout)
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"PACS timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or _origin(self.url)[2] == -1:
            raise ValueError(f"not a DICOMweb URL (expected http(s)://host[:port]/path): {self.display_url}")
        if parts.query or parts.fragment:
            raise ValueError(f"not a DICOMweb URL (a query or fragment has no place in its root): {self.display_url}")
        self.origin = _origin(self.url)
        self.session = session if session is not None else requests.Session()
        adapter = _adapter_class()()
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, adapter)
        self.secret = secret  # seals the SRs this deployment writes; see pneumo.integrations.pacs.seal

    @classmethod
    def from_config(cls, config: PacsConfig) -> Pacs:
        return cls(config.url, session=config.session(), timeout=config.timeout, secret=config.secret)

    def _where(self, what: str, study: str | None) -> str:
        return f"PACS {self.display_url}: {what}" + (f" for study {_shown(study)}" if study else "")

    def _request(
        self,
        method: str,
        path: Sequence[str],
        what: str,
        study: str | None,
        read: Callable[[Any, _Deadline], T],
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> T:
        """One DICOMweb request under one deadline (self.timeout for all of it: tries, waits, redirects, the
        whole answer), its answer made into a result by read(response, deadline). Every failure is a PacsError of
        one line; fatal when the server cannot be reached at all or refuses our credentials."""
        where = self._where(what, study)
        rejected = what.startswith("storing")  # a store the server refuses "was rejected"; anything else "failed"
        url = "/".join([self.url, *path])
        deadline = _Deadline(self.timeout)
        outer, _current.deadline = getattr(_current, "deadline", None), deadline
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    return self._once(method, url, where, rejected, deadline, read, params, headers, body)
                except _Retry as again:
                    wait = min(RETRY_WAIT * 2 ** (attempt - 1), MAX_RETRY_WAIT)
                    if attempt == MAX_ATTEMPTS or deadline.remaining() <= wait:
                        raise again.error from None
                    time.sleep(wait)
            raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
        finally:
            _current.deadline = outer
            deadline.close()

    def _once(
        self,
        method: str,
        url: str,
        where: str,
        rejected: bool,
        deadline: _Deadline,
        read: Callable[[Any, _Deadline], T],
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> T:
        import requests

        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            left = max(deadline.remaining(), 0.001)
            try:
                # No redirect is followed by requests: each is checked here first (same origin only).
                response = self.session.request(
                    method,
                    current,
                    params=params if current == url else None,
                    headers=dict(headers or {}),
                    data=body,
                    stream=True,
                    allow_redirects=False,
                    timeout=(left, left),
                )
            except (requests.RequestException, OSError) as exc:
                raise self._broken(exc, where, deadline) from None
            try:
                status = response.status_code
                if response.is_redirect:
                    target = urljoin(current, response.headers.get("Location", ""))
                    if _origin(target) != self.origin:
                        scheme, host, port = _origin(target)
                        raise PacsError(
                            f"{where} failed: the server redirected to another origin "
                            f"({terminal_safe(f'{scheme}://{host}:{port}', 200)}); not followed"
                        )
                    if status in (301, 302, 303) and method != "GET":
                        method, body = "GET", None  # as browsers do: what was posted is not posted again
                    current = target
                    continue
                if status == 429 or status >= 500:
                    raise _Retry(self._http_error(response, where, rejected, deadline))
                if status >= 300:
                    raise self._http_error(response, where, rejected, deadline)
                result = read(response, deadline)
                if deadline.fired:  # the socket was shut under the answer: what was read may end anywhere
                    raise _Expired()
                return result
            except PacsError:  # an OSError too, but already the one line to report
                raise
            except (requests.RequestException, OSError) as exc:
                raise self._broken(exc, where, deadline) from None
            except _Expired:
                raise self._timed_out(where) from None
            except _TooLarge as big:
                declared = f" (it declares {_mib(big.declared)})" if big.declared else ""
                raise PacsError(
                    f"{where} failed: the answer is larger than {_mib(big.cap)}{declared}; not read further"
                ) from None
            except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, OverflowError) as exc:
                if deadline.fired:  # an answer cut off by the deadline is unreadable because it was cut
                    raise self._timed_out(where) from None
                raise PacsError(
                    f"{where} failed: the answer could not be read ({type(exc).__name__}: "
                    f"{terminal_safe(_reason(exc), 200)})"
                ) from None
            finally:
                response.close()
        raise PacsError(f"{where} failed: more than {MAX_REDIRECTS} redirects")

    def _timed_out(self, where: str) -> PacsError:
        # Fatal: a server that cannot answer one request in time answers the next no better.
        return PacsError(f"{where} failed: no answer within {self.timeout:g} s", fatal=True)

    def _broken(self, exc: BaseException, where: str, deadline: _Deadline) -> Exception:
        """A requests or socket error as the PacsError to raise, or a _Retry carrying it."""
        import requests
        from urllib3.exceptions import NewConnectionError

        if deadline.expired or isinstance(exc, requests.Timeout):
            return self._timed_out(where)
        if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)):
            # A certificate or a proxy that fails now fails every request: no retry, and the run stops.
            return PacsError(f"{where} failed: server unreachable ({terminal_safe(_reason(exc), 200)})", fatal=True)
        reason = exc.args[0] if exc.args else None
        if isinstance(getattr(reason, "reason", reason), NewConnectionError):
            # Nothing answers at that address: every later request fails alike, so the run stops.
            return _Retry(PacsError(f"{where} failed: server unreachable ({_reason(exc)})", fatal=True))
        if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, ConnectionError)):
            return _Retry(PacsError(f"{where} failed: the connection broke off ({terminal_safe(_reason(exc), 200)})"))
        return PacsError(f"{where} failed: {terminal_safe(_reason(exc), 200)}")

    def _http_error(self, response: Any, where: str, rejected: bool, deadline: _Deadline) -> PacsError:
        """An HTTP error status as one line: the status, and the failure reasons of a STOW answer or the first
        words of any other body (escaped: the body is the server's)."""
        try:
            content = b"".join(_cut(_chunks(response, deadline, 2**62), MAX_ERROR_BYTES))
        except Exception:  # the detail is a courtesy: the status says what failed
            content = b""
        status = response.status_code
        verb = "was rejected" if rejected else "failed"
        reason = terminal_safe(response.reason or "", 80)
        # Wrong credentials fail every later call too.
        return PacsError(
            f"{where} {verb}: HTTP {status} {reason}{_http_detail(content)}".rstrip(), fatal=status in (401, 403)
        )

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

        def read(response: Any, deadline: _Deadline) -> list[dict[str, Any]]:
            # A search past MAX_SEARCH_RESULTS keeps the first ones (the cap is far above a department's day).
            return json_items(_chunks(response, deadline, MAX_SEARCH_BYTES), keep)[0]

        return self._request(
            "GET", ["studies"], "searching studies", None, read, params=params, headers={"Accept": ACCEPT_JSON}
        )

    def study_metadata(self, study_uid: str) -> list[dict[str, Any]]:
        """WADO-RS metadata of every instance of the study (DICOM JSON objects); PacsError past
        MAX_STUDY_INSTANCES instances or MAX_METADATA_BYTES."""
        what = "reading the study's metadata"
        where = self._where(what, study_uid)
        uid = check_uid(study_uid, "study", where)

        def read(response: Any, deadline: _Deadline) -> list[dict[str, Any]]:
            items, more = json_items(_chunks(response, deadline, MAX_METADATA_BYTES), MAX_STUDY_INSTANCES)
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
        what = f"retrieving instance {_shown(sop_uid)}"
        where = self._where(what, study_uid)
        path = ["studies", check_uid(study_uid, "study", where)]
        path += ["series", check_uid(series_uid, "series", where)]
        path += ["instances", check_uid(sop_uid, "SOP instance", where)]

        def read(response: Any, deadline: _Deadline) -> bytes:
            # Read within the cap before parsing; the cap is looked up now, so a test can lower it.
            body = _read_bytes(response, deadline, MAX_INSTANCE_BYTES)
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

        def read_answer(response: Any, deadline: _Deadline) -> Any:
            from pydicom import Dataset

            content = _read_bytes(response, deadline, MAX_ANSWER_BYTES)
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
                f"{where} was rejected: {len(failed)} of {len(uids)} instance(s) refused ({_failure_reasons(failed)})"
            )

        def read_found(response: Any, deadline: _Deadline) -> list[dict[str, Any]]:
            return json_items(_chunks(response, deadline, MAX_ANSWER_BYTES), MAX_STUDY_INSTANCES)[0]

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


def _cut(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    got = 0
    for chunk in chunks:
        yield chunk[: limit - got]
        got += len(chunk)
        if got >= limit:
            return


def stow_body(datasets: Sequence[Any]) -> tuple[bytes, str]:
    """A STOW-RS request body (multipart/related of application/dicom parts) and its Content-Type."""
    import io

    import pydicom

    boundary = uuid.uuid4().hex
    parts = []
    for ds in datasets:
        with io.BytesIO() as out:
            pydicom.dcmwrite(out, ds)
            parts.append(b"\r\n--%s\r\nContent-Type: application/dicom\r\n\r\n%s" % (boundary.encode(), out.getvalue()))
    body = b"".join(parts) + b"\r\n--%s--" % boundary.encode()
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'


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


def _http_detail(content: bytes) -> str:
    """A STOW failure's DICOM JSON reduced to its failure reasons; other bodies to their first words, escaped."""
    if not content:
        return ""
    try:
        from pydicom import Dataset

        failed = list(getattr(Dataset.from_json(json.loads(content)), "FailedSOPSequence", None) or [])
        if failed:
            return f" ({_failure_reasons(failed)})"
    except Exception:  # not DICOM JSON: show the text
        pass
    return ": " + terminal_safe(" ".join(content.decode("utf-8", "replace").split()), 160)


def first_part(content_type: str, body: bytes) -> bytes:
    """The first body of a multipart/related answer (sliced once, not split: an instance may be large); a
    single-part application/dicom answer is itself."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        return body
    delimiter = b"--" + found.group(1).encode()
    start = body.find(delimiter)
    if start < 0 or body.startswith(b"--", start + len(delimiter)):
        return b""
    head_end = body.find(b"\r\n\r\n", start + len(delimiter))
    if head_end < 0:
        return b""
    begin = head_end + 4
    end = body.find(b"\r\n" + delimiter, begin)
    return body[begin : end if end >= 0 else len(body)]
