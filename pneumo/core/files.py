"""Files written whole or not at all, and read within bounds.

An atomic write goes to a temporary file in the same folder and is renamed over the target, so a reader never sees
half a file; a read-only file or folder is refused, never replaced; JSON is read up to a size and a depth, and a
file that breaks either is named, never parsed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

JSON_MAX_BYTES = 4 * 2**20  # status.json and config.json are a few hundred bytes


class RunDataError(ValueError):
    """A run file that cannot be used; the message names the file and the problem, never its content."""


class ReadOnlyError(PermissionError):
    """A file whose mode says it must not be changed: refused, never silently replaced."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_number(value: Any) -> bool:
    """A JSON number the app can format: not a bool, and an int small enough to become a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, int) or abs(value) < 2**63


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (a model or an archive's film is never held whole); OSError
    when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable(path: str | Path) -> None:
    """Refuse to replace a file (or write into a folder) that is read-only.

    An atomic replace renames a new file over the old one, which needs only the folder's permission and
    ignores the file's own mode; and root passes every os.access check. A file or folder without any
    write bit is therefore refused here, whoever runs the command.
    """
    path = Path(path)
    for target, what in ((path, "is read-only"), (path.parent, f"is in the read-only folder {path.parent}")):
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            continue
        if not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not os.access(target, os.W_OK):
            raise ReadOnlyError(f"{path}: {what}; refused, nothing written (make it writable to allow this change)")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder and rename: readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; run files are read by the app, possibly as another user
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_new_file(folder: str | Path, name: str, data: bytes, unique: bool = False, limit: int = 10_000) -> Path:
    """Create folder/name holding data, never replacing anything, and return its path.

    The bytes go to a temporary file in the folder first and are then hard-linked to the final name, which
    fails if the name exists: no other process's file (nor a user's) is ever replaced, two concurrent calls
    never get one file, and a full disk leaves no partial file under any name. With unique=True a taken
    name becomes NAME-2.EXT, NAME-3.EXT, …; otherwise FileExistsError.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
    candidates = (name if n == 1 else f"{stem}-{n}{dot}{ext}" for n in range(1, limit + 1 if unique else 2))
    fd, tmp = tempfile.mkstemp(prefix=f".{name[:60]}.", suffix=".part", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for candidate in candidates:
            target = folder / candidate
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if _create_exclusively(target, data):  # a file system without hard links
                    return target
                continue
            return target
        raise FileExistsError(errno.EEXIST, f"{folder / name} already exists; refused, nothing replaced")
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_new_json(path: str | Path, obj: Any) -> Path:
    """Create path holding obj as JSON, never replacing anything (FileExistsError); see write_new_file."""
    path = Path(path)
    return write_new_file(path.parent, path.name, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _create_exclusively(target: Path, data: bytes) -> bool:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        target.unlink(missing_ok=True)  # ours: created by this call a moment ago
        raise
    return True


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """obj as the JSON text atomic_write_json writes (numpy scalars and paths included)."""
    return json.dumps(obj, indent=2, default=_jsonable) + "\n"


class LockTimeout(TimeoutError):
    """Another process (or thread) held a file's lock for longer than the caller would wait; nothing was changed.

    A TimeoutError, so an OSError: the command line answers it in one line, as any other file problem."""


LOCK_POLL_S = 0.05


def lock_path(path: str | Path) -> Path:
    """The sidecar file whose lock stands for path's (.NAME.lock beside it; see file_lock)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def file_lock(path: str | Path, timeout: float) -> Iterator[None]:
    """Hold the one exclusive lock for path while the block runs: a read, change and write of path by every
    process (and thread) that takes this lock happens one at a time, never interleaved.

    The lock is ``flock`` on a sidecar file (lock_path), not on path itself: an atomic write renames a new
    file over path, and a lock on the old file would no longer guard anything. The sidecar is removed on
    release, so nothing is left beside the file; that is safe because a taker checks, once it holds the
    lock, that the file it locked is still the one at the sidecar's name, and starts again if it is not
    (a holder unlinks before it unlocks). A holder that dies loses its lock to the kernel: no stale lock.
    Tried every LOCK_POLL_S for timeout seconds, then LockTimeout naming the file.

    flock is POSIX (Linux, macOS); the sidecar is opened read-only (flock needs no write access), so the app
    and the command line, run as different users, share one lock.
    """
    import fcntl  # POSIX only: imported here so that the rest of this module imports everywhere

    path = Path(path)
    sidecar = lock_path(path)
    deadline = time.monotonic() + max(timeout, 0.0)
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        fd = os.open(sidecar, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{path} is being updated by another process; tried for {timeout:g} s, nothing written "
                    "(run it again once the other update is done)",
                ) from None
            time.sleep(LOCK_POLL_S)
            continue
        except BaseException:
            os.close(fd)
            raise
        try:
            on_disk = os.stat(sidecar, follow_symlinks=False)
        except FileNotFoundError:
            on_disk = None
        held = os.fstat(fd)
        if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (held.st_ino, held.st_dev):
            break
        os.close(fd)  # the holder before us removed this sidecar as it let go: take the lock on the new one
    try:
        yield
    finally:
        try:
            os.unlink(sidecar)  # before the unlock: see above
        except OSError:
            pass  # gone or not removable: the next taker locks what is there, which is just as safe
        os.close(fd)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path, default: Any = None) -> Any:
    """A JSON file, or default when it is missing, unreadable, too large, too deeply nested or not JSON."""
    try:
        return load_json(path)
    except (OSError, RunDataError):
        return default


def load_json(path: str | Path, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """A JSON file; RunDataError naming it when it is too large, not JSON, or nested beyond the parser."""
    path = Path(path)
    with open(path, "rb") as fh:
        text = fh.read(max_bytes + 1)
    if len(text) > max_bytes:
        raise RunDataError(f"{path.name}: larger than {max_bytes // 2**20} MB; not read")
    try:
        return json.loads(text)
    except RecursionError:
        raise RunDataError(f"{path.name}: nested too deeply to be read") from None
    except ValueError as exc:
        raise RunDataError(f"{path.name}: not valid JSON ({exc})") from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object: {} when it is missing or damaged (see run_info for the reason)."""
    value = read_json(path, {})
    return value if isinstance(value, dict) else {}


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    # One write() of a whole line: a concurrent reader sees complete lines or nothing of the new one.
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=_jsonable) + "\n")
