"""Training runs as directories: atomic files, status, metrics, launch and stop from any process.

Everything here that reads a run folder treats it as untrusted input: a run folder may be damaged by a
crash, a full disk, a careless edit or a visitor's upload to a shared machine. A bad file marks its own
run as damaged, with the reason, and never stops the other runs from being listed, shown or used."""

from __future__ import annotations

import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pneumo.core.files import (
    RunDataError,
    _is_number,
    atomic_write_json,
    atomic_write_text,
    load_json,
    now_iso,
    read_json,
    read_json_object,
)
from pneumo.core.paths import PROJECT_ROOT
from pneumo.training.metrics_log import epochs_of, read_metrics
from pneumo.training.processes import cmdline, is_training_process, pid_alive

# pandas is imported where used: only one reader needs it, and the CLI imports this module at start.

STATUSES = ("queued", "running", "finished", "failed", "stopped")
ENDED = ("finished", "failed", "stopped")
DAMAGED = "damaged"  # read-only state: status.json could not be used; RunInfo.damaged says why
STOP_FILE = "STOP"
LOCK_FILE = ".lock"
PROBE_FILE = "onnx_probe.json"  # pneumo.model.serving.PROBE_NAME: the record a served ONNX graph is checked against
# A running run writes a heartbeat into status.json at least this often; silence for longer means it died
# somewhere its pid cannot be checked from here (another machine, another container).
HEARTBEAT_S = 15.0
HEARTBEAT_DEAD_S = 300.0
RUN_FILES = (
    "config.json",
    "status.json",
    "metrics.jsonl",
    "model.keras",
    "model.onnx",
    "gradcam.onnx",
    PROBE_FILE,
    "card.json",
    "val_predictions.csv",
    "history.json",
    "checks.json",
    "oof_predictions.csv",
    "drift_reference.npz",
    "data_summary.json",
    "train.log",
    "ood.npz",
    "image_hashes.json",
    STOP_FILE,
)
# Bounds on what one render reads from a run folder. A normal run writes well under 1 MB of metrics (at most
# 25 progress lines per epoch); a runaway or hostile file is read from its end only, and the reader says so.
# Fields the app formats as numbers or text: a wrong type there is a damaged file, not a crash.
_STATUS_TEXT = ("started", "ended", "updated", "heartbeat", "created", "error", "phase", "device")
_STATUS_NUMBERS = ("phase_done", "phase_total", "seconds", "workers", "worker_index")
_CONFIG_NUMBERS = (
    "image_size",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_epochs",
    "fold",
    "folds",
    "val_fraction",
    "mixup",
    "label_smoothing",
    "dropout",
    "seed",
    "split_seed",
    "target_recall",
    "max_images",
)
_CONFIG_TEXT = ("data", "model", "split", "augmentation", "framing", "keep", "weights", "notes")
_CONFIG_FLAGS = ("class_weighting", "mixed_precision", "work_resolution_augmentation", "augment")


class RunFolderError(ValueError):
    """A run folder that training must not write into; the message says why and what to do."""


