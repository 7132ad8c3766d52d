from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pneumo import explain
from pneumo.models import LoadedModel

SIZE = 48


def _blob_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.random((n, SIZE, SIZE)).astype("float32") * 0.3
    y = rng.integers(0, 2, n)
    centers = rng.integers(8, SIZE - 8, (n, 2))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in np.where(y == 1)[0]:
        cy, cx = centers[i]
        x[i] += 0.7 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return np.clip(x, 0, 1), y, centers


def _blob_model(nested: bool, seed: int) -> LoadedModel:
    """A small CNN trained on the blob task; with nested=True its feature layers sit in a backbone sub-model."""
    keras.utils.set_random_seed(seed)
    name = "deep_feat" if nested else "feat"
    features = [
        layers.Conv2D(8, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", activation="relu", name=name),
    ]
    inp = keras.Input((SIZE, SIZE, 1))
    if nested:
        x = keras.Sequential([keras.Input((SIZE, SIZE, 1)), *features], name="backbone")(inp)
    else:
        x = inp
        for layer in features:
            x = layer(x)
    model = keras.Model(inp, layers.Dense(1, activation="sigmoid")(layers.GlobalAveragePooling2D()(x)))
    x_train, y_train, _ = _blob_data(400, np.random.default_rng(seed))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(x_train[..., None], y_train, epochs=8, batch_size=32, verbose=0)
    return LoadedModel(model, {"gradcam_layer": name, "threshold": 0.5}, Path(f"{name}.keras"))


@pytest.fixture(scope="module")
def flat_model() -> LoadedModel:
    return _blob_model(nested=False, seed=0)


@pytest.fixture(scope="module")
def nested_model() -> LoadedModel:
    return _blob_model(nested=True, seed=1)


def _peak_distance(loaded: LoadedModel, method: str) -> list[float]:
    x, y, centers = _blob_data(40, np.random.default_rng(7))
    distances = []
    for img, label, (cy, cx) in zip(x, y, centers):
        if label != 1:
            continue
        heat = explain.gradcam(loaded, img, method=method, target=1)
        assert heat.shape == img.shape and heat.min() >= 0 and heat.max() <= 1
        py, px = np.unravel_index(np.argmax(heat), heat.shape)
        distances.append(float(np.hypot(py - cy, px - cx)))
    return distances


@pytest.mark.parametrize("method", explain.METHODS)
def test_heatmap_peaks_on_the_blob(flat_model: LoadedModel, method: str) -> None:
    distances = _peak_distance(flat_model, method)
    assert np.median(distances) <= 6, distances


def test_nested_backbone_layer_is_reachable(nested_model: LoadedModel) -> None:
    assert "deep_feat" not in [layer.name for layer in nested_model.model.layers]
    distances = _peak_distance(nested_model, "gradcam")
    assert np.median(distances) <= 6, distances


def test_overlay_blends_with_opacity() -> None:
    img = np.zeros((40, 50), np.float32)
    heat = np.zeros((20, 25), np.float32)
    heat[5:10, 5:10] = 1.0
    none = explain.overlay(img, heat, alpha=0.0)
    full = explain.overlay(img, heat, alpha=1.0)
    assert none.shape == (40, 50, 3) and none.dtype == np.uint8 and none.max() == 0
    assert full[15, 15, 0] > 100  # hot region is red in JET
    assert full[35, 45, 2] > 100 and full[35, 45, 0] < 50  # cold region is blue
    png = explain.png_bytes(full)
    assert png.startswith(b"\x89PNG")


def test_warm_up_builds_both_explainers_for_the_model(flat_model: LoadedModel) -> None:
    def built() -> set[str]:
        return {method for (model_id, method, _), _ in explain._explainers.items() if model_id == id(flat_model.model)}

    for key in [k for k in explain._explainers if k[0] == id(flat_model.model)]:
        del explain._explainers[key]
    explain.warm_up(flat_model)
    assert built() == set(explain.METHODS)
