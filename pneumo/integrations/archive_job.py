"""The Ray side of ``python -m pneumo screen``: Ray itself (local or a cluster), the pool of actors that read films,
and the dataset of paths they work through.

The list of paths is a dataset of rows; each block of ``batch_size`` paths goes to one actor of a pool, and each
actor holds one model (one ONNX Runtime session, one thread) and decodes its films itself. An actor reads a block
as ``predict`` reads each film (the bounded decoder, the probability, the input check, the decision rule), but puts
the block's films through the network together, once: the probability and the input check's pooled features come
out of one pass (LoadedModel.predict_with_features), where ``predict`` passes each film twice, one at a time. Memory
stays bounded by the pool: an actor holds the decoded films of one block, and flushes them through the network
early once they pass HELD_BYTES (full-size films of 20 MB and more each).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pneumo.core import files
from pneumo.core.card import ModelCard
from pneumo.core.files import now_iso
from pneumo.integrations.archive_store import file_key, schema
from pneumo.model.reading import DEFAULT_BAND

# Ray rewrites 127.0.0.1 and "localhost" to the machine's network address, so that other nodes could reach a node
# that named itself so; a local run has no other nodes, and any other loopback address is kept as given. A local
# screening job therefore talks to its own workers over the loopback interface only.
LOCAL_NODE_IP = "127.0.0.2"
# ONNX Runtime threads per actor: the pool already puts one actor on each CPU Ray has.
ACTOR_THREADS = 1
HELD_BYTES = 256 * 2**20  # decoded films an actor holds before it puts them through the network
CONNECT_TIMEOUT_S = 10.0
# What an actor adds to each row beside COLUMNS, for the driver only (never written to a part): the row's place in
# the input list, the Ray node that read it, the drift check's inputs, the decoder's reason alone (an error row says
# "path: reason"), and the pixel hash the readings database keys a film by (with --log).
EXTRA = ("index", "node", "drift_distance", "drift_score", "reason", "pixel_sha256")


def file_sha256(path: str) -> str | None:
    """SHA-256 of a file's bytes (read in chunks, never held whole); None when it cannot be opened."""
    try:
        return files.file_sha256(path)
    except OSError:
        return None


@dataclass(frozen=True)
class ScreenConfig:
    """What every actor needs to read films as the driver would: the model file, the card in force (the driver's
    copy, so that every row of a run carries one card even if the file changes meanwhile), the operating point,
    the uncertain band, whether to measure the drift check's inputs, ONNX Runtime threads per actor, and whether
    to take the readings database's pixel hash of each film."""

    model_path: str
    card: ModelCard
    operating_point: str
    band: float = DEFAULT_BAND
    drift: bool = False
    threads: int = ACTOR_THREADS
    log: bool = False


def block_schema() -> Any:
    """The schema of a block an actor returns: the parts' COLUMNS, then EXTRA."""
    import pyarrow as pa

    types = {"index": pa.int64(), "drift_distance": pa.float64(), "drift_score": pa.float64()}
    return pa.schema([*schema(), *(pa.field(name, types.get(name, pa.string())) for name in EXTRA)])


