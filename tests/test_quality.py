from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.data.pixels import colourfulness
from pneumo.model import input_check as quality
from pneumo.model.loading import load_model
from pneumo.model.reading import read


def test_density_alarm_level_is_calibrated_on_unseen_half() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 8))
    density = quality.fit(feats)
    assert (density.n_fit, density.n_calibrate) == (200, 200)
    # The alarm sits at the 98th percentile of the 200 calibration distances: by linear interpolation at
    # rank 0.98 × 199 = 195.02 (0-based), between the 196th and 197th smallest. Strictly above it lie the
    # 197th to the 200th: 4 films of 200, 2 %, for any 200 distinct distances.
    assert quality.ALARM_QUANTILE == 98.0
    assert density.false_alarm_rate == pytest.approx(4 / 200, abs=1e-12)
    # The distance is Mahalanobis's under the stored mean and precision (scipy's, term by term).
    from scipy.spatial.distance import mahalanobis

    probe = rng.normal(size=(5, 8))
    expected = [mahalanobis(x, density.mean, density.precision) for x in probe]
    np.testing.assert_allclose(density.distance(probe), expected, rtol=1e-10)
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
    assert colourfulness(rgb) > quality.COLOUR_LIMIT
    assert colourfulness(np.repeat(np.random.default_rng(2).random((64, 64, 1)), 3, axis=2)) == 0.0


def test_a_trained_run_checks_its_inputs(tiny_run: Path, tmp_path: Path) -> None:
    from pneumo.core.card import ModelCard

    assert (tiny_run / quality.FILE_NAME).exists()
    card = ModelCard.read(tiny_run / "card.json")
    assert card.extra["input_check"]["available"]
    loaded = load_model(tiny_run)
    # Held-out films: few alarms. Noise and a coloured photo: warnings beside the score.
    val = pd.read_csv(tiny_run / "val_predictions.csv")
    from pneumo.data.collection import read_item

    alarms = [bool(quality.check(loaded, read_item(p), loaded.density)) for p in val["path"]]
    assert np.mean(alarms) <= 0.25  # a 20-image calibration half on a one-epoch model: coarse, but bounded
    noise = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    assert quality.check(loaded, noise, loaded.density)
    import io

    from PIL import Image

    photo = np.zeros((64, 64, 3), np.uint8)
    photo[..., 1] = 200
    photo[:32, :, 0] = 180
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    reading = read(loaded, buf.getvalue(), name="holiday.png")
    assert reading.probability is not None and any("colour" in w for w in reading.warnings)


def test_detection_rates_cover_real_films_and_wrong_inputs(tiny_run: Path) -> None:
    from pneumo.core.card import ModelCard

    rates = ModelCard.read(tiny_run / "card.json").extra["input_check"]["warned_share"]
    assert set(rates) == {"real films (false alarms)", "inverted", "rotated by 90°", "upside down", "uniform noise"}
    # Shares of the held-out films (all of them: fewer than the 200 drawn), noise of at most 50 of them.
    n = len(pd.read_csv(tiny_run / "val_predictions.csv"))
    for name, share in rates.items():
        count = share * min(n, 50 if name == "uniform noise" else 200)
        assert count == pytest.approx(round(count), abs=1e-9), (name, share, n)
    assert rates["uniform noise"] >= rates["real films (false alarms)"]


def test_detection_rates_count_each_case_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in check that warns when the top-left pixel is bright: the four corners of ten 8×8 films are
    set so that each case's share is known, whatever order the films are drawn in."""
    films = np.full((10, 8, 8), 0.25, np.float32)
    films[:3, 0, 0] = 1.0  # as they are: 3 of 10 warned
    films[:5, 0, -1] = 1.0  # rot90 (anticlockwise) brings the top-right corner to the top left: 5 of 10
    films[:1, -1, -1] = 1.0  # upside down brings the bottom-right there: 1 of 10
    seen: list[np.ndarray] = []

    def bright_corner(loaded, image, density, colour=0.0):
        seen.append(image)
        # Uniform noise spreads its pixels (σ ≈ 0.29); these films, flat at 0.25 with up to three bright
        # corners, stay under σ = 0.16: noise is warned about whatever its top-left pixel.
        return ["bright corner"] if image[0, 0] > 0.5 or image.std() > 0.2 else []

    monkeypatch.setattr(quality, "check", bright_corner)
    rates = quality.detection_rates(None, films, density=None)
    noise = seen[-10:]
    assert rates["real films (false alarms)"] == pytest.approx(0.3)
    assert rates["inverted"] == pytest.approx(0.7)  # 1 − x: the 7 films dark at the top left turn bright
    assert rates["rotated by 90°"] == pytest.approx(0.5) and rates["upside down"] == pytest.approx(0.1)
    assert len(seen) == 50 and all(x.shape == (8, 8) and 0.2 < x.std() < 0.4 for x in noise)  # uniform: σ ≈ 0.29
    assert rates["uniform noise"] == 1.0
    # A limit draws that many films, and as many noise films: the shares are then counts out of 4.
    seen.clear()
    limited = quality.detection_rates(None, films, density=None, limit=4)
    assert len(seen) == 4 * 5 and limited["uniform noise"] == 1.0
    assert all((v * 4) == pytest.approx(round(v * 4)) for v in limited.values())
