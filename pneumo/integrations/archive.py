"""Screening an archive of films on Ray Data (``python -m pneumo screen``): one Parquet row per file, resumable.

Every film goes through the steps of the one reading path (pneumo.model.reading.read: the bounded decoder, the
probability, the input check, the decision rule), so a row says what ``predict --json`` says for the same file.
What Ray adds is the scale: a pool of actors, each holding one model, reads blocks of paths
(pneumo.integrations.archive_job). The driver (this process) writes what comes back, one Parquet part per block
(pneumo.integrations.archive_store): an interrupted run loses only the blocks in flight, and a later run with the
same folder skips every file whose current row is a result of the same model card and operating point for the
file's present content, screening again the files that were unreadable last time or have changed since. Readers
of the folder see one row per file, the newest (archive_store.read_results). A file that cannot be read is a row
with its one-line reason, never the end of the run. With ``log``, each screened film is also one reading in the
readings database, as ``predict --log`` stores them.

Ray and PyArrow are imported where used: the dashboard and ``predict`` import nothing from here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.integrations.archive_job import (
    ACTOR_THREADS,
    LOCAL_NODE_IP,
    ScreenConfig,
    Screener,
    WorkerDied,
    file_sha256,
    ray_session,
    screening_job,
)
from pneumo.integrations.archive_sources import MANIFEST_MAX_ROWS, collect_paths, read_manifest
from pneumo.integrations.archive_store import (
    COLUMNS,
    LOCK_NAME,
    PART_PREFIX,
    PART_SUFFIX,
    PartWriter,
    check_out,
    one_run,
    part_files,
    plan,
    read_results,
)
from pneumo.model.reading import DEFAULT_BAND

__all__ = [
    "ACTOR_THREADS",
    "COLUMNS",
    "DEFAULT_BATCH",
    "LOCAL_NODE_IP",
    "LOCK_NAME",
    "MANIFEST_MAX_ROWS",
    "PART_PREFIX",
    "PART_SUFFIX",
    "ScreenConfig",
    "ScreenSummary",
    "Screener",
    "collect_paths",
    "file_sha256",
    "part_files",
    "ray_session",
    "read_manifest",
    "read_results",
    "screen",
    "summary_lines",
]

DEFAULT_BATCH = 32
Progress = Callable[[int, int], None]  # films done, films to do


@dataclass
class ScreenSummary:
    """What one run did: films screened (error rows included), skipped as already screened, errors among those
    screened, throughput, and where the rows are."""

    screened: int
    skipped: int
    errors: int
    seconds: float  # from the first block handed to Ray to the last part written (actor start-up included)
    films_per_s: float
    out: str
    parts: int
    model: str
    card_hash: str
    operating_point: str
    threshold: float
    actors: int
    batch_size: int
    retried: int = 0  # files screened again because their current row was an error
    changed: int = 0  # files screened again because their size or modification time changed
    files: int = 0  # files with a current row in the folder after this run (one row each, the newest)
    logged: int = 0  # readings stored in the readings database (log=True)
    log_url: str | None = None  # that database, its password hidden
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> films screened there
    cautions: list[str] = field(default_factory=list)
    drift: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def screen(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | Path | None = None,
    operating_point: str | None = None,
    address: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    actors: int | None = None,
    drift: bool = False,
    log: bool = False,
    progress: Progress | None = None,
) -> ScreenSummary:
    """Screen every film of `sources` (folders, files, CSV manifests with a ``path`` column) into Parquet parts under
    `out`, skipping the files whose current row there is a result of this model card and operating point for the
    file as it is now (archive_store.plan).

    actors: the pool's size (default: every CPU Ray has, one each); batch_size: paths per block, so per actor call
    and per Parquet part. drift: also test the run's films as one batch against the model's drift reference.
    log: store one reading per screened film in the readings database (PNEUMO_DATABASE_URL), as ``predict --log``.
    """
    from pneumo.evaluation.site import apply_operating_point
    from pneumo.model.loading import load_model
    from pneumo.model.reading import card_hash

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {batch_size}")
    if actors is not None and actors < 1:
        raise ValueError(f"--actors must be at least 1; got {actors}")
    out = Path(out).expanduser().absolute()
    # The model and its card first: a bad model, card or operating point is refused before Ray starts.
    loaded = apply_operating_point(load_model(model), operating_point)
    point = str(loaded.operating_point)
    card = card_hash(loaded)
    drift_note = _drift_unavailable(loaded) if drift else None
    paths = collect_paths(sources)
    check_out(out)
    records = _open_log() if log else None  # an unusable database is refused before any film is read
    with one_run(out):
        todo = plan(out, paths, card, point)
        summary = ScreenSummary(
            screened=0,
            skipped=len(todo.done),
            errors=0,
            seconds=0.0,
            films_per_s=0.0,
            out=str(out),
            parts=0,
            model=str(loaded.card.name),
            card_hash=card,
            operating_point=point,
            threshold=float(loaded.threshold),
            actors=0,
            batch_size=batch_size,
            retried=todo.retried,
            changed=todo.changed,
            log_url=records.url if records is not None else None,
            cautions=list(loaded.card.cautions()),
        )
        config = ScreenConfig(
            str(Path(loaded.path).absolute()),  # the actors' working folder is Ray's, not this process's
            loaded.card,
            point,
            DEFAULT_BAND,
            drift=drift and drift_note is None,
            threads=ACTOR_THREADS,
            log=log,
        )
        measured: tuple[list[float], list[float]] = ([], [])
        if todo.todo:
            run = _Run(out, loaded, summary, records, measured, _Repeats(paths, todo.done))
            run.go(todo.todo, config, address, actors, progress)
        summary.files = read_results(out, ["path"]).num_rows
        if drift:
            summary.drift = _drift_result(loaded, measured, drift_note)
    return summary


def _open_log() -> Any:
    from pneumo.integrations.records import open_records

    return open_records()


class _Run:
    """The driver's side of one run: each block the actors return is noted for repeats, logged (with log) and
    written as a part, and counted in the summary."""

    def __init__(
        self,
        out: Path,
        loaded: Any,
        summary: ScreenSummary,
        records: Any,
        measured: tuple[list[float], list[float]],
        repeats: _Repeats,
    ) -> None:
        self.loaded, self.summary, self.records, self.measured, self.repeats = (
            loaded,
            summary,
            records,
            measured,
            repeats,
        )
        self.writer = PartWriter(out)

    def go(
        self,
        todo: list[tuple[int, str]],
        config: ScreenConfig,
        address: str | None,
        actors: int | None,
        progress: Progress | None,
    ) -> None:
        summary = self.summary
        with ray_session(address), screening_job(todo, config, summary.batch_size, actors) as (size, blocks):
            summary.actors = size
            started = time.perf_counter()
            if progress:
                progress(0, len(todo))
            try:
                for block in blocks:
                    self.take(block)
                    if progress:
                        progress(summary.screened, len(todo))
            except WorkerDied as exc:
                raise ChildProcessError(
                    f"a Ray worker reading films died ({exc}); {summary.screened} films in {summary.parts} parts are "
                    f"kept in {summary.out}: run the same command again to resume"
                ) from None
            summary.seconds = time.perf_counter() - started
            summary.films_per_s = summary.screened / summary.seconds if summary.seconds > 0 else 0.0

    def take(self, block: Any) -> None:
        summary = self.summary
        table = self.repeats.note(block)
        # Logged before the part is written: a run stopped in between screens the block again on resume, and the
        # database then holds two readings of those films (both true) rather than none.
        if self.records is not None:
            summary.logged += self._log(table)
        self.writer.write(table)
        summary.parts = self.writer.parts
        summary.errors += table.num_rows - table.column("error").null_count  # rows with a reason
        for node in table.column("node").to_pylist():
            summary.nodes[node] = summary.nodes.get(node, 0) + 1
        for distance, score in zip(table.column("drift_distance").to_pylist(), table.column("drift_score").to_pylist()):
            if distance is not None:  # null: no film to measure
                self.measured[0].append(distance)
                self.measured[1].append(score)
        summary.screened += table.num_rows

    def _log(self, table: Any) -> int:
        """One reading per row in the readings database, as predict --log stores its readings (new_reading)."""
        from pneumo.integrations.records import ReadingSource, add_readings, new_reading
        from pneumo.model.reading import Reading

        entries = [
            new_reading(
                Reading(path, None, probability, prediction, reason, list(notes)),
                self.loaded,
                ReadingSource.file(path),
                pixel_hash=digest,
            )
            for path, probability, prediction, reason, notes, digest in zip(
                *(
                    table.column(c).to_pylist()
                    for c in ("path", "probability", "prediction", "reason", "warnings", "pixel_sha256")
                )
            )
        ]
        return len(add_readings(entries, records=self.records))


class _Repeats:
    """predict's repeat rule (pneumo.model.reading.Repeats) over a run that arrives block by block: a film whose
    decoded pixels equal an earlier input's is named a repeat of it (``repeat_of`` and the same warning). Files this
    run skips count by the pixel hash of their current row, at their place in this run's input list."""

    def __init__(self, paths: list[str], done: dict[str, str | None]) -> None:
        self.first: dict[str, tuple[int, str]] = {}
        for index, path in enumerate(paths):
            digest = done.get(path)
            if digest is not None and digest not in self.first:
                self.first[digest] = (index, path)

    def note(self, table: Any) -> Any:
        import pyarrow as pa

        notes = table.column("warnings").to_pylist()
        repeat_of = table.column("repeat_of").to_pylist()
        for row, (index, path, digest) in enumerate(
            zip(*(table.column(c).to_pylist() for c in ("index", "path", "pixel_hash")))
        ):
            if digest is None:
                continue
            first = self.first.get(digest)
            if first is None or first[0] > index:
                self.first[digest] = (index, path)
                continue
            if first[0] == index:
                continue
            # Reading.Repeats.note's words, so the warning reads the same in predict --json and here.
            note = f"repeats item {first[0] + 1} ({first[1]}): the same pixels; read them as one film"
            if note not in notes[row]:
                notes[row] = [*notes[row], note]
            repeat_of[row] = first[1]
        table = table.set_column(
            table.schema.get_field_index("warnings"), "warnings", pa.array(notes, pa.list_(pa.string()))
        )
        return table.set_column(
            table.schema.get_field_index("repeat_of"), "repeat_of", pa.array(repeat_of, pa.string())
        )


