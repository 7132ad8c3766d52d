"""Decode X-ray files (PNG, JPEG, BMP, TIFF, DICOM) into a 2-D float32 image in [0, 1]."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
from PIL import Image, ImageChops, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .quality import colourfulness

# pydicom and OpenCV are imported where used: the dashboard and the CLI import this module at start, and most films
# are JPEG or PNG.

Source = Union[bytes, bytearray, str, Path]

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
            raise InvalidImageError(label, f"too large: the file holds {size / 1e6:.0f} MB, more than any film "
                                           f"within the {max_pixels / 1e6:.0f} MP limit needs")
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
    """Decode bytes or a path, keeping the format and (for DICOM) the displayable header fields.

    Memory is bounded before any pixel is decoded: the declared size is checked against max_pixels (and,
    for DICOM, the decoded bytes against max_pixels × 2), and against what the bytes present can hold."""
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


def _check_shape(label: str, width: int, height: int, what: str = "") -> None:
    """The side and aspect rules, for the size a header declares and for the film as decoded."""
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(label, f"too small{what}: {width}×{height}, each side must be at least {MIN_SIDE} px")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidImageError(label, f"extreme aspect ratio{what}: {width}×{height} is beyond {MAX_ASPECT:g}:1, "
                                       "not the proportions of a chest film")


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidImageError(
            label, f"too large: {width}×{height} = {width * height / 1e6:.1f} MP exceeds the {max_pixels / 1e6:.0f} MP limit"
        )
    _check_shape(label, width, height)


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
            img = Image.open(io.BytesIO(data))
            if img.format not in PIL_FORMATS:
                raise InvalidImageError(label, f"unsupported image format {img.format}")
            _check_size(label, *img.size, max_pixels)
            needed = _min_bytes(img.format, *img.size)
            if len(data) < needed:
                # Refused before Pillow allocates the image: the bytes present cannot hold what is declared.
                raise InvalidImageError(label, f"truncated {img.format}: {len(data):,} bytes cannot hold the declared "
                                               f"{img.size[0]}×{img.size[1]} image (at least {needed:,} bytes)")
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
            pos = found.end() + int.from_bytes(data[found.end():found.end() + 2], "big")


def _check_jpeg_entropy_complete(data: bytes, img: Image.Image, draft: tuple[str, tuple[int, int]] | None,
                                 label: str) -> None:
    """Refuse a JPEG whose entropy-coded data stops before the image does, whatever marker follows.

    libjpeg, on meeting a marker where it still needs coded data (a cut file with an end-of-image marker
    appended), warns "premature end of data segment" and fills the rest with zeros; Pillow drops that warning.
    The decoder can still say it: decode once more with filler bytes placed before every marker. A complete
    scan never reads past its own data, so the filler is skipped and the picture is identical; a cut scan
    reads the filler instead of zeros, and the picture changes."""
    probe = JpegImagePlugin.JpegImageFile(io.BytesIO(data))  # headers only: stops right after the first SOS
    padded = _with_filler_before_markers(data, probe.fp.tell())
    if padded is None:
        raise InvalidImageError(label, "truncated JPEG: a marker segment runs past the end of the file, "
                                       "before the end-of-image marker")
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
        raise InvalidImageError(label, "truncated JPEG: the coded image data ends before the image does "
                                       "(the decoder filled the rest)")


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


# ---------------------------------------------------------------- DICOM

# Pixel Data, Float Pixel Data and Double Float Pixel Data, with the bits a sample takes when fixed.
_PIXEL_TAGS = {0x7FE00010: None, 0x7FE00008: 32, 0x7FE00009: 64}
# Header elements larger than this are not read in the header pass (pydicom's defer_size): a private
# blob, an overlay or the pixel data itself stays in the file until it is asked for (pixels: after the
# size checks; anything else: never).
_DEFER_BYTES = 64 * 1024
# A deflated dataset may inflate to at most this much before its pixel data (the header, private
# elements, overlays) and this much after it: DICOM puts nothing large there in practice.
_DEFLATED_HEADER_BYTES = 16_000_000
_DEFLATED_TAIL_BYTES = 1_000_000


# pydicom's reading warnings that a decoder of untrusted files expects, by message (pydicom 3.0 texts). Most
# quote the offending header value, which in a DICOM can be a patient's name or ID; the checks in this
# module decide what is refused. Anything else pydicom says (a deprecation, a new warning) still shows.
_PYDICOM_HEADER_WARNINGS = (
    r"The value length \(\d+\) exceeds the maximum length of \d+ allowed for VR ",
    r"Invalid value for VR ",
    r"Expected (explicit|implicit) VR, but found (explicit|implicit) VR - using ",
    r"Unknown DICOM tag ",
    r"Unknown encoding '.*' - using default encoding instead",
    r"Failed to decode byte string with encoding",
    r"Found unknown escape sequence in encoded string value",
    r"Value '.*' for Specific Character Set does not allow code extensions",
    r"Value '.*' cannot be used as code extension",
    r"'datetime\.(datetime|time)' doesn't allow a value of '60'",
)
# ... and those decoding the pixels adds: the frame count and pixel length are checked after decoding.
_PYDICOM_PIXEL_WARNINGS = (
    r"A value of .* for \(0028,0008\) 'Number of Frames' is (invalid|non-conformant)",
    r"The pixel data is \d+ bytes long, which indicates it contains \d+ bytes of excess padding",
    r"The number of bytes of pixel data is sufficient to contain \d+ frames",
    r"\d+ frames have been found in the encapsulated pixel data",
    r"The number of bytes of compressed pixel data matches the expected number for uncompressed data",
    r"The decoded RLE segment contains non-conformant padding",
    r"The \(0028,0004\) 'Photometric Interpretation' value is",
    r"The number of items in \(7FE0,0001\) 'Extended Offset Table'",
)


@contextlib.contextmanager
def _pydicom_quiet(*messages: str) -> Iterator[None]:
    """Within the block, the named pydicom warnings (message regexes, matched from the start) are dropped."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message, module=r"pydicom\.")
        yield


