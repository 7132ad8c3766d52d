from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo.model import architectures as A
from pneumo.model import loading as M


@pytest.mark.parametrize("name", list(A.ARCHITECTURES))
def test_every_architecture_takes_gray_input_and_has_its_cam_layer(name: str) -> None:
    model = A.build_model(name, image_size=64 if name != "compact_cnn" else 48)
    assert model.input_shape[-1] == 1
    x = np.random.default_rng(0).random((2, *model.input_shape[1:])).astype("float32")
    out = np.asarray(model(x))
    assert out.shape == (2, 1)
    # Inference reads each film alone (batch norm on its moving statistics, no dropout): a film's answer
    # does not depend on the other film in its batch.
    np.testing.assert_allclose(np.asarray(model(x[1:])), out[1:], atol=1e-5, rtol=0)
    assert len(model.get_layer(A.ARCHITECTURES[name].gradcam_layer).output.shape) == 4


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="compact_cnn"):
        A.build_model("vgg99")


def test_imagenet_weights_without_network_explain_how_to_supply_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(A.WeightsUnavailableError, match="notop.h5"):
        A.build_model("mobilenet_v2", 96, weights="imagenet")


def test_saved_model_round_trip_with_safe_mode(tmp_path: Path) -> None:
    model = A.build_model("compact_cnn", 48)
    model.save(tmp_path / "model.keras")
    (tmp_path / "card.json").write_text('{"threshold": 0.31, "architecture": "compact_cnn"}')
    loaded = M.load_model(tmp_path)
    assert loaded.threshold == 0.31 and loaded.input_size == 48 and loaded.gradcam_layer == "block5_out"
    img = np.random.rand(100, 120).astype("float32")
    p1 = loaded.predict(img)
    p2 = np.asarray(model(loaded.prepare(img)))
    assert p1.shape == (1,) and p1[0] == pytest.approx(float(p2[0, 0]), abs=1e-6)
    with pytest.raises(FileNotFoundError):
        M.load_model(tmp_path / "missing.keras")


def test_saving_an_operating_point_refuses_a_read_only_card(tmp_path: Path) -> None:
    import os

    from pneumo.core.files import ReadOnlyError

    card = tmp_path / "card.json"
    card.write_text('{"threshold": 0.31, "architecture": "compact_cnn"}')
    M.save_operating_point(tmp_path / "model.keras", 0.4, "by hand")  # writable: saved
    assert M.read_card(tmp_path / "model.keras").threshold == 0.4
    before = card.read_bytes()
    card.chmod(0o444)
    with pytest.raises(ReadOnlyError, match="read-only"):
        M.save_operating_point(tmp_path / "model.keras", 0.2, "by hand")
    assert card.read_bytes() == before and (card.stat().st_mode & 0o777) == 0o444
    card.chmod(0o644)
    os.chmod(tmp_path, 0o555)  # the folder: an atomic replace needs it, and would otherwise ignore the file's mode
    try:
        with pytest.raises(ReadOnlyError, match="read-only folder"):
            M.save_operating_point(tmp_path / "model.keras", 0.2, "by hand")
    finally:
        os.chmod(tmp_path, 0o755)
    assert card.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_a_runaway_card_is_refused_unread(tmp_path: Path) -> None:
    from pneumo.core.card import CardError

    with open(tmp_path / "card.json", "w") as fh:
        fh.write('{"threshold": 0.5, "notes": "')
        fh.truncate(M.CARD_MAX_BYTES + 10)
    with pytest.raises(CardError, match="larger than a model card"):
        M.read_card(tmp_path / "model.keras")


def test_serving_cache_is_bounded_shared_by_copies_and_cleared_in_one_call(tmp_path: Path) -> None:
    import dataclasses

    from pneumo.model import input_check as quality

    cache = M.ServingCache(maxsize=3)
    builds: list[int] = []
    for key in range(5):
        cache.get(key, lambda key=key: builds.append(key) or key)
    assert len(cache) == 3 and cache.keys() == [2, 3, 4] and builds == [0, 1, 2, 3, 4]
    assert cache.get(4, lambda: pytest.fail("rebuilt a kept entry")) == 4

    model = A.build_model("compact_cnn", 48)
    model.save(tmp_path / "model.keras")
    loaded = M.load_model(tmp_path)
    assert loaded.density is None  # no ood.npz yet, and that answer is kept ...
    fitted = quality.fit(np.random.default_rng(0).normal(size=(40, 4)))
    fitted.save(tmp_path / quality.FILE_NAME)
    assert loaded.density is None
    loaded.clear_caches()  # ... until the caches are cleared: then it is the file just written
    np.testing.assert_array_equal(loaded.density.precision, fitted.precision)
    assert loaded.density.alarm == fitted.alarm and loaded.density.n_fit == fitted.n_fit
    img = np.random.default_rng(1).random((60, 50)).astype("float32")
    loaded.predict(img)
    forward = loaded._forward
    copy = dataclasses.replace(
        loaded, operating_point="site"
    )  # what pneumo.evaluation.site.apply_operating_point makes
    assert copy._forward is forward and copy.density is loaded.density
    np.testing.assert_allclose(loaded.member_probabilities(img)[:, 0], loaded.predict(img), atol=1e-6)
    assert {"forward", "members", "density"} <= set(loaded.cache.keys())


def test_bench_counts_forward_flops_on_the_traced_graph_and_refuses_what_it_cannot_see() -> None:
    """bench/run.py's FLOP count (public TensorFlow API, no frozen graph): a 3×3 convolution of 4 filters
    over 8×8 pixels is 2 × 64 × 4 × 9 = 4608; a nested tf.function, opaque to the profiler, is refused."""
    import keras
    import tensorflow as tf

    from bench.run import forward_flops

    inp = keras.Input((8, 8, 1))
    assert forward_flops(keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inp)), 8) == 4608

    class Opaque(keras.layers.Layer):
        @tf.function
        def call(self, x: tf.Tensor) -> tf.Tensor:
            return x * 2.0

    with pytest.raises(ValueError, match="nested functions"):
        forward_flops(keras.Model(inp, Opaque()(inp)), 8)


def test_a_slow_build_blocks_neither_other_keys_nor_builds_twice() -> None:
    """One session tracing a graph (seconds, the first Grad-CAM) must not hold up another's density lookup,
    and two sessions asking for the same graph at once build it once."""
    import threading
    import time

    from pneumo.model.loading import ServingCache

    cache, started, builds = ServingCache(), threading.Event(), []

    def slow() -> str:
        builds.append("slow")
        started.set()
        time.sleep(0.5)
        return "graph"

    threads = [threading.Thread(target=cache.get, args=("cam", slow)) for _ in range(2)]
    for t in threads:
        t.start()
    assert started.wait(5)
    t0 = time.perf_counter()
    assert cache.get("density", lambda: "density") == "density"
    assert time.perf_counter() - t0 < 0.2  # not behind the 0.5 s build
    for t in threads:
        t.join()
    assert builds == ["slow"] and cache.get("cam", slow) == "graph"
