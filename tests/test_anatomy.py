"""The canonical "lungs" framing: what it crops, that training, the checks and serving apply it once and alike,
and that a map computed on the framed film lands where the network looked."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pneumo.core.card import ModelCard
from pneumo.data import transforms as T
from pneumo.data.anatomy import apply_framing, framed_input, framing_box, place_map
from pneumo.model.loading import LoadedModel, ModelLoadError, PreparedBatch, load_model
from tests.conftest import synthetic_xray

SIZE = 32


def _chest(seed: int = 3, size: int = 128) -> np.ndarray:
    return synthetic_xray(np.random.default_rng(seed), size)


def _model(framing: str) -> LoadedModel:
    # Seeded: a randomly drawn network can have every unit of its one layer dead on a film, and its map then is
    # flat, which the map test would read as a failure of the framing.
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inp)
    out = layers.Dense(1, activation="sigmoid")(layers.GlobalAveragePooling2D()(x))
    card = ModelCard(name="framed", architecture="test", threshold=0.5, gradcam_layer="feat")
    card.extra["framing"] = framing
    return LoadedModel(keras.Model(inp, out), card, Path("framed.keras"))


def test_lungs_framing_crops_to_the_lungs_with_a_margin_and_keeps_a_film_without_them_whole() -> None:
    film = _chest()
    y0, y1, x0, x1 = framing_box(film, "lungs")
    # synthetic_xray's lungs span x 0.14–0.86 and y 0.2–0.8 of the film: the box holds them, and little else.
    assert y0 <= 0.2 * 128 and y1 >= 0.8 * 128 and x0 <= 0.14 * 128 + 2 and x1 >= 0.86 * 128 - 2
    assert (y1 - y0) * (x1 - x0) < 0.75 * 128 * 128
    assert framing_box(film, "none") == (0, 128, 0, 128)
    flat = np.full((128, 128), 0.5, np.float32)
    assert framing_box(flat, "lungs") == (0, 128, 0, 128)  # nothing found: the whole film, not a guessed box
    with pytest.raises(ValueError, match="unknown framing 'chest'"):
        apply_framing(film, "chest")


def test_a_film_zoomed_out_in_a_black_frame_is_framed_much_as_the_film_itself() -> None:
    import cv2

    film = _chest(size=160)
    far = T.affine(film, scale=0.75)  # zoomed out, a black frame around it: the stress suite's "zoom out"

    def gap(framing: str) -> float:  # the inputs compared smoothed: the synthetic film's grain is not framing
        a, b = (cv2.GaussianBlur(framed_input(x, framing, 64), (0, 0), 2) for x in (far, film))
        return float(np.abs(a - b).mean())

    # The framing takes most of the zoom back out; without it the two inputs differ everywhere.
    assert gap("lungs") < 0.3 * gap("none"), (gap("lungs"), gap("none"))


def test_a_framed_model_frames_every_film_once() -> None:
    loaded = _model("lungs")
    films = np.stack([_chest(seed) for seed in range(3)])
    batch = loaded.prepare(films)
    assert isinstance(batch, PreparedBatch) and batch.shape == (3, SIZE, SIZE, 1)
    want = np.stack([framed_input(f, "lungs", SIZE) for f in films])
    assert np.array_equal(batch[..., 0], want)
    assert np.array_equal(loaded.prepare(batch), batch)  # a prepared batch is served as it is, not framed again
    assert np.array_equal(loaded.prepare(batch[1:]), batch[1:])  # a slice of one too
    # Films that merely have the input's shape are films: framed, where a model without framing takes them as
    # they are.
    same_shape = np.stack([_chest(seed, SIZE) for seed in range(2)])[..., None]
    assert not np.array_equal(loaded.prepare(same_shape), same_shape)
    assert np.array_equal(_model("none").prepare(same_shape), same_shape)
    assert np.allclose(loaded.predict(films), loaded.predict(batch))
    # A batch another model prepared without framing is films to this one: framed, not passed through.
    unframed = _model("none").prepare(films)
    again = loaded.prepare(unframed)
    assert np.array_equal(again[..., 0], np.stack([framed_input(f, "lungs", SIZE) for f in unframed[..., 0]]))
    assert not np.array_equal(again, unframed)


def test_a_framed_models_map_lies_inside_its_framing_box() -> None:
    from pneumo.model import explain

    loaded = _model("lungs")
    film = _chest(5)
    heat = explain.gradcam(loaded, film, target=1)
    y0, y1, x0, x1 = framing_box(film, "lungs")
    assert heat.shape == film.shape and heat[y0:y1, x0:x1].max() == pytest.approx(1.0)
    outside = np.ones(film.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any() and heat[outside].max() == 0.0
    placed = place_map(np.ones((4, 4), np.float32), (10, 10), (2, 6, 3, 9))
    assert placed.sum() == 4 * 6 and placed[2:6, 3:9].min() == 1.0


def test_a_card_naming_an_unknown_framing_is_refused_at_load(tmp_path: Path) -> None:
    from pneumo.training.callbacks import save_model

    folder = tmp_path / "m"
    folder.mkdir()
    save_model(_model("none").model, folder / "model.keras")
    card = ModelCard(name="m", architecture="test", threshold=0.5)
    card.extra["framing"] = "thorax"
    card.write(folder / "card.json")
    with pytest.raises(ModelLoadError, match=r"card.json: framing 'thorax' is not one this version knows"):
        load_model(folder)
    card.extra["framing"] = "lungs"
    card.write(folder / "card.json")
    assert load_model(folder).framing == "lungs"


def test_training_frames_its_films_as_serving_does(tmp_path: Path) -> None:
    import pandas as pd

    from pneumo.data.collection import read_item
    from pneumo.training import pipeline as P
    from tests.conftest import write_png

    paths = [str(write_png(tmp_path / f"NORMAL/IM-000{i}-0001.png", _chest(i, 96))) for i in range(3)]
    frame = pd.DataFrame({"path": paths, "label": [0, 0, 0]})
    ds = P.make_dataset(frame, SIZE, batch_size=3, framing="lungs", cache=False)
    images = next(iter(ds))[0].numpy()[..., 0]
    served = _model("lungs").prepare([read_item(p) for p in paths])[..., 0]
    assert np.allclose(images, served, atol=1e-6)
    assert not np.allclose(images, _model("none").prepare([read_item(p) for p in paths])[..., 0], atol=1e-3)
