from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.decode import load_image, load_xray, sniff_format
from pneumo.data.pixels import InvalidImageError
from tests.conftest import require


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(h: int = 64, w: int = 80) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_common_formats_decode_to_unit_gray(fmt: str) -> None:
    data = _encode(Image.fromarray(_gradient()), fmt)
    img = load_image(data, name=f"x.{fmt.lower()}")
    assert img.dtype == np.float32 and img.shape == (64, 80)
    # The 8-bit ramp read back as grey level / 255: exactly for the lossless formats, within two grey
    # levels for JPEG (its 8×8 blocks round a smooth ramp by at most a level or two).
    np.testing.assert_allclose(img, _gradient() / 255.0, atol=2.5 / 255 if fmt == "JPEG" else 1e-6, rtol=0)


def test_rgb_rgba_and_palette_become_gray() -> None:
    rgb = np.stack([_gradient()] * 3, axis=-1)
    for img in (Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA"), Image.fromarray(rgb).convert("P")):
        out = load_image(_encode(img, "PNG"))
        assert out.ndim == 2 and out.shape == (64, 80)
        assert out[:, -1].mean() > 0.9 and out[:, 0].mean() < 0.1


def test_sixteen_bit_png_uses_full_range() -> None:
    arr = np.tile(np.linspace(1000, 4000, 80), (64, 1)).astype(np.uint16)
    out = load_image(_encode(Image.fromarray(arr), "PNG"))
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    # Linear over the stored range 1000–4000, not over 16 bits' 0–65535 (which would leave it in 0.015–0.061).
    np.testing.assert_allclose(out, (arr - 1000.0) / 3000.0, atol=1e-6, rtol=0)


def test_format_decided_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(_encode(Image.fromarray(_gradient()), "PNG"))
    assert load_xray(path).format == "PNG"
    assert sniff_format(b"%PDF-1.7 ...") == "PDF"


def test_pdf_renamed_png_is_rejected_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" * 10)
    with pytest.raises(InvalidImageError) as err:
        load_image(path)
    assert "report.png" in str(err.value) and "PDF" in str(err.value)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, this is text and not an image at all" * 3, "not an image"),
    ],
)
def test_bad_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=reason):
        load_image(data, name="upload.png")


