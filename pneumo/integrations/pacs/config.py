"""Where the PACS is and how to reach it: the deployment's DICOMweb settings (environment first, then the secrets
file), errors that name the server and never its credentials.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pneumo.core.paths import PROJECT_ROOT

ENV_URL = "PNEUMO_PACS_URL"
ENV_TOKEN = "PNEUMO_PACS_TOKEN"
ENV_USERNAME = "PNEUMO_PACS_USERNAME"
ENV_PASSWORD = "PNEUMO_PACS_PASSWORD"
ENV_TIMEOUT = "PNEUMO_PACS_TIMEOUT"
ENV_CA_BUNDLE = "PNEUMO_PACS_CA_BUNDLE"
ENV_SHOW_IDENTIFIERS = "PNEUMO_PACS_SHOW_IDENTIFIERS"
ENV_ALLOW_SEND = "PNEUMO_PACS_ALLOW_SEND"
ENV_SECRET = "PNEUMO_PACS_SECRET"
DEFAULT_TIMEOUT = 30.0


# --- errors and configuration ------------------------------------------------------------------------------

MANUFACTURER = "pneumo"
# Concepts without a standard code get codes of this local scheme (PS3.16 8.2: "99" + name).
SCHEME = "99PNEUMO"


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
    secret: str | None = field(default=None, repr=False)  # the key that seals our SRs (pneumo.integrations.pacs.seal)

    def may_send(self, allow_changes: bool) -> bool:
        """Whether the app may store results: allow_send when the deployment set it, else allow_changes
        (a shared deployment, where changes are off, does not write into a PACS by default)."""
        return bool(allow_changes) if self.allow_send is None else bool(self.allow_send)

    @classmethod
    def load(
        cls, secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, url: str | None = None
    ) -> PacsConfig | None:
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
        return cls(
            url=str(chosen).rstrip("/"),
            token=pick(ENV_TOKEN, "token") or None,
            username=pick(ENV_USERNAME, "username") or None,
            password=pick(ENV_PASSWORD, "password") or None,
            timeout=timeout_s,
            ca_bundle=pick(ENV_CA_BUNDLE, "ca_bundle") or None,
            show_identifiers=_truthy(pick(ENV_SHOW_IDENTIFIERS, "show_identifiers") or False),
            allow_send=None if send in (None, "") else _truthy(send),
            secret=pick(ENV_SECRET, "secret") or None,
        )

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


def load_secrets_file(paths: Sequence[str] | None = None) -> dict[str, Any]:
    """`.streamlit/secrets.toml` (the working directory's, else the project's) for the CLI, which runs
    outside Streamlit; {} when there is none or tomllib is missing (Python 3.10)."""
    try:
        import tomllib
    except ImportError:
        return {}
    candidates = paths or [
        os.path.join(".streamlit", "secrets.toml"),
        str(PROJECT_ROOT / ".streamlit" / "secrets.toml"),
    ]
    for candidate in candidates:
        if os.path.isfile(candidate):
            try:
                with open(candidate, "rb") as handle:
                    return tomllib.load(handle)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"{candidate}: cannot be read as TOML ({exc})") from None
    return {}
