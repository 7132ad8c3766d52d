from __future__ import annotations

import numpy as np
import pytest

from pneumo.evaluation import metrics as E


def test_metrics_at_threshold_match_hand_count() -> None:
    y = [0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.6, 0.3, 0.7, 0.2, 0.9, 0.8]
    m = E.metrics_at(y, p, 0.5)
    assert m["confusion"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 3}
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4) and m["npv"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7) and m["flagged_fraction"] == pytest.approx(4 / 7)
    assert m["roc_auc"] == pytest.approx(10 / 12)


def test_threshold_for_recall_is_the_highest_that_reaches_target() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    for target in (0.8, 0.9, 0.98, 1.0):
        t = E.threshold_for_recall(y, p, target)
        assert E.metrics_at(y, p, t)["sensitivity"] >= target
        above = np.min(p[p > t]) if (p > t).any() else 1.0
        assert E.metrics_at(y, p, above)["sensitivity"] < target or above == t


def test_max_f1_and_youden_thresholds_separate_clean_scores() -> None:
    y = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)])
    assert 0.4 < E.max_f1_threshold(y, p) <= 0.6
    assert 0.4 < E.youden_threshold(y, p) <= 0.6
    assert E.metrics_at(y, p, E.max_f1_threshold(y, p))["f1"] == pytest.approx(1.0)


def test_curves_and_calibration() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(2000)
    y = (rng.random(2000) < p).astype(int)  # perfectly calibrated by construction
    c = E.curves(y, p)
    assert c.roc["fpr"].is_monotonic_increasing and c.roc["tpr"].iloc[-1] == 1.0
    cal = E.calibration(y, p, bins=5)
    assert np.abs(cal["observed"] - cal["predicted"]).max() < 0.08
    assert cal["count"].sum() == 2000


def test_recall_undefined_without_positives() -> None:
    with pytest.raises(ValueError, match="no positive"):
        E.threshold_for_recall([0, 0], [0.1, 0.2])


def test_calibration_counts_and_rates_come_from_one_binning() -> None:
    """Ten bins [0, 0.1), [0.1, 0.2), …: a probability on an edge belongs to the bin it opens. Counted by hand."""
    two = E.calibration([0, 1], [0.05, 0.1])
    assert two["count"].tolist() == [1, 1]  # 0.05 in [0, 0.1), 0.1 in [0.1, 0.2)
    assert two["observed"].tolist() == [0.0, 1.0] and two["predicted"].tolist() == pytest.approx([0.05, 0.1])
    three = E.calibration([0, 1, 0], [0.05, 0.1, 0.15])
    assert three["count"].tolist() == [1, 2]  # 0.1 and 0.15 share [0.1, 0.2)
    assert three["observed"].tolist() == [0.0, 0.5] and three["predicted"].tolist() == pytest.approx([0.05, 0.125])
    # The ends: 0 in the first bin, 1 in the last; 0.3 written as such opens [0.3, 0.4).
    ends = E.calibration([0, 1, 1, 0], [0.0, 1.0, 0.3, 0.29])
    assert ends["count"].tolist() == [1, 1, 1, 1]
    assert ends["predicted"].tolist() == pytest.approx([0.0, 0.29, 0.3, 1.0])
    assert ends["observed"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert E.calibration([1, 0], [0.5, 0.5], bins=2)["count"].tolist() == [2]  # 0.5 opens [0.5, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        E.calibration([1], [1.2])


def test_rank_auc_is_scikit_learns_auc_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # rounded: many ties across the classes
    assert E.rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    # Hand-counted: pairs (pos, neg) = (0.9, 0.1), (0.9, 0.5), (0.5, 0.1), (0.5, 0.5 tie) -> 3.5 of 4.
    assert E.rank_auc([1, 1, 0, 0], [0.9, 0.5, 0.1, 0.5]) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="both classes"):
        E.rank_auc([1, 1], [0.2, 0.3])
