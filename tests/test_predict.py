from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.integrations import report
from pneumo.model import reading as predict
from pneumo.model.loading import load_model
from tests.conftest import require, synthetic_xray, write_png


def _readings(tiny_run: Path, tmp_path: Path) -> tuple[object, list[predict.Reading]]:
    loaded = load_model(tiny_run)
    rng = np.random.default_rng(2)
    paths = [write_png(tmp_path / f"film{i}.png", synthetic_xray(rng, 64, pneumonia=bool(i % 2))) for i in range(3)]
    readings = [predict.read(loaded, str(p)) for p in paths]
    readings.append(predict.read(loaded, b"not an image", name="junk.png"))
    return loaded, readings


def test_worklist_puts_rejected_and_warned_first_then_highest_probability(tiny_run: Path, tmp_path: Path) -> None:
    loaded, readings = _readings(tiny_run, tmp_path)
    readings[1].warnings = ["looks inverted"]
    table = predict.worklist(readings, loaded, when="2026-01-01T00:00:00+00:00")
    assert list(table["item"][:2]) == [4, 2]  # the rejected file, then the warned one
    rest = table["probability"][2:].tolist()
    assert rest == sorted(rest, reverse=True)
    assert set(table.columns) >= {
        "path",
        "probability",
        "decision",
        "warnings",
        "threshold",
        "model",
        "card_sha256_12",
        "time",
    }
    assert table["threshold"].iloc[0] == loaded.threshold and len(table["card_sha256_12"].iloc[0]) == 12
    before = predict.card_hash(loaded)
    loaded.card.threshold = 0.123
    assert predict.card_hash(loaded) != before  # a reading records which operating point it was made under


def test_study_report_renders_every_readable_image(tiny_run: Path, tmp_path: Path) -> None:
    loaded, readings = _readings(tiny_run, tmp_path)
    loaded.card.external_evaluations.append(
        {"name": "normals only", "n": 5, "roc_auc": None, "sensitivity": None, "specificity": 0.8, "threshold": 0.5}
    )
    pdf = report.study_pdf(readings, loaded)
    assert pdf.startswith(b"%PDF")
    require(shutil.which("pdftoppm"), "poppler's pdftoppm is not installed (make browser installs it)")
    out = tmp_path / "page"
    (tmp_path / "r.pdf").write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(tmp_path / "r.pdf"), str(out)], check=True)
    assert len(list(tmp_path.glob("page*.png"))) == 1 + 3  # the worklist, then one page per readable image


def test_a_packed_reading_keeps_an_8_bit_film_and_unpacks_to_fresh_notes() -> None:
    """pack: a quarter of the memory, the film within half a grey level; unpack: a [0, 1] float film and
    lists of its own, so notes added to one copy do not reach the kept one."""
    from pneumo.data.decode import XRay

    film = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    reading = predict.Reading(
        "a.png", XRay(film, "a.png", "PNG", (40, 30), warnings=["window"]), 0.7, predict.PNEUMONIA, warnings=["note"]
    )
    packed = predict.pack(reading)
    assert packed.xray.pixels.dtype == np.uint8 and packed.xray.pixels.nbytes * 4 == film.nbytes
    assert predict.pack(packed) is packed
    # Repeats are found on packed films: the same pixel hash as the float film's.
    from pneumo.data.collection import pixel_hash

    assert pixel_hash(packed.xray.pixels) == pixel_hash(film) != pixel_hash(film[::-1])
    again = predict.unpack(packed)
    assert again.xray.pixels.dtype == np.float32
    assert np.abs(again.xray.pixels - film).max() <= 0.5 / 255 + 1e-6
    assert (again.probability, again.decision, again.warnings, again.xray.warnings) == (
        0.7,
        predict.PNEUMONIA,
        ["note"],
        ["window"],
    )
    again.warnings.append("repeats item 1")
    again.xray.warnings.append("other")
    assert packed.warnings == ["note"] and packed.xray.warnings == ["window"]
    rejected = predict.Reading("b.txt", None, None, None, "not an image")
    assert predict.pack(rejected) is rejected and predict.unpack(rejected).error == "not an image"


def test_wrong_inputs_get_no_decision_and_a_turned_film_is_named_by_its_turn(tmp_path: Path) -> None:
    """The shipped model on a real film sent as it is, inverted, turned either way, and as noise: only the
    film as it is gets a decision; the rest are NOT ASSESSABLE with their probability still listed, each
    named by what is wrong with it (np.rot90 turns a film counter-clockwise on screen). The same rule
    reaches the worklist CSV and the PDF."""
    from pneumo.app.settings import SAMPLES_DIR
    from pneumo.data.collection import read_item
    from tests.conftest import ROOT
    from tests.test_report import _pdf_text

    loaded = load_model(ROOT / "models")
    film = read_item(str(sorted(SAMPLES_DIR.glob("NORMAL/*.jpeg"))[0]))
    sent = {
        "as it is": film,
        "looks inverted": 1.0 - film,
        "looks turned 90° counter-clockwise": np.rot90(film, 1),
        "looks turned 90° clockwise": np.rot90(film, 3),
        "unlike the films": np.random.default_rng(0).random(film.shape).astype(np.float32),
    }
    paths = [write_png(tmp_path / f"sent{i}.png", pixels) for i, pixels in enumerate(sent.values())]
    readings = [predict.read(loaded, str(path)) for path in paths]
    assert readings[0].decision == predict.NORMAL and readings[0].warnings == []
    # Each listed probability is the model's own for the film as written (8-bit PNG, read back by Pillow):
    # refusing the decision leaves the score as it is.
    served = loaded.predict([np.asarray(Image.open(path), dtype=np.float32) / 255 for path in paths])
    for (named, _), reading, expected in list(zip(sent.items(), readings, served))[1:]:
        assert reading.decision == predict.NOT_ASSESSABLE, (named, reading.warnings)
        assert reading.probability == pytest.approx(float(expected), abs=1e-5), named
        assert any(w.startswith(named) for w in reading.warnings), (named, reading.warnings)
    table = predict.worklist(readings, loaded, when="2026-01-01T00:00:00+00:00")
    assert (table["decision"] == predict.NOT_ASSESSABLE).sum() == 4
    text = _pdf_text(report.study_pdf(readings, loaded, heatmaps={i: np.zeros((8, 8), np.float32) for i in range(5)}))
    assert text.count(predict.NOT_ASSESSABLE) >= 4  # in the worklist table at least, each film's page too
