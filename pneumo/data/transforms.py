"""Every change an acquisition can make to a film, defined once.

Training augmentation (``pipeline``) draws random parameters of these families; the stress suite
(``validate.STRESS``) applies fixed ones. Both call the functions here, so "rotate +8°" in a stress
report is exactly what a training draw of 8° does, not a second implementation that agrees only
roughly (TensorFlow's and OpenCV's warps, blurs and border rules each differed in small ways).

Every function takes a 2-D float32 grayscale image with values nominally in [0, 1] and returns a new
float32 image of the same shape. Outputs are *not* clipped: several changes compose (gamma, blur,
contrast, noise), and clipping between them would lose what the next one could bring back. Callers
clip once at the end.

This module imports only numpy and OpenCV, so anything in the package may use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np

Border = Literal["constant", "reflect"]
# "constant": the film's edge meets black, as a crop or zoom-out of a real film shows it.
# "reflect" (edge pixel repeated, d c b a | a b c d): no new black edges, so a training draw changes the
# geometry without teaching the network that borders mean anything. Same rule as TensorFlow's REFLECT.
_BORDERS = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT}


def _float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"a transform takes a 2-D grayscale image, got shape {img.shape}")
    return img


# ------------------------------------------------------------------ photometric


def exposure(img: np.ndarray, factor: float) -> np.ndarray:
    """Exposure: every pixel times `factor` (0.7 = 30 % less signal; black stays black)."""
    return _float(img) * np.float32(factor)


def brightness(img: np.ndarray, delta: float) -> np.ndarray:
    """Brightness: `delta` added to every pixel (+0.15 lifts black to 0.15)."""
    return _float(img) + np.float32(delta)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Contrast: deviations from the image's own mean times `factor` (1 = unchanged; the mean is kept)."""
    img = _float(img)
    mean = img.mean()
    return (img - mean) * np.float32(factor) + mean


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    """Detector gamma: x ↦ x**g on the clipped image (g < 1 lifts the dark lungs, g > 1 darkens them;
    1 = identity)."""
    img = _float(img)
    if g == 1.0:
        return img.copy()
    # Clipped first: a negative pixel to a fractional power has no real value.
    return np.power(np.clip(img, 0.0, 1.0), np.float32(g))


def blur(img: np.ndarray, sigma: float, amount: float = 1.0) -> np.ndarray:
    """Sharpness: the image moved `amount` of the way towards its Gaussian blur of width `sigma` pixels.

    amount 1 is the blur itself, 0 the image, and a negative amount moves away from the blur: unsharp
    masking (-1 adds the full detail layer again), the edge enhancement many X-ray consoles apply.
    """
    img = _float(img)
    if amount == 0.0 or sigma <= 0.0:
        return img.copy()
    # OpenCV's kernel spans ±4σ with mirrored borders (no new dark rim at the film's edge).
    blurred = cv2.GaussianBlur(img, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT_101)
    if amount == 1.0:
        return blurred
    return img + np.float32(amount) * (blurred - img)


def noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Quantum noise: independent Gaussian noise of standard deviation `sigma` added to every pixel.

    The pattern is fixed by `seed` (numpy's default generator), so a stressed copy or a training draw
    can be reproduced exactly.
    """
    img = _float(img)
    if sigma <= 0.0:
        return img.copy()
    return img + np.random.default_rng(int(seed)).normal(0.0, float(sigma), img.shape).astype(np.float32)


# ------------------------------------------------------------------ geometry


def affine_matrix(
    shape: tuple[int, int],
    rotate_deg: float = 0.0,
    scale: float = 1.0,
    aspect: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """The 2 × 3 forward matrix (input pixel → output pixel) of `affine`."""
    h, w = shape
    theta = np.deg2rad(rotate_deg)
    sx, sy = scale * np.exp(aspect / 2), scale * np.exp(-aspect / 2)
    # OpenCV's rotation convention (getRotationMatrix2D): positive angles turn the picture counter-clockwise
    # as displayed (rows run downwards), which is np.rot90's direction.
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    linear = rot @ np.diag([sx, sy])
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    offset = centre - linear @ centre + np.array([shift[0] * w, shift[1] * h])
    return np.hstack([linear, offset[:, None]])


def affine(
    img: np.ndarray,
    rotate_deg: float = 0.0,
    scale: float = 1.0,
    aspect: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    border: Border = "constant",
) -> np.ndarray:
    """Positioning: one bilinear warp about the image centre.

    rotate_deg: counter-clockwise as displayed; scale: > 1 zooms in (1/0.85 shows the central 85 %),
    < 1 zooms out; aspect: log of the width-to-height stretch (width × e^(aspect/2), height × e^(-aspect/2));
    shift: (x, y) as fractions of the width and height, positive moving the content right and down;
    border: what the warp shows where it samples outside the film (see ``Border``).
    """
    img = _float(img)
    h, w = img.shape
    m = affine_matrix((h, w), rotate_deg, scale, aspect, shift)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=_BORDERS[border], borderValue=0.0)


# ------------------------------------------------------------------ processing and storage


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Lossy storage: 8-bit JPEG encode and decode at `quality` (1–100; lower loses more)."""
    u8 = (np.clip(_float(img), 0, 1) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if decoded is None:
        raise ValueError("JPEG decoding failed")
    return decoded.astype(np.float32) / 255.0


def resample(img: np.ndarray, side: int) -> np.ndarray:
    """Low source resolution: nearest-neighbour down to `side` × `side`, bicubic back up (a film that
    was stored small and enlarged)."""
    img = _float(img)
    h, w = img.shape
    small = cv2.resize(img, (int(side), int(side)), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def clahe(img: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Local histogram equalisation as consoles apply it: OpenCV's CLAHE on the 8-bit image, `tiles` × `tiles`
    tiles, contrast amplification capped at `clip_limit`."""
    u8 = (np.clip(_float(img), 0, 1) * 255).astype(np.uint8)
    return (
        cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tiles), int(tiles))).apply(u8).astype(np.float32)
        / 255.0
    )


# ------------------------------------------------------------------ the stress suite

Transform = Callable[[np.ndarray], np.ndarray]

# The stress suite: fixed parameter values of the families above, the ones training augmentation draws from
# (the names are what stored cards and reports refer to: keep them). Geometry meets black at the border
# here, as a real crop or zoom-out does; augmentation reflects instead.
STRESS: dict[str, Transform] = {
    "darker (exposure ×0.7)": lambda x: exposure(x, 0.7),
    "brighter (+0.15)": lambda x: brightness(x, 0.15),
    "gamma 0.6": lambda x: gamma(x, 0.6),
    "gamma 1.6": lambda x: gamma(x, 1.6),
    "low contrast ×0.6": lambda x: contrast(x, 0.6),
    "high contrast ×1.4": lambda x: contrast(x, 1.4),
    "blur σ=2 px": lambda x: blur(x, sigma=2.0, amount=1.0),
    "sharpened": lambda x: blur(x, sigma=2.0, amount=-1.0),  # unsharp mask: the σ=2 detail layer doubled
    "noise σ=0.04": lambda x: noise(x, 0.04, seed=0),
    "crop 85 % (zoom in)": lambda x: affine(x, scale=1 / 0.85),
    "zoom out 85 %": lambda x: affine(x, scale=0.85),
    "rotate +8°": lambda x: affine(x, rotate_deg=8.0),
    "rotate -8°": lambda x: affine(x, rotate_deg=-8.0),
    "JPEG quality 20": lambda x: jpeg(x, 20),
    "resampled from 96 px": lambda x: resample(x, 96),
    "CLAHE": lambda x: clahe(x, clip_limit=2.0, tiles=8),
}
