"""A decoded film's pixels: the limits every decoder applies, the checks on what it produced, and the
conversions every reader of a film shares (8-bit, square resize, a screen-sized copy, colour content).
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 32
# A chest film is about square (detector plates are 35×43 cm or 43×43 cm); beyond 4:1 the input is a strip,
# a banner or a crafted file, and squeezing it into the model's square would read nothing real.
MAX_ASPECT = 4.0
# A film whose central 98 % of pixels (1st to 99th percentile) span less than this share of the intensity
# range, about 10 of 256 grey levels, holds no readable anatomy (a blank, black or lost exposure).
MIN_CONTRAST = 0.04
# Decoded pixel bytes allowed: a film at the pixel limit with 16-bit samples (100 MB at 50 MP). Samples per
# pixel, bits allocated and frames all count, so a 16-bit RGB film at 49 MP (294 MB) is refused unread.
BYTES_PER_PIXEL_BUDGET = 2
# Larger films are kept at this longest side once decoded: the model reads 224 px and a screen shows
# at most about this much, while a 50 MP float image would hold 200 MB per upload.
MAX_KEPT_SIDE = 2048


class InvalidImageError(ValueError):
    """An input that cannot be read as an X-ray; the message names the file and the reason."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


def _check_shape(label: str, width: int, height: int, what: str = "") -> None:
    """The side and aspect rules, for the size a header declares and for the film as decoded."""
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(label, f"too small{what}: {width}×{height}, each side must be at least {MIN_SIDE} px")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidImageError(
            label,
            f"extreme aspect ratio{what}: {width}×{height} is beyond {MAX_ASPECT:g}:1, "
            "not the proportions of a chest film",
        )


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidImageError(
            label,
            f"too large: {width}×{height} = {width * height / 1e6:.1f} MP exceeds the {max_pixels / 1e6:.0f} MP limit",
        )
    _check_shape(label, width, height)


def _finish(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.ndim != 2:
        raise InvalidImageError(label, f"unexpected pixel array shape {arr.shape}")
    # The side and aspect rules hold for the film as decoded (a JPEG draft, an EXIF turn, a DICOM frame),
    # not only for the size its header declared.
    _check_shape(label, arr.shape[1], arr.shape[0], " as decoded")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InvalidImageError(label, "pixel data contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 1e-6:
        raise InvalidImageError(label, f"constant image (every pixel is {lo:g}): nothing to read")
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo)
    if max(arr.shape) > MAX_KEPT_SIDE:
        import cv2

        scale = MAX_KEPT_SIDE / max(arr.shape)
        arr = cv2.resize(
            arr,
            (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale))),
            interpolation=cv2.INTER_AREA,
        )
        _check_shape(label, arr.shape[1], arr.shape[0], " once downscaled")
    # Near-constant: a few stray pixels give a black film a full min-max range, so the spread of the
    # central 98 % of pixels decides. A strided sample of about 512×512 pixels is plenty for a 1st and a
    # 99th percentile (2,600 pixels in each tail) and costs ~10 ms, where all 4 MP would cost ~150 ms.
    stride = max(1, int(np.ceil(np.sqrt(arr.size / 262_144))))
    p1, p99 = np.percentile(arr[::stride, ::stride], [1, 99])
    if p99 - p1 < MIN_CONTRAST:
        raise InvalidImageError(
            label,
            f"near-constant image: 98 % of pixels lie within {p99 - p1:.3f} of the "
            f"intensity range (at least {MIN_CONTRAST:g} needed), nothing to read",
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A [0, 1] image as 8-bit, for display and hashing; an 8-bit image as it is."""
    if img.dtype == np.uint8:
        return img
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D image to size×size with area averaging (the training pipeline's resize)."""
    import cv2

    if img.shape == (size, size):
        return img
    interp = cv2.INTER_AREA if min(img.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def colourfulness(rgb: np.ndarray) -> float:
    """Mean spread between colour channels of an RGB image in [0, 1] (0 for gray)."""
    r, g, b = (np.asarray(rgb[..., i], dtype=np.float32) for i in range(3))
    # Channel by channel: numpy's reduction along a last axis of length 3 is ten times slower.
    return float(np.mean(np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)))


def shrink(image: np.ndarray, side: int = 640) -> np.ndarray:
    """A copy no larger than side on its long side, for the screen (downloads keep the film's size)."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    f = side / max(h, w)
    import cv2

    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
