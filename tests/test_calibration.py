"""The probability map fitted on out-of-fold predictions (pneumo.evaluation.calibration) and the card's use of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo.core.card import PROBABILITY_CALIBRATION, CardError, ModelCard, platt
from pneumo.evaluation import calibration


def _scores(n: int, a: float, b: float, seed: int = 0) -> pd.DataFrame:
    """Films whose true probability is platt(score, a, b): a score that is not a probability unless a=1, b=0."""
    rng = np.random.default_rng(seed)
    score = rng.beta(0.7, 0.7, n)
    y = (rng.random(n) < platt(score, a, b)).astype(int)
    return pd.DataFrame(
        {"path": [f"train/x/person{i}_bacteria_1.jpeg" for i in range(n)], "label": y, "probability": score}
    ).assign(fold=np.arange(n) % 5)


def test_the_fit_recovers_a_known_map() -> None:
    frame = _scores(20_000, 1.5, 1.2)
    a, b = calibration.fit_platt(frame["label"], frame["probability"])
    assert a == pytest.approx(1.5, abs=0.1) and b == pytest.approx(1.2, abs=0.1)


def test_out_of_fold_error_falls_where_the_score_was_miscalibrated() -> None:
    frame = _scores(6000, 1.4, 2.0)
    result = calibration.measure(frame)
    assert result["ece_score_oof"] > 0.1  # the raw score under-states pneumonia, as the shipped model's does
    assert result["ece_oof"] < 0.03
    assert result["prevalence"] == pytest.approx(frame["label"].mean())


def test_an_already_calibrated_score_is_left_about_as_it_is() -> None:
    frame = _scores(6000, 1.0, 0.0, seed=3)
    result = calibration.measure(frame)
    assert result["a"] == pytest.approx(1.0, abs=0.1) and abs(result["b"]) < 0.1
    assert result["ece_oof"] < 0.03


def test_the_card_maps_scores_in_order_and_keeps_old_cards_as_they_were() -> None:
    card = ModelCard(name="m", architecture="a", threshold=0.3)
    assert not card.calibrated and card.probability(0.25) == 0.25
    card.extra[PROBABILITY_CALIBRATION] = {"method": "platt", "a": 1.4, "b": 2.4, "prevalence": 0.74}
    mapped = [card.probability(s) for s in (0.05, 0.25, 0.3, 0.9)]
    assert mapped == sorted(mapped) and mapped[1] > 0.6  # increasing: a decision at t is one at probability(t)
    again = ModelCard.from_dict(card.to_dict())
    assert again.probability(0.25) == pytest.approx(mapped[1])


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "platt", "a": -1.0, "b": 0.0, "prevalence": 0.7},
        {"method": "platt", "a": 1.0, "b": float("nan"), "prevalence": 0.7},
        {"method": "platt", "a": 1.0, "b": 0.0},  # no prevalence: pages would not say where it holds
        {"method": "isotonic"},
        [1, 2],
    ],
)
def test_a_card_with_a_map_that_would_reorder_scores_is_refused(bad: object) -> None:
    values = ModelCard(name="m", architecture="a", threshold=0.3).to_dict()
    values[PROBABILITY_CALIBRATION] = bad
    with pytest.raises(CardError, match=PROBABILITY_CALIBRATION):
        ModelCard.from_dict(values)


def test_the_command_records_the_map_in_the_card(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pneumo.cli import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.keras").write_bytes(b"")  # only its folder is read
    (model / "card.json").write_text(json.dumps({"name": "m", "architecture": "a", "threshold": 0.3}))
    _scores(3000, 1.4, 2.0).to_csv(model / "oof_predictions.csv", index=False)
    assert main(["calibrate-probability", "--model", str(model), "--record", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    card = ModelCard.read(model / "card.json")
    assert card.extra[PROBABILITY_CALIBRATION]["a"] == pytest.approx(shown["a"])
    assert card.probability(0.3) > 0.5 and card.threshold == 0.3  # the threshold itself is untouched


def test_without_out_of_fold_predictions_one_line_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pneumo.cli import main

    (tmp_path / "model.keras").write_bytes(b"")
    card = json.dumps({"name": "m", "architecture": "a", "threshold": 0.3})
    (tmp_path / "card.json").write_text(card)
    assert main(["calibrate-probability", "--model", str(tmp_path), "--record"]) == 2
    assert "no out-of-fold predictions" in capsys.readouterr().err
    assert (tmp_path / "card.json").read_text() == card


def test_a_model_that_is_not_there_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pneumo.cli import main

    assert main(["calibrate-probability", "--model", str(tmp_path / "nowhere")]) == 2
    assert f"--model {tmp_path / 'nowhere'}: no model there" in capsys.readouterr().err
