from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pneumo.core.card import ModelCard
from pneumo.data.pixels import to_uint8
from pneumo.model import explain
from pneumo.model.loading import LoadedModel

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
    card = ModelCard(name=name, architecture="blob test", threshold=0.5, gradcam_layer=name)
    return LoadedModel(model, card, Path(f"{name}.keras"))


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
        # Min–max scaled: a map with any structure spans exactly 0 to 1 (a flat map would be all zeros).
        assert heat.shape == img.shape and heat.min() == 0.0 and heat.max() == pytest.approx(1.0, abs=1e-6)
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


def test_warm_up_traces_both_compiled_explainers(flat_model: LoadedModel) -> None:
    flat_model.clear_caches()
    assert flat_model.cache.keys() == []
    explain.warm_up(flat_model)
    cams = {key[1:] for key in flat_model.cache.keys() if isinstance(key, tuple) and key[0] == "cam"}
    assert cams == {(method, flat_model.gradcam_layer) for method in explain.METHODS}
    assert "forward" in flat_model.cache.keys()


def test_traced_graphs_are_reused_and_live_on_the_model(flat_model: LoadedModel) -> None:
    first = explain._compiled_cam(flat_model, "gradcam", flat_model.gradcam_layer)
    assert explain._compiled_cam(flat_model, "gradcam", flat_model.gradcam_layer) is first
    # A copy for another operating point shares the graphs; clearing them builds new ones.
    import dataclasses

    copy = dataclasses.replace(flat_model, operating_point="site")
    assert explain._compiled_cam(copy, "gradcam", flat_model.gradcam_layer) is first
    flat_model.clear_caches()
    assert explain._compiled_cam(flat_model, "gradcam", flat_model.gradcam_layer) is not first
    # The reference explainer is cached on the model too, not in a module dict keyed by id().
    explain.gradcam(flat_model, np.zeros((SIZE, SIZE), np.float32), target=1, engine="tf-keras-vis")
    assert ("tf-keras-vis", "gradcam", flat_model.gradcam_layer) in flat_model.cache.keys()
    assert not hasattr(explain, "_explainers")


def test_a_nested_target_with_a_bypassing_connection_is_reachable() -> None:
    """The backbone split at the target still runs a residual that skips it (the back half's second input)."""
    keras.utils.set_random_seed(2)
    inner_in = keras.Input((SIZE, SIZE, 1))
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inner_in)
    b = layers.Conv2D(4, 3, padding="same", activation="relu", name="skipped")(a)
    backbone = keras.Model(inner_in, layers.Add(name="residual")([a, b]), name="backbone")
    inp = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inp, layers.Dense(1, activation="sigmoid")(layers.GlobalAveragePooling2D()(backbone(inp))))
    rebuilt, target = explain.reachable_model(model, "skipped")
    assert target == explain.TARGET_ALIAS and target in [layer.name for layer in rebuilt.layers]
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(rebuilt(x)), np.asarray(model(x)), atol=1e-6)
    # The same weights, not a copy.
    assert {id(w) for w in rebuilt.weights} == {id(w) for w in model.weights}


@pytest.mark.parametrize("method", explain.METHODS)
@pytest.mark.parametrize("target", [0, 1])
def test_compiled_maps_equal_the_tf_keras_vis_reference(
    flat_model: LoadedModel, nested_model: LoadedModel, method: str, target: int
) -> None:
    x, _, _ = _blob_data(4, np.random.default_rng(3))
    for loaded in (flat_model, nested_model):
        for img in x:
            fast = explain.gradcam(loaded, img, method=method, target=target)
            reference = explain.gradcam(loaded, img, method=method, target=target, engine="tf-keras-vis")
            np.testing.assert_allclose(fast, reference, atol=2e-3)


@pytest.mark.parametrize("shape", [(1024, 400), (2000, 900), (700, 300)])
def test_the_colour_bar_numbers_stay_on_their_panel_beside_a_tall_film(shape: tuple[int, int]) -> None:
    """Numbers sized by the film's height alone ran off a narrow panel ("1.0" cut at its right edge); they
    are made smaller to fit, for print and for the screen."""
    h, w = shape
    panel = explain.with_colorbar(np.zeros((h, w, 3), np.uint8))[:, w:]
    numbers = panel[:, -4:]  # the panel's last columns: background only
    assert (numbers == 255).all()
    ink = (panel < 200).all(axis=2) & ~(np.ptp(panel.astype(int), axis=2) > 30)  # dark gray, not the ramp
    assert ink.sum() > 0  # the numbers are still drawn


def test_colorbar_is_appended_beside_the_overlay() -> None:
    rgb = np.zeros((100, 80, 3), np.uint8)
    out = explain.with_colorbar(rgb)
    assert out.shape[0] == 100 and out.shape[1] > 80 and (out[:, :80] == 0).all()
    bar = out[:, 80:].reshape(-1, 3)
    assert len({tuple(px) for px in bar}) > 20  # a colour ramp, not a blank strip


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.45, 1.0])
def test_screen_layers_blended_by_the_browser_equal_the_drawn_overlay(alpha: float) -> None:
    """The Predict page sends the film, the map and the colour bar apart and lets CSS opacity blend the map
    over the film: composited at alpha ("source over"), they must give the overlay the reports draw."""
    rng = np.random.default_rng(3)
    film, heat = rng.random((90, 70)).astype(np.float32), rng.random((7, 7)).astype(np.float32)
    above = explain.map_layer(film, heat)
    assert above.shape == (90, 70, 3) and above.dtype == np.uint8
    below = np.repeat(to_uint8(film)[..., None], 3, axis=2)  # the gray film the card shows
    composited = above * alpha + below * (1 - alpha)
    drawn = explain.overlay(film, heat, alpha)
    assert np.abs(composited - drawn).max() <= 0.5 + 1e-9  # addWeighted rounds to the nearest integer


@pytest.mark.parametrize("shape", [(224, 224), (640, 512), (640, 227), (300, 120), (60, 80), (640, 10), (10, 640)])
def test_the_screen_colour_bar_is_a_quarter_of_the_film_wide_in_its_proportions(shape: tuple[int, int]) -> None:
    """The page sets the bar beside the film at 1/SCREEN_BAR_SHARE of its width, the bar's height following
    its own proportions: they must be the film's, or the bar would be taller or shorter than the film."""
    h, w = shape
    bar = explain.screen_colorbar(h, w)
    assert bar.shape[2] == 4 and bar.shape[1] >= min(56, 2048 * w / (4 * h)) and bar.shape[0] <= 2048
    shown_height = (w / explain.SCREEN_BAR_SHARE) * bar.shape[0] / bar.shape[1]
    assert abs(shown_height - h) <= 0.005 * h + 0.5, (bar.shape, shape)  # within rounding to whole pixels
    ramp = bar[:, :, :3][bar[:, :, 3] == 255]
    assert len({tuple(px) for px in ramp}) > min(20, bar.shape[0] // 2)  # a colour ramp on a see-through panel
    if shape == (224, 224):  # the same panel the reports draw beside a film of that size, see-through
        drawn = explain.with_colorbar(np.zeros((h, w, 3), np.uint8), transparent=True)
        assert np.array_equal(bar, drawn[:, w:])
