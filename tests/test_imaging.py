from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.imaging import InvalidImageError, load_image, load_xray, sniff_format


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
    assert 0.0 <= img.min() < 0.05 and 0.95 < img.max() <= 1.0


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
    assert np.all(np.diff(out[0]) >= 0)


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


def _dicom(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
           slope: float = 1.0, intercept: float = 0.0, syntax: str | None = None) -> bytes:
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


# ---------------------------------------------------------------- hostile and unusual inputs


@pytest.mark.parametrize(
    "edit",
    [
        {"WindowCenter": 2000, "WindowWidth": 0},
        {"WindowCenter": 2000, "WindowWidth": -40},
        {"WindowCenter": "abc", "WindowWidth": 400},
        {"WindowCenter": 2000, "WindowWidth": 400, "VOILUTFunction": "NOT_A_FUNCTION"},
        {"ModalityLUTSequence": []},
    ],
)
def test_damaged_dicom_attributes_never_escape(edit: dict) -> None:
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
    try:
        xray = load_xray(buf.getvalue(), name="damaged.dcm")
    except InvalidImageError as exc:
        assert "damaged.dcm" in str(exc)
    else:  # a broken window falls back to the full range, and says so
        assert xray.pixels.min() >= 0 and xray.pixels.max() <= 1
        if "Window" in "".join(edit):
            assert "ignored" in xray.dicom["Windowing"] or "center" in xray.dicom["Windowing"]


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
    from pneumo.imaging import MAX_KEPT_SIDE

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
