from __future__ import annotations

from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------- the explanation checks share their maps


def _tiny_explained_model() -> Any:
    """A network with fixed weights (no training, no random initialisation): a 3×3 mean filter thresholded at two
    brightnesses (the bright opacity of a synthetic pneumonia, and the body around the lungs), averaged and scored,
    so its Grad-CAM maps and deletion curves are the same on every run."""
    import keras
    from keras import layers

    from pneumo.core.card import ModelCard
    from pneumo.model.loading import LoadedModel

    inp = keras.Input((64, 64, 1))
    conv = layers.Conv2D(2, 3, padding="same", activation="relu", name="feat")
    dense = layers.Dense(1, activation="sigmoid")
    model = keras.Model(inp, dense(layers.GlobalAveragePooling2D()(conv(inp))))
    conv.set_weights([np.full((3, 3, 1, 2), 1 / 9, "float32"), np.array([-0.6, -0.5], "float32")])
    dense.set_weights([np.array([[10000.0], [100.0]], "float32"), np.array([-4.5], "float32")])
    card = ModelCard(name="tiny", architecture="tiny test", threshold=0.5, gradcam_layer="feat")
    return LoadedModel(model, card, Path("tiny.keras"))


def _tiny_films() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([synthetic_xray(rng, 64, pneumonia=bool(i % 2)) for i in range(10)]).astype(np.float32)


def test_explanation_checks_compute_one_map_per_film(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both figures from one Grad-CAM map per film: 8 films drawn, 8 maps computed (each figure computing its own
    maps made 16)."""
    loaded, films = _tiny_explained_model(), _tiny_films()
    computed = []
    real = V.gradcam

    def counted(model: Any, image: np.ndarray, **kwargs: Any) -> np.ndarray:
        computed.append(kwargs.get("target"))
        return real(model, image, **kwargs)

    monkeypatch.setattr(V, "gradcam", counted)
    faithfulness, anatomy = V.explanation_checks(loaded, films, 0.4, limit=8, seed=1)
    assert faithfulness["n"] == anatomy["n"] == 8
    assert len(computed) == 8 and sorted(computed) == [0, 0, 0, 1, 1, 1, 1, 1]
    computed.clear()
    assert V.explanation_faithfulness(loaded, films, 0.4, limit=8, seed=1) == faithfulness
    assert V.map_anatomy(loaded, films, 0.4, limit=8, seed=1) == anatomy
    assert len(computed) == 16  # each on its own draws and explains the films again


def test_explanation_figures_are_those_computed_before_the_maps_were_shared() -> None:
    """The figures below were computed on this network and these films by explanation_faithfulness and map_anatomy
    as they stood before they shared their maps (each drew its films and computed its own Grad-CAM maps; the random
    baseline drew from the generator that picked the films). Sharing the maps must change none of them: a random
    baseline drawn from a fresh generator, another draw of films or other decided classes would."""
    faithfulness, anatomy = V.explanation_checks(_tiny_explained_model(), _tiny_films(), 0.4, limit=8, seed=1)
    deletion = {
        "Grad-CAM (model)": (0.402, 0.1167, 0.8776),
        "average map": (0.4124, 0.1245, 0.8923),
        "centred blob": (0.472, 0.2368, 0.864),
        "random map": (0.4759, 0.2347, 0.8781),
        "flat map": (0.475, 0.2334, 0.8776),
    }
    assert [row["map"] for row in faithfulness["table"]] == list(deletion)
    for row in faithfulness["table"]:
        got = (row["deletion score (all)"], row["decided PNEUMONIA"], row["decided NORMAL"])
        assert got == pytest.approx(deletion[row["map"]], abs=2e-4), row["map"]
    assert (faithfulness["n"], faithfulness["n_pneumonia"], faithfulness["beats_average_map"]) == (8, 5, True)
    inside = {  # heat inside lungs (all, decided PNEUMONIA, decided NORMAL), peak inside lungs
        "Grad-CAM (model)": (0.1933, 0.3093, 0.0, 0.5),
        "average map": (0.3668, 0.3607, 0.3769, 1.0),
        "centred blob": (0.5489, 0.5663, 0.5199, 0.0),
        "flat map": (0.2667, 0.2752, 0.2525, None),
    }
    assert [row["map"] for row in anatomy["table"]] == list(inside)
    for row in anatomy["table"]:
        expected = inside[row["map"]]
        got = tuple(row[f"heat inside lungs{k}"] for k in ("", ", decided PNEUMONIA", ", decided NORMAL"))
        assert got == pytest.approx(expected[:3], abs=2e-4), row["map"]
        assert row["peak inside lungs"] == expected[3], row["map"]
    assert (anatomy["n"], anatomy["lung_field_found"]) == (8, 1.0)