def write_status(run_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Update status.json, keeping the fields already there (a damaged one is started afresh)."""
    if state not in STATUSES:
        raise ValueError(f"unknown status {state}")
    path = Path(run_dir) / "status.json"
    status = read_json_object(path)
    status.update(fields)
    status["state"] = state
    status["updated"] = now_iso()
    atomic_write_json(path, status)
    return status


def status_problem(status: Any) -> str | None:
    """Why a status.json's content cannot be used, or None."""
    if not isinstance(status, dict):
        return f"status.json: a JSON {type(status).__name__}, not an object"
    state = status.get("state")
    if state not in STATUSES:
        return f"status.json: unknown state {str(state)[:40]!r}" if "state" in status else "status.json: no state"
    pid = status.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31):
        return f"status.json: pid must be a process number, got {type(pid).__name__}"
    for key in _STATUS_TEXT:
        if status.get(key) is not None and not isinstance(status[key], str):
            return f"status.json: {key} must be text, got {type(status[key]).__name__}"
    for key in _STATUS_NUMBERS:
        if status.get(key) is not None and not _is_number(status[key]):
            return f"status.json: {key} must be a number, got {type(status[key]).__name__}"
    return None


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """status.json, with a run whose process vanished while running reported as failed.

    A status.json that cannot be used reads as {"state": "damaged", "error": why}; a missing one as {}.
    """
    run_dir = Path(run_dir)
    path = run_dir / "status.json"
    try:
        status = load_json(path)
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return {}
    except (OSError, RunDataError) as exc:
        return {
            "state": DAMAGED,
            "error": str(exc)
            if isinstance(exc, RunDataError)
            else f"status.json: cannot be read ({exc.strerror or exc})",
        }
    problem = status_problem(status)
    if problem:
        return {"state": DAMAGED, "error": problem}
    if status.get("state") in ("queued", "running"):
        pid = status.get("pid")
        # Give a freshly launched process a moment to write its own status first.
        if status.get("state") == "queued" and not pid and age > 120:
            status["state"] = "failed"
            status["error"] = status.get("error") or "the training process never started; see train.log"
        elif pid and not pid_alive(pid) and age > 5:
            status["state"] = "failed"
            status["error"] = (
                status.get("error") or "the training process ended without reporting (killed or crashed); see train.log"
            )
        elif status.get("state") == "queued" and pid and not is_training_process(pid, run_dir):
            status["state"] = "failed"
            status["error"] = (
                f"stale: process {pid} is alive but is not this run's training (the launcher "
                "ended and the number was reused)"
            )
        elif status.get("state") == "running" and age > HEARTBEAT_DEAD_S:
            status["state"] = "failed"
            status["error"] = (
                status.get("error") or f"no heartbeat for {age / 60:.0f} min: the training process stopped answering"
            )
    return status


@contextmanager
def claim(run_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Hold run_dir for one training: refuse folders with other people's files or a live run, lock it
    against a second writer, and clear a stale STOP request.

    A folder prepared by launch() (status queued) is taken as it is; one holding an ended run of ours is
    replaced only with overwrite=True, and then only our own files are removed. A refused folder is left
    exactly as it was: it is checked before the lock file is made, and checked again under the lock.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is a file, not a folder; choose a new --out folder")
    if run_dir.is_dir():
        _refuse_folder(run_dir, overwrite)  # nothing written into a folder that will be refused
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    made_lock = not lock_path.exists()
    with open(lock_path, "a+") as lock:
        # The lock first: nothing is removed while another process may be writing here.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{run_dir}: another training is writing into this folder") from None
        try:
            _refuse_folder(run_dir, overwrite)  # again, under the lock: the folder may have changed meanwhile
        except RunFolderError:
            if made_lock:
                lock_path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)
            raise
        _prepare_folder(run_dir, overwrite)
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
    """One row of the runs table. damaged: why the run's status or config cannot be used (the run is then
    listed with state "damaged"), or a metrics problem (the run keeps its state); None when all is well."""

    path: Path
    name: str
    state: str
    model: str
    best_val_auc: float | None
    kept_val_auc: float | None  # the epoch whose model the run kept (the last, or the best): what it serves
    epochs_done: int
    epochs: int | None
    duration_s: float | None
    started: str | None
    has_model: bool
    damaged: str | None = None
    note: str | None = None  # what the metrics reader left out (a bounded read of a huge file)
    config: dict[str, Any] = field(default_factory=dict)  # the validated config.json ({} when damaged)


def config_problem(config: Any) -> str | None:
    """Why a config.json's content cannot be used, or None."""
    if not isinstance(config, dict):
        return f"config.json: a JSON {type(config).__name__}, not an object"
    for key in _CONFIG_NUMBERS:
        if config.get(key) is not None and not _is_number(config[key]):
            return f"config.json: {key} must be a number, got {type(config[key]).__name__}"
    for key in _CONFIG_TEXT:
        if config.get(key) is not None and not isinstance(config[key], str):
            return f"config.json: {key} must be text, got {type(config[key]).__name__}"
    for key in _CONFIG_FLAGS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            return f"config.json: {key} must be true or false, got {type(config[key]).__name__}"
    return None


