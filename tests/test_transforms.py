"""One definition of each acquisition change: the stress suite's fixed values and training's random
draws go through the same functions (pneumo.data.transforms), and each parameter means what it says."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pneumo.data import transforms
from pneumo.data import transforms as T
from pneumo.training import pipeline as P
from tests.conftest import synthetic_xray


def _film(size: int = 64, seed: int = 0) -> np.ndarray:
    return synthetic_xray(np.random.default_rng(seed), size, pneumonia=True)


def _asymmetric(size: int = 32) -> np.ndarray:
    """No rotation or flip maps it onto itself: a ramp across, a bar in one corner."""
    img = np.tile(np.linspace(0.1, 0.6, size, dtype=np.float32), (size, 1))
    img[2:6, 3:15] = 0.95
    return img


def _inside(img: np.ndarray, **geometry: float) -> np.ndarray:
    """Pixels whose bilinear taps all fall inside the film: there the border rule cannot matter."""
    return T.affine(np.ones_like(img), border="constant", **geometry) == 1.0


# ------------------------------------------------------------------ stress condition = augmentation draw

PHOTOMETRIC = {
    "brighter (+0.15)": P.Draw(brightness=0.15),
    "gamma 0.6": P.Draw(gamma=0.6),
    "gamma 1.6": P.Draw(gamma=1.6),
    "low contrast ×0.6": P.Draw(contrast=0.6),
    "high contrast ×1.4": P.Draw(contrast=1.4),
    "blur σ=2 px": P.Draw(blur=1.0),
    "sharpened": P.Draw(blur=-1.0),
    "noise σ=0.04": P.Draw(noise=0.04, noise_seed=0),
}
GEOMETRIC = {
    "rotate +8°": (P.Draw(rotate_deg=8.0), {"rotate_deg": 8.0}),
    "rotate -8°": (P.Draw(rotate_deg=-8.0), {"rotate_deg": -8.0}),
    "crop 85 % (zoom in)": (P.Draw(scale=1 / 0.85), {"scale": 1 / 0.85}),
    "zoom out 85 %": (P.Draw(scale=0.85), {"scale": 0.85}),
}


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC))
def test_a_photometric_stress_condition_is_the_augmentation_with_its_value(name: str) -> None:
    img = _film()
    stressed = np.clip(transforms.STRESS[name](img), 0, 1)
    augmented = P.augment_image(img, PHOTOMETRIC[name], sigma=2.0)
    assert augmented.dtype == np.float32
    np.testing.assert_allclose(augmented, stressed, rtol=0, atol=1e-6)
    assert np.abs(stressed - img).mean() > 1e-3  # the comparison is not between two unchanged copies


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_a_geometric_stress_condition_is_the_augmentation_with_its_value_inside_the_film(name: str) -> None:
    # The two differ only in what they show beyond the film's edge: black for the stress suite,
    # the mirrored film for training.
    img = _film()
    draw, geometry = GEOMETRIC[name]
    inside = _inside(img, **geometry)
    assert inside.mean() > 0.6
    stressed = np.clip(transforms.STRESS[name](img), 0, 1)
    augmented = P.augment_image(img, draw, sigma=2.0)
    # 1e-5, not 1e-6: OpenCV 5's warpAffine computes a few pixels beside the film's edge through the border
    # mode's own path, by up to 2.1e-6 apart here (OpenCV 4: within 1e-6); the untransformed film differs
    # from either by more than 1e-3 on average (the next assertion).
    np.testing.assert_allclose(augmented[inside], stressed[inside], rtol=0, atol=1e-5)
    assert np.abs(augmented[inside] - img[inside]).mean() > 1e-3
    if name != "crop 85 % (zoom in)":  # zooming in samples only inside the film
        assert np.abs(augmented[~inside] - stressed[~inside]).max() > 0.05


def test_training_blur_on_a_300_px_film_is_the_stress_blur() -> None:
    assert P.blur_sigma(300) == 2.0
    assert P.blur_sigma(224) == pytest.approx(224 / 150)
    assert P.blur_sigma(56, pooled=4) == pytest.approx(224 / 150 / 4)  # the same blur of the full film, pooled
    assert P.blur_sigma(64) == 1.0  # never under one pixel


def test_augment_batch_changes_each_image_by_its_own_draw() -> None:
    """A recipe of contrast and brightness only: each image's pixels are worked out here by hand from its own
    row of draws, (x - mean) × contrast + mean + brightness, clipped to [0, 1]; no geometry, gamma, blur or
    noise touches them. Six films, six different draws."""
    import tensorflow as tf

    batch = np.stack([_film(48, seed=s) for s in range(6)])[..., None]
    aug = P.Augmentation(rotation_deg=0, shift=0, zoom=0, aspect=0, brightness=0.1, contrast=0.3)
    seed = tf.constant([3, 7], tf.int64)
    rows = P.draw_parameters(aug, 6, seed).numpy()
    col = {name: rows[:, i] for i, name in enumerate(P.DRAW_FIELDS)}
    assert len(np.unique(col["brightness"])) == 6 and len(np.unique(col["contrast"])) == 6
    assert np.all(col["scale"] == 1.0) and np.all(col["rotate_deg"] == 0.0) and np.all(col["noise"] == 0.0)
    out = P.augment_batch(tf.constant(batch), aug, seed=seed).numpy()
    assert out.shape == batch.shape and out.dtype == np.float32
    for i in range(6):
        x = batch[i, ..., 0].astype(np.float64)
        expected = np.clip((x - x.mean()) * col["contrast"][i] + x.mean() + col["brightness"][i], 0.0, 1.0)
        np.testing.assert_allclose(out[i, ..., 0], expected, rtol=0, atol=1e-5, err_msg=f"image {i}")
    # Seeded: the same seed gives the same pixels, another seed others.
    np.testing.assert_array_equal(P.augment_batch(tf.constant(batch), aug, seed=seed).numpy(), out)
    other = P.augment_batch(tf.constant(batch), aug, seed=tf.constant([3, 8], tf.int64)).numpy()
    assert np.abs(other - out).mean() > 1e-3


def test_augment_batch_turns_each_image_by_its_own_draw() -> None:
    """Rotation only: the centre pixel stays where it is, and a bright spot 10 px right of the centre ends up
    where each image's own drawn angle takes it (counter-clockwise as displayed: rows run downwards)."""
    import tensorflow as tf

    size, c = 49, 24  # an odd side: the centre of rotation is the pixel (24, 24)
    img = np.full((size, size), 0.2, np.float32)
    img[c - 1 : c + 2, c + 9 : c + 12] = 1.0  # 3 × 3 spot centred 10 px right of the centre
    img[c, c] = 0.6
    batch = np.stack([img] * 4)[..., None]
    aug = P.Augmentation(rotation_deg=40, shift=0, zoom=0, aspect=0, brightness=0, contrast=0)
    seed = tf.constant([1, 2], tf.int64)
    angles = P.draw_parameters(aug, 4, seed).numpy()[:, P.DRAW_FIELDS.index("rotate_deg")]
    assert np.ptp(angles) > 5  # different turns, so each image must follow its own
    out = P.augment_batch(tf.constant(batch), aug, seed=seed).numpy()[..., 0]
    for i, angle in enumerate(angles):
        theta = np.deg2rad(angle)
        row, col = round(c - 10 * np.sin(theta)), round(c + 10 * np.cos(theta))
        assert out[i, row, col] > 0.8, (angle, row, col)
        assert out[i, c, c] == pytest.approx(0.6, abs=1e-5)


