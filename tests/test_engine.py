from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumo.app.settings import SAMPLES_DIR
from pneumo.core.paths import DEFAULT_MODEL_PATH
from pneumo.model import input_check as quality
from pneumo.model import serving as E
from pneumo.model.architectures import build_model
from pneumo.model.loading import LoadedModel, load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    folder = tmp_path_factory.mktemp("exported")
    keras.utils.set_random_seed(0)
    model = build_model("shift_cnn", 64)
    # Trained-looking statistics: batch norm with non-trivial moving averages, so a wrong export shows.
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if "bn" in layer.name:
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0, 0.2, mean.shape).astype("float32"))
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
    model.save(folder / "model.keras")
    (folder / "card.json").write_text(json.dumps({"threshold": 0.4, "architecture": "shift_cnn"}))
    from pneumo.model.explain import cam_functions

    E.export_onnx(model, folder / "model.keras", "stage3_out", cam_functions(model, "stage3_out"))
    return folder


def test_onnx_engine_matches_tensorflow_within_1e_4(exported: Path) -> None:
    loaded = load_model(exported)
    assert loaded.engine_name == "ONNX Runtime" and loaded.keras_model is None and loaded.input_size == 64
    images = [np.random.default_rng(i).random((80 + i, 70)).astype("float32") for i in range(9)]
    served = loaded.predict(images, batch_size=4)
    reference = np.asarray(loaded.model(loaded.prepare(images), training=False)).ravel()
    assert served.shape == (9,) and np.ptp(reference) > 1e-3  # the images give different answers
    np.testing.assert_allclose(served, reference, atol=1e-4, rtol=0)
    tf_features = np.asarray(quality._traced_features(loaded)(loaded.prepare(images)))
    np.testing.assert_allclose(quality.features(loaded, images), tf_features, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_onnx_grad_cam_equals_the_traced_tensorflow_map(exported: Path, method: str) -> None:
    from pneumo.model import explain

    loaded = load_model(exported)
    assert loaded.engine.explains("stage3_out") and not loaded.engine.explains("stage2_out")
    image = np.random.default_rng(3).random((90, 72)).astype("float32")
    onnx_engine = loaded.engine
    for target in (1, 0):
        loaded.engine = onnx_engine
        served = explain.gradcam(loaded, image, method=method, target=target)
        loaded.engine = None  # the same model through the traced TensorFlow graph
        traced = explain.gradcam(loaded, image, method=method, target=target)
        assert served.shape == image.shape
        # Every map has structure, else the comparison below is of two flat fields. This had been loosened
        # to "one map of the two" when the fixture was unseeded; with keras.utils.set_random_seed(0) in the
        # fixture the spreads measured (std of the [0, 1] map, target 1 / target 0) are Grad-CAM 0.208 /
        # 0.194 and Grad-CAM++ 0.157 / 0.208: each over three times the bound. Target 0's Grad-CAM rests on
        # 2 of the 16 cells of the 4×4 map (the ReLU zeroes the rest), the thinnest of the four.
        assert traced.std() > 0.05, (method, target, traced.std())
        np.testing.assert_allclose(served, traced, atol=1e-3)
    loaded.engine = onnx_engine
    raw = onnx_engine.cam(loaded.prepare(image), np.array([-1.0], np.float32), method)
    assert raw.shape == (1, 4, 4)  # four stride-2 stages on a 64 px input


def test_both_maps_from_one_pass_equal_each_map_alone(exported: Path) -> None:
    """gradcams (one forward and backward pass for both methods, through ONNX Runtime or the traced
    TensorFlow graphs) gives exactly the maps gradcam draws one at a time."""
    from pneumo.model import explain

    loaded = load_model(exported)
    image = np.random.default_rng(5).random((90, 72)).astype("float32")
    onnx_engine = loaded.engine
    for engine in (onnx_engine, None):
        loaded.engine = engine
        for target in (1, 0, None):
            both = explain.gradcams(loaded, image, target=target)
            assert set(both) == set(explain.METHODS)
            for method in explain.METHODS:
                np.testing.assert_allclose(both[method], explain.gradcam(loaded, image, method, target), atol=1e-6)
            assert not np.allclose(both["gradcam"], both["gradcam++"], atol=1e-3)  # two different maps
    loaded.engine = onnx_engine
    with pytest.raises(ValueError, match="method must be one of"):
        explain.gradcams(loaded, image, ("gradcam", "saliency"))


def test_a_server_sharing_its_cores_gets_sessions_that_sleep(exported: Path) -> None:
    """The dashboard loads with shared_cores: ONNX Runtime's threads wait without spinning (the default
    elsewhere, where nothing else wants the cores); both ways serve the same probabilities."""

    def spinning(session: object) -> str:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    alone, shared = load_model(exported), load_model(exported, shared_cores=True)
    assert spinning(alone.engine.session) == "1" and spinning(alone.engine.cam_session) == "1"
    assert spinning(shared.engine.session) == "0" and spinning(shared.engine.cam_session) == "0"
    images = [np.random.default_rng(i).random((64, 64)).astype("float32") for i in range(3)]
    np.testing.assert_array_equal(alone.predict(images), shared.predict(images))


def test_a_screening_actor_gets_a_one_thread_session(exported: Path) -> None:
    """threads: one ONNX Runtime thread per operator for a process that is one of several per machine (a screening
    actor), in the session load_model opens and checks; the same probabilities as the all-core session."""
    one, every = load_model(exported, shared_cores=True, threads=1), load_model(exported)
    assert one.engine.session.get_session_options().intra_op_num_threads == 1
    assert one.engine.cam_session.get_session_options().intra_op_num_threads == 1
    images = [np.random.default_rng(i).random((70, 64)).astype("float32") for i in range(3)]
    np.testing.assert_allclose(one.predict(images), every.predict(images), atol=1e-6, rtol=0)


class _CountingSession:
    """An ONNX Runtime session that counts its runs and the outputs each asked for."""

    def __init__(self, session: Any) -> None:
        self.session, self.runs = session, []

    def run(self, names: Any, feeds: Any) -> Any:
        self.runs.append((tuple(names or ()), len(next(iter(feeds.values())))))
        return self.session.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def test_probabilities_and_features_come_from_one_pass(exported: Path) -> None:
    """predict_with_features: the probability and the input check's pooled features of a batch from one run of the
    graph per batch, equal to what predict and input_check.features give in two."""
    loaded = load_model(exported)
    images = [np.random.default_rng(i).random((80 + i, 70)).astype("float32") for i in range(5)]
    want_p, want_f = loaded.predict(images), quality.features(loaded, images)
    counting = _CountingSession(loaded.engine.session)
    loaded.engine.session = counting
    probabilities, features = loaded.predict_with_features(images, batch_size=4)
    assert counting.runs == [(("probability", "features"), 4), (("probability", "features"), 1)]
    np.testing.assert_allclose(probabilities, want_p, atol=1e-6, rtol=0)
    np.testing.assert_allclose(features, want_f, atol=1e-5, rtol=1e-5)
    assert features.shape[0] == 5 and np.ptp(want_p) > 1e-4
    # The input check given those features says what it says when it runs the network itself, and runs nothing.
    density = quality.fit(np.random.default_rng(0).normal(features.mean(0), 1.0, (40, features.shape[1])))
    accepted = 0
    for k, image in enumerate(images):
        counting.runs.clear()
        given = quality.inspect(loaded, image, density, own_features=features[k : k + 1])
        if not given.warnings:  # a refused film is looked at turned and inverted, which needs the network
            assert counting.runs == []
            accepted += 1
        assert given == quality.inspect(loaded, image, density)
    assert accepted > 0


def test_a_prepared_batch_is_served_as_it_is(exported: Path) -> None:
    """prepare resizes each film into one float32 batch, as stacking and converting did; a batch already at the
    input size passes through without a copy (bench/run.py found a second preparation cost 1 ms a film)."""
    from pneumo.data.pixels import resize

    loaded = load_model(exported)
    images = [np.random.default_rng(i).random((90, 64 + i)) for i in range(3)]  # float64, as a caller may hold
    batch = loaded.prepare(images)
    assert batch.dtype == np.float32 and batch.shape == (3, 64, 64, 1) and batch.flags.c_contiguous
    expected = np.stack([resize(img, 64) for img in images])[..., None].astype(np.float32)
    np.testing.assert_array_equal(batch, expected)
    again = loaded.prepare(batch)
    assert np.shares_memory(again, batch)
    np.testing.assert_array_equal(loaded.prepare(batch[..., 0]), batch)  # n × size × size: films, resized as such
    np.testing.assert_array_equal(loaded.prepare(images[0]), batch[:1])
    np.testing.assert_array_equal(loaded.predict(batch), loaded.predict(images))


def test_a_stale_export_is_never_served(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    folder = tmp_path / "retrained"
    shutil.copytree(exported, folder)
    retrained = build_model("shift_cnn", 64)
    retrained.save(folder / "model.keras")  # new weights, the old model.onnx left beside them
    loaded = load_model(folder)
    assert loaded.engine is None and loaded.engine_name == "TensorFlow"
    img = np.random.default_rng(1).random((64, 64)).astype("float32")
    assert loaded.predict(img)[0] == pytest.approx(float(np.asarray(retrained(loaded.prepare(img)))[0, 0]), abs=1e-5)
    monkeypatch.setenv(E.ENGINE_ENV, "onnx")
    with pytest.raises(ValueError, match="another version"):
        load_model(folder)
    monkeypatch.setenv(E.ENGINE_ENV, "tensorflow")
    assert load_model(exported).engine is None
    monkeypatch.setenv(E.ENGINE_ENV, "fastest")
    with pytest.raises(ValueError, match="auto, onnx or tensorflow"):
        load_model(exported)


def test_the_shipped_export_matches_the_shipped_model() -> None:
    from pneumo.data.collection import read_item

    loaded = load_model()
    assert loaded.engine is not None, "models/model.onnx is missing or stale: run python -m pneumo export"
    paths = sorted(p for p in SAMPLES_DIR.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:16]
    images = [read_item(str(p)) for p in paths]
    served = loaded.predict(images)
    reference = np.asarray(loaded.model(loaded.prepare(images), training=False)).ravel()
    np.testing.assert_allclose(served, reference, atol=1e-4, rtol=0)
    assert DEFAULT_MODEL_PATH.with_name(E.ONNX_NAME) == loaded.engine.path


def test_evaluate_and_predict_run_without_tensorflow(xray_folder: Path) -> None:
    # ONNX Runtime serves the shipped model, so a command-line answer does not wait for TensorFlow's import.
    probe = (
        "import sys; from pneumo.cli import main; rc = main(sys.argv[1:]); "
        "print('TF', 'tensorflow' in sys.modules); sys.exit(rc)"
    )
    image = next(xray_folder.rglob("*.png"))
    for args in (
        ["evaluate", "--data", str(xray_folder), "--out", str(xray_folder.parent / "r.json")],
        ["predict", "--json", str(image)],
    ):
        out = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert "TF False" in out.stdout, args[0]


def test_a_loaded_model_without_keras_loads_it_on_first_use(exported: Path) -> None:
    loaded = load_model(exported)
    assert isinstance(loaded, LoadedModel) and loaded.keras_model is None
    network = loaded.model
    assert loaded.keras_model is network and loaded.model is network  # loaded on first use, and kept
    # The network loaded is the exported one: it gives the ONNX graph's answers.
    x = np.random.default_rng(5).random((3, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded.model(x, training=False)).ravel(), loaded.engine.probabilities(x).ravel(), atol=1e-4, rtol=0
    )


def test_an_export_that_differs_from_keras_is_removed(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / E.ONNX_NAME
    shutil.copy(exported / E.ONNX_NAME, copy)
    probe = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
    right = E.OnnxEngine(copy).probabilities(probe)
    E._check(copy, {"probability": right + 5e-5}, {"xray": probe})  # within 1e-4: kept
    assert copy.exists()
    with pytest.raises(E.ExportError, match="differs"):
        E._check(copy, {"probability": right + 1e-3}, {"xray": probe})
    assert not copy.exists()


def _zero_graph(size: int, source: str, with_features: bool) -> bytes:
    """A graph with the served inputs and outputs that answers 0 for every film, labelled with the hash
    of the .keras file it claims to come from."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["xray"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["probability"]),
    ]
    outputs = [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])]
    if with_features:
        nodes.append(helper.make_node("ReduceMean", ["xray"], ["features"], axes=[1, 2], keepdims=0))
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(
        nodes,
        "zero",
        [helper.make_tensor_value_info("xray", TensorProto.FLOAT, ["N", size, size, 1])],
        outputs,
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = E.SOURCE_KEY, source
    return model.SerializeToString()


def test_export_writes_the_probe_every_load_checks(exported: Path) -> None:
    record = json.loads((exported / E.PROBE_NAME).read_text())
    assert record["source_sha256"] == E.file_sha256(exported / "model.keras") and record["input_size"] == 64
    assert len(record["outputs"]["probability"]) == len(E.probe_images(64)) and set(record["gradcam"]) == {
        "gradcam",
        "gradcam_plus_plus",
    }
    assert np.ptp(record["outputs"]["probability"]) > 1e-3  # the probe films get different answers
    loaded = load_model(exported)
    assert loaded.engine is not None and loaded.engine_note is None and loaded.engine.cam_session is not None
    # The engine kept answers the probe films as the Keras model did when the record was written.
    np.testing.assert_allclose(
        loaded.engine.probabilities(E.probe_images(64)).ravel(), record["outputs"]["probability"], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("with_features", [False, True])
def test_a_swapped_graph_labelled_with_the_models_hash_is_refused(
    exported: Path, tmp_path: Path, with_features: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    folder = tmp_path / "swapped"
    shutil.copytree(exported, folder)
    (folder / E.ONNX_NAME).write_bytes(_zero_graph(64, E.file_sha256(folder / "model.keras"), with_features))
    assert E.OnnxEngine(folder / E.ONNX_NAME).source_sha256 == E.file_sha256(folder / "model.keras")
    loaded = load_model(folder)
    assert loaded.engine is None and loaded.engine_name == "TensorFlow"
    assert "refused" in loaded.engine_note and "served by TensorFlow" in loaded.engine_note
    images = [np.random.default_rng(i).random((64, 64)).astype("float32") for i in range(4)]
    reference = np.asarray(loaded.model(loaded.prepare(images), training=False)).ravel()
    np.testing.assert_allclose(loaded.predict(images), reference, atol=1e-5)  # the model's answers, not 0
    monkeypatch.setenv(E.ENGINE_ENV, "onnx")
    with pytest.raises(ValueError, match="refused"):
        load_model(folder)


def test_a_swapped_graph_is_refused_through_the_cli_with_one_line(exported: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "swapped"
    shutil.copytree(exported, folder)
    (folder / E.ONNX_NAME).write_bytes(_zero_graph(64, E.file_sha256(folder / "model.keras"), True))
    image = tmp_path / "film.png"
    from tests.conftest import synthetic_xray, write_png

    write_png(image, synthetic_xray(np.random.default_rng(0), 64, pneumonia=True))
    out = subprocess.run(
        [sys.executable, "-m", "pneumo", "predict", "--model", str(folder), "--json", str(image)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr
    warning = [line for line in out.stderr.splitlines() if "model.onnx" in line]
    assert len(warning) == 1 and "refused" in warning[0] and "Traceback" not in out.stderr
    import keras

    from pneumo.core.card import ModelCard
    from pneumo.data.collection import read_item

    model = keras.models.load_model(folder / "model.keras", compile=False)
    expected = float(
        np.asarray(model(LoadedModel(model, ModelCard.default("swapped"), folder).prepare(read_item(str(image)))))[0, 0]
    )
    assert json.loads(out.stdout)[0]["probability"] == pytest.approx(expected, abs=1e-4)


def test_an_export_without_its_probe_or_with_a_wrong_gradcam_is_not_served_unchecked(
    exported: Path, tmp_path: Path
) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(exported, bare)
    (bare / E.PROBE_NAME).unlink()
    loaded = load_model(bare)
    assert loaded.engine is None and f"no {E.PROBE_NAME}" in loaded.engine_note

    cam = tmp_path / "cam"
    shutil.copytree(exported, cam)
    record = json.loads((cam / E.PROBE_NAME).read_text())
    record["gradcam"]["gradcam"] = (np.asarray(record["gradcam"]["gradcam"]) + 1.0).tolist()
    (cam / E.PROBE_NAME).write_text(json.dumps(record))
    loaded = load_model(cam)  # probabilities still from ONNX Runtime; Grad-CAM from the traced graph
    assert loaded.engine is not None and not loaded.engine.explains("stage3_out")
    assert E.CAM_NAME in loaded.engine_note and "refused" in loaded.engine_note

    for junk in ("[1, 2]", "{" * 50_000, json.dumps({**record, "outputs": {"probability": "zero"}})):
        (cam / E.PROBE_NAME).write_text(junk)
        loaded = load_model(cam)
        assert loaded.engine is None and E.PROBE_NAME in loaded.engine_note
