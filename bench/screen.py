"""`pneumo screen` (Ray Data, local) beside `pneumo evaluate` and `pneumo predict` on the same films: films/s.

    python bench/screen.py [--films 200] [--rounds 5] [--batch-size 32] [--out bench/screen-results.json]

Every round runs each side once, in a new random order (after one warm-up call each), so load drift and call order
fall on every side alike; each figure is the median of the rounds with its [p10, p90]. What each side's time holds:

- screen: the whole ``pneumo.integrations.archive.screen`` call into a new folder, on a local Ray started once
  before the rounds (its start-up is reported apart): the driver's model load, the actors' start-up (each loads
  the model), every film read, the Parquet parts written. ``screen_steady`` is the same run's own films/s from the
  first block handed to Ray, the figure the command prints.
- evaluate: ``pneumo.evaluation.external.evaluate_data`` on the films as a labelled folder: model load, batched
  probabilities, metrics and the drift check (its second pass over the films), what ``pneumo evaluate`` does.
- predict: ``load_model`` and the per-film reading loop ``pneumo predict`` runs (decoder, probability, input
  check), in this process.

The films are the first N/2 of each class of the shared training folder (synthetic films where it is absent).
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


def film_folder(n: int, dest: Path) -> tuple[Path, str]:
    """A labelled folder of n films (NORMAL/ and PNEUMONIA/, half each) and where they came from."""
    import numpy as np
    from PIL import Image

    per_class = max(1, n // 2)
    for cls in ("NORMAL", "PNEUMONIA"):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        if SHARED.is_dir():
            for path in sorted((SHARED / cls).iterdir())[:per_class]:
                shutil.copy(path, dest / cls / path.name)
        else:
            rng = np.random.default_rng(0)
            for i in range(per_class):
                Image.fromarray((rng.random((512, 512)) * 255).astype("uint8")).save(dest / cls / f"{cls}-{i}.png")
    return dest, ("shared training folder" if SHARED.is_dir() else "synthetic noise films")


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of every call of each function: one warm-up call each, then `rounds` rounds in random orders."""
    order = random.Random(seed)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        names = list(fns)
        order.shuffle(names)
        for name in names:
            started = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - started)
    return times


def figure(values: list[float]) -> dict[str, float]:
    """Median and [p10, p90] of per-round figures."""
    import numpy as np

    return {
        "median": round(statistics.median(values), 3),
        "p10": round(float(np.percentile(values, 10)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
    }


def bench_screen(films: int = 200, rounds: int = 5, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """screen vs evaluate vs predict films/s on the same films (see the module docstring); the results as a dict."""
    from pneumo.evaluation.drift import expand
    from pneumo.evaluation.external import evaluate_data
    from pneumo.integrations import archive
    from pneumo.model.loading import load_model
    from pneumo.model.reading import read

    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-screen-"))
    try:
        folder, source = film_folder(films, work / "films")
        paths = expand([folder])
        n = len(paths)
        steady: list[float] = []
        outs = iter(range(1_000_000))

        def screen() -> None:
            summary = archive.screen([folder], work / f"out-{next(outs)}", batch_size=batch_size)
            assert summary.screened == n
            steady.append(summary.films_per_s)

        def evaluate() -> None:
            report = evaluate_data(None, folder)
            assert report["n"] == n

        def predict() -> None:
            loaded = load_model()
            for path in paths:
                read(loaded, path)

        started = time.perf_counter()
        with archive.ray_session():
            ray_start = time.perf_counter() - started
            times = interleave({"screen": screen, "evaluate": evaluate, "predict": predict}, rounds, seed)
        rates = {name: [n / t for t in values] for name, values in times.items()}
        results: dict[str, Any] = {
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "films": n,
            "film_source": source,
            "rounds": rounds,
            "batch_size": batch_size,
            "ray_start_s": round(ray_start, 2),
            "films_per_s": {name: figure(values) for name, values in rates.items()},
            "seconds_per_run": {name: figure(values) for name, values in times.items()},
        }
        results["films_per_s"]["screen_steady"] = figure(steady[1:])  # the warm-up call's left out, as above
        results["screen_over_evaluate"] = round(
            results["films_per_s"]["screen"]["median"] / results["films_per_s"]["evaluate"]["median"], 3
        )
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "bench" / "screen-results.json"))
    args = parser.parse_args()
    results = bench_screen(args.films, args.rounds, args.batch_size)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["films_per_s"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