def run_info(run_dir: str | Path) -> RunInfo:
    """The runs-table row of one run folder; never raises for what the folder holds."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    status = read_status(run_dir)
    if status.get("state") == DAMAGED:
        problems.append(status["error"])
    config_damaged = False
    try:
        config = load_json(run_dir / "config.json")
    except FileNotFoundError:
        config = {}
    except (OSError, RunDataError) as exc:
        config, config_damaged = {}, True
        problems.append(
            str(exc) if isinstance(exc, RunDataError) else f"config.json: cannot be read ({exc.strerror or exc})"
        )
    else:
        problem = config_problem(config)
        if problem:
            config, config_damaged = {}, True
            problems.append(problem)
    metrics = read_metrics(run_dir)
    if metrics.skipped:
        problems.append(
            f"metrics.jsonl: {metrics.skipped} unusable line(s) skipped ({'; '.join(metrics.problems[:2])})"
        )
    epochs = epochs_of(metrics)
    aucs = [float(e["val_auc"]) for e in epochs if e.get("val_auc") is not None and math.isfinite(float(e["val_auc"]))]
    epochs_total = config.get("epochs")
    try:
        has_model = (run_dir / "model.keras").is_file()
    except OSError:
        has_model = False
    # An unusable status or config makes the run unusable (listed, never offered as a model); skipped
    # metrics lines only thin its curves.
    state = DAMAGED if config_damaged else status.get("state", "unknown")
    return RunInfo(
        path=run_dir,
        name=run_dir.name,
        state=state,
        model=str(config.get("model", "")),
        best_val_auc=max(aucs) if aucs else None,
        kept_val_auc=_kept_auc(epochs),
        epochs_done=len(epochs),
        epochs=int(epochs_total) if isinstance(epochs_total, int) and not isinstance(epochs_total, bool) else None,
        duration_s=float(sum(float(e.get("seconds") or 0.0) for e in epochs)) if epochs else None,
        started=status.get("started") if isinstance(status.get("started"), str) else None,
        has_model=has_model,
        damaged="; ".join(problems) or None,
        note=metrics.note if metrics.truncated else None,
        config=config,
    )


def _kept_auc(epochs: list[dict[str, Any]]) -> float | None:
    kept = [e for e in epochs if e.get("kept")]
    raw = kept[-1].get("val_auc") if kept else None
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def list_runs(runs_root: str | Path) -> list[RunInfo]:
    """Every run under runs_root (folders with a config.json), newest first; a damaged one is listed as
    such and never hides the others."""
    root = Path(runs_root)
    try:
        children = sorted(root.iterdir()) if root.is_dir() else []
        real_root = root.resolve()
    except OSError:
        return []
    runs = []
    for d in children:
        try:
            if not d.is_dir() or not (d / "config.json").exists():
                continue
            outside = not d.resolve().is_relative_to(real_root)
        except (OSError, RuntimeError):
            continue
        if outside:  # a link out of the runs folder: nothing in it is read
            runs.append(
                RunInfo(
                    d,
                    d.name,
                    DAMAGED,
                    "",
                    None,
                    None,
                    0,
                    None,
                    None,
                    None,
                    False,
                    damaged="the folder links outside the runs folder; not read",
                )
            )
            continue
        try:
            runs.append(run_info(d))
        except Exception as exc:  # the last guard of the runs table: one folder never takes it down
            runs.append(
                RunInfo(
                    d,
                    d.name,
                    DAMAGED,
                    "",
                    None,
                    None,
                    0,
                    None,
                    None,
                    None,
                    False,
                    damaged=f"cannot be read ({type(exc).__name__}: {exc})",
                )
            )
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


def _refuse_folder(run_dir: Path, overwrite: bool) -> None:
    """Raise RunFolderError when training must not write into run_dir; reads only, changes nothing."""
    present = [p.name for p in run_dir.iterdir() if p.name != LOCK_FILE]
    extra = sorted(n for n in present if n not in RUN_FILES and not n.startswith("."))
    if extra:
        raise RunFolderError(
            f"{run_dir}: not empty and not a pneumo run (holds {', '.join(extra[:5])}); choose a new --out folder"
        )
    state = read_status(run_dir).get("state") if "status.json" in present else None
    if state == DAMAGED:
        raise RunFolderError(
            f"{run_dir}: its status.json is damaged ({read_status(run_dir).get('error')}); choose a new --out folder"
        )
    if state is None and set(present) - {STOP_FILE}:
        raise RunFolderError(
            f"{run_dir}: holds {', '.join(sorted(present)[:5])} but no run status; choose a new --out folder"
        )
    if state is None or state == "queued":
        return  # empty, or prepared by launch()
    if state not in ENDED:
        raise RunFolderError(f"{run_dir}: a run is in progress there ({state}); stop it first or choose a new folder")
    if not overwrite:
        raise RunFolderError(f"{run_dir}: holds a {state} run; pass --overwrite to replace it, or choose a new folder")


def _prepare_folder(run_dir: Path, overwrite: bool) -> None:
    """Make an accepted folder ready (under the lock): a stale STOP goes, an ended run's own files go."""
    present = {p.name for p in run_dir.iterdir()}
    state = read_status(run_dir).get("state") if "status.json" in present else None
    if state == "queued":
        return  # prepared by launch(): its config, and a Stop pressed before the process started, stay
    if state is None:
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a request left from an earlier run is not for this one
        return
    if overwrite and state in ENDED:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)


