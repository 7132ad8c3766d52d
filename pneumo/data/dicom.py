"""DICOM decoding with memory bounded before anything is inflated or allocated: deflated data inflated in steps
up to what the header declares, private and overlay elements never loaded, modality LUT then VOI LUT or window,
MONOCHROME1 inverted so that air is dark.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pneumo.data.pixels import BYTES_PER_PIXEL_BUDGET, InvalidImageError, _check_size

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
# What a file may hold after its pixel data and still be read: the rest is never parsed, and more than this
# is refused. pydicom parses whatever follows the pixel data element by element, about 0.55 s of CPU per MB
# of zero padding (8-byte empty elements), so 64 MB appended to a small film held a decoder for ~40 s.
# Real files put little there: the Data Set Trailing Padding element (FFFC,FFFC) pads to a media block of a
# few KiB, a digital signature sequence holds a few KiB of certificates, an odd-length writer adds a byte.
# 64 KiB leaves room for those many times over and costs nothing (none of it is parsed); beyond it a file
# was padded or spliced, and saying so beats reading a film from it.
_TRAILING_BYTES = 64 * 1024


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
        raise InvalidImageError(
            label,
            f"corrupt DICOM header: {cols}×{rows}, {frames} frame(s), {samples} "
            f"sample(s) per pixel, {bits} bits allocated",
        )
    _check_size(label, cols, rows, max_pixels)
    if frames * rows * cols > max_pixels:  # every frame is decoded: the limit holds for all of them
        raise InvalidImageError(
            label, f"too large: {frames} frames of {cols}×{rows} exceed the {max_pixels / 1e6:.0f} MP limit"
        )
    nbytes = (frames * rows * cols * samples * bits + 7) // 8
    budget = max_pixels * BYTES_PER_PIXEL_BUDGET
    if nbytes > budget:
        raise InvalidImageError(
            label,
            f"too large: {frames} frame(s) of {cols}×{rows} × {samples} sample(s) × "
            f"{bits} bits = {nbytes / 1e6:.0f} MB of pixel data exceeds the "
            f"{budget / 1e6:.0f} MB limit",
        )
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


def _inflate_dataset(deflated: bytes, label: str, max_pixels: int) -> tuple[bytes, int]:
    """Inflate a Deflated Explicit VR Little Endian dataset in steps, never past what its header declares;
    returns the inflated dataset and the count of bytes left in the file after the deflated stream's end.

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
                chunk, pos = deflated[pos : pos + step], pos + step
            else:
                break
            # At most 1 MiB per call: a few kB of deflated zeros would otherwise overshoot the cap at once.
            out += inflater.decompress(chunk, min(limit + 1 - len(out), 2**20))
            if len(out) > limit:
                where = "its declared pixel data" if header_known else "any pixel data"
                raise InvalidImageError(
                    label,
                    f"deflated DICOM inflates past {where} (over {limit / 1e6:.0f} MB); "
                    "refused before inflating further",
                )
            if not header_known and (len(out) >= probe or inflater.eof):
                probe *= 4  # parse again at 4× the bytes: a few parses in all, however long the header
                header, found = _header_until_pixels(bytes(out))
                if found:
                    tag, value_at, length = found
                    nbytes = _declared_bytes(header, tag, label, max_pixels)
                    length = nbytes if length == 0xFFFFFFFF else length
                    if length > nbytes + 1 + _DEFLATED_TAIL_BYTES:
                        raise InvalidImageError(
                            label,
                            f"corrupt DICOM: the pixel data element holds {length:,} bytes, "
                            f"the header declares {nbytes:,}",
                        )
                    limit, header_known = value_at + length + _DEFLATED_TAIL_BYTES, True
    except zlib.error as exc:
        raise InvalidImageError(label, f"corrupt deflated DICOM data ({exc})") from exc
    if not inflater.eof:
        raise InvalidImageError(label, "truncated DICOM: the deflated data ends before the dataset does")
    # Bytes past the stream's end were fed (unused_data) or never fed: they follow the dataset in the file.
    return bytes(out), len(inflater.unused_data) + max(0, len(deflated) - pos)


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
        meta = FileMetaDataset(
            read_dataset(
                fp, is_implicit_VR=implicit, is_little_endian=True, stop_when=lambda tag, vr, length: tag >> 16 != 2
            )
        )
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


def _stop_after_pixels() -> Callable[[Any, Any, int], bool]:
    """A read_dataset stop_when that passes the pixel element(s) and stops at the first element after them.

    Reading then ends at the pixel data, as stop_before_pixels ends before it, and pydicom leaves the
    file at the start of that next element (it rewinds over the element's header): what follows is never
    parsed, and the file's position says how many bytes follow."""
    seen = False

    def stop(tag: Any, vr: Any, length: int) -> bool:
        nonlocal seen
        if int(tag) in _PIXEL_TAGS:
            seen = True
            return False
        return seen

    return stop


def _refuse_trailing(trailing: int, label: str) -> None:
    if trailing > _TRAILING_BYTES:
        raise InvalidImageError(
            label,
            f"{trailing:,} bytes after the pixel data (at most {_TRAILING_BYTES // 1024} KiB are "
            "ignored); refused unread",
        )


def _read_dicom(data: bytes, label: str, max_pixels: int) -> Any:
    """The dataset up to and including its pixel data, every element over _DEFER_BYTES left unread,
    deflated data inflated with a bound. Up to _TRAILING_BYTES after the pixel data are ignored unread;
    more are refused (the one path for the CLI, the app and PACS screening: load_xray)."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset, read_partial, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    # The file meta group first, to learn the transfer syntax before pydicom would inflate a deflated
    # body whole.
    preamble = read_preamble(fp, True)
    meta = _file_meta(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        # dcmread(force=True) is read_partial with no stop: the same reader, stopped after the pixel data.
        whole = io.BytesIO(data)
        ds = read_partial(whole, stop_when=_stop_after_pixels(), defer_size=_DEFER_BYTES, force=True)
        _refuse_trailing(len(data) - whole.tell(), label)
        return ds
    inflated, after_stream = _inflate_dataset(data[fp.tell() :], label, max_pixels)
    body = io.BytesIO(inflated)
    dataset = read_dataset(body, False, True, stop_when=_stop_after_pixels(), defer_size=_DEFER_BYTES)
    _refuse_trailing(len(inflated) - body.tell() + after_stream, label)
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
            raise InvalidImageError(
                label, f"truncated DICOM: the pixel data holds {present:,} bytes, the header declares {expected:,}"
            )
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
            windowed, window_note = (
                False,
                f"invalid window in file, ignored ({type(exc).__name__}: {exc}); min-max scaling",
            )
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
