"""`pneumo screen` (Ray Data, local) beside `pneumo evaluate` on the same films, one actor against two, and what a
film costs: the figures behind the README's estimate for a million films.

    python bench/screen.py [--films 0] [--rounds 5] [--batch-size 32] [--out bench/screen-results.json]

--films 0 (the default) is every film of the shared training folder (5,216), copied to a temporary folder first
(the page cache then holds them: reads are from memory, see read_ms). Each side runs once (a warm-up) on the first
64 films; then every round runs each side once on all films, in a new random order, so load from other processes and
call order fall on every side alike. Each figure is the median of the rounds with its [p10, p90]; the machine's
1-minute load average is recorded before every round. What each side's time holds:

- screen_2_actors, screen_1_actor: the whole screen as the command runs it, into a new folder: a local Ray started
  (ray_start_s, its own figure) and shut down, the driver's model load, the actors' start-up (each loads the
  model), every film read, the Parquet parts written. ``*_steady`` is the run's own films/s from the first block
  handed to Ray (what the command prints): the per-actor rate of the estimate.
- evaluate: ``pneumo.evaluation.external.evaluate_data`` on the films as a labelled folder: model load, batched
  probabilities, metrics and the drift check (its second pass over the films), what ``pneumo evaluate`` does.
- costs: one film's parts, in this process, on every tenth film (ms per film): the bytes read (read_ms), decoding
  (decode_ms, these 224 px JPEGs), what grows with a film's size (film_work_ms: stat, SHA-256 of the bytes,
  decoding, resize, pixel hash), the same for a full-size film (a training film enlarged to 2,048 × 2,500 px, as an
  uncompressed 12-bit DICOM and as a JPEG: film_work_full_size_*_ms, read_full_size_*_ms), the network for 32
  films at once on one thread (probability and features in one pass, what an actor runs), the input check on
  those features, and the driver's share (the repeat rule and the Parquet part, per film).

The estimate (results["estimate"]) puts those together on paper: see estimate().
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
WARM_UP_FILMS = 64
FULL_SIZE = (2048, 2500)  # width × height of the full-size film: a typical digital chest radiograph's
# What the estimate assumes and does not measure: the archive's read bandwidth, shared by every node (a PACS or a
# file server), for three common links; and how many cores a node has.
ASSUMED_BANDWIDTH_MB_S = {"1 Gb/s link": 110.0, "10 Gb/s link": 1100.0, "25 Gb/s link": 2750.0}
ASSUMED_NODE_CORES = 16
NODES = (1, 4, 16, 64)


def film_folder(n: int, dest: Path) -> tuple[Path, str]:
    """A labelled folder (NORMAL/ and PNEUMONIA/) of n films, every film of the shared folder for n = 0, and where
    they came from. Synthetic films where the shared folder is absent."""
    import numpy as np
    from PIL import Image

    for cls in ("NORMAL", "PNEUMONIA"):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        if SHARED.is_dir():
            files = sorted((SHARED / cls).iterdir())
            for path in files if n == 0 else files[: max(1, n // 2)]:
                shutil.copy(path, dest / cls / path.name)
        else:
            rng = np.random.default_rng(0)
            for i in range(max(1, (n or 200) // 2)):
                Image.fromarray((rng.random((512, 512)) * 255).astype("uint8")).save(dest / cls / f"{cls}-{i}.png")
    return dest, ("shared training folder" if SHARED.is_dir() else "synthetic noise films")


def warm_up_folder(paths: list[str], dest: Path) -> Path:
    """The first WARM_UP_FILMS films, half of each class, as a labelled folder."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for path in [p for p in paths if Path(p).parent.name == cls][: WARM_UP_FILMS // 2]:
            shutil.copy(path, dest / cls / Path(path).name)
    return dest


def full_size_films(source: str, folder: Path) -> dict[str, Path]:
    """A training film enlarged to FULL_SIZE, as an archive holds such films: a 12-bit uncompressed DICOM (DX, what
    a PACS stores and sends) and a JPEG (quality 90, an export)."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    with Image.open(source) as image:
        large = image.convert("L").resize(FULL_SIZE, Image.Resampling.BICUBIC)
    jpeg = folder / "full-size.jpeg"
    large.save(jpeg, quality=90)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    pixels = (np.asarray(large, dtype=np.uint16) * 16).astype(np.uint16)  # 12 bits stored
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    dicom = folder / "full-size.dcm"
    ds.save_as(dicom, enforce_file_format=True)
    return {"dicom": dicom, "jpeg": jpeg}


def interleave(
    fns: dict[str, Callable[[], Any]], warm_ups: dict[str, Callable[[], Any]], rounds: int, seed: int = 0
) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds of every call of each function over `rounds` rounds in random orders, after one warm-up call each;
    and the 1-minute load average before each round."""
    order = random.Random(seed)
    for fn in warm_ups.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    loads = []
    for r in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        names = list(fns)
        order.shuffle(names)
        for name in names:
            started = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - started)
            print(f"round {r + 1}/{rounds} {name:<16} {times[name][-1]:7.1f} s", file=sys.stderr, flush=True)
    return times, loads


