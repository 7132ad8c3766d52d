"""pneumo benchmarks: each figure beside the fairest alternative a user would pick and the machine's limit.

    python bench/run.py            # full: the shared training folder → bench/results.json
    python bench/run.py --quick    # small inputs, under a minute → bench/results-quick.json
    python bench/run.py --only batch   # batch prediction alone, its keys merged into bench/results.json

Every timing is a median of at least five rounds after a warm-up; in each round every compared function
runs once, in a random order, so load drift and call order hit every side alike, and each headline figure
carries its [p10, p90] over the rounds (results["spread"]). The limit is a real ceiling: the CPU's
theoretical float32 FMA peak (cores × clock × lanes × 2 × 2 FMA units), beside the best GEMM measured
across the whole run; every *_fraction_of_peak is a share of it, at most 1 (tests/test_bench.py).
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
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pneumo  # noqa: E402,F401 - sets TensorFlow's CPU options before it loads

SHARED = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
BATCH = 32


REPEATS_MIN = 5
# Batch prediction's rounds: its ratio to the raw session is a headline, and on a machine shared with other work a
# ratio of two sides a few percent apart needs many more rounds than five to settle.
BATCH_ROUNDS = 40
# The figures the README quotes (pneumo.integrations.docs.bench_table), each with its spread over the repeats.
HEADLINE = (
    "batch_predict_images_per_s",
    "batch_predict_fraction_of_peak",
    "batch_predict_over_onnxruntime_session",
    "predict_latency_ms_p50",
    "predict_p50_over_floor",
    "predict_over_fastest_anchor",
    "gradcam_p50_over_predict_p50",
    "gradcam_over_tensorflow_traced",
    "pipeline_speedup_vs_keras_cached",
    "train_fraction_of_peak",
    "evaluate_first_result_s",
    "evaluate_peak_rss_mb",
)
SPREAD: dict[str, list[float]] = {}  # headline key -> [p10, p90] of the same figure over the repeats


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, seed: int = 0) -> dict[str, float]:
    """Median seconds of each function over at least REPEATS_MIN rounds after one warm-up call each; in
    every round each function runs once, in a new random order, so load drift and call order fall on
    every side alike. samples() gives every round's times."""
    import random

    order = random.Random(seed)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(REPEATS_MIN, repeats)):
        names = list(fns)
        order.shuffle(names)
        for name in names:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    alternate.last = times  # type: ignore[attr-defined]
    return {k: statistics.median(v) for k, v in times.items()}


def spread_of(key: str, values: list[float]) -> None:
    """Record [p10, p90] of a headline figure computed from each round (see alternate)."""
    import numpy as np

    SPREAD[key] = [round(float(np.percentile(values, 10)), 4), round(float(np.percentile(values, 90)), 4)]


def rounds(name: str) -> list[float]:
    """The per-round seconds of `name` in the last alternate() call."""
    return list(alternate.last[name])  # type: ignore[attr-defined]


def make_folder(n_per_class: int, dest: Path) -> Path:
    """A class-folder subset of the shared data (or synthetic images where it is absent)."""
    import numpy as np
    from PIL import Image

    for cls in ("NORMAL", "PNEUMONIA"):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        if SHARED.is_dir():
            for path in sorted((SHARED / cls).iterdir())[:n_per_class]:
                shutil.copy(path, dest / cls / path.name)
        else:
            rng = np.random.default_rng(0)
            for i in range(n_per_class):
                Image.fromarray((rng.random((224, 224)) * 255).astype("uint8")).save(dest / cls / f"{cls}-{i}.jpeg")
    return dest


# ---------------------------------------------------------------- the machine's limits


