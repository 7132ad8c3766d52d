from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.data import collection as D
from pneumo.data import splits, transforms
from pneumo.evaluation import validate as V
from tests.conftest import synthetic_xray, write_png


def _kermany_like(root: Path) -> Path:
    """IM-, NORMAL2-IM- and person- series with numbered patients, two films each."""
    rng = np.random.default_rng(0)
    for i in range(40):
        write_png(root / "NORMAL" / f"IM-{100 + i // 2:04d}-{i:04d}.png", synthetic_xray(rng, 40))
        write_png(root / "NORMAL" / f"NORMAL2-IM-{500 + i // 2:04d}-{i:04d}.png", synthetic_xray(rng, 40))
        write_png(root / "PNEUMONIA" / f"person{10 + i // 2}_bacteria_{i}.png", synthetic_xray(rng, 40, pneumonia=True))
    return root


def _no_shared_patient(train: pd.DataFrame, held: pd.DataFrame) -> None:
    assert not set(train["patient_id"]) & set(held["patient_id"])
    assert set(train["label"]) == set(held["label"]) == {0, 1}


def test_temporal_split_holds_out_the_lowest_numbers_of_each_series(tmp_path: Path) -> None:
    frame = D.scan(_kermany_like(tmp_path / "k")).frame
    train, held = splits.holdout(frame, "temporal", 0.2, duplicates=[])
    _no_shared_patient(train, held)
    assert len(held) == pytest.approx(0.2 * len(frame), abs=4)

    def numbers(f: pd.DataFrame, series: str) -> list[int | None]:
        return [splits.patient_number(p) for p, s in zip(f["patient_id"], f["path"]) if splits.series(s) == series]

    for series in ("IM", "NORMAL2-IM", "person"):
        assert max(numbers(held, series)) < min(numbers(train, series)), series


def test_family_split_holds_out_a_whole_normal_series(tmp_path: Path) -> None:
    frame = D.scan(_kermany_like(tmp_path / "k")).frame
    train, held = splits.holdout(frame, "family", 0.2, duplicates=[])
    _no_shared_patient(train, held)
    held_normals = held[held.label == 0]["path"].map(splits.series)
    assert set(held_normals) == {"NORMAL2-IM"} and len(held_normals) == 40
    assert not (train["path"].map(splits.series) == "NORMAL2-IM").any()


def test_split_falls_back_to_patients_without_kermany_names(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    rng = np.random.default_rng(1)
    for i in range(30):
        write_png(root / "NORMAL" / f"a{i}.png", synthetic_xray(rng, 40))
        write_png(root / "PNEUMONIA" / f"b{i}.png", synthetic_xray(rng, 40, pneumonia=True))
    frame = D.scan(root).frame
    train, held = splits.holdout(frame, "temporal", 0.2, duplicates=[])
    assert len(train) + len(held) == 60 and "patient-level" in splits.describe_holdout("temporal", frame)
    with pytest.raises(ValueError, match="unknown split"):
        splits.holdout(frame, "random")


def test_duplicates_stay_on_one_side(tmp_path: Path) -> None:
    root = _kermany_like(tmp_path / "k")
    low, high = root / "NORMAL" / "IM-0100-0000.png", root / "NORMAL" / "IM-0119-0039.png"
    high.write_bytes(low.read_bytes())  # the same film under a low and a high patient number
    frame = D.scan(root).frame
    train, held = splits.holdout(frame, "temporal", 0.2)
    assert (str(low) in set(held["path"])) == (str(high) in set(held["path"]))


def test_stress_conditions_keep_shape_and_change_the_image() -> None:
    img = synthetic_xray(np.random.default_rng(2), 64, pneumonia=True)
    for name, transform in transforms.STRESS.items():
        out = np.clip(transform(img), 0, 1)
        assert out.shape == img.shape, name
        assert np.abs(out - img).mean() > 1e-3, name


class _Scorer:
    """A stand-in model whose score is the mean brightness of the image's centre."""

    input_size = 32

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return np.asarray(images)[:, 8:24, 8:24].mean(axis=(1, 2))


def test_stress_report_and_robust_threshold_keep_recall_pooled() -> None:
    rng = np.random.default_rng(3)
    labels = np.array([0] * 30 + [1] * 30)
    images = np.stack([np.full((32, 32), 0.3 + 0.3 * y + 0.1 * rng.random(), np.float32) for y in labels])
    probs = V.stressed_probabilities(_Scorer(), images)
    assert set(probs) == {"clean", *transforms.STRESS}
    t = V.robust_threshold(labels, probs, 0.95)
    pooled = np.concatenate([p[labels == 1] for p in probs.values()])
    assert (pooled >= t).mean() >= 0.95
    # The highest such threshold: just above the lowest positive it keeps, pooled recall drops under 0.95.
    lowest = pooled[pooled >= t].min()
    assert (pooled >= np.nextafter(lowest, 1)).mean() < 0.95
    report = V.stress_report(labels, probs, t).to_dict()
    assert len(report["conditions"]) == len(transforms.STRESS)
    assert report["worst_auc"]["roc_auc"] == min(c["roc_auc"] for c in report["conditions"])


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(4)
    labels = np.array([0] * 100 + [1] * 100)
    probs = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1)
    groups = np.arange(200) // 2
    ci = V.bootstrap(labels, probs, groups, 0.5, rounds=200)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(labels, probs)
    assert ci["roc_auc"]["low"] < auc < ci["roc_auc"]["high"] and ci["roc_auc"]["sd"] > 0


def test_compare_runs_groups_seeds_of_one_recipe(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from pneumo.core.files import atomic_write_json, read_json

    other = tmp_path / "seed1"
    shutil.copytree(tiny_run, other)
    atomic_write_json(other / "config.json", {**read_json(tiny_run / "config.json"), "seed": 1})
    rows, recipes = V.compare([tiny_run, other])
    assert list(rows["seed"]) == [0, 1] and len(recipes) == 1 and recipes["auc_count"].iloc[0] == 2
    assert rows["stress_worst_auc"].iloc[0] <= rows["stress_mean_auc"].iloc[0]
    with pytest.raises(ValueError, match="checks.json"):
        V.compare([tmp_path])


def test_shipped_maps_beat_the_average_map_on_deletion() -> None:
    """Sentinel: Grad-CAM must find what drives each film's score better than the network's spatial prior
    (the same average map for every film), on the bundled samples through the serving engine."""
    from pneumo.app.settings import SAMPLES_DIR
    from pneumo.model.loading import load_model

    loaded = load_model()
    paths = sorted(str(p) for p in SAMPLES_DIR.glob("*/*.jpeg"))
    figure = V.explanation_faithfulness(loaded, V.load_images(paths, loaded.input_size), loaded.threshold, limit=48)
    table = {row["map"]: row["deletion score (all)"] for row in figure["table"]}
    assert figure["n"] == 48
    assert table["Grad-CAM (model)"] < table["average map"] < table["random map"]
    assert abs(table["random map"] - table["flat map"]) < 0.05  # a flat map is a random order: no information


def test_a_damaged_checks_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    import json

    from pneumo.evaluation.validate import check_row

    (tmp_path / "checks.json").write_text(json.dumps({"clean": {}, "bootstrap_95": {}}))
    with pytest.raises(ValueError, match="checks.json: no stress"):
        check_row(tmp_path)
