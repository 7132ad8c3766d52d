"""The output folder of ``python -m pneumo screen``: Parquet parts of one row per screened file, and what a rerun
screens again.

Parts are only ever added, never rewritten: each finished block becomes one part, written to a temporary name and
linked into place (pneumo.core.files.write_new_file), so an interrupted run loses only the blocks in flight and a
reader never sees half a part. One run writes a folder at a time (a lock file inside it). Part names begin with the
run's start time (UTC, to the microsecond) and end with the part's number in the run, so name order is write order.

A file can therefore have several rows: a rerun screens a file again when its newest row is an error (the file may
have been fixed since), was made by another model card or operating point, or records another size or modification
time than the file has now (its content may have changed: path, size and mtime_ns are the cheap key; the row also
records the content's SHA-256). The newest row of a path is its current one, and read_results gives only those
unless asked for the history: every reader (the summary, a loader of the results) sees one row per file.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pneumo.core.files import LockTimeout, file_lock, write_new_file

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
LOCK_NAME = "screen"  # file_lock's sidecar: .screen.lock inside the output folder
# The columns every part holds, in order. path is absolute (workers on other nodes and later runs resolve it
# alike); sha256 is the file's bytes, size and mtime_ns its size and modification time when it was read (all null
# when it cannot be opened); pixel_hash the decoded film's (pneumo.data.collection.pixel_hash), which finds the same
# film under two names, as predict's repeat_of does. Parts written before size and mtime_ns existed read them as
# null, so their files are screened again once.
COLUMNS = (
    "path",
    "sha256",
    "size",
    "mtime_ns",
    "probability",
    "prediction",
    "threshold",
    "operating_point",
    "warnings",
    "error",
    "model",
    "card_hash",
    "repeat_of",
    "pixel_hash",
    "screened_at",
)


def schema() -> Any:
    """The parts' pyarrow schema (COLUMNS with their types)."""
    import pyarrow as pa

    text, number, count = pa.string(), pa.float64(), pa.int64()
    types = {
        "probability": number,
        "threshold": number,
        "warnings": pa.list_(text),
        "size": count,
        "mtime_ns": count,
    }
    return pa.schema([pa.field(name, types.get(name, text)) for name in COLUMNS])


def part_files(out: str | Path) -> list[Path]:
    """The finished parts in an output folder, in the order they were written (names carry the run's start)."""
    return sorted(p for p in Path(out).glob(f"{PART_PREFIX}*{PART_SUFFIX}") if p.is_file())


def read_results(out: str | Path, columns: Sequence[str] | None = None, *, history: bool = False) -> Any:
    """The rows of an output folder as one pyarrow Table (COLUMNS, or the ones asked for): the current row of each
    file (the newest, see the module's note), in the order they were written; with history, every row ever written.
    ValueError naming a part that is not one of ours."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = list(columns or COLUMNS)
    read = wanted if history or "path" in wanted else ["path", *wanted]
    tables = []
    for part in part_files(out):
        try:
            # With the schema, a column an older part lacks reads as nulls.
            tables.append(pq.read_table(part, columns=read, schema=schema()))
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{part}: not a screening part this command wrote ({exc}); move it out of --out") from None
    if not tables:
        return schema().empty_table().select(wanted)
    table = pa.concat_tables(tables)
    if not history:
        numbered = table.append_column("row", pa.array(np.arange(table.num_rows)))
        newest = numbered.group_by("path", use_threads=False).aggregate([("row", "max")]).column("row_max")
        table = table.take(newest.take(pc.sort_indices(newest)))  # the rows kept, in the order they were written
    return table.select(wanted)


def file_key(path: str) -> tuple[int, int] | None:
    """A file's (size, mtime_ns): what a rerun compares to find a changed file without reading it; None when it
    cannot be stat'ed (gone, unreadable folder)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


@dataclass
class Plan:
    """What a run screens: the files to read (with their place in the input list), the files skipped (path ->
    pixel hash of their current row, for the repeat rule), and why some files are read again."""

    todo: list[tuple[int, str]]
    done: dict[str, str | None] = field(default_factory=dict)
    retried: int = 0  # the current row was an error: the file may have been fixed since
    changed: int = 0  # the file's size or modification time differ from its current row's (or it has none)


def plan(out: Path, paths: Sequence[str], card_hash: str, operating_point: str) -> Plan:
    """Which of `paths` this run screens, given the current rows already in `out`: a file is skipped only when its
    current row is a result (no error) of this card and operating point, made of the same size and mtime_ns the
    file has now."""
    import pyarrow.compute as pc

    table = read_results(out, ["path", "card_hash", "operating_point", "error", "size", "mtime_ns", "pixel_hash"])
    ours = table.filter(
        pc.and_(pc.equal(table["card_hash"], card_hash), pc.equal(table["operating_point"], operating_point))
    )
    current = {
        path: (error, size, mtime, digest)
        for path, error, size, mtime, digest in zip(
            *(ours.column(c).to_pylist() for c in ("path", "error", "size", "mtime_ns", "pixel_hash"))
        )
    }
    result = Plan(todo=[])
    for index, path in enumerate(paths):
        row = current.get(path)
        if row is None:
            result.todo.append((index, path))
            continue
        error, size, mtime, digest = row
        if error is not None:
            result.retried += 1
        elif size is None or file_key(path) != (size, mtime):
            result.changed += 1
        else:
            result.done[path] = digest
            continue
        result.todo.append((index, path))
    return result


def check_out(out: Path) -> None:
    """The output folder, created; ValueError when the name is taken by a file."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; give a folder for the Parquet parts")
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def one_run(out: Path) -> Iterator[None]:
    """Hold the output folder for this run: two runs writing one folder would each screen the files the other has
    not finished, and both rows would stay."""
    try:
        with file_lock(out / LOCK_NAME, timeout=0.0):
            # Temporary files of a run that died mid-write (see write_new_file): nobody else writes here now.
            for stale in out.glob(f".{PART_PREFIX}*.part"):
                stale.unlink(missing_ok=True)
            yield
    except LockTimeout:
        raise LockTimeout(
            f"--out {out}: another screening run is writing this folder; wait for it, or give another folder"
        ) from None


class PartWriter:
    """Writes one run's parts: ``part-<start time>-<run id>-<number>.parquet``, each atomically."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
        self.parts = 0

    def write(self, table: Any) -> Path:
        """One part of `table`'s COLUMNS (cast to the parts' schema; extra columns are left out)."""
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table.select(list(COLUMNS)).cast(schema()), buffer)
        name = f"{PART_PREFIX}{self.run_id}-{self.parts:06d}{PART_SUFFIX}"
        path = write_new_file(self.out, name, buffer.getvalue())
        self.parts += 1
        return Path(path)