def cpu() -> dict[str, Any]:
    info = {"model": platform.processor() or platform.machine(), "vector_extensions": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["vector_extensions"] = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4", "amx")))
                break
    except OSError:
        pass
    return info


def matmul_gflops(seconds: float = 1.0) -> float:
    """Best float32 matmul throughput TensorFlow reaches here now (all threads it uses by default)."""
    import tensorflow as tf

    n = 1024
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    step = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    step(a, b).numpy()
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            step(a, b).numpy()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def theoretical_peak_gflops(info: dict[str, Any]) -> dict[str, Any]:
    """The CPU's float32 FMA ceiling: cores × clock × lanes × 2 (multiply and add) × FMA units.

    Lanes from the widest vector extension the CPU reports (AVX-512: 16, AVX2/AVX: 8, else SSE: 4); two
    FMA units per core (the most any x86 core has); the highest clock the kernel reports (the boost
    clock where cpufreq says it, else /proc/cpuinfo's MHz). Every term is taken at its upper end, so no
    measured rate can pass it: a fraction of it is at most 1.
    """
    flags = set(info.get("vector_extensions", []))
    lanes = 16 if any(f.startswith("avx512f") for f in flags) else 8 if {"avx2", "avx"} & flags else 4
    mhz = 0.0
    try:
        mhz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        pass
    try:
        mhz = max(
            [mhz]
            + [
                float(line.split(":")[1])
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")
            ]
        )
    except (OSError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    fma_units = 2
    gflops = cores * mhz / 1000 * lanes * 2 * fma_units
    return {
        "gflops": round(gflops, 1),
        "cores": cores,
        "clock_mhz": round(mhz, 1),
        "fp32_lanes": lanes,
        "fma_units_per_core": fma_units,
        "how": "cores × highest reported clock × float32 lanes of the widest vector unit × 2 × 2 FMA units",
    }


def forward_flops(model: Any, size: int) -> float:
    """FLOPs of one image's forward pass, counted by TensorFlow's profiler on the traced graph.

    The concrete function's own graph, public API only: a variable read has its static shape there, so
    the count equals the one on a graph frozen with tensorflow.python's convert_to_constants (checked on
    shift_cnn, mobilenet_v2 and the shipped model). Keras 3 inlines every layer call into this graph; a
    nested tf.function would be one call op the profiler cannot see into, so one is refused, not undercounted.
    """
    import tensorflow as tf

    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec([1, size, size, 1]))
    calls = sorted({op.type for op in concrete.graph.get_operations() if op.type.endswith("PartitionedCall")})
    if calls:
        raise ValueError(
            f"the forward graph calls nested functions ({', '.join(calls)}); their FLOPs would go uncounted"
        )
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(tf.compat.v1.profiler.profile(graph=concrete.graph, cmd="op", options=opts).total_float_ops)


def jpeg_decode_rate(paths: list[str], repeats: int) -> float:
    """Images per second that decoding alone reaches on every core (the pipeline's own ceiling)."""
    import tensorflow as tf

    def run() -> None:
        ds = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=1), num_parallel_calls=tf.data.AUTOTUNE
        )
        for _ in ds:
            pass

    rate = len(paths) / alternate({"decode": run}, repeats)["decode"]
    return rate


# ---------------------------------------------------------------- pneumo against its anchors


