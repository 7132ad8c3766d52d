"""Which process a run's pid names: alive, and still pneumo's training (pids are reused)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None where /proc cannot tell (another OS, hidden processes)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(65536)
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_training_process(pid: int, run_dir: str | Path | None = None) -> bool:
    """True when pid is `python -m pneumo train` (for run_dir, when given), or when /proc cannot tell.

    A pid is reused by the system once its process ends: a queued run whose launcher died, checked by
    the pid alone, would wait for whatever process got the number next.
    """
    args = cmdline(pid)
    if args is None:
        return True
    text = " ".join(args)
    if "pneumo" not in text or "train" not in args:
        return False
    return run_dir is None or Path(run_dir).name in text
