"""The HTTP transport to one DICOMweb server: every request bounded, because the server is not ours to trust.

A deadline for the whole request (connecting, sending, every byte of the answer and any retries; a watchdog shuts
the socket when it passes, so a server sending one byte a second cannot hold a run), a few retries only for what a
busy server answers (429, 5xx) and broken connections, answers read as they arrive and refused past a size, and
redirects followed only within the server's own origin (never carrying the deployment's credentials or a store to
another host). Every failure is one line (PacsError). What is asked of the server, and what its answers mean, is
pneumo.integrations.pacs.client's.
"""

from __future__ import annotations

import functools
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from pneumo.core.text import terminal_safe
from pneumo.integrations.pacs.config import DEFAULT_TIMEOUT, PacsError, _reason, redact

# Retries: only what another try may cure (a busy server's 429 and 5xx, a connection that failed or broke off),
# at most MAX_ATTEMPTS tries with waits doubling from RETRY_WAIT up to MAX_RETRY_WAIT, all inside the deadline.
MAX_ATTEMPTS = 3
RETRY_WAIT = 0.25
MAX_RETRY_WAIT = 2.0
MAX_REDIRECTS = 5

MAX_ERROR_BYTES = 64 * 2**10  # of an error's body, for its first words
CHUNK_BYTES = 64 * 2**10

SHOWN_UID = 80  # characters of a UID shown in a message

T = TypeVar("T")


def shown_uid(uid: Any) -> str:
    """A UID as a message shows it: escaped, and cut (it may be anything a server or a caller gave)."""
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


class Deadline:
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


# --- reading an answer as it arrives -------------------------------------------------------------------------------


class _TooLarge(Exception):
    def __init__(self, cap: int, declared: int | None = None):
        super().__init__(cap)
        self.cap, self.declared = cap, declared


class _Expired(Exception):
    pass


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def body_chunks(response: Any, deadline: Deadline, cap: int) -> Iterator[bytes]:
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


def read_body(response: Any, deadline: Deadline, cap: int) -> bytes:
    """The whole answer's body, within cap and the deadline (body_chunks)."""
    return b"".join(body_chunks(response, deadline, cap))


def _cut(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The chunks up to limit bytes in all, the last one cut; no more is read."""
    got = 0
    for chunk in chunks:
        yield chunk[: limit - got]
        got += len(chunk)
        if got >= limit:
            return


class _Retry(Exception):
    """A failure another try may cure; error is what to report when none is left."""

    def __init__(self, error: PacsError):
        super().__init__(str(error))
        self.error = error


# --- the requests --------------------------------------------------------------------------------------------------


class Transport:
    """Requests to one DICOMweb root over one requests session, each bounded in time and size (see the module's
    docstring). pneumo.integrations.pacs.client.Pacs asks its questions through it."""

    def __init__(self, url: str, session: Any = None, timeout: float = DEFAULT_TIMEOUT):
        """url: the DICOMweb root (http or https, no query); session: a requests.Session carrying the deployment's
        credentials (a new one without); timeout: seconds for each whole request. ValueError for either refused."""
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

    def _where(self, what: str, study: str | None) -> str:
        return f"PACS {self.display_url}: {what}" + (f" for study {shown_uid(study)}" if study else "")

    def _request(
        self,
        method: str,
        path: Sequence[str],
        what: str,
        study: str | None,
        read: Callable[[Any, Deadline], T],
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
        deadline = Deadline(self.timeout)
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
        deadline: Deadline,
        read: Callable[[Any, Deadline], T],
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

    def _broken(self, exc: BaseException, where: str, deadline: Deadline) -> Exception:
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

    def _http_error(self, response: Any, where: str, rejected: bool, deadline: Deadline) -> PacsError:
        """An HTTP error status as one line: the status, and what the body adds (_error_detail)."""
        try:
            content = b"".join(_cut(body_chunks(response, deadline, 2**62), MAX_ERROR_BYTES))
        except Exception:  # the detail is a courtesy: the status says what failed
            content = b""
        status = response.status_code
        verb = "was rejected" if rejected else "failed"
        reason = terminal_safe(response.reason or "", 80)
        # Wrong credentials fail every later call too.
        return PacsError(
            f"{where} {verb}: HTTP {status} {reason}{self._error_detail(content)}".rstrip(), fatal=status in (401, 403)
        )

    def _error_detail(self, content: bytes) -> str:
        """What an error's body adds to its status line: its first words, escaped (the body is the server's). A
        server that says more in its own format (a STOW answer's failure reasons) overrides this."""
        if not content:
            return ""
        return ": " + terminal_safe(" ".join(content.decode("utf-8", "replace").split()), 160)
