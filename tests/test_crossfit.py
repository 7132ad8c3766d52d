"""Cross-fitted ensembles: out-of-fold predictions, the operating point, the card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.training import crossfit
from tests.conftest import ROOT, make_folder


def test_recall_threshold_lies_between_two_scores_and_keeps_the_target() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    t = crossfit.recall_threshold(scores, 0.8)  # 8 of 10 must stay: between 0.2 and 0.1
    assert t == pytest.approx(0.15)
    assert (scores >= t).mean() == pytest.approx(0.8)
    assert t not in scores
    assert crossfit.recall_threshold(scores, 0.81) == pytest.approx(0.075)  # 9 of 10
    assert crossfit.recall_threshold(scores, 1.0) == pytest.approx(0.025)  # all: halfway to zero


def test_recall_threshold_keeps_clear_of_the_other_films_scores() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    # Normals at 0.11 and 0.19 inside (0.1, 0.2]: the widest gap there is 0.11–0.19.
    t = crossfit.recall_threshold(scores, 0.8, np.array([0.11, 0.19, 0.95]))
    assert t == pytest.approx(0.15) and (scores >= t).mean() == pytest.approx(0.8)
    t = crossfit.recall_threshold(scores, 0.8, np.array([0.12, 0.13]))
    assert t == pytest.approx((0.13 + 0.2) / 2)


def test_operating_point_ignores_untrusted_positives() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200, int), np.zeros(100, int)]
    p = np.r_[rng.uniform(0.6, 1.0, 180), rng.uniform(0.0, 0.05, 20), rng.uniform(0.0, 0.4, 100)]
    trusted = np.r_[np.ones(180, bool), np.zeros(20, bool), np.ones(100, bool)]  # 20 "pneumonias" scored ~0
    groups = np.arange(300).astype(str)
    with_noise = crossfit.operating_point(y, p, np.ones(300, bool), groups, 0.95, rounds=50)
    robust = crossfit.operating_point(y, p, trusted, groups, 0.95, rounds=50)
    # Asking 95 % of all positives drags the threshold under the noisy films' scores and flags normals;
    # asking it of the trusted ones keeps it above every normal here.
    assert with_noise["threshold"] < 0.05 and robust["threshold"] > 0.4
    # 95 % of the 180 trusted positives is 171 of them: the threshold lies between the 171st and 172nd
    # highest trusted scores, and keeps exactly 171.
    top = np.sort(p[:180])[::-1]
    assert top[170] > robust["threshold"] > top[171]
    assert robust["sensitivity_trusted"] == pytest.approx(171 / 180) and robust["trusted_positives"] == 180
    low, high = robust["bootstrap_95"]["threshold"]["low"], robust["bootstrap_95"]["threshold"]["high"]
    assert low <= robust["threshold"] <= high


def _fold_runs(tmp_path: Path, folds: int = 3) -> tuple[Path, list[Path]]:
    from pneumo.training.job import TrainConfig, train

    data = make_folder(tmp_path / "data", n_per_class=18, size=48, images_per_patient=2)
    dirs = []
    for k in range(folds):
        config = TrainConfig(
            data=str(data),
            image_size=48,
            epochs=1,
            batch_size=16,
            augmentation="none",
            split="fold",
            fold=k,
            folds=folds,
            split_seed=0,
            seed=k,
        )
        train(config, tmp_path / f"fold-{k}")
        dirs.append(tmp_path / f"fold-{k}")
    return data, dirs


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return _fold_runs(tmp_path_factory.mktemp("folds"))


def test_folds_partition_the_films_by_patient(folds: tuple[Path, list[Path]]) -> None:
    data, dirs = folds
    oof = crossfit.oof_predictions(list(reversed(dirs)))  # any order given: fold order kept
    films = sorted(str(p.resolve()) for p in data.glob("*/*.png"))
    # Stored paths are relative to the project when the films lie beside it (crossfit._portable: a checkout
    # in /tmp next to pytest's folders), absolute otherwise; both resolve from the project root.
    assert sorted(str((ROOT / p).resolve()) for p in oof["path"]) == films  # every film exactly once
    assert list(oof["fold"].drop_duplicates()) == [0, 1, 2]
    assert oof.groupby("patient_id")["fold"].nunique().max() == 1  # a patient never on two sides
    with pytest.raises(ValueError, match="each of the 3 folds"):
        crossfit.fold_runs(dirs[:2])


def test_members_framed_differently_make_no_ensemble(folds: tuple[Path, list[Path]], tmp_path: Path) -> None:
    import shutil

    from pneumo.core.card import ModelCard

    _, dirs = folds
    copies = [Path(shutil.copytree(d, tmp_path / d.name)) for d in dirs]
    card = ModelCard.read(copies[1] / "card.json")
    card.extra["framing"] = "lungs"
    card.write(copies[1] / "card.json")
    with pytest.raises(ValueError, match=r"different framings \(lungs, none\)"):
        crossfit.ensemble_folds(copies, tmp_path / "ens")
    assert not (tmp_path / "ens").exists()  # refused before the output folder is claimed


def test_cross_fitted_ensemble_card_and_served_members(folds: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from pneumo.core.card import ModelCard
    from pneumo.data.collection import read_item
    from pneumo.model.loading import load_model

    _, dirs = folds
    card = crossfit.ensemble_folds(dirs, tmp_path / "ens", target_recall=0.9)
    oof = pd.read_csv(tmp_path / "ens" / crossfit.OOF_FILE)
    assert list(oof.columns[:5]) == crossfit.OOF_COLUMNS and len(oof) == 36
    assert ModelCard.read(tmp_path / "ens" / "card.json").threshold == card.threshold
    assert card.validation["kind"] == "out-of-fold" and card.validation["n"] == 36
    pos = oof[(oof.label == 1) & ~oof.label_suspect]
    # The highest threshold keeping 90 %: exactly ceil(0.9 n) of the trusted positives at or above it.
    assert (pos.probability >= card.threshold).sum() == math.ceil(0.9 * len(pos) - 1e-9)
    assert card.validation["operating_point"]["sensitivity_trusted"] == pytest.approx(
        (pos.probability >= card.threshold).mean()
    )
    assert not np.isclose(oof.probability, card.threshold, atol=1e-9).any()
    # Member k of the served model is fold k's network: it reproduces the stored out-of-fold scores.
    loaded = load_model(tmp_path / "ens" / "model.keras")
    served = loaded.member_probabilities([read_item(p) for p in oof.path])
    assert served.shape == (36, 3)
    assert np.abs(served[np.arange(36), oof.fold] - oof.probability).max() < 1e-4
    assert np.allclose(served.mean(axis=1), loaded.predict([read_item(p) for p in oof.path]), atol=1e-5)

    # One fold alone, at equal recall: fold 1's films, each scored by member 1, at the threshold that keeps 3 in 4
    # of that fold's pneumonias.
    from pneumo.evaluation.validate import sweep_model

    one = oof[oof.fold == 1]
    block = sweep_model(loaded, limit=100, at_recall=0.75, fold=1)
    ranked = np.sort(one.probability[one.label == 1].to_numpy())[::-1]
    assert block["threshold"] == pytest.approx(ranked[math.ceil(0.75 * len(ranked)) - 1])
    as_sent = next(r for r in block["conditions"] if r["condition"] == "zoom 1×")
    assert as_sent["n"] == len(one)
    normals = one.probability[one.label == 0]
    assert as_sent["specificity"] == pytest.approx(float((normals < block["threshold"]).mean()), abs=1e-9)
    with pytest.raises(ValueError, match="no films in fold 7"):
        sweep_model(loaded, fold=7)


def test_shipped_card_recall_holds_on_its_stored_out_of_fold_scores() -> None:
    """The shipped card's operating point, recomputed by hand from models/oof_predictions.csv: every
    training film's probability from the fold network that never saw it. Recall at the card's threshold on
    the pneumonias the label audit trusts reaches the target; the threshold is the highest that does
    (midway between the last positive kept and the next score below); the confusion matrix and ROC AUC
    the card prints are those of the stored scores (AUC by Mann–Whitney ranks, not scikit-learn's call)."""
    from scipy.stats import rankdata

    from pneumo.core.card import ModelCard

    card = ModelCard.read(ROOT / "models" / "card.json")
    oof = pd.read_csv(ROOT / "models" / crossfit.OOF_FILE)
    assert list(oof.columns) == [*crossfit.OOF_COLUMNS, "label_quality", "label_suspect"]
    point = card.validation["operating_point"]
    t, target = card.threshold, point["target_recall"]
    assert point["threshold"] == t == card.validation["threshold"]
    y, p = oof["label"].to_numpy(), oof["probability"].to_numpy()
    trusted = (y == 1) & ~oof["label_suspect"].astype(bool).to_numpy()
    assert trusted.sum() == point["trusted_positives"] and (y == 1).sum() == point["all_positives"]
    kept = int((p[trusted] >= t).sum())
    assert kept / trusted.sum() >= target
    assert kept / trusted.sum() == pytest.approx(point["sensitivity_trusted"], abs=1e-12)
    # The highest threshold that keeps the target: one more positive dropped and recall falls under it.
    s = np.sort(p[trusted])[::-1]
    need = math.ceil(target * len(s) - 1e-9)
    assert kept == need and s[need - 1] > t > s[need]
    if not ((p[~trusted] > s[need]) & (p[~trusted] < s[need - 1])).any():  # no other film in that gap
        assert t == pytest.approx((s[need - 1] + s[need]) / 2, abs=1e-12)
    gap = np.abs(p - t).min()
    assert gap > 1e-4, "the threshold sits on a film's score: an engine's rounding would flip that film"
    confusion = {
        "tn": int(((y == 0) & (p < t)).sum()),
        "fp": int(((y == 0) & (p >= t)).sum()),
        "fn": int(((y == 1) & (p < t)).sum()),
        "tp": int(((y == 1) & (p >= t)).sum()),
    }
    assert card.validation["confusion"] == confusion and card.validation["n"] == len(oof)
    ranks = rankdata(p)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    auc = (ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    assert card.validation["roc_auc"] == pytest.approx(auc, abs=1e-9)


def test_shipped_model_served_by_onnx_reproduces_the_stored_out_of_fold_scores(shared_train: Path) -> None:
    """Re-serving films through the shipped model (models/model.keras via load_model: ONNX Runtime, the
    ensemble's own graph) gives each fold network's stored out-of-fold score back: member k on fold k's
    films within 1e-4. The ensemble's own answer, the mean of 5 members of which 4 trained on the film, is
    not the stored score and must not be read as one. 64 films of fold 1 (fixed seed) and 8 of each other
    fold, so every member's place in the graph is checked; the recall claim rests on the test above."""
    from pneumo.core.paths import PROJECT_ROOT
    from pneumo.data.collection import read_item
    from pneumo.model.loading import load_model

    oof = pd.read_csv(ROOT / "models" / crossfit.OOF_FILE)
    assert (PROJECT_ROOT / oof["path"].iloc[0]).resolve().is_relative_to(shared_train.resolve())
    loaded = load_model(ROOT / "models" / "model.keras")
    assert loaded.engine_name == "ONNX Runtime" and loaded.engine.has_members
    rng = np.random.default_rng(0)
    folds = oof["fold"].to_numpy()
    pick = np.concatenate(
        [rng.choice(np.flatnonzero(folds == 1), 64, replace=False)]
        + [rng.choice(np.flatnonzero(folds == k), 8, replace=False) for k in (0, 2, 3, 4)]
    )
    images = [read_item(str(PROJECT_ROOT / oof["path"].iloc[i])) for i in pick]
    served = loaded.member_probabilities(images)
    stored = oof["probability"].to_numpy()[pick]
    assert served.shape == (len(pick), 5)
    own = served[np.arange(len(pick)), folds[pick]]
    assert np.abs(own - stored).max() < 1e-4
    # The other members are other networks: on fold 1's films they answer differently from member 1.
    others = np.delete(served[:64], 1, axis=1)
    assert (np.abs(others - stored[:64, None]) > 1e-3).mean() > 0.5
    ensemble = loaded.predict(images)
    assert np.abs(ensemble - served.mean(axis=1)).max() < 1e-5
    assert np.abs(ensemble - stored).max() > 1e-2  # served ≠ out of fold: the card's figures are the members'


# ---------------------------------------------------------------- leave-population-out runs on a built model

RECIPE = {"model": "shift_cnn", "augmentation": "frame", "epochs": 24, "image_size": 224}


def _built_model(folder: Path) -> Path:
    from pneumo.core.card import ModelCard

    folder.mkdir()
    (folder / "model.keras").write_bytes(b"not read: the figures come from the run's predictions")
    ModelCard(name="ens", architecture="ensemble", threshold=0.5, training={"config": dict(RECIPE)}).write(
        folder / "card.json"
    )
    return folder


def _population_run(folder: Path, split: str = "family", **recipe: object) -> Path:
    folder.mkdir()
    # Held-out normals (the population) beside pneumonias: at 0.5, 3 of 4 normals stay below, 2 of 2 flagged.
    pd.DataFrame(
        {
            "path": [f"f{i}.png" for i in range(6)],
            "label": [0, 0, 0, 0, 1, 1],
            "probability": [0.1, 0.2, 0.3, 0.7, 0.6, 0.9],
        }
    ).to_csv(folder / "val_predictions.csv", index=False)
    (folder / "config.json").write_text(json.dumps({**RECIPE, **recipe, "split": split}))
    (folder / "data_summary.json").write_text(json.dumps({"split": "NORMAL2-IM normals held out"}))
    return folder


def test_population_runs_are_recorded_at_the_models_threshold_once(tmp_path: Path) -> None:
    from pneumo.core.card import ModelCard

    model = _built_model(tmp_path / "model")
    run = _population_run(tmp_path / "pop-family")
    rows = crossfit.record_population_runs(model, [run])
    assert rows[0]["specificity"] == pytest.approx(3 / 4) and rows[0]["sensitivity"] == pytest.approx(1.0)
    assert rows[0]["n"] == 6 and rows[0]["held_out"] == "NORMAL2-IM normals held out"
    crossfit.record_population_runs(model, [run])  # recorded again: replaced, not added
    held = ModelCard.read(model / "card.json").shift_checks["leave_population_out"]
    assert [r["run"] for r in held] == ["pop-family"]


@pytest.mark.parametrize(
    ("split", "recipe", "said"),
    [
        ("family", {"epochs": 3}, "another recipe than the model's members: epochs 3 (the model's: 24)"),
        ("patient", {}, "holds out no population"),
        ("family", {"framing": "lungs"}, "another recipe than the model's members: framing lungs (the model's: none)"),
    ],
)
def test_a_population_run_of_another_kind_is_refused_and_nothing_written(
    tmp_path: Path, split: str, recipe: dict, said: str
) -> None:
    model = _built_model(tmp_path / "model")
    before = (model / "card.json").read_bytes()
    run = _population_run(tmp_path / "run", split, **recipe)
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
        crossfit.record_population_runs(model, [run])
    assert (model / "card.json").read_bytes() == before


def test_population_fold_command_reports_records_and_refuses_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = _built_model(tmp_path / "model")
    run = _population_run(tmp_path / "pop-family")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pneumo", "population-fold", *args], capture_output=True, text=True, cwd=ROOT
        )

    shown = cli(str(run), "--model", str(model), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["specificity"] == pytest.approx(0.75)
    assert "leave_population_out" not in json.loads((model / "card.json").read_text())["shift_checks"]
    recorded = cli(str(run), "--model", str(model), "--record")
    assert recorded.returncode == 0 and "specificity 0.750" in recorded.stdout
    refused = cli(str(tmp_path / "nowhere"), "--model", str(model), "--record")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    # Shown without --record, the same runs are checked the same way.
    shown = cli(str(tmp_path / "nowhere"), "--model", str(model))
    assert shown.returncode == 2 and "not a finished training run" in shown.stderr, shown.stderr