def keras_loader(folder: Path, size: int, aug: Any) -> Any:
    """What a Keras user writes: image_dataset_from_directory, cached, one augmentation layer per transform."""
    import keras
    import tensorflow as tf

    layers = keras.Sequential(
        [
            keras.layers.RandomRotation(aug.rotation_deg / 360.0, fill_mode="reflect"),
            keras.layers.RandomTranslation(aug.shift, aug.shift, fill_mode="reflect"),
            keras.layers.RandomZoom((-aug.zoom, aug.zoom), fill_mode="reflect"),
            keras.layers.RandomBrightness(aug.brightness, value_range=(0.0, 1.0)),
            keras.layers.RandomContrast(aug.contrast, value_range=(0.0, 1.0)),
        ]
    )
    ds = keras.utils.image_dataset_from_directory(
        folder,
        labels="inferred",
        label_mode="binary",
        color_mode="grayscale",
        image_size=(size, size),
        batch_size=BATCH,
        shuffle=True,
        seed=0,
        verbose=False,
    )
    ds = ds.map(lambda x, y: (x / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE).cache()
    return ds.map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def bench_pipeline(folder: Path, size: int, epochs: int, repeats: int) -> dict[str, float]:
    """Ours against the cached Keras loader with the same augmentation at the same size; and the
    pipelines training the default model runs (shift recipe; at the working resolution when opted in)."""
    from pneumo.data import collection as D
    from pneumo.model.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
    from pneumo.training import pipeline as P

    frame = D.scan(folder).frame
    basic, shift = P.Augmentation.preset("basic"), P.Augmentation.preset("shift")
    ours_basic = P.make_dataset(frame, size, BATCH, training=True, augmentation=basic)
    ours_shift = P.make_dataset(frame, size, BATCH, training=True, augmentation=shift)
    ours_shift_work = P.make_dataset(
        frame,
        size,
        BATCH,
        training=True,
        augmentation=shift,
        augment_size=ARCHITECTURES[DEFAULT_ARCHITECTURE].augmentation_size(size),
    )
    theirs = keras_loader(folder, size, basic)
    # Compared with decoding, the pipeline must decode: no cache, so every epoch reads every film.
    ours_decoding = P.make_dataset(frame, size, BATCH, training=True, augmentation=None, cache=False)

    def epochs_of(ds: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in range(epochs):
                for _batch in ds:
                    pass

        return run

    t = alternate(
        {
            "ours": epochs_of(ours_basic),
            "keras": epochs_of(theirs),
            "shift": epochs_of(ours_shift),
            "shift_work": epochs_of(ours_shift_work),
            "decoding": epochs_of(ours_decoding),
        },
        repeats,
    )
    n = len(frame) * epochs
    spread_of("pipeline_speedup_vs_keras_cached", [k / o for k, o in zip(rounds("keras"), rounds("ours"))])
    return {
        "pipeline_images_per_s": round(n / t["ours"], 1),
        "pipeline_decoding_images_per_s": round(n / t["decoding"], 1),
        "pipeline_shift_augmentation_images_per_s": round(n / t["shift"], 1),
        "pipeline_shift_augmentation_work_resolution_images_per_s": round(n / t["shift_work"], 1),
        "keras_cached_pipeline_images_per_s": round(n / t["keras"], 1),
        "pipeline_speedup_vs_keras_cached": round(t["keras"] / t["ours"], 2),
    }


def bench_training(folder: Path, steps: int, repeats: int, peak: float) -> dict[str, Any]:
    """The training step every run takes (pneumo.training.job.compile_for_training) fed by the real pipeline, for
    the default recipe, the same with XLA, and the opt-in augmentation at the working resolution, alternately."""
    from pneumo.data import collection as D
    from pneumo.model.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_model
    from pneumo.training import pipeline as P
    from pneumo.training.job import TrainConfig, compile_for_training

    arch = ARCHITECTURES[DEFAULT_ARCHITECTURE]
    size = arch.input_size
    frame = D.scan(folder).frame
    config = TrainConfig(data=str(folder))  # the defaults a run starts from
    weights = D.class_weights(frame["label"].to_numpy())

    def dataset(augment_size: int | None) -> Any:
        return P.make_dataset(
            frame,
            size,
            BATCH,
            training=True,
            augmentation=P.Augmentation.preset(config.augmentation),
            class_weights=weights,
            augment_size=augment_size,
        ).repeat()

    variants = {
        "default": (dataset(None), "auto"),
        "xla": (dataset(None), True),
        "work_resolution": (dataset(arch.augmentation_size(size)), "auto"),
    }
    fits = {}
    for name, (ds, jit) in variants.items():
        model = build_model(DEFAULT_ARCHITECTURE, size)
        compile_for_training(model, config, config.learning_rate, jit_compile=jit)
        fits[name] = lambda model=model, ds=ds: model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    t = alternate(fits, repeats)  # the first call of each traces and fills the cache
    rates = {k: steps * BATCH / v for k, v in t.items()}
    flops = forward_flops(model, size)
    # A training step costs about three forward passes (forward, and the two halves of the backward).
    fraction = {k: round(v * 3 * flops / (peak * 1e9), 3) for k, v in rates.items()}
    spread_of("train_fraction_of_peak", [steps * BATCH / x * 3 * flops / (peak * 1e9) for x in rounds("default")])
    return {
        "train_images_per_s": round(rates["default"], 1),
        "train_model": DEFAULT_ARCHITECTURE,
        "train_images_per_s_xla": round(rates["xla"], 1),
        "train_images_per_s_work_resolution_augmentation": round(rates["work_resolution"], 1),
        "train_model_forward_gflops": round(flops / 1e9, 4),
        "train_fraction_of_peak": fraction["default"],
        "train_fraction_of_peak_xla": fraction["xla"],
        "train_fraction_of_peak_work_resolution_augmentation": fraction["work_resolution"],
    }


def bench_inference(model_path: Path | None, folder: Path, repeats: int, peak: float) -> dict[str, Any]:
    """`LoadedModel.predict` and Grad-CAM as pneumo serves them, beside Keras, TensorFlow and raw ONNX Runtime."""
    import numpy as np

    from pneumo.data import collection as D
    from pneumo.data.decode import load_image
    from pneumo.model import explain
    from pneumo.model.loading import LoadedModel, load_model

    loaded = load_model(model_path)
    # The same network through pneumo's traced TensorFlow graph: what serves it without an ONNX export.
    traced = LoadedModel(loaded.model, loaded.card, loaded.path)
    frame = D.scan(folder).frame
    images = [D.read_item(p) for p in frame["path"]]
    blob = Path(frame["path"].iloc[0]).read_bytes()
    flops = forward_flops(loaded.model, loaded.input_size)
    floor_ms = flops / (peak * 1e9) * 1000
    out: dict[str, Any] = {
        "model_forward_gflops": round(flops / 1e9, 4),
        "predict_flop_floor_ms": round(floor_ms, 3),
        "inference_engine": loaded.engine_name,
    }

    img = images[0]
    one = loaded.prepare(img)
    anchors = {
        "predict_on_batch": lambda: loaded.model.predict_on_batch(loaded.prepare(img)),
        "direct_call": lambda: np.asarray(loaded.model(loaded.prepare(img), training=False)),
        "tensorflow_traced": lambda: traced.predict(img),
    }
    if loaded.engine is not None:
        session, name = loaded.engine.session, loaded.engine.input_name
        anchors["onnxruntime_session"] = lambda: session.run(None, {name: loaded.prepare(img)})
    single = alternate(
        {"ours": lambda: loaded.predict(img), **anchors, "read": lambda: loaded.predict(load_image(blob))}, repeats
    )
    p50 = single["ours"] * 1000
    ours_rounds = rounds("ours")
    keras_fairest = min(("predict_on_batch", "direct_call"), key=single.get)
    # The fairest anchor is the fastest thing a user could call instead: the raw ONNX Runtime session or
    # pneumo's traced TensorFlow graph, whichever won in this run.
    fastest = min([k for k in ("onnxruntime_session", "tensorflow_traced") if k in single], key=single.get)
    spread_of("predict_latency_ms_p50", [x * 1000 for x in ours_rounds])
    spread_of("predict_p50_over_floor", [x * 1000 / floor_ms for x in ours_rounds])
    spread_of("predict_over_fastest_anchor", [o / a for o, a in zip(ours_rounds, rounds(fastest))])
    out.update(
        {
            "predict_fastest_anchor": fastest,
            "predict_over_fastest_anchor": round(single["ours"] / single[fastest], 3),
            "predict_latency_ms_p50": round(p50, 3),
            "read_and_predict_latency_ms_p50": round(single["read"] * 1000, 3),
            **{f"{k}_ms_p50": round(single[k] * 1000, 3) for k in anchors},
            "predict_fairest_keras_anchor": keras_fairest,
            "predict_speedup_vs_fairest_keras": round(single[keras_fairest] / single["ours"], 2),
            "predict_speedup_vs_tensorflow_traced": round(single["tensorflow_traced"] / single["ours"], 2),
            "predict_p50_over_floor": round(p50 / floor_ms, 2),
            "network_only_ms_p50": round(alternate({"net": lambda: loaded._forward(one)}, repeats)["net"] * 1000, 3),
        }
    )

    out.update(bench_batch(loaded, traced, list(frame["path"]), images, flops, peak))

    cams = alternate(
        {
            "compiled": lambda: explain.gradcam(loaded, img, target=1),
            "compiled_pp": lambda: explain.gradcam(loaded, img, method="gradcam++", target=1),
            "traced": lambda: explain.gradcam(traced, img, target=1),
            "tf_keras_vis": lambda: explain.gradcam(loaded, img, target=1, engine="tf-keras-vis"),
        },
        max(REPEATS_MIN, repeats // 3),
    )
    spread_of("gradcam_p50_over_predict_p50", [x * 1000 / p50 for x in rounds("compiled")])
    spread_of("gradcam_over_tensorflow_traced", [c / t for c, t in zip(rounds("compiled"), rounds("traced"))])
    out.update(
        {
            "gradcam_latency_ms_p50": round(cams["compiled"] * 1000, 3),
            "gradcampp_latency_ms_p50": round(cams["compiled_pp"] * 1000, 3),
            "tensorflow_traced_gradcam_latency_ms_p50": round(cams["traced"] * 1000, 3),
            "tf_keras_vis_gradcam_latency_ms_p50": round(cams["tf_keras_vis"] * 1000, 3),
            "gradcam_speedup_vs_tf_keras_vis": round(cams["tf_keras_vis"] / cams["compiled"], 2),
            "gradcam_over_tensorflow_traced": round(cams["compiled"] / cams["traced"], 3),
            "gradcam_p50_over_predict_p50": round(cams["compiled"] * 1000 / p50, 2),
        }
    )
    return out


def bench_batch(
    loaded: Any, traced: Any, paths: list[str], images: list[Any], flops: float, peak: float
) -> dict[str, Any]:
    """Batch prediction, like with like: ``LoadedModel.predict`` on decoded films (what ``evaluate`` hands it,
    batch by batch) against what a user would write with ONNX Runtime on the same decoded films: a session with
    ONNX Runtime's default options, each film resized with OpenCV, stacked, converted to float32 and run 32 at a
    time. Both again on ready tensors (the network alone), and the library's batch path as it was before this
    version (``before``). Every round runs each side once in a new random order (see alternate); each ratio is
    taken within a round, so load from other processes on the machine falls on both of its sides alike.

    Then, in rounds of their own, Keras and the traced TensorFlow graph on the tensors, and where a film's time
    goes: decoding, the library's preparation (resize into the batch), the network for the probability alone and
    for the probability with the input check's pooled features (one run), the network one film at a time, and the
    input check as ``predict`` runs it for one film (its own feature pass and the distance)."""
    import cv2
    import numpy as np
    import onnxruntime as ort

    from pneumo.data.collection import read_item
    from pneumo.data.pixels import resize
    from pneumo.model import input_check

    n = len(images)
    size = loaded.input_size
    stacked = loaded.prepare(images)
    engine = loaded.engine
    compare: dict[str, Callable[[], Any]] = {"ours": lambda: loaded.predict(images, batch_size=BATCH)}
    others: dict[str, Callable[[], Any]] = {
        "traced": lambda: traced.predict(stacked, batch_size=BATCH),
        "keras": lambda: loaded.model.predict(stacked, batch_size=BATCH, verbose=0),
    }
    if engine is not None:
        user = ort.InferenceSession(str(engine.path), providers=["CPUExecutionProvider"])
        name = user.get_inputs()[0].name

        def by_hand() -> Any:
            probabilities = []
            for start in range(0, n, BATCH):
                films = [
                    cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in images[start : start + BATCH]
                ]
                batch = np.stack(films)[..., None].astype(np.float32)
                probabilities.append(user.run(["probability"], {name: batch})[0])
            return np.concatenate(probabilities)

        def tensors(names: list[str], session: Any = user) -> Callable[[], Any]:
            return lambda: [session.run(names, {name: stacked[i : i + BATCH]}) for i in range(0, n, BATCH)]

        def before(films: Any) -> Any:
            """LoadedModel.predict as it was before prepare filled one batch in place: every film resized (a
            ready batch's too), stacked, then converted; kept so that the change is measured, not remembered."""
            batch = np.stack([resize(img, size) for img in films])[..., None].astype(np.float32)
            return np.concatenate([engine.probabilities(batch[i : i + BATCH]) for i in range(0, n, BATCH)])

        one, density = stacked[:1], loaded.density
        compare.update(
            {
                "onnxruntime_session": by_hand,
                "ours_tensors": lambda: loaded.predict(stacked, batch_size=BATCH),
                "onnxruntime_session_tensors": tensors(["probability"]),
                "before": lambda: before(images),
                "before_tensors": lambda: before(stacked),
            }
        )
        others.update(
            {
                "decode": lambda: [read_item(p) for p in paths],
                "prepare": lambda: loaded.prepare(images),
                "network_probability": tensors(["probability"], engine.session),
                "network_probability_and_features": tensors(["probability", "features"], engine.session),
                "network_one_film_at_a_time": lambda: [
                    engine.session.run(["probability"], {name: one}) for _ in range(n)
                ],
                "input_check_one_film_at_a_time": lambda: [input_check.inspect(loaded, img, density) for img in images],
            }
        )
    load_before = os.getloadavg()[0]
    times = alternate(compare, BATCH_ROUNDS)
    per_round = {side: rounds(side) for side in compare}
    rate = n / times["ours"]
    ours = [n / x for x in per_round["ours"]]
    spread_of("batch_predict_fraction_of_peak", [r * flops / (peak * 1e9) for r in ours])
    spread_of("batch_predict_images_per_s", ours)
    stages = alternate(others, REPEATS_MIN)
    out: dict[str, Any] = {
        "batch_predict_images_per_s": round(rate, 1),
        "keras_model_predict_images_per_s": round(n / stages["keras"], 1),
        "tensorflow_traced_images_per_s": round(n / stages["traced"], 1),
        "batch_predict_flop_ceiling_images_per_s": round(peak * 1e9 / flops, 1),
        "batch_predict_fraction_of_peak": round(rate * flops / (peak * 1e9), 3),
        "batch_rounds": {"comparison": len(ours), "others": len(rounds("traced"))},
        # Other processes' share of the cores: the machine's 1-minute load average before and after the rounds.
        "batch_load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if engine is None:
        return out

    def ratios(side: str, anchor: str) -> list[float]:  # side's rate over the anchor's, round by round
        return [a / s for s, a in zip(per_round[side], per_round[anchor])]

    pairs = {
        "decoded_films": ratios("ours", "onnxruntime_session"),
        "tensors": ratios("ours_tensors", "onnxruntime_session_tensors"),
        "before_change_decoded_films": ratios("before", "onnxruntime_session"),
        "before_change_tensors": ratios("before_tensors", "onnxruntime_session_tensors"),
    }
    spread_of("batch_predict_over_onnxruntime_session", pairs["decoded_films"])
    out.update(
        {
            "batch_predict_input": f"{n} decoded films (2-D float32 arrays in [0, 1]) resized and batched by each side",
            "onnxruntime_session_is": "onnxruntime.InferenceSession(model.onnx) with default options; cv2.resize "
            "(INTER_AREA), np.stack, astype(float32), session.run(['probability']) per batch of 32",
            "onnxruntime_session_batch_images_per_s": round(n / times["onnxruntime_session"], 1),
            "batch_predict_over_onnxruntime_session": round(statistics.median(pairs["decoded_films"]), 3),
            "batch_predict_tensors_images_per_s": round(n / times["ours_tensors"], 1),
            "onnxruntime_session_tensors_batch_images_per_s": round(n / times["onnxruntime_session_tensors"], 1),
            "batch_predict_tensors_over_onnxruntime_session": round(statistics.median(pairs["tensors"]), 3),
            "batch_predict_before_change_images_per_s": round(n / times["before"], 1),
            "batch_predict_before_change_tensors_images_per_s": round(n / times["before_tensors"], 1),
            # Each ratio's [p10, median, p90] over the rounds.
            "batch_predict_ratios": {
                key: [round(float(np.percentile(values, q)), 3) for q in (10, 50, 90)] for key, values in pairs.items()
            },
            "batch_ms_per_film": {
                key: round(stages[key] / n * 1000, 3)
                for key in (
                    "decode",
                    "prepare",
                    "network_probability",
                    "network_probability_and_features",
                    "network_one_film_at_a_time",
                    "input_check_one_film_at_a_time",
                )
            },
        }
    )
    return out


def bench_evaluate(folder: Path) -> dict[str, float]:
    """`python -m pneumo evaluate` as a user runs it: time to the first result (one image) and peak RSS."""
    one = Path(tempfile.mkdtemp(prefix="pneumo-one-"))
    try:
        for cls in ("NORMAL", "PNEUMONIA"):
            (one / cls).mkdir()
            shutil.copy(next((folder / cls).iterdir()), one / cls)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # The child reports its own peak (VmHWM restarts at exec); getrusage's children figure would count the
        # pages this large process shares with the child between fork and exec.
        probe = (
            "import sys; from pneumo.cli import main; rc = main(sys.argv[1:]); "
            "from pneumo.core.memory import resident; "
            "print('PEAK_MB', resident().peak_mb, file=sys.stderr); sys.exit(rc)"
        )
        cmd = [sys.executable, "-c", probe, "evaluate", "--data"]
        # Reports go beside the data, never inside it: evaluate refuses to write into the folder it reads.
        firsts = []
        for i in range(REPEATS_MIN):
            t = time.perf_counter()
            subprocess.run(
                cmd + [str(one), "--out", str(one.parent / f"{one.name}-r{i}.json")],
                check=True,
                capture_output=True,
                env=env,
                cwd=ROOT,
            )
            firsts.append(time.perf_counter() - t)
        peaks = []
        for i in range(3):
            out = subprocess.run(
                cmd + [str(folder), "--out", str(one.parent / f"{one.name}-full{i}.json")],
                check=True,
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            peaks.append(float(out.stderr.rsplit("PEAK_MB", 1)[1].split()[0]))
    finally:
        shutil.rmtree(one, ignore_errors=True)
        for report in one.parent.glob(f"{one.name}-*.json"):
            report.unlink(missing_ok=True)
    spread_of("evaluate_first_result_s", firsts)
    spread_of("evaluate_peak_rss_mb", peaks)
    return {
        "evaluate_first_result_s": round(statistics.median(firsts), 2),
        "evaluate_peak_rss_mb": round(statistics.median(peaks), 1),
    }


def environment() -> dict[str, Any]:
    from pneumo.model.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
    from pneumo.training.job import detect_device, library_versions

    device = detect_device()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.describe(),
        "device_kind": device.kind,
        "cpu": cpu(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow_options": {k: os.environ.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS",)},
        "default_architecture": DEFAULT_ARCHITECTURE,
        "image_size": ARCHITECTURES[DEFAULT_ARCHITECTURE].input_size,
        "batch_size": BATCH,
        "library_versions": library_versions(),
    }


def remeasure_batch(path: Path, model: Path | None) -> dict[str, Any]:
    """Batch prediction alone (bench_batch) on the full run's 400 films, its keys merged into the results file a
    full run wrote; fractions of the peak are taken against that run's ceiling, so they stay comparable."""
    from pneumo.data import collection as D
    from pneumo.model.loading import LoadedModel, load_model

    results = json.loads(path.read_text())
    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-"))
    try:
        folder = make_folder(200, work / "eval")
        loaded = load_model(model)
        traced = LoadedModel(loaded.model, loaded.card, loaded.path)
        paths = list(D.scan(folder).frame["path"])
        images = [D.read_item(p) for p in paths]
        SPREAD.clear()
        ceiling = results["peak"]["ceiling_gflops"]
        results.update(bench_batch(loaded, traced, paths, images, results["model_forward_gflops"] * 1e9, ceiling))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["batch_remeasured"] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/run.py --only batch",
        "ceiling_gflops_of": results.get("date"),
    }
    spread = {**results.get("spread", {}), **SPREAD}
    results["headline"] = {k: results[k] for k in HEADLINE if k in results and k in spread}
    results["spread"] = {k: spread[k] for k in results["headline"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, under a minute")
    parser.add_argument("--model", help="model to time (default: the shipped one)")
    parser.add_argument("--out", help="results path (default bench/results.json, -quick / -gpu variants)")
    parser.add_argument(
        "--only",
        choices=["batch"],
        help="re-measure batch prediction alone into the results file a full run wrote (its keys only)",
    )
    args = parser.parse_args()
    pneumo.import_tensorflow_quietly()
    if args.only == "batch":
        path = Path(args.out) if args.out else ROOT / "bench" / "results.json"
        results = remeasure_batch(path, Path(args.model) if args.model else None)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: results[k] for k in results if k.startswith(("batch_", "onnxruntime_session"))}, indent=2))
        return

    results: dict[str, Any] = environment()
    results["mode"] = "quick" if args.quick else "full"
    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-"))
    model = Path(args.model) if args.model else None
    try:
        if args.quick:
            folder, epochs, repeats, steps, lat = make_folder(48, work / "data"), 2, 2, 4, 12
        else:
            # 1,000 films of the training set: five rounds of five pipelines over it fit a few minutes.
            folder, epochs, repeats, steps, lat = make_folder(500, work / "data"), 1, REPEATS_MIN, 30, 45
        eval_folder = folder if args.quick else make_folder(200, work / "eval")
        paths = [str(p) for p in sorted(folder.rglob("*.jp*g"))]
        results["data"] = {
            "folder": "shared training set" if folder == SHARED else "temporary subset",
            "images": len(paths),
            "pipeline_epochs": epochs,
        }
        t = time.perf_counter()
        ceiling = theoretical_peak_gflops(results["cpu"])
        peak = ceiling["gflops"]
        results["peak"] = ceiling
        gemm = [matmul_gflops(1.0)]
        results["jpeg_decode_images_per_s"] = round(jpeg_decode_rate(paths, repeats), 1)
        print(f"{'limits':<10} {time.perf_counter() - t:6.1f} s", file=sys.stderr, flush=True)
        stages = [
            ("pipeline", lambda: bench_pipeline(folder, results["image_size"], epochs, repeats)),
            ("training", lambda: bench_training(folder, steps, repeats, peak)),
            ("inference", lambda: bench_inference(model, eval_folder, lat, peak)),
            ("evaluate", lambda: bench_evaluate(eval_folder)),
        ]
        for name, stage in stages:
            t = time.perf_counter()
            results.update(stage())
            gemm.append(matmul_gflops(0.5))  # the best GEMM over the whole run, beside the theoretical ceiling
            print(f"{name:<10} {time.perf_counter() - t:6.1f} s", file=sys.stderr, flush=True)
        results["gemm_best_gflops"] = round(max(gemm), 1)
        # The ceiling is the larger of the two: a virtual CPU may not report its boost clock, and then the
        # best GEMM measured here is the higher, truer bound. Figures taken against the theoretical peak
        # during the run are rescaled to it.
        ceiling = max(peak, max(gemm))
        scale = peak / ceiling
        results["peak"]["ceiling_gflops"] = round(ceiling, 1)
        results["peak"]["ceiling_from"] = "theoretical FMA peak" if ceiling == peak else "best GEMM of the run"
        for key in [k for k in results if "_fraction_of_peak" in k]:
            results[key] = round(results[key] * scale, 3)
        for key in [k for k in SPREAD if "_fraction_of_peak" in k]:
            SPREAD[key] = [round(v * scale, 4) for v in SPREAD[key]]
        for key in ("predict_p50_over_floor",):
            if key in results:
                results[key] = round(results[key] / scale, 2)
                SPREAD[key] = [round(v / scale, 4) for v in SPREAD.get(key, [])]
        if "predict_flop_floor_ms" in results:
            results["predict_flop_floor_ms"] = round(results["predict_flop_floor_ms"] * scale, 3)
        if "batch_predict_flop_ceiling_images_per_s" in results:
            results["batch_predict_flop_ceiling_images_per_s"] = round(
                results["batch_predict_flop_ceiling_images_per_s"] / scale, 1
            )
        results["gemm_best_fraction_of_peak"] = round(max(gemm) / ceiling, 3)
        results["pipeline_over_train_rate"] = round(
            results["pipeline_shift_augmentation_images_per_s"] / results["train_images_per_s"], 2
        )
        results["pipeline_over_train_rate_work_resolution_augmentation"] = round(
            results["pipeline_shift_augmentation_work_resolution_images_per_s"]
            / results["train_images_per_s_work_resolution_augmentation"],
            2,
        )
        # Not a fraction of a limit: pneumo decodes with its own checked decoder (Pillow, completeness and
        # size checks, area resize), TensorFlow's decode_jpeg is the fastest alternative a user would pick.
        results["pipeline_decoding_over_tf_jpeg_decode"] = round(
            results["pipeline_decoding_images_per_s"] / results["jpeg_decode_images_per_s"], 3
        )
        results["headline"] = {k: results[k] for k in HEADLINE if k in results}
        results["spread"] = {k: SPREAD[k] for k in HEADLINE if k in SPREAD}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    default = (
        "results-gpu.json"
        if results["device_kind"] == "GPU"
        else ("results-quick.json" if args.quick else "results.json")
    )
    out = Path(args.out) if args.out else ROOT / "bench" / default
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, indent=2
        )
    )
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