def figure(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median and [p10, p90] of per-round figures."""
    import numpy as np

    return {
        "median": round(statistics.median(values), digits),
        "p10": round(float(np.percentile(values, 10)), digits),
        "p90": round(float(np.percentile(values, 90)), digits),
    }


class Costs:
    """One film's parts, in ms per film, measured on a sample of the films (see the module docstring)."""

    def __init__(self, sample: list[str], full: dict[str, Path], work: Path) -> None:
        from pneumo.model.loading import load_model

        self.sample, self.full, self.work = sample, full, work
        self.loaded = load_model(shared_cores=True, threads=1)  # as an actor holds it
        self.rounds: dict[str, list[float]] = {}

    def film_work(self, path: str) -> Any:
        """What an actor does to one file that grows with its size: stat, SHA-256 of the bytes, decoding, the
        resize to the model's input and the pixel hash (pneumo.integrations.archive_job.Screener)."""
        from pneumo.data.collection import pixel_hash
        from pneumo.data.decode import load_xray
        from pneumo.integrations.archive_job import file_sha256
        from pneumo.integrations.archive_store import file_key

        file_key(path)
        file_sha256(path)
        pixels = load_xray(path).pixels
        pixel_hash(pixels)
        return self.loaded.prepare(pixels)

    def __call__(self) -> None:
        import pyarrow as pa

        from pneumo.data.collection import pixel_hash
        from pneumo.data.decode import load_xray
        from pneumo.integrations import archive, archive_store
        from pneumo.integrations.archive_job import block_schema
        from pneumo.model import input_check

        n, loaded = len(self.sample), self.loaded
        parts: dict[str, float] = {}

        def timed(name: str, fn: Callable[[], Any], count: int = n) -> Any:
            started = time.perf_counter()
            value = fn()
            parts[name] = (time.perf_counter() - started) / count * 1000
            return value

        timed("read_ms", lambda: [Path(p).read_bytes() for p in self.sample])
        films = timed("decode_ms", lambda: [load_xray(p).pixels for p in self.sample])
        timed("film_work_ms", lambda: [self.film_work(p) for p in self.sample])
        for kind, path in self.full.items():
            timed(f"read_full_size_{kind}_ms", lambda path=path: [path.read_bytes() for _ in range(3)], 3)
            timed(f"film_work_full_size_{kind}_ms", lambda path=path: [self.film_work(str(path)) for _ in range(3)], 3)
        batches = [loaded.prepare(films[i : i + 32]) for i in range(0, n, 32)]
        out = timed("network_ms", lambda: [loaded.predict_with_features(b) for b in batches])
        features = [f for _, fs in out for f in fs]
        density = loaded.density
        timed(
            "input_check_ms",
            lambda: [
                input_check.inspect(loaded, film, density, own_features=feature[None])
                for film, feature in zip(films, features)
            ],
        )
        # The driver: the repeat rule and one Parquet part per block of 32 rows, as archive._Run.take does them.
        rows = [
            {"path": p, "index": i, "pixel_hash": pixel_hash(f), "warnings": []}
            for i, (p, f) in enumerate(zip(self.sample, films))
        ]
        blocks = [pa.Table.from_pylist(rows[i : i + 32], schema=block_schema()) for i in range(0, n, 32)]
        out_dir = Path(tempfile.mkdtemp(dir=self.work))

        def drive() -> None:
            repeats = archive._Repeats(self.sample, {})
            writer = archive_store.PartWriter(out_dir)
            for block in blocks:
                writer.write(repeats.note(block))

        timed("driver_ms", drive)
        shutil.rmtree(out_dir, ignore_errors=True)
        for name, value in parts.items():
            self.rounds.setdefault(name, []).append(value)


def bench_screen(films: int = 0, rounds: int = 5, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """screen (two actors, one) against evaluate on the same films, and one film's costs; the results as a dict."""
    from pneumo.evaluation.drift import expand
    from pneumo.evaluation.external import evaluate_data
    from pneumo.integrations import archive

    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-screen-"))
    try:
        folder, source = film_folder(films, work / "films")
        paths = expand([folder])
        n = len(paths)
        small = warm_up_folder(paths, work / "warm-up")
        full = full_size_films(paths[0], work)
        outs = iter(range(1_000_000))
        steady: dict[str, list[float]] = {}
        ray_start: list[float] = []

        def screen(actors: int | None, data: Path = folder, record: bool = True) -> Callable[[], None]:
            def run() -> None:
                started = time.perf_counter()
                with archive.ray_session():
                    if record:
                        ray_start.append(time.perf_counter() - started)
                    summary = archive.screen([data], work / f"out-{next(outs)}", batch_size=batch_size, actors=actors)
                if data == folder:
                    assert summary.screened == n and summary.errors == 0
                if record:
                    steady.setdefault(f"screen_{actors or 2}_actor{'s' if actors != 1 else ''}", []).append(
                        summary.films_per_s
                    )

            return run

        def evaluate(data: Path = folder) -> Callable[[], None]:
            return lambda: evaluate_data(None, data)

        costs = Costs(paths[::10], full, work)
        sides = {"screen_2_actors": screen(None), "screen_1_actor": screen(1), "evaluate": evaluate(), "costs": costs}
        warm_ups = {
            "screen_2_actors": screen(None, small, record=False),
            "screen_1_actor": screen(1, small, record=False),
            "evaluate": evaluate(small),
        }
        times, loads = interleave(sides, warm_ups, rounds, seed)
        rates = {name: [n / t for t in values] for name, values in times.items() if name != "costs"}
        results: dict[str, Any] = {
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": f"python bench/screen.py --films {films} --rounds {rounds} --batch-size {batch_size}",
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "load_average_1min_before_each_round": loads,
            "films": n,
            "film_source": source,
            "film_side_px": 224 if source.startswith("shared") else 512,
            "rounds": rounds,
            "batch_size": batch_size,
            "ray_start_s": figure(ray_start, 2),
            "films_per_s": {name: figure(values, 1) for name, values in rates.items()},
            "steady_films_per_s": {name: figure(values, 1) for name, values in steady.items()},
            "seconds_per_run": {name: figure(values, 1) for name, values in times.items()},
            "ms_per_film": {name: figure(values, 3) for name, values in costs.rounds.items()},
            "full_size_films": {
                "px": list(FULL_SIZE),
                "bytes": {kind: path.stat().st_size for kind, path in full.items()},
                "formats": {"dicom": "DX, 12 bits stored in 16, uncompressed", "jpeg": "JPEG, quality 90"},
            },
        }
        results["screen_over_evaluate"] = figure(
            [s / e for s, e in zip(rates["screen_2_actors"], rates["evaluate"])], 3
        )
        results["two_actors_over_one"] = figure(
            [two / one for two, one in zip(steady["screen_2_actors"], steady["screen_1_actor"])], 3
        )
        results["estimate"] = estimate(results)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def estimate(results: dict[str, Any]) -> dict[str, Any]:
    """A million films on paper, from the medians measured here.

    One actor's time per film is the inverse of screen_1_actor's steady rate on the training films; for an
    archive's full-size films, what grows with a film's size (film_work_ms: its hash, decoding, resize and pixel
    hash) is swapped for the full-size film's. A node of ASSUMED_NODE_CORES cores runs one actor per core at the
    efficiency two actors reached on two cores here (two_actors_over_one / 2). The cluster scales with nodes until
    the archive's read bandwidth, shared by every node, is used up (film bytes × films/s), or the one driver, which
    writes every part, is (driver_ms); Ray's start-up is paid once. The headline is the uncompressed DICOM a PACS
    holds; ``jpeg`` is the same for an archive of JPEG exports.
    """
    ms = {name: value["median"] for name, value in results["ms_per_film"].items()}
    actor_rate = results["steady_films_per_s"]["screen_1_actor"]["median"]
    efficiency = min(1.0, results["two_actors_over_one"]["median"] / 2)
    actor_ms_small = 1000 / actor_rate
    driver_rate = 1000 / ms["driver_ms"]
    start = results["ray_start_s"]["median"]

    def for_format(kind: str) -> dict[str, Any]:
        actor_ms = actor_ms_small - ms["film_work_ms"] + ms[f"film_work_full_size_{kind}_ms"]
        node_rate = ASSUMED_NODE_CORES * efficiency * 1000 / actor_ms
        film_mb = results["full_size_films"]["bytes"][kind] / 1e6
        return {
            "actor_ms_per_full_size_film": round(actor_ms, 2),
            "node_films_per_s": round(node_rate, 1),
            "hours_on_nodes": {str(n): round((1e6 / (n * node_rate) + start) / 3600, 2) for n in NODES},
            "film_mb": round(film_mb, 2),
            "node_read_mb_s": round(node_rate * film_mb, 1),
            "nodes_until_storage_limit": {
                link: round(mb / (film_mb * node_rate), 2) for link, mb in ASSUMED_BANDWIDTH_MB_S.items()
            },
            # However many nodes read, the archive must deliver every film's bytes once.
            "hours_to_read_at_bandwidth": {
                link: round(1e6 * film_mb / mb / 3600, 2) for link, mb in ASSUMED_BANDWIDTH_MB_S.items()
            },
            "nodes_until_driver_limit": round(driver_rate / node_rate, 1),
        }

    return {
        "films": 1_000_000,
        "film": "full-size DICOM (full_size_films)",
        "actor_ms_per_film_measured": round(actor_ms_small, 2),
        "parallel_efficiency": round(efficiency, 3),
        "assumed_node_cores": ASSUMED_NODE_CORES,
        "assumed_bandwidth_mb_s": ASSUMED_BANDWIDTH_MB_S,
        "driver_films_per_s_limit": round(driver_rate),
        **for_format("dicom"),
        "jpeg": for_format("jpeg"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=0, help="films to screen (0: every film of the shared folder)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "bench" / "screen-results.json"))
    args = parser.parse_args()
    results = bench_screen(args.films, args.rounds, args.batch_size)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("films_per_s", "steady_films_per_s", "estimate")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