def test_draws_keep_the_recipe_ranges() -> None:
    aug = P.Augmentation.preset("shift")
    rows = P.draw_parameters(aug, 4000, np.array([1, 2])).numpy()
    col = {name: rows[:, i] for i, name in enumerate(P.DRAW_FIELDS)}
    bounds = {
        "rotate_deg": (-10, 10),
        "scale": (0.85, 1.15),
        "aspect": (-0.1, 0.1),
        "shift_x": (-0.08, 0.08),
        "shift_y": (-0.08, 0.08),
        "gamma": (1 / 1.5, 1.5),
        "blur": (-0.4, 0.8),
        "contrast": (0.75, 1.25),
        "brightness": (-0.12, 0.12),
        "noise": (0.0, 0.03),
    }
    for name, (low, high) in bounds.items():
        values = col[name]
        assert low - 1e-6 <= values.min() and values.max() <= high + 1e-6, name
        # Uniform over the whole range (log-uniform for gamma), not a corner of it.
        span = (math.log(high) - math.log(low)) if name == "gamma" else high - low
        spread = (np.log(values).max() - np.log(values).min()) if name == "gamma" else values.max() - values.min()
        assert spread > 0.95 * span, name
    assert np.all(col["noise_seed"] == np.floor(col["noise_seed"])) and len(np.unique(col["noise_seed"])) > 3900
    # Pooled images get the noise that survives mean-pooling: the standard deviation over the factor.
    pooled = P.draw_parameters(aug, 4000, np.array([1, 2]), pooled=2).numpy()[:, P.DRAW_FIELDS.index("noise")]
    assert pooled.max() <= 0.015 + 1e-6
    off = P.draw_parameters(P.Augmentation(0, 0, 0, 0, 0, 0, 0, 0, 0), 50, np.array([0, 0])).numpy()
    identity = P.Draw()
    for i, name in enumerate(P.DRAW_FIELDS[:-1]):
        np.testing.assert_array_equal(off[:, i], getattr(identity, name), err_msg=name)