class Screener:
    """One Ray Data actor: a loaded model (one ONNX Runtime session) that reads a block of paths into rows."""

    def __init__(self, config: ScreenConfig) -> None:
        from pneumo.model.loading import load_model
        from pneumo.model.reading import card_hash

        # shared_cores: an actor shares the machine with the other actors, so ONNX Runtime's threads sleep, not spin.
        loaded = load_model(config.model_path, shared_cores=True, threads=config.threads)
        self.loaded = dataclasses.replace(loaded, card=config.card, operating_point=config.operating_point)
        self.config = config
        self.card_hash = card_hash(self.loaded)
        self.reference: Any = None
        if config.drift:
            from pneumo.evaluation.drift import load_reference

            self.reference = load_reference(self.loaded)
        self.node = _node_id()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from pneumo.data.decode import load_xray
        from pneumo.data.pixels import InvalidImageError

        rows = [
            self._row(path, index) for path, index in zip(*(batch.column(c).to_pylist() for c in ("path", "index")))
        ]
        held: list[tuple[dict[str, Any], Any]] = []
        held_bytes = 0
        for row in rows:
            try:
                xray = load_xray(row["path"])
            except InvalidImageError as exc:
                # predict's wording: the file's name and the decoder's one-line reason.
                row["error"], row["reason"] = f"{exc.name}: {exc.reason}", exc.reason
                continue
            held.append((row, xray))
            held_bytes += xray.pixels.nbytes
            if held_bytes >= HELD_BYTES:
                self._read(held)
                held, held_bytes = [], 0
        self._read(held)
        return pa.Table.from_pylist(rows, schema=block_schema())

    def _row(self, path: str, index: int) -> dict[str, Any]:
        # The size and time first, then the bytes: a file changed meanwhile then looks changed to the next run.
        key = file_key(path)
        return {
            "path": path,
            "size": key[0] if key else None,
            "mtime_ns": key[1] if key else None,
            "sha256": file_sha256(path),
            "threshold": float(self.loaded.threshold),
            "operating_point": self.config.operating_point,
            "warnings": [],
            "model": str(self.loaded.card.name),
            "card_hash": self.card_hash,
            "screened_at": now_iso(),
            "index": index,
            "node": self.node,
        }

    def _read(self, held: list[tuple[dict[str, Any], Any]]) -> None:
        """The held films through the network together, then each through the input check and the decision rule
        (pneumo.model.reading.read's steps, in its order)."""
        if not held:
            return
        from pneumo.data.collection import pixel_hash
        from pneumo.model import input_check
        from pneumo.model.reading import decide

        loaded = self.loaded
        batch = loaded.prepare([xray.pixels for _, xray in held])
        density = loaded.density
        features = None
        if density is not None or self.reference is not None:
            probabilities, features = loaded.predict_with_features(batch)
        else:
            probabilities = loaded.predict(batch)
        sha256: Any = None
        if self.config.log:  # SQLAlchemy comes with the records package: imported by an actor only with --log
            from pneumo.integrations.records import pixel_sha256 as sha256
        for k, (row, xray) in enumerate(held):
            probability = float(probabilities[k])
            found = input_check.inspect(
                loaded, xray.pixels, density, xray.colour, None if features is None else features[k : k + 1]
            )
            row["probability"] = probability
            row["prediction"] = decide(probability, loaded.threshold, self.config.band, found.assessable)
            row["warnings"] = [*xray.warnings, *found.warnings]  # the decoder's notes first, as read() puts them
            row["pixel_hash"] = pixel_hash(xray.pixels)
            if sha256 is not None:
                row["pixel_sha256"] = sha256(xray.pixels)
        if self.reference is not None and features is not None:
            distances, scores = self._drift_inputs(batch, probabilities, features)
            for k, (row, _) in enumerate(held):
                row["drift_distance"], row["drift_score"] = float(distances[k]), float(scores[k])

    def _drift_inputs(self, batch: Any, probabilities: Any, features: Any) -> tuple[Any, Any]:
        """Each film's feature distance and score as the drift reference measures them (drift.check_batch's
        inputs); the driver tests the whole run's at the end."""
        from pneumo.evaluation import drift

        source = self.reference.score_source
        # The served probability is the reference's score unless it was made of the first member's (drift.scores).
        scores = probabilities if source in ("model", "none") else drift.scores(self.loaded, batch, source)
        return self.reference.distance(features), scores


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


# ---------------------------------------------------------------------------------------------- Ray


RAY_OWN_DEPRECATIONS = (
    "`use_push_based_shuffle` is deprecated",
    "`use_polars` is deprecated",
    "`use_arrow_tensor_v2` is deprecated",
)


def quiet_ray() -> None:
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

    quiet_ray()
    if ray.is_initialized():
        yield False
        return
    named = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    common: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        check_reachable(address, named)
        ray.init(address=address, **common)
    else:
        if sys.platform.startswith("linux"):  # elsewhere Ray keeps a local run on 127.0.0.1 itself (and only it exists)
            common["_node_ip_address"] = LOCAL_NODE_IP
        ray.init(address="local", num_cpus=num_cpus or cores(), include_dashboard=False, **common)
    try:
        yield True
    finally:
        ray.shutdown()


def check_reachable(address: str, named: str = "--address") -> None:
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


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class WorkerDied(RuntimeError):
    """A Ray actor reading films died (the kernel's OOM killer, a crash in a decoder library); the message is Ray's
    last line about it."""


@contextmanager
def screening_job(
    todo: list[tuple[int, str]], config: ScreenConfig, batch_size: int, actors: int | None
) -> Iterator[tuple[int, Iterator[Any]]]:
    """The pool's size and the screened blocks (pyarrow tables of COLUMNS and EXTRA), in input order, as the actors
    finish them; Ray must be running (ray_session). A dead actor ends the iteration with WorkerDied."""
    import pyarrow as pa
    import ray
    import ray.data

    # One block per batch: the actor pool hands whole blocks to actors, so this is what spreads the work.
    blocks = [
        pa.table({"path": [p for _, p in todo[s : s + batch_size]], "index": [i for i, _ in todo[s : s + batch_size]]})
        for s in range(0, len(todo), batch_size)
    ]
    # No more actors than blocks: an actor with nothing to read would still load a model.
    size = min(actors or max(1, int(ray.cluster_resources().get("CPU", 1))), len(blocks))
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
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=1,
                # Ray Data restarts a dead actor and retries its block without end: a film that kills its
                # reader would be read again forever. Here the run stops instead, saying so, and a rerun
                # resumes from the parts written.
                max_restarts=0,
            )
        yield size, _blocks(dataset)
    finally:
        context.execution_options.preserve_order = saved


def _blocks(dataset: Any) -> Iterator[Any]:
    import ray.exceptions

    try:
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if block.num_rows:
                yield block
    except ray.exceptions.RayActorError as exc:
        raise WorkerDied(str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__) from None