def test_truncated_jpeg_is_corrupt() -> None:
    data = _encode(Image.fromarray(_gradient(256, 256)), "JPEG")
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(data[: len(data) // 3], name="cut.jpg")


def test_too_many_pixels_rejected_before_decoding() -> None:
    data = _encode(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(data, name="huge.png", max_pixels=5_000_000)


def test_tiny_and_constant_images_rejected() -> None:
    with pytest.raises(InvalidImageError, match="too small"):
        load_image(_encode(Image.fromarray(_gradient(20, 80)), "PNG"))
    with pytest.raises(InvalidImageError, match="constant image"):
        load_image(_encode(Image.new("L", (64, 64), 128), "PNG"))


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidImageError, match="folder"):
        load_image(tmp_path)


# ---------------------------------------------------------------- DICOM


def _dicom(
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    syntax: str | None = None,
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ViewPosition = "AP"
    ds.PatientName = "Secret^Name"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        raw = pixels.astype(np.uint16).tobytes()
        if syntax:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([raw])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = raw
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 4000, 64), (64, 1)).astype(np.uint16)


def test_dicom_monochrome2_keeps_orientation_and_reports_header() -> None:
    xray = load_xray(_dicom(_ramp()), name="a.dcm")
    assert xray.format == "DICOM"
    assert xray.pixels[:, 0].mean() < 0.05 and xray.pixels[:, -1].mean() > 0.95
    assert xray.dicom["Modality"] == "DX" and xray.dicom["View position"] == "AP"
    assert not any("Secret" in str(v) for v in xray.dicom.values())


def test_dicom_monochrome1_is_inverted_so_air_is_dark() -> None:
    img = load_image(_dicom(_ramp(), photometric="MONOCHROME1"))
    assert img[:, 0].mean() > 0.95 and img[:, -1].mean() < 0.05


def test_dicom_window_is_applied() -> None:
    # A narrow window around the middle: everything below it saturates black, above it white.
    img = load_image(_dicom(_ramp(), window=(2000, 400)))
    assert (img[:, :20] < 0.01).all() and (img[:, -20:] > 0.99).all()
    assert 0.3 < img[:, 32].mean() < 0.7


def test_dicom_without_pixels_and_unsupported_compression() -> None:
    with pytest.raises(InvalidImageError, match="no pixel data"):
        load_image(_dicom(None), name="empty.dcm")
    from pydicom.uid import JPEG2000Lossless

    data = _dicom(_ramp(), syntax=JPEG2000Lossless)  # claims JPEG 2000 but holds raw bytes
    with pytest.raises(InvalidImageError, match="cannot be decoded|corrupt"):
        load_image(data, name="j2k.dcm")


def _pydicom_test_file(name: str) -> Path:
    """One of the files pydicom ships with its package (never downloaded: pydicom's other test files are)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not among pydicom's bundled test files"
    return Path(path)


def _by_hand_window(raw: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) to [0, 1], then stretched over what it gives, as every
    decoded film is."""
    y = np.clip((raw.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return (y - y.min()) / (y.max() - y.min())


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_losslessly_compressed_dicom_decodes_to_the_uncompressed_samples(name: str) -> None:
    """RLE, JPEG 2000 and JPEG-LS lossless copies of pydicom's MR_small (64 × 64, signed 16-bit, window 600/1600):
    each decodes to the samples of the uncompressed file, read here straight from its bytes and windowed by
    hand."""
    import pydicom

    plain = pydicom.dcmread(_pydicom_test_file("MR_small.dcm"))
    assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # explicit VR little endian: raw bytes
    assert (plain.PixelRepresentation, plain.BitsAllocated) == (1, 16)
    raw = np.frombuffer(plain.PixelData, dtype="<i2").reshape(64, 64)
    expected = _by_hand_window(raw, float(plain.WindowCenter), float(plain.WindowWidth))
    xray = load_xray(_pydicom_test_file(name))
    assert pydicom.dcmread(_pydicom_test_file(name)).file_meta.TransferSyntaxUID.is_compressed
    assert xray.format == "DICOM" and xray.pixels.dtype == np.float32 and xray.pixels.shape == (64, 64)
    assert 0.0 <= xray.pixels.min() and xray.pixels.max() <= 1.0
    # pydicom's window and the standard's formula agree to within a grey level of this width (1 / 1600).
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-3, rtol=0)
    assert xray.dicom["Windowing"] == "center 600, width 1600" and xray.dicom["Rows × columns"] == "64 × 64"


def test_jpeg_baseline_dicom_decodes_like_its_codestream() -> None:
    """A JPEG baseline colour DICOM (100 × 100, YCbCr): the film is the mean of the three channels of its
    codestream, here decoded on its own by Pillow, stretched to [0, 1]. Two JPEG decoders may round an
    8×8 block's inverse DCT differently: a few grey levels apart at most."""
    import pydicom
    from pydicom.encaps import generate_frames

    path = _pydicom_test_file("SC_rgb_jpeg_dcmtk.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline (process 1)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    rgb = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"), dtype=np.float64)
    grey = rgb.mean(axis=2)
    expected = (grey - grey.min()) / (grey.max() - grey.min())
    xray = load_xray(path)
    assert xray.format == "DICOM" and xray.pixels.dtype == np.float32 and xray.pixels.shape == (100, 100)
    assert xray.pixels.min() == 0.0 and xray.pixels.max() == 1.0
    assert np.abs(xray.pixels - expected).max() <= 4 / 255 and np.abs(xray.pixels - expected).mean() <= 1 / 255


def test_jpeg_2000_dicom_decodes_like_its_codestream() -> None:
    """A JPEG 2000 film of 1024 × 256 with 16-bit samples and no window: its codestream decoded on its own by
    Pillow (OpenJPEG), stretched to [0, 1]. The same wavelet decode gives the same samples."""
    import pydicom
    from pydicom.encaps import generate_frames

    path = _pydicom_test_file("JPEG2000.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"  # JPEG 2000 (lossy allowed)
    samples = np.asarray(Image.open(io.BytesIO(next(generate_frames(ds.PixelData, number_of_frames=1)))), np.float64)
    expected = (samples - samples.min()) / (samples.max() - samples.min())
    xray = load_xray(path)
    assert xray.format == "DICOM" and xray.pixels.dtype == np.float32 and xray.pixels.shape == (1024, 256)
    assert xray.dicom["Windowing"] == "none in file (min-max scaling)"
    np.testing.assert_allclose(xray.pixels, expected, atol=1e-6, rtol=0)


def test_twelve_bit_jpeg_extended_dicom_decodes_at_its_size() -> None:
    """A 12-bit JPEG extended film of 1024 × 256 (no second decoder here reads 12-bit JPEG): read whole, at the
    full range of its samples, and a picture rather than a uniform block."""
    xray = load_xray(_pydicom_test_file("JPGExtended.dcm"))
    assert xray.format == "DICOM" and xray.pixels.dtype == np.float32 and xray.pixels.shape == (1024, 256)
    assert xray.pixels.min() == 0.0 and xray.pixels.max() == 1.0
    assert xray.dicom["Windowing"] == "none in file (min-max scaling)" and xray.pixels.std() > 0.05


# ---------------------------------------------------------------- hostile and unusual inputs


@pytest.mark.parametrize(
    "edit, broken_window",
    [
        ({"WindowCenter": 2000, "WindowWidth": 0}, True),
        ({"WindowCenter": 2000, "WindowWidth": -40}, True),
        ({"WindowCenter": "abc", "WindowWidth": 400}, True),
        ({"WindowCenter": 2000, "WindowWidth": 400, "VOILUTFunction": "NOT_A_FUNCTION"}, True),
        ({"ModalityLUTSequence": []}, False),  # an empty sequence: no modality LUT, nothing broken to report
    ],
)
def test_damaged_dicom_attributes_never_escape(edit: dict, broken_window: bool) -> None:
    """A damaged display attribute never costs the film: it is read at the full range of its samples, and a
    window that cannot be applied is named beside the reading instead of being applied or raising."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    for key, value in edit.items():
        if key == "WindowCenter" and isinstance(value, str):
            ds.add_new(0x00281050, "DS", "2000")
            ds[0x00281050]._value = value  # bypass pydicom's own validation, as a damaged file would
        else:
            setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    xray = load_xray(buf.getvalue(), name="damaged.dcm")
    np.testing.assert_allclose(xray.pixels, _ramp() / 4000.0, atol=1e-6, rtol=0)  # min–max of the 0–4000 ramp
    if broken_window:
        assert xray.dicom["Windowing"].startswith("invalid window in file, ignored")
        assert xray.dicom["Windowing"].endswith("; min-max scaling")
        assert [w for w in xray.warnings if w.startswith("DICOM display window invalid window")], xray.warnings
    else:
        assert xray.dicom["Windowing"] == "none in file (min-max scaling)" and xray.warnings == []


def test_dicom_without_preamble_is_read() -> None:
    data = _dicom(_ramp())
    headerless = data[132:]  # drop the preamble and the DICM magic, as some exporters do
    xray = load_xray(headerless, name="raw.dcm")
    assert xray.format == "DICOM" and xray.pixels[:, -1].mean() > 0.95


def test_exif_orientation_is_applied() -> None:
    img = Image.fromarray(_gradient(64, 96))  # dark left, bright right
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise when displayed
    data = _encode(img, "JPEG", exif=exif.tobytes())
    pixels = load_image(data, name="phone.jpg")
    assert pixels.shape == (96, 64)
    assert pixels[0].mean() < pixels[-1].mean()  # the gradient now runs top to bottom


def test_declared_size_without_the_data_is_refused() -> None:
    big = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 3000), dtype=np.uint8)), "JPEG")
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(big[:1024], name="liar.jpg")
    png = _encode(Image.fromarray(_gradient(256, 256)), "PNG")
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(png[: len(png) // 2], name="half.png")


def test_large_films_are_kept_at_a_bounded_size() -> None:
    from pneumo.data.pixels import MAX_KEPT_SIDE

    data = _encode(Image.fromarray(np.tile(np.linspace(0, 255, 3000, dtype=np.uint8), (2600, 1))), "JPEG", quality=95)
    xray = load_xray(data, name="big.jpg")
    assert max(xray.pixels.shape) <= MAX_KEPT_SIDE and xray.original_shape[1] >= MAX_KEPT_SIDE


@pytest.mark.parametrize("fmt", ["DICOM", "PNG", "JPEG"])
def test_fuzzed_files_raise_only_invalid_image_error(fmt: str) -> None:
    """Seeded byte flips over valid files: every outcome is an image or an InvalidImageError."""
    rng = np.random.default_rng(7)
    if fmt == "DICOM":
        valid = _dicom(_ramp(), window=(2000, 400))
        header_end = valid.index(b"\xe0\x7f\x10\x00")  # flip in the header, before the pixel data
    else:
        valid = _encode(Image.fromarray(_gradient(64, 80)), fmt)
        header_end = min(len(valid), 200)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(300):
        data = bytearray(valid)
        for pos in rng.integers(0, header_end, size=rng.integers(1, 4)):
            data[pos] = int(rng.integers(0, 256))
        try:
            xray = load_xray(bytes(data), name=f"fuzz.{fmt.lower()}")
            assert xray.pixels.ndim == 2 and np.isfinite(xray.pixels).all()
            outcomes["ok"] += 1
        except InvalidImageError as exc:
            assert str(exc).startswith("fuzz.")
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0  # the flips did damage, and it was reported, never raised raw


# ---------------------------------------------------------------- bounded before decoding (issue 20)
#
# Each bomb below is tiny on disk and declares far more than it holds or than the limits allow. The
# builders stream what they compress, so the test itself never holds a bomb's inflated size either.


def _film(size: int = 1024, seed: int = 0) -> np.ndarray:
    """A chest-like 8-bit picture (a body with two dark lung fields and noise), for real-looking JPEGs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.05 * rng.standard_normal((size, size))
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] -= 0.35
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _dicom_with(
    rows: int,
    cols: int,
    pixel: bytes,
    samples: int = 1,
    bits: int = 16,
    syntax: str | None = None,
    keyword: str = "PixelData",
) -> bytes:
    """A minimal secondary-capture DICOM holding `pixel` as its pixel element, whatever it declares."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax) if syntax else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = rows, cols, samples, bits
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    if keyword == "PixelData":
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    setattr(ds, keyword, pixel)
    if keyword == "PixelData" and meta.TransferSyntaxUID.is_compressed:
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _deflated(rows: int, cols: int, zeros_before_pixels: int = 0) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM of rows×cols 16-bit zeros, optionally with a private
    element of `zeros_before_pixels` zero bytes ahead of the pixel data, deflated in a stream."""
    import struct
    import zlib

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = rows * cols * 2
    small = _dicom_with(rows, cols, b"\0\0", syntax=DeflatedExplicitVRLittleEndian)
    # The deflated body starts after the preamble and prefix (132 bytes), the group length element (12)
    # and the rest of the meta group it counts: found through public pydicom, not the reader under test.
    start = 132 + 12 + int(pydicom.dcmread(io.BytesIO(small)).file_meta.FileMetaInformationGroupLength)
    body = zlib.decompress(small[start:], -zlib.MAX_WBITS)
    at = body.index(b"\xe0\x7f\x10\x00OW")
    head = body[:at]
    if zeros_before_pixels:
        at_group_28 = head.index(b"\x28\x00\x02\x00")  # a private group 0009 element sorts before group 0028
        head = head[:at_group_28] + b"\x09\x00\x10\x10OB\0\0" + struct.pack("<I", zeros_before_pixels)
        runs = [(zeros_before_pixels, body[at_group_28:at])]
    else:
        runs = []
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [small[:start], comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)]
    # After a full flush the compressor starts afresh, byte-aligned: the segment for 4 MiB of zeros is the
    # same every time, so it is compressed once and repeated (a valid deflate stream, built in milliseconds).
    block = 4 * 2**20
    segment = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    for n, after in [*runs, (0, b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<I", pixels)), (pixels, b"")]:
        parts.append(
            segment * (n // block)
            + comp.compress(bytes(n % block))
            + comp.compress(after)
            + comp.flush(zlib.Z_FULL_FLUSH)
        )
    parts.append(comp.flush())
    return b"".join(parts)


def _rle_rgb16(side: int) -> bytes:
    """16-bit RGB, RLE Lossless, every sample zero: 6 byte-plane segments of per-row PackBits runs."""
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    row = b"\x81\x00" * (side // 128) + (bytes([257 - side % 128, 0]) if side % 128 > 1 else b"")
    segment = row * side
    segment += b"\0" * (len(segment) % 2)
    header = struct.pack("<16I", 6, *[64 + i * len(segment) for i in range(6)], *[0] * 9)
    return _dicom_with(side, side, encapsulate([header + segment * 6]), samples=3, syntax=RLELossless)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int, raw: bytes) -> bytes:
    """A well-formed 8-bit grey PNG header declaring width×height, with `raw` (filtered rows) as its data."""
    import struct
    import zlib

    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A complete 64×64 JPEG whose frame header is rewritten to declare width×height."""
    import struct

    data = bytearray(_encode(Image.fromarray(_gradient(64, 64)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _cut_jpeg(fraction: float = 0.6, **options) -> bytes:
    data = _encode(Image.fromarray(_film()), "JPEG", quality=90, **options)
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


BOMBS = {
    # 288 MB of deflated zeros in ~300 kB: refused at the header, before the pixel data inflates.
    "deflated DICOM 12000x12000": (lambda: _deflated(12000, 12000), "too large"),
    # 100 MB of zeros in a private element before a 64×64 image: the inflation cap stops it.
    "deflated DICOM with a 100 MB private element": (
        lambda: _deflated(64, 64, zeros_before_pixels=100_000_000),
        "inflates past",
    ),
    # 17.6 MP passes a pixel count, but 3 samples × 16 bits make it 106 MB of pixels.
    "16-bit RGB DICOM 4200x4200 (RLE)": (lambda: _rle_rgb16(4200), "MB of pixel data exceeds"),
    "PNG declaring 7000x7000 in 400 bytes": (
        lambda: _png_declaring(7000, 7000, b"\0" + bytes(range(256)) * 27),
        "truncated PNG",
    ),
    "JPEG declaring 7000x7000 in 600 bytes": (lambda: _jpeg_declaring(7000, 7000), "truncated JPEG"),
    "JPEG cut at 60 % with an end-of-image marker": (_cut_jpeg, "truncated JPEG"),
    "PNG 200000x32": (
        lambda: _png_declaring(200_000, 32, (b"\0" + bytes(range(256)) * 782)[:200_001] * 32),
        "extreme aspect ratio",
    ),
    "near-black film": (lambda: _encode(Image.fromarray((_film() // 40).astype(np.uint8)), "PNG"), "near-constant"),
    # Not a bomb: float pixels decode (the memory check covers their 8-byte samples too).
    "double float pixel DICOM 384x384": (
        lambda: _dicom_with(
            384, 384, np.tile(np.linspace(-1, 1, 384), (384, 1)).tobytes(), bits=64, keyword="DoubleFloatPixelData"
        ),
        None,
    ),
}


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    files = {}
    for i, (name, (make, _)) in enumerate(BOMBS.items()):
        files[name] = folder / f"bomb{i}.bin"
        files[name].write_bytes(make())
    return files


@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_refused_with_their_reason(name: str, bomb_files: dict[str, Path]) -> None:
    reason = BOMBS[name][1]
    path = bomb_files[name]
    assert path.stat().st_size < 2_000_000  # tiny on disk: what they declare is the danger
    if reason is None:
        xray = load_xray(path, name="float.dcm")
        assert xray.pixels[:, 0].mean() < 0.05 and xray.pixels[:, -1].mean() > 0.95
        return
    with pytest.raises(InvalidImageError, match=reason) as err:
        load_xray(path, name="bomb.file")
    assert str(err.value).startswith("bomb.file: ") and "\n" not in str(err.value)


# Run in a fresh interpreter: import and warm every decoder path (so lazy imports and first-use caches do
# not count), then fork once per bomb. Linux sets a forked child's VmHWM (peak resident set) to its current
# resident set, so the child's VmHWM after load_xray minus its VmRSS before is what decoding that bomb
# added at its peak, read with the project's own pneumo.core.memory.resident().
_PEAK_SCRIPT = r"""
import io, json, os, sys
import numpy as np
from PIL import Image
from pneumo.data import decode
from pneumo.data.pixels import InvalidImageError
from pneumo.core import memory

film = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
for fmt in ("PNG", "JPEG"):
    buf = io.BytesIO(); Image.fromarray(film).save(buf, fmt); decode.load_xray(buf.getvalue())
decode.load_xray(sys.argv[1])  # a small valid DICOM: pydicom and its pixel handlers
for path in sys.argv[2:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        before = memory.resident().total_mb
        try:
            decode.load_xray(path)
            outcome = "decoded"
        except InvalidImageError as exc:
            outcome = exc.reason
        peak = memory.resident().peak_mb
        os.write(write, json.dumps({"path": path, "outcome": outcome, "growth_mb": peak - before}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        print(fh.read(), flush=True)
    os.waitpid(pid, 0)
"""
# Every bomb is refused (or, for the float film, decoded) without allocating what it declares. What a
# refusal may still cost: the file's own bytes (< 2 MB here), pydicom's header, and for a deflated file at
# most 16 MB of inflated header (pneumo.data.dicom._DEFLATED_HEADER_BYTES) held twice while it is parsed; the float
# film holds its 1.2 MB of samples a few times over. 64 MB covers that with room for allocator noise, and stays
# below what any of the bombs would cost decoded: the smallest, the 16-bit RGB film, is 106 MB of pixels
# (before this check it peaked at 373 MB; the deflated private element at 764 MB).
PEAK_BOUND_MB = 64


def test_bomb_peak_memory_is_bounded(bomb_files: dict[str, Path], tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    require(Path("/proc/self/status").exists() and hasattr(os, "fork"), "peak RSS is read from Linux /proc")

    valid = tmp_path / "valid.dcm"
    valid.write_bytes(_dicom(_ramp()))
    names = {str(path): name for name, path in bomb_files.items()}
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(valid), *names],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(names)
    print(f"\npeak RSS above the interpreter's resident set while decoding each bomb (bound {PEAK_BOUND_MB} MB):")
    for r in results:
        print(f"  {names[r['path']]:<48} {r['growth_mb']:7.1f} MB  {r['outcome'][:90]}")
    for r in results:
        expected = BOMBS[names[r["path"]]][1]
        assert (r["outcome"] == "decoded") if expected is None else (expected in r["outcome"]), r
        assert r["growth_mb"] < PEAK_BOUND_MB, r


# ---------------------------------------------------------------- DICOM: deflated, declared sizes, float pixels


def _as_deflated(data: bytes) -> bytes:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_deflated_dicom_reads_like_its_explicit_twin_and_a_cut_one_is_refused() -> None:
    plain = _dicom(_ramp(), window=(2000, 3000))
    deflated = _as_deflated(plain)
    a, b = load_xray(plain, name="plain.dcm"), load_xray(deflated, name="deflated.dcm")
    assert np.array_equal(a.pixels, b.pixels)
    assert "1.2.840.10008.1.2.1.99" in b.dicom["Transfer syntax"] or "Deflated" in b.dicom["Transfer syntax"]
    with pytest.raises(InvalidImageError, match="deflated.dcm: .*(truncated|corrupt)"):
        load_xray(deflated[: len(deflated) // 2], name="deflated.dcm")


def test_native_pixel_data_shorter_than_declared_is_truncated() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    ds.Rows = 128  # declares 128×64 over 64×64 pixels
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(
        InvalidImageError, match="truncated DICOM: the pixel data holds 8,192 bytes, the header declares 16,384"
    ):
        load_xray(buf.getvalue(), name="short.dcm")


def test_declared_size_counts_frames_samples_and_bits() -> None:
    # 3000×3000 passes the pixel count at a 10 MP limit, but 3 samples of 16 bits are 54 MB, over 20 MB.
    data = _dicom_with(3000, 3000, b"\0\0", samples=3)
    with pytest.raises(
        InvalidImageError, match=r"3 sample\(s\) × 16 bits = 54 MB of pixel data exceeds the 20 MB limit"
    ):
        load_xray(data, name="rgb16.dcm", max_pixels=10_000_000)


@pytest.mark.parametrize(
    "keyword, bits, dtype", [("FloatPixelData", 32, np.float32), ("DoubleFloatPixelData", 64, np.float64)]
)
def test_float_pixel_data_is_decoded(keyword: str, bits: int, dtype: type) -> None:
    ramp = np.tile(np.linspace(-1000, 3000, 64), (64, 1)).astype(dtype)
    xray = load_xray(_dicom_with(64, 64, ramp.tobytes(), bits=bits, keyword=keyword), name="float.dcm")
    assert xray.pixels[:, 0].mean() < 0.02 and xray.pixels[:, -1].mean() > 0.98
    np.testing.assert_allclose(xray.pixels, (ramp + 1000.0) / 4000.0, atol=1e-6, rtol=0)  # linear over −1000…3000
    assert "float" in xray.dicom["Pixel data"]


def test_broken_window_note_reaches_the_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from pneumo.core.card import ModelCard
    from pneumo.model import reading as predict

    plain = load_xray(_dicom(_ramp(), window=(2000, 4000)), name="ok.dcm")
    assert plain.warnings == []
    xray = load_xray(_dicom(_ramp(), window=(2000, 0)), name="w0.dcm")
    assert len(xray.warnings) == 1 and "window" in xray.warnings[0] and "ignored" in xray.warnings[0]
    assert "ignored" in xray.dicom["Windowing"]
    # predict.read puts the decoder's notes beside the input check's, in front of them.
    monkeypatch.setattr(
        predict.quality, "inspect", lambda *a, **k: SimpleNamespace(warnings=["input check note"], assessable=True)
    )
    loaded = SimpleNamespace(
        predict=lambda pixels: np.array([0.2]), threshold=0.5, density=None, card=ModelCard.default("test")
    )
    reading = predict.read(loaded, _dicom(_ramp(), window=(2000, -5)), name="w-5.dcm")
    assert (
        reading.error is None
        and reading.warnings[0] == load_xray(_dicom(_ramp(), window=(2000, -5))).warnings[0]
        and reading.warnings[1] == "input check note"
    )


# ---------------------------------------------------------------- Pillow formats: bytes present, completeness


@pytest.mark.parametrize(
    "options", [{}, {"progressive": True}, {"optimize": True}, {"restart_marker_blocks": 4}, {"subsampling": 0}]
)
@pytest.mark.parametrize(
    "tail", [b"\xff\xd9", b"\xff\xd9\xff\xd9", b"\xff\xd0\xff\xd1\xff\xd9", b"\xff\xfe\x00\x04ab\xff\xd9"]
)
def test_cut_jpeg_is_refused_whatever_marker_follows(options: dict, tail: bytes) -> None:
    for mode in ("L", "RGB"):
        data = _encode(Image.fromarray(_film(256)).convert(mode), "JPEG", quality=90, **options)
        assert load_xray(data).pixels.shape == (256, 256)  # the whole file passes the same check
        for fraction in (0.3, 0.9, 0.995):
            with pytest.raises(InvalidImageError, match="truncated JPEG"):
                load_xray(data[: int(len(data) * fraction)] + tail, name="cut.jpg")


def test_cut_jpeg_with_a_segment_running_past_the_end_is_refused() -> None:
    data = _encode(Image.fromarray(_film(256)), "JPEG")
    with pytest.raises(InvalidImageError, match="truncated JPEG"):
        load_xray(data[: len(data) // 2] + b"\xff\xfe\xff\xff\xff\xd9", name="cut.jpg")


def test_complete_jpegs_with_thumbnail_second_picture_or_trailer_pass() -> None:
    film = Image.fromarray(_film(256))
    exif = Image.Exif()
    exif[0x0112] = 6
    thumbnail_exif = _encode(film, "JPEG", exif=exif.tobytes())
    buf = io.BytesIO()
    film.save(buf, "MPO", save_all=True, append_images=[film.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])
    trailer = _encode(film, "JPEG") + b"vendor trailer \xff\xd9 after the image"
    cmyk = _encode(film.convert("CMYK"), "JPEG")
    for data in (thumbnail_exif, buf.getvalue(), trailer, cmyk):
        assert load_xray(data, name="whole.jpg").pixels.shape == (256, 256)


def test_truncated_large_jpeg_is_refused_at_its_draft_scale() -> None:
    import cv2

    big = cv2.resize(_film(700), (4200, 3500), interpolation=cv2.INTER_LINEAR)  # over 4096: read at half scale
    data = _encode(Image.fromarray(big), "JPEG", quality=80)
    assert max(load_xray(data).pixels.shape) <= 2048
    with pytest.raises(InvalidImageError, match="truncated JPEG"):
        load_xray(data[: int(len(data) * 0.8)] + b"\xff\xd9", name="big-cut.jpg")


def test_sides_and_aspect_ratio() -> None:
    from pneumo.data.pixels import MAX_ASPECT, _finish

    ramp = lambda h, w: _encode(Image.fromarray(np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))), "PNG")  # noqa: E731
    assert load_xray(ramp(32, int(32 * MAX_ASPECT))).pixels.shape == (32, 128)  # 4:1 is still a film
    with pytest.raises(InvalidImageError, match="extreme aspect ratio: 161×32"):
        load_xray(ramp(32, 161))
    with pytest.raises(InvalidImageError, match="extreme aspect ratio: 40×300"):
        load_xray(ramp(300, 40))
    # The rule holds for the film as decoded too, not only for the size its header declared.
    with pytest.raises(InvalidImageError, match="as decoded"):
        _finish(np.tile(np.linspace(0, 1, 500, dtype=np.float32), (40, 1)), "decoded.png")


def test_near_constant_film_is_refused_and_a_dim_real_one_kept() -> None:
    film = _film(256)
    black = film // 40  # values 0..6 of 255: 98 % of pixels within ~0.02
    black[0, 0] = 255  # one hot pixel gives it a full min-max range: the percentile rule still sees it
    with pytest.raises(InvalidImageError, match="near-constant image"):
        load_xray(_encode(Image.fromarray(black), "PNG"), name="black.png")
    dim = (film // 4).astype(np.uint8)  # an underexposed film: 0..63 of 255, anatomy still visible
    assert load_xray(_encode(Image.fromarray(dim), "PNG"), name="dim.png").pixels.max() < 0.3
    sixteen = film.astype(np.uint16) * 4 + 30000  # 16-bit, scaled by min-max: contrast is relative
    assert load_xray(_encode(Image.fromarray(sixteen), "PNG"), name="16.png").pixels.max() == pytest.approx(1.0)


def test_a_file_larger_than_any_accepted_film_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    with path.open("wb") as fh:  # sparse: 200 MB declared on disk without writing it
        fh.write(_encode(Image.fromarray(_gradient()), "PNG"))
        fh.truncate(200_000_000)
    with pytest.raises(InvalidImageError, match="huge.png: too large: the file holds 200 MB"):
        load_xray(path, max_pixels=1_000_000)


def test_multi_frame_dicom_says_which_frame_was_read() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([_ramp(), _ramp()[:, ::-1], _ramp()]).astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    xray = load_xray(buf.getvalue(), name="frames.dcm")
    assert xray.pixels[:, -1].mean() > 0.95  # the first frame, not the flipped second
    assert xray.warnings == ["multi-frame DICOM: the first of 3 frames was read"]


# ---------------------------------------------------------------- pydicom's warnings and its file meta reader


def test_odd_header_values_are_not_echoed_in_warnings_and_other_warnings_still_show() -> None:
    """pydicom quotes an invalid value in its warning (here a name in the transfer syntax UID): those are
    dropped by message, so a header value never reaches a log; any other warning still shows."""
    import warnings

    import pydicom

    data = _dicom(_ramp())
    syntax = b"1.2.840.10008.1.2.1\0"
    assert data.count(syntax) == 1
    odd = data.replace(syntax, b"Secret^Name 1.2.3.4\0")  # same length: the meta group length still holds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_xray(odd, name="odd.dcm")
        except InvalidImageError:
            pass  # refused or decoded, either is fine: what was said on the way is the point
        warnings.warn("a warning of pneumo's own", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert messages == ["a warning of pneumo's own"], messages
    # The value did reach pydicom's validator: outside the decoder the same file warns, quoting it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ = pydicom.dcmread(io.BytesIO(odd)).file_meta.TransferSyntaxUID
    assert any("Secret" in str(w.message) for w in caught)


def test_file_meta_reader_finds_the_transfer_syntax_in_explicit_and_implicit_vr_meta() -> None:
    """The deflate bound depends on reading the transfer syntax right, whichever VR the meta group uses."""
    import struct
    import warnings

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from pneumo.data.dicom import _file_meta

    uid = str(DeflatedExplicitVRLittleEndian).encode() + b"\0"
    implicit_body = struct.pack("<HHI", 2, 0x10, len(uid)) + uid
    explicit_body = struct.pack("<HH2sH", 2, 0x10, b"UI", len(uid)) + uid
    after = b"\x08\x00\x60\x00CS\x02\x00DX"
    for body, implicit in ((explicit_body, False), (implicit_body, True)):
        length = struct.pack("<HHI", 2, 0, 4) if implicit else struct.pack("<HH2sH", 2, 0, b"UL", 4)
        meta = length + struct.pack("<I", len(body)) + body
        fp = io.BytesIO(meta + after)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = _file_meta(fp)
        # pydicom notes the implicit VR (and this reader recovers from it); nothing else is said.
        assert [str(w.message) for w in caught] == (
            ["Expected explicit VR, but found implicit VR - using implicit VR for reading"] if implicit else []
        )
        assert found.TransferSyntaxUID == DeflatedExplicitVRLittleEndian, implicit
        assert fp.tell() == len(meta)  # left at the first element after the meta group


# ---------------------------------------------------------------- DICOM: data after the pixel data


def _padded_cases() -> dict[str, bytes]:
    """A small film in each encoding the reader takes (the pixel element of defined and of undefined length,
    each byte order and VR coding, deflated), before anything is appended."""
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

    ramp = _ramp()
    return {
        "explicit": _dicom(ramp),
        "implicit": _dicom_with(64, 64, ramp.tobytes(), syntax=ImplicitVRLittleEndian),
        "big-endian": _dicom_with(64, 64, ramp.byteswap().tobytes(), syntax=ExplicitVRBigEndian),
        "encapsulated": _dicom(ramp, syntax=RLELossless),  # undefined length: items up to a delimiter
        "deflated": _as_deflated(_dicom(ramp)),
    }


@pytest.mark.parametrize("case", ["explicit", "implicit", "big-endian", "encapsulated", "deflated"])
def test_data_after_the_pixel_data_is_refused_in_one_line(case: str) -> None:
    data = _padded_cases()[case] + bytes(2**20)  # 1 MiB of zeros: ~0.5 s for pydicom to parse as elements
    with pytest.raises(InvalidImageError) as err:
        load_xray(data, name="padded.dcm")
    # The deflated writer ends an odd-length stream with one zero byte (PS3.5 A.5): it counts as a tail too.
    assert re.fullmatch(r"padded.dcm: 1,048,57[67] bytes after the pixel data [^\n]*", str(err.value))


def test_deflated_data_inflating_past_the_pixel_data_is_refused() -> None:
    """The tail inside the deflated stream counts as well as bytes after the stream's end."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    ds.add_new(0xFFFCFFFC, "OB", bytes(100_000))  # Data Set Trailing Padding, after the pixel data
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InvalidImageError, match=r"^tail.dcm: 100,01\d bytes after the pixel data"):
        load_xray(_as_deflated(buf.getvalue()), name="tail.dcm")


def test_padding_after_the_pixel_data_costs_no_parsing_time() -> None:
    """A 64 MiB padding at a quarter of its size: 16 MiB of zeros took pydicom ~9 s of CPU to parse, element
    by element, before the film was read; refused unread, it takes milliseconds (CPU time: a shared machine's
    load does not count)."""
    import time

    data = _dicom(np.tile(np.linspace(0, 4000, 512), (512, 1)).astype(np.uint16)) + bytes(16 * 2**20)
    start = time.process_time()
    with pytest.raises(InvalidImageError, match="bytes after the pixel data"):
        load_xray(data, name="padded.dcm")
    assert time.process_time() - start < 1.0


def test_a_small_tail_is_ignored_unread_and_the_film_decodes() -> None:
    """Up to 64 KiB after the pixel data (a trailing padding element, a stray byte) is allowed and never
    parsed: the dataset ends at the pixel data. An icon's pixel data nested in a sequence before it does not
    end the read early. One byte past the allowance is refused."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from pneumo.data.dicom import _read_dicom

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp())))
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.SamplesPerPixel = 8, 8, 8, 1
    icon.PixelData = bytes(range(64))
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0xFFFCFFFC, "OB", bytes(4096))  # Data Set Trailing Padding
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with_tail = buf.getvalue()
    read = _read_dicom(with_tail, "tail.dcm", 10**6)
    assert 0x7FE00010 in read and 0xFFFCFFFC not in read  # read up to the pixel data, not past it
    expected = load_xray(_dicom(_ramp()), name="plain.dcm").pixels
    assert np.array_equal(load_xray(with_tail, name="tail.dcm").pixels, expected)
    plain = _dicom(_ramp())
    assert np.array_equal(load_xray(plain + bytes(64 * 1024), name="edge.dcm").pixels, expected)
    with pytest.raises(InvalidImageError, match=r"^over.dcm: 65,537 bytes after the pixel data"):
        load_xray(plain + bytes(64 * 1024 + 1), name="over.dcm")