def _check_folder(run_dir: Path, overwrite: bool) -> None:
    """Refuse, then prepare (kept for callers of the earlier name)."""
    _refuse_folder(run_dir, overwrite)
    _prepare_folder(run_dir, overwrite)


def active_runs(runs_root: str | Path) -> list[RunInfo]:
    return [r for r in list_runs(runs_root) if r.state in ("queued", "running")]


def launch(config: Any, runs_root: str | Path, python: str | None = None, max_concurrent: int = 1) -> Path:
    """Start `python -m pneumo train` for config in its own process group; returns the run folder.

    The process is detached (new session, own log), so closing the browser tab or restarting the
    app neither kills nor duplicates it. At most max_concurrent runs go at once: a further one is
    refused with the names of those running.
    """
    config.validate()
    busy = active_runs(runs_root)
    if len(busy) >= max_concurrent:
        raise RunFolderError(
            f"{', '.join(r.name for r in busy)} is still {busy[0].state}; "
            f"at most {max_concurrent} training run(s) at a time: stop it or wait"
        )
    run_dir = new_run_dir(runs_root, config.model)
    atomic_write_json(run_dir / "config.json", asdict(config))
    write_status(run_dir, "queued", created=now_iso())
    log = open(run_dir / "train.log", "ab")
    proc = subprocess.Popen(
        [
            python or sys.executable,
            "-m",
            "pneumo",
            "train",
            "--config",
            str(run_dir / "config.json"),
            "--out",
            str(run_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=str(PROJECT_ROOT),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    write_status(run_dir, "queued", pid=proc.pid)
    return run_dir


def request_stop(run_dir: str | Path) -> None:
    """Ask a run to stop at the next batch; it keeps the model it has so far (the best one with --keep best).

    A run that says queued or running but whose process is gone (or is not its training) is marked
    stopped at once: no process will ever read the STOP file, and the run must not block new ones.
    """
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / STOP_FILE, now_iso() + "\n")
    raw = read_json(run_dir / "status.json")
    seen = read_status(run_dir)
    if isinstance(raw, dict) and raw.get("state") in ("queued", "running") and seen.get("state") == "failed":
        write_status(run_dir, "stopped", ended=now_iso(), error=seen.get("error"), pid=None)


def stop_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STOP_FILE).exists()


def kill(run_dir: str | Path) -> bool:
    """Terminate a run's process group (used when a clean stop is not enough); only a live pneumo process."""
    status = read_status(run_dir)
    pid = status.get("pid")
    if status.get("state") not in ("queued", "running") or not pid_alive(pid):
        return False
    assert isinstance(pid, int)  # pid_alive is False for anything but a positive int
    args = cmdline(pid)
    if args is not None and "pneumo" not in " ".join(args):
        return False  # the number belongs to another program now
    os.killpg(os.getpgid(int(pid)), signal.SIGTERM)
    return True


def log_tail(run_dir: str | Path, lines: int = 40, max_bytes: int = 256 * 2**10) -> str:
    """The last lines of train.log, reading at most its last max_bytes."""
    path = Path(run_dir) / "train.log"
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
