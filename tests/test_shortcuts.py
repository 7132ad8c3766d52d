"""The shortcut audit finds a cue planted in one class, and the lung-field estimate it reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumo.data.anatomy import heat_inside, lung_field, peak_inside
from pneumo.evaluation import shortcuts
from tests.conftest import synthetic_xray, write_png


def _collection(root: Path, n: int = 40, frame_normals: bool = False) -> Path:
    """n films per class, one per child; with frame_normals every normal gets a black frame (a planted cue)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        normal = synthetic_xray(rng, 96)
        if frame_normals:
            normal[:6], normal[-6:], normal[:, :6], normal[:, -6:] = 0.0, 0.0, 0.0, 0.0
        write_png(root / "NORMAL" / f"IM-{i:04d}-0001.png", normal)
        write_png(root / "PNEUMONIA" / f"person{i}_bacteria_{i}.png", synthetic_xray(rng, 96, pneumonia=True))
    return root


def _border_auc(report: dict) -> float:
    return next(c["roc_auc"] for c in report["cues"] if c["cue"] == "border brightness")


def test_a_black_frame_planted_on_one_class_is_found(tmp_path: Path) -> None:
    planted = shortcuts.audit_folder(str(_collection(tmp_path / "planted", frame_normals=True)))
    # The synthetic pneumonia's opacity also moves the lung-field cues, so the frame need not be the only strong
    # cue; it must be found, at full strength.
    assert _border_auc(planted) >= 0.95
    assert planted["n"] == 80 and planted["unreadable"] == 0
    # The same films without the frame: the border tells the classes apart no better than the planted one does,
    # so what the audit found was the frame.
    clean = shortcuts.audit_folder(str(_collection(tmp_path / "clean")))
    assert _border_auc(clean) < 0.85 < _border_auc(planted)


def test_framing_distribution_is_reported_per_class(tmp_path: Path) -> None:
    report = shortcuts.audit_folder(str(_collection(tmp_path / "c")))
    classes = {(r["class"], r["cue"]) for r in report["framing_by_class"]}
    assert ("NORMAL", "lung field share") in classes and ("PNEUMONIA", "lung field share") in classes
    for row in report["framing_by_class"]:
        assert row["p10"] <= row["median"] <= row["p90"]


def test_audit_refuses_a_collection_too_small_to_cross_validate(tmp_path: Path) -> None:
    table = shortcuts.cue_table([], lambda p: np.zeros((8, 8)))
    with pytest.raises(ValueError, match="at least 5 patients"):
        shortcuts.audit(table.reindex(columns=["path", *[c.name for c in shortcuts.CUES]]), np.array([]), np.array([]))


def _two_lungs(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A film of the suite's synthetic kind (a noisy body, two dark lungs) with a top-to-bottom exposure gradient,
    and the true lung mask beside it."""
    img = synthetic_xray(np.random.default_rng(3), size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    truth = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):  # the lungs synthetic_xray draws
        truth |= ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    return np.clip(img + 0.1 * yy, 0, 1).astype(np.float32), truth


def test_lung_field_finds_two_dark_lungs_and_falls_back_on_a_blank_film() -> None:
    img, truth = _two_lungs()
    field = lung_field(img)
    assert field.found
    overlap = (field.mask & truth).sum() / (field.mask | truth).sum()
    assert overlap > 0.7, overlap
    noise = np.random.default_rng(0).uniform(0.4, 0.6, (128, 128)).astype(np.float32)
    blank = lung_field(noise)
    assert not blank.found and 0.3 < blank.share < 0.6  # the fixed chest box, said to be a fallback


def test_heat_inside_and_peak_inside_the_lungs() -> None:
    _, truth = _two_lungs(64)
    heat = np.zeros((16, 16), np.float32)
    heat[7, 5] = 1.0  # on the left lung, at the map's own resolution
    assert peak_inside(heat, truth)
    assert heat_inside(heat, truth) > 0.5
    neck = np.zeros((16, 16), np.float32)
    neck[0, 8] = 1.0
    assert not peak_inside(neck, truth) and heat_inside(neck, truth) < 0.1


def test_audit_shortcuts_command_json_and_a_bad_fold_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from pneumo.cli import main

    folder = _collection(tmp_path / "planted", n=20, frame_normals=True)
    assert main(["audit-shortcuts", str(folder), "--json", "--folds", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 40 and report["folds"] == 4 and len(report["cues"]) == len(shortcuts.CUES)
    assert main(["audit-shortcuts", str(folder), "--folds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --folds must be at least 2, got 1"]