def _drift_unavailable(loaded: Any) -> str | None:
    """Why this model gets no drift check (no reference beside it, a stale one), or None."""
    from pneumo.evaluation.drift import MIN_BATCH, why_unavailable

    return why_unavailable(loaded, MIN_BATCH)


def _drift_result(loaded: Any, measured: tuple[list[float], list[float]], note: str | None) -> dict[str, Any]:
    """The drift check over every film this run read: the ``drift`` object of an evaluation report."""
    import numpy as np

    from pneumo.evaluation.drift import DriftUnavailable, load_reference

    if note is not None:
        return {"available": False, "reason": note}
    distances, scores = (np.asarray(values, dtype=float) for values in measured)
    try:
        result = load_reference(loaded).compare(distances, scores)
    except DriftUnavailable as exc:
        return {"available": False, "reason": str(exc)}
    return {"available": True, **result.to_dict()}


def summary_lines(summary: ScreenSummary) -> Iterable[str]:
    """The run in a few lines for a terminal."""
    if not summary.screened:
        yield (
            f"nothing new to screen: all {summary.skipped} files were already screened by {summary.model} "
            f"(card {summary.card_hash}) at operating point '{summary.operating_point}' in {summary.out}"
        )
        return
    again = [
        f"{count} {what}"
        for count, what in ((summary.retried, "unreadable last time"), (summary.changed, "changed since"))
        if count
    ]
    yield (
        f"screened {summary.screened} films ({summary.errors} unreadable) in {summary.seconds:.1f} s "
        f"({summary.films_per_s:.1f} films/s, {summary.actors} actors); skipped {summary.skipped} already screened "
        f"by {summary.model} (card {summary.card_hash}) at operating point '{summary.operating_point}'"
        + (f"; screened again: {', '.join(again)}" if again else "")
    )
    if summary.drift is not None:
        drift = summary.drift
        yield (
            f"drift: {'SHIFTED' if drift.get('shifted') else 'no shift found'} "
            f"(p = {drift['p_value']:.3g}, n = {drift['n']})"
            if drift.get("available")
            else f"drift: not checked ({drift.get('reason')})"
        )
    yield f"results: {summary.parts} new Parquet parts in {summary.out} ({summary.files} files, one current row each)"
