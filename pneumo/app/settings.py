"""Where the app may read data and models from: configured roots only, never a visitor's typed path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.core.paths import DATA_DIR, DEFAULT_MODEL_DIR, PROJECT_ROOT, RUNS_DIR, SAMPLES_DIR
from pneumo.core.predictions import read_predictions
from pneumo.data.collection import NPZ_SEPARATOR
from pneumo.training.runs import list_runs

ENV_DATA_ROOTS = "PNEUMO_DATA_ROOTS"
ENV_RUNS_DIR = "PNEUMO_RUNS_DIR"
ENV_MODELS_DIR = "PNEUMO_MODELS_DIR"
ENV_ALLOW_CHANGES = "PNEUMO_ALLOW_CHANGES"
ENV_CACHE_DIR = "PNEUMO_CACHE_DIR"
ENV_SESSION_UPLOAD_MB = "PNEUMO_SESSION_UPLOAD_MB"
ENV_SERVER_UPLOAD_MB = "PNEUMO_SERVER_UPLOAD_MB"
# Upload bytes held at once (pneumo.app.sessions.enforce_upload_budgets): a session's batch of 10 films at the
# 50 MB per-file limit, or hundreds of ordinary 1-2 MB JPEGs; the server's, four such sessions. Uploads
# cost about twice their size resident while they are read, so 2 GB of uploads is about 4 GB of memory.
DEFAULT_SESSION_UPLOAD_BYTES = 512 * 2**20
DEFAULT_SERVER_UPLOAD_BYTES = 2 * 2**30
# Roles of signed-in users (pneumo.app.auth), lowest first: each may do what the ones before it may. A reader reads
# films and gives verdicts; an analyst also explores collections, trains and tunes thresholds; an admin also applies
# operating points and manages the records database.
READER, ANALYST, ADMIN = "reader", "analyst", "admin"
ROLES = (READER, ANALYST, ADMIN)
NO_ROLE = "none"  # `default = "none"` in [pneumo.roles]: an account nobody listed is refused
# Decoded image statistics by folder content (pneumo.data.collection.inspect_images): the app's folder views
# read a large collection once, not on every visit or restart.
CACHE_DIR = Path(os.environ.get(ENV_CACHE_DIR) or PROJECT_ROOT / ".cache").expanduser()


def _megabytes(value: Any, default: int, name: str) -> int:
    """A budget given in MiB (PNEUMO_…_MB, or the secrets section's …_mb) as bytes; unset, the default. A
    value that is not a positive number is refused by name: a typo must not lift or zero a budget silently."""
    if value is None or str(value).strip() == "":
        return default
    try:
        mib = float(value)
    except (TypeError, ValueError):
        mib = float("nan")
    if not mib > 0 or mib == float("inf"):
        raise ValueError(f"{name} must be a positive number of MiB, not {value!r}")
    return int(mib * 2**20)


def parse_roles(section: Any) -> tuple[dict[str, str], str | None]:
    """`[pneumo.roles]` as (account -> role, the role of a signed-in account nobody listed).

    Each role lists accounts: `admin = ["alice@example.org"]`, `analyst = [...]`, `reader = [...]` (e-mail addresses,
    compared without regard to case; for a provider that gives no e-mail, the account's subject id). An account
    listed under several roles has the highest. `default = "reader"` (the default) is the role of everyone else who
    signs in; `default = "none"` refuses them. An unknown role, a non-text entry or an empty one is refused by name:
    a typo must neither grant nor withdraw access silently.
    """
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ValueError(f"[pneumo.roles] must be a table of roles, not {section!r}")
    accounts: dict[str, str] = {}
    default: str | None = READER
    for key, value in section.items():
        if key == "default":
            name = str(value).strip().lower()
            if name not in (*ROLES, NO_ROLE):
                raise ValueError(f"[pneumo.roles] default must be one of {', '.join((*ROLES, NO_ROLE))}, not {value!r}")
            default = None if name == NO_ROLE else name
            continue
        if key not in ROLES:
            raise ValueError(f"[pneumo.roles] has an unknown role {key!r} (roles: {', '.join(ROLES)}; and default)")
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, (list, tuple)):
            raise ValueError(f"[pneumo.roles] {key} must be a list of accounts, not {value!r}")
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                raise ValueError(f"[pneumo.roles] {key} lists {entry!r}: an account is a non-empty e-mail address")
            account = entry.strip().lower()
            if account not in accounts or ROLES.index(key) > ROLES.index(accounts[account]):
                accounts[account] = key
    return accounts, default


@dataclass
class AppSettings:
    """The folders the dashboard offers; built from defaults, secrets and the environment."""

    data_roots: list[Path] = field(default_factory=list)
    runs_dir: Path = RUNS_DIR
    models_dir: Path = DEFAULT_MODEL_DIR
    # Saving an operating point and starting training change what every visitor sees and uses the shared
    # machine: off unless the deployment turns them on (make run does, for a local single-user app).
    allow_changes: bool = False
    max_concurrent_runs: int = 1
    # Upload budgets in bytes: past them the oldest uploads are released (see DEFAULT_SESSION_UPLOAD_BYTES).
    session_upload_bytes: int = DEFAULT_SESSION_UPLOAD_BYTES
    server_upload_bytes: int = DEFAULT_SERVER_UPLOAD_BYTES
    # Sign-in (pneumo.app.auth): on when the secrets have an [auth] section (Streamlit's OpenID Connect settings).
    # Then every visitor signs in, and the role of their account (roles: account -> role, from [pneumo.roles]; an
    # account nobody listed has default_role, None: refused) says what they may do, within allow_changes.
    sign_in: bool = False
    roles: dict[str, str] = field(default_factory=dict)
    default_role: str | None = READER

    @classmethod
    def load(cls, secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> AppSettings:
        environ = os.environ if environ is None else environ
        section = dict((secrets or {}).get("pneumo", {}) or {})
        roots: list[Path] = [SAMPLES_DIR]
        roots += [c for c in sorted(DATA_DIR.iterdir()) if c.is_dir() and c != SAMPLES_DIR] if DATA_DIR.is_dir() else []
        shared = PROJECT_ROOT.parent / "shared" / "data" / "chest_xray"
        if shared.is_dir():
            roots.append(shared / "train" if (shared / "train").is_dir() else shared)
        roots += [Path(p).expanduser() for p in section.get("data_roots", [])]
        roots += [Path(p).expanduser() for p in environ.get(ENV_DATA_ROOTS, "").split(os.pathsep) if p]
        unique: list[Path] = []
        for root in roots:
            if root not in unique:
                unique.append(root)
        runs_dir = Path(environ.get(ENV_RUNS_DIR) or section.get("runs_dir") or RUNS_DIR).expanduser()
        models_dir = Path(environ.get(ENV_MODELS_DIR) or DEFAULT_MODEL_DIR).expanduser()
        allow = str(environ.get(ENV_ALLOW_CHANGES, section.get("allow_changes", False))).strip().lower()
        max_runs = int(section.get("max_concurrent_runs", 1))
        auth = (secrets or {}).get("auth")
        roles, default_role = parse_roles(section.get("roles"))
        return cls(
            data_roots=unique,
            runs_dir=runs_dir,
            models_dir=models_dir,
            allow_changes=allow in ("1", "true", "yes", "on"),
            max_concurrent_runs=max(1, max_runs),
            session_upload_bytes=_megabytes(
                environ.get(ENV_SESSION_UPLOAD_MB) or section.get("session_upload_mb"),
                DEFAULT_SESSION_UPLOAD_BYTES,
                ENV_SESSION_UPLOAD_MB,
            ),
            server_upload_bytes=_megabytes(
                environ.get(ENV_SERVER_UPLOAD_MB) or section.get("server_upload_mb"),
                DEFAULT_SERVER_UPLOAD_BYTES,
                ENV_SERVER_UPLOAD_MB,
            ),
            sign_in=isinstance(auth, Mapping) and bool(auth),
            roles=roles,
            default_role=default_role,
        )

    def model_choices(self) -> dict[str, Path]:
        """Label → model path: the shipped default, then every run that has a model, newest first."""
        choices: dict[str, Path] = {}
        default = self.models_dir / "model.keras"
        if default.exists():
            choices["Default (shipped) model"] = default
        for run in list_runs(self.runs_dir):
            if run.has_model and run.state in ("finished", "stopped"):
                # The kept model's own AUC: a run that keeps its last epoch serves that epoch, not its best.
                auc = f", val AUC {run.kept_val_auc:.3f}" if run.kept_val_auc is not None else ""
                choices[f"Run {run.name} ({run.state}{auc})"] = run.path / "model.keras"
        return choices

    def is_allowed_model(self, path: Path) -> bool:
        """Models load only from models/ and the runs folder."""
        resolved = Path(path).resolve()
        return any(resolved.is_relative_to(root.resolve()) for root in (self.models_dir, self.runs_dir))

    def allowed_roots(self) -> list[Path]:
        """Every folder a page may open a file under, resolved: the data roots, models/ and the runs folder."""
        roots = []
        for root in [*self.data_roots, self.models_dir, self.runs_dir]:
            try:
                roots.append(Path(root).resolve())
            except (OSError, RuntimeError):  # a symlink loop in a configured root: that root offers nothing
                continue
        return roots

    def resolve_inside_roots(
        self, path: str | Path, base: Path = PROJECT_ROOT, roots: list[Path] | None = None
    ) -> Path | None:
        """path resolved (relative to base, symlinks followed), or None when it lies outside every allowed root.

        Only names are resolved (lstat and readlink): nothing is opened, so a refused path reveals nothing,
        not even whether it exists. A MedMNIST item (FILE.npz::split::i) is judged by its file.
        """
        text = str(path)
        if NPZ_SEPARATOR in text:
            file, _, item = text.partition(NPZ_SEPARATOR)
            inside = self.resolve_inside_roots(file, base, roots)
            return None if inside is None else Path(f"{inside}{NPZ_SEPARATOR}{item}")
        if not text or "\0" in text:
            return None
        candidate = Path(text)
        candidate = candidate if candidate.is_absolute() else Path(base) / candidate
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        roots = self.allowed_roots() if roots is None else roots
        return resolved if any(resolved.is_relative_to(root) for root in roots) else None

    def keep_inside_roots(self, frame: Any, base: Path = PROJECT_ROOT) -> tuple[Any, int]:
        """(the rows of a predictions frame whose path lies inside the allowed roots, how many were refused).

        Kept rows carry their resolved path, so whoever opens them opens exactly what was checked; refused
        rows are dropped unopened. Figures computed from probabilities need no file and may use every row;
        galleries and anything that opens a film use the kept rows only.
        """
        roots = self.allowed_roots()
        resolved = [self.resolve_inside_roots(p, base, roots) for p in frame["path"]]
        keep = [r is not None for r in resolved]
        kept = frame[keep].copy()
        kept["path"] = [str(r) for r in resolved if r is not None]
        return kept, len(frame) - int(sum(keep))

    def stored_predictions(self, path: str | Path) -> tuple[Any, Any, int]:
        """A model's val_predictions.csv as (every validated row, the rows a page may open, refused count).

        PredictionsError (a ValueError) names the file and the first bad row when the file cannot be used.
        """
        frame = read_predictions(path)
        kept, refused = self.keep_inside_roots(frame)
        return frame, kept, refused
