"""pneumo benchmarks: speed and memory against what a user would otherwise write.

    python bench/run.py            # full: the shared training folder → bench/results.json
    python bench/run.py --quick    # small inputs, under a minute → bench/results-quick.json

Every figure is the median of repeated measurements after a warm-up. Compared pipelines run in the
same process, alternately, and their ratio is reported. On a GPU the figures go to results-gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
BATCH = 32


def timings(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock seconds of repeats calls of fn."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def make_folder(n_per_class: int, dest: Path) -> Path:
    """A class-folder subset of the shared data (or synthetic images where it is absent)."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        if SHARED.is_dir():
            for path in sorted((SHARED / cls).iterdir())[:n_per_class]:
                shutil.copy(path, dest / cls / path.name)
        else:
            import numpy as np
            from PIL import Image

            rng = np.random.default_rng(0)
            for i in range(n_per_class):
                Image.fromarray((rng.random((224, 224)) * 255).astype("uint8")).save(dest / cls / f"{cls}-{i}.jpeg")
    return dest


def keras_augmenter(aug: Any) -> Any:
    """The same augmentation as pneumo's, the way Keras tutorials write it: one layer per transform."""
    import keras

    return keras.Sequential([
        keras.layers.RandomRotation(aug.rotation_deg / 360.0, fill_mode="reflect"),
        keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="reflect"),
        keras.layers.RandomZoom((-aug.zoom, aug.zoom), fill_mode="reflect"),
        keras.layers.RandomBrightness(aug.brightness, value_range=(0.0, 1.0)),
        keras.layers.RandomContrast(aug.contrast, value_range=(0.0, 1.0)),
    ])


