from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo import architectures as A
from pneumo import models as M


@pytest.mark.parametrize("name", list(A.ARCHITECTURES))
def test_every_architecture_takes_gray_input_and_has_its_cam_layer(name: str) -> None:
    model = A.build_model(name, image_size=64 if name != "compact_cnn" else 48)
    assert model.input_shape[-1] == 1
    out = np.asarray(model(np.random.rand(2, *model.input_shape[1:]).astype("float32")))
    assert out.shape == (2, 1) and ((0 <= out) & (out <= 1)).all()
    assert len(model.get_layer(A.ARCHITECTURES[name].gradcam_layer).output.shape) == 4


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="compact_cnn"):
        A.build_model("vgg99")


def test_imagenet_weights_without_network_explain_how_to_supply_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
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
