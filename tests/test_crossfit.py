"""Cross-fitted ensembles: out-of-fold predictions, the operating point, the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo import crossfit
from tests.conftest import make_folder


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
    assert robust["sensitivity_trusted"] >= 0.95
    low, high = robust["bootstrap_95"]["threshold"]["low"], robust["bootstrap_95"]["threshold"]["high"]
    assert low <= robust["threshold"] <= high


def _fold_runs(tmp_path: Path, folds: int = 3) -> tuple[Path, list[Path]]:
    from pneumo.train import TrainConfig, train

    data = make_folder(tmp_path / "data", n_per_class=18, size=48, images_per_patient=2)
    dirs = []
    for k in range(folds):
        config = TrainConfig(data=str(data), image_size=48, epochs=1, batch_size=16, augmentation="none",
                             split="fold", fold=k, folds=folds, split_seed=0, seed=k)
        train(config, tmp_path / f"fold-{k}")
        dirs.append(tmp_path / f"fold-{k}")
    return data, dirs


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return _fold_runs(tmp_path_factory.mktemp("folds"))


def test_folds_partition_the_films_by_patient(folds: tuple[Path, list[Path]]) -> None:
    data, dirs = folds
    oof = crossfit.oof_predictions(list(reversed(dirs)))  # any order given: fold order kept
    films = sorted(str(p) for p in data.glob("*/*.png"))
    assert sorted(oof["path"]) == films  # every film exactly once
    assert list(oof["fold"].drop_duplicates()) == [0, 1, 2]
    assert oof.groupby("patient_id")["fold"].nunique().max() == 1  # a patient never on two sides
    with pytest.raises(ValueError, match="each of the 3 folds"):
        crossfit.fold_runs(dirs[:2])


def test_cross_fitted_ensemble_card_and_served_members(folds: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from pneumo.card import ModelCard
    from pneumo.data import read_item
    from pneumo.models import load_model

    _, dirs = folds
    card = crossfit.ensemble_folds(dirs, tmp_path / "ens", target_recall=0.9)
    oof = pd.read_csv(tmp_path / "ens" / crossfit.OOF_FILE)
    assert list(oof.columns[:5]) == crossfit.OOF_COLUMNS and len(oof) == 36
    assert ModelCard.read(tmp_path / "ens" / "card.json").threshold == card.threshold
    assert card.validation["kind"] == "out-of-fold" and card.validation["n"] == 36
    pos = oof[(oof.label == 1) & ~oof.label_suspect]
    assert (pos.probability >= card.threshold).mean() >= 0.9
    assert not np.isclose(oof.probability, card.threshold, atol=1e-9).any()
    # Member k of the served model is fold k's network: it reproduces the stored out-of-fold scores.
    loaded = load_model(tmp_path / "ens" / "model.keras")
    served = loaded.member_probabilities([read_item(p) for p in oof.path])
    assert served.shape == (36, 3)
    assert np.abs(served[np.arange(36), oof.fold] - oof.probability).max() < 1e-4
    assert np.allclose(served.mean(axis=1), loaded.predict([read_item(p) for p in oof.path]), atol=1e-5)


def test_shipped_card_holds_on_the_serving_engine() -> None:
    """The shipped card's operating point, re-checked through the engine that serves it: every stored
    out-of-fold film scored again by the member that never saw it (ONNX Runtime, the ensemble's own
    graph), the card's figures recomputed from those scores, and the threshold on no film's exact score."""
    from pneumo.card import ModelCard
    from pneumo.data import read_item
    from pneumo.models import DEFAULT_MODEL_DIR, PROJECT_ROOT, load_model

    card = ModelCard.read(DEFAULT_MODEL_DIR / "card.json")
    oof = pd.read_csv(DEFAULT_MODEL_DIR / crossfit.OOF_FILE)
    films = [PROJECT_ROOT / p for p in oof["path"]]
    if not all(f.exists() for f in films[:5]):
        pytest.skip("the training films (../shared/data/chest_xray/train) are not beside this checkout")
    loaded = load_model()
    assert loaded.engine is not None and loaded.engine.has_members  # ONNX Runtime serves, members included
    rng = np.random.default_rng(0)
    # Every trusted pneumonia (the recall claim) and a draw of the rest, to keep the test under a minute.
    trusted = oof.index[(oof.label == 1) & ~oof.label_suspect.astype(bool)].to_numpy()
    rest = rng.choice(oof.index[~oof.index.isin(trusted)], size=400, replace=False)
    pick = np.r_[trusted, rest]
    served = loaded.member_probabilities([read_item(str(films[i])) for i in pick])
    own = served[np.arange(len(pick)), oof.fold.to_numpy()[pick]]
    assert np.abs(own - oof.probability.to_numpy()[pick]).max() < 1e-4
    recall = float((own[: len(trusted)] >= card.threshold).mean())
    point = card.validation["operating_point"]
    assert recall == pytest.approx(point["sensitivity_trusted"], abs=1 / len(trusted))
    assert recall >= point["target_recall"]
    gap = np.abs(oof.probability.to_numpy() - card.threshold).min()
    assert gap > 1e-4, "the threshold sits on a film's score: an engine's rounding would flip that film"
