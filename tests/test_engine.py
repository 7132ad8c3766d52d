from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumo import engine as E
from pneumo import quality
from pneumo.architectures import build_model
from pneumo.models import DEFAULT_MODEL_PATH, LoadedModel, load_model
from pneumo.settings import SAMPLES_DIR

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
    E.export_onnx(model, folder / "model.keras", "stage3_out")
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
    from pneumo import explain

    loaded = load_model(exported)
    assert loaded.engine.explains("stage3_out") and not loaded.engine.explains("stage2_out")
    image = np.random.default_rng(3).random((90, 72)).astype("float32")
    onnx_engine = loaded.engine
    spread = []
    for target in (1, 0):
        loaded.engine = onnx_engine
        served = explain.gradcam(loaded, image, method=method, target=target)
        loaded.engine = None  # the same model through the traced TensorFlow graph
        traced = explain.gradcam(loaded, image, method=method, target=target)
        assert served.shape == image.shape
        np.testing.assert_allclose(served, traced, atol=1e-3)
        spread.append(traced.std())
    assert max(spread) > 0.05  # at least one map with structure, not a flat field
    loaded.engine = onnx_engine
    raw = onnx_engine.cam(loaded.prepare(image), np.array([-1.0], np.float32), method)
    assert raw.shape == (1, 4, 4)  # four stride-2 stages on a 64 px input


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
    from pneumo.data import read_item

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
    probe = ("import sys; from pneumo.cli import main; rc = main(sys.argv[1:]); "
             "print('TF', 'tensorflow' in sys.modules); sys.exit(rc)")
    image = next(xray_folder.rglob("*.png"))
    for args in (["evaluate", "--data", str(xray_folder), "--out", str(xray_folder / "r.json")],
                 ["predict", "--json", str(image)]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "TF False" in out.stdout, args[0]


def test_a_loaded_model_without_keras_loads_it_on_first_use(exported: Path) -> None:
    loaded = load_model(exported)
    assert isinstance(loaded, LoadedModel) and loaded.keras_model is None
    assert loaded.model.count_params() > 0 and loaded.keras_model is not None


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
