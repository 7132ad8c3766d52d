"""A probability that means what it says: Platt scaling fitted on out-of-fold predictions.

The ensemble's sigmoid output is a score, not a frequency: on the shipped model's out-of-fold films, those
scored 0.15-0.35 are pneumonia 70 % of the time. A two-parameter logistic map of the score's logit (Platt
scaling) is fitted on every out-of-fold film and stored in the card; the app, the CSV, the PDF and the command
line show the mapped value as the probability, and the threshold mapped the same way, so the decision is
unchanged (the map is increasing). Platt over isotonic: two numbers in a card instead of a step table, and on
these films its cross-fitted calibration error is the smaller of the two.

The map holds at the training collection's share of pneumonia (74 %), which the card records beside it: at a
site where pneumonia is rarer, the same score stands for a lower probability (the site loop's verdicts are
what recalibrates it there).

How well it calibrates is measured out of fold: for each fold, the map is fitted on the other folds' films
and applied to this fold's, and the expected calibration error (10 equal-width bins) is computed on the
pooled result, overall and on the later period's films (the NORMAL2-IM series of normals beside every
pneumonia), whose framing differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumo.core.card import PROBABILITY_CALIBRATION, ModelCard, platt, update_card
from pneumo.core.predictions import read_predictions
from pneumo.data.splits import series
from pneumo.evaluation.metrics import calibration

BINS = 10
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def fit_platt(y: Any, scores: Any) -> tuple[float, float]:
    """The (a, b) of p = sigmoid(a * logit(score) + b), by maximum likelihood (no regularisation: two
    parameters on thousands of films)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=int)
    if len(set(y.tolist())) != 2:
        raise ValueError("calibration needs films of both classes")
    model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(scores).reshape(-1, 1), y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def calibration_error(y: Any, p: Any, bins: int = BINS) -> float:
    """Expected calibration error: the film-weighted mean gap between predicted and observed rate per bin."""
    table = calibration(y, p, bins)
    n = float(table["count"].sum())
    return float((table["count"] * (table["predicted"] - table["observed"]).abs()).sum() / n) if n else float("nan")


def cross_fitted(frame: pd.DataFrame) -> np.ndarray:
    """Each film's calibrated probability from a map fitted on the other folds only (column fold)."""
    out = np.empty(len(frame))
    y, scores, folds = frame["label"].to_numpy(), frame["probability"].to_numpy(), frame["fold"].to_numpy()
    for k in np.unique(folds):
        held = folds == k
        a, b = fit_platt(y[~held], scores[~held])
        out[held] = platt(scores[held], a, b)
    return out


def later_period(frame: pd.DataFrame) -> np.ndarray:
    """The later period's films: NORMAL2-IM normals, beside every pneumonia (one population has no
    pneumonias of its own, so its calibration is read against all of them)."""
    names = frame["path"].astype(str).map(series)
    return ((frame["label"] == 1) | (names == "NORMAL2-IM")).to_numpy()


def measure(frame: pd.DataFrame) -> dict[str, Any]:
    """The map fitted on every film, and its calibration error out of fold, overall and on the later period,
    beside the raw score's. frame: path, label, probability, fold (oof_predictions.csv)."""
    missing = {"path", "label", "probability", "fold"} - set(frame.columns)
    if missing:
        raise ValueError(f"calibration needs out-of-fold predictions with {', '.join(sorted(missing))}")
    if frame["fold"].nunique() < 2:
        raise ValueError("calibration out of fold needs predictions from at least two folds")
    y, scores = frame["label"].to_numpy(), frame["probability"].to_numpy()
    a, b = fit_platt(y, scores)
    held_out = cross_fitted(frame)
    later = later_period(frame)
    return {
        "method": "platt",
        "a": a,
        "b": b,
        "fitted_on": f"{len(frame)} out-of-fold films (oof_predictions.csv)",
        "n": int(len(frame)),
        # A calibrated probability is a frequency among films like these, at this collection's share of
        # pneumonia: at a site where pneumonia is rarer the same film is less likely to have it.
        "prevalence": float(np.mean(y)),
        "bins": BINS,
        "ece_score_oof": calibration_error(y, scores),
        "ece_oof": calibration_error(y, held_out),
        "n_later_period": int(later.sum()),
        "ece_score_later_period": calibration_error(y[later], scores[later]),
        "ece_later_period": calibration_error(y[later], held_out[later]),
        "measured_on": "each fold's films mapped by a fit on the other folds (cross-fitted), 10 equal-width bins; "
        "later period: the NORMAL2-IM normals beside every pneumonia",
    }


def out_of_fold_frame(model_dir: str | Path) -> pd.DataFrame:
    """A model's oof_predictions.csv with its fold column: the films calibration is fitted and measured on."""
    path = Path(model_dir) / "oof_predictions.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no out-of-fold predictions; calibration is fitted on a cross-fitted ensemble's")
    frame = read_predictions(path)  # validated: labels, probabilities in [0, 1], a named bad row
    folds = pd.read_csv(path, usecols=["fold"])["fold"]  # read_predictions keeps only what every file has
    frame = frame.assign(fold=folds.to_numpy()[frame["row"].to_numpy() - 2])  # row: the CSV line, header first
    return frame[frame["probability"].notna()]


def record_in_card(model_dir: str | Path) -> dict[str, Any]:
    """Fit and measure on the model's own oof_predictions.csv and store the result in its card."""
    model_dir = Path(model_dir)
    result = measure(out_of_fold_frame(model_dir))

    def change(card: ModelCard) -> None:
        card.extra[PROBABILITY_CALIBRATION] = result

    update_card(model_dir / "card.json", change, create=False)
    return result
