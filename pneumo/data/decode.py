"""Decode X-ray files (PNG, JPEG, BMP, TIFF, DICOM) into a 2-D float32 image in [0, 1]."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageChops, ImageOps, JpegImagePlugin, UnidentifiedImageError

from pneumo.data.dicom import _decode_dicom
from pneumo.data.pixels import DEFAULT_MAX_PIXELS, MAX_KEPT_SIDE, InvalidImageError, _check_size, _finish, colourfulness

# pydicom and OpenCV are imported where used: the dashboard and the CLI import this module at start, and most films
# are JPEG or PNG.

Source = Union[bytes, bytearray, str, Path]  # noqa: UP007 - a runtime alias: X | Y needs Python 3.10 types

# Formats Pillow may decode for us; anything else it recognises (PDF, GIF animations, ICO...) is refused.
PIL_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "MPO"}


@dataclass
class XRay:
    """A decoded image with where it came from and, for DICOM, the header fields worth showing."""

    pixels: np.ndarray  # float32, 2-D, in [0, 1]
    name: str
    format: str
    original_shape: tuple[int, ...]
    dicom: dict[str, Any] = field(default_factory=dict)
    colour: float = 0.0  # mean spread between colour channels before conversion to gray (0 for gray files)
    # What the decoder had to work around (a broken DICOM window, an unread frame): it belongs beside the
    # score, not only in the header view, so predict.read() adds these to the reading's warnings.
    warnings: list[str] = field(default_factory=list)


def _max_file_bytes(max_pixels: int) -> int:
    """The largest file worth reading: an uncompressed film at the pixel limit with 64-bit samples, plus a
    generous header. Anything bigger cannot be a film this reader accepts, so it is not read into memory."""
    return max_pixels * 8 + 64 * 2**20


def _read(source: Source, name: str | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "<upload>"
    path = Path(source)
    label = name or str(path)
    if not path.exists():
        raise InvalidImageError(label, "file not found")
    if path.is_dir():
        raise InvalidImageError(label, "is a folder, not an image file")
    try:
        size = path.stat().st_size
        if size > _max_file_bytes(max_pixels):
            raise InvalidImageError(
                label,
                f"too large: the file holds {size / 1e6:.0f} MB, more than any film "
                f"within the {max_pixels / 1e6:.0f} MP limit needs",
            )
        return path.read_bytes(), label
    except OSError as exc:
        raise InvalidImageError(label, f"cannot be read ({exc.strerror or exc})") from exc


def sniff_format(data: bytes) -> str | None:
    """Name the format from the leading bytes, whatever the file is called."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if (
        len(data) >= 8
        and data[:2] in (b"\x02\x00", b"\x08\x00")
        and data[2:4] in (b"\x00\x00", b"\x01\x00", b"\x02\x00", b"\x05\x00", b"\x10\x00", b"\x16\x00", b"\x18\x00")
    ):
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
    """Decode bytes or a path, keeping the format and (for DICOM) the displayable header fields.

    Memory is bounded before any pixel is decoded: the declared size is checked against max_pixels (and,
    for DICOM, the decoded bytes against max_pixels × 2), and against what the bytes present can hold. A DICOM
    is read up to the end of its pixel data: up to 64 KiB after it are ignored unread, more are refused
    (pneumo.data.dicom._TRAILING_BYTES)."""
    data, label = _read(source, name, max_pixels)
    if not data:
        raise InvalidImageError(label, "empty file (0 bytes)")
    fmt = sniff_format(data)
    header: dict[str, Any] = {}
    notes: list[str] = []
    colour = 0.0
    if fmt not in {"DICOM", "PNG", "JPEG", "BMP", "TIFF"}:
        what = f"the content is {fmt}" if fmt else "unrecognised content"
        raise InvalidImageError(label, f"not an image: {what} (expected PNG, JPEG, BMP, TIFF or DICOM)")
    try:
        if fmt == "DICOM":
            pixels, header, notes = _decode_dicom(data, label, max_pixels)
        else:
            pixels, colour, (width, height) = _decode_pil(data, label, max_pixels)
        original_shape = pixels.shape if fmt == "DICOM" else (height, width)
        del data  # the encoded bytes are not needed past this point
        pixels = _finish(pixels, label)
    except InvalidImageError:
        raise
    except MemoryError as exc:
        raise InvalidImageError(label, "too large to decode in the memory available") from exc
    except Exception as exc:  # the one place pixels are read: whatever a decoder raises becomes a message
        raise InvalidImageError(label, f"cannot be decoded as {fmt} ({type(exc).__name__}: {exc})") from exc
    return XRay(pixels, label, fmt, tuple(original_shape), header, colour, notes)