@pytest.mark.parametrize("preset", ["basic", "shift"])
def test_augmentation_output_is_float32_in_unit_range_with_the_input_shape(preset: str) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(4)
    # Films near both ends of the range, where brightness, contrast and noise push past 0 and 1.
    batch = np.stack([np.clip(_film(40, s) * rng.uniform(0.2, 1.6), 0, 1) for s in range(8)])[..., None]
    out = P.augment_batch(tf.constant(batch), P.Augmentation.preset(preset), pooled=2).numpy()
    assert out.dtype == np.float32 and out.shape == batch.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    single = P.augment_image(batch[0, ..., 0], P.Draw(brightness=0.3, contrast=1.5, noise=0.2, gamma=0.5), 1.0)
    assert single.dtype == np.float32 and single.shape == (40, 40) and 0.0 <= single.min() <= single.max() <= 1.0
    np.testing.assert_allclose(P.augment_image(batch[0, ..., 0], P.Draw(), 1.0), batch[0, ..., 0], atol=1e-6)


# ------------------------------------------------------------------ each parameter means what it says


def test_rotation_turns_counter_clockwise_like_rot90() -> None:
    img = _asymmetric()
    np.testing.assert_allclose(T.affine(img, rotate_deg=90), np.rot90(img), atol=1e-5)
    np.testing.assert_allclose(T.affine(img, rotate_deg=-90), np.rot90(img, k=-1), atol=1e-5)
    np.testing.assert_allclose(T.affine(img, rotate_deg=180), np.rot90(img, k=2), atol=1e-5)
    # The stress suite's former warp (OpenCV's own rotation matrix) for a small angle and a zoom.
    h, w = img.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 8.0, 1.1)
    np.testing.assert_allclose(T.affine_matrix((h, w), 8.0, 1.1), m, atol=1e-12)


def _dot(size: int, x: int, y: int) -> np.ndarray:
    img = np.zeros((size, size), np.float32)
    img[y, x] = 1.0
    return img


def _where(img: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(img), img.shape)
    return int(x), int(y)


def test_scale_aspect_and_shift_move_a_dot_where_they_say() -> None:
    size, c = 33, 16  # odd: the centre is a pixel, and these changes map pixels onto pixels
    assert _where(T.affine(_dot(size, c + 4, c), scale=2.0)) == (c + 8, c)  # zoom in ×2 about the centre
    assert _where(T.affine(_dot(size, c + 8, c), scale=0.5)) == (c + 4, c)  # zoom out
    stretch = math.log(4.0)  # width × 2, height × 0.5
    assert _where(T.affine(_dot(size, c + 4, c), aspect=stretch)) == (c + 8, c)
    assert _where(T.affine(_dot(size, c, c + 8), aspect=stretch)) == (c, c + 4)
    moved = T.affine(_dot(size, c, c), shift=(8 / size, -4 / size))  # right by 8 px, up by 4 px
    assert _where(moved) == (c + 8, c - 4) and moved.max() == pytest.approx(1.0)


def test_border_rule_black_or_mirrored() -> None:
    img = np.full((32, 32), 0.5, np.float32)
    black = T.affine(img, shift=(0.25, 0.0), border="constant")
    mirrored = T.affine(img, shift=(0.25, 0.0), border="reflect")
    assert black[:, :8].max() == 0.0 and black[:, 8:].min() == pytest.approx(0.5)
    np.testing.assert_allclose(mirrored, img)


def test_gamma_one_is_identity_and_gamma_is_a_power() -> None:
    img = _film()
    np.testing.assert_array_equal(T.gamma(img, 1.0), img)
    np.testing.assert_allclose(T.gamma(np.full((4, 4), 0.25, np.float32), 0.5), 0.5, rtol=1e-6)
    assert T.gamma(img, 0.6).mean() > img.mean() > T.gamma(img, 1.6).mean()  # < 1 lifts, > 1 darkens


