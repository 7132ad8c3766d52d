"""Decode X-ray files (PNG, JPEG, BMP, TIFF, DICOM) into a 2-D float32 image in [0, 1]."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Source = Union[bytes, bytearray, str, Path]

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 32
# Larger films are kept at this longest side once decoded: the model reads 224 px and a screen shows
# at most about this much, while a 50 MP float image would hold 200 MB per upload.
MAX_KEPT_SIDE = 2048

# Formats Pillow may decode for us; anything else it recognises (PDF, GIF animations, ICO...) is refused.
PIL_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "MPO"}


class InvalidImageError(ValueError):
    """An input that cannot be read as an X-ray; the message names the file and the reason."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


@dataclass
class XRay:
    """A decoded image with where it came from and, for DICOM, the header fields worth showing."""

    pixels: np.ndarray  # float32, 2-D, in [0, 1]
    name: str
    format: str
    original_shape: tuple[int, ...]
    dicom: dict[str, Any] = field(default_factory=dict)
    colour: float = 0.0  # mean spread between colour channels before conversion to gray (0 for gray files)


def _read(source: Source, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "<upload>"
    path = Path(source)
    label = name or str(path)
    if not path.exists():
        raise InvalidImageError(label, "file not found")
    if path.is_dir():
        raise InvalidImageError(label, "is a folder, not an image file")
    try:
        return path.read_bytes(), label
    except OSError as exc:
        raise InvalidImageError(label, f"cannot be read ({exc.strerror or exc})") from exc


def sniff_format(data: bytes) -> str | None:
    """Name the format from the leading bytes, whatever the file is called."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[2:4] in (b"\x00\x00", b"\x01\x00", b"\x02\x00", b"\x05\x00", b"\x10\x00", b"\x16\x00", b"\x18\x00"):
        return "DICOM"  # no 128-byte preamble: the file starts with a group 0002 or 0008 element
    signatures = {
        b"\x89PNG\r\n\x1a\n": "PNG",
        b"\xff\xd8\xff": "JPEG",
        b"BM": "BMP",
        b"II*\x00": "TIFF",
        b"MM\x00*": "TIFF",
        b"%PDF": "PDF",
        b"GIF8": "GIF",
        b"PK\x03\x04": "ZIP",
    }
    for magic, fmt in signatures.items():
        if data.startswith(magic):
            return fmt
    return None


def load_image(source: Source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode bytes or a path into a 2-D float32 grayscale image in [0, 1]."""
    return load_xray(source, name=name, max_pixels=max_pixels).pixels


def load_xray(source: Source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> XRay:
    """Decode bytes or a path, keeping the format and (for DICOM) the displayable header fields."""
    data, label = _read(source, name)
    if not data:
        raise InvalidImageError(label, "empty file (0 bytes)")
    fmt = sniff_format(data)
    header: dict[str, Any] = {}
    colour = 0.0
    if fmt not in {"DICOM", "PNG", "JPEG", "BMP", "TIFF"}:
        what = f"the content is {fmt}" if fmt else "unrecognised content"
        raise InvalidImageError(label, f"not an image: {what} (expected PNG, JPEG, BMP, TIFF or DICOM)")
    try:
        if fmt == "DICOM":
            pixels, header = _decode_dicom(data, label, max_pixels)
        else:
            pixels, colour, (width, height) = _decode_pil(data, label, max_pixels)
        original_shape = pixels.shape if fmt == "DICOM" else (height, width)
        pixels = _finish(pixels, label)
    except InvalidImageError:
        raise
    except MemoryError as exc:
        raise InvalidImageError(label, "too large to decode in the memory available") from exc
    except Exception as exc:  # the one place pixels are read: whatever a decoder raises becomes a message
        raise InvalidImageError(label, f"cannot be decoded as {fmt} ({type(exc).__name__}: {exc})") from exc
    return XRay(pixels, label, fmt, tuple(original_shape), header, colour)


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidImageError(
            label, f"too large: {width}×{height} = {width * height / 1e6:.1f} MP exceeds the {max_pixels / 1e6:.0f} MP limit"
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(label, f"too small: {width}×{height}, each side must be at least {MIN_SIDE} px")


def _decode_pil(data: bytes, label: str, max_pixels: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in PIL_FORMATS:
                raise InvalidImageError(label, f"unsupported image format {img.format}")
            _check_size(label, *img.size, max_pixels)
            _check_complete(data, img.format, label)
            declared = img.size
            if img.format == "JPEG" and max(img.size) > MAX_KEPT_SIDE:
                # Decode at a reduced scale (less memory, same film), keeping the colour mode for the photo check.
                img.draft(img.mode, (MAX_KEPT_SIDE, MAX_KEPT_SIDE))
            img.load()
            img = ImageOps.exif_transpose(img)  # a phone or scanner may store the film rotated with an EXIF tag
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(label, f"too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(label, "not an image: Pillow cannot identify the content") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(label, f"truncated or corrupt image data ({exc})") from exc
    colour = 0.0
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        from .quality import colourfulness

        small = img.convert("RGB")
        small.thumbnail((256, 256))
        colour = colourfulness(np.asarray(small, dtype=np.float32) / 255.0)
    return _to_gray(img), colour, declared


def _check_complete(data: bytes, fmt: str | None, label: str) -> None:
    """Refuse files whose data stops before the image does: a decoder may fill the rest with grey."""
    tail = data[-4096:]
    # The end-of-image marker after the last start-of-scan: an EXIF thumbnail's own marker comes earlier.
    if fmt == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise InvalidImageError(label, "truncated JPEG: the data ends before the image does (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in tail:
        raise InvalidImageError(label, "truncated PNG: the data ends before the image does (no IEND chunk)")


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr.mean(axis=2)
        return arr
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        # Composite transparency on black: transparent padding reads as air, not bone.
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0


def _decode_dicom(data: bytes, label: str, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        "PixelData" in ds  # noqa: B015 - parses the (deferred) elements up to the pixel data now
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise InvalidImageError(label, f"corrupt DICOM header ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise InvalidImageError(label, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(label, cols, rows, max_pixels)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames * rows * cols > max_pixels:  # every frame is decoded: the limit holds for all of them
        raise InvalidImageError(label, f"too large: {frames} frames of {cols}×{rows} exceed the "
                                       f"{max_pixels / 1e6:.0f} MP limit")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise InvalidImageError(
                label, f"DICOM transfer syntax '{name}' cannot be decoded by the installed handlers ({exc})"
            ) from exc
        raise InvalidImageError(label, f"DICOM pixel data is corrupt or truncated ({exc})") from exc
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: the first frame
    try:
        arr = apply_modality_lut(arr, ds)
    except Exception as exc:
        raise InvalidImageError(label, f"DICOM modality LUT cannot be applied ({type(exc).__name__}: {exc})") from exc
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds
    window_note = ""
    if windowed:
        try:
            windowed_arr = np.asarray(apply_voi_lut(arr, ds), dtype=np.float32)
            if not np.isfinite(windowed_arr).all() or float(np.ptp(windowed_arr)) <= 0:
                raise ValueError("the window maps every pixel to one value")
            arr = windowed_arr
        except Exception as exc:
            # A broken window is a display hint gone wrong, not broken pixels: fall back to the full range
            # and say so beside the reading.
            windowed, window_note = False, f"invalid window in file, ignored ({type(exc).__name__}: {exc}); min-max scaling"
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 shows low values white; invert so air is dark
    header = {
        "Modality": str(ds.get("Modality", "")),
        "View position": str(ds.get("ViewPosition", "")),
        "Body part": str(ds.get("BodyPartExamined", "")),
        "Photometric interpretation": photometric,
        "Windowing": _window_text(ds) if windowed else window_note or "none in file (min-max scaling)",
        "Rows × columns": f"{rows} × {cols}",
        "Bits stored": str(ds.get("BitsStored", "")),
        "Transfer syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")),
    }
    return arr, header


def _window_text(ds: Any) -> str:
    if "VOILUTSequence" in ds:
        return "VOI LUT sequence"
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    return f"center {center}, width {width}"


def _finish(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.ndim != 2:
        raise InvalidImageError(label, f"unexpected pixel array shape {arr.shape}")
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
        arr = cv2.resize(arr, (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(arr, dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A [0, 1] image as 8-bit, for display and hashing."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D image to size×size with area averaging (the training pipeline's resize)."""
    import cv2

    if img.shape == (size, size):
        return img
    interp = cv2.INTER_AREA if min(img.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)
