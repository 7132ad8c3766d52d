"""Training runs as directories: atomic files, status, metrics, launch and stop from any process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

STATUSES = ("queued", "running", "finished", "failed", "stopped")
ENDED = ("finished", "failed", "stopped")
STOP_FILE = "STOP"
LOCK_FILE = ".lock"
# A running run writes a heartbeat into status.json at least this often; silence for longer means it died
# somewhere its pid cannot be checked from here (another machine, another container).
HEARTBEAT_S = 15.0
HEARTBEAT_DEAD_S = 300.0
RUN_FILES = ("config.json", "status.json", "metrics.jsonl", "model.keras", "model.onnx", "gradcam.onnx", "card.json", "val_predictions.csv",
             "history.json", "checks.json", "data_summary.json", "train.log", "ood.npz", "image_hashes.json", STOP_FILE)


class RunFolderError(ValueError):
    """A run folder that training must not write into; the message says why and what to do."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder and rename: readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; run files are read by the app, possibly as another user
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    # One write() of a whole line: a concurrent reader sees complete lines or nothing of the new one.
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=_jsonable) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete line of metrics.jsonl; a half-written last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def epochs_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "epoch"]


def write_status(run_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Update status.json, keeping the fields already there."""
    if state not in STATUSES:
        raise ValueError(f"unknown status {state}")
    path = Path(run_dir) / "status.json"
    status = read_json(path, {}) or {}
    status.update(fields)
    status["state"] = state
    status["updated"] = now_iso()
    atomic_write_json(path, status)
    return status


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """status.json, with a run whose process vanished while running reported as failed."""
    path = Path(run_dir) / "status.json"
    status = read_json(path, {}) or {}
    if status.get("state") in ("queued", "running"):
        age = time.time() - path.stat().st_mtime
        # Give a freshly launched process a moment to write its own status first.
        if status.get("state") == "queued" and not status.get("pid") and age > 120:
            status["state"] = "failed"
            status["error"] = status.get("error") or "the training process never started; see train.log"
        elif status.get("pid") and not pid_alive(status["pid"]) and age > 5:
            status["state"] = "failed"
            status["error"] = status.get("error") or "the training process ended without reporting (killed or crashed); see train.log"
        elif status.get("state") == "running" and age > HEARTBEAT_DEAD_S:
            status["state"] = "failed"
            status["error"] = status.get("error") or f"no heartbeat for {age / 60:.0f} min: the training process stopped answering"
    return status


@contextmanager
def claim(run_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Hold run_dir for one training: refuse folders with other people's files or a live run, lock it
    against a second writer, and clear a stale STOP request.

    A folder prepared by launch() (status queued) is taken as it is; one holding an ended run of ours is
    replaced only with overwrite=True, and then only our own files are removed.
    """
    import fcntl

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is a file, not a folder; choose a new --out folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as lock:
        # The lock first: nothing is read or removed while another process may be writing here.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{run_dir}: another training is writing into this folder") from None
        _check_folder(run_dir, overwrite)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield run_dir
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class RunInfo:
    """One row of the runs table."""

    path: Path
    name: str
    state: str
    model: str
    best_val_auc: float | None
    epochs_done: int
    epochs: int | None
    duration_s: float | None
    started: str | None
    has_model: bool


def run_info(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    config = read_json(run_dir / "config.json", {}) or {}
    epochs = epochs_of(read_metrics(run_dir))
    aucs = [e["val_auc"] for e in epochs if e.get("val_auc") is not None]
    return RunInfo(
        path=run_dir,
        name=run_dir.name,
        state=status.get("state", "unknown"),
        model=str(config.get("model", "")),
        best_val_auc=max(aucs) if aucs else None,
        epochs_done=len(epochs),
        epochs=config.get("epochs"),
        duration_s=sum(e.get("seconds", 0.0) for e in epochs) if epochs else None,
        started=status.get("started"),
        has_model=(run_dir / "model.keras").exists(),
    )


def list_runs(runs_root: str | Path) -> list[RunInfo]:
    """Every run under runs_root (folders with a config.json), newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    runs = [run_info(d) for d in root.iterdir() if d.is_dir() and (d / "config.json").exists()]
    return sorted(runs, key=lambda r: (r.started or "", r.name), reverse=True)


def new_run_dir(runs_root: str | Path, model: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{stamp}-{model}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    path.mkdir(parents=True)
    return path


def _check_folder(run_dir: Path, overwrite: bool) -> None:
    present = [p.name for p in run_dir.iterdir() if p.name != LOCK_FILE]
    extra = sorted(n for n in present if n not in RUN_FILES and not n.startswith("."))
    if extra:
        raise RunFolderError(f"{run_dir}: not empty and not a pneumo run (holds {', '.join(extra[:5])}); "
                             "choose a new --out folder")
    state = read_status(run_dir).get("state") if "status.json" in present else None
    if state == "queued":
        return  # prepared by launch(): its config, and a Stop pressed before the process started, stay
    if state is None:
        if set(present) - {STOP_FILE}:
            raise RunFolderError(f"{run_dir}: holds {', '.join(sorted(present)[:5])} but no run status; "
                                 "choose a new --out folder")
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a request left from an earlier run is not for this one
        return
    if state not in ENDED:
        raise RunFolderError(f"{run_dir}: a run is in progress there ({state}); stop it first or choose a new folder")
    if not overwrite:
        raise RunFolderError(f"{run_dir}: holds a {state} run; pass --overwrite to replace it, or choose a new folder")
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def active_runs(runs_root: str | Path) -> list["RunInfo"]:
    return [r for r in list_runs(runs_root) if r.state in ("queued", "running")]


def launch(config: Any, runs_root: str | Path, python: str | None = None, max_concurrent: int = 1) -> Path:
    """Start `python -m pneumo train` for config in its own process group; returns the run folder.

    The process is detached (new session, own log), so closing the browser tab or restarting the
    app neither kills nor duplicates it. At most max_concurrent runs go at once: a further one is
    refused with the names of those running.
    """
    from dataclasses import asdict

    config.validate()
    busy = active_runs(runs_root)
    if len(busy) >= max_concurrent:
        raise RunFolderError(f"{', '.join(r.name for r in busy)} is still {busy[0].state}; "
                             f"at most {max_concurrent} training run(s) at a time: stop it or wait")
    run_dir = new_run_dir(runs_root, config.model)
    atomic_write_json(run_dir / "config.json", asdict(config))
    write_status(run_dir, "queued", created=now_iso())
    log = open(run_dir / "train.log", "ab")
    proc = subprocess.Popen(
        [python or sys.executable, "-m", "pneumo", "train", "--config", str(run_dir / "config.json"), "--out", str(run_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(Path(__file__).resolve().parent.parent),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    write_status(run_dir, "queued", pid=proc.pid)
    return run_dir


def request_stop(run_dir: str | Path) -> None:
    """Ask a run to stop at the next batch; it keeps the model it has so far (the best one with --keep best)."""
    atomic_write_text(Path(run_dir) / STOP_FILE, now_iso() + "\n")


def stop_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STOP_FILE).exists()


def kill(run_dir: str | Path) -> bool:
    """Terminate a run's process group (used when a clean stop is not enough)."""
    status = read_status(run_dir)
    pid = status.get("pid")
    if not pid_alive(pid):
        return False
    os.killpg(os.getpgid(int(pid)), signal.SIGTERM)
    return True


def log_tail(run_dir: str | Path, lines: int = 40) -> str:
    path = Path(run_dir) / "train.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
