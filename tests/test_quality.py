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
    # The refusal level lies REFUSAL_FACTOR times further out; without films there is no orientation classifier,
    # and the refused share counts distances alone (no calibration film is twice as far as the 98th percentile).
    assert density.refusal == pytest.approx(quality.REFUSAL_FACTOR * density.alarm) and density.refusal_level > 0
    assert density.orientation is None and density.refusal_rate == 0.0
    with pytest.raises(ValueError, match="at least 20"):
        quality.fit(feats[:10])


def test_density_round_trips_and_tolerates_a_missing_file(tmp_path: Path) -> None:
    density = quality.fit(np.random.default_rng(1).normal(size=(60, 4)))
    density.save(tmp_path / "ood.npz")
    again = quality.FeatureDensity.load(tmp_path / "ood.npz")
    np.testing.assert_allclose(again.precision, density.precision)
    assert (again.alarm, again.refusal, again.refusal_rate) == (density.alarm, density.refusal, density.refusal_rate)
    assert again.orientation is None
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
    section = card.extra["input_check"]
    assert section["available"] and section["orientation_classifier"]
    assert section["refusal_distance"] == pytest.approx(quality.REFUSAL_FACTOR * section["warning_distance"])
    assert 0.0 <= section["false_alarm_rate_on_held_out"] <= section["warned_rate_on_held_out"] + 0.5
    loaded = load_model(tiny_run)
    assert loaded.density.orientation is not None and loaded.density.refusal_rate is not None
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

    section = ModelCard.read(tiny_run / "card.json").extra["input_check"]
    refused, warned = section["refused_share"], section["warned_share"]
    assert set(refused) == set(warned) == set(quality.DETECTION_CASES)
    # Shares of the held-out films (all of them: fewer than the 200 drawn), noise of at most 50 of them.
    n = len(pd.read_csv(tiny_run / "val_predictions.csv"))
    for name in quality.DETECTION_CASES:
        for share in (refused[name], warned[name]):
            count = share * min(n, 50 if name == "uniform noise" else 200)
            assert count == pytest.approx(round(count), abs=1e-9), (name, share, n)
        assert refused[name] + warned[name] <= 1.0 + 1e-9  # a film is refused or warned, never both
    assert refused["uniform noise"] >= refused["real films"]


def test_detection_rates_count_each_case_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in check that refuses when the top-left pixel is bright (or the film is noise) and warns when the
    pixel below-right of it is: the corners of ten 8×8 films are set so that each case's shares are known, whatever
    order the films are drawn in."""
    films = np.full((10, 8, 8), 0.25, np.float32)
    films[:3, 0, 0] = 1.0  # as they are: 3 of 10 refused
    films[:4, -1, 0] = 1.0  # turned 90° clockwise brings the bottom-left corner to the top left: 4 of 10
    films[:1, -1, -1] = 1.0  # upside down brings the bottom-right there: 1 of 10
    films[5:7, 1, 1] = 1.0  # as they are: 2 of 10 warned (not refused)
    seen: list[np.ndarray] = []

    def stand_in(density, feats, images, features_of):
        out = []
        for image in images:
            seen.append(image)
            # Uniform noise spreads its pixels (σ ≈ 0.29); these films, flat at 0.25 with up to four bright
            # pixels, stay under σ = 0.2: noise is refused whatever its top-left pixel.
            refused = bool(image[0, 0] > 0.5 or image.std() > 0.2)
            out.append(quality.Verdict(0.0, None, 0.0, refused, not refused and bool(image[1, 1] > 0.5)))
        return out

    monkeypatch.setattr(quality, "verdicts", stand_in)
    monkeypatch.setattr(quality, "features", lambda loaded, batch: np.zeros((len(batch), 2)))
    rates = quality.detection_rates(None, films, density=None)
    refused, warned = rates["refused"], rates["warned"]
    noise = seen[-10:]
    assert refused["real films"] == pytest.approx(0.3) and warned["real films"] == pytest.approx(0.2)
    # 1 − x: the 7 films dark at the top left turn bright; of the other 3, the pixel below-right turns bright.
    assert refused["inverted"] == pytest.approx(0.7) and warned["inverted"] == pytest.approx(0.3)
    assert refused["turned 90° clockwise"] == pytest.approx(0.4) and refused["upside down"] == pytest.approx(0.1)
    assert len(seen) == 50 and all(x.shape == (8, 8) and 0.2 < x.std() < 0.4 for x in noise)  # uniform: σ ≈ 0.29
    assert refused["uniform noise"] == 1.0 and warned["uniform noise"] == 0.0
    # A limit draws that many films, and as many noise films: the shares are then counts out of 4.
    seen.clear()
    limited = quality.detection_rates(None, films, density=None, limit=4)
    assert len(seen) == 4 * 5 and limited["refused"]["uniform noise"] == 1.0
    assert all((v * 4) == pytest.approx(round(v * 4)) for part in limited.values() for v in part.values())


# ---------------------------------------------------------------- two levels, named causes, old files


def _density(dim: int = 4, seed: int = 0) -> quality.FeatureDensity:
    return quality.fit(np.random.default_rng(seed).normal(size=(400, dim)))


def _at(density: quality.FeatureDensity, distance: float) -> np.ndarray:
    """Features (1 × dim) at the given Mahalanobis distance from the density's mean."""
    u = np.zeros(len(density.mean))
    u[0] = 1.0
    return (density.mean + u * distance / np.sqrt(u @ density.precision @ u))[None]