def _pixel_element(ds: Any) -> tuple[int, Any] | None:
    """The dataset's pixel element (tag, raw element) without reading a deferred value."""
    for tag in _PIXEL_TAGS:
        if tag in ds:
            return tag, ds.get_item(tag, keep_deferred=True)
    return None


def _declared_bytes(ds: Any, tag: int, label: str, max_pixels: int) -> int:
    """Check the size the header declares, every factor counted, before any pixel is read; returns the
    decoded (native) size in bytes."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = _PIXEL_TAGS[tag] or int(ds.get("BitsAllocated", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise InvalidImageError(label, f"corrupt DICOM header: image size fields are not numbers ({exc})") from exc
    if rows <= 0 or cols <= 0 or frames <= 0 or samples not in (1, 3, 4) or not (bits == 1 or bits in range(8, 65, 8)):
        raise InvalidImageError(label, f"corrupt DICOM header: {cols}×{rows}, {frames} frame(s), {samples} "
                                       f"sample(s) per pixel, {bits} bits allocated")
    _check_size(label, cols, rows, max_pixels)
    if frames * rows * cols > max_pixels:  # every frame is decoded: the limit holds for all of them
        raise InvalidImageError(label, f"too large: {frames} frames of {cols}×{rows} exceed the "
                                       f"{max_pixels / 1e6:.0f} MP limit")
    nbytes = (frames * rows * cols * samples * bits + 7) // 8
    budget = max_pixels * BYTES_PER_PIXEL_BUDGET
    if nbytes > budget:
        raise InvalidImageError(label, f"too large: {frames} frame(s) of {cols}×{rows} × {samples} sample(s) × "
                                       f"{bits} bits = {nbytes / 1e6:.0f} MB of pixel data exceeds the "
                                       f"{budget / 1e6:.0f} MB limit")
    return nbytes


def _header_until_pixels(inflated: bytes) -> tuple[Any, tuple[int, int, int] | None]:
    """Parse an Explicit VR Little Endian dataset up to its pixel element: (header, (tag, value offset,
    length)), or (None, None) while the bytes so far end inside the header."""
    from pydicom.filereader import read_dataset

    buffer, found = io.BytesIO(inflated), []

    def at_pixels(tag: Any, vr: Any, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            found.append((int(tag), buffer.tell(), length))
            return True
        return False

    with _pydicom_quiet(*_PYDICOM_HEADER_WARNINGS):
        try:
            header = read_dataset(buffer, False, True, stop_when=at_pixels, defer_size=_DEFER_BYTES)
        except Exception:  # cut mid-element: more must inflate first
            return None, None
    return header, (found[0] if found else None)


def _inflate_dataset(deflated: bytes, label: str, max_pixels: int) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian dataset in steps, never past what its header declares.

    pydicom inflates the whole stream before reading a single element, so a few hundred kB of deflated
    zeros become gigabytes. Here the output is capped at _DEFLATED_HEADER_BYTES until the header up to the
    pixel data has inflated; then it is parsed, its declared size checked, and the cap becomes the pixel
    data's end plus a small tail."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    limit, probe, pos, step = _DEFLATED_HEADER_BYTES, 64 * 1024, 0, 256 * 1024
    header_known = False
    try:
        while not inflater.eof:
            if inflater.unconsumed_tail:
                chunk = inflater.unconsumed_tail
            elif pos < len(deflated):
                chunk, pos = deflated[pos:pos + step], pos + step
            else:
                break
            # At most 1 MiB per call: a few kB of deflated zeros would otherwise overshoot the cap at once.
            out += inflater.decompress(chunk, min(limit + 1 - len(out), 2**20))
            if len(out) > limit:
                where = "its declared pixel data" if header_known else "any pixel data"
                raise InvalidImageError(label, f"deflated DICOM inflates past {where} (over {limit / 1e6:.0f} MB); "
                                               "refused before inflating further")
            if not header_known and (len(out) >= probe or inflater.eof):
                probe *= 4  # parse again at 4× the bytes: a few parses in all, however long the header
                header, found = _header_until_pixels(bytes(out))
                if found:
                    tag, value_at, length = found
                    nbytes = _declared_bytes(header, tag, label, max_pixels)
                    length = nbytes if length == 0xFFFFFFFF else length
                    if length > nbytes + 1 + _DEFLATED_TAIL_BYTES:
                        raise InvalidImageError(label, f"corrupt DICOM: the pixel data element holds {length:,} bytes, "
                                                       f"the header declares {nbytes:,}")
                    limit, header_known = value_at + length + _DEFLATED_TAIL_BYTES, True
    except zlib.error as exc:
        raise InvalidImageError(label, f"corrupt deflated DICOM data ({exc})") from exc
    if not inflater.eof:
        raise InvalidImageError(label, "truncated DICOM: the deflated data ends before the dataset does")
    return bytes(out)


def _file_meta(fp: io.BytesIO) -> Any:
    """The File Meta group (0002,eeee) at fp's position, fp left at the first element after it.

    pydicom's public read_file_meta_info(filename) opens a path itself, and an upload is bytes in memory;
    dcmread (stop_before_pixels, specific_tags or not) inflates a deflated body whole before it stops,
    the unbounded read this module refuses. So this is pydicom 3.0's own _read_file_meta_info rebuilt
    from its public parts (read_dataset with stop_when, FileMetaDataset), the implicit-VR retry for
    non-conformant meta (pydicom issue #503) included, so such files decode as they do in dcmread.
    """
    from pydicom.charset import default_encoding
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset

    start = fp.tell()

    def read(implicit: bool) -> Any:
        fp.seek(start)
        meta = FileMetaDataset(read_dataset(fp, is_implicit_VR=implicit, is_little_endian=True,
                                            stop_when=lambda tag, vr, length: tag >> 16 != 2))
        meta.set_original_encoding(implicit, True, default_encoding)
        return meta

    meta = read(False)
    # read_dataset mostly notices implicit-VR meta itself (and warns); where it cannot, the first element
    # fails to convert and the group is read again as implicit VR, as pydicom's own reader does.
    try:
        for element in meta.elements():
            meta[element.tag]
            break
    except NotImplementedError:
        meta = read(True)
    return meta


def _read_dicom(data: bytes, label: str, max_pixels: int) -> Any:
    """The dataset with every element over _DEFER_BYTES left unread, deflated data inflated with a bound."""
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    # The file meta group first, to learn the transfer syntax before pydicom would inflate a deflated
    # body whole.
    preamble = read_preamble(fp, True)
    meta = _file_meta(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), force=True, defer_size=_DEFER_BYTES)
    body = io.BytesIO(_inflate_dataset(data[fp.tell():], label, max_pixels))
    dataset = read_dataset(body, False, True, defer_size=_DEFER_BYTES)
    ds = FileDataset(body, dataset, preamble, meta, False, True)
    # read_dataset recorded the Specific Character Set it decoded with (public: original_character_set).
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


def _decode_dicom(data: bytes, label: str, max_pixels: int) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        with _pydicom_quiet(*_PYDICOM_HEADER_WARNINGS):  # pydicom warns about each odd value; the checks below decide
            ds = _read_dicom(data, label, max_pixels)
            element = _pixel_element(ds)  # parses the (deferred) elements up to the pixel data now
    except InvalidImageError:
        raise
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise InvalidImageError(label, f"corrupt DICOM header ({type(exc).__name__}: {exc})") from exc
    if element is None:
        raise InvalidImageError(label, "DICOM file has no pixel data")
    tag, raw = element
    nbytes = _declared_bytes(ds, tag, label, max_pixels)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    length = getattr(raw, "length", None)
    value_at = getattr(raw, "value_tell", None)
    source = getattr(ds, "buffer", None)
    if not getattr(syntax, "is_compressed", False) and length not in (None, 0xFFFFFFFF):
        # Native pixels: the element must hold the declared image, and the file must hold the element.
        try:
            from pydicom.pixels.utils import get_expected_length

            expected = int(get_expected_length(ds, "bytes"))  # knows YBR_FULL_422's 2 bytes for 3 samples
        except Exception:
            expected = nbytes
        present = length
        if isinstance(source, io.BytesIO) and value_at is not None:
            present = min(length, len(source.getbuffer()) - value_at)
        if present < expected:
            raise InvalidImageError(label, f"truncated DICOM: the pixel data holds {present:,} bytes, the header "
                                           f"declares {expected:,}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    notes: list[str] = []
    try:
        with _pydicom_quiet(*_PYDICOM_HEADER_WARNINGS, *_PYDICOM_PIXEL_WARNINGS):
            arr = ds.pixel_array
    except Exception as exc:
        name = getattr(syntax, "name", str(syntax))
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise InvalidImageError(
                label, f"DICOM transfer syntax '{name}' cannot be decoded by the installed handlers ({exc})"
            ) from exc
        raise InvalidImageError(label, f"DICOM pixel data is corrupt or truncated ({exc})") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and arr.ndim == (3 if samples == 1 else 4):
        arr = arr[0]  # multi-frame: the first frame
        notes.append(f"multi-frame DICOM: the first of {frames} frames was read")
    if arr.ndim == 3:
        # Colour to grey before the LUTs, in float32: modality and VOI LUTs are defined for grey images,
        # and a float64 copy of three channels is the largest array this path would otherwise hold.
        arr = arr.mean(axis=2, dtype=np.float32)
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
            notes.append(f"DICOM display window {window_note}")
    arr = np.asarray(arr, dtype=np.float32)
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
        "Transfer syntax": str(syntax or ""),
    }
    if tag != 0x7FE00010:
        header["Pixel data"] = "float (32-bit)" if tag == 0x7FE00008 else "double float (64-bit)"
    return arr, header, notes


def _window_text(ds: Any) -> str:
    if "VOILUTSequence" in ds:
        return "VOI LUT sequence"
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    return f"center {center}, width {width}"


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
        arr = cv2.resize(arr, (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
        _check_shape(label, arr.shape[1], arr.shape[0], " once downscaled")
    # Near-constant: a few stray pixels give a black film a full min-max range, so the spread of the
    # central 98 % of pixels decides. A strided sample of about 512×512 pixels is plenty for a 1st and a
    # 99th percentile (2,600 pixels in each tail) and costs ~10 ms, where all 4 MP would cost ~150 ms.
    stride = max(1, int(np.ceil(np.sqrt(arr.size / 262_144))))
    p1, p99 = np.percentile(arr[::stride, ::stride], [1, 99])
    if p99 - p1 < MIN_CONTRAST:
        raise InvalidImageError(label, f"near-constant image: 98 % of pixels lie within {p99 - p1:.3f} of the "
                                       f"intensity range (at least {MIN_CONTRAST:g} needed), nothing to read")
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
