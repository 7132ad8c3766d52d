"""Screening an archive of films on Ray Data (``python -m pneumo screen``): one Parquet row per file, resumable.

Every film goes through the one reading path (pneumo.model.reading.read: the bounded decoder, the probability, the
input check, the decision rule), so a row says what ``predict --json`` says for the same file. What Ray adds is the
scale: the list of paths is a dataset of rows, each block of ``batch_size`` paths goes to one of a pool of actors,
and each actor holds one model (one ONNX Runtime session) and decodes the films itself. Memory is therefore bounded
by the pool: an actor holds one film at a time (a batch of them only with the drift check, at the model's input
size), and the streaming executor keeps a few blocks of paths queued per actor.

The driver (this process) writes what comes back: each finished block becomes one Parquet part under the output
folder, written to a temporary name and linked into place (pneumo.core.files.write_new_file), so an interrupted run
loses only the blocks in flight and a reader never sees half a part. A later run with the same folder skips every
file a part already holds for the same model card (its hash) and operating point, so it adds no duplicate row.
A file that cannot be read is a row with its one-line reason, never the end of the run.

Ray and PyArrow are imported where used: the dashboard and ``predict`` import nothing from here.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.core.card import ModelCard
from pneumo.core.files import LockTimeout, file_lock, now_iso, write_new_file
from pneumo.model.reading import DEFAULT_BAND

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
LOCK_NAME = "screen"  # file_lock's sidecar: .screen.lock inside the output folder
# The columns every part holds, in order. path is absolute (workers on other nodes and later runs resolve it
# alike); sha256 is the file's bytes (null when it cannot be opened); pixel_hash the decoded film's
# (pneumo.data.collection.pixel_hash), which finds the same film under two names, as predict's repeat_of does.
COLUMNS = (
    "path",
    "sha256",
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
MANIFEST_MAX_ROWS = 50_000_000  # a manifest is read whole into the driver; past this it is surely not a list of films
DEFAULT_BATCH = 32
# Ray rewrites 127.0.0.1 and "localhost" to the machine's network address, so that other nodes could reach a node
# that named itself so; a local run has no other nodes, and any other loopback address is kept as given. A local
# screening job therefore talks to its own workers over the loopback interface only.
LOCAL_NODE_IP = "127.0.0.2"
# ONNX Runtime threads per actor: the pool already puts one actor on each CPU Ray has (see _limit_threads).
ACTOR_THREADS = 1
Progress = Callable[[int, int], None]


def _schema() -> Any:
    import pyarrow as pa

    text, number = pa.string(), pa.float64()
    types = {"probability": number, "threshold": number, "warnings": pa.list_(text)}
    return pa.schema([pa.field(name, types.get(name, text)) for name in COLUMNS])


# ---------------------------------------------------------------------------------------------- what to screen


def read_manifest(path: str | Path) -> list[str]:
    """The films a CSV manifest lists in its ``path`` column (any other columns are ignored), in order; a relative
    path is taken from the manifest's folder, as pneumo.data.collection reads labelled manifests. ValueError for a
    file without that column or with no rows."""
    manifest = Path(path)
    folder = manifest.parent
    out: list[str] = []
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [name.strip().lower() for name in next(reader, [])]
            if "path" not in header:
                raise ValueError(f"{manifest}: a screening manifest needs a 'path' column; found {header[:8]}")
            column = header.index("path")
            for row in reader:
                if len(out) >= MANIFEST_MAX_ROWS:
                    raise ValueError(f"{manifest}: more than {MANIFEST_MAX_ROWS} rows; split the manifest")
                value = row[column].strip() if column < len(row) else ""
                if value:
                    out.append(str(Path(value) if Path(value).is_absolute() else folder / value))
    except UnicodeDecodeError:
        raise ValueError(f"{manifest}: not a UTF-8 CSV manifest") from None
    except csv.Error as exc:
        raise ValueError(f"{manifest}: cannot be read as CSV ({exc})") from None
    if not out:
        raise ValueError(f"{manifest}: the manifest lists no films")
    return out


def collect_paths(sources: Sequence[str | Path]) -> list[str]:
    """The files to screen, once each, in order: a folder is every image file under it, sorted (predict's rule);
    a ``.csv`` file is a manifest (read_manifest); any other path is one file, kept even when it does not exist so
    that its row says why. Paths are made absolute (not resolved: a link stays the name the user gave)."""
    from pneumo.evaluation.drift import expand

    found: list[str] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files = expand([path])
            if not files:
                raise ValueError(f"{source}: no image files in this folder")
            found += files
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += read_manifest(path)
        else:
            found.append(str(path))
    return list(dict.fromkeys(os.path.abspath(p) for p in found))


# ---------------------------------------------------------------------------------------------- the output folder


def part_files(out: str | Path) -> list[Path]:
    """The finished parts in an output folder, oldest run first (names carry the run's start time)."""
    return sorted(p for p in Path(out).glob(f"{PART_PREFIX}*{PART_SUFFIX}") if p.is_file())


def read_results(out: str | Path, columns: Sequence[str] | None = None) -> Any:
    """Every row of an output folder as one pyarrow Table (COLUMNS, or the ones asked for). ValueError naming a
    part that is not one of ours."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = list(columns or COLUMNS)
    tables = []
    for part in part_files(out):
        try:
            table = pq.read_table(part, columns=wanted)
        except (OSError, pa.ArrowException) as exc:
            raise ValueError(f"{part}: not a screening part this command wrote ({exc}); move it out of --out") from None
        tables.append(table)
    if not tables:
        return _schema().empty_table().select(wanted)
    return pa.concat_tables(tables, promote_options="permissive")


def _prior(out: Path, card_hash: str, operating_point: str) -> dict[str, str | None]:
    """The files already screened in `out` by this card and operating point: path -> pixel hash (None for an error
    row, which counts as screened: a decoder's reason does not change on a second try)."""
    table = read_results(out, ["path", "card_hash", "operating_point", "pixel_hash"])
    done: dict[str, str | None] = {}
    for path, card, point, digest in zip(
        *(table.column(c).to_pylist() for c in ("path", "card_hash", "operating_point", "pixel_hash"))
    ):
        if card == card_hash and point == operating_point:
            done[path] = digest
    return done


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder; give a folder for the Parquet parts")
    out.mkdir(parents=True, exist_ok=True)


@contextmanager
def _one_run(out: Path) -> Iterator[None]:
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


# ---------------------------------------------------------------------------------------------- the workers


def file_sha256(path: str) -> str | None:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (an archive's films are read once more, never held whole);
    None when it cannot be opened."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


@dataclass(frozen=True)
class ScreenConfig:
    """What every actor needs to read films as the driver would: the model file, the card in force (the driver's
    copy, so that every row of a run carries one card even if the file changes meanwhile), the operating point,
    the uncertain band, whether to measure the drift check's inputs, and ONNX Runtime threads per actor."""

    model_path: str
    card: ModelCard
    operating_point: str
    band: float = DEFAULT_BAND
    drift: bool = False
    threads: int = 1


class Screener:
    """One Ray Data actor: a loaded model (one ONNX Runtime session) that reads a block of paths into rows."""

    def __init__(self, config: ScreenConfig) -> None:
        from pneumo.model.loading import load_model
        from pneumo.model.reading import card_hash

        # shared_cores: an actor shares the machine with the other actors, so ONNX Runtime's threads sleep, not spin.
        loaded = load_model(config.model_path, shared_cores=True)
        self.loaded = dataclasses.replace(loaded, card=config.card, operating_point=config.operating_point)
        _limit_threads(self.loaded, config.threads)
        self.config = config
        self.card_hash = card_hash(self.loaded)
        self.reference: Any = None
        if config.drift:
            from pneumo.evaluation.drift import load_reference

            self.reference = load_reference(self.loaded)
        self.node = _node_id()

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        from pneumo.data.collection import pixel_hash
        from pneumo.model.reading import read

        loaded = self.loaded
        rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        films: list[Any] = []  # the drift check's films, at the model's input size (200 KB each at 224 px)
        film_rows: list[int] = []
        for path in batch.column("path").to_pylist():
            reading = read(loaded, path, band=self.config.band)
            rows["path"].append(path)
            rows["sha256"].append(file_sha256(path))
            rows["probability"].append(reading.probability)
            rows["prediction"].append(reading.decision)
            rows["threshold"].append(float(loaded.threshold))
            rows["operating_point"].append(self.config.operating_point)
            rows["warnings"].append(list(reading.warnings))
            # predict's wording: the reading names the file and the decoder's one-line reason.
            rows["error"].append(f"{reading.name}: {reading.error}" if reading.error else None)
            rows["model"].append(str(loaded.card.name))
            rows["card_hash"].append(self.card_hash)
            rows["repeat_of"].append(None)  # set by the driver, which sees every block in order
            rows["pixel_hash"].append(pixel_hash(reading.xray.pixels) if reading.xray is not None else None)
            rows["screened_at"].append(now_iso())
            if self.reference is not None and reading.xray is not None:
                films.append(loaded.prepare(reading.xray.pixels)[0, ..., 0])
                film_rows.append(len(rows["path"]) - 1)
        table = pa.table(rows, schema=_schema())
        n = len(rows["path"])
        distance = np.full(n, np.nan)
        score = np.full(n, np.nan)
        if films:
            distance[film_rows], score[film_rows] = self._drift_inputs(films, rows["probability"], film_rows)
        return (
            table.append_column("index", batch.column("index"))
            .append_column("node", pa.array([self.node] * n, pa.string()))
            .append_column("drift_distance", pa.array(distance))
            .append_column("drift_score", pa.array(score))
        )

    def _drift_inputs(self, films: list[Any], probabilities: list[Any], film_rows: list[int]) -> tuple[Any, Any]:
        """Each film's feature distance and score as the drift reference measures them (drift.check_batch's
        inputs); the driver tests the whole run's at the end."""
        import numpy as np

        from pneumo.evaluation import drift
        from pneumo.model import input_check

        distances = self.reference.distance(input_check.features(self.loaded, films))
        scores = drift.scores(self.loaded, films, self.reference.score_source)
        if scores is None:
            scores = np.asarray([probabilities[i] for i in film_rows], dtype=float)
        return distances, scores


def _limit_threads(loaded: Any, threads: int) -> None:
    """One ONNX Runtime session with `threads` intra-op threads in place of the engine's all-core one: several
    actors on one machine would otherwise each start a thread per core. The same graph file, checked again on the
    stored probe films before it serves (pneumo.model.serving.check_probe)."""
    engine = loaded.engine
    if engine is None or threads >= (os.cpu_count() or 1):
        return
    import onnxruntime as ort

    from pneumo.model.serving import check_probe, file_sha256

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    previous = engine.session
    engine.session = ort.InferenceSession(str(engine.path), options, providers=["CPUExecutionProvider"])
    problem, _ = check_probe(engine, loaded.path, file_sha256(loaded.path))
    if problem:  # the file changed since load_model checked it: keep the session that passed
        engine.session = previous


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


# ---------------------------------------------------------------------------------------------- Ray


RAY_OWN_DEPRECATIONS = (
    "`use_push_based_shuffle` is deprecated",
    "`use_polars` is deprecated",
    "`use_arrow_tensor_v2` is deprecated",
)


def _quiet_ray() -> None:
    """Ray's and Ray Data's own INFO and WARNING lines (execution plans, token notes, progress bars) off stderr;
    errors still reach it, and Ray's session logs keep everything."""
    import ray.data

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # Ray Data 2.60 builds its first DataContext by setting the fields it has itself deprecated: the warnings are
        # about Ray's own defaults, not about anything this module sets.
        for message in RAY_OWN_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[bool]:
    """Ray for one screening run; yields whether this call started it. A Ray already initialised in this process
    (a notebook, a test) is used as it is and left running. Otherwise ``address`` (or RAY_ADDRESS) names an existing
    cluster to join; without either, a local Ray is started on this machine's cores, without its dashboard, and shut
    down at the end."""
    import ray

    _quiet_ray()
    if ray.is_initialized():
        yield False
        return
    named = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        _check_reachable(address, named)
        ray.init(address=address, **common)
    else:
        if sys.platform.startswith("linux"):  # elsewhere Ray keeps a local run on 127.0.0.1 itself (and only it exists)
            common["_node_ip_address"] = LOCAL_NODE_IP
        ray.init(address="local", num_cpus=num_cpus or _cores(), include_dashboard=False, **common)
    try:
        yield True
    finally:
        ray.shutdown()


CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str, named: str = "--address") -> None:
    """ConnectionError (one line) when nothing answers at a cluster's HOST:PORT: Ray itself retries a dead address
    for minutes, printing a line every few seconds. "auto" and ray:// (Ray Client) addresses are left to Ray."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{named} {address}: expected HOST:PORT of a Ray cluster's head (as `ray start` prints it)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"{named} {address}: no Ray cluster answers there ({exc.strerror or exc}); nothing screened"
        ) from None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- the run


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
    progress: Progress | None = None,
) -> ScreenSummary:
    """Screen every film of `sources` (folders, files, CSV manifests with a ``path`` column) into Parquet parts under
    `out`, skipping the files an earlier run there already screened with this model card and operating point.

    actors: the pool's size (default: every CPU Ray has, one each); batch_size: paths per block, so per actor call
    and per Parquet part. drift: also test the run's films as one batch against the model's drift reference.
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
    _check_out(out)
    with _one_run(out):
        prior = _prior(out, card, point)
        todo = [(i, p) for i, p in enumerate(paths) if p not in prior]
        summary = ScreenSummary(
            screened=0,
            skipped=len(paths) - len(todo),
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
            cautions=list(loaded.card.cautions()),
        )
        config = ScreenConfig(
            str(Path(loaded.path).absolute()),  # the actors' working folder is Ray's, not this process's
            loaded.card,
            point,
            DEFAULT_BAND,
            drift=drift and drift_note is None,
            threads=ACTOR_THREADS,
        )
        measured: tuple[list[float], list[float]] = ([], [])
        if todo:
            _run(todo, paths, prior, out, config, summary, address, actors, progress, measured)
        if drift:
            summary.drift = _drift_result(loaded, measured, drift_note)
    return summary


def _run(
    todo: list[tuple[int, str]],
    paths: list[str],
    prior: dict[str, str | None],
    out: Path,
    config: ScreenConfig,
    summary: ScreenSummary,
    address: str | None,
    actors: int | None,
    progress: Progress | None,
    measured: tuple[list[float], list[float]],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    repeats = _Repeats(paths, prior)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    with ray_session(address):
        bs = summary.batch_size
        # One block per batch: the actor pool hands whole blocks to actors, so this is what spreads the work.
        blocks = [
            pa.table({"path": [p for _, p in todo[s : s + bs]], "index": [i for i, _ in todo[s : s + bs]]})
            for s in range(0, len(todo), bs)
        ]
        # No more actors than blocks: an actor with nothing to read would still load a model.
        size = min(actors or max(1, int(ray.cluster_resources().get("CPU", 1))), len(blocks))
        summary.actors = size
        context = ray.data.DataContext.get_current()
        saved = context.execution_options.preserve_order
        # In input order, so that a repeated film is named as a repeat of the earlier file, as predict names it.
        context.execution_options.preserve_order = True
        try:
            with warnings.catch_warnings():
                # Ray 2.60 warns that extra remote arguments to map_batches go in 2.64, and names no replacement
                # for max_restarts: pyproject keeps ray below 2.64 until one exists.
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=Warning)
                dataset = ray.data.from_arrow(blocks).map_batches(
                    Screener,
                    fn_constructor_args=(config,),
                    batch_size=bs,
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(size=size),
                    num_cpus=1,
                    # Ray Data restarts a dead actor and retries its block without end: a film that kills its
                    # reader (the kernel's OOM killer, a crash in a decoder library) would be read again forever.
                    # Here the run stops instead, saying so, and a rerun resumes from the parts written.
                    max_restarts=0,
                )
            started = time.perf_counter()
            done = 0
            if progress:
                progress(0, len(todo))
            for block in _blocks(dataset, summary):
                table = repeats.note(block)
                buffer = io.BytesIO()
                pq.write_table(table.select(list(COLUMNS)).cast(_schema()), buffer)
                name = f"{PART_PREFIX}{run_id}-{summary.parts:06d}{PART_SUFFIX}"
                write_new_file(out, name, buffer.getvalue())
                summary.parts += 1
                summary.errors += table.num_rows - table.column("error").null_count  # rows with a reason
                for node in table.column("node").to_pylist():
                    summary.nodes[node] = summary.nodes.get(node, 0) + 1
                for distance, score in zip(
                    table.column("drift_distance").to_pylist(), table.column("drift_score").to_pylist()
                ):
                    if distance is not None and distance == distance:  # NaN: no film to measure
                        measured[0].append(distance)
                        measured[1].append(score)
                done += table.num_rows
                summary.screened = done
                if progress:
                    progress(done, len(todo))
            summary.seconds = time.perf_counter() - started
            summary.films_per_s = done / summary.seconds if summary.seconds > 0 else 0.0
        finally:
            context.execution_options.preserve_order = saved


def _blocks(dataset: Any, summary: ScreenSummary) -> Iterator[Any]:
    """The screened blocks as the actors finish them (in input order); a dead actor ends the run with one line."""
    import ray.exceptions

    try:
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if block.num_rows:
                yield block
    except ray.exceptions.RayActorError as exc:
        why = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise ChildProcessError(
            f"a Ray worker reading films died ({why}); {summary.screened} films in {summary.parts} parts are kept "
            f"in {summary.out}: run the same command again to resume"
        ) from None


class _Repeats:
    """predict's repeat rule (pneumo.model.reading.Repeats) over a run that arrives block by block: a film whose
    decoded pixels equal an earlier input's is named a repeat of it (``repeat_of`` and the same warning). Films an
    earlier run screened count by their stored pixel hash, at their place in this run's input list."""

    def __init__(self, paths: list[str], prior: dict[str, str | None]) -> None:
        self.first: dict[str, tuple[int, str]] = {}
        for index, path in enumerate(paths):
            digest = prior.get(path)
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
        table = table.set_column(table.schema.get_field_index("warnings"), "warnings", pa.array(notes))
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
    yield (
        f"screened {summary.screened} films ({summary.errors} unreadable) in {summary.seconds:.1f} s "
        f"({summary.films_per_s:.1f} films/s, {summary.actors} actors); skipped {summary.skipped} already screened "
        f"by {summary.model} (card {summary.card_hash}) at operating point '{summary.operating_point}'"
    )
    if summary.drift is not None:
        drift = summary.drift
        yield (
            f"drift: {'SHIFTED' if drift.get('shifted') else 'no shift found'} "
            f"(p = {drift['p_value']:.3g}, n = {drift['n']})"
            if drift.get("available")
            else f"drift: not checked ({drift.get('reason')})"
        )
    yield f"results: {summary.parts} new Parquet parts in {summary.out}"
