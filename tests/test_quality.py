from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo import quality
from pneumo.models import load_model
from pneumo.predict import read


def test_density_alarm_level_is_calibrated_on_unseen_half() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 8))
    density = quality.fit(feats)
    assert 0.0 <= density.false_alarm_rate <= 0.05
    fresh = density.distance(rng.normal(size=(1000, 8)))
    assert (fresh > density.alarm).mean() < 0.06  # about 2 % of films like the calibration ones
    assert (density.distance(rng.normal(size=(50, 8)) + 6.0) > density.alarm).all()
    with pytest.raises(ValueError, match="at least 20"):
        quality.fit(feats[:10])


def test_density_round_trips_and_tolerates_a_missing_file(tmp_path: Path) -> None:
    density = quality.fit(np.random.default_rng(1).normal(size=(60, 4)))
    density.save(tmp_path / "ood.npz")
    again = quality.FeatureDensity.load(tmp_path / "ood.npz")
    np.testing.assert_allclose(again.precision, density.precision)
    assert quality.FeatureDensity.load(tmp_path / "none.npz") is None
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    assert quality.FeatureDensity.load(tmp_path / "bad.npz") is None


def test_colour_photos_are_flagged() -> None:
    rgb = np.zeros((64, 64, 3), np.float32)
    rgb[..., 0] = 0.9
    assert quality.colourfulness(rgb) > quality.COLOUR_LIMIT
    assert quality.colourfulness(np.repeat(np.random.default_rng(2).random((64, 64, 1)), 3, axis=2)) == 0.0


def test_a_trained_run_checks_its_inputs(tiny_run: Path, tmp_path: Path) -> None:
    from pneumo.card import ModelCard

    assert (tiny_run / quality.FILE_NAME).exists()
    card = ModelCard.read(tiny_run / "card.json")
    assert card.extra["input_check"]["available"]
    loaded = load_model(tiny_run)
    # Held-out films: few alarms. Noise and a coloured photo: warnings beside the score.
    val = pd.read_csv(tiny_run / "val_predictions.csv")
    from pneumo.data import read_item

    alarms = [bool(quality.check(loaded, read_item(p), loaded.density)) for p in val["path"]]
    assert np.mean(alarms) <= 0.25  # a 20-image calibration half on a one-epoch model: coarse, but bounded
    noise = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    assert quality.check(loaded, noise, loaded.density)
    from PIL import Image
    import io

    photo = np.zeros((64, 64, 3), np.uint8)
    photo[..., 1] = 200
    photo[:32, :, 0] = 180
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    reading = read(loaded, buf.getvalue(), name="holiday.png")
    assert reading.probability is not None and any("colour" in w for w in reading.warnings)


def test_detection_rates_cover_real_films_and_wrong_inputs(tiny_run: Path) -> None:
    from pneumo.card import ModelCard

    rates = ModelCard.read(tiny_run / "card.json").extra["input_check"]["warned_share"]
    assert set(rates) == {"real films (false alarms)", "inverted", "rotated by 90°", "upside down", "uniform noise"}
    assert all(0.0 <= v <= 1.0 for v in rates.values())
    assert rates["uniform noise"] >= rates["real films (false alarms)"]