def test_exposure_scales_the_mean_and_brightness_adds_to_it() -> None:
    img = 0.2 + 0.6 * _film()  # inside (0, 1): nothing to clip
    darker = np.clip(T.exposure(img, 0.7), 0, 1)
    assert darker.mean() == pytest.approx(0.7 * img.mean(), rel=1e-5)
    np.testing.assert_allclose(darker / img, 0.7, rtol=1e-5)
    np.testing.assert_allclose(T.brightness(img, 0.15) - img, 0.15, atol=1e-6)


def test_contrast_scales_deviations_about_the_mean() -> None:
    img = _film()
    for factor in (0.6, 1.4):
        out = T.contrast(img, factor)
        assert out.mean() == pytest.approx(img.mean(), abs=1e-6)
        assert out.std() == pytest.approx(factor * img.std(), rel=1e-4)
    np.testing.assert_allclose(T.contrast(img, 1.0), img, atol=1e-6)


def test_blur_sigma_is_the_width_of_the_spread_and_amount_blends() -> None:
    impulse = _dot(41, 20, 20)
    spread = T.blur(impulse, sigma=3.0)
    yy, xx = np.mgrid[0:41, 0:41]
    assert spread.sum() == pytest.approx(1.0, rel=1e-4)
    assert math.sqrt((spread * (xx - 20) ** 2).sum()) == pytest.approx(3.0, rel=0.02)
    img = _film()
    np.testing.assert_array_equal(T.blur(img, 2.0, amount=1.0), cv2.GaussianBlur(img, (0, 0), 2.0))
    np.testing.assert_array_equal(T.blur(img, 2.0, amount=0.0), img)
    half = T.blur(img, 2.0, amount=0.5)
    np.testing.assert_allclose(half, (img + cv2.GaussianBlur(img, (0, 0), 2.0)) / 2, atol=1e-6)
    detail = lambda x: np.abs(np.diff(x, axis=1)).mean()  # noqa: E731 - a one-line measure
    assert detail(T.blur(img, 2.0, amount=-1.0)) > detail(img) > detail(half)


def test_noise_sigma_is_its_standard_deviation_and_the_seed_its_pattern() -> None:
    img = np.full((256, 256), 0.5, np.float32)
    a = T.noise(img, 0.04, seed=1)
    assert (a - img).std() == pytest.approx(0.04, rel=0.02) and abs((a - img).mean()) < 1e-3
    np.testing.assert_array_equal(a, T.noise(img, 0.04, seed=1))
    assert np.abs(a - T.noise(img, 0.04, seed=2)).mean() > 0.01
    np.testing.assert_array_equal(T.noise(img, 0.0, seed=1), img)


def test_storage_and_processing_families() -> None:
    img = _film(96)
    assert np.abs(T.jpeg(img, 20) - img).mean() > np.abs(T.jpeg(img, 95) - img).mean()
    np.testing.assert_array_equal(T.resample(img, 96), img)  # stored at its own size: nothing lost
    detail = lambda x: np.abs(np.diff(x, axis=1)).mean()  # noqa: E731
    assert detail(T.resample(img, 24)) < 0.8 * detail(img)
    faint = 0.4 + 0.2 * _film(256)  # tiles of 32 × 32 pixels: large enough for the cap to bite
    # Local contrast raised, and the more so the higher the cap on its amplification.
    stds = [T.clahe(faint, clip_limit=c).std() for c in (4.0, 2.0, 0.5)]
    assert stds[0] > stds[1] > stds[2] > faint.std()
    np.testing.assert_array_equal(T.clahe(faint), T.clahe(faint, clip_limit=2.0, tiles=8))
    for out in (T.jpeg(img, 20), T.resample(img, 24), T.clahe(img)):
        assert out.dtype == np.float32 and out.shape == img.shape


def test_every_family_takes_one_grayscale_plane() -> None:
    with pytest.raises(ValueError, match="2-D"):
        T.gamma(np.zeros((8, 8, 1), np.float32), 0.5)
    assert T.exposure(np.ones((4, 5), np.float64), 0.5).dtype == np.float32


def test_the_transforms_need_neither_the_pipeline_nor_the_checks() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(T.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "typing", "collections.abc", "cv2", "numpy"}, imported
