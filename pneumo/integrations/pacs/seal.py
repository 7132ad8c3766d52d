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
    """The deployment's key: the configured secret, or this machine's own key file (made on first use)."""
    chosen = secret or os.environ.get(ENV_SECRET)
    if chosen:
        return chosen.encode()
    folder = folder or Path(os.environ.get("PNEUMO_RUNS_DIR") or RUNS_DIR)
    path = folder / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


def _message(fields: Mapping[str, Any]) -> bytes:
    return json.dumps({k: fields[k] for k in sorted(fields)}, sort_keys=True, default=repr).encode()


def seal(key: bytes, fields: Mapping[str, Any]) -> str:
    """The seal of a reading's fields (source film, model, version, operating point, threshold, probability,
    decision, card hash)."""
    return hmac.new(key, _message(fields), hashlib.sha256).hexdigest()


def verify(key: bytes, fields: Mapping[str, Any], claimed: str) -> bool:
    return bool(claimed) and hmac.compare_digest(seal(key, fields), claimed)