FILM = np.full((32, 32), 0.3, np.float32)  # neither flat white nor coloured: only the features decide


class _Network:
    """A stand-in served model whose features are the same for every film (the corrected ones too)."""

    def __init__(self, feats: np.ndarray) -> None:
        self.engine = self
        self.has_features = True
        self.feats = feats
        self.passes = 0

    def prepare(self, images):
        return np.zeros((len(images), 2, 2, 1), np.float32)

    def features(self, batch):
        self.passes += len(batch)
        return np.repeat(self.feats, len(batch), 0)


@pytest.mark.parametrize(
    ("times_warning", "assessable", "warned"),
    [(0.5, True, False), (1.5, True, True), (2.5, False, True)],
)
def test_a_film_beyond_the_warning_level_is_decided_and_beyond_the_refusal_level_is_not(
    times_warning: float, assessable: bool, warned: bool
) -> None:
    density = _density()
    assert density.alarm < density.refusal_level == pytest.approx(2 * density.alarm)
    own = _at(density, times_warning * density.alarm)
    assert density.distance(own)[0] == pytest.approx(times_warning * density.alarm)
    network = _Network(own)
    found = quality.inspect(network, FILM, density, own_features=own)
    assert found.assessable is assessable and bool(found.warnings) is warned and len(found.warnings) <= 1
    # Without an orientation classifier only a refused film is looked at corrected (to name a cause: none here).
    assert network.passes == (0 if assessable else len(quality.CAUSES))
    for text in found.warnings:
        assert text.startswith("unlike the films the model was checked on") and "frontal" not in text
    if warned:
        assert ("decided" in found.warnings[0]) is assessable and ("no decision" in found.warnings[0]) is not assessable