# The fewest bytes a file of each format can hold a w×h image in, from the best case of its coding: PNG's
# deflate cannot beat 1032:1 (a 258-byte match in 2 bits) on rows of at least 1 bit per pixel plus a filter
# byte; baseline and progressive JPEG Huffman-code every 8×8 block's DC difference in at least 1 bit (an
# arithmetic-coded JPEG could go below, but a radiograph's noise keeps any real film orders of magnitude
# above); BMP at best run-length codes 255 pixels in 2 bytes. TIFF is left to libtiff, which checks each
# strip's byte count against the file (its CCITT and LZW codings have no useful floor).
def _min_bytes(fmt: str, width: int, height: int) -> int:
    if fmt == "PNG":
        return height * (1 + (width + 7) // 8) // 1032
    if fmt in ("JPEG", "MPO"):
        return width * height // 512
    if fmt == "BMP":
        return width * height * 2 // 255
    return 0


def _decode_pil(data: bytes, label: str, max_pixels: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            if img.format not in PIL_FORMATS:
                raise InvalidImageError(label, f"unsupported image format {img.format}")
            _check_size(label, *img.size, max_pixels)
            needed = _min_bytes(img.format, *img.size)
            if len(data) < needed:
                # Refused before Pillow allocates the image: the bytes present cannot hold what is declared.
                raise InvalidImageError(
                    label,
                    f"truncated {img.format}: {len(data):,} bytes cannot hold the declared "
                    f"{img.size[0]}×{img.size[1]} image (at least {needed:,} bytes)",
                )
            _check_complete(data, img.format, label)
            declared = img.size
            draft = None
            if img.format in ("JPEG", "MPO") and max(img.size) > MAX_KEPT_SIDE:
                # Decode at a reduced scale (less memory, same film), keeping the colour mode for the photo check.
                draft = (img.mode, (MAX_KEPT_SIDE, MAX_KEPT_SIDE))
                img.draft(*draft)
            img.load()
            if img.format in ("JPEG", "MPO"):
                _check_jpeg_entropy_complete(data, img, draft, label)
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
        small = img.convert("RGB")
        small.thumbnail((256, 256))
        colour = colourfulness(np.asarray(small, dtype=np.float32) / 255.0)
    return _to_gray(img), colour, declared


def _check_complete(data: bytes, fmt: str | None, label: str) -> None:
    """Refuse files whose data stops before the image does: a decoder may fill the rest with grey."""
    tail = data[-4096:]
    # The end-of-image marker after the last start-of-scan: an EXIF thumbnail's own marker comes earlier.
    if fmt in ("JPEG", "MPO") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise InvalidImageError(label, "truncated JPEG: the data ends before the image does (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in tail:
        raise InvalidImageError(label, "truncated PNG: the data ends before the image does (no IEND chunk)")


# A marker: 0xFF followed by neither a stuffed zero nor another 0xFF (fill bytes before it are walked back
# over below; a pattern with \xff+ would retry at every stuffed byte and run 20 times slower).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff]")
# Filler placed before markers for the completeness check: never 0xFF, so it is entropy-coded data to the
# decoder (a marker could not start in it), and not all zero, so it differs from libjpeg's own zero fill.
_JPEG_FILLER = bytes((i * 73 + 41) % 255 for i in range(32))
# Markers followed by a two-byte segment length (all but SOI, EOI, RSTn and TEM).
_JPEG_STANDALONE = {0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)}


def _with_filler_before_markers(data: bytes, scan_start: int) -> bytes | None:
    """The JPEG with filler bytes before each marker of the primary image's scans, from its first scan to
    its end-of-image marker; None when no end-of-image marker closes them (a segment that runs past the
    end of the file, as a cut file with a bogus segment appended would have)."""
    parts, pos, cursor = [data[:scan_start]], scan_start, scan_start
    while True:
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return None
        start, code = found.start(), data[found.end() - 1]
        while start > pos and data[start - 1] == 0xFF:
            start -= 1
        parts += [data[cursor:start], _JPEG_FILLER]
        cursor = start
        if code == 0xD9:  # end of image: the rest (a trailer, an MPO's second picture) is left as it is
            parts.append(data[cursor:])
            return b"".join(parts)
        if code in _JPEG_STANDALONE:
            pos = found.end()
        else:  # a segment between scans (DHT, SOS, DRI, COM...): skip its payload, which may hold 0xFF bytes
            if found.end() + 2 > len(data):
                return None
            pos = found.end() + int.from_bytes(data[found.end() : found.end() + 2], "big")


def _check_jpeg_entropy_complete(
    data: bytes, img: Image.Image, draft: tuple[str, tuple[int, int]] | None, label: str
) -> None:
    """Refuse a JPEG whose entropy-coded data stops before the image does, whatever marker follows.

    libjpeg, on meeting a marker where it still needs coded data (a cut file with an end-of-image marker
    appended), warns "premature end of data segment" and fills the rest with zeros; Pillow drops that warning.
    The decoder can still say it: decode once more with filler bytes placed before every marker. A complete
    scan never reads past its own data, so the filler is skipped and the picture is identical; a cut scan
    reads the filler instead of zeros, and the picture changes."""
    probe = JpegImagePlugin.JpegImageFile(io.BytesIO(data))  # headers only: stops right after the first SOS
    assert probe.fp is not None  # opened from a buffer: its file stays set until closed
    padded = _with_filler_before_markers(data, probe.fp.tell())
    if padded is None:
        raise InvalidImageError(
            label, "truncated JPEG: a marker segment runs past the end of the file, before the end-of-image marker"
        )
    again = JpegImagePlugin.JpegImageFile(io.BytesIO(padded))
    if draft is not None:
        again.draft(*draft)
    try:
        again.load()
    except (OSError, SyntaxError, ValueError):
        differs = True
    else:
        differs = again.size != img.size or again.mode != img.mode
        if not differs:
            try:
                differs = ImageChops.difference(again, img).getbbox() is not None
            except ValueError:  # a mode ImageChops does not take (12-bit JPEG): compare the raw bytes
                differs = again.tobytes() != img.tobytes()
    if differs:
        raise InvalidImageError(
            label, "truncated JPEG: the coded image data ends before the image does (the decoder filled the rest)"
        )


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
