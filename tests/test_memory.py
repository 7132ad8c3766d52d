import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumo.core import memory
from tests.conftest import require


def _need_proc() -> None:
    require(Path("/proc/self/maps").exists(), "reads Linux /proc")


def test_resident_splits_into_anonymous_and_file_pages() -> None:
    _need_proc()
    # A fresh private anonymous mapping, every page written: malloc could hand back pages this process
    # already holds (so the resident set would not grow), a new mapping cannot.
    before = memory.resident()
    block = mmap.mmap(-1, 64 * 2**20, flags=mmap.MAP_PRIVATE)
    np.frombuffer(block, dtype=np.uint8)[:: mmap.PAGESIZE] = 1
    after = memory.resident()
    assert after.anonymous_mb - before.anonymous_mb > 50
    assert after.total_mb == pytest.approx(after.anonymous_mb + after.file_mb, abs=2)
    assert after.peak_mb >= after.total_mb
    block.close()


def test_resident_of_a_missing_process_is_zero() -> None:
    assert memory.resident(2**22 + 12345) == memory.Resident(0.0, 0.0, 0.0, 0.0)


def test_release_file_pages_drops_clean_file_pages_and_keeps_data(tmp_path: Path) -> None:
    _need_proc()
    payload = np.random.default_rng(0).integers(0, 256, 64 * 2**20, dtype=np.uint8)
    path = tmp_path / "blob.bin"
    path.write_bytes(payload.tobytes())
    scratch = np.full(16 * 2**20, 7, dtype=np.uint8)  # private, written: must survive untouched
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        checksum = int(view[::4096].sum())  # touch every page
        mapped_mb = memory.resident().file_mb
        advised = memory.release_file_pages()
        released_mb = memory.resident().file_mb
        assert advised >= 64 * 2**20
        assert mapped_mb - released_mb > 40, (mapped_mb, released_mb)
        assert int(view[::4096].sum()) == checksum  # pages come back from the file
        assert np.array_equal(view, payload)
        del view
    assert int(scratch.min()) == 7 == int(scratch.max())


def test_malloc_arena_cap_is_accepted_by_glibc() -> None:
    require(sys.platform.startswith("linux"), "glibc only")
    assert memory.limit_malloc_arenas(2) is True
