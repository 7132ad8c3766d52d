"""A screening SR proves it is ours: an HMAC over what it says, keyed by a secret of the deployment.

Anyone who can store into a study can write an SR with Manufacturer "pneumo" and a reading of their choosing.
An earlier reading is only believed ("already screened") when its seal checks out under this deployment's key and
its card hash is the card in force; any other SR is named in the result and the film is read again.

The key: PNEUMO_PACS_SECRET, or `secret` in the secrets file's [pneumo.pacs] section; without either, a random key
made once for this machine's runs folder (`.pacs-seal-key`, readable by its owner only), so a single-machine set-up
resumes its own runs and trusts nobody else's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pneumo.core.paths import RUNS_DIR

ENV_SECRET = "PNEUMO_PACS_SECRET"
KEY_FILE = ".pacs-seal-key"


def seal_key(secret: str | None = None, folder: Path | None = None) -> bytes:
    """The deployment's key: the configured secret, or this machine's own key file (made once, atomically).

    A key file that is missing, short or damaged is never used as it is: a new one is made beside it when the
    folder is writable; otherwise this process gets a key of its own, so it trusts no earlier SR (each film is read
    again) rather than trusting with a key others could guess."""
    chosen = secret or os.environ.get(ENV_SECRET)
    if chosen:
        return chosen.encode()
    folder = folder or Path(os.environ.get("PNEUMO_RUNS_DIR") or RUNS_DIR)
    path = folder / KEY_FILE
    for _ in range(2):
        key = _read_key(path)
        if key is not None:
            return key
        try:
            _write_key(path)
        except FileExistsError:
            continue  # another process made it first: read theirs
        except OSError:
            break
    return _PROCESS_KEY


_PROCESS_KEY = secrets.token_bytes(32)
MIN_KEY_BYTES = 16


def _read_key(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return key if len(key) >= MIN_KEY_BYTES else None


def _write_key(path: Path) -> None:
    """A new key, written whole before it appears under its name (a reader never sees half of one); a damaged
    file in its place is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_bytes(32).hex())
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists() and _read_key(path) is None:
            path.unlink()  # damaged: an empty or cut key must not stand
        os.link(tmp, path)  # fails if another process linked its key first
    finally:
        tmp.unlink(missing_ok=True)


def _message(fields: Mapping[str, Any]) -> bytes:
    return json.dumps({k: fields[k] for k in sorted(fields)}, sort_keys=True, default=repr).encode()


def seal(key: bytes, fields: Mapping[str, Any]) -> str:
    """The seal of a reading's fields (source film, model, version, operating point, threshold, probability,
    decision, card hash)."""
    return hmac.new(key, _message(fields), hashlib.sha256).hexdigest()


def verify(key: bytes, fields: Mapping[str, Any], claimed: str) -> bool:
    """Whether `claimed` is the seal of these fields. Text from a server: anything but 64 hex digits is no seal,
    and the comparison runs on bytes in constant time."""
    if not isinstance(claimed, str) or len(claimed) != 64 or any(c not in "0123456789abcdef" for c in claimed):
        return False
    return hmac.compare_digest(seal(key, fields).encode(), claimed.encode())
