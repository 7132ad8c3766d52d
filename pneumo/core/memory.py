"""Resident memory of a long-running process (the dashboard): measure it and keep it small.

Most of a fresh TensorFlow process's resident set is not data but pages of its shared libraries that
the loader and the static kernel registrations touch once (relocation tables, registration code): about
400 MB that the process never reads again. They are clean file pages, so handing them back to the kernel
loses nothing; whatever is needed later faults back in from the file.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
_MADV_PAGEOUT = 21  # Linux >= 5.4


@dataclass(frozen=True)
class Resident:
    """A process's resident set in MiB, split into private data and pages backed by files, and its peak."""

    total_mb: float
    anonymous_mb: float
    file_mb: float
    peak_mb: float = 0.0


def resident(pid: int | str = "self") -> Resident:
    """Resident memory of a process (Linux /proc); zeros where /proc is unavailable."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
    except OSError:
        return Resident(0.0, 0.0, 0.0, 0.0)

    def mb(key: str) -> float:
        return int(fields.get(key, "0 kB").split()[0]) / 1024

    # VmHWM is this process image's own peak; ru_maxrss would carry a parent's peak across fork/exec.
    return Resident(mb("VmRSS"), mb("RssAnon"), mb("RssFile") + mb("RssShmem"), mb("VmHWM"))


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process.

    TensorFlow's thread pools each get an arena of their own, which shows up as a few hundred MB of
    resident memory in a long-running app. No-op off glibc.
    """
    return _mallopt(_M_ARENA_MAX, arenas)


def _mallopt(parameter: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(parameter, int(value)))
    except (OSError, AttributeError):
        return False


def map_large_allocations(threshold_bytes: int = 1 << 20) -> bool:
    """Serve every allocation of at least ``threshold_bytes`` from its own mapping, returned to the kernel
    the moment it is freed.

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MB), after which
    films, maps and upload buffers come from the heap, where a long-lived small block can pin the memory
    around it; setting the threshold fixes it (and turns that adjustment off). A page-faulted mapping per
    decoded film costs a few milliseconds at most. No-op off glibc.
    """
    return _mallopt(_M_MMAP_THRESHOLD, threshold_bytes)


def release_file_pages() -> int:
    """Ask the kernel to reclaim this process's read-only file-backed pages; returns the bytes advised.

    Only mappings that cannot have been written are touched, and MADV_PAGEOUT never discards data, so
    this is safe to call at any time; it is worth calling once, after the libraries and the model have
    loaded and warmed up. No-op (0) where the kernel or libc lacks it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        lines = Path("/proc/self/maps").read_text().splitlines()
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or fields[4] == "0" or not fields[5].startswith("/"):
            continue  # writable, anonymous, or a kernel region such as [vdso]
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, end - start, _MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


def trim() -> bool:
    """Hand freed heap memory back to the kernel (glibc malloc_trim).

    glibc serves large numpy buffers from its heap once its mmap threshold has grown, and keeps what is
    freed there for reuse: a batch of large films leaves the process gigabytes larger after the films are
    gone. Trimming after each batch gives them back. No-op off glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