def bench_pipeline(folder: Path, size: int, epochs: int, repeats: int) -> dict[str, float]:
    import keras
    import tensorflow as tf

    from pneumo import data as D

    frame = D.scan(folder).frame
    aug = D.Augmentation()
    keras_aug = keras_augmenter(aug)

    def ours() -> None:
        ds = D.make_dataset(frame, size, BATCH, training=True, augmentation=aug)
        for _ in range(epochs):
            for _batch in ds:
                pass

    def theirs() -> None:
        ds = keras.utils.image_dataset_from_directory(
            folder, labels="inferred", label_mode="binary", color_mode="grayscale", image_size=(size, size),
            batch_size=BATCH, shuffle=True, seed=0, verbose=False)
        ds = ds.map(lambda x, y: (keras_aug(x / 255.0, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        for _ in range(epochs):
            for _batch in ds:
                pass

    ours(), theirs()  # warm-up: graph tracing, file cache
    t_ours, t_theirs = [], []
    for _ in range(repeats):  # alternate, so drift in machine load hits both
        t_ours += timings(ours, 1)
        t_theirs += timings(theirs, 1)
    n = len(frame) * epochs
    ours_ips, theirs_ips = n / statistics.median(t_ours), n / statistics.median(t_theirs)
    return {"pipeline_images_per_s": round(ours_ips, 1), "keras_pipeline_images_per_s": round(theirs_ips, 1),
            "pipeline_speedup_vs_keras": round(ours_ips / theirs_ips, 2)}


def bench_training(folder: Path, steps: int, repeats: int) -> dict[str, float]:
    import keras

    from pneumo import data as D
    from pneumo.models import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_model

    size = ARCHITECTURES[DEFAULT_ARCHITECTURE].input_size
    frame = D.scan(folder).frame
    ds = D.make_dataset(frame, size, BATCH, training=True, augmentation=D.Augmentation()).repeat()
    model = build_model(DEFAULT_ARCHITECTURE, size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="binary_crossentropy", metrics=[keras.metrics.AUC()])
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)  # warm-up: tracing, cache fill
    times = timings(lambda: model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0), repeats)
    return {"train_images_per_s": round(steps * BATCH / statistics.median(times), 1)}


def bench_inference(model_path: Path | None, folder: Path, repeats: int) -> dict[str, float]:
    from pneumo import data as D
    from pneumo import evaluate as E
    from pneumo import explain
    from pneumo.imaging import load_image
    from pneumo.models import load_model

    loaded = load_model(model_path)
    frame = D.scan(folder).frame
    blobs = [Path(p).read_bytes() for p in frame["path"][:16]]

    def ours(data: bytes) -> float:
        return float(loaded.predict(load_image(data))[0])

    def keras_predict(data: bytes) -> float:
        # What a Keras user writes for one image: model.predict on a batch of one.
        return float(loaded.model.predict(loaded.prepare(load_image(data)), verbose=0)[0, 0])

    for data in blobs[:3]:
        ours(data), keras_predict(data)
    t_ours, t_keras = [], []
    for i in range(repeats):
        data = blobs[i % len(blobs)]
        t_ours += timings(lambda: ours(data), 1)
        t_keras += timings(lambda: keras_predict(data), 1)
    out = {
        "predict_latency_ms_p50": round(1000 * statistics.median(t_ours), 2),
        "predict_latency_ms_p95": round(1000 * percentile(t_ours, 95), 2),
        "keras_model_predict_latency_ms_p50": round(1000 * statistics.median(t_keras), 2),
        "predict_speedup_vs_keras_model_predict": round(statistics.median(t_keras) / statistics.median(t_ours), 2),
    }
    img = load_image(blobs[0])
    for method, key in (("gradcam", "gradcam_latency_ms_p50"), ("gradcam++", "gradcampp_latency_ms_p50")):
        explain.overlay(img, explain.gradcam(loaded, img, method=method))  # warm-up
        times = timings(lambda: explain.overlay(img, explain.gradcam(loaded, img, method=method)), max(5, repeats // 2))
        out[key] = round(1000 * statistics.median(times), 2)
    E.predict_frame(loaded, frame.head(BATCH))
    times = timings(lambda: E.predict_frame(loaded, frame), 2)
    out["batch_predict_images_per_s"] = round(len(frame) / statistics.median(times), 1)
    return out


def rss_probe(model_path: str | None, image: str) -> None:
    """Run in a fresh process: load the model, predict and explain one X-ray, print peak RSS in MB."""
    from pneumo import explain
    from pneumo.imaging import load_image
    from pneumo.memory import resident
    from pneumo.models import load_model

    loaded = load_model(model_path or None)
    img = load_image(image)
    loaded.predict(img)
    explain.overlay(img, explain.gradcam(loaded, img))
    explain.overlay(img, explain.gradcam(loaded, img, method="gradcam++"))
    print(resident().peak_mb)


def peak_rss(model_path: Path | None, image: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--rss-probe", str(image)] + (["--model", str(model_path)] if model_path else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
    return {"peak_rss_mb": round(float(out.stdout.strip().splitlines()[-1]), 1)}


def environment() -> dict[str, Any]:
    from pneumo.models import DEFAULT_ARCHITECTURE, ARCHITECTURES
    from pneumo.train import detect_device, library_versions

    device = detect_device()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.describe(),
        "device_kind": device.kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "model_name": DEFAULT_ARCHITECTURE,
        "image_size": ARCHITECTURES[DEFAULT_ARCHITECTURE].input_size,
        "batch_size": BATCH,
        "library_versions": library_versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, under a minute")
    parser.add_argument("--model", help="model to time (default: the shipped one)")
    parser.add_argument("--out", help="results path (default bench/results.json, -quick / -gpu variants)")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        rss_probe(args.model, args.rss_probe)
        return

    results: dict[str, Any] = environment()
    results["mode"] = "quick" if args.quick else "full"
    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-"))
    try:
        if args.quick:
            folder, epochs, repeats, steps, lat = make_folder(48, work / "data"), 3, 2, 6, 15
        else:
            folder, epochs, repeats, steps, lat = (SHARED if SHARED.is_dir() else make_folder(400, work / "data")), 3, 3, 40, 60
        results["data"] = {"folder": str(folder.relative_to(ROOT.parent)) if folder.is_relative_to(ROOT.parent) else "temporary subset",
                           "images": sum(1 for _ in folder.rglob("*.jp*g")), "pipeline_epochs": epochs}
        stages = [
            ("pipeline", lambda: bench_pipeline(folder, results["image_size"], epochs, repeats)),
            ("training", lambda: bench_training(folder, steps, repeats)),
            ("inference", lambda: bench_inference(Path(args.model) if args.model else None, folder, lat)),
            ("memory", lambda: peak_rss(Path(args.model) if args.model else None, next(folder.rglob("*.jp*g")))),
        ]
        for name, stage in stages:
            t = time.perf_counter()
            results.update(stage())
            print(f"{name:<10} {time.perf_counter() - t:6.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    default = "results-gpu.json" if results["device_kind"] == "GPU" else ("results-quick.json" if args.quick else "results.json")
    out = Path(args.out) if args.out else ROOT / "bench" / default
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