def test_a_warned_film_is_read_with_a_decision_and_a_refused_one_without(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through reading.read: the warning sits beside a PNEUMONIA/NORMAL decision; beyond the refusal level the
    decision is NOT ASSESSABLE."""
    import io

    from PIL import Image

    from pneumo.core.card import ModelCard
    from pneumo.model.reading import NOT_ASSESSABLE

    density = _density()
    target = {"features": _at(density, 1.5 * density.alarm)}
    monkeypatch.setattr(quality, "features", lambda loaded, batch: np.repeat(target["features"], len(batch), 0))

    class Stub:
        threshold = 0.5
        card = ModelCard.default("stub")

        def __init__(self) -> None:
            self.density = density

        def predict(self, images):
            return np.array([0.9])

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 120 + 60).astype(np.uint8)).save(buf, "PNG")
    warned = read(Stub(), buf.getvalue(), name="film.png")
    assert warned.decision == "PNEUMONIA" and any(w.startswith("unlike the films") for w in warned.warnings)
    target["features"] = _at(density, 2.5 * density.alarm)
    refused = read(Stub(), buf.getvalue(), name="film.png")
    assert refused.decision == NOT_ASSESSABLE and refused.probability == pytest.approx(0.9)
    assert not any("frontal" in w for w in warned.warnings + refused.warnings)


def test_causes_turn_and_invert_films_as_named() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    by_name = {c.name: c for c in quality.CAUSES}
    np.testing.assert_array_equal(by_name["turned 90° clockwise"].make(x), np.rot90(x, -1))  # clockwise on screen
    np.testing.assert_array_equal(by_name["turned 90° counter-clockwise"].make(x), np.rot90(x, 1))
    np.testing.assert_array_equal(by_name["upside down"].make(x), x[::-1, ::-1])
    np.testing.assert_allclose(by_name["inverted (negative film)"].make(x), 1.0 - x)
    for k, cause in enumerate(quality.CAUSES):
        np.testing.assert_allclose(cause.correct(cause.make(x)), x, atol=1e-6)
        # The classifier's class of an upright film once this cause's correction is applied to it.
        made = quality.CAUSES[quality._class_of_correction(k) - 1].make(x)
        np.testing.assert_allclose(cause.correct(x), made, atol=1e-6)


def _oriented_film(rng: np.random.Generator) -> np.ndarray:
    """A made-up upright 'film': bright at the top, darker to the bottom, brighter on the left, with noise."""
    rows = np.linspace(0.8, 0.1, 24)[:, None]
    cols = np.linspace(0.1, -0.1, 24)[None, :]
    return np.clip(rows + cols + rng.normal(0, 0.05, (24, 24)), 0, 1).astype(np.float32)


def _orientation_features(loaded, images) -> np.ndarray:
    """Stand-in pooled features: top minus bottom, left minus right, mean, spread, and two of noise."""
    rows = []
    for image in images:
        x = np.asarray(image, np.float64)
        h, w = x.shape
        rows.append(
            [
                x[: h // 2].mean() - x[h // 2 :].mean(),
                x[:, : w // 2].mean() - x[:, w // 2 :].mean(),
                x.mean(),
                x.std(),
                x[0, 0],
                x[-1, -1],
            ]
        )
    return np.array(rows)


def test_an_inverted_or_turned_film_is_refused_with_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "features", _orientation_features)
    rng = np.random.default_rng(0)
    films = [_oriented_film(rng) for _ in range(80)]

    def features_of(batch):
        return _orientation_features(None, batch)

    density = quality.fit(features_of(films), images=films, features_of=features_of)
    assert density.orientation is not None and density.refusal_rate == 0.0  # no upright calibration film refused
    film = _oriented_film(rng)
    assert quality.inspect(None, film, density) == quality.Assessment([], True)
    # Levels no film reaches: the classifier alone refuses (these made-up features put turned films far out too).
    import dataclasses

    lenient = dataclasses.replace(density, alarm=1e6, refusal=2e6)
    blind = dataclasses.replace(lenient, orientation=None)
    for cause in quality.CAUSES:
        found = quality.inspect(None, cause.make(film), lenient)
        assert not found.assessable and len(found.warnings) == 1, cause.name
        assert found.warnings[0].startswith(f"looks {cause.name}:") and "frontal" not in found.warnings[0]
        assert quality.inspect(None, cause.make(film), blind) == quality.Assessment([], True)
        # A colour picture is refused for what it is; no cause is looked for, none named.
        photo = quality.inspect(None, cause.make(film), lenient, colour=0.5)
        assert not photo.assessable and len(photo.warnings) == 1 and photo.warnings[0].startswith("colour image")


def test_the_orientation_classifier_is_saved_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    films = [_oriented_film(rng) for _ in range(40)]

    def features_of(batch):
        return _orientation_features(None, batch)

    density = quality.fit(features_of(films), images=films, features_of=features_of)
    density.save(tmp_path / quality.FILE_NAME)
    again = quality.FeatureDensity.load(tmp_path / quality.FILE_NAME)
    probe = features_of([films[0], 1.0 - films[0]])
    np.testing.assert_allclose(again.orientation.probabilities(probe), density.orientation.probabilities(probe))
    assert again.refusal == density.refusal and again.refusal_rate == density.refusal_rate
    # A file whose classes are not today's causes is read without its classifier, not with the wrong names.
    with np.load(tmp_path / quality.FILE_NAME) as z:
        arrays = dict(z)
    arrays["orientation_classes"] = np.array(["as sent", "upside down", "inverted", "left", "right"])
    np.savez(tmp_path / "renamed.npz", **arrays)
    renamed = quality.FeatureDensity.load(tmp_path / "renamed.npz")
    assert renamed.orientation is None and renamed.refusal == density.refusal


def test_a_check_file_without_a_refusal_level_refuses_beyond_its_one_level(tmp_path: Path) -> None:
    """A check file written before the two levels (mean, precision, alarm and its rates only) loads, and means
    what it meant when written: a film beyond its one level is refused, one within it is decided unwarned."""
    density = _density()
    np.savez(
        tmp_path / quality.FILE_NAME,
        mean=density.mean,
        precision=density.precision,
        alarm=density.alarm,
        false_alarm_rate=density.false_alarm_rate,
        n_fit=density.n_fit,
        n_calibrate=density.n_calibrate,
    )
    old = quality.FeatureDensity.load(tmp_path / quality.FILE_NAME)
    assert old is not None and old.refusal is None and old.orientation is None and old.refusal_rate is None
    assert old.refusal_level == old.alarm == density.alarm
    within = quality.inspect(None, FILM, old, own_features=_at(old, 0.9 * old.alarm))
    assert within == quality.Assessment([], True)
    # Beyond the one level: refused. The corrected films are looked at to name a cause (the stand-in network
    # gives every corrected film the same far features: no cause is named).
    far = _at(old, 1.2 * old.alarm)
    beyond = quality.inspect(_Network(far), FILM, old, own_features=far)
    assert not beyond.assessable and len(beyond.warnings) == 1
    assert (
        beyond.warnings[0].startswith("unlike the films the model was checked on")
        and "frontal" not in beyond.warnings[0]
    )
    assert "no decision" in beyond.warnings[0]


def test_a_page_of_text_is_refused_as_flat_white_and_a_film_is_not() -> None:
    import cv2

    page = np.full((440, 340), 255, np.uint8)
    for y in range(40, 420, 16):
        cv2.putText(page, "the findings are as follows", (20, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0, 1, cv2.LINE_AA)
    page_share = quality.blank_share(page.astype(np.float32) / 255)
    assert page_share > quality.BLANK_LIMIT
    found = quality.inspect(None, page.astype(np.float32) / 255, None)  # no density needed: the pixels say it
    assert not found.assessable and found.warnings[0].startswith("mostly flat white")
    # A smooth gray gradient with noise, and a black border (a collimated film): no flat white.
    film = np.clip(np.linspace(0.2, 0.8, 300)[None, :] + np.random.default_rng(0).normal(0, 0.03, (300, 300)), 0, 1)
    film[:30] = 0.0
    assert quality.blank_share(film) < 0.05
    assert quality.inspect(None, film.astype(np.float32), None) == quality.Assessment([], True)
    # Flat white is measured at BLANK_SIDE whatever the size: a white square of a quarter of the picture.
    square = np.zeros((1000, 1000), np.float32)
    square[:500, :500] = 1.0
    assert quality.blank_share(square) == pytest.approx(0.25, abs=0.01)


def test_refitting_a_models_check_records_it_and_a_card_that_refuses_leaves_the_old_check(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from pneumo.core import card as card_module
    from pneumo.core.card import ModelCard
    from pneumo.core.files import LockTimeout
    from pneumo.training.qualify import refit_input_check

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    check = run / quality.FILE_NAME
    section = refit_input_check(run / "model.keras")
    assert ModelCard.read(run / "card.json").extra["input_check"]["refusal_distance"] == section["refusal_distance"]
    before = b"the check file in force before this refit"  # not what a refit writes: a restore shows
    check.write_bytes(before)

    def held(*args: object, **kwargs: object) -> None:
        raise LockTimeout(f"{run / 'card.json'} is being updated by another process; tried for 0 s")

    monkeypatch.setattr(card_module, "update_card", held)
    with pytest.raises(LockTimeout):
        refit_input_check(run / "model.keras")
    assert check.read_bytes() == before  # the check in force is still the one the card describes
